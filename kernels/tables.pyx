# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Statistics of 2x2 tables in one pass (segsrv._kernels.tables).

A table is four counts: n rows, n_c in the condition C, n_f with the feature
F, n_cf with both (n and n_c shared by every table of a call, n_f and n_cf
int64 arrays).  ``table_statistics`` returns float64[k, len(TABLE_STATISTICS)],
one row per table, columns in TABLE_STATISTICS order; ``table_mutual_information``
returns the last column alone (what Relate orders by).  The definitions are
DESIGN.md section 3's, with the conventions of segsrv.engine.stats (its numpy
code is the naive twin, segsrv._kernels.naive.table_statistics):

  a ratio with a zero denominator is NaN; conviction is +inf at p = 1 (NaN
  when p is); zhang and certainty are 0 where their denominator is 0;
  0 log 0 = 0 in the mutual information (bits); the Wilson interval's
  endpoints are exactly 0 at n_cf = 0 and 1 at n_cf = n_c.

Why a kernel: Relate needs these for the ~20 hits it returns and the mutual
information of every matching candidate; as numpy expressions that was ~60
array operations of a few microseconds each, more than the hits' counting.
Same two-layer design as bitset.pyx: a checked wrapper, a ``noexcept nogil``
core over raw pointers (one thread: the work is microseconds).
"""
import numpy as np

import segsrv._kernels as _pkg

from segsrv._kernels.bitset import _check, _check_out

from libc.stdint cimport int64_t
from libc.math cimport exp2, log2, sqrt, INFINITY, NAN, isnan

# a table's statistics cost about this many streamed words (20-40 ns of logs and square roots): the
# GIL policy's weight (segsrv._kernels.releases_gil)
cdef int64_t _TABLE_ELEMENT_WORDS = 64

__all__ = ["TABLE_STATISTICS", "table_statistics", "table_mutual_information", "top_by_mutual_information"]

TABLE_STATISTICS = (
    "support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed", "lift_low", "lift_high", "leverage",
    "conviction", "jaccard", "certainty", "kulczynski", "zhang", "mutual_information",
)
cdef int _N_STATS = 15
cdef double _Z95 = 1.959963984540054


cdef inline double _div(double a, double b) noexcept nogil:
    return a / b if b != 0 else NAN


cdef inline double _clip01(double x) noexcept nogil:
    if x < 0:
        return 0.0
    if x > 1:
        return 1.0
    return x  # NaN stays NaN


cdef inline double _xlog2(double p, double q) noexcept nogil:
    if not p > 0:
        return 0.0
    return p * log2(p / (q if q > 0 else 1.0))


cdef inline double _mutual_information(double n, double n_c, double n_f, double n_cf) noexcept nogil:
    if n <= 0:
        return 0.0
    cdef double pc = n_c / n, pf = n_f / n
    cdef double p11 = n_cf / n, p10 = (n_c - n_cf) / n, p01 = (n_f - n_cf) / n
    cdef double p00 = (n - n_c - n_f + n_cf) / n
    return (_xlog2(p11, pc * pf) + _xlog2(p10, pc * (1 - pf))) + _xlog2(p01, (1 - pc) * pf) \
        + _xlog2(p00, (1 - pc) * (1 - pf))


cdef void _statistics_core(int64_t n, int64_t n_c, const int64_t *n_f, const int64_t *n_cf, size_t k,
                           double a, double *out) noexcept nogil:
    cdef double fn = <double>n, fc = <double>n_c, z2 = _Z95 * _Z95
    cdef double s_c = fc / fn if n != 0 else NAN
    # the Wilson interval of n_cf / n_c: everything but n_cf is shared
    cdef double w_denom = 1 + z2 / fc
    cdef double f, cf, p, p_base, s_cf, lev, d1, d2, denom, lo, hi, center, half, q
    cdef double *row
    cdef size_t i
    for i in range(k):
        row = out + i * _N_STATS
        f = <double>n_f[i]
        cf = <double>n_cf[i]
        p = _div(cf, fc)
        p_base = _div(f, fn)
        s_cf = _div(cf, fn)
        row[0] = s_cf
        row[1] = p
        row[2] = p_base
        row[3] = _div(<double>(n_f[i] - n_cf[i]), <double>(n - n_c))
        row[4] = _div(p, p_base)
        row[5] = _div(_div(cf + a * p_base, fc + a), p_base)
        if n_c > 0:
            q = cf / fc
            center = (q + z2 / (2 * fc)) / w_denom
            half = _Z95 * sqrt(q * (1 - q) / fc + z2 / (4 * fc * fc)) / w_denom
            lo = 0.0 if n_cf[i] <= 0 else _clip01(center - half)
            hi = 1.0 if n_cf[i] >= n_c else _clip01(center + half)
        else:
            lo = NAN
            hi = NAN
        row[6] = _div(lo, p_base)
        row[7] = _div(hi, p_base)
        lev = s_cf - s_c * p_base
        row[8] = lev
        if isnan(p):
            row[9] = NAN
        elif p < 1.0:
            row[9] = (1.0 - p_base) / (1.0 - p)
        else:
            row[9] = INFINITY
        row[10] = _div(cf, <double>(n_c + n_f[i] - n_cf[i]))
        row[11] = 0.0 if 1 - p_base == 0 else (p - p_base) / (1 - p_base)
        row[12] = 0.5 * (p + _div(cf, f))
        d1 = s_cf * (1 - s_c)
        d2 = s_c * (p_base - s_cf)
        denom = NAN if isnan(d1) or isnan(d2) else (d1 if d1 >= d2 else d2)
        row[13] = 0.0 if denom == 0 else lev / denom
        row[14] = _mutual_information(fn, fc, f, cf)


cdef void _mutual_information_core(int64_t n, int64_t n_c, const int64_t *n_f, const int64_t *n_cf, size_t k,
                                   double *out) noexcept nogil:
    cdef size_t i
    for i in range(k):
        out[i] = _mutual_information(<double>n, <double>n_c, <double>n_f[i], <double>n_cf[i])


def _table_args(n, n_c, n_f, n_cf):
    for name, v in (("n", n), ("n_c", n_c)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 <= n_c <= n:
        raise ValueError(f"n_c must be within [0, n = {n}], got {n_c}")
    _check(n_f, "n_f", np.int64, 1)
    _check(n_cf, "n_cf", np.int64, 1)
    if n_f.shape[0] != n_cf.shape[0]:
        raise ValueError(f"n_f and n_cf must have the same length, got {n_f.shape[0]} and {n_cf.shape[0]}")
    return n_f.shape[0]


def table_statistics(n, n_c, n_f, n_cf, prior_strength=10.0, out=None):
    """float64[k, len(TABLE_STATISTICS)]: every statistic of the tables (n, n_c, n_f[i], n_cf[i]).

    prior_strength: a of lift_smoothed = ((n_cf + a p_base) / (n_c + a)) / p_base.  Counts are not
    checked against each other (n_cf <= n_f, ...): inconsistent tables give meaningless numbers,
    never unsafe memory access.
    """
    cdef size_t k = _table_args(n, n_c, n_f, n_cf)
    cdef double a = float(prior_strength)
    out = _check_out(out, "out", np.float64, (k, _N_STATS))
    if k == 0:
        return out
    cdef const int64_t[::1] fv = n_f
    cdef const int64_t[::1] cfv = n_cf
    cdef double[:, ::1] ov = out
    cdef int64_t nn = n, nc = n_c
    if _pkg.releases_gil(k * _TABLE_ELEMENT_WORDS, 1):
        with nogil:
            _statistics_core(nn, nc, &fv[0], &cfv[0], k, a, &ov[0, 0])
    else:
        _statistics_core(nn, nc, &fv[0], &cfv[0], k, a, &ov[0, 0])
    return out


def table_mutual_information(n, n_c, n_f, n_cf, out=None):
    """float64[k]: the mutual information (bits) of membership of C and of F, per table."""
    cdef size_t k = _table_args(n, n_c, n_f, n_cf)
    out = _check_out(out, "out", np.float64, (k,))
    if k == 0:
        return out
    cdef const int64_t[::1] fv = n_f
    cdef const int64_t[::1] cfv = n_cf
    cdef double[::1] ov = out
    cdef int64_t nn = n, nc = n_c
    if _pkg.releases_gil(k * _TABLE_ELEMENT_WORDS, 1):
        with nogil:
            _mutual_information_core(nn, nc, &fv[0], &cfv[0], k, &ov[0])
    else:
        _mutual_information_core(nn, nc, &fv[0], &cfv[0], k, &ov[0])
    return out


_DIRECTIONS = {"all": 0, "over": 1, "under": 2}


cdef inline bint _ranks_before(double key_a, int64_t tie_a, double key_b, int64_t tie_b) noexcept nogil:
    """a comes first: the larger key, then the smaller tie."""
    return key_a > key_b or (key_a == key_b and tie_a < tie_b)


cdef inline void _swap(double *key, int64_t *tie, int64_t *pos, size_t i, size_t j) noexcept nogil:
    cdef double tk = key[i]
    cdef int64_t tt = tie[i], tp = pos[i]
    key[i], tie[i], pos[i] = key[j], tie[j], pos[j]
    key[j], tie[j], pos[j] = tk, tt, tp


cdef void _sift_down(double *key, int64_t *tie, int64_t *pos, size_t h, size_t i) noexcept nogil:
    """Restore the heap below i: every parent ranks after (or level with) its children (the root: the last)."""
    cdef size_t child, worst
    while True:
        worst = i
        child = 2 * i + 1
        if child < h and _ranks_before(key[worst], tie[worst], key[child], tie[child]):
            worst = child
        child += 1
        if child < h and _ranks_before(key[worst], tie[worst], key[child], tie[child]):
            worst = child
        if worst == i:
            return
        _swap(key, tie, pos, i, worst)
        i = worst


# The mutual information of a table is at most log2(1 + phi^2), phi^2 = (n n_cf - n_c n_f)^2 / (n_c (n - n_c)
# n_f (n - n_f)) (a Kullback-Leibler divergence is at most the log of 1 + its chi-square divergence, which for
# a 2x2 table against independence is phi^2): a few multiplications, no logarithm. Once the heap is full, a
# candidate whose bound is below the last kept key (less this margin and a relative 1e-9, for the rounding of
# both sides: a computed mutual information is within ~1e-14 bits of the exact one) cannot be kept, and its mutual
# information is not computed: on the 1M demo's "every field" (5,169 candidates, limit 20) ~3% of the
# candidates that pass the filters reach the bound, the rest cost a bound each instead of 8 logarithms
cdef double _PRUNE_MARGIN = 1e-12
# n n_cf and n_c n_f exact in int64
cdef int64_t _PRUNE_MAX_ROWS = 1LL << 31


cdef inline double _prune_below(double worst_key, int64_t n) noexcept nogil:
    """phi^2 under which a candidate of an n-row universe ranks after a heap whose last key is worst_key (-1:
    none does, or no bound is computed)."""
    if n >= _PRUNE_MAX_ROWS or not worst_key > 2 * _PRUNE_MARGIN:  # -inf (NaN keys), zero, tiny: none below
        return -1.0
    return exp2(worst_key * (1 - 1e-9) - _PRUNE_MARGIN) - 1.0


cdef int64_t _top_core(int64_t n, int64_t n_c, const int64_t *n_f, const int64_t *n_cf, const int64_t *ties,
                       size_t k, int64_t min_support, int direction, bint has_min_lift, double min_lift,
                       size_t limit, double *key, int64_t *tie, int64_t *pos, size_t *n_top) noexcept nogil:
    cdef int64_t matching = 0
    cdef size_t i, h = 0, j, parent
    cdef double lift, mi, d, phi2, prune_below = -1.0
    cdef double fn = <double>n, fc = <double>n_c
    cdef double margins_c = fc * (fn - fc)
    cdef int64_t f, cf
    for i in range(k):
        f = n_f[i]
        cf = n_cf[i]
        if not (0 < f < n) or cf < min_support or n_c <= 0:
            continue
        if direction != 0 or has_min_lift:
            lift = (<double>cf / <double>n_c) / (<double>f / <double>n)
            if (direction == 1 and not lift > 1) or (direction == 2 and not lift < 1) or \
                    (has_min_lift and not lift >= min_lift):
                continue
        matching += 1
        if prune_below > 0:  # the heap is full: skip what cannot reach its last (comment above)
            d = <double>(n * cf - n_c * f)  # exact in int64 (n < 2^31: below, no bound beyond)
            phi2 = d * d / (margins_c * (<double>f * (fn - <double>f)))
            if phi2 < prune_below:  # (NaN, inf: computed)
                continue
        mi = _mutual_information(fn, fc, <double>f, <double>cf)
        if isnan(mi):
            mi = -INFINITY
        if h < limit:  # room: add it, then up while it ranks after its parent
            j = h
            key[j], tie[j], pos[j] = mi, ties[i], <int64_t>i
            h += 1
            while j > 0:
                parent = (j - 1) // 2
                if not _ranks_before(key[parent], tie[parent], key[j], tie[j]):
                    break
                _swap(key, tie, pos, j, parent)
                j = parent
            if h == limit:
                prune_below = _prune_below(key[0], n)
        elif _ranks_before(mi, ties[i], key[0], tie[0]):  # better than the last kept: replaces it
            key[0], tie[0], pos[0] = mi, ties[i], <int64_t>i
            _sift_down(key, tie, pos, h, 0)
            prune_below = _prune_below(key[0], n)
    n_top[0] = h
    # heapsort: the last-ranked goes to the end, then the next, ...: first-ranked at 0
    j = h
    while j > 1:
        j -= 1
        _swap(key, tie, pos, 0, j)
        _sift_down(key, tie, pos, j, 0)
    return matching


def top_by_mutual_information(n, n_c, n_f, n_cf, ties, min_support, direction, min_lift, limit):
    """(candidates kept, positions of the first `limit` of them) -> (int, int64[m]): Relate's default
    order in one pass.

    Candidate i is the table (n, n_c, n_f[i], n_cf[i]); it is kept when 0 < n_f[i] < n, n_cf[i] >=
    min_support, n_c > 0 and, by its lift (n_cf / n_c) / (n_f / n), lift > 1 for direction "over",
    lift < 1 for "under" (any for "all") and lift >= min_lift (unless None). The kept are ordered by
    mutual information, largest first (NaN last), then by ties[i] ascending (distinct ties: a total
    order), as segsrv.engine.relate orders them with numpy (the naive twin); a bounded heap keeps the
    first `limit`, and once it is full a candidate whose mutual information is bounded below the heap's
    last key (log2(1 + phi^2), from its counts without a logarithm) is left out without computing it.
    """
    cdef size_t k = _table_args(n, n_c, n_f, n_cf)
    _check(ties, "ties", np.int64, 1)
    if ties.shape[0] != <Py_ssize_t>k:
        raise ValueError(f"ties must have the length of n_f, {k}, got {ties.shape[0]}")
    for name, v in (("min_support", min_support), ("limit", limit)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
    cdef int dcode = _DIRECTIONS[direction]
    cdef bint has_min_lift = min_lift is not None
    cdef double lift_floor = float(min_lift) if has_min_lift else 0.0
    cdef size_t cap = min(<size_t>limit, k)
    keys = np.empty(cap, dtype=np.float64)
    tie_of = np.empty(cap, dtype=np.int64)
    top = np.empty(cap, dtype=np.int64)
    if k == 0:
        return 0, top
    cdef const int64_t[::1] fv = n_f
    cdef const int64_t[::1] cfv = n_cf
    cdef const int64_t[::1] tv = ties
    cdef double[::1] kv = keys
    cdef int64_t[::1] tov = tie_of
    cdef int64_t[::1] pv = top
    cdef int64_t nn = n, nc = n_c, ms = min_support, matching
    cdef size_t n_top = 0
    if _pkg.releases_gil(k * _TABLE_ELEMENT_WORDS, 1):
        with nogil:
            matching = _top_core(nn, nc, &fv[0], &cfv[0], &tv[0], k, ms, dcode, has_min_lift, lift_floor, cap,
                                 &kv[0], &tov[0], &pv[0], &n_top)
    else:
        matching = _top_core(nn, nc, &fv[0], &cfv[0], &tv[0], k, ms, dcode, has_min_lift, lift_floor, cap,
                             &kv[0], &tov[0], &pv[0], &n_top)
    return int(matching), top[:n_top]
