"""Unit tests of segsrv.engine.stats against direct, independent implementations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import mutual_info_score

from segsrv.engine import stats

# ----------------------------------------------------------------------------
# Benjamini-Hochberg
# ----------------------------------------------------------------------------

pvalues = st.lists(
    st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.0, 1.0, 0.5, 0.01, 0.05, 1e-300])),
    min_size=0, max_size=40,
)


@settings(max_examples=200, deadline=None, database=None)
@given(p=pvalues)
def test_benjamini_hochberg_matches_definition(p, ref):
    got = stats.benjamini_hochberg(np.array(p, dtype=np.float64))
    want = ref.bh(p)
    assert got.shape == (len(p),)
    for g, w in zip(got, want):
        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-300)
    assert all(0.0 <= g <= 1.0 for g in got)
    # monotone in p, and never below p
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(got[order]) >= -1e-15)
    assert np.all(got >= np.array(p) - 1e-15)


def test_benjamini_hochberg_known_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> m p / rank = 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    np.testing.assert_allclose(stats.benjamini_hochberg(np.array([0.5, 0.5, 0.5])), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(stats.benjamini_hochberg(np.array([0.9, 0.8])), [0.9, 0.9])
    assert stats.benjamini_hochberg(np.array([])).shape == (0,)


# ----------------------------------------------------------------------------
# Wilson score interval
# ----------------------------------------------------------------------------


def test_z95():
    assert math.isclose(stats.Z95, norm.ppf(0.975), rel_tol=1e-15)


@pytest.mark.parametrize(
    "k, m, lo, hi",
    [
        (5, 10, 0.2365930905, 0.7634069095),  # statsmodels proportion_confint(5, 10, method="wilson")
        (0, 10, 0.0, 0.2775327999),
        (10, 10, 0.7224672001, 1.0),
        (1, 1, 0.2065493144, 1.0),
        (1, 20, 0.0088814488, 0.2361311934),
        (81, 263, 0.2552885199, 0.3662095770),
    ],
)
def test_wilson_known_values(k, m, lo, hi):
    got_lo, got_hi = stats.wilson_interval(k, m)
    assert abs(float(got_lo) - lo) < 1e-9 and abs(float(got_hi) - hi) < 1e-9


@settings(max_examples=200, deadline=None, database=None)
@given(m=st.integers(1, 10**7), frac=st.floats(0, 1))
def test_wilson_matches_closed_form(m, frac, ref):
    k = int(round(frac * m))
    lo, hi = stats.wilson_interval(np.array([k]), np.array([m]))
    want_lo, want_hi = ref.wilson(k, m)
    assert math.isclose(lo[0], want_lo, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(hi[0], want_hi, rel_tol=1e-9, abs_tol=1e-12)
    assert 0.0 <= lo[0] <= k / m <= hi[0] <= 1.0


def test_wilson_empty():
    lo, hi = stats.wilson_interval(np.array([0]), np.array([0]))
    assert math.isnan(lo[0]) and math.isnan(hi[0])


# ----------------------------------------------------------------------------
# mutual information
# ----------------------------------------------------------------------------


def test_mutual_information_vs_sklearn():
    rng = np.random.default_rng(1234)
    tables = [rng.integers(0, 60, size=(2, 2)) for _ in range(300)]
    tables += [np.array(t) for t in ([[5, 0], [0, 5]], [[0, 7], [3, 0]], [[4, 0], [6, 0]], [[0, 0], [0, 9]],
                                     [[10, 10], [10, 10]], [[1, 0], [0, 0]], [[1, 2], [3, 1000]])]
    for t in tables:
        n = int(t.sum())
        if n == 0:
            continue
        n_cf, n_c_notf, n_notc_f = int(t[1, 1]), int(t[1, 0]), int(t[0, 1])
        n_c, n_f = n_cf + n_c_notf, n_cf + n_notc_f
        got = float(stats.mutual_information(n, n_c, np.array([n_f]), np.array([n_cf]))[0])
        want = mutual_info_score(None, None, contingency=t) / math.log(2)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (t.tolist(), got, want)


def test_mutual_information_bounds():
    # independence -> 0; C == F with P = 1/2 -> 1 bit
    assert abs(float(stats.mutual_information(100, 50, np.array([20]), np.array([10]))[0])) < 1e-15
    assert math.isclose(float(stats.mutual_information(100, 50, np.array([50]), np.array([50]))[0]), 1.0)
    assert stats.mutual_information(0, 0, np.array([0]), np.array([0]))[0] == 0.0


# ----------------------------------------------------------------------------
# hypergeometric tails: exact rational sums
# ----------------------------------------------------------------------------


def exact_tail(n, n_c, n_f, n_cf, upper: bool) -> float:
    total = math.comb(n, n_c)
    ks = range(n_cf, min(n_c, n_f) + 1) if upper else range(max(0, n_c + n_f - n), n_cf + 1)
    return float(Fraction(sum(math.comb(n_f, k) * math.comb(n - n_f, n_c - k) for k in ks), total))


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_p_values_exact(data):
    n = data.draw(st.integers(1, 300))
    n_c = data.draw(st.integers(0, n))
    n_f = data.draw(st.integers(0, n))
    n_cf = data.draw(st.integers(max(0, n_c + n_f - n), min(n_c, n_f)))
    over = float(stats.p_value_over(n, n_c, np.array([n_f]), np.array([n_cf]))[0])
    under = float(stats.p_value_under(n, n_c, np.array([n_f]), np.array([n_cf]))[0])
    assert math.isclose(over, exact_tail(n, n_c, n_f, n_cf, True), rel_tol=1e-7, abs_tol=1e-14)
    assert math.isclose(under, exact_tail(n, n_c, n_f, n_cf, False), rel_tol=1e-7, abs_tol=1e-14)


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data())
def test_tails_one_population_vectors_equal_broadcast_form(data):
    """One population beside per-feature vectors (Relate's shape, a path without broadcasting) = the same
    tails through the broadcasting path (the population as an array, the scalar repeated)."""
    n = data.draw(st.integers(1, 300))
    n_c = data.draw(st.integers(0, n))
    n_f = np.array(data.draw(st.lists(st.integers(0, n), min_size=0, max_size=12)), dtype=np.int64)
    n_cf = np.array([data.draw(st.integers(max(0, n_c + f - n), min(n_c, f))) for f in n_f], dtype=np.int64)
    m = len(n_f)
    for upper in (True, False):
        got = stats._tail(n, n_f, n_c, n_cf, upper)
        want = stats._tail(np.full(m, n), n_f, np.full(m, n_c), n_cf, upper)
        assert got.dtype == want.dtype and got.shape == want.shape == (m,)
        assert np.array_equal(got, want)
        assert np.array_equal(stats._tail(n, n_f[::-1][::-1], n_c, n_cf.tolist(), upper), got)


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_two_sided_p_value_sums_one_tail_and_equals_both(data):
    """p_value_two_sided = min(1, 2 min(both tails)) bit for bit (small and large populations, counts at
    the support's edges and near the expectation), and the exact two-sided value of the definition."""
    n = data.draw(st.one_of(st.integers(1, 300), st.integers(1, 10**7)))
    n_c = data.draw(st.integers(0, n))
    n_f = np.array(data.draw(st.lists(st.integers(0, n), min_size=0, max_size=12)), dtype=np.int64)
    near = [max(0, n_c + f - n, min(n_c, f, round(n_c * f / n) + data.draw(st.integers(-3, 3)))) for f in n_f]
    n_cf = np.array([data.draw(st.one_of(st.just(x), st.integers(max(0, n_c + f - n), min(n_c, f))))
                     for x, f in zip(near, n_f)], dtype=np.int64)
    got = stats.p_value_two_sided(n, n_c, n_f, n_cf)
    both = np.minimum(stats.p_value_over(n, n_c, n_f, n_cf), stats.p_value_under(n, n_c, n_f, n_cf))
    assert got.shape == (len(n_f),) and np.array_equal(got, np.minimum(1.0, 2.0 * both))
    if n <= 300:
        for f, cf, p in zip(n_f.tolist(), n_cf.tolist(), got.tolist()):
            want = min(1.0, 2 * min(exact_tail(n, n_c, f, cf, True), exact_tail(n, n_c, f, cf, False)))
            assert math.isclose(p, want, rel_tol=1e-7, abs_tol=1e-14)


# ----------------------------------------------------------------------------
# relate_statistics (vectorised) vs the scalar reference
# ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_relate_statistics_match_reference(data, ref):
    n = data.draw(st.integers(2, 10**6))
    n_c = data.draw(st.integers(1, n))
    m = data.draw(st.integers(1, 6))
    n_f, n_cf = [], []
    for _ in range(m):
        f = data.draw(st.integers(1, n))
        lo, hi = max(0, n_c + f - n), min(n_c, f)
        n_f.append(f)
        n_cf.append(data.draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))))
    a = data.draw(st.sampled_from([0.0, 1.0, 10.0, 123.5]))
    direction = data.draw(st.sampled_from(["over", "under", "all"]))
    got = stats.relate_statistics(n, n_c, np.array(n_f), np.array(n_cf), a, direction)
    for i in range(m):
        want = ref.stats(n, n_c, n_f[i], n_cf[i], a, direction)
        for name, w in want.items():
            assert ref.close(got[name][i], w), (name, n, n_c, n_f[i], n_cf[i], got[name][i], w)
        assert got["n"][i] == n and got["n_condition"][i] == n_c


def test_relate_statistics_edge_cases(ref):
    # F in every row of C (p = 1): conviction is infinite; F everywhere: certainty and zhang are 0
    s = stats.relate_statistics(10, 4, np.array([4, 10, 6]), np.array([4, 4, 0]))
    assert s["conviction"][0] == math.inf and s["p"][0] == 1.0
    assert s["certainty"][1] == 0.0 and s["zhang"][1] == 0.0 and s["lift"][1] == 1.0
    assert s["support"][2] == 0 and s["lift"][2] == 0.0 and s["zhang"][2] == -1.0
    # C = everyone: p_not undefined
    s = stats.relate_statistics(10, 10, np.array([3]), np.array([3]))
    assert math.isnan(s["p_not"][0]) and s["lift"][0] == 1.0


def test_p_value_tails_equal_scipy_hypergeom_including_support_edges():
    """The kernel's tails equal scipy.stats.hypergeom's (Boost) within the kernel's documented 1e-9, also at
    the edges of the support (exactly 1 there)."""
    from scipy.stats import hypergeom

    from segsrv.engine import stats as st

    rng = np.random.default_rng(5)
    for _ in range(2000):
        n = int(rng.integers(1, 10**6)) if rng.random() < 0.5 else int(rng.integers(1, 40))
        n_c = int(rng.integers(0, n + 1))
        n_f = rng.integers(0, n + 1, size=16)
        lo, hi = np.maximum(0, n_c + n_f - n), np.minimum(n_c, n_f)
        n_cf = np.rint(lo + (hi - lo) * rng.random(16)).astype(np.int64)
        n_cf[:2] = lo[:2]  # the support's minimum and maximum
        n_cf[2:4] = hi[2:4]
        over, under = st.p_value_over(n, n_c, n_f, n_cf), st.p_value_under(n, n_c, n_f, n_cf)
        np.testing.assert_allclose(over, np.clip(hypergeom.sf(n_cf - 1, n, n_f, n_c), 0, 1), rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(under, np.clip(hypergeom.cdf(n_cf, n, n_f, n_c), 0, 1), rtol=1e-9, atol=1e-300)
        assert (over[:2] == 1.0).all() and (under[2:4] == 1.0).all()
