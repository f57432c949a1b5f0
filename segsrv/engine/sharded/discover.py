"""Discover over shards: the unsharded search (segsrv.engine.discover.search: candidates, levels, every test,
Benjamini-Hochberg, ranking, redundancy, segmentation) on counts summed over the shards.

Each batch of counts the search asks for (``SearchCounts``: the rows searched, the pair matrix, the
activity histogram and strata, the extensions of a level, the overlaps of a batch of segments, ...) is one
``ShardedSnapshot.map`` of ``discover_part``: every shard answers it with its own ``LocalCounts`` (the
unsharded counter over the shard's rows), and the answers, counts only, are added. Counts over disjoint
rows add, so the search sees the unsharded snapshot's counts and takes the same decisions. The activity
strata are cut at quantiles of the summed histogram of the rows' candidate counts
(``histogram_quantiles``: np.quantile's arithmetic, bit for bit).
"""

from __future__ import annotations

import numpy as np

from ...ops.conditions import All, Condition
from ...ops.discover import DiscoverQuery, DiscoverResult
from ...snapshot.reader import Snapshot
from ..discover import DEFAULT_MAX_CANDIDATES, LocalCounts, Terms, search
from .open import MergedUniverse, ShardedSnapshot

# the LocalCounts methods a shard answers (each returns counts: ints, int64 arrays, tuples of them)
SHARD_COUNTS = frozenset({"rows", "feature_rows", "start", "strata", "stratum_counts", "conjunctions", "extend",
                          "overlap_counts", "first_overlaps", "related", "outside", "layered"})


def discover_part(shard: Snapshot, universe: str, within: Condition, target: Condition | None,
                  cand: np.ndarray | None, edges: np.ndarray | None, method: str, args: tuple):
    """One shard's counts for one batch of a search: LocalCounts(...).`method`(*args) over the shard's rows of
    `universe` in `within`, with the candidates `cand` and the activity strata cut at `edges` (None: not
    chosen yet)."""
    if method not in SHARD_COUNTS:
        raise ValueError(f"discover_part: {method!r} is not a count a shard answers")
    counts = LocalCounts(shard, shard.universe(universe), within, target)
    if cand is not None:
        counts.use(cand)
    counts.edges = edges
    return getattr(counts, method)(*args)


def _add(parts: list):
    """The shards' answers added (element by element through tuples; None stays None)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(_add(list(column)) for column in zip(*parts))
    if isinstance(first, np.ndarray):
        return np.sum(parts, axis=0, dtype=np.int64)
    return sum(parts)


class _ShardedOverlaps:
    """BatchOverlaps summed over the shards: with the listed segments in one round, a batch segment's with the
    later ones in one more round when it is listed (at most `limit` in a search)."""

    def __init__(self, counts: "ShardedCounts", batch: list[Terms], listed: list[Terms]):
        self.counts = counts
        self.batch = batch
        self.listed = counts._sum("overlap_counts", batch, listed)

    def later(self, j: int) -> np.ndarray:
        return self.counts._sum("first_overlaps", self.batch[j:])


class ShardedCounts:
    """A search's SearchCounts over a sharded snapshot: each batch one map of discover_part over the shards
    holding the universe, summed."""

    def __init__(self, sharded: ShardedSnapshot, merged: MergedUniverse, within: Condition, target: Condition | None):
        self.sharded = sharded
        self.merged = merged
        self.within = within
        self.target = target
        self.cand: np.ndarray | None = None
        self.edges: np.ndarray | None = None

    def _sum(self, method: str, *args):
        return _add(self.sharded.map(discover_part, self.merged.name, self.within, self.target, self.cand,
                                     self.edges, method, args, shards=self.merged.shards))

    def rows(self):
        return self._sum("rows")

    def feature_rows(self, fids):
        if isinstance(self.within, All):  # every row searched: the counts summed when the build was opened
            return np.asarray(self.merged.feature_count[fids], dtype=np.int64)
        return self._sum("feature_rows", fids)

    def start(self, cand, activity):
        self.cand = np.asarray(cand, dtype=np.int64)
        return self._sum("start", self.cand, activity)

    def strata(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        return self._sum("strata", self.edges)

    def stratum_counts(self, terms):
        return self._sum("stratum_counts", terms)

    def conjunctions(self, terms: list[Terms]):
        return self._sum("conjunctions", terms)

    def extend(self, bases, b_idx, c_idx):
        return self._sum("extend", bases, b_idx, c_idx)

    def overlaps(self, batch, listed):
        return _ShardedOverlaps(self, batch, listed)

    def related(self, segments):
        return self._sum("related", segments)

    def outside(self, segments, union_of):
        return self._sum("outside", segments, union_of)

    def layered(self, segments):
        return self._sum("layered", segments)


def sharded_discover(sharded: ShardedSnapshot, query: DiscoverQuery, *, privacy_k: int = 0,
                     max_candidates: int = DEFAULT_MAX_CANDIDATES) -> DiscoverResult:
    """Discover over every shard: the unsharded search on the summed counts (the module docstring)."""
    def sharded_counts():
        merged = sharded.universe(query.universe)
        return ShardedCounts(sharded, merged, query.within, query.target), merged.schema, merged.identifier_like

    return search(sharded_counts, query, sharded.name, sharded.version, privacy_k=privacy_k,
                  max_candidates=max_candidates)
