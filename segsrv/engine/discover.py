"""Discover: conjunctions of features that co-occur beyond what their parts predict (DESIGN.md 9).

The search (docs/discover.md has the user's view; every count is exact):

1. Candidates: the features of the selected fields (by default every field but identifier-like
   ones and, with a target, the target's own fields) with at least ``min_support`` rows among the
   rows searched and not on every one of them. More than ``max_candidates`` is LimitExceededError.
2. Pairs: one all-pairs co-occurrence pass (segsrv._kernels.cooccurrence) counts every pair of
   candidates at once, and with a target every pair's target rows.
3. Longer conjunctions, level by level up to ``max_length``: the ``BEAM`` highest-scoring kept
   conjunctions of a level are extended by every candidate that reaches ``min_support`` with each
   of their terms (Apriori's pruning, from the pair counts) and is not a second value of a
   single-valued field of theirs; the extensions are counted in one cross co-occurrence pass
   (segsrv._kernels.cross_cooccurrence).
4. Tests of a conjunction X, counted if it reaches ``min_support`` (``tested``):
   - unsupervised (productive itemsets, Webb 2007): for every split of X into two non-empty parts
     (A, B), the one-sided Fisher exact test of n_X given n_A, n_B and n (P(H >= n_X),
     H ~ Hypergeometric(n, n_A, n_B)); X's p-value is the largest over its splits and its
     ``split_lift`` the smallest n_X n / (n_A n_B). X is kept when split_lift >= ``min_lift``;
   - supervised (subgroup discovery): the target's rate in X against the overall rate (the same
     Fisher test, in the direction asked) and against every generalisation X - t (the test within
     the rows of X - t); the largest p-value counts. X is kept when its target lift is at least
     ``min_lift`` (high) or at most 1 / ``min_lift`` (low), and its rate improves on every
     generalisation's by that factor in that direction;
   - both: a term that holds for IMPLIED (95%) of the rows of the other terms adds nothing (as a
     brand implies its tier), so X is dropped.
5. Correction: Benjamini-Hochberg over every tested conjunction (m = ``tested``). p-values are
   computed for the conjunctions that pass the lift rules; the others rank after them, which can
   only raise a q-value (conservative). Listed segments have q <= ``max_q_value``.
6. Score (the ranking): unsupervised n_X ln(min(split_lift, adjusted_lift)), the log-likelihood gain
   of X over its best split and over what its members' activity predicts (docs/discover.md,
   "Activity"; ACTIVITY_STRATA strata of rows by how many candidate features they have);
   supervised, the target rows beyond (high) or short of (low) what the members' activity strata
   predict. Without the adjustment (``adjust_for_activity`` false, or fewer than
   ACTIVITY_MIN_CANDIDATES candidates) n_X ln(split_lift) and n |WRAcc|. Times the mean weight of
   the terms' fields (``field_weights``). A segment whose score is not positive is not listed.
7. Redundancy by members (segsrv.engine.segmentation.non_redundant): Jaccard index and overlap beyond
   chance with every segment listed before; with a target and both directions, the high and low
   lists take turns.
8. Each listed segment gets a description in words, a catalog name and its most over-indexed other
   candidate features (segsrv.engine.describe). With ``k``, a segmentation
   (segsrv.engine.segmentation).

Where the counts come from is the only thing that differs between a snapshot and a sharded snapshot:
the search (``search``: the candidates, the levels, every test, BH, the ranking, redundancy, the
segmentation) asks a ``SearchCounts`` for exact counts, a batch at a time. ``LocalCounts`` counts on
one snapshot's bitsets; segsrv/engine/sharded/discover.py sums the counts of every shard's
``LocalCounts``, one ``ShardedSnapshot.map`` per batch, so a sharded search takes the same decisions
on the same counts. Candidates keep their field-and-value order (``FeatureSet.of(..., in_order=True)``),
so no position, tie or beam depends on which features a snapshot stores dense.

``cancel.check()`` runs between steps and inside the levels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .. import _kernels
from ..errors import LimitExceededError, QueryError
from ..ops.conditions import All, Condition, condition_fields
from ..ops.discover import (
    DEFAULT_MIN_LIFT, DEFAULT_MIN_SHARE, DEFAULT_MIN_TARGET_LIFT, DiscoveredSegment, DiscoverQuery, DiscoverResult,
)
from ..snapshot.reader import Snapshot, Universe
from . import cancel
from . import stats as st
from .conditions import bool_to_bitset, evaluate
from .cooccurrence import FeatureSet
from .describe import description, related_features, segment_names
from .fields import check_patterns, identifier_like_fields, select_fields
from .relate import count_features
from .segmentation import non_redundant, segmentation

DEFAULT_MAX_CANDIDATES = 2000  # the server's limit on candidate features (segsrv serve --max-discover-candidates)
BEAM = 400  # kept conjunctions of a level extended to the next, highest score first
IMPLIED = 0.95  # a term holding for this share of the other terms' rows adds nothing
ACTIVITY_STRATA = 10  # rows grouped by how many candidate features they have (deciles)
ACTIVITY_MIN_CANDIDATES = 30  # fewer: a row's activity would be mostly the features tested, so no adjustment
_STRATUM_BATCH = 256  # conjunction bitsets materialised at a time for their stratum counts

Terms = tuple[int, ...]  # a conjunction: candidate positions, ascending


class BatchOverlaps(Protocol):
    """Rows shared by the segments of a batch and the segments listed so far (segmentation.non_redundant)."""

    listed: np.ndarray  # int64[b, l]: each batch segment's rows in each listed one

    def later(self, j: int) -> np.ndarray:
        """int64[b - j - 1]: batch segment j's rows in each batch segment after it."""


class SearchCounts(Protocol):
    """The exact counts a search asks for, over the rows searched (the universe's rows in `within`).
    Candidates are positions 0..k-1 of the `cand` given to ``start``; a conjunction is a tuple or row of
    positions. Each method is one batch (over shards: one round of ``map``)."""

    def rows(self) -> tuple[int, int]:
        """(rows searched, of them with the target (0 without one))."""

    def feature_rows(self, fids: np.ndarray) -> np.ndarray:
        """int64[len(fids)]: each feature's rows searched."""

    def start(self, cand: np.ndarray, activity: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Take `cand` as the candidates: (every pair's rows int64[k, k], with a target their target rows
        int64[k, k], with `activity` how many rows have 0..k candidates int64[k + 1])."""

    def strata(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows grouped into activity strata by `edges` (a row's stratum: searchsorted(edges, its candidate
        count, "right")): (each stratum's rows int64[S], each candidate's rows in each int64[S, k], with a
        target each stratum's target rows int64[S])."""

    def stratum_counts(self, terms: np.ndarray) -> np.ndarray:
        """int64[m, S]: rows of each conjunction (a row of `terms`) in each activity stratum."""

    def conjunctions(self, terms: list[Terms]) -> tuple[np.ndarray, np.ndarray | None]:
        """(each conjunction's rows, with a target its target rows)."""

    def extend(self, bases: np.ndarray, b_idx: np.ndarray, c_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows of each conjunction bases[b_idx[i]] + candidate c_idx[i], with a target their target rows)."""

    def overlaps(self, batch: list[Terms], listed: list[Terms]) -> BatchOverlaps:
        """The rows each segment of `batch` shares with each of `listed`, and (when asked: only after a batch
        segment is listed) with the batch's later ones."""

    def related(self, segments: list[Terms]) -> np.ndarray:
        """int64[s, k]: each segment's rows having each candidate."""

    def outside(self, segments: list[Terms], union_of: list[Terms]) -> np.ndarray:
        """int64[s]: each segment's rows in none of the segments `union_of`."""

    def layered(self, segments: list[Terms]) -> tuple[np.ndarray, int]:
        """(each segment's rows in none of the segments before it, rows in two or more of them)."""


class LocalCounts:
    """The counts of a search over one snapshot's rows, from its own bitsets. A sharded search runs one per
    shard (segsrv/engine/sharded/discover.py)."""

    def __init__(self, snapshot: Snapshot, universe: Universe, within: Condition, target: Condition | None):
        self.u = universe
        self.within = None if isinstance(within, All) else evaluate(snapshot, universe, within)
        self.n = universe.n_rows if self.within is None else int(_kernels.popcount(self.within))
        self.target = None
        if target is not None:
            self.target = evaluate(snapshot, universe, target)
            if self.within is not None:
                self.target = _kernels.bitset_and(self.target, self.within)
        self.cand = np.zeros(0, np.int64)
        self.features: FeatureSet | None = None
        self._activity: np.ndarray | None = None
        self.edges: np.ndarray | None = None  # the activity strata's edges, once `strata` cut them
        self._strata: tuple[bytes, np.ndarray] | None = None  # (edges, stratum bitsets)
        self._kept: dict[Terms, np.ndarray] = {}  # bitsets of listed segments, asked for again

    def rows(self) -> tuple[int, int]:
        return self.n, int(_kernels.popcount(self.target)) if self.target is not None else 0

    def feature_rows(self, fids: np.ndarray) -> np.ndarray:
        if self.within is None:
            return np.asarray(self.u.feature_count[fids], dtype=np.int64)
        if len(fids) and self.n:
            return count_features(self.u, self.within, self.n, fids)[0].astype(np.int64)
        return np.zeros(len(fids), np.int64)

    def use(self, cand: np.ndarray) -> None:
        """Take `cand` as the candidates (positions in its order), without counting anything."""
        if self.features is not None and np.array_equal(cand, self.cand):
            return
        self.cand = np.asarray(cand, dtype=np.int64)
        self.features = FeatureSet.of(self.u, self.cand, in_order=True)
        if self.within is not None:
            self.features = self.features.restrict(self.within)
        self._activity, self._strata, self._kept = None, None, {}

    def start(self, cand, activity):
        self.use(cand)
        pairs = self.features.pairs()
        cancel.check()
        pairs_t = None
        if self.target is not None:
            pairs_t = self.features.restrict(self.target).pairs()
            cancel.check()
        histogram = None
        if activity:
            histogram = np.bincount(self.activity().astype(np.int64), minlength=len(self.cand) + 1)
        return pairs, pairs_t, histogram

    def activity(self) -> np.ndarray:
        """float[rows searched]: how many candidate features each row searched has (sums of ones: exact)."""
        if self._activity is None:
            u = self.u
            weights = np.zeros(u.n_features)
            weights[self.cand] = 1.0
            rows = None if self.within is None else _kernels.bitset_to_ids(self.within, u.n_rows)
            self._activity = _kernels.csr_row_scores(u.csr_indptr, u.csr_indices, weights, rows)
        return self._activity

    def strata_bits(self, edges: np.ndarray) -> np.ndarray:
        """uint64[S, n_words]: the rows searched of each activity stratum."""
        edges = np.asarray(edges, dtype=np.float64)
        if self._strata is None or self._strata[0] != edges.tobytes():
            u, activity = self.u, self.activity()
            rows = None if self.within is None else _kernels.bitset_to_ids(self.within, u.n_rows)
            stratum = np.searchsorted(edges, activity, side="right")
            strata = np.zeros((len(edges) + 1, u.n_words), dtype=np.uint64)
            for s in range(len(strata)):
                mask = stratum == s
                if rows is None:
                    strata[s] = bool_to_bitset(mask, u.n_words)
                else:
                    strata[s] = _kernels.ids_to_bitset(np.ascontiguousarray(rows[mask]), u.n_words)
            self._strata = (edges.tobytes(), strata)
        return self._strata[1]

    def strata(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        strata = self.strata_bits(self.edges)
        rows = np.array([_kernels.popcount(s) for s in strata], dtype=np.int64)
        target = None if self.target is None else np.asarray(_kernels.and_count_dense(self.target, strata), np.int64)
        return rows, np.asarray(self.features.cross(strata), dtype=np.int64), target

    def stratum_counts(self, terms: np.ndarray) -> np.ndarray:
        strata = self.strata_bits(self.edges)
        out = np.zeros((len(terms), len(strata)), dtype=np.int64)
        for start in range(0, len(terms), _STRATUM_BATCH):
            rows = terms[start:start + _STRATUM_BATCH]
            left = self.bits(rows)
            out[start:start + len(rows)] = _kernels.cross_cooccurrence(left, strata)
            cancel.check()
        return out

    def bits(self, terms: list[Terms] | np.ndarray) -> np.ndarray:
        """uint64[m, n_words]: the rows searched having every term of each conjunction, bitsets of our own.
        Each candidate used is read (or materialised) once, the conjunctions ANDed with numpy a batch at
        a time: a kernel call per conjunction costs more than the AND itself on a shard's few words."""
        out = np.zeros((len(terms), self.u.n_words), dtype=np.uint64)
        lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
        for length in np.unique(lengths).tolist():
            which = np.flatnonzero(lengths == length)
            group = np.array([terms[i] for i in which.tolist()], dtype=np.int64).reshape(len(which), length)
            used, at = np.unique(group, return_inverse=True)
            at = at.reshape(group.shape)
            features = self.features.stack(used)
            bits = features[at[:, 0]]
            if self.within is not None:
                bits &= self.within
            for j in range(1, length):
                bits &= features[at[:, j]]
            out[which] = bits
        return out

    def kept_bits(self, segments: list[Terms]) -> np.ndarray:
        """bits(segments) of listed segments, kept: listed segments are counted again and again."""
        keys = [tuple(int(t) for t in terms) for terms in segments]
        missing = list(dict.fromkeys(k for k in keys if k not in self._kept))
        if missing:
            self._kept.update(zip(missing, self.bits(missing)))
        return np.stack([self._kept[k] for k in keys]) if keys else np.zeros((0, self.u.n_words), np.uint64)

    def conjunctions(self, terms):
        bits = self.bits(terms)
        counts = np.bitwise_count(bits).sum(axis=1, dtype=np.int64)
        target = None
        if self.target is not None:
            target = np.asarray(_kernels.and_count_dense(self.target, bits), dtype=np.int64)
        return counts, target

    def extend(self, bases, b_idx, c_idx):
        left = self.bits(bases)
        counts = np.asarray(self.features.cross(left)[b_idx, c_idx], dtype=np.int64)
        cancel.check()
        target = None
        if self.target is not None:
            left_t = left & self.target
            target = np.asarray(self.features.cross(left_t)[b_idx, c_idx], dtype=np.int64)
        return counts, target

    def overlaps(self, batch, listed):
        return _LocalOverlaps(self, batch, listed)

    def overlap_counts(self, batch: list[Terms], listed: list[Terms]) -> np.ndarray:
        """int64[b, l]: overlaps(batch, listed).listed, a shard's answer (its BatchOverlaps cannot travel)."""
        return np.asarray(_LocalOverlaps(self, batch, listed).listed, dtype=np.int64)

    def first_overlaps(self, segments: list[Terms]) -> np.ndarray:
        """int64[s - 1]: the rows segments[0] shares with each later one (a batch's later overlaps over shards)."""
        bits = self.bits(segments)
        return np.asarray(_kernels.and_count_dense(bits[0], bits[1:]), dtype=np.int64)

    def related(self, segments):
        if not segments:
            return np.zeros((0, len(self.cand)), dtype=np.int64)
        return np.asarray(self.features.cross(self.kept_bits(segments)), dtype=np.int64)

    def outside(self, segments, union_of):
        union = np.bitwise_or.reduce(self.kept_bits(union_of), axis=0) if union_of else \
            np.zeros(self.u.n_words, dtype=np.uint64)
        return np.bitwise_count(self.kept_bits(segments) & ~union).sum(axis=1, dtype=np.int64)

    def layered(self, segments):
        bits = self.kept_bits(segments)
        before = np.zeros(self.u.n_words, dtype=np.uint64)
        multi = np.zeros_like(before)
        new = np.zeros(len(segments), dtype=np.int64)
        for i, row in enumerate(bits):
            new[i] = np.bitwise_count(row & ~before).sum()
            multi |= before & row
            before |= row
        return new, int(np.bitwise_count(multi).sum())


class _LocalOverlaps:
    """BatchOverlaps on one snapshot: the batch's bitsets materialised once, the later overlaps counted when
    asked (only after a batch segment is listed)."""

    def __init__(self, counts: LocalCounts, batch: list[Terms], listed: list[Terms]):
        self.bits = counts.bits(batch)
        self.listed = np.zeros((len(batch), 0), dtype=np.int64)
        if listed:
            self.listed = _kernels.cross_cooccurrence(self.bits, counts.kept_bits(listed))

    def later(self, j: int) -> np.ndarray:
        return _kernels.and_count_dense(self.bits[j], self.bits, rows=np.arange(j + 1, len(self.bits), dtype=np.int64),
                                        n_threads=1)


def histogram_quantiles(histogram: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """np.quantile(values, quantiles) (its default "linear" method), bit for bit, of the values 0, 1, 2, ...
    held histogram[0], histogram[1], ... times: the activity strata of rows counted apart (shards) from their
    summed histograms. Mirrors numpy's computation: the virtual index (n - 1) q, its two neighbours in sorted
    order, and numpy's lerp."""
    histogram = np.asarray(histogram, dtype=np.int64)
    n = int(histogram.sum())
    virtual = (n - 1) * np.asarray(quantiles, dtype=np.float64)
    previous = np.floor(virtual)
    top = virtual >= n - 1  # numpy takes the largest value there
    ends = np.cumsum(histogram)

    def value_at(index: np.ndarray) -> np.ndarray:  # the sorted values' element at each index
        return np.searchsorted(ends, index, side="right").astype(np.float64)

    a = value_at(np.where(top, n - 1, previous).astype(np.int64))
    b = value_at(np.where(top, n - 1, previous + 1).astype(np.int64))
    gamma = virtual - previous
    diff = b - a
    out = a + diff * gamma
    high = gamma >= 0.5
    out[high] = (b - diff * (1 - gamma))[high]
    return out


@dataclass
class _Level:
    """Conjunctions of one length, as candidate positions (sorted within a row) and statistics."""
    terms: np.ndarray  # int64[m, L]
    n: np.ndarray  # int64[m] rows having all terms
    n_t: np.ndarray  # int64[m] of them with the target (supervised), zeros otherwise
    lift: np.ndarray  # float[m]
    split_lift: np.ndarray  # float[m]
    p: np.ndarray  # float[m]
    score: np.ndarray  # float[m]
    high: np.ndarray  # bool[m] (supervised: direction high)
    adjusted_lift: np.ndarray  # float[m] (unsupervised: over independence given activity)

    FIELDS = ("terms", "n", "n_t", "lift", "split_lift", "p", "score", "high", "adjusted_lift")

    @classmethod
    def empty(cls, length: int) -> "_Level":
        z = np.zeros(0)
        return cls(np.zeros((0, length), np.int64), z.astype(np.int64), z.astype(np.int64), z, z, z, z,
                   z.astype(bool), z)

    def take(self, idx) -> "_Level":
        return _Level(*(getattr(self, name)[idx] for name in self.FIELDS))


class _Search:
    """One search's counts: pairs, the activity strata and longer conjunctions memoised by term tuple, fetched
    from its SearchCounts a batch at a time."""

    def __init__(self, counts: SearchCounts, k: int, n: int, n_t: int):
        self.c = counts
        self.k = k
        self.n = n
        self.n_t = n_t
        self.pairs = np.zeros((0, 0), np.int64)
        self.pairs_t = np.zeros((0, 0), np.int64)
        self.counts: dict[Terms, int] = {}
        self.target_counts: dict[Terms, int] = {}
        self.stratum_rows = np.zeros(0)  # float[S]: rows searched in each activity stratum
        self.stratum_rates = np.zeros((0, 0))  # float[S, k]: share of a stratum's rows having each candidate
        self.stratum_target_rates = np.zeros(0)  # float[S]: share of a stratum's rows with the target

    def set_activity(self, histogram: np.ndarray) -> None:
        """Group the rows searched by activity (how many candidate features each has) into ACTIVITY_STRATA
        quantile strata, and count every candidate in each (docs/discover.md, "Activity")."""
        edges = np.unique(histogram_quantiles(histogram, np.arange(1, ACTIVITY_STRATA) / ACTIVITY_STRATA))
        rows, features, target = self.c.strata(edges)
        self.stratum_rows = rows.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.stratum_rates = features / self.stratum_rows[:, None]
            if target is not None:
                self.stratum_target_rates = target / self.stratum_rows

    def expected_target(self, terms: np.ndarray) -> np.ndarray:
        """Target rows each conjunction would have if its members had the target rate of their activity
        stratum."""
        if terms.shape[1] == 1:
            counts = self.stratum_rates[:, terms[:, 0]].T * self.stratum_rows
        else:
            counts = self.c.stratum_counts(terms) if len(terms) else np.zeros((0, len(self.stratum_rows)), np.int64)
        return counts @ self.stratum_target_rates

    def adjusted_lift(self, terms: np.ndarray, n_x: np.ndarray) -> np.ndarray:
        """n_X over what independence of its terms within each activity stratum predicts."""
        rates = self.stratum_rates[:, terms]  # [S, m, L]
        expected = (np.prod(rates, axis=2) * self.stratum_rows[:, None]).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return n_x / expected

    def fetch(self, keys: set[Terms]) -> None:
        """Count the conjunctions of `keys` not counted yet (with a target, their target rows too)."""
        missing = sorted(t for t in keys if t not in self.counts)
        if not missing:
            return
        counts, target = self.c.conjunctions(missing)
        self.counts.update(zip(missing, counts.tolist()))
        if target is not None:
            self.target_counts.update(zip(missing, target.tolist()))
        cancel.check()

    def count(self, terms: Terms) -> int:
        if len(terms) == 1:
            return int(self.pairs[terms[0], terms[0]])
        if len(terms) == 2:
            return int(self.pairs[terms[0], terms[1]])
        return self.counts[terms]

    def target_count(self, terms: Terms) -> int:
        if len(terms) == 0:
            return self.n_t
        if len(terms) == 1:
            return int(self.pairs_t[terms[0], terms[0]])
        if len(terms) == 2:
            return int(self.pairs_t[terms[0], terms[1]])
        return self.target_counts[terms]


def field_weights(universe: Universe, weights: dict[str, float]) -> np.ndarray:
    """Weight per field index of the universe: 1 unless a name or glob gives one (the last match wins)."""
    out = np.ones(len(universe.field_names))
    index = {name: i for i, name in enumerate(universe.field_names)}
    check_patterns(list(weights), "field_weights")
    for pat, w in weights.items():
        for name in select_fields(universe, [pat], set(), key="field_weights"):
            out[index[name]] = w
    return out


def _single_valued(universe: Universe) -> np.ndarray:
    """Per field index: a row has at most one of its values (two of them never co-occur)."""
    return np.array([f.semantics == "own" and f.kind != "multi" for f in universe.fields.values()], dtype=bool)


def _splits(length: int):
    """Every split of positions 0..length-1 into two non-empty parts, each once."""
    for mask in range(1, 1 << (length - 1)):
        yield (tuple(i for i in range(length) if mask >> i & 1), tuple(i for i in range(length) if not mask >> i & 1))


def _excluded(query: DiscoverQuery) -> set[str]:
    return condition_fields(query.target) if query.target is not None else set()


def discover(snapshot: Snapshot, query: DiscoverQuery, *, privacy_k: int = 0,
             max_candidates: int = DEFAULT_MAX_CANDIDATES) -> DiscoverResult:
    def local_counts():
        u = snapshot.universe(query.universe)
        return LocalCounts(snapshot, u, query.within, query.target), u, identifier_like_fields(u)

    return search(local_counts, query, snapshot.name, snapshot.version, privacy_k=privacy_k,
                  max_candidates=max_candidates)


def search(open_counts, query: DiscoverQuery, snapshot_name: str, version: str, *, privacy_k: int,
           max_candidates: int) -> DiscoverResult:
    """The search (the module docstring) over the counts of `open_counts()` -> (a SearchCounts, the universe
    giving the fields and dictionary, the fields "every field" leaves out), called once the query is
    checked."""
    t0 = time.perf_counter()
    query.validate()
    if query.max_candidates is not None and query.max_candidates > max_candidates:
        raise LimitExceededError(f"max_candidates: {query.max_candidates} exceeds the server's limit {max_candidates}",
                                 [("max_candidates", f"at most {max_candidates}")])
    limit_candidates = query.max_candidates or max_candidates
    counts, u, identifier_like = open_counts()
    n, n_t = counts.rows()
    min_support = query.min_support or max(1, math.ceil(DEFAULT_MIN_SHARE * n))
    min_support = max(min_support, privacy_k if privacy_k > 1 else 1)
    min_lift = query.min_lift if query.min_lift is not None else (
        DEFAULT_MIN_TARGET_LIFT if query.supervised else DEFAULT_MIN_LIFT)
    result = DiscoverResult(snapshot=snapshot_name, version=version, universe=u.name, n_rows=n,
                            candidates=0, tested=0, segments=[], elapsed_ms=0.0, min_support=min_support,
                            min_lift=min_lift, target=query.target)

    def done() -> DiscoverResult:
        result.elapsed_ms = (time.perf_counter() - t0) * 1000
        return result

    if privacy_k > 1 and 0 < n < privacy_k:
        result.n_rows, result.suppressed = 0, True
        return done()
    skip = _excluded(query)
    if query.fields:
        names = select_fields(u, list(query.fields), skip, key="fields")
    else:
        names = [f for f in u.fields if f not in skip and f not in set(identifier_like)]
    weights = field_weights(u, query.field_weights)
    result.target_count = n_t
    if query.supervised and (n_t == 0 or n_t == n):
        what = "no row" if n_t == 0 else "every row"
        raise QueryError(f"target: {what} of the {n:,} rows searched has it; nothing can over- or under-index",
                         [("target", f"{what} has it")])

    # 1. candidates, in the order of their fields and values
    fids = np.concatenate([u.fields[f].feature_ids for f in names]) if names else np.zeros(0, np.int64)
    fids = np.asarray(fids, dtype=np.int64)
    n_f = counts.feature_rows(fids)
    cand = fids[(n_f >= min_support) & (n_f < n)]
    if len(cand) > limit_candidates:
        raise LimitExceededError(
            f"max_candidates: {len(cand):,} candidate features (of {len(names)} fields, each with at least "
            f"{min_support:,} rows) exceed the limit {limit_candidates:,}; name fewer fields or raise min_support",
            [("max_candidates", f"at most {limit_candidates} candidate features")])
    result.candidates = len(cand)
    cancel.check()
    if len(cand) == 0 or n == 0:
        return done()
    search = _Search(counts, len(cand), n, n_t)
    field_of = np.asarray(u.feature_field[cand], dtype=np.int64)
    single = _single_valued(u)[field_of]

    # 2. pairs (and with a target, the pairs' target rows), and the rows' activity
    adjust = query.adjust_for_activity and search.k >= ACTIVITY_MIN_CANDIDATES
    search.pairs, pairs_t, histogram = counts.start(cand, adjust)
    if pairs_t is not None:
        search.pairs_t = pairs_t
    cancel.check()
    if adjust:
        search.set_activity(histogram)
        cancel.check()
    frequent = search.pairs >= min_support
    np.fill_diagonal(frequent, False)
    frequent &= ~((field_of[:, None] == field_of[None, :]) & single[:, None])

    ctx = _Context(search, min_support, min_lift, query, weights[field_of], field_of, single, frequent, adjust)
    levels: list[_Level] = []
    if query.supervised:
        levels.append(ctx.judge_subgroups(np.arange(search.k)[:, None]))
    iu, ju = np.nonzero(np.triu(frequent, 1))
    pairs = np.stack([iu, ju], axis=1).astype(np.int64)
    ctx.tested += len(pairs)
    if query.max_length >= 2:
        levels.append(ctx.judge(pairs))
        cancel.check()
    for _length in range(3, query.max_length + 1):
        grown = ctx.extend(levels[-1])
        cancel.check()
        if len(grown) == 0:
            break
        levels.append(ctx.judge(grown))
        cancel.check()
    result.tested = ctx.tested

    # 5. correction, 6. ranking, 7. redundancy
    found = _concat(levels)
    terms = [tuple(t for t in row if t >= 0) for row in found.terms.tolist()]  # ragged
    used = found.terms >= 0  # the mean weight of each conjunction's terms' fields, summed left to right
    found.score = found.score * (np.where(used, ctx.weight[np.maximum(found.terms, 0)], 0.0).sum(axis=1)
                                 / used.sum(axis=1))
    q = _conservative_bh(found.p, ctx.tested)
    keep = np.flatnonzero((q <= query.max_q_value) & (found.score > 0))
    order = keep[np.lexsort((-found.n[keep], -found.score[keep]))]
    if query.supervised and len(ctx.directions) == 2:  # both directions: high and low take turns
        order = _interleave(order[found.high[order]], order[~found.high[order]])
    listed = non_redundant(counts, n, terms, found.n, order, query.max_overlap, query.effective_max_excess_overlap,
                           query.limit)
    cancel.check()

    # 8. descriptions, related features, names, segmentation
    listed_terms = [terms[i] for i in listed]
    related = counts.related(listed_terms) if query.describe and listed else None
    segments = []
    for j, i in enumerate(listed):
        segments.append(_segment(u, cand, search, terms[i], found.take([i]), float(q[i]),
                                 None if related is None else related[j], min_support, query.describe,
                                 query.supervised))
        cancel.check()
    for seg, name in zip(segments, segment_names(u, segments)):
        seg.name = name
    result.segments = segments
    if query.k and segments:
        result.segmentation = segmentation(segments, listed_terms, query.k, n, counts)
    return done()


def _concat(levels: list[_Level]) -> _Level:
    """Every level's conjunctions in one _Level; terms padded with -1 to the longest length."""
    if not levels:
        return _Level.empty(0)
    width = max(lv.terms.shape[1] for lv in levels)
    terms = []
    for lv in levels:
        pad = np.full((len(lv.terms), width), -1, dtype=np.int64)
        pad[:, :lv.terms.shape[1]] = lv.terms
        terms.append(pad)
    return _Level(np.concatenate(terms), *(np.concatenate([getattr(lv, name) for lv in levels])
                                           for name in _Level.FIELDS[1:]))


def _conservative_bh(p: np.ndarray, m: int) -> np.ndarray:
    """Benjamini-Hochberg q-values of the computed p-values among m tests whose other p-values rank after
    them: q_(i) = min over j >= i of p_(j) m / j (at most 1)."""
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * max(m, len(p)) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(len(p))
    out[order] = np.minimum(q, 1.0)
    return out


class _Context:
    """The rules of one search, applied a level at a time (vectorised over its conjunctions)."""

    def __init__(self, search: _Search, min_support: int, min_lift: float, query: DiscoverQuery,
                 weight: np.ndarray, field_of: np.ndarray, single: np.ndarray, frequent: np.ndarray, adjust: bool):
        self.s = search
        self.min_support = min_support
        self.min_lift = min_lift
        self.supervised = query.supervised
        self.adjust = adjust
        self.directions = ("high", "low") if query.direction == "both" else (query.direction,)
        self.weight = weight
        self.field_of = field_of
        self.single = single
        self.frequent = frequent
        self.tested = 0

    # -- counts of sub-conjunctions ---------------------------------------------------------

    def sub_counts(self, terms: np.ndarray, parts: tuple[int, ...], target: bool = False) -> np.ndarray:
        """Rows (or target rows) of the sub-conjunction made of the columns `parts` of each row of terms
        (of three or more columns: fetched first, by `fetch_parts`)."""
        s = self.s
        if len(parts) == 1 and not target:
            return np.diagonal(s.pairs)[terms[:, parts[0]]]
        if len(parts) == 1:
            return np.diagonal(s.pairs_t)[terms[:, parts[0]]]
        if len(parts) == 2:
            return (s.pairs_t if target else s.pairs)[terms[:, parts[0]], terms[:, parts[1]]]
        get = s.target_count if target else s.count
        return np.array([get(t) for t in map(tuple, terms[:, list(parts)].tolist())], dtype=np.int64)

    def fetch_parts(self, terms: np.ndarray, parts: list[tuple[int, ...]]) -> None:
        """Count, in one batch, the sub-conjunctions of three or more columns that sub_counts will read."""
        keys = {t for p in parts if len(p) >= 3 for t in map(tuple, terms[:, list(p)].tolist())}
        self.s.fetch(keys)

    # -- unsupervised ------------------------------------------------------------------------

    def judge(self, terms: np.ndarray) -> _Level:
        if self.supervised:
            return self.judge_subgroups(terms)
        s, n = self.s, float(self.s.n)
        length = terms.shape[1]
        splits = list(_splits(length))
        self.fetch_parts(terms, [p for split in splits for p in split])
        n_x = self.counts(terms)
        ind = n_x.astype(np.float64)
        for j in range(length):
            ind = ind * n / self.sub_counts(terms, (j,))
        lift = ind / n  # n_X n^(L-1) / prod n_i
        split_lift = np.full(len(terms), np.inf)
        ok = np.ones(len(terms), dtype=bool)
        for a, b in splits:
            n_a, n_b = self.sub_counts(terms, a), self.sub_counts(terms, b)
            split_lift = np.minimum(split_lift, n_x * n / (n_a.astype(np.float64) * n_b))
        ok &= split_lift >= self.min_lift
        ok &= ~self.implied(terms, n_x)
        idx = np.flatnonzero(ok)
        p = np.zeros(len(idx))
        for a, b in splits:
            p = np.maximum(p, st.tail_over(s.n, self.sub_counts(terms[idx], a), self.sub_counts(terms[idx], b),
                                           n_x[idx]))
        if self.adjust:
            adjusted = s.adjusted_lift(terms[idx], n_x[idx])
            score = n_x[idx] * np.log(np.minimum(split_lift[idx], adjusted))
        else:
            adjusted = np.full(len(idx), np.nan)
            score = n_x[idx] * np.log(split_lift[idx])
        zeros = np.zeros(len(idx), dtype=np.int64)
        return _Level(terms[idx], n_x[idx], zeros, lift[idx], split_lift[idx], p, score, np.zeros(len(idx), bool),
                      adjusted)

    def counts(self, terms: np.ndarray) -> np.ndarray:
        if terms.shape[1] <= 2:
            return self.sub_counts(terms, tuple(range(terms.shape[1])))
        return np.array([self.s.counts[t] for t in map(tuple, terms.tolist())], dtype=np.int64)

    def implied(self, terms: np.ndarray, n_x: np.ndarray) -> np.ndarray:
        """A term holding for IMPLIED of the other terms' rows adds nothing."""
        out = np.zeros(len(terms), dtype=bool)
        length = terms.shape[1]
        for j in range(length):
            rest = tuple(i for i in range(length) if i != j)
            out |= n_x >= IMPLIED * self.sub_counts(terms, rest)
        return out

    # -- supervised ---------------------------------------------------------------------------

    def target_counts(self, terms: np.ndarray) -> np.ndarray:
        if terms.shape[1] <= 2:
            return self.sub_counts(terms, tuple(range(terms.shape[1])), target=True)
        return np.array([self.s.target_counts[t] for t in map(tuple, terms.tolist())], dtype=np.int64)

    def judge_subgroups(self, terms: np.ndarray) -> _Level:
        s = self.s
        n, n_t = s.n, s.target_count(())
        r = n_t / n
        length = terms.shape[1]
        rests = [tuple(i for i in range(length) if i != j) for j in range(length)] if length > 1 else []
        self.fetch_parts(terms, rests)
        n_x = self.counts(terms)
        x_t = self.target_counts(terms)
        if length == 1:
            self.tested += len(terms)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = x_t / n_x
        lift = rate / r
        high = lift >= self.min_lift if "high" in self.directions else np.zeros(len(terms), bool)
        low = lift <= 1.0 / self.min_lift if "low" in self.directions else np.zeros(len(terms), bool)
        ok = (high | low) & (n_x > 0)
        worst = lift.copy()
        if length > 1:
            ok &= ~self.implied(terms, n_x)
            for rest in rests:
                g_n, g_t = self.sub_counts(terms, rest), self.sub_counts(terms, rest, target=True)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = rate / (g_t / g_n)
                ok &= np.where(high, rel >= self.min_lift, rel <= 1.0 / self.min_lift)
                worst = np.where(high, np.minimum(worst, rel), np.maximum(worst, rel))
        idx = np.flatnonzero(ok)
        hi = high[idx]
        p = np.where(hi, st.tail_over(n, n_t, n_x[idx], x_t[idx]), st.tail_under(n, n_t, n_x[idx], x_t[idx]))
        for rest in rests:
            g_n = self.sub_counts(terms[idx], rest)
            g_t = self.sub_counts(terms[idx], rest, target=True)
            p = np.maximum(p, np.where(hi, st.tail_over(g_n, g_t, n_x[idx], x_t[idx]),
                                       st.tail_under(g_n, g_t, n_x[idx], x_t[idx])))
        if self.adjust:  # target rows beyond what the members' activity predicts, in the direction
            expected = s.expected_target(terms[idx])
            with np.errstate(divide="ignore", invalid="ignore"):
                adjusted = x_t[idx] / expected
            score = np.where(hi, x_t[idx] - expected, expected - x_t[idx])
        else:
            adjusted = np.full(len(idx), np.nan)
            score = np.abs(x_t[idx] - n_x[idx] * r)
        return _Level(terms[idx], n_x[idx], x_t[idx], lift[idx], worst[idx], p, score, hi, adjusted)

    # -- the next level -----------------------------------------------------------------------

    def extend(self, level: _Level) -> np.ndarray:
        """Conjunctions one longer than the BEAM highest-scoring of `level` (their counts, and target counts,
        memoised), those reaching min_support; rows of sorted candidate positions."""
        s = self.s
        if len(level.terms) == 0:
            return np.zeros((0, level.terms.shape[1] + 1), np.int64)
        top = np.lexsort((-level.n, -level.score))[:BEAM]
        bases = level.terms[top]
        ok = np.ones((len(bases), s.k), dtype=bool)
        for j in range(bases.shape[1]):
            ok &= self.frequent[bases[:, j]]
        b_idx, c_idx = np.nonzero(ok)
        if len(b_idx) == 0:
            return np.zeros((0, bases.shape[1] + 1), np.int64)
        grown = np.sort(np.concatenate([bases[b_idx], c_idx[:, None]], axis=1), axis=1)
        grown, first = np.unique(grown, axis=0, return_index=True)
        b_idx, c_idx = b_idx[first], c_idx[first]
        counts, t_counts = s.c.extend(bases, b_idx, c_idx)
        frequent = counts >= self.min_support
        self.tested += int(frequent.sum())
        grown, counts = grown[frequent], counts[frequent]
        for row, c in zip(grown.tolist(), counts.tolist()):
            s.counts[tuple(row)] = c
        if self.supervised and len(grown):
            for row, c in zip(grown.tolist(), t_counts[frequent].tolist()):
                s.target_counts[tuple(row)] = c
        return grown


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a[0], b[0], a[1], b[1], ... then the rest of the longer one."""
    out = np.empty(len(a) + len(b), dtype=np.int64)
    m = min(len(a), len(b))
    out[0:2 * m:2], out[1:2 * m:2] = a[:m], b[:m]
    out[2 * m:] = a[m:] if len(a) > m else b[m:]
    return out


def _segment(u: Universe, cand: np.ndarray, search: _Search, positions: Terms, f: _Level, q: float,
             related_counts: np.ndarray | None, min_support: int, describe: int,
             supervised: bool) -> DiscoveredSegment:
    """A listed conjunction as the answer's segment (its name is set afterwards, with all the names).
    related_counts: the segment's rows having each candidate (None: no related features asked for)."""
    n, n_t = search.n, search.n_t
    terms = [u.feature_name(int(cand[t])) for t in positions]
    n_x, x_t = int(f.n[0]), int(f.n_t[0])
    related = [] if related_counts is None else related_features(
        u, cand, set(positions), related_counts, n_x, n, np.diagonal(search.pairs), min_support, describe, IMPLIED)
    text = description(u, terms, n_x, n, float(f.lift[0]), float(f.split_lift[0]),
                       (x_t, n_t) if supervised else None, related)
    seg = DiscoveredSegment(terms=terms, support=n_x, share=n_x / n, lift=float(f.lift[0]),
                            split_lift=float(f.split_lift[0]), p_value=float(f.p[0]), q_value=q,
                            score=float(f.score[0]), description=text, related=related,
                            adjusted_lift=float(f.adjusted_lift[0]))
    if supervised:
        seg.target_support, seg.target_rate = x_t, x_t / n_x
        seg.wracc = (n_x / n) * (x_t / n_x - n_t / n)
        seg.direction = "high" if bool(f.high[0]) else "low"
    return seg
