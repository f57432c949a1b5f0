# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Dense bitset kernels (segsrv._kernels.bitset).

Layout: a bitset is a C-contiguous numpy uint64 array; bit r is bit (r & 63)
of word (r >> 6) (little-endian bit order, like
``np.packbits(bools, bitorder="little").view(np.uint64)``).  Row ids are
uint32, sorted ascending, unique.

Each public function is a thin Python-facing wrapper that validates its
arguments (TypeError for a wrong type/dtype, ValueError for a wrong shape,
layout or value), allocates ``out`` when None, asks
``segsrv._kernels.resolve_threads`` for a thread count, then runs a typed
``noexcept nogil`` core on raw pointers with the GIL released.  Inputs are
const memoryviews, so read-only arrays (``np.memmap(mode="r")``) are accepted.

The popcount inner loops are chosen at import by CPU dispatch (popcnt.h):
"avx512vpopcntdq" > "avx2" > "popcnt" > "generic".  Env SEGSRV_CPU_PATH may
force a lower path; ``set_cpu_path`` does the same at run time (for tests).
"""
import math
import os
import warnings

import numpy as np

import segsrv._kernels as _pkg

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint64_t, uint32_t, uint16_t, uint8_t, int64_t
from libc.string cimport memset

cdef extern from "popcnt.h" nogil:
    int SEGSRV_PATH_GENERIC
    int SEGSRV_PATH_POPCNT
    int SEGSRV_PATH_AVX2
    int SEGSRV_PATH_AVX512
    int segsrv_max_level()
    void segsrv_set_level(int level)
    int segsrv_get_level()
    uint64_t segsrv_and_popcount(const uint64_t *a, const uint64_t *b, size_t n)
    uint64_t segsrv_popcount(const uint64_t *a, size_t n)
    uint64_t segsrv_or_reduce(const uint64_t *a, size_t n)
    size_t segsrv_probe_count_path(const uint64_t *q, uint64_t n_bits, const uint32_t *ids,
                                   size_t n, int *bad)
    void segsrv_and_count_rows(const uint64_t *q, const uint64_t *M, size_t stride,
                               size_t n_words, const int64_t *rows, int64_t row_base,
                               size_t k, int64_t *out, size_t block)
    void segsrv_and_count_rows_many(const uint64_t *Q, size_t q_stride, size_t n_q, const uint64_t *M,
                                    size_t stride, size_t n_words, const int64_t *rows, size_t k,
                                    int64_t *out, size_t out_stride, size_t block)
    size_t segsrv_row_pf_words
    int segsrv_rows_in_flight

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil
    void __builtin_prefetch(const void *addr) nogil

cdef size_t _GATHER_AHEAD = 16

cdef extern from "sorted_ids.h" nogil:
    size_t segsrv_intersect_count(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
    size_t segsrv_probe_count(const uint64_t *q, uint64_t n_bits, const uint32_t *ids,
                              size_t n, int *bad)
    size_t segsrv_bits_to_ids(const uint64_t *bits, size_t n_words, uint64_t n_bits,
                              uint32_t *out)

cdef extern from *:
    """
    #ifdef _OPENMP
    #define SEGSRV_HAVE_OPENMP 1
    #else
    #define SEGSRV_HAVE_OPENMP 0
    #endif
    """
    int SEGSRV_HAVE_OPENMP

__all__ = [
    "cpu_path",
    "available_cpu_paths",
    "set_cpu_path",
    "has_openmp",
    "popcount",
    "and_count_dense",
    "and_count_dense_many",
    "and_count_sparse",
    "and_count_ids",
    "bitset_and",
    "bitset_or",
    "bitset_andnot",
    "bitset_to_ids",
    "gather_present",
    "histogram_present",
    "histogram_codes_present",
    "ids_to_bitset",
    "set_bits",
    "read_bandwidth_probe",
]

# A random probe of a bitset costs about this many streamed words (thread policy, resolve_threads):
# 0.4 against 0.12 ns per word on a 2-core EPYC, where two threads win from ~300k probes
# (PROBE_WORDS: the same weight for cooccur.pyx's probes)
cdef int64_t _PROBE_WORDS = 4
PROBE_WORDS = _PROBE_WORDS

# Column block (in 64-bit words) for one-vs-many dense AND-count: the query
# block stays in L1/L2 while each matrix row block streams from memory.
cdef size_t _DENSE_BLOCK_WORDS = 0
# Column block (words) of and_count_dense_many: a group of rows' blocks (4 x 128 KB on the AVX-512 path) stays in
# L2 while each query takes its turn over it (whole rows at 1M bits: the first query reads them at the one-query
# kernel's speed; 2,048-word blocks broke the rows into short streams and read them 30% slower)
cdef size_t _MANY_BLOCK_WORDS = 16384


def _set_dense_prefetch_words(size_t n):
    """Tuning hook (benchmarks only): prefetch distance in words of the AVX-512 dense rows path, 0 = none.
    Returns the previous distance."""
    global segsrv_row_pf_words
    cdef size_t old = segsrv_row_pf_words
    segsrv_row_pf_words = n
    return old


def _set_dense_rows_in_flight(int n):
    """Tuning hook (benchmarks, tests): rows the AVX-512 dense path reads together, 1, 2, 4 or 8.
    Returns the previous value."""
    global segsrv_rows_in_flight
    if n not in (1, 2, 4, 8):
        raise ValueError(f"rows in flight must be 1, 2, 4 or 8, got {n}")
    cdef int old = segsrv_rows_in_flight
    segsrv_rows_in_flight = n
    return old


def _set_dense_block_words(size_t n):
    """Tuning hook (benchmarks only): column block of and_count_dense, 0 = no blocking."""
    global _DENSE_BLOCK_WORDS
    _DENSE_BLOCK_WORDS = n

_PATH_NAMES = ("generic", "popcnt", "avx2", "avx512vpopcntdq")
cdef int _MAX_LEVEL = segsrv_max_level()


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------

def available_cpu_paths():
    """Dispatch paths this CPU supports, best first (e.g. ``["avx2", "popcnt", "generic"]``)."""
    return [_PATH_NAMES[i] for i in range(_MAX_LEVEL, -1, -1)]


def cpu_path():
    """The popcount dispatch path in use: "avx512vpopcntdq" | "avx2" | "popcnt" | "generic"."""
    return _PATH_NAMES[segsrv_get_level()]


def set_cpu_path(name=None):
    """Force a dispatch path (for tests/benchmarks); None selects the best one.

    Not thread-safe with respect to kernels running concurrently.
    Raises ValueError for an unknown path or one this CPU does not support.
    """
    if name is None:
        segsrv_set_level(_MAX_LEVEL)
        return cpu_path()
    if name not in _PATH_NAMES:
        raise ValueError(f"unknown cpu path {name!r}; expected one of {_PATH_NAMES}")
    level = _PATH_NAMES.index(name)
    if level > _MAX_LEVEL:
        raise ValueError(
            f"cpu path {name!r} is not supported on this CPU (available: {available_cpu_paths()})")
    segsrv_set_level(level)
    return cpu_path()


def _init_dispatch():
    forced = os.environ.get("SEGSRV_CPU_PATH", "").strip().lower()
    if not forced:
        segsrv_set_level(_MAX_LEVEL)
        return
    if forced not in _PATH_NAMES:
        warnings.warn(f"SEGSRV_CPU_PATH={forced!r} is not one of {_PATH_NAMES}; ignored",
                      RuntimeWarning, stacklevel=2)
        segsrv_set_level(_MAX_LEVEL)
        return
    level = _PATH_NAMES.index(forced)
    if level > _MAX_LEVEL:
        warnings.warn(f"SEGSRV_CPU_PATH={forced!r} is not supported by this CPU; "
                      f"using {_PATH_NAMES[_MAX_LEVEL]!r}", RuntimeWarning, stacklevel=2)
        level = _MAX_LEVEL
    segsrv_set_level(level)


_init_dispatch()


def has_openmp():
    """True when the kernels were compiled with OpenMP (parallel prange)."""
    return bool(SEGSRV_HAVE_OPENMP)


# ---------------------------------------------------------------------------
# validation helpers (shared with csr.pyx)
# ---------------------------------------------------------------------------

cdef dict _NATIVE = {}


cdef object _native(dtype):
    """np.dtype(dtype), kept per argument (the native dtypes are singletons: compared by identity)."""
    found = _NATIVE.get(dtype)
    if found is None:
        found = _NATIVE[dtype] = np.dtype(dtype)
    return found


def _check(arr, name, dtype, ndim=1):
    """Validate an input array: ndarray, exact (native) dtype, ndim, C-contiguous."""
    # the accepted case first, without a Python-level attribute read: every kernel call checks its arrays
    if isinstance(arr, np.ndarray) and (ndim is None or cnp.PyArray_NDIM(<cnp.ndarray>arr) == ndim) \
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>arr) \
            and <object>cnp.PyArray_DESCR(<cnp.ndarray>arr) is _native(dtype):
        return arr
    dtype = np.dtype(dtype)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of dtype {dtype.name}, "
                        f"got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name} (native byte order), got {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return arr


def _check_out(out, name, dtype, shape):
    """Allocate (out is None) or validate a writable output array of exact shape."""
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check(out, name, dtype, len(shape))
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return out


def _check_int(value, name, minimum=0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


cdef inline size_t _addr(arr):
    return <size_t>arr.__array_interface__["data"][0]


def _overlaps(a, b):
    """Whether two C-contiguous arrays' bytes overlap (False where either is not an array or is empty):
    np.may_share_memory's bounds test for the kernels' checked arguments, without its release of the
    GIL (segsrv._kernels.releases_gil)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    cdef size_t lo_a = <size_t>cnp.PyArray_DATA(a), lo_b = <size_t>cnp.PyArray_DATA(b)
    cdef size_t n_a = <size_t>cnp.PyArray_NBYTES(a), n_b = <size_t>cnp.PyArray_NBYTES(b)
    return n_a > 0 and n_b > 0 and lo_a < lo_b + n_b and lo_b < lo_a + n_a


def _check_alias(out, name, *inputs):
    """out may be exactly one of the inputs (in place) but must not partially overlap."""
    for arg_name, a in inputs:
        if out is a:
            continue
        if _overlaps(out, a) and _addr(out) != _addr(a):
            raise ValueError(f"{name} partially overlaps {arg_name}; "
                             f"it must be the same array or disjoint")


# ---------------------------------------------------------------------------
# popcount / probe
# ---------------------------------------------------------------------------

cdef uint64_t _pop_part(int t, int nt, const uint64_t *a, size_t n) noexcept nogil:
    cdef size_t lo = n * <size_t>t // <size_t>nt
    cdef size_t hi = n * <size_t>(t + 1) // <size_t>nt
    return segsrv_popcount(a + lo, hi - lo)


cdef uint64_t _andpop_part(int t, int nt, const uint64_t *a, const uint64_t *b,
                           size_t n) noexcept nogil:
    cdef size_t lo = n * <size_t>t // <size_t>nt
    cdef size_t hi = n * <size_t>(t + 1) // <size_t>nt
    return segsrv_and_popcount(a + lo, b + lo, hi - lo)


cdef uint64_t _popcount_core(const uint64_t *a, size_t n, int nt) noexcept nogil:
    cdef uint64_t total = 0
    cdef int t
    if nt <= 1:
        return segsrv_popcount(a, n)
    for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
        total += _pop_part(t, nt, a, n)
    return total


def popcount(bits, n_threads=None):
    """Number of set bits in a C-contiguous uint64 array (any ndim)."""
    _check(bits, "bits", np.uint64, None)
    cdef const uint64_t[::1] b = bits.reshape(-1)
    cdef size_t n = b.shape[0]
    cdef int nt = _pkg.resolve_threads(n_threads, n)
    cdef uint64_t r = 0
    if n == 0:
        return 0
    if _pkg.releases_gil(n, nt):
        with nogil:
            r = _popcount_core(&b[0], n, nt)
    else:
        r = _popcount_core(&b[0], n, nt)
    return int(r)


def read_bandwidth_probe(buf):
    """One-thread OR-reduce of a uint64 array (any ndim, C-contiguous).

    The fastest streaming read we can do (vectorised, several accumulators,
    same dispatch path as the popcount kernels): the memory-bandwidth anchor of
    bench/kernels.py.  Returns the OR of all words (so the read can't be elided).
    """
    _check(buf, "buf", np.uint64, None)
    cdef const uint64_t[::1] b = buf.reshape(-1)
    cdef size_t n = b.shape[0]
    cdef uint64_t r = 0
    if n == 0:
        return 0
    with nogil:
        r = segsrv_or_reduce(&b[0], n)
    return int(r)


# ---------------------------------------------------------------------------
# one-vs-many AND-count
# ---------------------------------------------------------------------------

cdef void _dense_part(int t, int nt, const uint64_t *q, const uint64_t *M, size_t stride,
                      size_t n_words, const int64_t *rows, size_t k,
                      int64_t *out) noexcept nogil:
    cdef size_t lo = k * <size_t>t // <size_t>nt
    cdef size_t hi = k * <size_t>(t + 1) // <size_t>nt
    if hi <= lo:
        return
    segsrv_and_count_rows(q, M, stride, n_words, rows + lo if rows != NULL else NULL,
                          <int64_t>lo, hi - lo, out + lo, _DENSE_BLOCK_WORDS)


cdef void _dense_core(const uint64_t *q, const uint64_t *M, size_t n_words,
                      const int64_t *rows, size_t k, int64_t *out, int nt) noexcept nogil:
    cdef int t, nc
    cdef size_t i
    cdef int64_t r
    cdef uint64_t total
    if nt <= 1:
        segsrv_and_count_rows(q, M, n_words, n_words, rows, 0, k, out, _DENSE_BLOCK_WORDS)
    elif k >= <size_t>nt:
        # ~8 row chunks per thread, handed out dynamically: a thread that gets
        # descheduled (shared machine) does not hold up the others
        nc = <int>(k if k < <size_t>(8 * nt) else <size_t>(8 * nt))
        for t in prange(nc, num_threads=nt, schedule="dynamic", chunksize=1):
            _dense_part(t, nc, q, M, n_words, n_words, rows, k, out)
    else:
        # few long rows: split each row's words across threads
        for i in range(k):
            r = rows[i] if rows != NULL else <int64_t>i
            total = 0
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                total += _andpop_part(t, nt, q, M + <size_t>r * n_words, n_words)
            out[i] = <int64_t>total


cdef Py_ssize_t _first_bad_index(const int64_t *idx, size_t k, int64_t limit) noexcept nogil:
    cdef size_t i
    for i in range(k):
        if idx[i] < 0 or idx[i] >= limit:
            return <Py_ssize_t>i
    return -1


def _dense_args(query, name, int ndim, matrix):
    """Check a query (ndim 1) or queries (ndim 2, one per row) against a matrix's rows -> (n_words, n_rows)."""
    _check(query, name, np.uint64, ndim)
    _check(matrix, "matrix", np.uint64, 2)
    n_words = matrix.shape[1]
    if query.shape[ndim - 1] != n_words:
        raise ValueError(f"{name} {'has' if ndim == 1 else 'have'} {query.shape[ndim - 1]} words but matrix rows "
                         f"have {n_words}")
    return n_words, matrix.shape[0]


def _check_rows(rows, int64_t n_rows):
    """Check int64 row indices into a matrix of n_rows rows -> how many."""
    _check(rows, "rows", np.int64, 1)
    cdef size_t k = rows.shape[0]
    cdef const int64_t[::1] rv = rows
    cdef Py_ssize_t bad
    if k:
        bad = _first_bad_index(&rv[0], k, n_rows)
        if bad >= 0:
            raise ValueError(f"rows[{bad}] = {rows[bad]} is out of range for a matrix with {n_rows} rows")
    return k


def and_count_dense(query, matrix, rows=None, out=None, n_threads=None):
    """out[i] = popcount(query & matrix[rows[i]]) -> int64[k].

    query: uint64[n_words]; matrix: uint64[n_features, n_words] C-contiguous;
    rows: int64 row indices into matrix (default: all rows, k = n_features).
    """
    cdef size_t n_words
    cdef int64_t n_rows
    n_words, n_rows = _dense_args(query, "query", 1, matrix)
    cdef const int64_t[::1] rv
    cdef const int64_t *rp = NULL
    cdef size_t k
    if rows is None:
        k = <size_t>n_rows
    else:
        k = _check_rows(rows, n_rows)
        if k:
            rv = rows
            rp = &rv[0]
    out = _check_out(out, "out", np.int64, (k,))
    cdef int64_t[::1] ov = out
    if k == 0:
        return out
    if n_words == 0:
        out[:] = 0
        return out
    cdef const uint64_t[::1] qv = query
    cdef const uint64_t[:, ::1] mv = matrix
    cdef int nt = _pkg.resolve_threads(n_threads, k * n_words)
    if _pkg.releases_gil(k * n_words, nt):
        with nogil:
            _dense_core(&qv[0], &mv[0, 0], n_words, rp, k, &ov[0], nt)
    else:
        _dense_core(&qv[0], &mv[0, 0], n_words, rp, k, &ov[0], nt)
    return out


def and_count_dense_many(queries, matrix, rows=None, out=None, n_threads=None):
    """out[j, i] = popcount(queries[j] & matrix[rows[i]]) -> int64[n_queries, k]: and_count_dense of several
    queries in one pass over the rows, each row block read from memory once for all of them (a shared scan).

    queries: uint64[n_queries, n_words] C-contiguous; matrix, rows: as and_count_dense.
    """
    cdef size_t n_words
    cdef int64_t n_rows
    n_words, n_rows = _dense_args(queries, "queries", 2, matrix)
    if rows is None:
        rows = np.arange(n_rows, dtype=np.int64)
    cdef size_t k = _check_rows(rows, n_rows)
    cdef size_t n_q = queries.shape[0]
    cdef const int64_t[::1] rv = rows
    out = _check_out(out, "out", np.int64, (n_q, k))
    if k == 0 or n_q == 0:
        return out
    if n_words == 0:
        out[:] = 0
        return out
    cdef const uint64_t[:, ::1] qv = queries
    cdef const uint64_t[:, ::1] mv = matrix
    cdef int64_t[:, ::1] ov = out
    cdef int nt = _pkg.resolve_threads(n_threads, n_q * k * n_words)
    if _pkg.releases_gil(n_q * k * n_words, nt):
        with nogil:
            _dense_many_core(&qv[0, 0], n_q, &mv[0, 0], n_words, &rv[0], k, &ov[0, 0], nt)
    else:
        _dense_many_core(&qv[0, 0], n_q, &mv[0, 0], n_words, &rv[0], k, &ov[0, 0], nt)
    return out


cdef void _dense_many_core(const uint64_t *Q, size_t n_q, const uint64_t *M, size_t n_words,
                           const int64_t *rows, size_t k, int64_t *out, int nt) noexcept nogil:
    cdef int t, nc
    cdef size_t lo, hi, groups = (k + 3) // 4
    if nt <= 1 or groups < <size_t>nt:
        segsrv_and_count_rows_many(Q, n_words, n_q, M, n_words, n_words, rows, k, out, k, _MANY_BLOCK_WORDS)
        return
    # chunks of whole row groups (4 rows), handed out dynamically as and_count_dense's
    nc = <int>(groups if groups < <size_t>(8 * nt) else <size_t>(8 * nt))
    for t in prange(nc, num_threads=nt, schedule="dynamic", chunksize=1):
        lo = groups * <size_t>t // <size_t>nc * 4
        hi = groups * <size_t>(t + 1) // <size_t>nc * 4
        if hi > k:
            hi = k
        if lo < hi:
            segsrv_and_count_rows_many(Q, n_words, n_q, M, n_words, n_words, rows + lo, hi - lo, out + lo, k,
                                       _MANY_BLOCK_WORDS)


# sparse: error codes written into out[i] (race-free), turned into ValueError
cdef enum:
    _ERR_FEATURE = -1
    _ERR_OFFSETS = -2
    _ERR_ID = -3


cdef inline int64_t _offsets_ok(const int64_t *offsets, int64_t f, int64_t n_feat,
                                int64_t n_ids) noexcept nogil:
    if f < 0 or f >= n_feat:
        return _ERR_FEATURE
    if offsets[f] < 0 or offsets[f] > offsets[f + 1] or offsets[f + 1] > n_ids:
        return _ERR_OFFSETS
    return 0


cdef void _sparse_core(const uint64_t *q, uint64_t n_bits, const uint32_t *ids, int64_t n_ids,
                       const int64_t *offsets, int64_t n_feat, const int64_t *features,
                       size_t k, int64_t *out, int nt) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t f
    if nt <= 1:
        for i in range(<Py_ssize_t>k):
            if i + 1 < <Py_ssize_t>k:  # the next feature's first ids (its own short stream)
                f = features[i + 1] if features != NULL else <int64_t>(i + 1)
                if 0 <= f < n_feat and 0 <= offsets[f] < n_ids:
                    __builtin_prefetch(ids + offsets[f])
                    __builtin_prefetch(ids + offsets[f] + 16)
            out[i] = _sparse_one(q, n_bits, ids, n_ids, offsets, n_feat, features, i)
    else:
        for i in prange(<Py_ssize_t>k, num_threads=nt, schedule="dynamic", chunksize=8):
            out[i] = _sparse_one(q, n_bits, ids, n_ids, offsets, n_feat, features, i)


cdef int64_t _sparse_one(const uint64_t *q, uint64_t n_bits, const uint32_t *ids, int64_t n_ids,
                         const int64_t *offsets, int64_t n_feat, const int64_t *features,
                         Py_ssize_t i) noexcept nogil:
    cdef int64_t f = features[i] if features != NULL else <int64_t>i
    cdef int64_t err = _offsets_ok(offsets, f, n_feat, n_ids)
    cdef int bad = 0
    cdef size_t c
    if err:
        return err
    c = segsrv_probe_count_path(q, n_bits, ids + offsets[f], <size_t>(offsets[f + 1] - offsets[f]), &bad)
    if bad:
        return _ERR_ID
    return <int64_t>c


cdef int64_t _ids_one(const uint32_t *qids, size_t nq, const uint32_t *ids, int64_t n_ids,
                      const int64_t *offsets, int64_t n_feat, const int64_t *features,
                      Py_ssize_t i) noexcept nogil:
    cdef int64_t f = features[i] if features != NULL else <int64_t>i
    cdef int64_t err = _offsets_ok(offsets, f, n_feat, n_ids)
    if err:
        return err
    return <int64_t>segsrv_intersect_count(qids, nq, ids + offsets[f],
                                           <size_t>(offsets[f + 1] - offsets[f]))


cdef void _ids_core(const uint32_t *qids, size_t nq, const uint32_t *ids, int64_t n_ids,
                    const int64_t *offsets, int64_t n_feat, const int64_t *features,
                    size_t k, int64_t *out, int nt) noexcept nogil:
    cdef Py_ssize_t i
    if nt <= 1:
        for i in range(<Py_ssize_t>k):
            out[i] = _ids_one(qids, nq, ids, n_ids, offsets, n_feat, features, i)
    else:
        for i in prange(<Py_ssize_t>k, num_threads=nt, schedule="dynamic", chunksize=4):
            out[i] = _ids_one(qids, nq, ids, n_ids, offsets, n_feat, features, i)


def _sparse_args(ids, offsets, features):
    _check(ids, "ids", np.uint32, 1)
    _check(offsets, "offsets", np.int64, 1)
    if offsets.shape[0] < 1:
        raise ValueError("offsets must have n_features + 1 >= 1 entries")
    n_feat = offsets.shape[0] - 1
    if features is None:
        k = n_feat
    else:
        _check(features, "features", np.int64, 1)
        k = features.shape[0]
    return n_feat, k


def _raise_sparse_error(out, features, n_feat, n_ids, extra=""):
    i = int(np.argmax(out < 0))
    code = int(out[i])
    f = int(features[i]) if features is not None else i
    if code == _ERR_FEATURE:
        raise ValueError(f"features[{i}] = {f} is out of range for {n_feat} features")
    if code == _ERR_OFFSETS:
        raise ValueError(f"offsets of feature {f} are invalid (must satisfy "
                         f"0 <= offsets[f] <= offsets[f+1] <= len(ids) = {n_ids})")
    raise ValueError(f"feature {f} has an id >= {extra}")


def and_count_sparse(query, ids, offsets, features=None, out=None, n_threads=None):
    """out[i] = number of ids of feature features[i] whose bit is set in query -> int64[k].

    query: dense uint64 bitset; feature j = ids[offsets[j]:offsets[j+1]] (uint32
    ids, int64 offsets); features: int64 feature indices (default: all).
    An id >= 64 * len(query) raises ValueError.
    """
    _check(query, "query", np.uint64, 1)
    n_feat, k = _sparse_args(ids, offsets, features)
    out = _check_out(out, "out", np.int64, (k,))
    if k == 0:
        return out
    cdef const uint64_t[::1] qv = query
    cdef const uint32_t[::1] iv = ids
    cdef const int64_t[::1] ofv = offsets
    cdef const int64_t[::1] fv
    cdef const int64_t *fp = NULL
    cdef int64_t[::1] ov = out
    cdef uint64_t dummy_q = 0
    cdef uint32_t dummy_id = 0
    cdef const uint64_t *qp = &dummy_q
    cdef const uint32_t *ip = &dummy_id
    if features is not None:
        fv = features
        fp = &fv[0]
    if qv.shape[0]:
        qp = &qv[0]
    if iv.shape[0]:
        ip = &iv[0]
    cdef uint64_t n_bits = <uint64_t>qv.shape[0] * 64
    cdef int64_t n_ids = iv.shape[0]
    cdef int64_t nf = n_feat
    cdef size_t kk = k
    # work estimate: average feature length * k probes, each ~_PROBE_WORDS streamed words
    cdef int64_t work = _PROBE_WORDS * ((n_ids * kk) // max(nf, 1) + kk)
    cdef int nt = _pkg.resolve_threads(n_threads, work)
    if _pkg.releases_gil(work, nt):
        with nogil:
            _sparse_core(qp, n_bits, ip, n_ids, &ofv[0], nf, fp, kk, &ov[0], nt)
    else:
        _sparse_core(qp, n_bits, ip, n_ids, &ofv[0], nf, fp, kk, &ov[0], nt)
    if out.min() < 0:
        _raise_sparse_error(out, features, n_feat, n_ids, f"64 * len(query) = {n_bits}")
    return out


cdef Py_ssize_t _first_unsorted(const uint32_t *a, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(1, n):
        if a[i] <= a[i - 1]:
            return <Py_ssize_t>i
    return -1


def and_count_ids(query_ids, ids, offsets, features=None, out=None, n_threads=None):
    """out[i] = |query_ids & ids of feature features[i]| -> int64[k].

    query_ids: sorted unique uint32 ids (checked); feature ids must be sorted
    unique too (not checked; unsorted feature ids give wrong counts, never
    unsafe memory access).  Merge when sizes are similar, galloping search
    when one side is >32x smaller.
    """
    _check(query_ids, "query_ids", np.uint32, 1)
    n_feat, k = _sparse_args(ids, offsets, features)
    out = _check_out(out, "out", np.int64, (k,))
    cdef const uint32_t[::1] qv = query_ids
    cdef Py_ssize_t bad
    cdef size_t nq = qv.shape[0]
    if nq:
        bad = _first_unsorted(&qv[0], nq)
        if bad >= 0:
            raise ValueError(f"query_ids must be sorted ascending and unique "
                             f"(query_ids[{bad - 1}] = {query_ids[bad - 1]} >= "
                             f"query_ids[{bad}] = {query_ids[bad]})")
    if k == 0:
        return out
    cdef const uint32_t[::1] iv = ids
    cdef const int64_t[::1] ofv = offsets
    cdef const int64_t[::1] fv
    cdef const int64_t *fp = NULL
    cdef int64_t[::1] ov = out
    cdef uint32_t dummy_id = 0
    cdef const uint32_t *qp = &dummy_id
    cdef const uint32_t *ip = &dummy_id
    if features is not None:
        fv = features
        fp = &fv[0]
    if nq:
        qp = &qv[0]
    if iv.shape[0]:
        ip = &iv[0]
    cdef int64_t n_ids = iv.shape[0]
    cdef int64_t nf = n_feat
    cdef size_t kk = k
    cdef int64_t work = (n_ids * kk) // max(nf, 1) + kk * min(nq, 64)
    cdef int nt = _pkg.resolve_threads(n_threads, work)
    if _pkg.releases_gil(work, nt):
        with nogil:
            _ids_core(qp, nq, ip, n_ids, &ofv[0], nf, fp, kk, &ov[0], nt)
    else:
        _ids_core(qp, nq, ip, n_ids, &ofv[0], nf, fp, kk, &ov[0], nt)
    if out.min() < 0:
        _raise_sparse_error(out, features, n_feat, n_ids)
    return out


# ---------------------------------------------------------------------------
# element-wise ops
# ---------------------------------------------------------------------------

cdef enum:
    _OP_AND = 0
    _OP_OR = 1
    _OP_ANDNOT = 2


cdef void _binop_range(int op, const uint64_t *a, const uint64_t *b, uint64_t *o,
                       size_t lo, size_t hi) noexcept nogil:
    # out may alias a or b exactly: each word is read before it is written
    cdef size_t i
    if op == _OP_AND:
        for i in range(lo, hi):
            o[i] = a[i] & b[i]
    elif op == _OP_OR:
        for i in range(lo, hi):
            o[i] = a[i] | b[i]
    else:
        for i in range(lo, hi):
            o[i] = a[i] & ~b[i]


cdef void _binop_part(int t, int nt, int op, const uint64_t *a, const uint64_t *b,
                      uint64_t *o, size_t n) noexcept nogil:
    cdef size_t lo = (n * <size_t>t // <size_t>nt) & ~(<size_t>7)
    cdef size_t hi = n if t == nt - 1 else (n * <size_t>(t + 1) // <size_t>nt) & ~(<size_t>7)
    _binop_range(op, a, b, o, lo, hi)


cdef void _binop_core(int op, const uint64_t *a, const uint64_t *b, uint64_t *o, size_t n,
                      int nt) noexcept nogil:
    cdef int t
    if nt <= 1:
        _binop_range(op, a, b, o, 0, n)
    else:
        for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            _binop_part(t, nt, op, a, b, o, n)


def _binop(int op, a, b, out):
    _check(a, "a", np.uint64, 1)
    _check(b, "b", np.uint64, 1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
    out = _check_out(out, "out", np.uint64, a.shape)
    _check_alias(out, "out", ("a", a), ("b", b))
    cdef size_t n = a.shape[0]
    if n == 0:
        return out
    cdef const uint64_t[::1] av = a
    cdef const uint64_t[::1] bv = b
    cdef uint64_t[::1] ov = out
    cdef int nt = _pkg.resolve_threads(None, 3 * n)
    if _pkg.releases_gil(3 * n, nt):
        with nogil:
            _binop_core(op, &av[0], &bv[0], &ov[0], n, nt)
    else:
        _binop_core(op, &av[0], &bv[0], &ov[0], n, nt)
    return out


def bitset_and(a, b, out=None):
    """out = a & b (out may be a or b itself)."""
    return _binop(_OP_AND, a, b, out)


def bitset_or(a, b, out=None):
    """out = a | b (out may be a or b itself)."""
    return _binop(_OP_OR, a, b, out)


def bitset_andnot(a, b, out=None):
    """out = a & ~b (out may be a or b itself)."""
    return _binop(_OP_ANDNOT, a, b, out)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------

cdef uint64_t _masked_popcount(const uint64_t *b, size_t n_words, uint64_t n_bits) noexcept nogil:
    cdef size_t full = <size_t>(n_bits >> 6)
    cdef uint64_t c
    cdef uint64_t rem = n_bits & 63
    if full > n_words:
        full = n_words
    c = segsrv_popcount(b, full)
    if rem and full < n_words:
        c += segsrv_popcount_word(b[full] & ((<uint64_t>1 << rem) - 1))
    return c


cdef inline uint64_t segsrv_popcount_word(uint64_t x) noexcept nogil:
    return segsrv_popcount(&x, 1)


def bitset_to_ids(bits, n_bits=None):
    """Sorted uint32 positions of the set bits (bits >= n_bits ignored)."""
    _check(bits, "bits", np.uint64, 1)
    cdef size_t n_words = bits.shape[0]
    cdef uint64_t nb
    if n_bits is None:
        nb = <uint64_t>n_words * 64
    else:
        nb = _check_int(n_bits, "n_bits")
        if nb > <uint64_t>n_words * 64:
            raise ValueError(f"n_bits = {nb} exceeds 64 * len(bits) = {n_words * 64}")
    if nb > (<uint64_t>1 << 32):
        raise ValueError(f"n_bits = {nb} exceeds the uint32 id range (2**32)")
    if n_words == 0 or nb == 0:
        return np.empty(0, dtype=np.uint32)
    cdef const uint64_t[::1] bv = bits
    cdef uint64_t cnt
    if _pkg.releases_gil(n_words, 1):
        with nogil:
            cnt = _masked_popcount(&bv[0], n_words, nb)
    else:
        cnt = _masked_popcount(&bv[0], n_words, nb)
    out = np.empty(cnt, dtype=np.uint32)
    if cnt == 0:
        return out
    cdef uint32_t[::1] ov = out
    if _pkg.releases_gil(n_words + cnt, 1):
        with nogil:
            segsrv_bits_to_ids(&bv[0], n_words, nb, &ov[0])
    else:
        segsrv_bits_to_ids(&bv[0], n_words, nb, &ov[0])
    return out


cdef inline void _prefetch_member_values(const uint64_t *bits, size_t n_words, size_t w,
                                         const double *values) noexcept nogil:
    """Prefetch the values of word w + _GATHER_AHEAD's set bits (none past the last word)."""
    cdef uint64_t ahead
    cdef size_t j = 0
    if w + _GATHER_AHEAD >= n_words:
        return
    # byte j of a word is 8 rows, one 64-byte line of float64 values (the columns are 64-byte aligned):
    # fetch the lines that hold set bits, _GATHER_AHEAD words ahead (a gather is latency-bound on a
    # column the counts pushed out of cache: 0.95 ms per 100k rows)
    ahead = bits[w + _GATHER_AHEAD]
    while ahead:
        if ahead & 0xFF:
            __builtin_prefetch(values + ((w + _GATHER_AHEAD) << 6) + 8 * j)
        ahead >>= 8
        j += 1


cdef inline uint64_t _member_bits(const uint64_t *bits, size_t w, uint64_t n_bits) noexcept nogil:
    """Word w of the bitset without the bits of rows at or past n_bits (rows w * 64 + bit)."""
    cdef uint64_t base = <uint64_t>w << 6
    if base >= n_bits:
        return 0
    if base + 64 > n_bits:
        return bits[w] & ((~(<uint64_t>0)) >> (64 - (n_bits - base)))
    return bits[w]


def _check_rows_bits(bits, column, name):
    """bits must be the bitset of a column's rows: (len(column) + 63) // 64 words."""
    if (column.shape[0] + 63) // 64 != bits.shape[0]:
        raise ValueError(f"bits must have (len({name}) + 63) // 64 = {(column.shape[0] + 63) // 64} words, "
                         f"got {bits.shape[0]}")


def _zeroed_bins(out, n_bins):
    """out (validated) or a new int64[n_bins], zeroed: a histogram's bins."""
    out = _check_out(out, "out", np.int64, (n_bins,))
    out[:] = 0
    return out


cdef size_t _gather_present_core(const uint64_t *bits, size_t n_words, uint64_t n_bits, const double *values,
                                 double *out) noexcept nogil:
    """values[row] for the set bits below n_bits, in row order, NaN skipped; returns how many written."""
    cdef size_t w, c = 0
    cdef uint64_t x, base
    cdef double v
    for w in range(n_words):
        _prefetch_member_values(bits, n_words, w, values)
        x = _member_bits(bits, w, n_bits)
        base = <uint64_t>w << 6
        while x:
            v = values[base + <uint64_t>__builtin_ctzll(x)]
            if v == v:  # not NaN
                out[c] = v
                c += 1
            x &= x - 1
    return c


def gather_present(bits, values, out=None):
    """The non-NaN values[row] of the rows whose bit is set, in row order -> float64[k] (a view of `out`
    when given: float64 of at least popcount(bits) entries).

    bits: uint64 bitset of len(values) rows (64 * len(bits) >= len(values) > 64 * (len(bits) - 1));
    values: float64, NaN = missing. The gather of Profile's numeric summaries, in one pass over the
    bitset without listing its rows first (numpy's values[rows] converts the ids to intp first).
    """
    _check(bits, "bits", np.uint64, 1)
    _check(values, "values", np.float64, 1)
    _check_rows_bits(bits, values, "values")
    cdef size_t n_words = bits.shape[0]
    cdef uint64_t nb = values.shape[0]
    cdef uint64_t cnt = 0
    cdef const uint64_t[::1] bv = bits
    if n_words:
        if _pkg.releases_gil(n_words, 1):
            with nogil:
                cnt = _masked_popcount(&bv[0], n_words, nb)
        else:
            cnt = _masked_popcount(&bv[0], n_words, nb)
    if out is None:
        out = np.empty(cnt, dtype=np.float64)
    else:
        _check(out, "out", np.float64, 1)
        if out.shape[0] < <Py_ssize_t>cnt:
            raise ValueError(f"out must hold at least {cnt} values, got {out.shape[0]}")
    if cnt == 0:
        return out[:0]
    cdef const double[::1] vv = values
    cdef double[::1] ov = out
    cdef size_t k
    if _pkg.releases_gil(n_words + 4 * cnt, 1):
        with nogil:
            k = _gather_present_core(&bv[0], n_words, nb, &vv[0], &ov[0])
    else:
        k = _gather_present_core(&bv[0], n_words, nb, &vv[0], &ov[0])
    return out[:k]


cdef int64_t _histogram_present_core(const uint64_t *bits, size_t n_words, uint64_t n_bits,
                                    const double *values, double lo, int64_t n_bins,
                                    int64_t *out) noexcept nogil:
    """out[v - lo] += 1 for each non-NaN v = values[row] of the set bits below n_bits; returns -1, or the
    first row whose value is not an integer in [lo, lo + n_bins) (out then holds the counts of the rows
    before it). lo + k is exact for every bin k (the wrapper's bounds), so `lo + k == v` tells a value of
    bin k from a fraction, even one that v - lo rounds to an integer."""
    cdef size_t w
    cdef uint64_t x, base, row
    cdef double v, offset
    cdef double top = <double>n_bins  # exact: n_bins <= 2^53
    cdef int64_t k
    for w in range(n_words):
        _prefetch_member_values(bits, n_words, w, values)
        x = _member_bits(bits, w, n_bits)
        base = <uint64_t>w << 6
        while x:
            row = base + <uint64_t>__builtin_ctzll(x)
            v = values[row]
            if v == v:  # not NaN
                offset = v - lo
                if not (offset >= 0 and offset < top):  # below lo, at or past lo + n_bins, infinite
                    return <int64_t>row
                k = <int64_t>offset  # 0 <= k < n_bins whatever the fraction
                if lo + <double>k != v:
                    return <int64_t>row
                out[k] += 1
            x &= x - 1
    return -1


def histogram_present(bits, values, lo, n_bins, out=None):
    """out[j] = how many rows whose bit is set have the value lo + j -> int64[n_bins] (`out` zeroed first
    when given, allocated otherwise). NaN values are skipped; -0.0 counts as 0.

    bits, values: as gather_present's. lo: an integer (int or integral float), n_bins >= 1, with
    -2^53 <= lo, lo + n_bins <= 2^53 and n_bins <= 2^53 (every bin's value and n_bins exact in float64).
    A set row whose value is not NaN and not an integer in [lo, lo + n_bins) raises ValueError naming the
    row and the value (nothing is written outside `out`; its counts are then partial). The histogram of
    Profile's numeric summaries of integer fields of a small span, in one pass over the bitset and the
    members' values.
    """
    _check(bits, "bits", np.uint64, 1)
    _check(values, "values", np.float64, 1)
    if isinstance(lo, (bool, np.bool_)) or not isinstance(lo, (int, float, np.integer, np.floating)):
        raise TypeError(f"lo must be an int or a float, got {type(lo).__name__}")
    if isinstance(lo, (float, np.floating)) and not (math.isfinite(lo) and lo == math.floor(lo)):
        raise ValueError(f"lo must be an integer, got {lo!r}")
    n_bins = _check_int(n_bins, "n_bins", 1)
    if int(lo) < -(1 << 53) or int(lo) + n_bins > (1 << 53) or n_bins > (1 << 53):
        raise ValueError(f"lo = {lo!r} and n_bins = {n_bins} must satisfy -2**53 <= lo, lo + n_bins <= 2**53 "
                         f"and n_bins <= 2**53")
    _check_rows_bits(bits, values, "values")
    cdef size_t n_words = bits.shape[0]
    cdef uint64_t nb = values.shape[0]
    out = _zeroed_bins(out, n_bins)
    cdef int64_t[::1] ov = out
    cdef size_t nbins = n_bins
    if n_words == 0:
        return out
    cdef const uint64_t[::1] bv = bits
    cdef const double[::1] vv = values
    cdef double lo_value = <double>int(lo)
    cdef int64_t bad
    if _pkg.releases_gil(n_words + nb // 8, 1):
        with nogil:
            bad = _histogram_present_core(&bv[0], n_words, nb, &vv[0], lo_value, <int64_t>nbins, &ov[0])
    else:
        bad = _histogram_present_core(&bv[0], n_words, nb, &vv[0], lo_value, <int64_t>nbins, &ov[0])
    if bad >= 0:
        raise ValueError(f"values[{bad}] = {float(values[bad])!r} is not an integer in "
                         f"[lo, lo + n_bins) = [{lo_value!r}, {lo_value + n_bins!r})")
    return out


ctypedef fused bin_code:
    uint8_t
    uint16_t


cdef void _histogram_codes_core(const uint64_t *bits, size_t n_words, uint64_t n_bits, const bin_code *codes,
                                size_t n_bins, int64_t *out) noexcept nogil:
    """out[codes[row]] += 1 for the set bits below n_bits whose code is below n_bins."""
    cdef size_t w
    cdef uint64_t x, base
    cdef size_t c
    for w in range(n_words):
        x = _member_bits(bits, w, n_bits)
        base = <uint64_t>w << 6
        while x:
            c = codes[base + <uint64_t>__builtin_ctzll(x)]
            if c < n_bins:
                out[c] += 1
            x &= x - 1


def histogram_codes_present(bits, codes, n_bins, out=None):
    """out[j] = how many rows whose bit is set have code j -> int64[n_bins] (`out` zeroed first when
    given, allocated otherwise); codes at or above n_bins (an absent value's) are not counted.

    bits: uint64[(len(codes) + 63) // 64]; codes: uint8 or uint16, one per row; 1 <= n_bins <= 2^16.
    histogram_present over a column's small-integer codes (value - lo, kept beside the snapshot by
    the engine): one byte or two per row instead of eight, so a segment's values of a column the counts
    pushed out of cache are read from 1-2 MB per million rows instead of 8.
    """
    _check(bits, "bits", np.uint64, 1)
    if not isinstance(codes, np.ndarray) or codes.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"codes must be a numpy.ndarray of dtype uint8 or uint16, got "
                        f"{type(codes).__name__ if not isinstance(codes, np.ndarray) else codes.dtype}")
    _check(codes, "codes", codes.dtype, 1)
    n_bins = _check_int(n_bins, "n_bins", 1)
    if n_bins > (1 << 16):
        raise ValueError(f"n_bins must be at most 2**16 = 65536, got {n_bins}")
    _check_rows_bits(bits, codes, "codes")
    cdef size_t n_words = bits.shape[0]
    cdef uint64_t nb = codes.shape[0]
    out = _zeroed_bins(out, n_bins)
    cdef int64_t[::1] ov = out
    cdef size_t nbins = n_bins
    if n_words == 0:
        return out
    cdef const uint64_t[::1] bv = bits
    cdef const uint8_t[::1] c8
    cdef const uint16_t[::1] c16
    if codes.dtype == np.uint8:
        c8 = codes
        if _pkg.releases_gil(n_words + nb // 8, 1):
            with nogil:
                _histogram_codes_core(&bv[0], n_words, nb, &c8[0], nbins, &ov[0])
        else:
            _histogram_codes_core(&bv[0], n_words, nb, &c8[0], nbins, &ov[0])
    else:
        c16 = codes
        if _pkg.releases_gil(n_words + nb // 8, 1):
            with nogil:
                _histogram_codes_core(&bv[0], n_words, nb, &c16[0], nbins, &ov[0])
        else:
            _histogram_codes_core(&bv[0], n_words, nb, &c16[0], nbins, &ov[0])
    return out


cdef Py_ssize_t _ids_to_bits_core(const uint32_t *ids, size_t n, uint64_t *o,
                                  uint64_t n_bits) noexcept nogil:
    cdef size_t i
    cdef uint32_t x
    for i in range(n):
        x = ids[i]
        if x >= n_bits:
            return <Py_ssize_t>i
        o[x >> 6] |= (<uint64_t>1) << (x & 63)
    return -1


def ids_to_bitset(ids, n_words, out=None):
    """Dense uint64[n_words] bitset with the bits of ``ids`` (any order) set.

    ``out`` (if given) is zeroed first.  Raises ValueError if an id >= 64 * n_words.
    """
    _check(ids, "ids", np.uint32, 1)
    n_words = _check_int(n_words, "n_words")
    out = _check_out(out, "out", np.uint64, (n_words,))
    if _overlaps(out, ids):
        raise ValueError("out must not share memory with ids")
    cdef size_t nw = n_words
    cdef uint64_t[::1] ov
    cdef const uint32_t[::1] iv = ids
    cdef Py_ssize_t bad = -1
    if nw:
        ov = out
        if _pkg.releases_gil(nw, 1):
            with nogil:
                memset(&ov[0], 0, nw * 8)
        else:
            memset(&ov[0], 0, nw * 8)
    cdef size_t n = iv.shape[0]
    if n == 0:
        return out
    if nw == 0:
        raise ValueError(f"ids[0] = {ids[0]} is out of range for n_words = 0")
    if _pkg.releases_gil(nw + n, 1):
        with nogil:
            bad = _ids_to_bits_core(&iv[0], n, &ov[0], <uint64_t>nw * 64)
    else:
        bad = _ids_to_bits_core(&iv[0], n, &ov[0], <uint64_t>nw * 64)
    if bad >= 0:
        raise ValueError(f"ids[{bad}] = {ids[bad]} is out of range for n_words = {nw} "
                         f"({nw * 64} bits)")
    return out


cdef Py_ssize_t _set_bits_check(const int64_t *rows, const uint32_t *ids, size_t n,
                                int64_t n_rows, uint64_t n_bits) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if rows[i] < 0 or rows[i] >= n_rows or ids[i] >= n_bits:
            return <Py_ssize_t>i
    return -1


cdef void _set_bits_core(uint64_t *M, size_t stride, const int64_t *rows, const uint32_t *ids,
                         size_t n) noexcept nogil:
    cdef size_t i
    cdef uint32_t x
    for i in range(n):
        x = ids[i]
        M[<size_t>rows[i] * stride + (x >> 6)] |= (<uint64_t>1) << (x & 63)


def set_bits(matrix, matrix_rows, ids):
    """In place: for each k, set bit ids[k] of row matrix_rows[k] of the 2-D matrix.

    matrix: writable uint64[n_rows, n_words] C-contiguous; matrix_rows: int64;
    ids: uint32; all bounds are checked before anything is written.
    """
    _check(matrix, "matrix", np.uint64, 2)
    if not matrix.flags.writeable:
        raise ValueError("matrix must be writable")
    _check(matrix_rows, "matrix_rows", np.int64, 1)
    _check(ids, "ids", np.uint32, 1)
    if matrix_rows.shape[0] != ids.shape[0]:
        raise ValueError(f"matrix_rows and ids must have the same length, got "
                         f"{matrix_rows.shape[0]} and {ids.shape[0]}")
    cdef size_t n = ids.shape[0]
    if n == 0:
        return None
    cdef int64_t n_rows = matrix.shape[0]
    cdef size_t stride = matrix.shape[1]
    cdef const int64_t[::1] rv = matrix_rows
    cdef const uint32_t[::1] iv = ids
    cdef Py_ssize_t bad
    with nogil:
        bad = _set_bits_check(&rv[0], &iv[0], n, n_rows, <uint64_t>stride * 64)
    if bad >= 0:
        raise ValueError(f"(matrix_rows[{bad}], ids[{bad}]) = ({matrix_rows[bad]}, {ids[bad]}) "
                         f"is out of range for a matrix of shape {matrix.shape} "
                         f"({stride * 64} bits per row)")
    cdef uint64_t[:, ::1] mv = matrix
    with nogil:
        _set_bits_core(&mv[0, 0], stride, &rv[0], &iv[0], n)
    return None
