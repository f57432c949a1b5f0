# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""All-pairs co-occurrence counts over bitsets (segsrv._kernels.cooccur).

A *feature set* is k features over the same n_words-word bitsets, given as

* a dense part: rows ``dense_rows`` (int64, default all, duplicates allowed)
  of a C-contiguous ``uint64[n_dense, n_words]`` matrix (a read-only
  ``np.memmap`` is fine), and
* a sparse part: features ``sparse_features`` (int64, default all) of a
  sparse store, feature f = ``ids[offsets[f]:offsets[f+1]]`` (sorted unique
  uint32 ids, checked, each < 64 * n_words).

Its order is the selected dense rows first, then the selected sparse features.

``cooccurrence`` returns the symmetric ``int64[k, k]`` of ``|F_i & F_j|`` (the
diagonal holds each feature's count); ``cross_cooccurrence(left, ...)``
returns ``int64[kl, k]`` of ``|left_i & F_j|`` for materialised bitsets
``left``.  Each kind of pair takes its cheaper path:

* dense x dense: one cache-blocked pass (cooccur.h): tiles of TILE x TILE rows
  times blocks of BLOCK words (a tile's rows stay in L2), register-blocked
  micro-tiles (4x4 rows with AVX-512 VPOPCNTDQ, 2x2 otherwise) on the
  dispatched CPU path; only tiles on or above the diagonal, then mirrored.
  OpenMP over tiles (dynamic schedule; few tiles -> also split the words, each
  (tile, word range) into its own buffer, summed after).
* a sparse feature with m ids: materialised as a bitset (and counted by the
  dense pass) when ``m * PROBE_WORDS[path] >= n_words`` (a probe costs about
  PROBE_WORDS pair-words of the dense pass), else kept sparse:
  dense x sparse probes each id's bit in the dense row (cost m), sparse x
  sparse is a sorted-set intersection (merge, or galloping when one side is
  >32x smaller).  Materialised bitsets are capped at MATERIALISE_MAX_BYTES
  (the largest features first).

Same two-layer design as bitset.pyx: checked wrappers (``_check``), then
``noexcept nogil`` cores on raw pointers with the GIL released.  The CPU path
is the one segsrv._kernels.bitset uses (``cpu_path()``, ``set_cpu_path``,
``SEGSRV_CPU_PATH``), read at each call.  Counts are exact integers: the
result does not depend on the path, the blocking or the thread count.
"""
import numpy as np

import segsrv._kernels as _pkg
from segsrv._kernels import bitset as _bitset
from segsrv._kernels.bitset import PROBE_WORDS, _check, _check_out

from cython.parallel cimport prange
from libc.stdint cimport uint64_t, uint32_t, int64_t
from libc.string cimport memset

cdef extern from "cooccur.h" nogil:
    int segsrv_max_level()
    ctypedef void (*segsrv_cooc_tile_fn)(const uint64_t **A, size_t na, const uint64_t **B,
                                         size_t nb, size_t w0, size_t len, int64_t *out,
                                         size_t ldo, int tri) noexcept nogil
    segsrv_cooc_tile_fn segsrv_cooc_tile_for(int level)
    void segsrv_cooc_set_ids(uint64_t *row, const uint32_t *ids, size_t n)

cdef extern from "sorted_ids.h" nogil:
    size_t segsrv_intersect_count(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
    size_t segsrv_probe_count(const uint64_t *q, uint64_t n_bits, const uint32_t *ids,
                              size_t n, int *bad)

__all__ = ["cooccurrence", "cross_cooccurrence"]

_PATH_NAMES = ("generic", "popcnt", "avx2", "avx512vpopcntdq")
cdef int _MAX_LEVEL = segsrv_max_level()

# Tuning (see _set_tuning).  TILE rows x TILE rows per work item; BLOCK words
# per tile call: 2 * TILE * BLOCK * 8 bytes = 512 KiB stay in L2, one
# micro-row of A (4 * BLOCK * 8 = 16 KiB) in L1.
cdef size_t _TILE = 64
cdef size_t _BLOCK = 512
# One probe of a sparse id costs about this many pair-words of the dense pass,
# by path generic, popcnt, avx2, avx512vpopcntdq (crossover of probing vs
# materialising, measured on Sapphire Rapids at 1M bits: ~1 ns per probe vs
# 13 / 4.5 / 3.2 / 1.0 G pair-words/s per core; bench/cooccurrence.py
# --calibrate re-measures it).  Materialise a sparse feature of m ids when
# m * PROBE_WORDS >= n_words.
_PROBE_WORDS = [1.0, 3.2, 4.2, 13.0]
_MATERIALISE = None            # None: the cost rule; True / False: always / never (tests)
MATERIALISE_MAX_BYTES = 512 << 20


def _set_tuning(tile=None, block=None, probe_words=None, materialise="keep"):
    """Tuning hook (tests and benchmarks only).  Returns the previous settings as a dict.

    tile: rows per tile side; block: words per tile call; probe_words: list of 4
    floats (by path); materialise: None (cost rule) | True | False.
    """
    global _TILE, _BLOCK, _PROBE_WORDS, _MATERIALISE
    old = {"tile": _TILE, "block": _BLOCK, "probe_words": list(_PROBE_WORDS),
           "materialise": _MATERIALISE}
    if tile is not None:
        if tile < 4:
            raise ValueError("tile must be >= 4")
        _TILE = tile
    if block is not None:
        if block < 1:
            raise ValueError("block must be >= 1")
        _BLOCK = block
    if probe_words is not None:
        _PROBE_WORDS = [float(x) for x in probe_words]
    if materialise != "keep":
        _MATERIALISE = materialise
    return old


cdef int _level():
    """Dispatch level of segsrv._kernels.bitset (set_cpu_path / SEGSRV_CPU_PATH)."""
    cdef int level = _PATH_NAMES.index(_bitset.cpu_path())
    return level if level <= _MAX_LEVEL else _MAX_LEVEL


def _path_in_use():
    """The path of the tiles the next call will use (tests)."""
    return _PATH_NAMES[_level()]


# ---------------------------------------------------------------------------
# dense x dense: tiles over the row-pointer lists
# ---------------------------------------------------------------------------

cdef struct _DenseJob:
    segsrv_cooc_tile_fn fn
    const uint64_t **A
    const uint64_t **B
    size_t na
    size_t nb
    size_t tile
    size_t block
    size_t n_words
    size_t nseg
    const int64_t *items     # (tile_i, tile_j, seg) triples
    int64_t *out
    size_t ldo
    size_t seg_stride
    int tri


cdef void _dense_item(const _DenseJob *J, Py_ssize_t it) noexcept nogil:
    cdef size_t ti = <size_t>J.items[3 * it]
    cdef size_t tj = <size_t>J.items[3 * it + 1]
    cdef size_t seg = <size_t>J.items[3 * it + 2]
    cdef size_t i0 = ti * J.tile
    cdef size_t j0 = tj * J.tile
    cdef size_t mi = J.na - i0 if J.na - i0 < J.tile else J.tile
    cdef size_t mj = J.nb - j0 if J.nb - j0 < J.tile else J.tile
    cdef size_t w_lo = J.n_words * seg // J.nseg
    cdef size_t w_hi = J.n_words * (seg + 1) // J.nseg
    cdef int64_t *o = J.out + seg * J.seg_stride + i0 * J.ldo + j0
    cdef int tri = J.tri and ti == tj
    cdef size_t w, ln
    w = w_lo
    while w < w_hi:
        ln = w_hi - w if w_hi - w < J.block else J.block
        J.fn(J.A + i0, mi, J.B + j0, mj, w, ln, o, J.ldo, tri)
        w += ln


cdef void _dense_core(const _DenseJob *J, Py_ssize_t n_items, int nt) noexcept nogil:
    cdef Py_ssize_t it
    if nt <= 1:
        for it in range(n_items):
            _dense_item(J, it)
    else:
        # dynamic: a descheduled thread (shared machine) does not hold up the others
        for it in prange(n_items, num_threads=nt, schedule="dynamic", chunksize=1):
            _dense_item(J, it)


cdef void _mirror_upper(int64_t *m, size_t n, size_t ld) noexcept nogil:
    cdef size_t i, j
    for i in range(1, n):
        for j in range(i):
            m[i * ld + j] = m[j * ld + i]


cdef void _add_parts(const int64_t *parts, size_t nseg, size_t na, size_t nb,
                     int64_t *out, size_t ldo) noexcept nogil:
    cdef size_t s, i, j
    cdef const int64_t *p
    for s in range(nseg):
        p = parts + s * na * nb
        for i in range(na):
            for j in range(nb):
                out[i * ldo + j] += p[i * nb + j]


_ONE_ITEM = np.zeros((1, 3), dtype=np.int64)
_ONE_ITEM.setflags(write=False)


def _tile_items(size_t na, size_t nb, bint tri, size_t tile, size_t n_words, size_t block,
                int nt):
    """Work items (tile_i, tile_j, seg) and the number of word segments."""
    n_ti = (na + tile - 1) // tile
    n_tj = (nb + tile - 1) // tile
    n_tiles = n_ti * (n_ti + 1) // 2 if tri else n_ti * n_tj
    nseg = 1
    if nt > 1 and n_tiles < 4 * nt:
        nseg = max(1, min(-(-4 * nt // n_tiles), n_words // block))
    if n_tiles == 1 and nseg == 1:
        return _ONE_ITEM, 1
    if tri:
        ti, tj = np.triu_indices(n_ti)
    else:
        ti, tj = np.divmod(np.arange(n_tiles, dtype=np.int64), n_tj)
    items = np.empty((n_tiles * nseg, 3), dtype=np.int64)
    items[:, 0] = np.repeat(ti, nseg)
    items[:, 1] = np.repeat(tj, nseg)
    items[:, 2] = np.tile(np.arange(nseg, dtype=np.int64), n_tiles)
    return items, nseg


cdef _run_dense(size_t[::1] a_ptrs, size_t na, size_t[::1] b_ptrs, size_t nb, bint tri,
                size_t n_words, int64_t[:, ::1] inner, int nt):
    """inner[:na, :nb] += |A_i & B_j| (tri: A is B, upper triangle then mirrored)."""
    cdef _DenseJob J
    if na == 0 or nb == 0 or n_words == 0:
        return
    items, nseg_obj = _tile_items(na, nb, tri, _TILE, n_words, _BLOCK, nt)
    cdef size_t nseg = nseg_obj
    cdef const int64_t[:, ::1] iv = items
    cdef int64_t[::1] pv
    J.fn = segsrv_cooc_tile_for(_level())
    J.A = <const uint64_t **>&a_ptrs[0]
    J.B = <const uint64_t **>&b_ptrs[0]
    J.na = na
    J.nb = nb
    J.tile = _TILE
    J.block = _BLOCK
    J.n_words = n_words
    J.nseg = nseg
    J.items = &iv[0, 0]
    J.tri = tri
    cdef Py_ssize_t n_items = iv.shape[0]
    if nseg == 1:
        J.out = &inner[0, 0]
        J.ldo = inner.shape[1]
        J.seg_stride = 0
        with nogil:
            _dense_core(&J, n_items, nt)
    else:
        parts = np.zeros(nseg * na * nb, dtype=np.int64)
        pv = parts
        J.out = &pv[0]
        J.ldo = nb
        J.seg_stride = na * nb
        with nogil:
            _dense_core(&J, n_items, nt)
            _add_parts(&pv[0], nseg, na, nb, &inner[0, 0], inner.shape[1])
    if tri:
        with nogil:
            _mirror_upper(&inner[0, 0], na, inner.shape[1])


# ---------------------------------------------------------------------------
# sparse features: validation, materialisation, probes, intersections
# ---------------------------------------------------------------------------

cdef enum:
    _ERR_FEATURE = 1
    _ERR_OFFSETS = 2
    _ERR_ID = 3
    _ERR_ORDER = 4


cdef int _check_sparse_core(const uint32_t *ids, int64_t n_ids, const int64_t *offsets,
                            int64_t n_sparse, const int64_t *feats, size_t ks,
                            uint64_t n_bits, int64_t *where) noexcept nogil:
    """0, or an error code with where[0] = position in feats, where[1] = index into ids."""
    cdef size_t i
    cdef int64_t f, lo, hi, j
    for i in range(ks):
        f = feats[i]
        where[0] = <int64_t>i
        if f < 0 or f >= n_sparse:
            return _ERR_FEATURE
        lo = offsets[f]
        hi = offsets[f + 1]
        if lo < 0 or lo > hi or hi > n_ids:
            return _ERR_OFFSETS
        for j in range(lo, hi):
            if <uint64_t>ids[j] >= n_bits:
                where[1] = j
                return _ERR_ID
            if j > lo and ids[j] <= ids[j - 1]:
                where[1] = j
                return _ERR_ORDER
    return 0


def _sparse_selection(ids, offsets, sparse_features, uint64_t n_bits):
    """Validated (ids, offsets, int64 feature indices) of the sparse part, or Nones."""
    if ids is None and offsets is None:
        if sparse_features is not None:
            raise ValueError("sparse_features needs ids and offsets")
        return None, None, np.zeros(0, dtype=np.int64)
    if ids is None or offsets is None:
        raise ValueError("ids and offsets must be given together (or both None)")
    _check(ids, "ids", np.uint32, 1)
    _check(offsets, "offsets", np.int64, 1)
    if offsets.shape[0] < 1:
        raise ValueError("offsets must have n_sparse + 1 >= 1 entries")
    n_sparse = offsets.shape[0] - 1
    if sparse_features is None:
        feats = np.arange(n_sparse, dtype=np.int64)
    else:
        _check(sparse_features, "sparse_features", np.int64, 1)
        feats = sparse_features
    cdef size_t ks = feats.shape[0]
    if ks == 0:
        return ids, offsets, feats
    cdef const uint32_t[::1] iv = ids
    cdef const int64_t[::1] ofv = offsets
    cdef const int64_t[::1] fv = feats
    cdef uint32_t dummy = 0
    cdef const uint32_t *ip = &iv[0] if iv.shape[0] else &dummy
    cdef int64_t where[2]
    cdef int err
    cdef int64_t n_ids = iv.shape[0]
    cdef int64_t ns = n_sparse
    where[0] = 0
    where[1] = 0
    with nogil:
        err = _check_sparse_core(ip, n_ids, &ofv[0], ns, &fv[0], ks, n_bits, where)
    if err:
        i, j = int(where[0]), int(where[1])
        f = int(feats[i])
        if err == _ERR_FEATURE:
            raise ValueError(f"sparse_features[{i}] = {f} is out of range for {n_sparse} "
                             f"sparse features")
        if err == _ERR_OFFSETS:
            raise ValueError(f"offsets of sparse feature {f} are invalid (must satisfy "
                             f"0 <= offsets[f] <= offsets[f+1] <= len(ids) = {n_ids})")
        if err == _ERR_ID:
            raise ValueError(f"ids of sparse feature {f}: ids[{j}] = {int(ids[j])} is >= "
                             f"64 * n_words = {n_bits}")
        raise ValueError(f"ids of sparse feature {f} must be sorted ascending and unique "
                         f"(ids[{j - 1}] = {int(ids[j - 1])} >= ids[{j}] = {int(ids[j])})")
    return ids, offsets, feats


def _split_sparse(offsets, feats, n_words):
    """Positions (into feats) of the features to materialise, and of those kept sparse."""
    n_words = int(n_words)
    ks = feats.shape[0]
    if ks == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    if _MATERIALISE is False or n_words == 0:
        return np.zeros(0, dtype=np.int64), np.arange(ks, dtype=np.int64)
    lens = offsets[feats + 1] - offsets[feats]
    if _MATERIALISE is None:
        mat = lens * _PROBE_WORDS[_level()] >= n_words
        cap = MATERIALISE_MAX_BYTES // (n_words * 8)
        if mat.sum() > cap:
            # over the memory cap: materialise the largest features only
            order = np.argsort(-lens, kind="stable")[:cap]
            mat = np.zeros(ks, dtype=bool)
            mat[order] = True
    else:
        mat = np.ones(ks, dtype=bool)
    return np.flatnonzero(mat).astype(np.int64), np.flatnonzero(~mat).astype(np.int64)


cdef void _materialise_one(uint64_t *rows, size_t n_words, const uint32_t *ids,
                           const int64_t *offsets, const int64_t *feats, const int64_t *pos,
                           Py_ssize_t q) noexcept nogil:
    cdef int64_t f = feats[pos[q]]
    cdef uint64_t *row = rows + <size_t>q * n_words
    memset(row, 0, n_words * 8)
    segsrv_cooc_set_ids(row, ids + offsets[f], <size_t>(offsets[f + 1] - offsets[f]))


def _materialise(ids, offsets, feats, pos, size_t n_words, int nt):
    cdef Py_ssize_t km = pos.shape[0]
    mat = np.empty((km, n_words), dtype=np.uint64)
    if km == 0 or n_words == 0:
        return mat
    cdef uint64_t[:, ::1] mv = mat
    cdef const uint32_t[::1] iv = ids
    cdef const int64_t[::1] ofv = offsets
    cdef const int64_t[::1] fv = feats
    cdef const int64_t[::1] pv = pos
    cdef uint32_t dummy = 0
    cdef const uint32_t *ip = &iv[0] if iv.shape[0] else &dummy
    cdef Py_ssize_t q
    cdef int t = nt if km >= nt else <int>km
    with nogil:
        if t <= 1:
            for q in range(km):
                _materialise_one(&mv[0, 0], n_words, ip, &ofv[0], &fv[0], &pv[0], q)
        else:
            for q in prange(km, num_threads=t, schedule="dynamic", chunksize=1):
                _materialise_one(&mv[0, 0], n_words, ip, &ofv[0], &fv[0], &pv[0], q)
    return mat


cdef struct _ProbeJob:
    const uint64_t **rows       # row pointers probed
    size_t n_rows
    uint64_t n_bits
    const uint32_t *ids
    const int64_t *offsets
    const int64_t *feats
    const int64_t *pos          # positions into feats of the sparse features probed
    size_t n_probe
    int64_t *out
    size_t ldo
    size_t col0                 # column (and, when sym, row) of the first probed feature
    int sym


cdef void _probe_row(const _ProbeJob *J, Py_ssize_t p) noexcept nogil:
    cdef size_t s
    cdef int64_t f
    cdef int bad = 0
    cdef int64_t c
    cdef const uint64_t *row = J.rows[p]
    for s in range(J.n_probe):
        f = J.feats[J.pos[s]]
        c = <int64_t>segsrv_probe_count(row, J.n_bits, J.ids + J.offsets[f],
                                        <size_t>(J.offsets[f + 1] - J.offsets[f]), &bad)
        J.out[<size_t>p * J.ldo + J.col0 + s] = c
        if J.sym:
            J.out[(J.col0 + s) * J.ldo + <size_t>p] = c


cdef void _probe_core(const _ProbeJob *J, int nt) noexcept nogil:
    cdef Py_ssize_t p
    if nt <= 1:
        for p in range(<Py_ssize_t>J.n_rows):
            _probe_row(J, p)
    else:
        for p in prange(<Py_ssize_t>J.n_rows, num_threads=nt, schedule="dynamic", chunksize=4):
            _probe_row(J, p)


cdef void _intersect_row(const _ProbeJob *J, Py_ssize_t s1) noexcept nogil:
    cdef size_t s2
    cdef int64_t f1 = J.feats[J.pos[s1]]
    cdef int64_t f2
    cdef int64_t c
    cdef const uint32_t *a = J.ids + J.offsets[f1]
    cdef size_t na = <size_t>(J.offsets[f1 + 1] - J.offsets[f1])
    cdef size_t r = J.col0 + <size_t>s1
    J.out[r * J.ldo + r] = <int64_t>na
    for s2 in range(<size_t>s1 + 1, J.n_probe):
        f2 = J.feats[J.pos[s2]]
        c = <int64_t>segsrv_intersect_count(a, na, J.ids + J.offsets[f2],
                                            <size_t>(J.offsets[f2 + 1] - J.offsets[f2]))
        J.out[r * J.ldo + J.col0 + s2] = c
        J.out[(J.col0 + s2) * J.ldo + r] = c


cdef void _intersect_core(const _ProbeJob *J, int nt) noexcept nogil:
    cdef Py_ssize_t s
    if nt <= 1:
        for s in range(<Py_ssize_t>J.n_probe):
            _intersect_row(J, s)
    else:
        for s in prange(<Py_ssize_t>J.n_probe, num_threads=nt, schedule="dynamic", chunksize=1):
            _intersect_row(J, s)


cdef _run_sparse(size_t[::1] row_ptrs, size_t n_rows, uint64_t n_bits, ids, offsets, feats,
                 pos, int64_t[:, ::1] inner, size_t col0, bint sym, int nt):
    """Probes of the kept-sparse features pos against the rows (columns col0.. of inner);
    sym: also their mirror cells and their sparse x sparse intersections."""
    cdef _ProbeJob J
    cdef size_t n_probe = pos.shape[0]
    if n_probe == 0:
        return
    cdef const uint32_t[::1] iv = ids
    cdef const int64_t[::1] ofv = offsets
    cdef const int64_t[::1] fv = feats
    cdef const int64_t[::1] pv = pos
    cdef uint32_t dummy = 0
    J.rows = <const uint64_t **>&row_ptrs[0] if n_rows else NULL
    J.n_rows = n_rows
    J.n_bits = n_bits
    J.ids = &iv[0] if iv.shape[0] else &dummy
    J.offsets = &ofv[0]
    J.feats = &fv[0]
    J.pos = &pv[0]
    J.n_probe = n_probe
    J.out = &inner[0, 0]
    J.ldo = inner.shape[1]
    J.col0 = col0
    J.sym = sym
    with nogil:
        if n_rows:
            _probe_core(&J, nt if <size_t>nt <= n_rows else <int>n_rows)
        if sym:
            _intersect_core(&J, nt if <size_t>nt <= n_probe else <int>n_probe)


# ---------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------

def _dense_selection(dense, dense_rows):
    _check(dense, "dense", np.uint64, 2)
    n_dense = dense.shape[0]
    if dense_rows is None:
        return np.arange(n_dense, dtype=np.int64)
    _check(dense_rows, "dense_rows", np.int64, 1)
    if dense_rows.shape[0] and (dense_rows.min() < 0 or dense_rows.max() >= n_dense):
        bad = np.flatnonzero((dense_rows < 0) | (dense_rows >= n_dense))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"dense_rows[{i}] = {int(dense_rows[i])} is out of range for a "
                             f"dense matrix with {n_dense} rows")
    return dense_rows


cdef inline size_t _addr(a):
    return <size_t>a.__array_interface__["data"][0]


def _row_pointers(base, rows, size_t n_words):
    """uintp addresses of base[rows[i]] (base: C-contiguous uint64 matrix)."""
    ptrs = np.empty(len(rows), dtype=np.uintp)
    if len(rows):
        ptrs[:] = (np.uint64(_addr(base))
                   + np.asarray(rows, dtype=np.uint64) * np.uint64(n_words * 8)).astype(np.uintp)
    return ptrs


def _prepare(dense, dense_rows, ids, offsets, sparse_features):
    dense_rows = _dense_selection(dense, dense_rows)
    n_words = dense.shape[1]
    n_bits = <uint64_t>n_words * 64
    ids, offsets, feats = _sparse_selection(ids, offsets, sparse_features, n_bits)
    mat_pos, probe_pos = _split_sparse(offsets, feats, n_words)
    return dense_rows, n_words, n_bits, ids, offsets, feats, mat_pos, probe_pos


def _work_words(size_t rows_a, size_t rows_b, size_t n_words, bint tri, offsets, feats, probe_pos,
                size_t n_probe_rows, bint sym):
    # pair-words of the tile pass cost ~1/8 of a streamed word; a probe PROBE_WORDS (bitset.pyx)
    pairs = rows_a * (rows_a + 1) // 2 if tri else rows_a * rows_b
    w = pairs * n_words // 8
    if len(probe_pos):
        f = feats[probe_pos]
        m = int((offsets[f + 1] - offsets[f]).sum())
        w += PROBE_WORDS * m * n_probe_rows
        if sym:
            w += PROBE_WORDS * m * len(probe_pos) // 2
    return w


def _output_positions(size_t k_d, mat_pos, probe_pos):
    """perm[internal index] = output index (None: identity); internal order: dense,
    materialised, kept sparse (mat_pos, probe_pos are ascending)."""
    if not len(mat_pos) or not len(probe_pos) or mat_pos.max() < probe_pos.min():
        return None, True
    return np.concatenate([np.arange(k_d, dtype=np.int64), k_d + mat_pos, k_d + probe_pos]), False


cdef void _permute_sym(const int64_t *inner, const int64_t *perm, size_t k,
                       int64_t *out) noexcept nogil:
    cdef size_t a, b
    for a in range(k):
        for b in range(k):
            out[<size_t>perm[a] * k + <size_t>perm[b]] = inner[a * k + b]


cdef void _permute_cols(const int64_t *inner, const int64_t *perm, size_t kl, size_t k,
                        int64_t *out) noexcept nogil:
    cdef size_t i, b
    for i in range(kl):
        for b in range(k):
            out[i * k + <size_t>perm[b]] = inner[i * k + b]


def _check_out_alias(out, *inputs):
    for name, a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"out must not share memory with {name}")


def cooccurrence(dense, dense_rows=None, ids=None, offsets=None, sparse_features=None,
                 out=None, n_threads=None):
    """out[i, j] = |F_i & F_j| over the feature set -> symmetric int64[k, k].

    dense: uint64[n_dense, n_words] C-contiguous (memmap ok); dense_rows: int64
    row indices (default all; duplicates allowed); ids (uint32) + offsets
    (int64[n_sparse + 1]): sparse store, feature f = ids[offsets[f]:offsets[f+1]]
    (sorted unique ids < 64 * n_words, checked); sparse_features: int64
    feature indices (default all when ids is given).  Order: the selected dense
    rows, then the selected sparse features.  k = len(dense_rows) + len(sparse_features).
    """
    return _count(None, dense, dense_rows, ids, offsets, sparse_features, out, n_threads)


def cross_cooccurrence(left, dense, dense_rows=None, ids=None, offsets=None,
                       sparse_features=None, out=None, n_threads=None):
    """out[i, j] = |left_i & F_j| -> int64[kl, k].

    left: uint64[kl, n_words] C-contiguous bitsets; the right side is a feature
    set as in ``cooccurrence`` (same arguments, same order of its k features).
    """
    _check(left, "left", np.uint64, 2)
    return _count(left, dense, dense_rows, ids, offsets, sparse_features, out, n_threads)


def _count(left, dense, dense_rows, ids, offsets, sparse_features, out, n_threads):
    """The body of both: the feature set against itself (left None: symmetric, upper tiles only) or against
    the bitsets of `left`."""
    (dense_rows, n_words, n_bits, ids, offsets, feats, mat_pos,
     probe_pos) = _prepare(dense, dense_rows, ids, offsets, sparse_features)
    cdef bint sym = left is None
    if not sym and left.shape[1] != n_words:
        raise ValueError(f"left rows have {left.shape[1]} words but dense rows have {n_words}")
    cdef size_t k_d = dense_rows.shape[0]
    cdef size_t k_m = mat_pos.shape[0]
    cdef size_t k_p = probe_pos.shape[0]
    cdef size_t k = k_d + k_m + k_p
    cdef size_t k_r = k_d + k_m
    cdef size_t kl = k if sym else left.shape[0]
    out = _check_out(out, "out", np.int64, (kl, k))
    _check_out_alias(out, ("left", left), ("dense", dense), ("dense_rows", dense_rows), ("ids", ids),
                     ("offsets", offsets), ("sparse_features", feats))
    if kl == 0 or k == 0:
        return out
    cdef int nt = _pkg.resolve_threads(
        n_threads, _work_words(k_r if sym else kl, k_r, n_words, sym, offsets, feats, probe_pos,
                               k_r if sym else kl, sym))
    perm, identity = _output_positions(k_d, mat_pos, probe_pos)
    if identity:
        out[...] = 0
        inner = out
    else:
        inner = np.zeros((kl, k), dtype=np.int64)
    mat = _materialise(ids, offsets, feats, mat_pos, n_words, nt)
    rows = np.concatenate([_row_pointers(dense, dense_rows, n_words),
                           _row_pointers(mat, np.arange(k_m), n_words)])
    lrows = rows if sym else _row_pointers(left, np.arange(kl), n_words)
    n_left = k_r if sym else kl
    _run_dense(lrows, n_left, rows, k_r, sym, n_words, inner, nt)
    if k_p:
        _run_sparse(lrows, n_left, n_bits, ids, offsets, feats, probe_pos, inner, k_r, sym, nt)
    cdef const int64_t[:, ::1] iv
    cdef const int64_t[::1] pv
    cdef int64_t[:, ::1] ov
    if not identity:
        iv = inner
        pv = perm
        ov = out
        with nogil:
            if sym:
                _permute_sym(&iv[0, 0], &pv[0], k, &ov[0, 0])
            else:
                _permute_cols(&iv[0, 0], &pv[0], kl, k, &ov[0, 0])
    return out
