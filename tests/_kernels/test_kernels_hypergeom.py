"""segsrv._kernels.hypergeom vs exact rationals and scipy (its naive twin).

Accuracy is measured as the relative error of the probability, |expm1(ours -
ref)| on the logs, which also covers tails far below 1e-300.  The exact
reference sums C(K, x) C(N-K, n-x) / C(N, n) in Python integers.  scipy's
logsf/logcdf take logs of lgamma-based betaln terms, whose cancellation costs
about 2e-16 * N ln N; comparisons with scipy allow that on top of 1e-9.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import bitset as B
from segsrv._kernels import hypergeom as H
from segsrv._kernels import naive as N

HYP = settings(max_examples=40, deadline=None)
RTOL = 1e-9


def support(K_, n, N_):
    return max(0, n + K_ - N_), min(n, K_)


def exact_tails(K_, n, N_):
    """Exact (Python int) terms T[x - lo] = C(K, x) C(N-K, n-x) over the support, and C(N, n)."""
    lo, hi = support(K_, n, N_)
    t = math.comb(K_, lo) * math.comb(N_ - K_, n - lo)
    terms = [t]
    for x in range(lo, hi):
        t = t * (K_ - x) * (n - x) // ((x + 1) * (N_ - K_ - n + x + 1))
        terms.append(t)
    return lo, hi, terms, math.comb(N_, n)


def exact_log_tail(k, K_, n, N_, upper=True, cache={}):
    key = (K_, n, N_)
    if key not in cache:
        lo, hi, terms, total = exact_tails(K_, n, N_)
        cum = [0]
        for t in terms:
            cum.append(cum[-1] + t)
        cache[key] = lo, hi, cum, total
    lo, hi, cum, total = cache[key]
    # P = sum of terms x in [a, b]
    a, b = (max(k, lo), hi) if upper else (lo, min(k, hi))
    if a > b:
        return -math.inf
    tail = cum[b - lo + 1] - cum[a - lo]
    if tail == total:
        return 0.0
    if 2 * tail > total:
        return math.log1p(-float(Fraction(total - tail, total)))
    return math.log(tail) - math.log(total)


def rel_err(ours, ref):
    """Relative error of the probability from the logs (inf when only one is -inf)."""
    ours, ref = np.asarray(ours, float), np.asarray(ref, float)
    both_zero = np.isneginf(ours) & np.isneginf(ref)
    with np.errstate(invalid="ignore"):
        err = np.abs(np.expm1(ours - ref))
    return np.where(both_zero, 0.0, np.where(np.isnan(err), np.inf, err))


def tail(k, K_, n, N_, upper=True, **kw):
    return K.hypergeom_log_tail(np.asarray(k, np.int64).reshape(-1),
                                np.asarray(K_, np.int64).reshape(-1),
                                np.asarray(n, np.int64).reshape(-1), N_, upper=upper, **kw)


# ---------------------------------------------------------------------------
# exact references
# ---------------------------------------------------------------------------

@st.composite
def small_params(draw):
    N_ = draw(st.integers(0, 2500))
    K_ = draw(st.integers(0, N_))
    n = draw(st.integers(0, N_))
    lo, hi = support(K_, n, N_)
    ks = draw(st.lists(st.integers(lo - 2, hi + 2), min_size=1, max_size=8))
    return N_, K_, n, ks


@HYP
@given(small_params(), st.booleans())
def test_vs_exact_hypothesis(params, upper):
    N_, K_, n, ks = params
    ours = tail(ks, [K_] * len(ks), [n] * len(ks), N_, upper=upper)
    ref = [exact_log_tail(k, K_, n, N_, upper) for k in ks]
    assert rel_err(ours, ref).max() <= RTOL, (ours, ref)


@pytest.mark.parametrize("N_", [999_983, 10**8, 5 * 10**8, 10**9])
def test_large_populations_vs_exact(N_):
    rng = np.random.default_rng(N_ % 1000)
    cases = []
    for n, K_ in [(1, 1), (2500, 17), (1800, N_ // 3), (3000, N_ - 5), (40, N_ // 2),
                  (int(rng.integers(1, 3000)), int(rng.integers(1, N_)))]:
        lo, hi = support(K_, n, N_)
        mean = n * K_ / N_
        sd = math.sqrt(max(mean * (1 - K_ / N_), 1e-12))
        ks = {lo, lo + 1, hi, hi - 1, hi + 1}
        ks |= {int(round(mean + z * sd)) for z in (-40, -8, -3, -1, 0, 0.5, 1, 3, 8, 40, 200)}
        cases += [(k, K_, n) for k in sorted(ks) if lo - 1 <= k <= hi + 1]
    k, K_, n = map(np.array, zip(*cases))
    for upper in (True, False):
        ours = K.hypergeom_log_tail(k, K_, n, N_, upper=upper)
        ref = [exact_log_tail(int(a), int(b), int(c), N_, upper) for a, b, c in zip(k, K_, n)]
        err = rel_err(ours, ref)
        assert err.max() <= RTOL, (N_, upper, cases[int(err.argmax())], err.max())
    assert (ours < -1000).any()           # deep tails, far below 1e-300, are covered


def test_boundaries_exact():
    N_ = 1000
    for K_, n in [(0, 0), (0, 10), (10, 0), (1000, 10), (10, 1000), (1000, 1000), (600, 700),
                  (3, 5), (999, 1)]:
        lo, hi = support(K_, n, N_)
        ks = [-(2**63), lo - 1, lo, hi, hi + 1, 2**63 - 1]
        up = tail(ks, [K_] * 6, [n] * 6, N_, upper=True)
        dn = tail(ks, [K_] * 6, [n] * 6, N_, upper=False)
        assert up[0] == up[1] == up[2] == 0.0          # P(X >= k) = 1 for k <= lo
        assert up[4] == up[5] == -np.inf               # P(X >= k) = 0 for k > hi
        assert dn[0] == dn[1] == -np.inf               # P(X <= k) = 0 for k < lo
        assert dn[3] == dn[4] == dn[5] == 0.0          # P(X <= k) = 1 for k >= hi
        if lo == hi:
            assert up[3] == 0.0 and dn[2] == 0.0
    assert tail([0], [0], [0], 0)[0] == 0.0
    # closed forms: P(X >= n) = C(K, n) / C(N, n); P(X <= 0) = C(N-K, n) / C(N, n)
    for N_, K_, n in [(50, 20, 7), (10**6, 5 * 10**5, 30), (10**9, 123456, 4)]:
        exp_hi = math.log(math.comb(K_, n)) - math.log(math.comb(N_, n))
        exp_lo = math.log(math.comb(N_ - K_, n)) - math.log(math.comb(N_, n))
        assert rel_err(tail([n], [K_], [n], N_), [exp_hi]).max() <= 1e-12
        assert rel_err(tail([0], [K_], [n], N_, upper=False), [exp_lo]).max() <= 1e-12


# ---------------------------------------------------------------------------
# scipy (the naive twin)
# ---------------------------------------------------------------------------

@st.composite
def scipy_params(draw):
    N_ = int(10 ** draw(st.floats(0, 6)))                   # log-uniform up to 1e6
    K_ = draw(st.integers(0, N_))
    n = draw(st.integers(0, min(N_, draw(st.sampled_from([50, 3000, 10**6])))))
    lo, hi = support(K_, n, N_)
    mean = n * K_ / N_ if N_ else 0.0
    sd = math.sqrt(max(mean, 1.0))
    ks = draw(st.lists(st.one_of(st.integers(lo - 1, hi + 1),
                                 st.floats(-30, 30).map(lambda z: int(mean + z * sd))),
                       min_size=1, max_size=6))
    return N_, K_, n, ks


@settings(max_examples=40, deadline=None)
@given(scipy_params(), st.booleans())
def test_vs_scipy_hypothesis(params, upper):
    N_, K_, n, ks = params
    m = len(ks)
    k = np.array(ks, np.int64)
    ours = K.hypergeom_log_tail(k, np.full(m, K_), np.full(m, n), N_, upper=upper)
    with np.errstate(all="ignore"):
        ref = N.hypergeom_log_tail(k, np.full(m, K_), np.full(m, n), N_, upper=upper)
    tol = RTOL + 4e-16 * N_ * math.log(N_ + 1)     # scipy's own lgamma cancellation
    assert rel_err(ours, ref).max() <= tol, (ours, ref)
    assert (ours <= 0).all()


def test_tail_probability_vs_scipy():
    rng = np.random.default_rng(11)
    N_ = 20_000
    K_ = rng.integers(0, N_ + 1, 200)
    n = rng.integers(0, 3000, 200)
    k = (n * K_ / N_ + rng.normal(0, 20, 200)).astype(np.int64)
    for upper in (True, False):
        p = K.hypergeom_tail(k, K_, n, N_, upper=upper)
        np.testing.assert_array_equal(p, np.exp(K.hypergeom_log_tail(k, K_, n, N_, upper=upper)))
        np.testing.assert_allclose(p, N.hypergeom_tail(k, K_, n, N_, upper=upper),
                                   rtol=1e-9, atol=1e-300)
        assert ((p >= 0) & (p <= 1)).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10**9), st.floats(0.001, 0.999), st.floats(0.001, 0.999), st.booleans())
def test_probability_is_exp_of_log_across_the_underflow(N_, fk, fn, upper):
    """hypergeom_tail leaves out the walk of tails bounded below exp's underflow: the same 0.0, and every
    tail above it the same value as exp of the log, over the whole support (it crosses -745.13 once)."""
    K_, n = max(1, int(fk * N_)), max(1, int(fn * N_))
    lo, hi = support(K_, n, N_)
    k = np.unique(np.linspace(lo - 1, hi + 1, 3000).astype(np.int64))
    Ks, ns = np.full(len(k), K_, np.int64), np.full(len(k), n, np.int64)
    log_p = K.hypergeom_log_tail(k, Ks, ns, N_, upper=upper)
    p = K.hypergeom_tail(k, Ks, ns, N_, upper=upper)
    np.testing.assert_array_equal(p, np.exp(log_p))


@pytest.mark.parametrize("n", [1500, 4000])
@pytest.mark.parametrize("K_", [10**9 // 2, 10**8, 3 * 10**8])
def test_probability_where_the_binomial_bound_is_tight(n, K_):
    """Few draws from a large population (a near-binomial tail, where Hoeffding's bound is within a few
    units of the log tail): every point of the support, exp of its log."""
    N_ = 10**9
    k = np.arange(0, n + 2, dtype=np.int64)
    for upper in (True, False):
        log_p = K.hypergeom_log_tail(k, np.full(len(k), K_), np.full(len(k), n), N_, upper=upper)
        p = K.hypergeom_tail(k, np.full(len(k), K_), np.full(len(k), n), N_, upper=upper)
        np.testing.assert_array_equal(p, np.exp(log_p))
        if upper:  # the upper tails cross the underflow (the lower ones too where K is half the population)
            assert (log_p < -760).any() and ((log_p > -745.13) & (log_p < -700)).any()


def test_probability_near_the_underflow():
    """Tails whose logs straddle exp's underflow (-745.13) one point apart: each is exp of its log."""
    N_, K_, n = 1_000_000, 100_000, 300_000
    k = np.arange(30_000, 50_000, dtype=np.int64)
    log_p = K.hypergeom_log_tail(k, np.full(len(k), K_), np.full(len(k), n), N_)
    near = np.flatnonzero((log_p > -760) & (log_p < -730))
    assert len(near) > 10 and (log_p[near] < -745.14).any() and (log_p[near] > -745.13).any()
    p = K.hypergeom_tail(k[near], np.full(len(near), K_), np.full(len(near), n), N_)
    np.testing.assert_array_equal(p, np.exp(log_p[near]))
    assert (p[log_p[near] > -745.13] > 0).all()


# ---------------------------------------------------------------------------
# structure: monotone in k, complements, threads, paths
# ---------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10**9), st.floats(0, 1), st.floats(0, 1))
def test_monotone_in_k_and_complement(N_, fk, fn):
    K_, n = int(fk * N_), int(min(fn * N_, 4000))
    lo, hi = support(K_, n, N_)
    k = np.arange(lo - 1, hi + 2, dtype=np.int64)
    Ks, ns = np.full(len(k), K_), np.full(len(k), n)
    up = K.hypergeom_log_tail(k, Ks, ns, N_)
    dn = K.hypergeom_log_tail(k, Ks, ns, N_, upper=False)
    assert (np.diff(up) <= 0).all() and (np.diff(dn) >= 0).all()
    assert up[0] == up[1] == 0.0 and up[-1] == -np.inf
    assert dn[0] == -np.inf and dn[-1] == dn[-2] == 0.0
    # P(X >= k) + P(X <= k - 1) = 1
    total = np.exp(up[1:]) + np.exp(dn[:-1])
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


def test_threads_paths_and_out():
    rng = np.random.default_rng(5)
    m = 50_000
    N_ = 10**6
    K_ = rng.integers(0, N_ + 1, m)
    n = rng.integers(0, N_ + 1, m)
    k = (n * K_ / N_ + rng.normal(0, 1, m) * np.sqrt(n * K_ / N_ + 1) * 4).astype(np.int64)
    base = K.hypergeom_log_tail(k, K_, n, N_, n_threads=1)
    for nt in (2, None):
        np.testing.assert_array_equal(K.hypergeom_log_tail(k, K_, n, N_, n_threads=nt), base)
    for path in B.available_cpu_paths():         # no dispatch here: every path agrees
        B.set_cpu_path(path)
        try:
            np.testing.assert_array_equal(K.hypergeom_log_tail(k[:500], K_[:500], n[:500], N_),
                                          base[:500])
        finally:
            B.set_cpu_path(None)
    out = np.full(m, 7.0)
    assert K.hypergeom_log_tail(k, K_, n, N_, upper=False, out=out, n_threads=2) is out
    np.testing.assert_array_equal(out, K.hypergeom_log_tail(k, K_, n, N_, upper=False))
    ro = [a.copy() for a in (k, K_, n)]
    for a in ro:
        a.setflags(write=False)
    np.testing.assert_array_equal(K.hypergeom_log_tail(*ro, np.int64(N_)), base)
    assert K.hypergeom_log_tail(k[:0], K_[:0], n[:0], N_).shape == (0,)


def test_errors():
    k = np.array([1, 2], np.int64)
    K_ = np.array([3, 4], np.int64)
    n = np.array([5, 6], np.int64)
    with pytest.raises(TypeError, match="k"):
        K.hypergeom_log_tail(k.astype(np.int32), K_, n, 10)
    with pytest.raises(TypeError, match="k"):
        K.hypergeom_log_tail([1, 2], K_, n, 10)
    with pytest.raises(TypeError, match="successes"):
        K.hypergeom_log_tail(k, K_.astype(np.float64), n, 10)
    with pytest.raises(TypeError, match="draws"):
        K.hypergeom_log_tail(k, K_, n.astype(np.uint64), 10)
    with pytest.raises(ValueError, match="k"):
        K.hypergeom_log_tail(k.reshape(1, 2), K_, n, 10)
    with pytest.raises(ValueError, match="same length"):
        K.hypergeom_log_tail(k, K_[:1], n, 10)
    with pytest.raises(TypeError, match="population"):
        K.hypergeom_log_tail(k, K_, n, 10.0)
    with pytest.raises(TypeError, match="population"):
        K.hypergeom_log_tail(k, K_, n, np.array([10]))
    with pytest.raises(ValueError, match="population"):
        K.hypergeom_log_tail(k, K_, n, -1)
    with pytest.raises(ValueError, match="population"):
        K.hypergeom_log_tail(k, K_, n, 2**53 + 1)
    with pytest.raises(ValueError, match=r"successes\[1\] = 4"):
        K.hypergeom_log_tail(k, K_, np.array([1, 1], np.int64), 3)
    with pytest.raises(ValueError, match=r"successes\[0\] = -1"):
        K.hypergeom_log_tail(k, np.array([-1, 0], np.int64), n, 10)
    with pytest.raises(ValueError, match=r"draws\[1\] = 6"):
        K.hypergeom_log_tail(k, K_, n, 5)
    with pytest.raises(TypeError, match="upper"):
        K.hypergeom_log_tail(k, K_, n, 10, upper=1)
    with pytest.raises(ValueError, match="out"):
        K.hypergeom_log_tail(k, K_, n, 10, out=np.zeros(3))
    with pytest.raises(TypeError, match="out"):
        K.hypergeom_log_tail(k, K_, n, 10, out=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="out"):
        buf = np.zeros(2, np.int64)
        K.hypergeom_log_tail(buf, K_, n, 10, out=buf.view(np.float64))
    with pytest.raises(ValueError, match="n_threads"):
        K.hypergeom_tail(k, K_, n, 10, n_threads=0)


def test_naive_exports():
    for name in ("hypergeom_log_tail", "hypergeom_tail"):
        assert name in N.__all__ and name in K.__all__
        assert getattr(K, name) is getattr(H, name)


def test_population_per_element():
    """An int64 population array: each element's tail within its own population, as element-wise calls give."""
    import segsrv._kernels as KK
    from segsrv._kernels import naive as N_

    rng = np.random.default_rng(3)
    N = rng.integers(1, 5000, 300).astype(np.int64)
    K = (rng.random(300) * (N + 1)).astype(np.int64)
    n = (rng.random(300) * (N + 1)).astype(np.int64)
    k = (rng.random(300) * (np.minimum(K, n) + 2)).astype(np.int64)
    for upper in (True, False):
        got = KK.hypergeom_log_tail(k, K, n, N, upper=upper)
        one = np.array([KK.hypergeom_log_tail(k[i:i + 1], K[i:i + 1], n[i:i + 1], int(N[i]), upper=upper)[0]
                        for i in range(300)])
        np.testing.assert_array_equal(got, one)
        np.testing.assert_allclose(np.exp(got), np.exp(N_.hypergeom_log_tail(k, K, n, N, upper=upper)),
                                   rtol=1e-8, atol=1e-300)
    with pytest.raises(TypeError, match="population"):
        KK.hypergeom_log_tail(k, K, n, N[:10])
    with pytest.raises(ValueError, match="population"):
        KK.hypergeom_log_tail(k, K, n, np.full(300, -1, dtype=np.int64))
    with pytest.raises(ValueError, match="successes"):
        KK.hypergeom_log_tail(k, N + 1, n, N)
