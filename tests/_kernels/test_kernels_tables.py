"""segsrv._kernels.tables (statistics of 2x2 tables) vs its naive twin, one table at a time in Python floats.

The engine's own check of the definitions (a scalar reference per statistic, and Relate against brute
force over the source tables) is in tests/engine; here the kernel must equal the twin to 1e-12 with NaN
and infinities in the same places, on every kind of table: empty condition, feature in every row,
n_cf = 0 or n_c, tiny and 2**40-row universes.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import naive as N
from segsrv._kernels import tables as T

HYP = settings(max_examples=200, deadline=None)


def same(got, want):
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-300)
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)])


@st.composite
def tables(draw):
    n = draw(st.one_of(st.integers(0, 40), st.integers(0, 1 << 40)))
    n_c = draw(st.integers(0, n))
    k = draw(st.integers(0, 12))
    n_f, n_cf = [], []
    for _ in range(k):
        f = draw(st.one_of(st.sampled_from([0, n]), st.integers(0, n)))
        lo, hi = max(0, f + n_c - n), min(f, n_c)
        n_f.append(f)
        n_cf.append(draw(st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi))))
    a = draw(st.sampled_from([0.0, 1.0, 10.0, 37.5]))
    return n, n_c, np.array(n_f, np.int64), np.array(n_cf, np.int64), a


@HYP
@given(tables())
def test_statistics_equal_the_naive_twin(table):
    n, n_c, n_f, n_cf, a = table
    got = K.table_statistics(n, n_c, n_f, n_cf, a)
    assert got.shape == (len(n_f), len(K.TABLE_STATISTICS))
    same(got, N.table_statistics(n, n_c, n_f, n_cf, a))
    mi = K.table_mutual_information(n, n_c, n_f, n_cf)
    same(mi, N.table_mutual_information(n, n_c, n_f, n_cf))
    np.testing.assert_array_equal(mi, got[:, K.TABLE_STATISTICS.index("mutual_information")])


def test_named_tables():
    col = {name: j for j, name in enumerate(K.TABLE_STATISTICS)}
    # a feature held by every row of the condition and nothing else: p = 1, conviction +inf, MI 1 bit
    row = K.table_statistics(100, 50, np.array([50], np.int64), np.array([50], np.int64))[0]
    assert row[col["p"]] == 1.0 and row[col["lift"]] == 2.0 and row[col["conviction"]] == math.inf
    assert math.isclose(row[col["mutual_information"]], 1.0)
    assert row[col["lift_high"]] == 2.0  # the Wilson interval ends exactly at 1 when n_cf = n_c
    # an empty condition: ratios over n_c are NaN, conviction NaN, the interval NaN
    row = K.table_statistics(10, 0, np.array([4], np.int64), np.array([0], np.int64))[0]
    for name in ("p", "lift", "lift_low", "lift_high", "conviction", "kulczynski"):
        assert math.isnan(row[col[name]]), name
    assert row[col["mutual_information"]] == 0.0
    # independence: lift 1, leverage 0, zhang 0, no information
    row = K.table_statistics(100, 50, np.array([20], np.int64), np.array([10], np.int64))[0]
    assert row[col["lift"]] == 1.0 and row[col["leverage"]] == 0.0 and row[col["zhang"]] == 0.0
    assert abs(row[col["mutual_information"]]) < 1e-15


def test_out_and_read_only_inputs():
    n_f = np.array([5, 7], np.int64)
    n_cf = np.array([2, 3], np.int64)
    n_f.setflags(write=False)
    n_cf.setflags(write=False)
    out = np.empty((2, len(K.TABLE_STATISTICS)))
    assert K.table_statistics(20, 6, n_f, n_cf, out=out) is out
    same(out, N.table_statistics(20, 6, n_f, n_cf))
    assert K.table_statistics(20, 6, n_f[:0], n_cf[:0]).shape == (0, len(K.TABLE_STATISTICS))


def test_errors():
    f = np.array([1], np.int64)
    with pytest.raises(ValueError, match="n_c must be within"):
        K.table_statistics(5, 6, f, f)
    with pytest.raises(ValueError, match="n_c must be within"):
        K.table_mutual_information(5, -1, f, f)
    with pytest.raises(TypeError, match="n must be an int"):
        K.table_statistics(5.0, 1, f, f)
    with pytest.raises(TypeError, match="n_c must be an int"):
        K.table_statistics(5, True, f, f)
    with pytest.raises(ValueError, match="same length"):
        K.table_statistics(5, 1, f, np.array([1, 1], np.int64))
    with pytest.raises(TypeError, match="n_f"):
        K.table_statistics(5, 1, f.astype(np.int32), f)
    with pytest.raises(ValueError, match="out"):
        K.table_statistics(5, 1, f, f, out=np.empty((1, 3)))
    assert T.TABLE_STATISTICS == K.TABLE_STATISTICS


def _top_with_numpy(n, n_c, n_f, n_cf, ties, min_support, direction, min_lift, limit):
    """The naive twin's kept candidates, fully sorted (lexsort by -key, then tie) by the kernel's own mutual
    information: the same numbers as the kernel's, so the same order, ties included."""
    matching, kept = N.top_by_mutual_information(n, n_c, n_f, n_cf, ties, min_support, direction, min_lift,
                                                 max(len(n_f), 1))
    key = K.table_mutual_information(n, n_c, n_f[kept], n_cf[kept])
    key = np.where(np.isnan(key), -np.inf, key)
    return matching, kept[np.lexsort((ties[kept], -key))[:limit]]


@settings(max_examples=300, deadline=None)
@given(tables(), st.data())
def test_top_by_mutual_information_is_the_sorted_filter(table, data):
    """The kernel's (kept, first `limit`) = the naive twin's filter, fully sorted, for every direction, lift
    floor and limit (repeated tables, so equal keys, ordered by their distinct ties); the naive twin's own
    order has the same keys within rounding."""
    n, n_c, n_f, n_cf, _ = table
    if len(n_f) and data.draw(st.booleans()):  # repeat tables: equal keys, told apart by the ties
        n_f, n_cf = np.tile(n_f, 3), np.tile(n_cf, 3)
    ties = np.array(data.draw(st.permutations(range(0, 5 * len(n_f), 5))), dtype=np.int64)
    min_support = data.draw(st.integers(0, 3))
    direction = data.draw(st.sampled_from(["over", "under", "all"]))
    min_lift = data.draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 1.5]), st.floats(0, 10)))
    limit = data.draw(st.integers(1, len(n_f) + 3))
    args = (n, n_c, n_f, n_cf, ties, min_support, direction, min_lift, limit)
    matching, top = K.top_by_mutual_information(*args)
    want_matching, want_top = _top_with_numpy(*args)
    assert matching == want_matching
    assert top.dtype == np.int64 and top.tolist() == want_top.tolist()
    naive_matching, naive_top = N.top_by_mutual_information(*args)
    assert naive_matching == matching and len(naive_top) == len(top)
    mi = N.table_mutual_information(n, n_c, n_f, n_cf)
    np.testing.assert_allclose(np.nan_to_num(mi[naive_top], nan=-1.0), np.nan_to_num(mi[top], nan=-1.0),
                               rtol=1e-12, atol=1e-300)


def test_top_by_mutual_information_picks_the_best_of_many():
    """More candidates than the limit, in every arrival order: the heap keeps the best, best first."""
    rng = np.random.default_rng(7)
    n, n_c = 10_000, 1_000
    n_f = rng.integers(1, n, 2_000).astype(np.int64)
    n_cf = np.minimum(n_f, rng.integers(0, n_c, 2_000)).astype(np.int64)
    ties = rng.permutation(2_000).astype(np.int64)
    for limit in (1, 20, 1_999, 2_000, 5_000):
        got = K.top_by_mutual_information(n, n_c, n_f, n_cf, ties, 1, "all", None, limit)
        want = _top_with_numpy(n, n_c, n_f, n_cf, ties, 1, "all", None, limit)
        assert got[0] == want[0] and got[1].tolist() == want[1].tolist()


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 10**9), st.data())
def test_mutual_information_is_at_most_its_chi_square_bound(n, data):
    """What the top kernel leaves out without computing: a table's mutual information (bits, as the kernel
    computes it) <= log2(1 + phi^2), phi^2 = (n n_cf - n_c n_f)^2 / (n_c (n - n_c) n_f (n - n_f)), within the
    kernel's margin of 1e-12 bits."""
    n_c = data.draw(st.integers(1, n - 1))
    n_f = data.draw(st.integers(1, n - 1))
    n_cf = data.draw(st.integers(max(0, n_c + n_f - n), min(n_c, n_f)))
    mi = K.table_mutual_information(n, n_c, np.array([n_f], np.int64), np.array([n_cf], np.int64))[0]
    phi2 = (n * n_cf - n_c * n_f) ** 2 / (n_c * (n - n_c) * n_f * (n - n_f))  # exact integers, then one division
    assert mi <= math.log2(1 + phi2) + 1e-12


def test_top_by_mutual_information_bound_keeps_ties_at_the_last_key():
    """Many candidates near independence (left out by the bound) and 30 copies of one strong table, whose
    equal keys straddle the limit: the copies with the smallest ties are kept, as by the full sort."""
    rng = np.random.default_rng(11)
    n, n_c = 1_000_000, 100_000
    weak_f = rng.integers(1_000, 900_000, 4_970)
    weak_cf = np.clip(np.round(weak_f * n_c / n + rng.normal(0, 5, 4_970)), 0, np.minimum(weak_f, n_c))
    n_f = np.concatenate([weak_f, np.full(30, 50_000)]).astype(np.int64)
    n_cf = np.concatenate([weak_cf, np.full(30, 20_000)]).astype(np.int64)
    order = rng.permutation(5_000)
    n_f, n_cf = n_f[order], n_cf[order]
    ties = rng.permutation(5_000).astype(np.int64)
    for direction in ("over", "all"):
        got = K.top_by_mutual_information(n, n_c, n_f, n_cf, ties, 1, direction, None, 20)
        want = _top_with_numpy(n, n_c, n_f, n_cf, ties, 1, direction, None, 20)
        assert got[0] == want[0] and got[1].tolist() == want[1].tolist()
        assert set(n_f[got[1]].tolist()) == {50_000}  # the 20 copies with the smallest ties
        assert sorted(ties[got[1]].tolist()) == sorted(ties[n_f == 50_000].tolist())[:20]


def test_top_by_mutual_information_errors():
    f = np.array([1, 2], np.int64)
    with pytest.raises(ValueError, match="ties must have the length"):
        K.top_by_mutual_information(10, 5, f, f, np.array([1], np.int64), 1, "over", None, 5)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        K.top_by_mutual_information(10, 5, f, f, f, 1, "over", None, 0)
    with pytest.raises(ValueError, match="direction must be one of"):
        K.top_by_mutual_information(10, 5, f, f, f, 1, "sideways", None, 5)
    with pytest.raises(TypeError, match="limit must be an int"):
        K.top_by_mutual_information(10, 5, f, f, f, 1, "over", None, 2.0)
    with pytest.raises(ValueError, match="n_c must be within"):
        K.top_by_mutual_information(10, 11, f, f, f, 1, "over", None, 5)
    assert K.top_by_mutual_information(10, 5, f[:0], f[:0], f[:0], 1, "over", None, 5)[1].tolist() == []
