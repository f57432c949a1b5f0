"""Profile (segsrv.engine.profile) against a brute-force computation over the PetNord source tables.

The segment masks and value masks come from the oracle of conftest.py (pandas joins over the
source JSON files, never the snapshot's bitsets); the per-value table (counts, shares, lift,
ordering) is computed here with pandas, the p-values with scipy's hypergeometric distribution,
and the numeric summaries with numpy over the oracle's raw values. From the snapshot the
test only takes field names and the order of a field's values (the last tie-break).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import hypergeom

from segsrv.engine.catalog import apply_segments
from segsrv.ops.conditions import parse_where
from segsrv import _kernels
from segsrv.engine.profile import (
    MAX_HISTOGRAM_SPAN,
    histogram_domain,
    histogram_domain_of,
    numeric_codes,
    numeric_stats,
    order_statistic_reader,
    profile,
    ranked_per_field,
    segment_numeric_stats,
    sorted_percentile,
)
from segsrv.ops.profile import (
    DEFAULT_VALUES_PER_FIELD,
    MAX_FIELD_PATTERNS,
    MAX_VALUES_PER_FIELD,
    NUMERIC_STATS,
    ProfileQuery,
)
from segsrv.service import run_json
from segsrv.errors import (
    LimitExceededError,
    QueryError,
    UnknownFieldError,
    UnknownSegmentError,
    UnknownUniverseError,
    UnknownValueError,
)
from segsrv.snapshot.reader import open_snapshot
from support import CUSTOMER_CONDITIONS

SEGMENTS = {
    "customers": CUSTOMER_CONDITIONS,
    "orders": {
        "forward": {"customer.region": "turku", "lines.product.category": "dry-food"},
        "negation": {"$not": {"customer.lifestyle": "budget"}},
        "empty": {"total_eur": {"$lt": -1}},
    },
    "order_lines": {
        "two_hops": {"order.customer.segment": "cat_owner", "product.tags": "premium"},
        "range": {"qty": {"$gte": 2}, "product.price_eur": {"$lt": 20}},
    },
}
CASES = [(u, name) for u, segs in SEGMENTS.items() for name in segs]


# ----------------------------------------------------------------------------
# the brute-force profile
# ----------------------------------------------------------------------------


def ref_p_value(n: int, n_s: int, n_v: int, n_sv: int) -> float:
    """Two-sided: twice the smaller hypergeometric tail, capped at 1 (scipy)."""
    upper = float(hypergeom.sf(n_sv - 1, n, n_v, n_s))
    lower = float(hypergeom.cdf(n_sv, n, n_v, n_s))
    return min(1.0, 2.0 * min(upper, lower))


def brute_table(bu, snap_u, field: str, seg: np.ndarray, wilson) -> pd.DataFrame:
    """One row per value of the field: counts, shares, lift and its 95% Wilson bounds (pandas over the
    oracle's masks)."""
    f = bu.fields[field]
    n, n_s = bu.n, int(seg.sum())
    order = {v: i for i, v in enumerate(snap_u.fields[field].values)}
    rows = [{"value": v, "n_sv": int((m & seg).sum()), "n_v": int(m.sum()), "pos": order[v]} for v, m in f.masks.items()]
    df = pd.DataFrame(rows, columns=["value", "n_sv", "n_v", "pos"])
    with np.errstate(divide="ignore", invalid="ignore"):
        df["segment_share"] = df["n_sv"] / n_s if n_s else np.nan
        df["population_share"] = df["n_v"] / n
        df["lift"] = df["segment_share"] / df["population_share"]
        bounds = [wilson(int(k), n_s) for k in df["n_sv"]]
        df["lift_low"] = [b[0] for b in bounds] / df["population_share"]
        df["lift_high"] = [b[1] for b in bounds] / df["population_share"]
    return df


def brute_lists(df: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(over, under): lift > 1 by the lift's lower bound desc, lift < 1 by its upper bound asc; ties: lift,
    segment count desc, population count desc, the field's value order."""
    over = df[df["lift"] > 1].sort_values(["lift_low", "lift", "n_sv", "n_v", "pos"],
                                          ascending=[False, False, False, False, True])
    under = df[df["lift"] < 1].sort_values(["lift_high", "lift", "n_sv", "n_v", "pos"],
                                           ascending=[True, True, False, False, True])
    return over.head(k), under.head(k)


def brute_strength(over: pd.DataFrame) -> float:
    """A field's strength: the largest lower bound of a listed over-indexed value's lift, at least 1."""
    return max([1.0] + [float(x) for x in over["lift_low"] if np.isfinite(x)])


def ref_numeric(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"count": 0, **{s: math.nan for s in NUMERIC_STATS if s != "count"}}
    q = np.percentile(x, [25, 50, 75], method="linear")
    return {"count": len(x), "mean": np.mean(x), "std": np.std(x, ddof=0), "min": np.min(x), "p25": q[0],
            "median": q[1], "p75": q[2], "max": np.max(x)}


def check_values(got, want: pd.DataFrame, n: int, n_s: int, ref) -> None:
    assert [v.value for v in got] == want["value"].tolist()
    for v, (_, w) in zip(got, want.iterrows()):
        assert v.segment_count == w["n_sv"] and v.population_count == w["n_v"], v
        assert ref.close(v.segment_share, w["segment_share"], rtol=1e-12), v
        assert ref.close(v.population_share, w["population_share"], rtol=1e-12), v
        assert ref.close(v.lift, w["lift"], rtol=1e-12), v
        assert ref.close(v.p_value, ref_p_value(n, n_s, int(w["n_v"]), int(w["n_sv"])), rtol=1e-9, atol=1e-300), v


def check_numeric(got, want: dict, ref) -> None:
    assert got.count == want["count"]
    for s in NUMERIC_STATS[1:]:
        assert ref.close(getattr(got, s), want[s], rtol=1e-12, atol=1e-12), (s, getattr(got, s), want[s])


# ----------------------------------------------------------------------------
# every number against the oracle
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("universe,name", CASES)
def test_profile_equals_the_oracle(petnord_snapshot, oracle, ref, universe, name):
    where = SEGMENTS[universe][name]
    bu = oracle.universe(universe)
    u = petnord_snapshot.universe(universe)
    seg = bu.eval(where)
    n, n_s = bu.n, int(seg.sum())
    res = profile(petnord_snapshot, ProfileQuery(segment=parse_where(where), universe=universe))
    assert (res.universe, res.n_rows, res.n_segment) == (universe, n, n_s)
    assert res.snapshot == petnord_snapshot.name and res.version == petnord_snapshot.version
    # every field, the segment's own condition fields included, strongest first (ties: universe order)
    strengths = {}
    for fp in res.fields:
        over, under = brute_lists(brute_table(bu, u, fp.field, seg, ref.wilson), DEFAULT_VALUES_PER_FIELD)
        check_values(fp.over, over, n, n_s, ref)
        check_values(fp.under, under, n, n_s, ref)
        strengths[fp.field] = brute_strength(over)
        assert ref.close(fp.strength, strengths[fp.field], rtol=1e-9), fp.field
    pos = {f: i for i, f in enumerate(u.fields)}
    assert sorted(f.field for f in res.fields) == sorted(u.fields)
    got = [f.field for f in res.fields]
    assert all((-strengths[a], pos[a]) <= (-strengths[b], pos[b]) or math.isclose(strengths[a], strengths[b])
               for a, b in zip(got, got[1:])), got
    raw = [f for f in u.fields if bu.fields[f].raw is not None]
    assert [p.field for p in res.numeric] == raw
    for p in res.numeric:
        x = bu.fields[p.field].raw
        check_numeric(p.segment, ref_numeric(x[seg]), ref)
        check_numeric(p.population, ref_numeric(x), ref)
    if name == "empty":
        assert n_s == 0
        assert all(not f.over and not f.under for f in res.fields)
        assert all(p.segment.count == 0 and math.isnan(p.segment.mean) for p in res.numeric)
    if name == "all":
        assert all(not f.over and not f.under for f in res.fields)  # lift 1 everywhere
        assert all(p.segment == p.population for p in res.numeric)
    if name in ("term", "negation", "and"):
        assert any(f.over for f in res.fields) and any(f.under for f in res.fields)


@pytest.mark.parametrize("k", [1, 3, MAX_VALUES_PER_FIELD])
def test_values_per_field(petnord_snapshot, oracle, ref, k):
    where = SEGMENTS["customers"]["exists_link"]
    bu = oracle.universe("customers")
    u = petnord_snapshot.universe("customers")
    seg = bu.eval(where)
    res = profile(petnord_snapshot, ProfileQuery(segment=parse_where(where), universe="customers", values_per_field=k))
    for fp in res.fields:
        df = brute_table(bu, u, fp.field, seg, ref.wilson)
        over, under = brute_lists(df, k)
        check_values(fp.over, over, bu.n, int(seg.sum()), ref)
        check_values(fp.under, under, bu.n, int(seg.sum()), ref)
        assert len(fp.over) <= k and len(fp.under) <= k
        if k == MAX_VALUES_PER_FIELD:  # every value with a lift other than 1 is listed
            listed = {v.value for v in fp.over + fp.under}
            assert listed == set(df.loc[(df["lift"] > 1) | (df["lift"] < 1), "value"])


def test_ordering_rules(petnord_snapshot, ref):
    """Over: the lift's lower bound descending; under: its upper bound ascending; then lift, segment count,
    population count (both descending), value order. A one-region segment makes every other region a
    zero-count value (lift 0, upper bound the same for all), so the under list is those regions by
    population count."""
    u = petnord_snapshot.universe("customers")
    res = profile(petnord_snapshot, ProfileQuery(segment=parse_where({"region": "oulu"}), universe="customers",
                                                 fields=["region"], values_per_field=10))
    (fp,) = res.fields
    assert [v.value for v in fp.over] == ["oulu"]
    assert fp.over[0].lift == u.n_rows / int(u.fields["region"].counts[u.fields["region"].values.index("oulu")])
    counts = dict(zip(u.fields["region"].values, u.fields["region"].counts.tolist()))
    others = sorted((r for r in counts if r != "oulu"), key=lambda r: (-counts[r], u.fields["region"].values.index(r)))
    assert [v.value for v in fp.under] == others
    assert all(v.segment_count == 0 and v.lift == 0.0 and v.segment_share == 0.0 for v in fp.under)
    # the general rules, on every field of a few segments
    for where in (SEGMENTS["customers"]["and"], SEGMENTS["customers"]["not_tree"]):
        res = profile(petnord_snapshot, ProfileQuery(segment=parse_where(where), universe="customers",
                                                     values_per_field=100))
        for fp in res.fields:
            pos = {v: i for i, v in enumerate(u.fields[fp.field].values)}
            assert all(v.lift > 1 for v in fp.over) and all(v.lift < 1 for v in fp.under)
            n_s = res.n_segment

            def bound(v, side):
                return ref.wilson(v.segment_count, n_s)[side] / v.population_share

            over_keys = [(-bound(v, 0), -v.lift, -v.segment_count, -v.population_count, pos[v.value]) for v in fp.over]
            under_keys = [(bound(v, 1), v.lift, -v.segment_count, -v.population_count, pos[v.value]) for v in fp.under]
            assert over_keys == sorted(over_keys) and under_keys == sorted(under_keys)
        strengths = [fp.strength for fp in res.fields]
        assert strengths == sorted(strengths, reverse=True)


# ----------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------


def test_field_selection(petnord_snapshot, ref):
    u = petnord_snapshot.universe("orders")

    def fields(sel):
        res = profile(petnord_snapshot, ProfileQuery(universe="orders", fields=sel,
                                                     segment=parse_where({"customer.region": "oulu"})))
        return [f.field for f in res.fields], [p.field for p in res.numeric]

    # names and globs, duplicates once, condition fields included; categorical profiles strongest first
    # (docs: ties in request order), numeric ones in request order
    got, numeric = fields(["total_eur", "customer.region", "customer.*", "total_eur"])
    customer = ref.glob_fields(list(u.fields), "customer.*")
    requested = ["total_eur", "customer.region"] + [f for f in customer if f != "customer.region"]
    assert sorted(got) == sorted(requested) and len(got) == len(requested)
    assert numeric == [f for f in requested if u.fields[f].numeric is not None]
    assert sorted(fields(["**"])[0]) == sorted(u.fields)
    assert sorted(fields(["lines.**"])[0]) == sorted(ref.glob_fields(list(u.fields), "lines.**"))
    assert fields([])[0] == fields(None)[0] and sorted(fields(None)[0]) == sorted(u.fields)
    # a numeric field reached through a reverse link has bands but no raw values: no numeric summary
    cu = petnord_snapshot.universe("customers")
    res = profile(petnord_snapshot, ProfileQuery(universe="orders", fields=["lines.product.category"]))
    assert [f.field for f in res.fields] == ["lines.product.category"] and res.numeric == []
    assert cu.fields["tenure_months"].numeric is not None


def test_missing_numeric_values_are_ignored(petnord_snapshot, oracle, ref):
    """product.weight_kg has missing values (NaN) for part of the lines; a segment of such lines only
    gets count 0 and NaN statistics, the population the statistics of the present values."""
    bu = oracle.universe("order_lines")
    x = bu.fields["product.weight_kg"].raw
    assert np.isnan(x).any() and not np.isnan(x).all()
    missing_categories = [v for v, m in bu.fields["product.category"].masks.items() if np.isnan(x[m]).all()]
    assert missing_categories, "PetNord has a product category without weights"
    where = {"product.category": missing_categories[0]}
    res = profile(petnord_snapshot, ProfileQuery(segment=parse_where(where), universe="order_lines",
                                                 fields=["product.weight_kg", "qty"]))
    assert res.n_segment == int(bu.eval(where).sum()) > 0
    weight, qty = res.numeric
    assert weight.segment.count == 0 and all(math.isnan(getattr(weight.segment, s)) for s in NUMERIC_STATS[1:])
    check_numeric(weight.population, ref_numeric(x), ref)
    assert weight.population.count == int((~np.isnan(x)).sum())
    check_numeric(qty.segment, ref_numeric(bu.fields["qty"].raw[bu.eval(where)]), ref)


def test_numeric_stats_definitions():
    x = np.array([3.0, np.nan, 1.0, 2.0, 10.0, np.nan])
    s = numeric_stats(x)
    assert s.count == 4 and s.mean == 4.0 and s.min == 1.0 and s.max == 10.0
    assert s.std == pytest.approx(math.sqrt(((3 - 4) ** 2 + (1 - 4) ** 2 + (2 - 4) ** 2 + 36) / 4))  # ddof 0
    # linear interpolation between order statistics: position (n - 1) q of 1, 2, 3, 10
    assert (s.p25, s.median, s.p75) == (1.75, 2.5, 4.75)
    empty = numeric_stats(np.array([np.nan, np.nan]))
    assert empty.count == 0 and all(math.isnan(getattr(empty, k)) for k in NUMERIC_STATS[1:])
    one = numeric_stats(np.array([7.0]))
    assert (one.count, one.mean, one.std, one.min, one.p25, one.median, one.p75, one.max) == (1, 7, 0, 7, 7, 7, 7, 7)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 5).map(float), st.floats(-1e12, 1e12, allow_nan=False)),
                min_size=1, max_size=300))
def test_percentiles_are_numpys_to_the_bit(values):
    """The order statistics read off the sorted values are np.percentile's numbers, bit for bit."""
    s = np.sort(np.array(values, dtype=np.float64))
    for q in (0.25, 0.5, 0.75):
        assert sorted_percentile(s, q) == float(np.percentile(s, 100 * q))


def _bits(x: float) -> bytes:
    return np.float64(x).tobytes()  # == would not tell 0.0 from -0.0


_INTEGERS = st.one_of(st.integers(-40, 120), st.integers(-2 ** 53, 2 ** 53), st.sampled_from([0, 65535, 65536, -65536]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own, on infinities (inf - inf)
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_INTEGERS.map(float), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([math.inf, -math.inf]),
                          st.just(-0.0)), min_size=1, max_size=300),
       st.booleans(), st.booleans())
def test_order_statistics_are_numpys_to_the_bit(values, integers_only, owned):
    """numeric_stats' min, quartiles and max equal numpy's, bit for bit (the order statistics' signed zeros too), whether they
    come from the histogram of integer values of a small span or from the sort; owned or copied input."""
    if integers_only:
        values = [float(int(v)) if math.isfinite(v) else 7.0 for v in values]
    x = np.array(values, dtype=np.float64)
    want = np.sort(x)
    got = numeric_stats(x.copy(), owned=owned)
    assert _bits(got.min) == _bits(want[0]) and _bits(got.max) == _bits(want[-1])
    for q, name in ((0.25, "p25"), (0.5, "median"), (0.75, "p75")):
        p, ref_p = getattr(got, name), float(np.percentile(want, 100 * q))
        # the interpolation's own zero sign is sorted_percentile's, not the order statistics' (unchanged here)
        assert (math.isnan(p) and math.isnan(ref_p)) or (p == ref_p and (p == 0 or _bits(p) == _bits(ref_p))), name
    for k in {0, len(x) // 3, len(x) - 1}:
        assert _bits(order_statistic_reader(x.copy())(k)) == _bits(want[k])


def test_order_statistics_of_small_integer_spans_come_from_a_histogram():
    """Ages and months (integer values, small span): the k-th value without sorting the input."""
    x = np.array([40.0, 18.0, 95.0, 18.0, 33.0, 61.0], dtype=np.float64)
    before = x.copy()
    kth = order_statistic_reader(x, owned=True)
    assert [kth(k) for k in range(6)] == sorted(before.tolist())
    assert np.array_equal(x, before)  # the histogram path does not sort in place
    wide = np.array([0.0, 70000.0, 5.0])
    order_statistic_reader(wide, owned=True)
    assert wide.tolist() == [0.0, 5.0, 70000.0]  # past the span: sorted in place


# ----------------------------------------------------------------------------
# a segment's summary of an integer field of a small span, off a histogram of its rows
# ----------------------------------------------------------------------------


def assert_numpys_summary(got, x: np.ndarray) -> None:
    """count, mean, min, quartiles and max numpy's exactly (np.percentile, method linear), std within
    rtol 1e-13 of np.std, over the non-NaN values of x (in row order)."""
    want = ref_numeric(x)
    assert got.count == want["count"]
    if not got.count:
        assert all(math.isnan(getattr(got, s)) for s in NUMERIC_STATS[1:])
        return
    assert got.mean == want["mean"]
    assert got.std == pytest.approx(want["std"], rel=1e-13, abs=0)
    assert all(getattr(got, s) == want[s] for s in ("min", "p25", "median", "p75", "max")), (got, want)


def _member_bits(mask: np.ndarray) -> np.ndarray:
    padded = np.zeros((len(mask) + 63) // 64 * 64, dtype=bool)
    padded[: len(mask)] = mask
    return np.packbits(padded, bitorder="little").view(np.uint64)


class _KernelCalls:
    """Which of histogram_codes_present / histogram_present / gather_present Profile's summaries called
    (monkeypatched spies)."""

    def __init__(self, monkeypatch):
        self.names: list[str] = []
        for name in ("histogram_codes_present", "histogram_present", "gather_present"):
            kernel = getattr(_kernels, name)
            monkeypatch.setattr(_kernels, name, self._spy(name, kernel))

    def _spy(self, name, kernel):
        def spy(*args, **kwargs):
            self.names.append(name)
            return kernel(*args, **kwargs)
        return spy


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.one_of(st.integers(-100, 100), st.integers(-2 ** 51, 2 ** 51)),
       st.one_of(st.integers(0, 100), st.integers(0, MAX_HISTOGRAM_SPAN - 1)),
       st.one_of(st.just(1.0), st.floats(0, 1)), st.one_of(st.just(0.0), st.floats(0, 1)), st.integers(0, 2 ** 32 - 1))
def test_segment_summary_of_small_integer_spans_is_numpys(n_rows, lo, span, density, nan_share, seed):
    """Integer values of a small span with NaNs: the summary of a segment's values (off the histogram of its
    rows, or gathered when the sums could be inexact) is numpy's."""
    rng = np.random.default_rng(seed)
    values = (lo + rng.integers(0, span + 1, n_rows)).astype(np.float64)
    values[rng.random(n_rows) < nan_share] = np.nan
    mask = rng.random(n_rows) < density
    domain = histogram_domain_of(values)
    assert (domain is None) == bool(np.isnan(values).all())
    got = segment_numeric_stats(_member_bits(mask), int(mask.sum()), values, domain)
    assert_numpys_summary(got, values[mask])
    codes = numeric_codes(values, domain)
    if codes is not None:  # the same summary off the codes
        assert_numpys_summary(segment_numeric_stats(_member_bits(mask), int(mask.sum()), values, domain, codes),
                              values[mask])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2000), st.integers(-2 ** 51, 2 ** 51), st.one_of(st.integers(0, 300), st.integers(0, 70000)),
       st.one_of(st.just(0.0), st.floats(0, 1)), st.integers(0, 2 ** 32 - 1))
def test_numeric_codes_are_the_bins_of_the_domain(n_rows, lo, span, nan_share, seed):
    """numeric_codes: value - lo in uint8 up to 255 bins, uint16 up to 65,535, an absent value the dtype's
    largest (past every bin); None past 65,535 bins or without a domain."""
    rng = np.random.default_rng(seed)
    values = (lo + rng.integers(0, span + 1, n_rows)).astype(np.float64)
    values[rng.random(n_rows) < nan_share] = np.nan
    domain = histogram_domain_of(values)
    codes = numeric_codes(values, domain)
    if domain is None or domain[1] > 65535:
        assert codes is None
        return
    assert codes.dtype == (np.uint8 if domain[1] <= 255 else np.uint16)
    absent = np.isnan(values)
    assert (codes[absent] == np.iinfo(codes.dtype).max).all()
    np.testing.assert_array_equal(codes[~absent].astype(np.float64) + domain[0], values[~absent])
    assert (codes[~absent] < domain[1]).all()


@pytest.mark.parametrize("values,histogrammed", [
    ([3.0, 1.0, np.nan, 2.0, 40.0, 1.0], True),  # integers of a small span
    ([-7.0, 0.0, np.nan, 5.0, 0.0], True),
    ([3.0, 1.5, 2.0, 40.0], False),  # a fraction
    ([3.0, -0.0, 2.0, 1.0], False),  # a negative zero
    ([0.0, float(MAX_HISTOGRAM_SPAN), 2.0], False),  # past the span
    ([2.0 ** 52, 2.0 ** 52 + 1], False),  # too large
    ([2.0 ** 51 - 1] * 4 + [2.0 ** 51 + 3] * 4, False),  # sums of 8 values past 2^53: gathered
    ([2.0 ** 51 - 1, 2.0 ** 51 + 3], True),  # of 2 values below 2^53
    ([np.nan, np.nan], False),  # no value
])
def test_a_segment_is_histogrammed_only_when_its_values_allow_it(monkeypatch, values, histogrammed):
    """Fields whose values are not integers of a small span (or whose sums could be inexact) keep the
    gather; either way the summary is numpy's."""
    x = np.array(values, dtype=np.float64)
    mask = np.ones(len(x), dtype=bool)
    calls = _KernelCalls(monkeypatch)
    got = segment_numeric_stats(_member_bits(mask), len(x), x, histogram_domain_of(x))
    assert calls.names == ["histogram_present" if histogrammed else "gather_present"]
    assert_numpys_summary(got, x)


def test_profile_histograms_integer_fields_and_gathers_the_others(petnord_snapshot, oracle, monkeypatch):
    """PetNord's customers: tenure_months (integers, 1..28) from the histogram of the segment's rows' codes,
    total_spent_eur (cents) gathered; both numpy's numbers over the oracle's raw values."""
    u = petnord_snapshot.universe("customers")
    assert histogram_domain(u, "tenure_months") == (1.0, 28) and histogram_domain(u, "total_spent_eur") is None
    where = CUSTOMER_CONDITIONS["negation"]
    bu = oracle.universe("customers")
    seg = bu.eval(where)
    assert 0 < seg.sum() < bu.n
    calls = _KernelCalls(monkeypatch)
    res = profile(petnord_snapshot, ProfileQuery(segment=parse_where(where), universe="customers",
                                                 fields=["tenure_months", "total_spent_eur"]))
    assert calls.names == ["histogram_codes_present", "gather_present"]  # tenure's codes: uint8
    for p in res.numeric:
        assert_numpys_summary(p.segment, bu.fields[p.field].raw[seg])


# ----------------------------------------------------------------------------
# segment references
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog_snap(petnord_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("profile") / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    apply_segments(root / "petnord", {
        "premium_churners": {"where": SEGMENTS["customers"]["and"], "universe": "customers"},
        "not_premium_churners": {"where": {"$not": {"$segment": "premium_churners"}}, "universe": "customers"},
    }, fit_propensities=False)
    return open_snapshot(root / "petnord")


def _numbers(answer: dict) -> dict:
    answer = dict(answer)
    answer.pop("elapsed_ms")
    answer.pop("version")
    return answer


def test_segment_reference_equals_its_condition(catalog_snap, petnord_snapshot, oracle):
    inline = run_json("profile", petnord_snapshot, {"from": "customers", "segment": SEGMENTS["customers"]["and"]})
    by_ref = run_json("profile", catalog_snap, {"from": "customers", "segment": {"$segment": "premium_churners"}})
    assert _numbers(by_ref) == _numbers(inline)
    negated = run_json("profile", catalog_snap, {"from": "customers", "segment": {"$segment": "not_premium_churners"}})
    inline_not = run_json("profile", petnord_snapshot,
                                  {"from": "customers", "segment": {"$not": SEGMENTS["customers"]["and"]}})
    assert _numbers(negated) == _numbers(inline_not)
    assert negated["n_segment"] == oracle.universe("customers").n - inline["n_segment"]
    with pytest.raises(UnknownSegmentError, match="premium_churners"):
        run_json("profile", catalog_snap, {"from": "customers", "segment": {"$segment": "premium_churner"}})


# ----------------------------------------------------------------------------
# the JSON form and errors
# ----------------------------------------------------------------------------


def test_json_form(petnord_snapshot, oracle):
    q = {"from": "customers", "segment": SEGMENTS["customers"]["empty"], "fields": ["tenure_months", "region"],
         "values_per_field": 2}
    out = run_json("profile", petnord_snapshot, q)
    json.dumps(out, allow_nan=False)  # NaN is written null
    assert list(out) == ["snapshot", "version", "from", "n_rows", "n_segment", "elapsed_ms", "fields", "numeric"]
    assert out["n_segment"] == 0 and out["n_rows"] == oracle.universe("customers").n
    assert out["fields"] == [{"field": "tenure_months", "strength": 1.0, "over": [], "under": []},
                             {"field": "region", "strength": 1.0, "over": [], "under": []}]
    (num,) = out["numeric"]
    assert num["field"] == "tenure_months"
    assert num["segment"] == {"count": 0, "mean": None, "std": None, "min": None, "p25": None, "median": None,
                              "p75": None, "max": None}
    assert num["population"]["count"] == oracle.universe("customers").n
    out = run_json("profile", petnord_snapshot, {"from": "customers", "segment": {"region": "oulu"}, "fields": "region"})
    (f,) = out["fields"]
    assert list(f["over"][0]) == ["value", "segment_count", "segment_share", "population_share", "lift", "p_value"]
    assert len(f["under"]) == DEFAULT_VALUES_PER_FIELD
    # defaults: the only universe is not implied here (PetNord has several), every field, 5 values
    q = ProfileQuery.from_json({"from": "orders"})
    assert q.fields is None and q.values_per_field == DEFAULT_VALUES_PER_FIELD and q.segment == parse_where({})


@pytest.mark.parametrize("query,error,match", [
    ({"from": "customers", "fields": ["regoin"]}, UnknownFieldError, "did you mean 'region'"),
    ({"from": "customers", "fields": ["orders.nope.*"]}, UnknownFieldError, "matches no field"),
    ({"from": "customers", "segment": {"regoin": "oulu"}}, UnknownFieldError, "did you mean 'region'"),
    ({"from": "customers", "segment": {"region": "oulo"}}, UnknownValueError, "did you mean 'oulu'"),
    ({"from": "customerz"}, UnknownUniverseError, "customers"),
    ({"from": "customers", "values_per_field": 0}, QueryError, "positive integer"),
    ({"from": "customers", "values_per_field": True}, QueryError, "positive integer"),
    ({"from": "customers", "values_per_field": "5"}, QueryError, "positive integer"),
    ({"from": "customers", "values_per_field": MAX_VALUES_PER_FIELD + 1}, LimitExceededError, "maximum 100"),
    ({"from": "customers", "fields": ["region"] * (MAX_FIELD_PATTERNS + 1)}, LimitExceededError, "maximum"),
    ({"from": "customers", "fields": {"region": 1}}, QueryError, "expected a list"),
    ({"from": "customers", "fields": ["region", ""]}, QueryError, "bad field name"),
    ({"from": "customers", "where": {}}, QueryError, "unknown key 'where'"),
    ({"from": "customers", "segment": [1]}, QueryError, "expected an object"),
    ({"from": "customers", "segment": {"$segment": "x"}}, UnknownSegmentError, "no segment 'x'"),
])
def test_errors(petnord_snapshot, query, error, match):
    with pytest.raises(error, match=match) as info:
        run_json("profile", petnord_snapshot, query)
    assert info.value.violations  # every request error says which part of the request is at fault


def test_unknown_field_violation_names_fields(petnord_snapshot):
    with pytest.raises(UnknownFieldError) as info:
        run_json("profile", petnord_snapshot, {"from": "customers", "fields": ["region", "lifestyel"]})
    assert info.value.violations == [("fields", "unknown field 'lifestyel'")]
    assert "did you mean 'lifestyle'" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_ranking_per_field_equals_a_full_sort(data):
    """A field's first k values: sorting only its k best bounds and their ties by every key gives what
    sorting all of its candidates does (bounds and lifts with ties and NaN)."""
    sizes = data.draw(st.lists(st.integers(0, 25), min_size=1, max_size=6), label="sizes")
    n = sum(sizes)
    field_of = np.repeat(np.arange(len(sizes)), sizes)
    values = st.sampled_from([0.5, 1.0, 1.5, 2.0, math.nan])
    bound = np.array(data.draw(st.lists(values, min_size=n, max_size=n), label="bound"), dtype=float)
    lift = np.array(data.draw(st.lists(values, min_size=n, max_size=n), label="lift"), dtype=float)
    n_sv = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="n_sv"), dtype=np.int64)
    n_v = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="n_v"), dtype=np.int64)
    cand = np.array(sorted(data.draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n), label="cand")) if n else [],
                    dtype=np.int64)
    k = data.draw(st.integers(1, 6), label="k")
    ascending = data.draw(st.booleans(), label="ascending")
    sign = 1.0 if ascending else -1.0
    got = ranked_per_field(field_of, len(sizes), cand, bound, lift, n_sv, n_v, ascending, k)
    for j in range(len(sizes)):
        mine = cand[field_of[cand] == j]
        order = np.lexsort((mine, -n_v[mine], -n_sv[mine], sign * lift[mine], sign * bound[mine]))
        np.testing.assert_array_equal(got[j], mine[order][:k])


def test_counting_layout_is_kept_per_field_list_and_bounded(petnord_snapshot):
    """Profile's counting layout is built once per field list (the same object again, equal to a fresh one),
    and not kept forever: past 256 other field lists it is built again (a caller cycling through field lists
    cannot grow the cache)."""
    from segsrv.engine import profile as engine_profile
    from segsrv.engine.relate import feature_layout

    u = petnord_snapshot.universe("customers")
    names = list(u.fields)
    fids = np.concatenate([u.fields[f].feature_ids for f in names])
    layout = engine_profile.counting_layout(u, names, fids)
    assert engine_profile.counting_layout(u, names, fids) is layout
    fresh = feature_layout(u, fids, derive_partitions=True)
    for a, b in zip(layout.__dict__.values(), fresh.__dict__.values()):
        assert np.array_equal(a, b)
    for i in range(300):
        one = [names[i % len(names)]] * (1 + i // len(names))
        engine_profile.counting_layout(u, one, np.concatenate([u.fields[f].feature_ids for f in one]))
    assert engine_profile.counting_layout(u, names, fids) is not layout
