"""Assign: which catalog segments a customer is in, and how likely the others are.

Membership is exact and computed per customer, never by scanning the universe: every
catalog condition is compiled once per snapshot version into a program over *feature
presence* by the condition evaluator of segsrv.engine.conditions (the same resolution and
errors as bitset evaluation) with presence ops: Term / AnyOf leaves become feature ids;
Range leaves read the raw numeric column; segment references are inlined. For a batch of known ids the programs run
vectorised over the batch's rows of the CSR index (row -> feature ids); for a new
customer they run over the given feature list. Both agree with evaluating the condition
to a bitset over the whole universe (tests/engine/test_assign.py checks it).

Propensity (``include_propensities``): for a segment the customer is not in, the
probability of membership from the customer's features, by the factorised Predict model
with the conjunction method's significance rule: classes [member, non-member] over the
universe, base rate = the segment's share, one smoothed lift per evidence feature
(``lift_f(c) = ((n_{c,f} + a q_f) / (n_c + a)) / q_f``, ``q_f = n_f / N``, a =
``prior_strength``), evidence = every feature except those of the fields the segment's
condition mentions (directly or through references: they decide membership and would make
the score trivial) and except features whose G-test of independence from membership has
p > ``max_p_value``. P(member) = softmax of the two class scores, i.e. the logistic function of
their difference, which is how it is computed: every segment's log-score differences form one
[features x segments] matrix, and one CSR pass over a batch's rows scores all segments. Models
are fitted once per snapshot version and segment (one AND-count pass over every feature) and
cached; ``warm_catalog`` fits the default ones ahead of the first request (the server does it
before it serves a version).

The universe defaults to the snapshot's only universe, or else to the one universe all
catalog segments are defined over.

Under a privacy floor k (``privacy_k`` > 1, segsrv/engine/privacy.py): a segment whose size, or the
rows outside it, number 1..k-1 is left out of every assignment (listing its members over a batch of
ids would be its export); a feature whose table with a segment (members, feature rows, both, over the
universe) has a cell or margin of 1..k-1 rows gets weight 0 in that segment's propensity model. Each
model records the smallest non-zero cell of every feature's table, so the floored weights of any k
come from the one fit.

Answer and ranking: the member segments, by priority (descending), then lift (1 / share:
smaller segments say more), then name; the primary segment is the first of them. With
``include_propensities`` the other segments follow, by propensity (descending), then size,
then name; without it they are left out (a batch answer stays proportional to the
memberships, not to customers x catalog size). Member segments are shared (immutable)
Membership objects.
"""

from __future__ import annotations

import math
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
from . import cancel, privacy
from .conditions import Evaluator, band_feature, range_mask, raw_number
from .predict.target import g_test_p
from .relate import count_features
from ..ops.assign import (DEFAULT_MAX_P_VALUE, DEFAULT_PRIOR_STRENGTH, MAX_FEATURES, Assignment, AssignQuery,
                          AssignResult, Membership)

# ----------------------------------------------------------------------------
# compiled catalog (per snapshot version and universe)
# ----------------------------------------------------------------------------

MODEL_PARAMS_KEPT = 8  # (prior_strength, max_p_value) pairs whose propensity models a catalog keeps


class _Presence:
    """What compiled programs read: feature presence and raw numeric values of n customers."""

    def __init__(self, n: int, has: dict[int, np.ndarray], numeric: dict[str, np.ndarray]):
        self.n = n
        self.has = has
        self.numeric = numeric


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


@dataclass
class _Segment:
    name: str
    priority: int
    size: int
    share: float
    program: object  # callable(_Presence) -> bool[n]
    fields: frozenset[str]  # fields its condition mentions, through references too


class CompiledCatalog:
    """The catalog segments of one universe, compiled to programs over feature presence."""

    def __init__(self, snapshot: Snapshot, universe: Universe):
        self._snapshot = weakref.ref(snapshot)  # the cache entry must not keep a retired version mapped
        self.universe = universe
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
            size = int(_kernels.popcount(evaluator.evaluate(SegmentRef(name))))
            share = size / universe.n_rows if universe.n_rows else 0.0
            self.segments.append(_Segment(name, int(entry.get("priority", 0)), size, share, program,
                                          frozenset(compiler.fields)))
        self.fids = np.array(sorted(self.leaf_fids), dtype=np.int64)
        # Per (prior_strength, max_p_value) pair, at most MODEL_PARAMS_KEPT of each, least recently
        # used dropped first (requests choose the pair: an unbounded cache would grow with them):
        # _stacked holds the fitted [features x segments] model; _models the segments fitted so far of
        # a pair not stacked yet (a cancelled first fit resumes there), keyed (segment, a, max_p).
        # _cells: per segment, the smallest non-zero cell of each feature's table (the privacy floor's
        # input; independent of a and max_p); _floored: the weights of a stacked model under a floor k.
        self._cells: dict[int, np.ndarray] = {}
        self._floored: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._models: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._partial: OrderedDict[tuple, None] = OrderedDict()  # pairs with entries in _models
        self._stacked: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._fitting: dict[tuple, threading.Lock] = {}  # one fit per pair at a time (others wait)
        self._lock = threading.Lock()

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
        has = {int(f): np.zeros(n, dtype=bool) for f in self.fids}
        if n and len(self.fids):
            owner, feats = u.rows_features(rows)
            col = np.searchsorted(self.fids, feats)
            col[col >= len(self.fids)] = 0
            hit = self.fids[col] == feats
            matrix = np.zeros((len(self.fids), n), dtype=bool)
            matrix[col[hit], owner[hit]] = True
            has = {int(f): matrix[i] for i, f in enumerate(self.fids)}
        numeric = {f: np.asarray(u.field(f).numeric)[rows].astype(np.float64) for f in self.numeric_fields}
        return _Presence(n, has, numeric)

    def presence_of_features(self, fids: np.ndarray, numeric: dict[str, float]) -> _Presence:
        s = set(int(f) for f in fids)
        has = {int(f): np.array([int(f) in s]) for f in self.fids}
        num = {f: np.array([numeric.get(f, math.nan)], dtype=np.float64) for f in self.numeric_fields}
        return _Presence(1, has, num)

    def membership(self, presence: _Presence) -> np.ndarray:
        """bool[n_segments, n]."""
        out = np.zeros((len(self.segments), presence.n), dtype=bool)
        for i, seg in enumerate(self.segments):
            out[i] = seg.program(presence)
        return out

    # -- propensity models ---------------------------------------------------------

    def model(self, i: int, a: float, max_p: float) -> tuple[np.ndarray, np.ndarray]:
        """(log base[2], W[2, n_features]) of membership in segment i (see module docstring)."""
        key = (i, float(a), float(max_p))
        with self._lock:
            hit = self._models.get(key)
        if hit is not None:
            return hit
        u = self.universe
        seg = self.segments[i]
        bits = Evaluator(self.snapshot, u).evaluate(SegmentRef(seg.name))
        n, n1 = u.n_rows, seg.size
        fids = np.arange(u.n_features, dtype=np.int64)
        n1f, _ = count_features(u, bits, n1, fids)
        nf = np.asarray(u.feature_count, dtype=np.int64)
        N = np.vstack([n1f, nf - n1f])
        n_c = np.array([n1, n - n1], dtype=np.int64)
        cells = np.vstack([n1f, nf - n1f, n1 - n1f, n - n1 - nf + n1f, nf, n - nf,
                           np.full_like(nf, n1), np.full_like(nf, n - n1)])
        smallest = np.where(cells > 0, cells, np.iinfo(np.int64).max).min(axis=0)
        p0 = np.array([(n1 + 1.0) / (n + 2.0), (n - n1 + 1.0) / (n + 2.0)])
        base = (n_c + a * p0) / (n + a)
        keep = (nf > 0) & (g_test_p(N, n_c) <= max_p)
        for fname in seg.fields:
            info = u.fields.get(fname)
            if info is not None:
                keep[info.feature_offset: info.feature_offset + len(info.values)] = False
        W = np.zeros((2, u.n_features))
        if keep.any() and 0 < n1 < n:
            q = nf[keep] / n
            W[:, keep] = np.log(((N[:, keep] + a * q[None, :]) / (n_c[:, None] + a)) / q[None, :])
        out = (np.log(base), W)
        with self._lock:
            self._cells[i] = smallest
            self._models[key] = out
            self._partial[key[1:]] = None
            self._partial.move_to_end(key[1:])
            while len(self._partial) > MODEL_PARAMS_KEPT:
                self._drop_partial(self._partial.popitem(last=False)[0])
        return out

    def _drop_partial(self, params: tuple) -> None:  # under self._lock
        for i in range(len(self.segments)):
            self._models.pop((i, *params), None)

    def propensity_model(self, a: float, max_p: float) -> tuple[np.ndarray, np.ndarray]:
        """(bias[S], D[n_features, S]): the membership logit of segment i for a row with features F
        is bias[i] + sum of D[f, i] over f in F (log member score minus log non-member score), so
        P(member) = 1 / (1 + exp(-logit)) and one CSR pass scores every segment at once.

        Fitted once per (a, max_p): the first caller fits (checking cancellation between segments,
        keeping the segments it finished); concurrent callers wait for it instead of repeating
        the same fits, and give up waiting when their own call is cancelled or past its deadline."""
        key = (float(a), float(max_p))
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
            for i in range(S):
                cancel.check()
                log_base, W = self.model(i, float(a), float(max_p))
                bias[i] = log_base[0] - log_base[1]
                D[:, i] = W[0] - W[1]
            out = (bias, D)
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

    def floored_model(self, a: float, max_p: float, privacy_k: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """propensity_model(a, max_p) with the weight of every feature whose table with a segment has a cell
        of 1..privacy_k-1 rows set to 0 (the model without that feature); the model itself when k <= 1."""
        bias, D = self.propensity_model(a, max_p)
        if privacy_k <= 1 or not self.segments:
            return bias, D
        key = (float(a), float(max_p), int(privacy_k))
        with self._lock:
            hit = self._floored.get(key)
            if hit is not None and hit[0] is D:
                self._floored.move_to_end(key)
                return bias, hit[1]
        cells = np.stack([self._cells[i] for i in range(len(self.segments))], axis=1)  # [F, S]
        floored = np.where(cells >= privacy_k, D, 0.0)
        with self._lock:
            self._floored[key] = (D, floored)
            while len(self._floored) > MODEL_PARAMS_KEPT:
                self._floored.popitem(last=False)
        return bias, floored

    def propensities_of_rows(self, rows: np.ndarray, a: float, max_p: float, privacy_k: int = 0) -> np.ndarray:
        """float64[S, len(rows)]: P(member) of each segment for each row (rows of the universe)."""
        bias, D = self.floored_model(a, max_p, privacy_k)
        u = self.universe
        logits = _kernels.csr_row_scores(u.csr_indptr, u.csr_indices, D,
                                         np.ascontiguousarray(rows, dtype=np.uint32))
        logits += bias[None, :]
        return _sigmoid(logits).T

    def propensities_of_features(self, fids: np.ndarray, a: float, max_p: float, privacy_k: int = 0) -> np.ndarray:
        """float64[S, 1]: P(member) of each segment for one customer with features `fids`."""
        bias, D = self.floored_model(a, max_p, privacy_k)
        return _sigmoid(bias + D[np.asarray(fids, dtype=np.int64)].sum(axis=0))[:, None]


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
    """Compile the catalog of every universe that has segments and fit their default propensity
    models, so that the first Assign on this version costs what every later one does.
    Returns {universe: number of segments}."""
    used = {e.get("universe") for e in (snapshot.segments or {}).values()}  # `segments apply` sets it
    out = {}
    for name, u in snapshot.universes.items():
        if name not in used:
            continue
        cat = compiled_catalog(snapshot, u)
        if cat.segments:
            cat.propensity_model(DEFAULT_PRIOR_STRENGTH, DEFAULT_MAX_P_VALUE)
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


def assign(snapshot: Snapshot, query: AssignQuery, privacy_k: int = 0) -> AssignResult:
    """`privacy_k` > 1: the privacy floor's segments left out and features without weight (module docstring)."""
    t0 = time.perf_counter()
    universe = query.universe
    if universe is None and len(snapshot.universes) > 1:
        # customers are assigned where the catalog's segments live
        used = {e.get("universe") for e in (snapshot.segments or {}).values()} - {None}
        if len(used) == 1:
            universe = used.pop()
    u = snapshot.universe(universe)
    query.validate()
    a, max_p = query.prior_strength, query.max_p_value
    ids = list(query.ids or [])
    cat = compiled_catalog(snapshot, u)
    if ids:
        rows = np.asarray(u.rows_for_ids(ids), dtype=np.int64)
        found = rows >= 0
        presence = cat.presence_of_rows(rows[found])
        fids_of = None
    else:
        fids, numeric = _features(u, query.features)
        found = np.array([True])
        presence = cat.presence_of_features(fids, numeric)
        fids_of = fids
    member = cat.membership(presence)  # [S, n_found]
    prop = None
    if query.include_propensities and cat.segments and presence.n:
        # the first call fits one model per segment (cached per version; see propensity_model)
        if fids_of is None:
            prop = cat.propensities_of_rows(rows[found], float(a), float(max_p), privacy_k)
        else:
            prop = cat.propensities_of_features(fids_of, float(a), float(max_p), privacy_k)
    # ranking keys are per segment, so the orders are computed once, not per customer
    segs = cat.segments
    shown = [i for i, sg in enumerate(segs) if not privacy.small_in(sg.size, u.n_rows, privacy_k)]
    member_order = np.array(sorted(shown, key=lambda i: (-segs[i].priority, segs[i].share, segs[i].name)),
                            dtype=np.int64)
    size_order = np.array(sorted(shown, key=lambda i: (-segs[i].size, segs[i].name)), dtype=np.int64)
    if prop is not None and presence.n:
        # non-members by propensity (descending), ties by size then name: a stable sort of the
        # size-ordered rows; members sort last and are skipped
        keyed = np.where(member[size_order], np.inf, -prop[size_order])
        other_order = size_order[np.argsort(keyed, axis=0, kind="stable")]  # [S, n]
    templates = [Membership(sg.name, True, sg.size, sg.share, sg.priority, None) for sg in segs]
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
    return AssignResult(snapshot.name, snapshot.version, u.name, len(cat.segments), out,
                        (time.perf_counter() - t0) * 1e3, len(segs) - len(shown))
