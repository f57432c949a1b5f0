"""Relate: which features over- or under-index in a condition, with exact statistics.

Counting plans (chosen per request, or forced with `plan`):
  scan       AND+popcount of the condition bitset against every requested
             feature (dense bitsets, sorted id arrays for rare features);
             cost ~ requested dense features x words.
  histogram  list the condition's rows and histogram their features through
             the row -> features CSR index; cost ~ rows in C x features per row.
Both give identical counts; the cheaper is picked from those two estimates.

Within the scan, the rare features (stored as sorted id arrays) are counted one of two ways, whichever a
cost model (below) estimates cheaper; both exact, and the plan reported is "scan" either way:
  probe      look up each of their ids' bit in the condition; cost ~ their ids, whatever the condition.
  rows       list the condition's rows (or, when it holds more than half the rows, the rows outside it:
             count = n_F - that) and histogram their rare features through the row -> sparse features
             CSR (snapshot format version 2; without it, always probe), in its compact in-memory form
             (segsrv.engine.compact_csr); cost ~ rows listed x rare features per row, plus one pass over
             the condition's words.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from .. import _kernels
from ..ops.relate import HIT_FLOAT_STATS, RelateHits, RelateQuery, RelateResult
from ..snapshot.reader import FieldInfo, Snapshot, Universe
from . import stats as st
from .compact_csr import compact_sparse_csr
from .conditions import condition_fields, evaluate_to_read
from .fields import identifier_like_fields, select_fields
from .shared_scan import shared_scans

# one (row, feature) entry of the CSR histogram (random access) costs about as much as this many
# bitset words of the scan, with the condition's rows holding more entries than the average row. Measured
# on the 1M demo snapshot, one thread, by `python bench/plan_choice.py` (December 2026): counted one request
# after another, as a server counts them, an entry costs 2.7-2.9 ns (the CSR's lines are not in the cache the
# scans leave) and a scanned word 0.13-0.3 ns (the 4-rows AVX-512 path, its rows in L3 or not), with the
# conditions' rows holding 1.4-1.9x the average entries: 15-30. Over the bench's 20 conditions, factors of
# 12.5-60 chose as well as the faster plan per request for a few fields; for every field 10-15 in one run and
# 20-40 in another (the others within 0.1-1.4% of the best: a request whose two plans tie). At 10 (set when a
# scanned word cost 0.5 ns) a few-fields Relate over a 2,681-row condition took the histogram plan, estimated
# 1% cheaper, at 2.9-4.7x the scan's time
HISTOGRAM_COST_FACTOR = 15.0
# The scan's two ways of counting the sparse features (sparse_method), estimated in nanoseconds. Measured on
# the 1M demo snapshot (customers: 5,191 features, 7.04M sparse ids, 7.04 sparse entries per row on average)
# with `python bench/sparse_rows.py --fit` (the 20 conditions of bench/relate.py, every field; one
# kernel thread, as `segsrv serve` runs them), on the shared 2-core AMD EPYC (AVX-512), 2026-12-07, three runs
# on a quiet machine and two at a load average of 4-8:
#   probing (and_count_sparse): 0.53-0.57 ns per id (median per run; single calls 0.50-0.80)
#   bitset_to_ids: 0.83-1.16 ns per word of the condition, 1.0 ns per listed row
#   csr_histogram through the sparse CSR: 7.7-10.9 ns per listed row + 0.59-0.77 ns per entry (least squares
#     over the 20 conditions' row lists; 8.1 + 0.87-1.03 under load). The listed rows hold 0.3-3.3x the
#     universe's average sparse entries (median 1.5x: customers in a condition are the more active ones): the
#     estimate takes 1.5x the average
#   later that day, through its compact form (segsrv.engine.compact_csr): 9.4 ns per listed row + 0.45 ns per
#     entry, with the rows in cache as the fit repeats them; its gain is where they are not (after a scan:
#     100k rows 2.4 -> 1.4 ms), where the estimate is then high
PROBE_ID_NS = 0.55
ROWS_WORD_NS = 1.0
ROWS_ROW_NS = 9.0  # the histogram's ~8 and bitset_to_ids' 1
ROWS_ENTRY_NS = 0.5
LISTED_ENTRIES_OVER_AVERAGE = 1.5
# the rows method only when estimated this much cheaper than probing: where the two are close, probing, whose
# cost does not depend on the condition's rows (on the 1M demo: rows below ~180k listed rows, where one thread
# measured the two equal at ~200k)
ROWS_MARGIN = 1.25
SPARSE_METHODS = ("auto", "probe", "rows")
# request shapes (fields, condition fields) whose candidate features a universe remembers
_MEMO_SHAPES = 256
_MEMO: "weakref.WeakKeyDictionary[Universe, dict]" = weakref.WeakKeyDictionary()
_MEMO_LOCK = threading.Lock()
_ASCENDING_ALWAYS = {"p_value", "q_value"}
_ASCENDING_UNDER = {"lift", "lift_low", "lift_high", "lift_smoothed", "leverage", "zhang", "certainty", "conviction", "p", "kulczynski", "jaccard"}

@dataclass(frozen=True)
class FeatureLayout:
    """Where a set of features' rows are stored (request-independent: memoised with Relate's candidates)."""
    dense: np.ndarray  # positions (in the feature ids) of the features stored as dense bitsets
    dense_slots: np.ndarray  # their rows of universe.dense
    sparse: np.ndarray  # positions of those stored as sorted id arrays
    sparse_slots: np.ndarray  # their slots in universe.sparse_offsets
    scan_cost: float  # what the scan plan reads: dense words and sparse ids
    # positions counted without reading their rows, one per field whose values partition the rows (each
    # row holds exactly one): its costliest value, whose count is the condition's minus the field's others
    derived: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    partition_members: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the others' positions
    partition_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # each one's index in derived
    sparse_ids: int = 0  # the ids of the features at `sparse` (what probing them reads)


_PARTITIONS: "weakref.WeakKeyDictionary[Universe, list[FieldInfo]]" = weakref.WeakKeyDictionary()


def partition_fields(universe: Universe) -> list[FieldInfo]:
    """The fields whose values partition the universe's rows: a row holds at most one value (own or forward,
    not multi-valued: snapshot.format) and the values' rows add up to every row, so each row holds exactly one
    (found once per universe: snapshots are immutable)."""
    with _MEMO_LOCK:
        found = _PARTITIONS.get(universe)
    if found is None:
        found = [f for f in universe.fields.values() if f.semantics in ("own", "forward") and f.kind != "multi"
                 and int(np.asarray(universe.feature_count[f.feature_ids], dtype=np.int64).sum()) == universe.n_rows]
        with _MEMO_LOCK:
            _PARTITIONS[universe] = found
    return found


def feature_layout(universe: Universe, fids: np.ndarray, derive_partitions: bool = False) -> FeatureLayout:
    """derive_partitions: where every value of a partitioning field is among fids (once), leave its costliest
    value's row unread (FeatureLayout.derived): only for callers whose n_c is the condition's exact count."""
    slots = np.asarray(universe.feature_slot[fids])
    derived, members, member_of = [], [], []
    position = None
    if derive_partitions and len(fids):
        position = np.full(universe.n_features, -1, dtype=np.int64)
        position[fids] = np.arange(len(fids))
        if (position[fids] != np.arange(len(fids))).any():  # a feature asked for twice: none derived
            position = None
    if position is not None:
        for info in partition_fields(universe):
            where = position[info.feature_ids]
            if len(where) < 2 or (where < 0).any():
                continue
            counts = np.asarray(universe.feature_count[info.feature_ids], dtype=np.int64)
            # a dense row costs n_words words, sparse ids one word each per row they hold
            cost = np.where(slots[where] >= 0, universe.n_words, counts)
            costliest = int(np.argmax(cost))
            derived.append(int(where[costliest]))
            members.extend(np.delete(where, costliest).tolist())
            member_of.extend([len(derived) - 1] * (len(where) - 1))
    read = np.ones(len(fids), dtype=bool)
    read[derived] = False
    dense_mask, sparse_mask = (slots >= 0) & read, (slots < 0) & read
    sparse_ids = int(np.asarray(universe.feature_count[fids[sparse_mask]], dtype=np.int64).sum())
    scan_cost = float(dense_mask.sum()) * universe.n_words + float(sparse_ids)
    return FeatureLayout(np.flatnonzero(dense_mask), np.ascontiguousarray(slots[dense_mask]),
                         np.flatnonzero(sparse_mask), np.ascontiguousarray(-slots[sparse_mask] - 1), scan_cost,
                         np.array(derived, dtype=np.int64), np.array(members, dtype=np.int64),
                         np.array(member_of, dtype=np.int64), sparse_ids)


def sparse_costs(universe: Universe, layout: FeatureLayout, n_c: int) -> tuple[float, float | None]:
    """Estimated ns of counting the layout's sparse features in a condition of n_c rows: (probing their ids,
    the rows method; None when the universe has no sparse CSR)."""
    probe = PROBE_ID_NS * layout.sparse_ids
    if universe.sparse_csr_indices is None:
        return probe, None
    n = universe.n_rows
    listed = min(n_c, n - n_c)  # more than half the rows: the complement's
    per_row = LISTED_ENTRIES_OVER_AVERAGE * len(universe.sparse_csr_indices) / n if n else 0.0
    rows = ROWS_WORD_NS * universe.n_words + listed * (ROWS_ROW_NS + ROWS_ENTRY_NS * per_row)
    return probe, rows


def sparse_method(universe: Universe, layout: FeatureLayout, n_c: int, sparse: str = "auto") -> str:
    """How the scan plan counts the layout's sparse features: "probe" or "rows" (module docstring). sparse:
    "auto" (the cheaper estimate, probing unless the rows method is ROWS_MARGIN times cheaper) or either
    method forced ("rows" needs the universe's sparse CSR: snapshot format version 2, where it pays)."""
    if sparse not in SPARSE_METHODS:
        raise ValueError(f"sparse must be one of {SPARSE_METHODS}, got {sparse!r}")
    if sparse == "rows" and universe.sparse_csr_indices is None:
        raise ValueError(f"universe {universe.name!r} has no sparse CSR (a snapshot of format version 1, or too "
                         f"few sparse ids for one: segsrv.snapshot.format.sparse_csr_pays): its sparse features "
                         f"can only be probed")
    if sparse != "auto":
        return sparse
    probe, rows = sparse_costs(universe, layout, n_c)
    return "rows" if rows is not None and rows * ROWS_MARGIN < probe else "probe"


def count_sparse_by_rows(universe: Universe, cond_bits: np.ndarray, n_c: int, sparse_fids: np.ndarray) -> np.ndarray:
    """n_CF of sparse-stored features `sparse_fids` by the rows method: the histogram of the condition's rows'
    sparse features (or, when n_c is more than half the rows, n_F minus that of the rows outside it)."""
    n = universe.n_rows
    complement = 2 * n_c > n
    rows = _kernels.bitset_to_ids(np.invert(cond_bits) if complement else cond_bits, n)
    compact = compact_sparse_csr(universe)
    if compact is not None:
        hist = compact.histogram(rows, universe.n_features)[sparse_fids]
    else:
        hist = _kernels.csr_histogram(universe.sparse_csr_indptr, universe.sparse_csr_indices, rows,
                                      universe.n_features)[sparse_fids]
    if complement:
        return np.asarray(universe.feature_count[sparse_fids], dtype=np.int64) - hist
    return hist


def histogram_cost(universe: Universe, n_c: int, factor: float = HISTOGRAM_COST_FACTOR) -> float:
    """The histogram plan's estimated cost, in the scan's unit (FeatureLayout.scan_cost: words read): listing
    a condition of n_c rows (one pass over its words) and `factor` per CSR entry of its rows, taken as the
    universe's average row (bench/plan_choice.py tries other factors)."""
    avg_row = len(universe.csr_indices) / universe.n_rows if universe.n_rows else 0.0
    return factor * n_c * avg_row + universe.n_words


def count_features(universe: Universe, cond_bits: np.ndarray, n_c: int, fids: np.ndarray, plan: str = "auto",
                   layout: FeatureLayout | None = None, sparse: str = "auto", family=None) -> tuple[np.ndarray, str]:
    """n_CF for each feature id in `fids` (exact), and the plan used. layout: feature_layout(universe, fids)
    when the caller has it (with derive_partitions only when n_c is popcount(cond_bits)). sparse: how the
    scan plan counts the sparse-stored features (sparse_method: "auto", "probe" or "rows"). family: concurrent
    counts of one family share their dense scans (segsrv.engine.shared_scan)."""
    if sparse not in SPARSE_METHODS:
        raise ValueError(f"sparse must be one of {SPARSE_METHODS}, got {sparse!r}")
    if layout is None:
        layout = feature_layout(universe, fids)
    if plan == "auto":
        plan = "histogram" if histogram_cost(universe, n_c) < layout.scan_cost else "scan"
    out = np.zeros(len(fids), dtype=np.int64)
    if plan == "histogram":
        rows = _kernels.bitset_to_ids(cond_bits, universe.n_rows)
        hist = _kernels.csr_histogram(universe.csr_indptr, universe.csr_indices, rows, universe.n_features)
        out[:] = hist[fids]
        return out, plan
    if len(layout.dense):
        # concurrent scans of the same rows read them once (shared_scan)
        out[layout.dense] = shared_scans.and_count_dense(cond_bits, universe.dense, layout.dense_slots, family)
    if len(layout.sparse):
        if sparse_method(universe, layout, n_c, sparse) == "rows":
            out[layout.sparse] = count_sparse_by_rows(universe, cond_bits, n_c, fids[layout.sparse])
        else:
            out[layout.sparse] = _kernels.and_count_sparse(cond_bits, universe.sparse_ids, universe.sparse_offsets,
                                                           layout.sparse_slots)
    if len(layout.derived):  # the rest of the condition's rows (weights below 2^53: exact)
        others = np.bincount(layout.partition_of, weights=out[layout.partition_members], minlength=len(layout.derived))
        out[layout.derived] = n_c - others.astype(np.int64)
    return out, plan


def select_candidates(universe: Universe, query: RelateQuery, identifier_like) -> np.ndarray:
    """The feature ids a Relate counts: its fields' features, in field order. identifier_like: the fields
    "every field" leaves out (docs/query.md)."""
    skip = set(condition_fields(query.where) if query.exclude_condition_fields else ())
    fields = select_fields(universe, query.relate, skip | set(() if query.relate else identifier_like))
    return (np.concatenate([universe.fields[f].feature_ids for f in fields]) if fields
            else np.zeros(0, np.int64)).astype(np.int64, copy=False)


def candidate_features(universe: Universe, query: RelateQuery) -> np.ndarray:
    """select_candidates, memoised per universe: the same request shapes come back, and resolving globs
    and identifier-like fields costs more than a small universe's counts."""
    return _candidates(universe, query)[0]


def _candidates(universe: Universe, query: RelateQuery) -> tuple[np.ndarray, np.ndarray, FeatureLayout]:
    """(candidate_features, their rows overall, their layout), memoised together per universe."""
    skip = frozenset(condition_fields(query.where) if query.exclude_condition_fields else ())
    key = (tuple(query.relate) if query.relate else None, skip)
    with _MEMO_LOCK:
        memo = _MEMO.setdefault(universe, {})
        found = memo.get(key)
    if found is None:
        fids = select_candidates(universe, query, () if query.relate else identifier_like_fields(universe))
        n_f = np.asarray(universe.feature_count[fids], dtype=np.int64)
        layout = feature_layout(universe, fids, derive_partitions=True)  # relate's n_c is the popcount
        for a in (fids, n_f, layout.dense, layout.dense_slots, layout.sparse, layout.sparse_slots, layout.derived,
                  layout.partition_members, layout.partition_of):
            a.setflags(write=False)
        found = (fids, n_f, layout)
        with _MEMO_LOCK:
            if len(memo) >= _MEMO_SHAPES:
                memo.clear()
            memo[key] = found
    return found


def relate(snapshot: Snapshot, query: RelateQuery) -> RelateResult:
    """The candidates are counted, filtered and ordered as vectors; statistics beyond the order's key are
    computed for the returned hits only, p-values for every candidate only when something needs them all
    (BH q-values, a max_p_value filter, ordering by p-value)."""
    t0 = time.perf_counter()
    query.validate()
    universe = snapshot.universe(query.universe)
    cond_bits = evaluate_to_read(snapshot, universe, query.where)  # only counted
    n_c = int(_kernels.popcount(cond_bits))
    n = universe.n_rows
    fids, n_f, layout = _candidates(universe, query)
    plan = "none"
    if n_c == 0 or len(fids) == 0:
        n_cf = np.zeros(len(fids), dtype=np.int64)
    else:
        # requests for the same fields share their scans under concurrent load (their rows differ only by
        # their conditions' own fields)
        family = ("relate", tuple(query.relate) if query.relate else None)
        n_cf, plan = count_features(universe, cond_bits, n_c, fids, query.plan, layout, family=family)

    n_matching, hits = rank_counts(universe, query, n, n_c, fids, n_f, n_cf)
    return RelateResult(
        snapshot=snapshot.name,
        version=snapshot.version,
        universe=universe.name,
        n_rows=n,
        n_condition=n_c,
        n_candidates=len(fids),
        n_matching=n_matching,
        plan=plan,
        hits=hits,
        elapsed_ms=(time.perf_counter() - t0) * 1e3,
    )


def rank_counts(universe: Universe, query: RelateQuery, n: int, n_c: int, fids: np.ndarray, n_f: np.ndarray,
                n_cf: np.ndarray) -> tuple[int, RelateHits]:
    """(candidates passing every filter, the first `limit` of them as hits) from the counts alone: n rows,
    n_c in the condition, and per candidate feature fids its n_f rows overall and n_cf in the condition.
    Every statistic, filter and order of Relate is decided here, for one snapshot or summed shards."""
    order_by = query.order_by or "mutual_information"  # docs/query.md, "Default order"
    if order_by == "mutual_information" and not query.wants_q_values and query.max_p_value is None:
        # the default request: filters, order and the first `limit` in one kernel pass (the vector form
        # below is its twin)
        n_f, n_cf, fids = (np.ascontiguousarray(a, dtype=np.int64) for a in (n_f, n_cf, fids))
        n_matching, top = _kernels.top_by_mutual_information(
            int(n), int(n_c), n_f, n_cf, fids, int(query.min_support), query.direction, query.min_lift,
            int(query.effective_limit))
        top_f, top_cf = n_f[top], n_cf[top]
        top_p = st.p_values(n, n_c, top_f, top_cf, query.direction) if len(top) else np.zeros(0)
        return n_matching, _hits(universe, n, n_c, fids[top], top_f, top_cf, top_p, np.full(len(top), np.nan),
                                 query.prior_strength)
    tested = (n_f > 0) & (n_f < n)
    keep = tested & (n_cf >= query.min_support) & (n_c > 0)
    if query.direction != "all" or query.min_lift is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = (n_cf / n_c) / (n_f / n) if n_c else np.full(len(fids), np.nan)
        if query.direction == "over":
            keep &= lift > 1
        elif query.direction == "under":
            keep &= lift < 1
        if query.min_lift is not None:
            keep &= lift >= query.min_lift
    # per candidate (NaN where not computed), only when something needs more than the returned hits'
    p_value = q_value = None
    if query.wants_q_values:  # a q-value is a rank among every tested candidate's p-value
        p_value = np.full(len(fids), np.nan)
        q_value = np.full(len(fids), np.nan)
        p_value[tested] = st.p_values(n, n_c, n_f[tested], n_cf[tested], query.direction)
        q_value[tested] = st.benjamini_hochberg(p_value[tested])
    elif query.max_p_value is not None or order_by == "p_value":
        p_value = np.full(len(fids), np.nan)
        p_value[keep] = st.p_values(n, n_c, n_f[keep], n_cf[keep], query.direction)
    if query.max_p_value is not None:
        keep &= p_value <= query.max_p_value
    idx = np.flatnonzero(keep)

    # the default, mutual information: sizable and strong over- (or under-) indexing first, not a large
    # lift on a handful of rows
    if order_by == "mutual_information":
        key = _kernels.table_mutual_information(n, n_c, n_f[idx], n_cf[idx])
    elif order_by in ("support", "n_feature", "p_value", "q_value"):
        key = {"support": n_cf, "n_feature": n_f, "p_value": p_value, "q_value": q_value}[order_by][idx].astype(np.float64)
    else:
        table = _kernels.table_statistics(n, n_c, n_f[idx], n_cf[idx], query.prior_strength)
        key = table[:, _kernels.TABLE_STATISTICS.index(order_by)]
    ascending = order_by in _ASCENDING_ALWAYS or (query.direction == "under" and order_by in _ASCENDING_UNDER)
    key = np.where(np.isnan(key), np.inf if ascending else -np.inf, key)
    top = idx[first_by(key if ascending else -key, fids[idx], query.effective_limit)]
    top_f, top_cf = n_f[top], n_cf[top]
    if p_value is None:
        top_p = st.p_values(n, n_c, top_f, top_cf, query.direction) if len(top) else np.zeros(0)
    else:
        top_p = p_value[top]
        need_p = np.isnan(top_p)
        if need_p.any():
            top_p[need_p] = st.p_values(n, n_c, top_f[need_p], top_cf[need_p], query.direction)
    top_q = np.full(len(top), np.nan) if q_value is None else q_value[top]
    return len(idx), _hits(universe, n, n_c, fids[top], top_f, top_cf, top_p, top_q, query.prior_strength)


def first_by(key: np.ndarray, ties: np.ndarray, limit: int) -> np.ndarray:
    """np.lexsort((ties, key))[:limit] (key without NaN, ties distinct). Where `limit` is a small part of many
    candidates, only the keys up to a bound are sorted: the limit-th smallest of every stride-th key, which at
    least `limit` keys reach (so the first `limit` of the whole order are among them), about 16 x limit keys."""
    if len(key) <= max(256, 4 * limit):
        return np.lexsort((ties, key))[:limit]
    sample = key[:: max(1, len(key) // (16 * limit))]
    near = np.flatnonzero(key <= np.partition(sample, limit - 1)[limit - 1])
    return near[np.lexsort((ties[near], key[near]))[:limit]]


# where the table kernel's statistics and the tails go among a hit's float statistics
_TABLE_COLUMNS = np.array([HIT_FLOAT_STATS.index(name) for name in _kernels.TABLE_STATISTICS])
_P_COLUMN, _Q_COLUMN = HIT_FLOAT_STATS.index("p_value"), HIT_FLOAT_STATS.index("q_value")


def _hits(universe: Universe, n: int, n_c: int, fids, n_f, n_cf, p_value, q_value, prior_strength) -> RelateHits:
    stats = np.empty((len(fids), len(HIT_FLOAT_STATS)))
    stats[:, _TABLE_COLUMNS] = _kernels.table_statistics(n, n_c, n_f, n_cf, prior_strength)
    stats[:, _P_COLUMN] = p_value
    stats[:, _Q_COLUMN] = q_value
    names = [universe.feature_name(fid) for fid in fids.tolist()]
    return RelateHits(np.asarray(fids, dtype=np.int64), [f for f, _ in names], [v for _, v in names], stats,
                      np.asarray(n_cf, dtype=np.int64), np.asarray(n_f, dtype=np.int64))
