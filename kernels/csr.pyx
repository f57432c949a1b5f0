# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CSR (row -> feature ids) kernels (segsrv._kernels.csr).

A CSR store is ``indptr`` int64[n_rows + 1] and ``indices`` uint32 (the
feature ids of row r are ``indices[indptr[r]:indptr[r+1]]``).  Row ids are
uint32.  Same two-layer design as bitset.pyx: validating Python wrappers,
``noexcept nogil`` cores on raw pointers, OpenMP prange where parallel.
Bounds (row ids, indptr entries of the rows used, feature ids) are checked
inside the cores and reported as ValueError.
"""
import numpy as np

import segsrv._kernels as _pkg
from segsrv._kernels.bitset import _check, _check_int, _check_out

from cython.parallel cimport prange
from libc.stdint cimport uint16_t, uint32_t, int32_t, int64_t
from libc.string cimport memset

__all__ = ["csr_histogram", "compact_csr_histogram", "csr_row_scores", "csr_pair_scores", "PAIR_MAX_SLOTS",
           "COMPACT_BLOCK_ROWS"]

cdef enum:
    MAX_SLOTS = 256

PAIR_MAX_SLOTS = MAX_SLOTS

cdef enum:
    _OK = 0
    _ERR_ROW = 1
    _ERR_INDPTR = 2
    _ERR_FEATURE = 3


cdef inline int64_t _row_range(const int64_t *indptr, int64_t n_rows, int64_t n_idx,
                               int64_t r, int64_t *lo, int64_t *hi) noexcept nogil:
    if r >= n_rows:
        return _ERR_ROW
    lo[0] = indptr[r]
    hi[0] = indptr[r + 1]
    if lo[0] < 0 or lo[0] > hi[0] or hi[0] > n_idx:
        return _ERR_INDPTR
    return _OK


cdef extern from *:
    void __builtin_prefetch(const void *addr) nogil

# rows ahead whose indptr entry (_PF_PTR) and first index lines (_PF_IDX) are prefetched: a row's
# features are a short run at an unpredictable place, which the hardware prefetcher does not follow
cdef size_t _PF_PTR = 32
cdef size_t _PF_IDX = 16

# A row's index costs about this many streamed words (thread policy, resolve_threads): a gather of
# its weight (scores, ~2 ns) or an increment of a histogram bin (~1.4 ns; its private copies per
# thread make its team dearer, hence the lower weight) on a 2-core EPYC, where two threads win
# from ~100k (scores) and ~400k (histogram) indices
cdef int64_t _SCORE_INDEX_WORDS = 16
cdef int64_t _HISTOGRAM_INDEX_WORDS = 4


ctypedef fused compact_index:
    uint16_t
    uint32_t


cdef inline bint _count_row(const compact_index *indices, int64_t lo, int64_t hi, int64_t *hist,
                            int64_t n_features) noexcept nogil:
    """hist[f] += 1 for a row's feature ids indices[lo:hi]; False (and the counts so far) at an id past
    n_features."""
    cdef int64_t j
    cdef uint32_t f
    for j in range(lo, hi):
        f = indices[j]
        if f >= n_features:
            return False
        hist[f] += 1
    return True


# err[0] = code, err[1] = position (index into rows) of the first error
cdef void _hist_range(const int64_t *indptr, int64_t n_rows, const uint32_t *indices,
                      int64_t n_idx, const uint32_t *rows, size_t lo_i, size_t hi_i,
                      int64_t *hist, int64_t n_features, int64_t *err) noexcept nogil:
    cdef size_t i
    cdef int64_t lo = 0, hi = 0, code, ahead
    for i in range(lo_i, hi_i):
        if i + _PF_PTR < hi_i and <int64_t>rows[i + _PF_PTR] < n_rows:
            __builtin_prefetch(&indptr[rows[i + _PF_PTR]])
        if i + _PF_IDX < hi_i and <int64_t>rows[i + _PF_IDX] < n_rows:
            ahead = indptr[rows[i + _PF_IDX]]
            if 0 <= ahead < n_idx:  # (a bad indptr is reported when its row comes)
                __builtin_prefetch(&indices[ahead])
                __builtin_prefetch(&indices[ahead] + 16)
        code = _row_range(indptr, n_rows, n_idx, rows[i], &lo, &hi)
        if code == _OK and not _count_row(indices, lo, hi, hist, n_features):
            code = _ERR_FEATURE
        if code:
            err[0] = code
            err[1] = <int64_t>i
            return


cdef void _hist_part(int t, int nt, const int64_t *indptr, int64_t n_rows,
                     const uint32_t *indices, int64_t n_idx, const uint32_t *rows, size_t k,
                     int64_t *hists, int64_t n_features, int64_t *errs) noexcept nogil:
    cdef size_t lo = k * <size_t>t // <size_t>nt
    cdef size_t hi = k * <size_t>(t + 1) // <size_t>nt
    _hist_range(indptr, n_rows, indices, n_idx, rows, lo, hi,
                hists + <size_t>t * <size_t>n_features, n_features, errs + 2 * t)


cdef void _hist_core(const int64_t *indptr, int64_t n_rows, const uint32_t *indices,
                     int64_t n_idx, const uint32_t *rows, size_t k, int64_t *hists,
                     int64_t n_features, int64_t *errs, int nt) noexcept nogil:
    cdef int t
    if nt <= 1:
        _hist_range(indptr, n_rows, indices, n_idx, rows, 0, k, hists, n_features, errs)
    else:
        for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            _hist_part(t, nt, indptr, n_rows, indices, n_idx, rows, k, hists, n_features, errs)


cdef void _sum_rows_part(int t, int nt, const int64_t *hists, int nh, int64_t n_features,
                         int64_t *out) noexcept nogil:
    cdef size_t lo = <size_t>n_features * <size_t>t // <size_t>nt
    cdef size_t hi = <size_t>n_features * <size_t>(t + 1) // <size_t>nt
    cdef size_t f
    cdef int h
    for f in range(lo, hi):
        out[f] = hists[f]
    for h in range(1, nh):
        for f in range(lo, hi):
            out[f] += hists[<size_t>h * <size_t>n_features + f]


def _raise_csr_error(errs, rows, n_rows, n_idx, n_features, what="n_features", compact=False):
    errs = np.asarray(errs).reshape(-1, 2)
    bad = errs[errs[:, 0] != 0]
    code, i = int(bad[0, 0]), int(bad[0, 1])
    r = int(rows[i]) if rows is not None else i
    if code == _ERR_ROW:
        raise ValueError(f"rows[{i}] = {r} is out of range for {n_rows} rows "
                         f"({'len(within)' if compact else 'len(indptr)'} - 1)")
    if code == _ERR_INDPTR and compact:
        raise ValueError(f"the pointers of row {r} are invalid (must satisfy 0 <= start(r) <= start(r+1) <= "
                         f"len(indices) = {n_idx}, start(r) = block_base[r >> 6] + within[r])")
    if code == _ERR_INDPTR:
        raise ValueError(f"indptr of row {r} is invalid (must satisfy "
                         f"0 <= indptr[r] <= indptr[r+1] <= len(indices) = {n_idx})")
    raise ValueError(f"row {r} has a feature id >= {what} = {n_features}")


def _histogram_work(k, n_idx, n_rows):
    """The streamed-word equivalents of a histogram of k listed rows of a CSR of n_idx entries over n_rows
    rows: the entries it is expected to touch, each _HISTOGRAM_INDEX_WORDS."""
    return _HISTOGRAM_INDEX_WORDS * k * (n_idx // max(n_rows, 1) + 1)


def _histogram_threads(n_threads, k, n_idx, n_rows, n_features):
    """Threads for that histogram (resolve_threads of _histogram_work), one thread where zeroing and
    reducing the private histograms would dominate."""
    work = _histogram_work(k, n_idx, n_rows)
    nt = _pkg.resolve_threads(n_threads, work)
    return 1 if nt > 1 and n_features * (nt - 1) > 4 * (work // _HISTOGRAM_INDEX_WORDS) else nt


def _check_indptr(indptr, indices):
    _check(indptr, "indptr", np.int64, 1)
    _check(indices, "indices", np.uint32, 1)
    if indptr.shape[0] < 1:
        raise ValueError("indptr must have n_rows + 1 >= 1 entries")
    return indptr.shape[0] - 1


def csr_histogram(indptr, indices, rows, n_features, out=None, n_threads=None):
    """out[f] = number of the listed rows that have feature f -> int64[n_features].

    indptr int64[n_rows+1], indices uint32, rows uint32 (any order; a row listed
    twice counts twice).  Parallel: per-thread private histograms, then reduced.
    """
    n_rows = _check_indptr(indptr, indices)
    _check(rows, "rows", np.uint32, 1)
    n_features = _check_int(n_features, "n_features")
    out = _check_out(out, "out", np.int64, (n_features,))
    cdef size_t k = rows.shape[0]
    cdef int64_t nf = n_features
    cdef int64_t[::1] ov
    if nf:
        ov = out
        memset(&ov[0], 0, <size_t>nf * 8)
    if k == 0:
        return out
    cdef const int64_t[::1] ipv = indptr
    cdef const uint32_t[::1] rv = rows
    cdef const uint32_t[::1] iv
    cdef uint32_t dummy = 0
    cdef const uint32_t *ip = &dummy
    if indices.shape[0]:
        iv = indices
        ip = &iv[0]
    cdef int64_t n_idx = indices.shape[0]
    cdef int64_t nr = n_rows
    cdef int nt = _histogram_threads(n_threads, k, n_idx, nr, nf)
    errs = np.zeros(2 * nt, dtype=np.int64)
    cdef int64_t[::1] ev = errs
    cdef int64_t[::1] hv
    dummy_hist = np.zeros(1, dtype=np.int64)
    cdef int t
    cdef int64_t *hp
    cdef int64_t *op
    if nt <= 1:
        hv = out if nf else dummy_hist
        if _pkg.releases_gil(_histogram_work(k, n_idx, nr), 1):
            with nogil:
                _hist_core(&ipv[0], nr, ip, n_idx, &rv[0], k, &hv[0], nf, &ev[0], 1)
        else:
            _hist_core(&ipv[0], nr, ip, n_idx, &rv[0], k, &hv[0], nf, &ev[0], 1)
    else:
        hists = np.zeros(nt * nf if nf else 1, dtype=np.int64)
        hv = hists
        hp = &hv[0]
        op = &ov[0] if nf else hp
        with nogil:
            _hist_core(&ipv[0], nr, ip, n_idx, &rv[0], k, hp, nf, &ev[0], nt)
            if nf:
                for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                    _sum_rows_part(t, nt, hp, nt, nf, op)
    if errs.any():
        _raise_csr_error(errs, rows, nr, n_idx, nf)
    return out


# --- the compact CSR: a row's start as its block's int64 base plus a uint16 offset -----------------------
#
# Row r's features are indices[block_base[r >> 6] + within[r] : block_base[(r + 1) >> 6] + within[r + 1]]:
# 2 bytes of pointer per row instead of 8 and, with at most 65,536 features, 2 bytes per entry instead of
# 4. A condition's listed rows are ~10 rows apart at 10% of the rows: each row's pointer and entries are a
# memory access of their own, so fewer lines per row is what the rows method's time follows (measured
# after a scan pushed them out of cache: 2.4 -> 1.4 ms for 100k of the 1M demo's rows).

cdef enum:
    _COMPACT_SHIFT = 6

COMPACT_BLOCK_ROWS = 1 << _COMPACT_SHIFT

cdef inline int64_t _compact_range(const int64_t *base, const uint16_t *within, int64_t n_rows, int64_t n_idx,
                                   int64_t r, int64_t *lo, int64_t *hi) noexcept nogil:
    if r >= n_rows:
        return _ERR_ROW
    lo[0] = base[r >> _COMPACT_SHIFT] + within[r]
    hi[0] = base[(r + 1) >> _COMPACT_SHIFT] + within[r + 1]
    if lo[0] < 0 or lo[0] > hi[0] or hi[0] > n_idx:
        return _ERR_INDPTR
    return _OK


cdef void _chist_range(const int64_t *base, const uint16_t *within, int64_t n_rows,
                       const compact_index *indices, int64_t n_idx, const uint32_t *rows, size_t lo_i,
                       size_t hi_i, int64_t *hist, int64_t n_features, int64_t *err) noexcept nogil:
    cdef size_t i
    cdef int64_t lo = 0, hi = 0, code, ahead
    for i in range(lo_i, hi_i):
        if i + _PF_PTR < hi_i and <int64_t>rows[i + _PF_PTR] < n_rows:
            __builtin_prefetch(&within[rows[i + _PF_PTR]])
        if i + _PF_IDX < hi_i and <int64_t>rows[i + _PF_IDX] < n_rows:
            ahead = base[rows[i + _PF_IDX] >> _COMPACT_SHIFT] + within[rows[i + _PF_IDX]]
            if 0 <= ahead < n_idx:  # (a bad pointer is reported when its row comes)
                __builtin_prefetch(&indices[ahead])
        code = _compact_range(base, within, n_rows, n_idx, rows[i], &lo, &hi)
        if code == _OK and not _count_row(indices, lo, hi, hist, n_features):
            code = _ERR_FEATURE
        if code:
            err[0] = code
            err[1] = <int64_t>i
            return


cdef void _chist_core(const int64_t *base, const uint16_t *within, int64_t n_rows, const compact_index *indices,
                      int64_t n_idx, const uint32_t *rows, size_t k, int64_t *hists, int64_t n_features,
                      int64_t *errs, int nt) noexcept nogil:
    cdef int t
    cdef size_t lo, hi
    if nt <= 1:
        _chist_range(base, within, n_rows, indices, n_idx, rows, 0, k, hists, n_features, errs)
    else:
        for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            lo = k * <size_t>t // <size_t>nt
            hi = k * <size_t>(t + 1) // <size_t>nt
            _chist_range(base, within, n_rows, indices, n_idx, rows, lo, hi,
                         hists + <size_t>t * <size_t>n_features, n_features, errs + 2 * t)


cdef void _chist_either(bint narrow, const int64_t *base, const uint16_t *within, int64_t n_rows,
                        const uint16_t *indices16, const uint32_t *indices32, int64_t n_idx, const uint32_t *rows,
                        size_t k, int64_t *hists, int64_t n_features, int64_t *errs, int nt) noexcept nogil:
    """_chist_core over the uint16 ids (narrow) or the uint32 ones."""
    if narrow:
        _chist_core(base, within, n_rows, indices16, n_idx, rows, k, hists, n_features, errs, nt)
    else:
        _chist_core(base, within, n_rows, indices32, n_idx, rows, k, hists, n_features, errs, nt)


def compact_csr_histogram(block_base, within, indices, rows, n_features, out=None, n_threads=None):
    """csr_histogram over a compact CSR -> int64[n_features]: out[f] = number of the listed rows that
    have feature f.

    Row r's features are indices[block_base[r >> 6] + within[r] : block_base[(r + 1) >> 6] +
    within[r + 1]]: within uint16[n_rows + 1], block_base int64[n_rows // 64 + 1] (the start of each
    block of COMPACT_BLOCK_ROWS = 64 rows), indices uint16 or uint32; rows uint32 (any order; a row
    listed twice counts twice). Pointers and feature ids are checked as csr_histogram checks them.
    Parallel like csr_histogram: per-thread private histograms, then reduced.
    """
    _check(within, "within", np.uint16, 1)
    if within.shape[0] < 1:
        raise ValueError("within must have n_rows + 1 >= 1 entries")
    n_rows = within.shape[0] - 1
    _check(block_base, "block_base", np.int64, 1)
    if block_base.shape[0] != (n_rows >> _COMPACT_SHIFT) + 1:
        raise ValueError(f"block_base must have (len(within) - 1) // {COMPACT_BLOCK_ROWS} + 1 = "
                         f"{(n_rows >> _COMPACT_SHIFT) + 1} entries, got {block_base.shape[0]}")
    if not isinstance(indices, np.ndarray) or indices.dtype not in (np.uint16, np.uint32):
        raise TypeError(f"indices must be a numpy.ndarray of dtype uint16 or uint32, got "
                        f"{indices.dtype if isinstance(indices, np.ndarray) else type(indices).__name__}")
    _check(indices, "indices", indices.dtype, 1)
    _check(rows, "rows", np.uint32, 1)
    n_features = _check_int(n_features, "n_features")
    out = _check_out(out, "out", np.int64, (n_features,))
    out[:] = 0
    cdef size_t k = rows.shape[0]
    if k == 0:
        return out
    cdef int64_t n_idx = indices.shape[0]
    cdef int64_t nr = n_rows
    cdef int64_t nf = n_features
    cdef int nt = _histogram_threads(n_threads, k, n_idx, nr, nf)
    errs = np.zeros(2 * nt, dtype=np.int64)
    hists = out if nt <= 1 else np.zeros(nt * nf if nf else 1, dtype=np.int64)
    if nf == 0:
        hists = np.zeros(1, dtype=np.int64)
    cdef const int64_t[::1] bv = block_base
    cdef const uint16_t[::1] wv = within
    cdef const uint32_t[::1] rv = rows
    cdef int64_t[::1] ev = errs
    cdef int64_t[::1] hv = hists
    cdef const uint16_t[::1] i16
    cdef const uint32_t[::1] i32
    cdef uint16_t dummy16 = 0
    cdef uint32_t dummy32 = 0
    cdef const uint16_t *p16 = &dummy16
    cdef const uint32_t *p32 = &dummy32
    cdef bint narrow = indices.dtype == np.uint16
    if n_idx and narrow:
        i16 = indices
        p16 = &i16[0]
    elif n_idx:
        i32 = indices
        p32 = &i32[0]
    if _pkg.releases_gil(_histogram_work(k, n_idx, nr), nt):
        with nogil:
            _chist_either(narrow, &bv[0], &wv[0], nr, p16, p32, n_idx, &rv[0], k, &hv[0], nf, &ev[0], nt)
    else:
        _chist_either(narrow, &bv[0], &wv[0], nr, p16, p32, n_idx, &rv[0], k, &hv[0], nf, &ev[0], nt)
    if errs.any():
        _raise_csr_error(errs, rows, nr, n_idx, nf, compact=True)
    if nt > 1 and nf:
        out[:] = hists.reshape(nt, nf).sum(axis=0)
    return out


cdef void _scores_range(const int64_t *indptr, int64_t n_rows, const uint32_t *indices,
                        int64_t n_idx, const double *w, int64_t n_w, int64_t n_cols,
                        const uint32_t *rows, size_t lo_i, size_t hi_i, double *out,
                        int64_t *err) noexcept nogil:
    # w is [n_w, n_cols] row-major; out[i, c] sums w[f, c] over row i's features in index order
    cdef size_t i
    cdef int64_t j, lo = 0, hi = 0, code, r, c
    cdef uint32_t f
    cdef double s
    cdef double *o
    cdef const double *wf
    for i in range(lo_i, hi_i):
        r = rows[i] if rows != NULL else <int64_t>i
        code = _row_range(indptr, n_rows, n_idx, r, &lo, &hi)
        if code:
            err[0] = code
            err[1] = <int64_t>i
            return
        o = out + i * <size_t>n_cols
        s = 0.0  # one column: summed in a register (the branch below is loop-invariant)
        for c in range(n_cols):
            o[c] = 0.0
        for j in range(lo, hi):
            f = indices[j]
            if f >= n_w:
                err[0] = _ERR_FEATURE
                err[1] = <int64_t>i
                return
            if n_cols == 1:
                s += w[f]
            else:
                wf = w + <size_t>f * <size_t>n_cols
                for c in range(n_cols):
                    o[c] += wf[c]
        if n_cols == 1:
            o[0] = s


cdef void _scores_part(int c, int nc, const int64_t *indptr, int64_t n_rows,
                       const uint32_t *indices, int64_t n_idx, const double *w, int64_t n_w,
                       int64_t n_cols, const uint32_t *rows, size_t k, double *out,
                       int64_t *errs) noexcept nogil:
    cdef size_t lo = k * <size_t>c // <size_t>nc
    cdef size_t hi = k * <size_t>(c + 1) // <size_t>nc
    _scores_range(indptr, n_rows, indices, n_idx, w, n_w, n_cols, rows, lo, hi, out, errs + 2 * c)


def csr_row_scores(indptr, indices, weights, rows=None, out=None, n_threads=None):
    """out[i] = sum of weights[f] over the features f of row rows[i] -> float64[k].

    indptr int64[n_rows+1], indices uint32, weights float64[n_features],
    rows uint32 row ids (default: all rows).  weights may also be a C-contiguous
    float64[n_features, m] matrix of m weight vectors: then out is float64[k, m] and
    out[i, c] sums weights[f, c] (m models scored in one pass over the rows).
    Each row is summed sequentially in index order, so results do not depend on
    the thread count.
    """
    n_rows = _check_indptr(indptr, indices)
    _check(weights, "weights", np.float64, None)
    if weights.ndim not in (1, 2):
        raise ValueError(f"weights must be 1-D or 2-D, got shape {weights.shape}")
    if rows is not None:
        _check(rows, "rows", np.uint32, 1)
        k = rows.shape[0]
    else:
        k = n_rows
    n_cols = 1 if weights.ndim == 1 else weights.shape[1]
    out = _check_out(out, "out", np.float64, (k,) if weights.ndim == 1 else (k, n_cols))
    if k == 0:
        return out
    if n_cols == 0:
        return out
    cdef const int64_t[::1] ipv = indptr
    cdef const uint32_t[::1] rv
    cdef const uint32_t[::1] iv
    cdef const double[::1] wv
    cdef double[::1] ov = out.reshape(-1)
    cdef uint32_t dummy = 0
    cdef double dummy_w = 0.0
    cdef const uint32_t *rp = NULL
    cdef const uint32_t *ip = &dummy
    cdef const double *wp = &dummy_w
    if rows is not None:
        rv = rows
        rp = &rv[0]
    if indices.shape[0]:
        iv = indices
        ip = &iv[0]
    if weights.size:
        wv = weights.reshape(-1)
        wp = &wv[0]
    cdef int64_t n_idx = indices.shape[0]
    cdef int64_t nr = n_rows
    cdef int64_t n_w = weights.shape[0]
    cdef int64_t ncol = n_cols
    cdef size_t kk = k
    cdef int64_t work = _SCORE_INDEX_WORDS * <int64_t>kk * (n_idx // max(nr, 1) + 1) * ncol
    cdef int nt = _pkg.resolve_threads(n_threads, work)
    # several chunks per thread (dynamic) to balance uneven row lengths
    cdef int nc = 1 if nt <= 1 else <int>min(<size_t>(8 * nt), kk)
    errs = np.zeros(2 * nc, dtype=np.int64)
    cdef int64_t[::1] ev = errs
    cdef int c
    cdef const int64_t *ipp = &ipv[0]
    cdef double *op = &ov[0]
    cdef int64_t *ep = &ev[0]
    if nc <= 1 and not _pkg.releases_gil(work, 1):
        _scores_range(ipp, nr, ip, n_idx, wp, n_w, ncol, rp, 0, kk, op, ep)
    else:
        with nogil:
            if nc <= 1:
                _scores_range(ipp, nr, ip, n_idx, wp, n_w, ncol, rp, 0, kk, op, ep)
            else:
                for c in prange(nc, num_threads=nt, schedule="dynamic", chunksize=1):
                    _scores_part(c, nc, ipp, nr, ip, n_idx, wp, n_w, ncol, rp, kk, op, ep)
    if errs.any():
        _raise_csr_error(errs, rows, nr, n_idx, n_w, what="len(weights)")
    return out


cdef void _pairs_range(const int64_t *indptr, int64_t n_rows, const uint32_t *indices,
                       int64_t n_idx, const int32_t *slot_of, int64_t n_f, const double *U,
                       int64_t m, int64_t n_cls, const uint32_t *rows, size_t lo_i, size_t hi_i,
                       double *out, int64_t *err) noexcept nogil:
    # out[i, c] = sum of U[c, s, t] over the pairs s < t of row i's slots
    cdef size_t i
    cdef int64_t j, lo = 0, hi = 0, code, r, c, a, b, s, t, n_s
    cdef uint32_t f
    cdef int32_t sl
    cdef int32_t buf[MAX_SLOTS]
    cdef double *o
    for i in range(lo_i, hi_i):
        r = rows[i] if rows != NULL else <int64_t>i
        code = _row_range(indptr, n_rows, n_idx, r, &lo, &hi)
        if code:
            err[0] = code
            err[1] = <int64_t>i
            return
        o = out + i * <size_t>n_cls
        for c in range(n_cls):
            o[c] = 0.0
        n_s = 0
        for j in range(lo, hi):
            f = indices[j]
            if f >= n_f:
                err[0] = _ERR_FEATURE
                err[1] = <int64_t>i
                return
            sl = slot_of[f]
            if sl >= 0 and n_s < MAX_SLOTS:
                buf[n_s] = sl
                n_s += 1
        for a in range(n_s):
            for b in range(a + 1, n_s):
                s = buf[a]
                t = buf[b]
                if s > t:
                    s, t = t, s
                for c in range(n_cls):
                    o[c] += U[(c * m + s) * m + t]


cdef void _pairs_part(int c, int nc, const int64_t *indptr, int64_t n_rows, const uint32_t *indices,
                      int64_t n_idx, const int32_t *slot_of, int64_t n_f, const double *U, int64_t m,
                      int64_t n_cls, const uint32_t *rows, size_t k, double *out,
                      int64_t *errs) noexcept nogil:
    cdef size_t lo = k * <size_t>c // <size_t>nc
    cdef size_t hi = k * <size_t>(c + 1) // <size_t>nc
    _pairs_range(indptr, n_rows, indices, n_idx, slot_of, n_f, U, m, n_cls, rows, lo, hi, out, errs + 2 * c)


def csr_pair_scores(indptr, indices, slot_of, U, rows=None, out=None, n_threads=None):
    """out[i, c] = sum of U[c, s, t] over the pairs of features of row rows[i] that both have a slot
    (s = slot_of[f] >= 0, t = slot_of[g] >= 0, s < t) -> float64[k, K].

    indptr int64[n_rows+1], indices uint32 (a row's features distinct), slot_of int32[n_features]
    (-1: no slot; distinct slots < m), U C-contiguous float64[K, m, m] (entries below the diagonal
    unused), m <= PAIR_MAX_SLOTS; rows uint32 row ids (default: all rows). The logit that pairwise
    interaction terms add to each class (segsrv.engine.predict.interactions). Each row is summed in
    index order, so results do not depend on the thread count.
    """
    n_rows = _check_indptr(indptr, indices)
    _check(slot_of, "slot_of", np.int32, 1)
    _check(U, "U", np.float64, 3)
    if U.shape[1] != U.shape[2]:
        raise ValueError(f"U must be [K, m, m], got shape {U.shape}")
    if U.shape[1] > MAX_SLOTS:
        raise ValueError(f"U has {U.shape[1]} slots, more than PAIR_MAX_SLOTS = {MAX_SLOTS}")
    if slot_of.shape[0] and (slot_of.max() >= U.shape[1] or slot_of.min() < -1):
        raise ValueError(f"slot_of must hold -1 or slots < m = {U.shape[1]}")
    if rows is not None:
        _check(rows, "rows", np.uint32, 1)
        k = rows.shape[0]
    else:
        k = n_rows
    out = _check_out(out, "out", np.float64, (k, U.shape[0]))
    if k == 0 or U.shape[0] == 0:
        return out
    cdef const int64_t[::1] ipv = indptr
    cdef const uint32_t[::1] rv
    cdef const uint32_t[::1] iv
    cdef const int32_t[::1] sv
    cdef const double[::1] uv
    cdef double[::1] ov = out.reshape(-1)
    cdef uint32_t dummy = 0
    cdef int32_t dummy_s = -1
    cdef double dummy_u = 0.0
    cdef const uint32_t *rp = NULL
    cdef const uint32_t *ip = &dummy
    cdef const int32_t *sp = &dummy_s
    cdef const double *up = &dummy_u
    if rows is not None:
        rv = rows
        rp = &rv[0]
    if indices.shape[0]:
        iv = indices
        ip = &iv[0]
    if slot_of.shape[0]:
        sv = slot_of
        sp = &sv[0]
    if U.size:
        uv = U.reshape(-1)
        up = &uv[0]
    cdef int64_t n_idx = indices.shape[0]
    cdef int64_t nr = n_rows
    cdef int64_t n_f = slot_of.shape[0]
    cdef int64_t m = U.shape[1]
    cdef int64_t n_cls = U.shape[0]
    cdef size_t kk = k
    cdef int64_t work = _SCORE_INDEX_WORDS * <int64_t>kk * (n_idx // max(nr, 1) + 1)
    cdef int nt = _pkg.resolve_threads(n_threads, work)
    cdef int nc = 1 if nt <= 1 else <int>min(<size_t>(8 * nt), kk)
    errs = np.zeros(2 * nc, dtype=np.int64)
    cdef int64_t[::1] ev = errs
    cdef int c
    cdef const int64_t *ipp = &ipv[0]
    cdef double *op = &ov[0]
    cdef int64_t *ep = &ev[0]
    if nc <= 1 and not _pkg.releases_gil(work, 1):
        _pairs_range(ipp, nr, ip, n_idx, sp, n_f, up, m, n_cls, rp, 0, kk, op, ep)
    else:
        with nogil:
            if nc <= 1:
                _pairs_range(ipp, nr, ip, n_idx, sp, n_f, up, m, n_cls, rp, 0, kk, op, ep)
            else:
                for c in prange(nc, num_threads=nt, schedule="dynamic", chunksize=1):
                    _pairs_part(c, nc, ipp, nr, ip, n_idx, sp, n_f, up, m, n_cls, rp, kk, op, ep)
    if errs.any():
        _raise_csr_error(errs, rows, nr, n_idx, n_f, what="len(slot_of)")
    return out
