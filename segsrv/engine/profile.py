"""Profile: describe a segment field by field against the population (DESIGN.md section 1).

For a segment S (a condition; every row by default) of a universe of N rows, and
each selected field:

- every value v of the field (its features: categories, tokens of a multi-valued
  column, bands of a numeric one) is counted exactly within S (n_{S,v}, by the
  same AND+popcount / CSR-histogram counting as Relate) and over the universe
  (n_v, from the snapshot):

      segment_share    = n_{S,v} / |S|
      population_share = n_v / N
      lift             = segment_share / population_share   (0 when n_{S,v} = 0 < n_v)
      p_value          = min(1, 2 min(P(X >= n_{S,v}), P(X <= n_{S,v}))),
                         X ~ Hypergeometric(N, n_v, |S|)   (two-sided: the doubled smaller tail)

  The answer lists, per field, the `values_per_field` most certainly over-indexed
  values (lift > 1; by the lower end of the lift's 95% interval, descending: the
  Wilson interval of segment_share over population_share, so a value on a handful of
  rows with a large lift does not outrank a sizable one) and the `values_per_field`
  most certainly under-indexed ones (lift < 1; by the upper end of the interval,
  ascending). Ties are broken by lift, then segment_count descending, then
  population count (n_v) descending, then the field's value order. Fields are listed
  by strength (the largest lower bound of an over-indexed value's lift; 1 when the
  field has none), strongest first, then in request / universe order. Values with lift exactly 1, and
  values no row has (n_v = 0: lift undefined), are in neither list; an empty
  segment (lift undefined everywhere) and the whole universe (lift 1 everywhere)
  list none.

- a field with raw numeric values (own or forward-linked numeric columns) also
  gets summary statistics over S and over the universe: count of non-missing
  values, mean, standard deviation (population, ddof = 0), min, 25th percentile,
  median, 75th percentile, max (numpy's default linear interpolation between
  order statistics). Missing values (NaN) are ignored; with no value the count is
  0 and every other statistic NaN. The universe's statistics are computed once
  per snapshot and field and cached.

Fields are names or globs as in Relate (`customer.*`, `**`); by default every
field of the universe but identifier-like ones (segsrv/engine/fields.py), the
segment's own condition fields included.

Everything about the values is decided from counts alone by ``rank_profile_counts``,
and the summaries by ``numeric_stats``: a sharded snapshot's Profile
(segsrv/engine/sharded/profile.py) calls both on the shards' summed counts and
merged values. A segment's summary of a field whose values are integers of a small
span (ages, months, counts: ``histogram_domain``) comes instead from one kernel pass
that histograms the members' values (``histogram_stats``: the same numbers), read as the
field's codes (``field_codes``: value minus its minimum in one or two bytes per row, kept
per universe) where the span allows.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from typing import Callable, Hashable

import numpy as np

from .. import _kernels
from ..ops.profile import FieldProfile, NumericProfile, NumericStats, ProfileQuery, ProfileResult, ValueProfile
from ..snapshot.reader import Snapshot, Universe
from . import stats as st
from .conditions import evaluate
from .fields import identifier_like_fields, select_fields
from .relate import FeatureLayout, count_features, feature_layout

# --- numeric summaries ------------------------------------------------------------

_NAN_STATS = NumericStats(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


# Integer values spanning at most this many have their order statistics read off a histogram (a few
# passes) instead of a sort: numpy sorts 100k floats in 0.47 ms on an Intel Xeon, 2.4 ms on an AMD
# EPYC (Zen 4), where ages, months and counts made Profile's numeric summaries most of its time. A
# segment of such a field is histogrammed straight from its rows (histogram_present), not gathered.
MAX_HISTOGRAM_SPAN = 1 << 16


def numeric_stats(x: np.ndarray, *, owned: bool = False) -> NumericStats:
    """Summary of the non-NaN values of x (count 0 and NaN statistics when there are none). owned: x is
    the caller's scratch array of float64 without NaN (gather_present's), sorted in place (when the order
    statistics need a sort) instead of copied (each fresh copy of a 100k-value array costs more than the sort)."""
    x = np.asarray(x, dtype=np.float64)
    if not owned:
        x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return NumericStats(**_NAN_STATS.as_dict())
    mean, std = float(np.mean(x)), float(np.std(x))  # summed in row order, before any sort
    kth = order_statistic_reader(x, owned)
    return NumericStats(count=n, mean=mean, std=std, min=kth(0), p25=percentile_of(kth, n, 0.25),
                        median=percentile_of(kth, n, 0.5), p75=percentile_of(kth, n, 0.75), max=kth(n - 1))


def small_integer_span(x: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of x (float64, non-empty, NaN-free) when its values are integers below 2^52 in absolute
    value, none of them negative zero, spanning at most MAX_HISTOGRAM_SPAN (max - min < the span): the
    values a histogram of max - min + 1 bins holds exactly. None otherwise."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < MAX_HISTOGRAM_SPAN and max(-lo, hi) < 2.0 ** 52 and lo == math.floor(lo):
        if np.array_equal(x, np.floor(x)) and not (np.signbit(x) & (x == 0)).any():
            return lo, hi
    return None


def order_statistic_reader(x: np.ndarray, owned: bool = False) -> Callable[[int], float]:
    """k -> the k-th smallest of x (float64, non-empty, NaN-free), exactly the value a sort puts at k.

    Values of a `small_integer_span`: from the cumulative counts of a histogram. Otherwise numpy's
    vectorised sort (in place when `owned`)."""
    span = small_integer_span(x)
    if span is not None:
        lo = span[0]
        # x - lo is exact: integers below 2^53 (checked on x itself: x - lo could round a fraction away)
        return cumulative_count_reader(np.cumsum(np.bincount((x - lo).astype(np.int64))), lo)
    if owned:
        x.sort()
        s = x
    else:
        s = np.sort(x)
    return lambda k: float(s[k])


def cumulative_count_reader(below: np.ndarray, lo: float) -> Callable[[int], float]:
    """k -> the k-th smallest of the values a histogram counts, from its cumulative counts: below[j] values
    are <= lo + j (lo + j exact)."""
    return lambda k: lo + float(np.searchsorted(below, k, side="right"))


def sorted_percentile(s: np.ndarray, q: float) -> float:
    """np.percentile(s, 100 q) of sorted, non-empty, NaN-free s, the same number (`percentile_of`)."""
    return percentile_of(lambda k: float(s[k]), len(s), q)


def percentile_of(kth: Callable[[int], float], n: int, q: float) -> float:
    """np.percentile of n values whose k-th smallest is kth(k): numpy's default ("linear", Hyndman &
    Fan's 7th) interpolation between the order statistics at floor and ceil of (n - 1) q, computed as
    numpy's _lerp computes it (from the upper end when the weight is >= 1/2)."""
    v = (n - 1) * q
    lo = math.floor(v)
    a, b = kth(lo), kth(min(lo + 1, n - 1))
    g = v - lo
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def histogram_stats(counts: np.ndarray, lo: float) -> NumericStats:
    """Summary of the values a histogram counts, counts[j] (int64) of them equal to lo + j (integers below
    2^52 in absolute value): numeric_stats' numbers for those values in any order, when their count times
    the largest absolute value is below 2^53 (the caller's to check).

    Then every partial sum of the values is an exact integer, so numpy's float sum is the exact sum and
    mean (the exact sum / count, correctly rounded) is np.mean's bit for bit; std sums count_j times
    numpy's own (lo + j - mean)^2 by bin instead of by value (the same squares summed in another order:
    np.std's up to rounding, tested to rtol 1e-13); min, the quartiles and max are the order statistics
    numeric_stats reads off the same cumulative counts."""
    below = np.cumsum(counts)
    n = int(below[-1])
    if n == 0:
        return NumericStats(**_NAN_STATS.as_dict())
    offsets = np.arange(len(counts), dtype=np.int64)
    mean = (n * int(lo) + int(np.dot(counts, offsets))) / n  # int / int: the exact quotient, rounded once
    deviation = (lo + offsets) - mean  # lo + j exact: the same float numpy subtracts the mean from
    std = math.sqrt(float(np.dot(counts, deviation * deviation)) / n)
    kth = cumulative_count_reader(below, lo)
    return NumericStats(count=n, mean=mean, std=std, min=kth(0), p25=percentile_of(kth, n, 0.25),
                        median=percentile_of(kth, n, 0.5), p75=percentile_of(kth, n, 0.75), max=kth(n - 1))


def histogram_domain_of(x: np.ndarray) -> tuple[float, int] | None:
    """(lo, n_bins) of the histogram that holds the non-NaN values of x exactly (`small_integer_span`: lo
    their minimum, n_bins their span + 1), or None (no value, or values of no such span)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    span = small_integer_span(x) if len(x) else None
    return None if span is None else (span[0], int(span[1] - span[0]) + 1)


def numeric_codes(x: np.ndarray, domain: tuple[float, int] | None) -> np.ndarray | None:
    """x's values (float64) as the bins of their histogram domain (histogram_domain_of x): value - lo, in
    uint8 when the domain holds at most 255 bins, else uint16 when at most 65,535; an absent (NaN) value
    is the dtype's largest, past every bin. None without a domain or of a wider one. One or two bytes per
    row instead of eight: the column a segment's histogram reads (histogram_codes_present)."""
    if domain is None:
        return None
    lo, n_bins = domain
    dtype = np.uint8 if n_bins <= 255 else np.uint16 if n_bins <= 65535 else None
    if dtype is None:
        return None
    x = np.asarray(x, dtype=np.float64)
    absent = np.isnan(x)
    codes = np.where(absent, np.iinfo(dtype).max, x - lo)  # every present value is lo + a bin: exact
    return codes.astype(dtype)


def segment_numeric_stats(bits: np.ndarray, n_s: int, values: np.ndarray,
                          domain: tuple[float, int] | None, codes: np.ndarray | None = None) -> NumericStats:
    """numeric_stats of the values (float64, one per row) of the n_s rows of `bits`. With a histogram
    domain (histogram_domain_of all the values) whose sums over n_s values stay exact (n_s times the
    largest absolute value below 2^53: histogram_stats), from one pass that histograms the members'
    codes (numeric_codes(values, domain), when given: histogram_codes_present) or values
    (histogram_present); otherwise from their gathered values."""
    if domain is not None:
        lo, n_bins = domain
        if n_s * max(-lo, lo + n_bins - 1) < 2.0 ** 53:
            counts = (_kernels.histogram_present(bits, values, lo, n_bins) if codes is None
                      else _kernels.histogram_codes_present(bits, codes, n_bins))
            return histogram_stats(counts, lo)
    return numeric_stats(_kernels.gather_present(bits, values), owned=True)


# owner (a universe, or a sharded build) -> key (a field; a sharded build's (universe, field)) -> statistics
# over every row, or a field's histogram domain (snapshots are immutable; entries go with their owner)
_POPULATION: "weakref.WeakKeyDictionary[object, dict[Hashable, NumericStats]]" = weakref.WeakKeyDictionary()
_HISTOGRAM_DOMAIN: "weakref.WeakKeyDictionary[object, dict[Hashable, tuple[float, int] | None]]" = (
    weakref.WeakKeyDictionary())
# universe -> numeric field -> its numeric_codes (1-2 bytes per row, in memory beside the mapped snapshot)
_CODES: "weakref.WeakKeyDictionary[object, dict[Hashable, np.ndarray | None]]" = weakref.WeakKeyDictionary()
# universe -> the field lists of recent Profiles -> their counting layout (counting_layout)
_LAYOUTS: "weakref.WeakKeyDictionary[object, dict[Hashable, FeatureLayout]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _cached(cache: weakref.WeakKeyDictionary, owner, key: Hashable, compute: Callable[[], object],
            bound: int | None = None):
    """cache[owner][key], computed on first use (a None result is kept too); with `bound`, an owner's
    entries are dropped before a new key would make more than that many."""
    with _CACHE_LOCK:
        entries = cache.setdefault(owner, {})
        if key in entries:
            return entries[key]
    value = compute()
    with _CACHE_LOCK:
        entries = cache.setdefault(owner, {})
        if bound is not None and key not in entries and len(entries) >= bound:
            entries.clear()
        entries[key] = value
    return value


def cached_population(owner, key: Hashable, compute: Callable[[], NumericStats]) -> NumericStats:
    """The population statistics of `key` kept for `owner`, computed on first use."""
    return _cached(_POPULATION, owner, key, compute)


def population_stats(universe: Universe, name: str) -> NumericStats:
    return cached_population(universe, name, lambda: numeric_stats(universe.fields[name].numeric))


def counting_layout(universe: Universe, names: list[str], fids: np.ndarray) -> FeatureLayout:
    """feature_layout(fids of `names`, derive_partitions) kept per universe for the last 256 field lists a
    Profile asked for (every field, by default): ~0.4 ms per call to build for 5,000 values."""
    return _cached(_LAYOUTS, universe, tuple(names), lambda: feature_layout(universe, fids, derive_partitions=True),
                   bound=256)


def histogram_domain(universe: Universe, name: str) -> tuple[float, int] | None:
    """The histogram domain of a numeric field's values over every row (histogram_domain_of), kept per
    universe: a segment's values are among them."""
    return _cached(_HISTOGRAM_DOMAIN, universe, name, lambda: histogram_domain_of(universe.fields[name].numeric))


def field_codes(universe: Universe, name: str) -> np.ndarray | None:
    """numeric_codes of a numeric field's values over its histogram_domain, kept per universe (the
    process's memory: one byte per row for a span of at most 255 values, two up to 65,535)."""
    return _cached(_CODES, universe, name,
                   lambda: numeric_codes(universe.fields[name].numeric, histogram_domain(universe, name)))


# --- value profiles ---------------------------------------------------------------


def ranked_per_field(field_of: np.ndarray, n_fields: int, cand: np.ndarray, bound: np.ndarray, lift: np.ndarray,
                     n_sv: np.ndarray, n_v: np.ndarray, ascending: bool, k: int) -> list[np.ndarray]:
    """Per field, the first k of its candidates `cand` (positions, ascending) by the lift's bound
    (descending, or ascending), then lift, segment count desc, population count desc, position (the
    field's value order). The bound comes first, so only a field's k best bounds and their ties can be
    among its first k: those are sorted by every key, the rest never (one sort by field and bound)."""
    if len(cand) == 0:
        return [cand] * n_fields
    sign = 1.0 if ascending else -1.0
    key = sign * bound[cand]
    order = np.lexsort((key, field_of[cand]))
    by_bound = cand[order]
    groups = field_of[by_bound]
    starts = np.searchsorted(groups, np.arange(n_fields + 1))
    rank = np.arange(len(by_bound)) - starts[groups]
    last = np.minimum(starts[:-1] + k, starts[1:]) - 1  # each field's k-th (or last) by bound
    sorted_key = key[order]
    kth = sorted_key[np.maximum(last, 0)][groups]  # a field without candidates has no entry in groups
    tied = (sorted_key == kth) | (np.isnan(sorted_key) & np.isnan(kth))
    few = by_bound[(rank < k) | tied]
    order = np.lexsort((few, -n_v[few], -n_sv[few], sign * lift[few], sign * bound[few], field_of[few]))
    ranked = few[order]
    starts = np.searchsorted(field_of[ranked], np.arange(n_fields + 1))
    return [ranked[starts[j]: min(starts[j] + k, starts[j + 1])] for j in range(n_fields)]


def profile_fields(universe: Universe, query: ProfileQuery, identifier_like) -> list[str]:
    """The fields a Profile describes: the request's names / globs, or every field but the identifier-like
    ones (judged by the caller's counts: one snapshot's, or summed shards')."""
    skip = set() if query.fields else set(identifier_like)
    return select_fields(universe, list(query.fields) if query.fields else None, skip, key="fields")


def profile_feature_ids(universe: Universe, names: list[str]) -> np.ndarray:
    """The feature ids of every value of the named fields, field by field: the values Profile counts."""
    infos = [universe.fields[f] for f in names]
    return np.concatenate([i.feature_ids for i in infos]) if infos else np.zeros(0, np.int64)


def rank_profile_counts(universe: Universe, names: list[str], n: int, n_s: int, n_v_all: np.ndarray,
                        n_sv_all: np.ndarray, values_per_field: int) -> list[FieldProfile]:
    """The field profiles (over- and under-indexed values, strength, fields strongest first) from the
    counts alone: n rows, n_s in the segment, and per value of the fields (profile_feature_ids' order)
    its n_v rows overall and n_sv in the segment. Every statistic, p-value and order of Profile is
    decided here, for one snapshot or summed shards."""
    infos = [universe.fields[f] for f in names]
    fids = profile_feature_ids(universe, names)
    with np.errstate(divide="ignore", invalid="ignore"):
        seg_share_all = n_sv_all / n_s if n_s else np.full(len(fids), np.nan)
        pop_share_all = n_v_all / n if n else np.full(len(fids), np.nan)
        lift_all = seg_share_all / pop_share_all  # the same arithmetic as Relate's lift
        lo, hi = st.wilson_interval(n_sv_all, n_s)
        lift_low_all = lo / pop_share_all
        lift_high_all = hi / pop_share_all

    k = int(values_per_field)
    field_of = np.repeat(np.arange(len(infos)), [len(i.values) for i in infos])
    over_of = ranked_per_field(field_of, len(infos), np.flatnonzero(lift_all > 1), lift_low_all, lift_all,
                               n_sv_all, n_v_all, False, k)
    under_of = ranked_per_field(field_of, len(infos), np.flatnonzero(lift_all < 1), lift_high_all, lift_all,
                                n_sv_all, n_v_all, True, k)
    # (field index, over positions, under positions)
    picked: list[tuple[int, np.ndarray, np.ndarray]] = [(j, over_of[j], under_of[j]) for j in range(len(infos))]
    finite_low = np.where(np.isfinite(lift_low_all), lift_low_all, -np.inf)
    strength = [max(1.0, float(finite_low[over].max())) if len(over) else 1.0 for _, over, _ in picked]
    picked = [picked[i] for i in sorted(range(len(picked)), key=lambda i: (-strength[i], i))]

    # p-values only for the values that are returned; each listed value's numbers as Python lists, once
    chosen = np.concatenate([np.concatenate((o, u)) for _, o, u in picked]) if picked else np.zeros(0, np.int64)
    chosen = chosen.astype(np.int64)
    p_value = st.p_value_two_sided(n, n_s, n_v_all[chosen], n_sv_all[chosen]) if len(chosen) else np.zeros(0)
    listed = zip(fids[chosen].tolist(), n_sv_all[chosen].tolist(), n_v_all[chosen].tolist(),
                 seg_share_all[chosen].tolist(), pop_share_all[chosen].tolist(), lift_all[chosen].tolist(),
                 p_value.tolist())

    def value_profiles(info, m: int) -> list[ValueProfile]:
        return [ValueProfile(info.values[fid - info.feature_offset], n_sv, n_v, seg_share, pop_share, lift, p)
                for fid, n_sv, n_v, seg_share, pop_share, lift, p in itertools.islice(listed, m)]

    return [FieldProfile(infos[j].name, value_profiles(infos[j], len(over)), value_profiles(infos[j], len(under)),
                         strength[j])
            for j, over, under in picked]


def profile(snapshot: Snapshot, query: ProfileQuery) -> ProfileResult:
    t0 = time.perf_counter()
    query.validate()
    universe = snapshot.universe(query.universe)
    n = universe.n_rows
    names = profile_fields(universe, query, identifier_like_fields(universe))
    bits = evaluate(snapshot, universe, query.segment)
    n_s = int(_kernels.popcount(bits))

    # n_{S,v} for every value of every selected field, in one counting pass
    fids = profile_feature_ids(universe, names)
    n_v_all = np.asarray(universe.feature_count[fids], dtype=np.int64)
    plan = "none"
    if n_s == 0 or len(fids) == 0:
        n_sv_all = np.zeros(len(fids), dtype=np.int64)
    elif n_s == n:  # every row: n_{S,v} = n_v, nothing to count
        n_sv_all = n_v_all.copy()
    else:
        # n_s is the popcount: a partitioning field's costliest value is the rest of the segment, not read
        n_sv_all, plan = count_features(universe, bits, n_s, fids, layout=counting_layout(universe, names, fids))
        n_sv_all = np.asarray(n_sv_all, dtype=np.int64)
    fields_out = rank_profile_counts(universe, names, n, n_s, n_v_all, n_sv_all, query.values_per_field)

    numeric_out = []
    for info in (universe.fields[f] for f in names):
        if info.numeric is None:
            continue
        population = population_stats(universe, info.name)
        if n_s == 0:
            segment = NumericStats(**_NAN_STATS.as_dict())
        elif n_s == n:
            segment = population
        else:
            values = np.asarray(info.numeric, dtype=np.float64)  # float64 already: no copy
            segment = segment_numeric_stats(bits, n_s, values, histogram_domain(universe, info.name),
                                            field_codes(universe, info.name))
        numeric_out.append(NumericProfile(info.name, segment, population))

    return ProfileResult(
        snapshot=snapshot.name, version=snapshot.version, universe=universe.name, n_rows=n, n_segment=n_s,
        fields=fields_out, numeric=numeric_out, elapsed_ms=(time.perf_counter() - t0) * 1e3, plan=plan,
    )
