"""Assign: which catalog segments a customer is in, and how likely the others are.

Membership is exact and computed per customer, never by scanning the universe: every
catalog condition is compiled once per snapshot version into a program over *feature
presence* by the condition evaluator of segsrv.engine.conditions (the same resolution and
errors as bitset evaluation) with presence ops: Term / AnyOf leaves become feature ids;
Range leaves read the raw numeric column; segment references are inlined. For a batch of known ids the programs run
vectorised over the batch's rows of the CSR index (row -> feature ids); for a new
customer they run over the given feature list. For a single id (the per-request call) each condition is
compiled a second time to plain Python over the row's feature set and raw numbers (``_ScalarOps``; numpy
over one-element arrays costs more than the whole answer), and the answer is built for the one row. All
agree with evaluating the condition to a bitset over the whole universe (tests/engine/test_assign.py checks
it, and that one id's answer is its batch entry).

Propensity (``include_propensities``): for a segment the customer is not in, P(member) from the
customer's features. Two methods (``propensity_method``; docs/assign.md), both with evidence = every
feature except those of the fields the segment's condition mentions (directly or through references:
they decide membership and would make the score trivial):

* ``logistic`` (default, the method of Predict, ScoreSegment and Evaluate, fitted by the same
  ``logistic.fit_rows``): an L2 logistic regression of membership over every row of the universe
  (segsrv.engine.catalog_models.fit_membership; l2 cross-validated unless ``propensity_l2`` fixes
  it, and then the pairwise interactions tried as Predict's are, kept when they pass the same
  held-out bar). ``segsrv segments apply`` fits the
  cross-validated models ahead and stores them in the version; a model whose content key matches a
  stored one is read, never fitted.
* ``factorized``: the factorised Predict model with the conjunction method's significance rule:
  classes [member, non-member] over the universe, base rate = the segment's share, one smoothed lift
  per evidence feature (``lift_f(c) = ((n_{c,f} + a q_f) / (n_c + a)) / q_f``, ``q_f = n_f / N``, a =
  ``prior_strength``), except features whose G-test of independence from membership has p >
  ``max_p_value`` (``factorized_membership``).

Either way a segment's model is a membership logit bias + sum of d[f] over the row's features (+ the
weight of each pair of the model whose two features the row has): every segment's feature weights
form one [features x segments] matrix, and one CSR pass over a batch's rows scores all segments' main
effects; each segment's pairs add one pass of the pair kernel (``csr_pair_scores``). Models not stored are fitted once per snapshot version, segment and parameter set and
cached; ``warm_catalog`` loads the stored default ones ahead of the first request (the server does it
before it serves a version) and never fits; ``fit_count`` counts the segment models this process fitted.

The universe defaults to the snapshot's only universe, or else to the one universe all
catalog segments are defined over.

Under a privacy floor k (``privacy_k`` > 1, segsrv/engine/privacy.py): a segment whose size, or the
rows outside it, number 1..k-1 is left out of every assignment (listing its members over a batch of
ids would be its export); a feature whose table with a segment (members, feature rows, both, over the
universe) has a cell or margin of 1..k-1 rows gets weight 0 in that segment's propensity model, and so
does a pair whose table (rows with both of its features as the feature) has one. Each model records
the smallest non-zero cell of every feature's and pair's table, so the floored weights of any k come
from the one fit (a floored weight is dropped from the fitted model, not refitted without it).

Answer and ranking: the member segments, by priority (descending), then lift (1 / share:
smaller segments say more), then name; the primary segment is the first of them. With
``include_propensities`` the other segments follow, by propensity (descending), then size,
then name; without it they are left out (a batch answer stays proportional to the
memberships, not to customers x catalog size). Member segments are shared (immutable)
Membership objects.
"""

from __future__ import annotations

import math
import operator
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .. import _kernels
from ..errors import LimitExceededError, QueryError, UnknownFieldError
from ..ops.conditions import Range, SegmentRef
from ..snapshot.reader import Snapshot, Universe
from ..snapshot.spec import suggest
from . import cancel, catalog_models, privacy
from .conditions import Evaluator, band_feature, range_mask, raw_number
from .predict.interactions import Interactions, pair_counts, pair_scores
from .predict.interactions import none as no_pairs
from .predict.target import g_test_p
from .relate import count_features
from ..ops.assign import (DEFAULT_MAX_P_VALUE, DEFAULT_PRIOR_STRENGTH, DEFAULT_PROPENSITY_L2,
                          DEFAULT_PROPENSITY_METHOD, MAX_FEATURES, Assignment, AssignQuery, AssignResult, Membership)

# ----------------------------------------------------------------------------
# compiled catalog (per snapshot version and universe)
# ----------------------------------------------------------------------------

MODEL_PARAMS_KEPT = 8  # parameter sets (method and its parameters) whose propensity models a catalog keeps
FITS = [0]  # segment propensity models this process fitted (fit_count); stored and cached ones are not fits


def fit_count() -> int:
    """Segment propensity models (either method) fitted by this process so far."""
    return FITS[0]


def propensity_params(method: str = DEFAULT_PROPENSITY_METHOD, a: float = DEFAULT_PRIOR_STRENGTH,
                      max_p: float = DEFAULT_MAX_P_VALUE, l2: float | None = DEFAULT_PROPENSITY_L2) -> tuple:
    """The key of a propensity model's parameters: ("logistic", l2 or None) or ("factorized", a, max_p)."""
    if method == "factorized":
        return ("factorized", float(a), float(max_p))
    return ("logistic", None if l2 is None else float(l2))


DEFAULT_PARAMS = propensity_params()


class _Presence:
    """What compiled programs read: feature presence and raw numeric values of n customers."""

    def __init__(self, n: int, has: dict[int, np.ndarray], numeric: dict[str, np.ndarray]):
        self.n = n
        self.has = has
        self.numeric = numeric


# one customer's presence of a feature, shared by every single-row call (programs never write their inputs)
_PRESENT = np.ones(1, dtype=bool)
_ABSENT = np.zeros(1, dtype=bool)
_PRESENT.flags.writeable = False
_ABSENT.flags.writeable = False


class _PresenceOps:
    """Condition evaluation (conditions.Evaluator) building programs over feature presence instead
    of bitsets: each node becomes a callable(_Presence) -> bool[n]. Records the feature ids and the
    numeric fields the programs read."""

    def __init__(self, leaf_fids: set[int], numeric_fields: set[str]):
        self.leaf_fids = leaf_fids
        self.numeric_fields = numeric_fields

    def feature(self, fid: int):
        fid = int(fid)
        self.leaf_fids.add(fid)
        return lambda p: p.has[fid]

    def range(self, info, cond: Range):
        fname = cond.field
        self.numeric_fields.add(fname)
        return lambda p: range_mask(p.numeric[fname], cond)

    def all_of(self, parts):
        parts = list(parts)
        return lambda p: np.logical_and.reduce([f(p) for f in parts])

    def any_of(self, parts):
        parts = list(parts)
        return lambda p: np.logical_or.reduce([f(p) for f in parts])

    def negate(self, inner):
        return lambda p: ~inner(p)

    def everything(self):
        return lambda p: np.ones(p.n, dtype=bool)


class _ScalarOps:
    """The same programs for one customer in plain Python (the per-request Assign: numpy over 1-element
    arrays costs more than the whole answer): each node becomes a callable(present, numeric) -> bool, with
    present the customer's feature ids (a set) and numeric its raw value of each numeric field (NaN:
    missing)."""

    def feature(self, fid: int):
        fid = int(fid)
        return lambda present, numeric: fid in present

    def range(self, info, cond: Range):
        fname = cond.field
        try:  # range_mask compares float64 values with the bounds as numpy does: the bounds as float64
            bounds = [(float(b), op) for b, op in ((cond.gte, _GE), (cond.gt, _GT), (cond.lte, _LE), (cond.lt, _LT))
                      if b is not None]
        except (OverflowError, TypeError, ValueError):  # a bound no float holds: range_mask's own answer
            return lambda present, numeric: bool(range_mask(np.array([numeric[fname]], dtype=np.float64), cond)[0])

        def within(present, numeric):
            x = numeric[fname]
            if x != x:  # NaN (missing) is never within
                return False
            for b, op in bounds:
                if not op(x, b):
                    return False
            return True
        return within

    def all_of(self, parts):  # all / any stop at the first part that decides
        parts = tuple(parts)
        return lambda present, numeric: all(f(present, numeric) for f in parts)

    def any_of(self, parts):
        parts = tuple(parts)
        return lambda present, numeric: any(f(present, numeric) for f in parts)

    def negate(self, inner):
        return lambda present, numeric: not inner(present, numeric)

    def everything(self):
        return lambda present, numeric: True


_GE, _GT, _LE, _LT = operator.ge, operator.gt, operator.le, operator.lt


@dataclass
class _Segment:
    name: str
    priority: int
    size: int
    share: float
    program: object  # callable(_Presence) -> bool[n]
    fields: frozenset[str]  # fields its condition mentions, through references too
    digest: str = ""  # of its member bitset (the stored model's content key)
    scalar: object = None  # the same program for one customer: callable(present set, numeric dict) -> bool


class CompiledCatalog:
    """The catalog segments of one universe, compiled to programs over feature presence.

    The counts its models and the privacy floor rest on (each segment's members, the members with each
    feature or pair, the rows of a membership fit) come from the snapshot's universe; a sharded
    snapshot's catalog (segsrv.engine.sharded.catalog.MergedCatalog) sums them over the shards through
    the methods marked "counts"."""

    def __init__(self, snapshot: Snapshot, universe: Universe, merged: tuple | None = None):
        """merged: (n_rows, feature_count, {segment: (size, member digest)}, data version) of a universe
        answered over shards, instead of the snapshot's own (the snapshot then gives the programs)."""
        self._snapshot = weakref.ref(snapshot)  # the cache entry must not keep a retired version mapped
        self.universe = universe
        if merged is None:
            self.n_rows, self.feature_count = universe.n_rows, np.asarray(universe.feature_count, dtype=np.int64)
            sizes, self.data_version = None, catalog_models.data_version(snapshot)
        else:
            self.n_rows, self.feature_count, sizes, self.data_version = merged
        self.leaf_fids: set[int] = set()
        self.numeric_fields: set[str] = set()
        catalog = snapshot.segments or {}
        evaluator = Evaluator(snapshot, universe)
        ops = _PresenceOps(self.leaf_fids, self.numeric_fields)
        self.segments: list[_Segment] = []
        for name in sorted(catalog):
            entry = catalog[name]
            if entry.get("universe") not in (None, universe.name):
                continue
            compiler = Evaluator(snapshot, universe, ops)  # per segment: its own `fields`
            program = compiler.evaluate(SegmentRef(name))
            scalar = Evaluator(snapshot, universe, _ScalarOps()).evaluate(SegmentRef(name))
            if sizes is None:
                bits = evaluator.evaluate(SegmentRef(name))
                size, digest = int(_kernels.popcount(bits)), catalog_models.digest(bits)
            else:
                size, digest = sizes[name]
            share = size / self.n_rows if self.n_rows else 0.0
            self.segments.append(_Segment(name, int(entry.get("priority", 0)), size, share, program,
                                          frozenset(compiler.fields), digest, scalar))
        self.fids = np.array(sorted(self.leaf_fids), dtype=np.int64)
        self._fid_list = self.fids.tolist()
        # Per parameter set (`propensity_params`), at most MODEL_PARAMS_KEPT of each, least recently
        # used dropped first (requests choose them: an unbounded cache would grow with them):
        # _stacked holds the [features x segments] model; _models the segments fitted so far of a set
        # not stacked yet (a cancelled first fit resumes there), keyed (segment, *params).
        # _cells: per segment, the smallest non-zero cell of each feature's table (the privacy floor's
        # input; independent of the method); _floored: the weights of a stacked model under a floor k.
        self._cells: dict[int, np.ndarray] = {}
        self._pair_cells: dict[tuple, np.ndarray] = {}  # (segment, its pairs' bytes) -> pair_cells
        self._floored: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._models: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._partial: OrderedDict[tuple, None] = OrderedDict()  # pairs with entries in _models
        self._stacked: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._fitting: dict[tuple, threading.Lock] = {}  # one fit per pair at a time (others wait)
        self._lock = threading.Lock()
        self._orders: dict[int, tuple] = {}  # privacy_k -> orders() (a dict store is atomic under the GIL)
        self._numeric_cols: list | None = None  # numeric_of_row's columns

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot()
        if snap is None:  # only reachable through a catalog kept past its snapshot
            raise RuntimeError("the snapshot of this compiled catalog is no longer open")
        return snap

    # -- presence ------------------------------------------------------------------

    def presence_of_rows(self, rows: np.ndarray) -> _Presence:
        """Feature presence of known rows, from their CSR rows (no universe scan)."""
        u = self.universe
        n = len(rows)
        if n == 1 and len(self.fids):  # the per-request call: a set lookup per catalog feature
            row = int(rows[0])
            present = set(u.row_features(row).tolist())
            has = {f: (_PRESENT if f in present else _ABSENT) for f in self._fid_list}
            numeric = {f: np.asarray(u.field(f).numeric)[row: row + 1].astype(np.float64)
                       for f in self.numeric_fields}
            return _Presence(1, has, numeric)
        if n and len(self.fids):
            owner, feats = u.rows_features(rows)
            col = np.searchsorted(self.fids, feats)
            col[col >= len(self.fids)] = 0
            hit = self.fids[col] == feats
            matrix = np.zeros((len(self.fids), n), dtype=bool)
            matrix[col[hit], owner[hit]] = True
            has = {int(f): matrix[i] for i, f in enumerate(self.fids)}
        else:
            has = {int(f): np.zeros(n, dtype=bool) for f in self.fids}
        numeric = {f: np.asarray(u.field(f).numeric)[rows].astype(np.float64) for f in self.numeric_fields}
        return _Presence(n, has, numeric)

    def numeric_of_row(self, row: int) -> dict[str, float]:
        """What the scalar programs read of one row besides its features: its raw numeric values."""
        cols = self._numeric_cols
        if cols is None:  # the columns, looked up once (memory-mapped with the universe this catalog holds)
            u = self.universe
            cols = self._numeric_cols = [(f, np.asarray(u.field(f).numeric)) for f in sorted(self.numeric_fields)]
        return {f: float(c[row]) for f, c in cols}

    def presence_of_features(self, fids: np.ndarray, numeric: dict[str, float]) -> _Presence:
        s = set(int(f) for f in fids)
        has = {int(f): np.array([int(f) in s]) for f in self.fids}
        num = {f: np.array([numeric.get(f, math.nan)], dtype=np.float64) for f in self.numeric_fields}
        return _Presence(1, has, num)

    def orders(self, privacy_k: int) -> tuple:
        """(shown, member_order, size_order, templates) under a privacy floor, computed once per floor: the
        segments the floor lets through, by priority (then share, name) and by size (then name), and each
        segment's membership as a member. Ranking keys are per segment, not per customer."""
        hit = self._orders.get(privacy_k)
        if hit is None:
            segs, n = self.segments, self.n_rows
            shown = [i for i, sg in enumerate(segs) if not privacy.small_in(sg.size, n, privacy_k)]
            member_order = np.array(sorted(shown, key=lambda i: (-segs[i].priority, segs[i].share, segs[i].name)),
                                    dtype=np.int64)
            size_order = np.array(sorted(shown, key=lambda i: (-segs[i].size, segs[i].name)), dtype=np.int64)
            templates = [Membership(sg.name, True, sg.size, sg.share, sg.priority, None) for sg in segs]
            hit = self._orders[privacy_k] = (shown, member_order, size_order, templates)
        return hit

    def membership(self, presence: _Presence) -> np.ndarray:
        """bool[n_segments, n]."""
        out = np.zeros((len(self.segments), presence.n), dtype=bool)
        for i, seg in enumerate(self.segments):
            out[i] = seg.program(presence)
        return out

    # -- propensity models ---------------------------------------------------------

    def model(self, i: int, a: float, max_p: float) -> tuple[np.ndarray, np.ndarray]:
        """(log base[2], W[2, n_features]) of membership in segment i (see module docstring)."""
        key = (i, *propensity_params("factorized", a, max_p))
        with self._lock:
            hit = self._models.get(key)
        if hit is not None:
            return hit
        FITS[0] += 1
        n1 = self.segments[i].size
        n1f = self.member_feature_counts(i)
        smallest = self._smallest_cells(n1f, n1)
        out = factorized_membership(n1f, self.feature_count, n1, self.n_rows, self.evidence_mask(i), a, max_p)
        with self._lock:
            self._cells[i] = smallest
        self._keep_partial(key, out)
        return out

    def _keep_partial(self, key: tuple, out) -> None:
        with self._lock:
            self._models[key] = out
            self._partial[key[1:]] = None
            self._partial.move_to_end(key[1:])
            while len(self._partial) > MODEL_PARAMS_KEPT:
                self._drop_partial(self._partial.popitem(last=False)[0])

    def _smallest_cells(self, n1f: np.ndarray, n1: int) -> np.ndarray:
        """The smallest non-zero cell or margin of each feature's table with a segment of n1 members
        (n1f: its members with each feature)."""
        return smallest_cells(n1f, self.feature_count, n1, self.n_rows)

    def _memo(self, cache: dict, key, compute):
        """cache[key], computed (outside the lock) the first time."""
        with self._lock:
            hit = cache.get(key)
        if hit is not None:
            return hit
        out = compute()
        with self._lock:
            cache[key] = out
        return out

    def member_bits(self, i: int) -> np.ndarray:
        return Evaluator(self.snapshot, self.universe).evaluate(SegmentRef(self.segments[i].name))

    def member_feature_counts(self, i: int) -> np.ndarray:
        """Counts: int64[n_features], segment i's members with each feature (one AND-count pass)."""
        u = self.universe
        n1f, _ = count_features(u, self.member_bits(i), self.segments[i].size, np.arange(u.n_features, dtype=np.int64))
        return np.asarray(n1f, dtype=np.int64)

    def member_pair_counts(self, i: int, pairs: np.ndarray) -> np.ndarray:
        """Counts: int64[len(pairs)], segment i's members with both features of each pair."""
        members = _kernels.bitset_to_ids(self.member_bits(i), self.universe.n_rows).astype(np.int64)
        return pair_counts(self.universe, pairs, members)

    def membership_fit(self, i: int, l2: float | None) -> tuple:
        """Counts: catalog_models.fit_membership over every row of the universe (its tuple)."""
        u = self.universe
        member = np.unpackbits(self.member_bits(i).view(np.uint8), bitorder="little")[: u.n_rows].astype(bool)
        return catalog_models.fit_membership(u, member, self.evidence_mask(i), l2)

    def cells(self, i: int) -> np.ndarray:
        """The privacy floor's input of segment i (`_smallest_cells`), counted once."""
        return self._memo(self._cells, i, lambda: self._smallest_cells(self.member_feature_counts(i),
                                                                       self.segments[i].size))

    # -- the logistic membership models (segsrv.engine.catalog_models) --------------------

    def evidence_mask(self, i: int) -> np.ndarray:
        """bool[n_features]: every feature but those of the fields segment i's condition mentions."""
        u = self.universe
        keep = np.ones(u.n_features, dtype=bool)
        for fname in self.segments[i].fields:
            info = u.fields.get(fname)
            if info is not None:
                keep[info.feature_offset: info.feature_offset + len(info.values)] = False
        return keep

    def content_key(self, i: int, l2: float | None) -> tuple:
        """The content key of segment i's logistic model (what `segments apply` stores it under)."""
        u = self.universe
        return catalog_models.content_key(self.data_version, u.name, self.n_rows, u.n_features, self.segments[i].digest,
                                          catalog_models.digest(self.evidence_mask(i)), l2)

    def fit_logistic(self, i: int, l2: float | None) -> tuple:
        """Segment i's logistic membership model, fitted (not the stored one; the same content key fitted
        earlier by this process is taken from its cache): (bias, d, l2 used, cross-validated, Interactions)."""
        key = self.content_key(i, l2)
        hit = catalog_models.fitted(key)
        if hit is not None:
            return hit
        FITS[0] += 1
        out = self.membership_fit(i, l2)
        catalog_models.keep_fitted(key, out)
        return out

    def stored_default(self) -> bool:
        """Whether the snapshot stores the default (cross-validated logistic) model of every segment."""
        stored = self.universe.stored_models
        return all(self.content_key(i, None) in stored for i in range(len(self.segments)))

    def logistic_model(self, i: int, l2: float | None) -> tuple[float, np.ndarray, Interactions]:
        """(bias, d[n_features], pairs) of segment i's membership logit: the model the snapshot stores under
        its content key when there is one (no fit), else fitted (cached with the catalog)."""
        key = (i, *propensity_params("logistic", l2=l2))
        with self._lock:
            hit = self._models.get(key)
        if hit is not None:
            return hit
        stored = self.universe.stored_models.get(self.content_key(i, l2))
        if stored is not None:
            coef, entry = stored
            F = self.universe.n_features
            pairs = np.array(entry.get("pairs", []), dtype=np.int64).reshape(-1, 3)
            out = (float(coef[0, 0]), np.asarray(coef[0, 1: 1 + F]),
                   Interactions(pairs[:, :2], np.asarray(coef[:, 1 + F:]), pairs[:, 2]))
        else:
            bias, d, _, _, inter = self.fit_logistic(i, l2)
            out = (bias, d, inter)
        self._keep_partial(key, out)
        return out

    def _segment_model(self, i: int, params: tuple) -> tuple[float, np.ndarray, Interactions]:
        if params[0] == "factorized":
            log_base, W = self.model(i, params[1], params[2])
            return log_base[0] - log_base[1], W[0] - W[1], no_pairs(1)
        return self.logistic_model(i, params[1])

    def _drop_partial(self, params: tuple) -> None:  # under self._lock
        for i in range(len(self.segments)):
            self._models.pop((i, *params), None)

    def propensity_model(self, params: tuple = DEFAULT_PARAMS) -> tuple[np.ndarray, np.ndarray]:
        """(bias[S], D[n_features, S]) of the parameter set `params` (`propensity_params`): the membership
        logit of segment i for a row with features F is bias[i] + sum of D[f, i] over f in F (factorized:
        log member score minus log non-member score) + its pair terms (`propensity_pairs`), so
        P(member) = 1 / (1 + exp(-logit)) and one CSR pass scores every segment's main effects at once.
        """
        return self._stacked_model(params)[:2]

    def propensity_pairs(self, params: tuple = DEFAULT_PARAMS) -> tuple[Interactions, ...]:
        """Per segment, the pairs of its model under `params` (weights [1, n]; the logistic models with a
        cross-validated l2 may have some, the others none)."""
        return self._stacked_model(params)[2]

    def _stacked_model(self, params: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(bias, D, pairs) of `params`.

        Built once per parameter set: logistic models the snapshot stores are taken as they are (no fit);
        the others are fitted by the first caller (checking cancellation between segments, keeping the
        segments it finished); concurrent callers wait for it instead of repeating the same fits, and
        give up waiting when their own call is cancelled or past its deadline."""
        key = tuple(params)
        with self._lock:
            hit = self._stacked.get(key)
            if hit is not None:
                self._stacked.move_to_end(key)
                return hit
            gate = self._fitting.setdefault(key, threading.Lock())
        while not gate.acquire(timeout=0.05):
            cancel.check()
        try:
            with self._lock:
                hit = self._stacked.get(key)
            if hit is not None:
                return hit
            S, F = len(self.segments), self.universe.n_features
            bias = np.zeros(S)
            D = np.zeros((F, S))
            pairs = []
            for i in range(S):
                cancel.check()
                bias[i], D[:, i], inter = self._segment_model(i, key)
                pairs.append(inter)
            out = (bias, D, tuple(pairs))
            with self._lock:
                self._stacked[key] = out
                while len(self._stacked) > MODEL_PARAMS_KEPT:
                    self._stacked.popitem(last=False)
                # the per-segment models are in D now; waiters holding the gate find the stacked one
                self._partial.pop(key, None)
                self._drop_partial(key)
                self._fitting.pop(key, None)
            return out
        finally:
            gate.release()

    def pair_cells(self, i: int, pairs: Interactions) -> np.ndarray:
        """int64[n_pairs]: the smallest non-zero cell or margin of each pair's table with segment i (the
        pair as one feature: rows with both of its features), counted once per segment and pairs."""
        def count():
            return smallest_cells(self.member_pair_counts(i, pairs.pairs), np.asarray(pairs.support, dtype=np.int64),
                                  self.segments[i].size, self.n_rows)

        return self._memo(self._pair_cells, (i, pairs.pairs.tobytes()), count)

    def floored_model(self, params: tuple = DEFAULT_PARAMS, privacy_k: int = 0) -> tuple[np.ndarray, np.ndarray, tuple]:
        """The model of `params` (bias, D as propensity_model, pairs as propensity_pairs) with the weight of
        every feature, and of every pair, whose table with a segment has a cell of 1..privacy_k-1 rows
        set to 0 (the fitted weight dropped, not a refit without it); the model itself when k <= 1."""
        bias, D, pairs = self._stacked_model(params)
        if privacy_k <= 1 or not self.segments:
            return bias, D, pairs
        key = (tuple(params), int(privacy_k))
        with self._lock:
            hit = self._floored.get(key)
            if hit is not None and hit[0] is D:
                self._floored.move_to_end(key)
                return bias, hit[1], hit[2]
        cells = np.stack([self.cells(i) for i in range(len(self.segments))], axis=1)  # [F, S]
        floored = np.where(cells >= privacy_k, D, 0.0)
        floored_pairs = tuple(
            p if len(p) == 0 else Interactions(p.pairs, np.where(self.pair_cells(i, p) >= privacy_k, p.weights, 0.0),
                                               p.support)
            for i, p in enumerate(pairs))
        with self._lock:
            self._floored[key] = (D, floored, floored_pairs)
            while len(self._floored) > MODEL_PARAMS_KEPT:
                self._floored.popitem(last=False)
        return bias, floored, floored_pairs

    def propensities_of_rows(self, rows: np.ndarray, params: tuple = DEFAULT_PARAMS, privacy_k: int = 0,
                             index=None) -> np.ndarray:
        """float64[S, len(rows)]: P(member) of each segment for each row (rows of the universe). index: where
        the rows' features are read (csr_indptr, csr_indices, n_features, row_features), the universe by
        default; a sharded Assign passes its ids' rows gathered from their shards (`RowsIndex`)."""
        bias, D, pairs = self.floored_model(params, privacy_k)
        u = self.universe if index is None else index
        if len(rows) == 1:  # the per-request call: the row's features, without the kernels' set-up
            return _one_row_propensities(u.row_features(int(rows[0])), bias, D, pairs, u.n_features)[:, None]
        r = np.ascontiguousarray(rows, dtype=np.uint32)
        logits = _kernels.csr_row_scores(u.csr_indptr, u.csr_indices, D, r)
        logits += bias[None, :]
        for i, p in enumerate(pairs):
            if len(p):
                logits[:, i] += pair_scores(u, p, r)[:, 0]
        return _sigmoid(logits).T

    def propensities_of_row(self, feats: np.ndarray, params: tuple = DEFAULT_PARAMS, privacy_k: int = 0) -> np.ndarray:
        """float64[S]: P(member) of each segment for one row of the universe with features `feats` (its CSR
        row): `propensities_of_rows` of that row."""
        bias, D, pairs = self.floored_model(params, privacy_k)
        return _one_row_propensities(feats, bias, D, pairs, self.universe.n_features)

    def propensities_of_features(self, fids: np.ndarray, params: tuple = DEFAULT_PARAMS,
                                 privacy_k: int = 0) -> np.ndarray:
        """float64[S, 1]: P(member) of each segment for one customer with features `fids`."""
        bias, D, pairs = self.floored_model(params, privacy_k)
        fids = np.asarray(fids, dtype=np.int64)
        logits = bias + D[fids].sum(axis=0)
        for i, p in enumerate(pairs):
            if len(p):
                logits[i] += p.weights[0][np.isin(p.pairs, fids).all(axis=1)].sum()
        return _sigmoid(logits)[:, None]


def smallest_cells(n1f: np.ndarray, nf: np.ndarray, n1: int, n: int) -> np.ndarray:
    """int64[len(nf)]: the smallest non-zero cell or margin of each feature's 2x2 table with a segment
    (n rows, n1 members; nf: rows with each feature, n1f: members with it); int64 max when all are 0."""
    cells = np.vstack([n1f, nf - n1f, n1 - n1f, n - n1 - nf + n1f, nf, n - nf,
                       np.full_like(nf, n1), np.full_like(nf, n - n1)])
    return np.where(cells > 0, cells, np.iinfo(np.int64).max).min(axis=0)


def factorized_membership(n1f: np.ndarray, nf: np.ndarray, n1: int, n: int, evidence: np.ndarray, a: float,
                          max_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The factorized membership model from counts over n rows (n1 members; nf: rows with each feature,
    n1f: members with it; evidence: bool mask of the features it may use) -> (log base[2], W[2, F])
    (module docstring)."""
    N = np.vstack([n1f, nf - n1f])
    n_c = np.array([n1, n - n1], dtype=np.int64)
    p0 = np.array([(n1 + 1.0) / (n + 2.0), (n - n1 + 1.0) / (n + 2.0)])
    base = (n_c + a * p0) / (n + a)
    keep = (nf > 0) & (g_test_p(N, n_c) <= max_p) & evidence
    W = np.zeros((2, len(nf)))
    if keep.any() and 0 < n1 < n:
        q = nf[keep] / n
        W[:, keep] = np.log(((N[:, keep] + a * q[None, :]) / (n_c[:, None] + a)) / q[None, :])
    return np.log(base), W


def _one_row_propensities(feats: np.ndarray, bias: np.ndarray, D: np.ndarray, pairs: tuple,
                          n_features: int) -> np.ndarray:
    """float64[S]: P(member) of each segment for one row with features `feats` (ascending). The sums are
    numpy's over the same arrays as ever (D's rows; a pair model's [s, s] block), so the same bits; take
    and add.reduce only skip the fancy indexing's and ndarray.sum's set-up."""
    logits = bias + _add(D.take(feats, axis=0), axis=0)
    for i, p in enumerate(pairs):
        if len(p):
            slot_of, U = p.slot_of(n_features)
            s = slot_of.take(feats)
            s = s[s >= 0]
            if len(s) > 1:  # U holds pair (a, b) at [a, b], a < b (one feature: no pair, adds 0)
                logits[i] += _add(U[0].take(s, axis=0).take(s, axis=1), axis=None)
    # exp(-x) cannot overflow: no errstate (entering it costs more than the arithmetic; values are the same)
    if min(logits.tolist(), default=0.0) > -700.0:
        return 1.0 / (1.0 + np.exp(-logits))
    return _sigmoid(logits)


_add = np.add.reduce


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x << 0 gives exactly 0
        return 1.0 / (1.0 + np.exp(-x))


# per open Snapshot object (weak: a catalog lives as long as its snapshot version is open)
_CACHE: "weakref.WeakKeyDictionary[Snapshot, dict[str, CompiledCatalog]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()  # compiling is rare (once per version): one at a time, never twice


def compiled_catalog(snapshot: Snapshot, universe: Universe) -> CompiledCatalog:
    """The compiled catalog of a snapshot's universe (cached with the open snapshot; compiled once
    even when many requests ask for it at the same time)."""
    with _CACHE_LOCK:
        hit = _CACHE.get(snapshot, {}).get(universe.name)
        if hit is not None:
            return hit
    with _BUILD_LOCK:
        with _CACHE_LOCK:
            hit = _CACHE.get(snapshot, {}).get(universe.name)
        if hit is not None:
            return hit
        compiled = CompiledCatalog(snapshot, universe)
        with _CACHE_LOCK:
            _CACHE.setdefault(snapshot, {})[universe.name] = compiled
    return compiled


def warm_catalog(snapshot: Snapshot) -> dict[str, int]:
    """Compile the catalog of every universe that has segments and load their default propensity
    models (the logistic ones `segments apply` stored) with the privacy floor's counts, so that the
    first Assign on this version costs what every later one does. Never fits: a version without stored
    models (a catalog applied by an older segsrv, or with fit_propensities=False) leaves the fits to
    the first Assign with propensities.
    Returns {universe: number of segments}."""
    used = {e.get("universe") for e in (snapshot.segments or {}).values()}  # `segments apply` sets it
    out = {}
    for name, u in snapshot.universes.items():
        if name not in used:
            continue
        cat = compiled_catalog(snapshot, u)
        if cat.segments and cat.stored_default():
            pairs = cat.propensity_pairs(DEFAULT_PARAMS)  # stored by `segments apply`: read, not fitted
            for i in range(len(cat.segments)):  # the privacy floor's counts
                cancel.check()
                cat.cells(i)
                if len(pairs[i]):
                    cat.pair_cells(i, pairs[i])
        out[name] = len(cat.segments)
    return out


# ----------------------------------------------------------------------------
# assign
# ----------------------------------------------------------------------------


def _bad(name: str, msg: str):
    raise QueryError(f"{name}: {msg}", [(name, msg)])


def _features(u: Universe, pairs) -> tuple[np.ndarray, dict[str, float]]:
    if not isinstance(pairs, (list, tuple)):
        _bad("features", "expected a list of (field, value) pairs")
    if len(pairs) > MAX_FEATURES:
        raise LimitExceededError(f"features: {len(pairs)} features, more than the limit {MAX_FEATURES}",
                                 [("features", f"at most {MAX_FEATURES}")])
    fids: list[int] = []
    numeric: dict[str, float] = {}
    for i, item in enumerate(pairs):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            _bad(f"features[{i}]", f"expected a (field, value) pair, got {item!r}")
        fname, value = str(item[0]), str(item[1])
        if fname not in u.fields:
            raise UnknownFieldError(f"features[{i}].field: universe {u.name!r} has no field {fname!r}"
                                    f"{suggest(fname, u.fields)}", [(f"features[{i}].field", f"unknown field {fname!r}")])
        info = u.fields[fname]
        x = raw_number(info, value)
        if x is not None:  # a raw number: its band is a feature, the value feeds ranges
            numeric[fname] = x
            band = band_feature(info, x)
            if band is not None:
                fids.append(band)
            continue
        fids.append(u.feature_id(fname, value))  # unknown value -> UnknownValueError with suggestions
    return np.array(sorted(set(fids)), dtype=np.int64), numeric


class RowsIndex:
    """Some rows' features as a universe's rows index presents them (for `propensities_of_rows`): a sharded
    Assign gathers its ids' rows from the shards holding them."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_features: int):
        self.csr_indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.csr_indices = np.ascontiguousarray(indices, dtype=np.uint32)
        self.n_features = n_features

    def row_features(self, row: int) -> np.ndarray:
        return np.asarray(self.csr_indices[int(self.csr_indptr[row]): int(self.csr_indptr[row + 1])], dtype=np.int64)


def assign_universe(snapshot, query: AssignQuery) -> str | None:
    """The universe an Assign answers in: the query's, else the snapshot's only one, else the one
    universe all catalog segments are defined over (customers are assigned where the segments live)."""
    universe = query.universe
    if universe is None and len(snapshot.universes) > 1:
        used = {e.get("universe") for e in (snapshot.segments or {}).values()} - {None}
        if len(used) == 1:
            universe = used.pop()
    return universe


def assign_params(query: AssignQuery) -> tuple:
    query.validate()
    return propensity_params(query.propensity_method, query.prior_strength, query.max_p_value, query.propensity_l2)


def assign(snapshot: Snapshot, query: AssignQuery, privacy_k: int = 0) -> AssignResult:
    """`privacy_k` > 1: the privacy floor's segments left out and features without weight (module docstring)."""
    t0 = time.perf_counter()
    u = snapshot.universe(assign_universe(snapshot, query))
    params = assign_params(query)
    ids = list(query.ids or [])
    cat = compiled_catalog(snapshot, u)
    if len(ids) == 1:  # the per-request call: plain Python over the one row (the same answer as a batch)
        out = [assign_row(cat, ids[0], u.row_for_id(ids[0]), query.include_propensities, params, privacy_k)]
    elif ids:
        rows = np.asarray(u.rows_for_ids(ids), dtype=np.int64)
        found = rows >= 0
        presence = cat.presence_of_rows(rows[found])
        member = cat.membership(presence)  # [S, n_found]
        prop = None
        if query.include_propensities and cat.segments and presence.n:
            # stored models, or the first call fits one model per segment (cached per version; see propensity_model)
            prop = cat.propensities_of_rows(rows[found], params, privacy_k)
        out = assignments(cat, ids, found, member, prop, privacy_k)
    else:
        out = assign_features(cat, query, params, privacy_k)
    return AssignResult(snapshot.name, snapshot.version, u.name, len(cat.segments), out,
                        (time.perf_counter() - t0) * 1e3, len(cat.segments) - len(cat.orders(privacy_k)[0]))


def assign_row(cat: CompiledCatalog, ident, row: int, include_propensities: bool, params: tuple,
               privacy_k: int) -> Assignment:
    """The assignment of one id at `row` (-1: not found): what `assignments` gives for it in a batch."""
    if row < 0:
        return Assignment(ident, False, [], None)
    segs = cat.segments
    feats = cat.universe.row_features(row)
    present, numeric = set(feats.tolist()), cat.numeric_of_row(row)
    col = [sg.scalar(present, numeric) for sg in segs]
    shown, member_order, size_order, templates = cat.orders(privacy_k)
    ms = [templates[i] for i in member_order.tolist() if col[i]]
    primary = ms[0].segment if ms else None
    if include_propensities and segs:
        prop = cat.propensities_of_row(feats, params, privacy_k).tolist()
        others = [i for i in size_order.tolist() if not col[i]]
        if any(prop[i] != prop[i] for i in others):  # NaN: the batch's argsort order (after the members)
            member = np.array(col, dtype=bool)[:, None]
            return assignments(cat, [ident], np.array([True]), member, np.array(prop)[:, None], privacy_k)[0]
        # by propensity (descending); Python's sort is stable: ties keep the size order, as the batch's
        for i in sorted(others, key=lambda i: -prop[i]):
            sg = segs[i]
            ms.append(Membership(sg.name, False, sg.size, sg.share, sg.priority, prop[i]))
    return Assignment(ident, True, ms, primary)


def assign_features(cat: CompiledCatalog, query: AssignQuery, params: tuple, privacy_k: int) -> list[Assignment]:
    """The assignment of a new customer given by `query.features` (no row of the universe)."""
    fids, numeric = _features(cat.universe, query.features)
    presence = cat.presence_of_features(fids, numeric)
    prop = None
    if query.include_propensities and cat.segments:
        prop = cat.propensities_of_features(fids, params, privacy_k)
    return assignments(cat, [], np.array([True]), cat.membership(presence), prop, privacy_k)


def assignments(cat: CompiledCatalog, ids: list, found: np.ndarray, member: np.ndarray, prop: np.ndarray | None,
                privacy_k: int) -> list[Assignment]:
    """The answer per id (or the one new customer when `ids` is empty): found[k] says whether id k is a row;
    member / prop: bool / float64[S, found rows], in order (module docstring: the ranking)."""
    segs = cat.segments
    shown, member_order, size_order, templates = cat.orders(privacy_k)
    n = int(member.shape[1])
    if prop is not None and n:
        # non-members by propensity (descending), ties by size then name: a stable sort of the
        # size-ordered rows; members sort last and are skipped
        keyed = np.where(member[size_order], np.inf, -prop[size_order])
        other_order = size_order[np.argsort(keyed, axis=0, kind="stable")]  # [S, n]
    out: list[Assignment] = []
    j = 0
    for k in range(len(found)):
        ident = ids[k] if ids else None
        if not found[k]:
            out.append(Assignment(ident, False, [], None))
            continue
        col = member[:, j]
        ms = [templates[i] for i in member_order[col[member_order]].tolist()]
        primary = ms[0].segment if ms else None
        if prop is not None:
            for i in other_order[:, j].tolist():
                if col[i]:
                    break  # members sorted last
                sg = segs[i]
                ms.append(Membership(sg.name, False, sg.size, sg.share, sg.priority, float(prop[i, j])))
        j += 1
        out.append(Assignment(ident, True, ms, primary))
    return out
