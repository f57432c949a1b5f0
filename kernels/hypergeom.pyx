# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hypergeometric tail probabilities (segsrv._kernels.hypergeom).

X ~ Hypergeometric(population N, successes K, draws n) (scipy's
``hypergeom(M=N, n=K, N=n)``).  ``hypergeom_log_tail`` returns the natural
log of P(X >= k) (upper=True, Fisher's one-sided "more than expected" test) or
of P(X <= k) (upper=False), element-wise over int64 arrays k, successes,
draws, with one population for all or one per element (an int64 array: the Fisher
test of each element within its own rows).  Logs, because the deep tails of large
populations are far below 1e-300.

Method (hypergeom.h): log pmf at the start point by Loader's saddle-point
form (stirlerr + deviance, stable for N up to 2**53), then the ratio
recursion summed away from the mode until the rest is below 1e-17 of the sum;
a tail holding the mode is log1p(-complement).  Relative error of the
probability ~1e-12 (tests: <= 1e-9 against exact rationals and scipy), also
for tails far below 1e-300; values outside the support are exactly 0 or -inf.
Cost per element: O(1) plus the length of the walk, at most ~9 standard
deviations of X (sqrt(N)/4 at worst), typically a few dozen steps.

Same two-layer design as bitset.pyx: a checked wrapper, then a ``noexcept
nogil`` core over raw pointers, OpenMP over elements when there are many.
"""
import numpy as np

import segsrv._kernels as _pkg
from segsrv._kernels.bitset import _check, _check_int, _check_out, _overlaps

from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.math cimport INFINITY, exp

cdef extern from "hypergeom.h" nogil:
    double segsrv_hg_log_tail(int64_t k, int64_t K, int64_t n, int64_t N, int upper, double floor)

__all__ = ["hypergeom_log_tail", "hypergeom_tail"]

#: largest population accepted (every count is then exact in a double)
MAX_POPULATION = 1 << 53
# an element costs about this many streamed words (thread policy): 1-2 us of log-gamma sums;
# two threads win from ~1,000 elements on a 2-core EPYC (bench: tests' sizes, December 2026)
cdef int64_t _ELEMENT_WORDS = 4096
cdef int64_t MAX_POPULATION_C = 1 << 53


cdef Py_ssize_t _first_bad(const int64_t *K, const int64_t *n, size_t m, const int64_t *N, size_t stride,
                           int *which) noexcept nogil:
    cdef size_t i
    for i in range(m):
        if N[i * stride] < 0 or N[i * stride] > MAX_POPULATION_C:
            which[0] = 2
            return <Py_ssize_t>i
        if K[i] < 0 or K[i] > N[i * stride]:
            which[0] = 0
            return <Py_ssize_t>i
        if n[i] < 0 or n[i] > N[i * stride]:
            which[0] = 1
            return <Py_ssize_t>i
    return -1


cdef void _tail_core(const int64_t *k, const int64_t *K, const int64_t *n, const int64_t *N, size_t stride,
                     int upper, double floor, size_t m, double *out, int nt) noexcept nogil:
    cdef Py_ssize_t i
    if nt <= 1:
        for i in range(<Py_ssize_t>m):
            out[i] = segsrv_hg_log_tail(k[i], K[i], n[i], N[<size_t>i * stride], upper, floor)
    else:
        # dynamic: elements differ in cost (walk length), and a descheduled
        # thread (shared machine) does not hold up the others
        for i in prange(<Py_ssize_t>m, num_threads=nt, schedule="dynamic", chunksize=256):
            out[i] = segsrv_hg_log_tail(k[i], K[i], n[i], N[<size_t>i * stride], upper, floor)


# exp(x) of a double is 0.0 below log(2**-1075) = -745.133...; a log tail bounded below this is 0.0 as a
# probability, whatever its walk would sum (the margin, ~0.87, far beyond the logs' rounding)
cdef double _EXP_UNDERFLOW = -746.0


def hypergeom_log_tail(k, successes, draws, population, upper=True, out=None, n_threads=None):
    """log P(X >= k) (upper) or log P(X <= k) -> float64[m], X ~ Hypergeom(N, K, n).

    k, successes (K), draws (n): int64 arrays of equal length m; population (N):
    an int scalar, or an int64 array of length m (one population per element);
    0 <= N <= 2**53; 0 <= K <= N and 0 <= n <= N element-wise (ValueError
    otherwise).  k outside the support gives exactly 0.0 (log 1) or -inf (log 0).
    """
    return _log_tail(k, successes, draws, population, upper, out, n_threads, -INFINITY)


def _log_tail(k, successes, draws, population, upper, out, n_threads, double floor):
    """hypergeom_log_tail, with -inf for every tail bounded below `floor` (hypergeom.h)."""
    _check(k, "k", np.int64, 1)
    _check(successes, "successes", np.int64, 1)
    _check(draws, "draws", np.int64, 1)
    cdef size_t m = k.shape[0]
    if successes.shape[0] != <Py_ssize_t>m or draws.shape[0] != <Py_ssize_t>m:
        raise ValueError(f"k, successes and draws must have the same length, got "
                         f"{k.shape[0]}, {successes.shape[0]} and {draws.shape[0]}")
    cdef size_t stride = 0
    cdef int64_t N0 = 0
    if isinstance(population, np.ndarray):
        _check(population, "population", np.int64, 1)
        if population.shape[0] != <Py_ssize_t>m:  # neither one population nor one per element
            raise TypeError(f"population must be an int or an int64 array of the length of k ({m}), "
                            f"got an array of length {population.shape[0]}")
        stride = 1
    else:
        N0 = _check_int(population, "population")
        if N0 > MAX_POPULATION:
            raise ValueError(f"population must be <= 2**53, got {N0}")
    if not isinstance(upper, (bool, np.bool_)):
        raise TypeError(f"upper must be a bool, got {type(upper).__name__}")
    out = _check_out(out, "out", np.float64, (m,))
    for name, a in (("k", k), ("successes", successes), ("draws", draws), ("population", population)):
        if _overlaps(out, a):
            raise ValueError(f"out must not share memory with {name}")
    if m == 0:
        return out
    cdef const int64_t[::1] kv = k
    cdef const int64_t[::1] Kv = successes
    cdef const int64_t[::1] nv = draws
    cdef double[::1] ov = out
    cdef const int64_t[::1] Nv
    cdef const int64_t *Np = &N0
    if stride:
        Nv = population
        Np = &Nv[0]
    cdef int which = 0
    cdef Py_ssize_t bad
    if _pkg.releases_gil(m, 1):
        with nogil:
            bad = _first_bad(&Kv[0], &nv[0], m, Np, stride, &which)
    else:
        bad = _first_bad(&Kv[0], &nv[0], m, Np, stride, &which)
    if bad >= 0:
        N = int(Np[bad * stride])
        if which == 2:
            raise ValueError(f"population[{bad}] = {N} is outside [0, 2**53]")
        if which == 0:
            raise ValueError(f"successes[{bad}] = {int(successes[bad])} is outside "
                             f"[0, population = {N}]")
        raise ValueError(f"draws[{bad}] = {int(draws[bad])} is outside [0, population = {N}]")
    cdef int up = 1 if upper else 0
    cdef int nt = _pkg.resolve_threads(n_threads, m * _ELEMENT_WORDS)
    if <size_t>nt > m:
        nt = <int>m
    if _pkg.releases_gil(m * _ELEMENT_WORDS, nt):
        with nogil:
            _tail_core(&kv[0], &Kv[0], &nv[0], Np, stride, up, floor, m, &ov[0], nt)
    else:
        _tail_core(&kv[0], &Kv[0], &nv[0], Np, stride, up, floor, m, &ov[0], nt)
    return out


def hypergeom_tail(k, successes, draws, population, upper=True, out=None, n_threads=None):
    """P(X >= k) (upper) or P(X <= k) -> float64[m]: exp of ``hypergeom_log_tail``.

    Underflows to 0.0 below ~5e-324 (the log for deep tails): a tail bounded below that
    is 0.0 without its walk (hypergeom.h), the same value as exp of its log.
    """
    out = _log_tail(k, successes, draws, population, upper, out, n_threads, _EXP_UNDERFLOW)
    np.exp(out, out=out)
    return out
