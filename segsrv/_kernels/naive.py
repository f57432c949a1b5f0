"""Naive pure-numpy twins of the compiled kernels (tests only).

Same signatures as segsrv._kernels.bitset / .csr / .cooccur / .hypergeom minus
``out`` / ``n_threads``; written for obviousness, not speed.  Inputs are
assumed valid.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
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
    "csr_histogram",
    "compact_csr_histogram",
    "csr_row_scores",
    "csr_pair_scores",
    "cooccurrence",
    "cross_cooccurrence",
    "hypergeom_log_tail",
    "hypergeom_tail",
    "table_statistics",
    "table_mutual_information",
    "top_by_mutual_information",
    "encode_messages",
]


def _bools(bits: np.ndarray) -> np.ndarray:
    """uint64 bitset -> bool array of 64 * len(bits) bits (little-endian bit order)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint64).reshape(-1)
    as_bytes = bits.astype("<u8").view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little").astype(bool)


def _from_bools(mask: np.ndarray) -> np.ndarray:
    """bool array (length multiple of 64) -> uint64 bitset."""
    packed = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return packed.view("<u8").astype(np.uint64)


def gather_present(bits, values):
    values = np.asarray(values, dtype=np.float64)
    picked = values[_bools(bits)[: len(values)]]
    return picked[~np.isnan(picked)]


def histogram_present(bits, values, lo, n_bins):
    values = np.asarray(values, dtype=np.float64)
    rows = np.flatnonzero(_bools(bits)[: len(values)])
    rows = rows[~np.isnan(values[rows])]
    present = values[rows]
    outside = (present != np.floor(present)) | (present < lo) | (present >= lo + n_bins)
    if outside.any():
        row = int(rows[np.argmax(outside)])
        raise ValueError(f"values[{row}] = {float(values[row])!r} is not an integer in "
                         f"[lo, lo + n_bins) = [{float(lo)!r}, {float(lo) + n_bins!r})")
    return np.bincount((present - lo).astype(np.int64), minlength=n_bins).astype(np.int64)


def histogram_codes_present(bits, codes, n_bins):
    codes = np.asarray(codes)
    picked = codes[_bools(bits)[: len(codes)]].astype(np.int64)
    return np.bincount(picked[picked < n_bins], minlength=n_bins).astype(np.int64)


def popcount(bits):
    return int(_bools(bits).sum())


def and_count_dense(query, matrix, rows=None):
    matrix = np.asarray(matrix, dtype=np.uint64)
    if rows is None:
        rows = np.arange(matrix.shape[0], dtype=np.int64)
    q = _bools(query)
    return np.array([int((q & _bools(matrix[r])).sum()) for r in rows], dtype=np.int64)


def and_count_dense_many(queries, matrix, rows=None):
    return np.array([and_count_dense(q, matrix, rows) for q in queries], dtype=np.int64).reshape(
        len(queries), matrix.shape[0] if rows is None else len(rows))


def _feature(ids, offsets, f):
    return np.asarray(ids[offsets[f]:offsets[f + 1]], dtype=np.int64)


def and_count_sparse(query, ids, offsets, features=None):
    if features is None:
        features = np.arange(len(offsets) - 1, dtype=np.int64)
    q = _bools(query)
    res = []
    for f in features:
        members = _feature(ids, offsets, f)
        res.append(int(q[members].sum()) if len(members) else 0)
    return np.array(res, dtype=np.int64)


def and_count_ids(query_ids, ids, offsets, features=None):
    if features is None:
        features = np.arange(len(offsets) - 1, dtype=np.int64)
    qset = set(int(x) for x in query_ids)
    return np.array(
        [sum(1 for x in _feature(ids, offsets, f) if int(x) in qset) for f in features],
        dtype=np.int64,
    )


def bitset_and(a, b):
    return _from_bools(_bools(a) & _bools(b))


def bitset_or(a, b):
    return _from_bools(_bools(a) | _bools(b))


def bitset_andnot(a, b):
    return _from_bools(_bools(a) & ~_bools(b))


def bitset_to_ids(bits, n_bits=None):
    mask = _bools(bits)
    if n_bits is not None:
        mask = mask[:n_bits]
    return np.flatnonzero(mask).astype(np.uint32)


def ids_to_bitset(ids, n_words):
    mask = np.zeros(64 * n_words, dtype=bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return _from_bools(mask)


def set_bits(matrix, matrix_rows, ids):
    """In place, like the kernel."""
    for r, x in zip(np.asarray(matrix_rows).tolist(), np.asarray(ids).tolist()):
        matrix[r, x >> 6] |= np.uint64(1) << np.uint64(x & 63)


def read_bandwidth_probe(buf):
    flat = np.asarray(buf, dtype=np.uint64).reshape(-1)
    return int(np.bitwise_or.reduce(flat)) if flat.size else 0


def csr_histogram(indptr, indices, rows, n_features):
    out = np.zeros(n_features, dtype=np.int64)
    for r in np.asarray(rows).tolist():
        for f in indices[indptr[r]:indptr[r + 1]].tolist():
            out[f] += 1
    return out


def compact_csr_histogram(block_base, within, indices, rows, n_features):
    starts = np.asarray(block_base)[np.arange(len(within)) >> 6] + np.asarray(within, dtype=np.int64)
    return csr_histogram(starts, np.asarray(indices), rows, n_features)


def csr_row_scores(indptr, indices, weights, rows=None):
    if rows is None:
        rows = np.arange(len(indptr) - 1)
    weights = np.asarray(weights, dtype=np.float64)
    cols = weights.reshape(len(weights), -1)
    out = np.empty((len(rows), cols.shape[1]), dtype=np.float64)
    for i, r in enumerate(np.asarray(rows).tolist()):
        for c in range(cols.shape[1]):
            s = 0.0
            for f in indices[indptr[r]:indptr[r + 1]].tolist():
                s += float(cols[f, c])
            out[i, c] = s
    return out[:, 0] if weights.ndim == 1 else out


def csr_pair_scores(indptr, indices, slot_of, U, rows=None):
    if rows is None:
        rows = np.arange(len(indptr) - 1)
    U = np.asarray(U, dtype=np.float64)
    out = np.zeros((len(rows), U.shape[0]), dtype=np.float64)
    for i, r in enumerate(np.asarray(rows).tolist()):
        slots = [int(slot_of[f]) for f in indices[indptr[r]:indptr[r + 1]].tolist() if slot_of[f] >= 0]
        for a in range(len(slots)):
            for b in range(a + 1, len(slots)):
                s, t = min(slots[a], slots[b]), max(slots[a], slots[b])
                out[i] += U[:, s, t]
    return out


def _feature_bools(dense, dense_rows=None, ids=None, offsets=None, sparse_features=None):
    """bool[k, 64 * n_words]: the selected dense rows, then the selected sparse features."""
    dense = np.asarray(dense, dtype=np.uint64)
    n_words = dense.shape[1]
    if dense_rows is None:
        dense_rows = np.arange(dense.shape[0])
    rows = [_bools(dense[r]) for r in np.asarray(dense_rows).tolist()]
    if ids is not None:
        if sparse_features is None:
            sparse_features = np.arange(len(offsets) - 1)
        for f in np.asarray(sparse_features).tolist():
            rows.append(_bools(ids_to_bitset(_feature(ids, offsets, f), n_words)))
    return np.array(rows, dtype=bool).reshape(len(rows), 64 * n_words)


def _pair_counts(a, b):
    """int64[len(a), len(b)]: a @ b.T over bools (a float64 product is exact below 2**53)."""
    return np.rint(a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)


def cooccurrence(dense, dense_rows=None, ids=None, offsets=None, sparse_features=None):
    f = _feature_bools(dense, dense_rows, ids, offsets, sparse_features)
    return _pair_counts(f, f)


def cross_cooccurrence(left, dense, dense_rows=None, ids=None, offsets=None, sparse_features=None):
    left = np.asarray(left, dtype=np.uint64)
    lb = np.array([_bools(row) for row in left], dtype=bool).reshape(len(left), 64 * left.shape[1])
    return _pair_counts(lb, _feature_bools(dense, dense_rows, ids, offsets, sparse_features))


def hypergeom_log_tail(k, successes, draws, population, upper=True):
    """scipy: log P(X >= k) = logsf(k - 1), log P(X <= k) = logcdf(k); hypergeom(M=N, n=K, N=n)."""
    from scipy.stats import hypergeom

    k = np.asarray(k, dtype=np.int64)
    if upper:
        return np.asarray(hypergeom.logsf(k - 1, population, successes, draws), dtype=np.float64)
    return np.asarray(hypergeom.logcdf(k, population, successes, draws), dtype=np.float64)


def hypergeom_tail(k, successes, draws, population, upper=True):
    from scipy.stats import hypergeom

    k = np.asarray(k, dtype=np.int64)
    if upper:
        return np.asarray(hypergeom.sf(k - 1, population, successes, draws), dtype=np.float64)
    return np.asarray(hypergeom.cdf(k, population, successes, draws), dtype=np.float64)


# --- 2x2 tables: one table at a time in Python floats (the kernel's conventions, tables.pyx) ---

_Z95 = 1.959963984540054


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def _bits(p: float, q: float) -> float:
    return p * math.log2(p / (q if q > 0 else 1.0)) if p > 0 else 0.0


def _table_mi(n: float, c: float, f: float, cf: float) -> float:
    if n <= 0:
        return 0.0
    pc, pf = c / n, f / n
    cells = ((cf / n, pc * pf), ((c - cf) / n, pc * (1 - pf)), ((f - cf) / n, (1 - pc) * pf),
             ((n - c - f + cf) / n, (1 - pc) * (1 - pf)))
    total = 0.0
    for p, q in cells:
        total += _bits(p, q)
    return total


def _wilson(k: int, m: int) -> tuple[float, float]:
    if m <= 0:
        return math.nan, math.nan
    z2 = _Z95 * _Z95
    p = k / m
    denom = 1 + z2 / m
    center = (p + z2 / (2 * m)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / m + z2 / (4 * m * m)) / denom
    lo = 0.0 if k <= 0 else min(max(center - half, 0.0), 1.0)
    hi = 1.0 if k >= m else min(max(center + half, 0.0), 1.0)
    return lo, hi


def table_statistics(n, n_c, n_f, n_cf, prior_strength=10.0):
    a = float(prior_strength)
    rows = []
    for f, cf in zip(np.asarray(n_f).tolist(), np.asarray(n_cf).tolist()):
        s_c = n_c / n if n else math.nan
        p, p_base, s_cf = _ratio(cf, n_c), _ratio(f, n), _ratio(cf, n)
        lo, hi = _wilson(cf, n_c)
        leverage = s_cf - s_c * p_base
        conviction = math.nan if math.isnan(p) else ((1.0 - p_base) / (1.0 - p) if p < 1.0 else math.inf)
        d1, d2 = s_cf * (1 - s_c), s_c * (p_base - s_cf)
        denom = math.nan if math.isnan(d1) or math.isnan(d2) else max(d1, d2)
        rows.append([
            s_cf, p, p_base, _ratio(f - cf, n - n_c), _ratio(p, p_base),
            _ratio(_ratio(cf + a * p_base, n_c + a), p_base), _ratio(lo, p_base), _ratio(hi, p_base), leverage,
            conviction, _ratio(cf, n_c + f - cf), 0.0 if 1 - p_base == 0 else (p - p_base) / (1 - p_base),
            0.5 * (p + _ratio(cf, f)), 0.0 if denom == 0 else leverage / denom, _table_mi(n, n_c, f, cf),
        ])
    return np.array(rows, dtype=np.float64).reshape(len(rows), 15)


def table_mutual_information(n, n_c, n_f, n_cf):
    return np.array([_table_mi(n, n_c, f, cf) for f, cf in zip(np.asarray(n_f).tolist(), np.asarray(n_cf).tolist())],
                    dtype=np.float64)


def top_by_mutual_information(n, n_c, n_f, n_cf, ties, min_support, direction, min_lift, limit):
    """The filter of Relate's candidates as vectors, then a full sort by (-mutual information, tie)."""
    n_f, n_cf, ties = (np.asarray(a, dtype=np.int64) for a in (n_f, n_cf, ties))
    keep = (n_f > 0) & (n_f < n) & (n_cf >= min_support) & (n_c > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (n_cf / n_c) / (n_f / n)
    if direction == "over":
        keep &= lift > 1
    elif direction == "under":
        keep &= lift < 1
    if min_lift is not None:
        keep &= lift >= min_lift
    idx = np.flatnonzero(keep)
    key = table_mutual_information(n, n_c, n_f[idx], n_cf[idx])
    key = np.where(np.isnan(key), -np.inf, key)
    return len(idx), idx[np.lexsort((ties[idx], -key))[:limit]].astype(np.int64)


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # protobuf int64: a negative value as its two's complement
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def encode_messages(layout, texts, ints, doubles):
    """segsrv._kernels.wire.encode_messages: each message's fields written one by one."""
    import struct

    out = []
    for i in range(len(ints)):
        body = b""
        for field, column in zip(layout.text_fields, texts):
            data = column[i].encode("utf-8")
            body += _varint(field << 3 | 2) + _varint(len(data)) + data
        for field, value in zip(layout.int_fields, ints[i]):
            body += _varint(field << 3) + _varint(int(value))
        for field, value in zip(layout.double_fields, doubles[i]):
            body += _varint(field << 3 | 1) + struct.pack("<d", float(value))
        out.append(_varint(layout.outer_field << 3 | 2) + _varint(len(body)) + body)
    return b"".join(out)
