"""The kernels' GIL policy (segsrv._kernels.releases_gil) and their checks of overlapping outputs.

Every kernel whose call holds the GIL below GIL_RELEASE_WORDS of work must give the same answer on either
side of it: each case runs once with the threshold at 0 (every call releases the GIL) and once above any
work (none does, on one thread), against the kernel's naive twin."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import naive as N
from segsrv._kernels.bitset import _overlaps
from support import compact

NEVER = 1 << 62


def test_releases_gil_policy(monkeypatch):
    assert not K.releases_gil(K.GIL_RELEASE_WORDS - 1)
    assert K.releases_gil(K.GIL_RELEASE_WORDS)
    assert K.releases_gil(1, 2)  # a team of threads always runs without the GIL
    monkeypatch.setattr(K, "GIL_RELEASE_WORDS", NEVER)
    assert not K.releases_gil(1 << 40) and K.releases_gil(0, 2)
    monkeypatch.setattr(K, "GIL_RELEASE_WORDS", 0)
    assert K.releases_gil(0)


def _bits(rng, n_words):
    return rng.integers(0, 2**63, size=n_words, dtype=np.uint64) | rng.integers(0, 2, size=n_words, dtype=np.uint64)


def _csr(rng, n_rows, n_features, mean_len):
    """A CSR whose rows hold distinct, sorted features (csr_pair_scores needs them distinct; test_kernels_csr's
    make_csr draws them with repeats)."""
    lengths = np.minimum(rng.poisson(mean_len, size=n_rows), n_features)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate([np.sort(rng.choice(n_features, size=int(k), replace=False)) for k in lengths])
    return indptr, indices.astype(np.uint32)


def _cases(rng):
    """(kernel name, args, kwargs) for the kernels with a GIL policy, small enough to hold it by default."""
    n_rows, n_words = 700, 11
    q, a, b = _bits(rng, n_words), _bits(rng, n_words), _bits(rng, n_words)
    q[-1] &= (1 << (n_rows - 64 * (n_words - 1))) - 1
    matrix = np.stack([_bits(rng, n_words) for _ in range(9)])
    ids = np.concatenate([np.sort(rng.choice(n_rows, size=k, replace=False)) for k in (5, 40, 0, 17)]).astype(np.uint32)
    offsets = np.array([0, 5, 45, 45, 62], dtype=np.int64)
    query_ids = np.sort(rng.choice(n_rows, size=90, replace=False)).astype(np.uint32)
    values = rng.integers(0, 6, size=n_rows).astype(np.float64)
    values[::7] = np.nan
    codes8 = rng.integers(0, 6, size=n_rows).astype(np.uint8)
    codes16 = rng.integers(0, 300, size=n_rows).astype(np.uint16)
    indptr, indices = _csr(rng, n_rows, 50, 6)
    listed = np.sort(rng.choice(n_rows, size=120, replace=False)).astype(np.uint32)
    block_base, within = compact(indptr)
    weights = rng.normal(size=50)
    slot_of = np.full(50, -1, dtype=np.int32)
    slot_of[rng.choice(50, size=6, replace=False)] = np.arange(6, dtype=np.int32)
    pair_u = rng.normal(size=(2, 6, 6))
    n, n_c = 10_000, 1_200
    n_f = rng.integers(1, n, size=40).astype(np.int64)
    n_cf = np.minimum(n_f, rng.integers(0, n_c, size=40)).astype(np.int64)
    ties = np.arange(40, dtype=np.int64)
    return [
        ("popcount", (q,), {}),
        ("bitset_and", (a, b), {}), ("bitset_or", (a, b), {}), ("bitset_andnot", (a, b), {}),
        ("and_count_dense", (q, matrix, np.array([3, 0, 8, 3], dtype=np.int64)), {}),
        ("and_count_dense_many", (np.stack([q, a, b]), matrix, np.array([3, 0, 8, 3, 5], dtype=np.int64)), {}),
        ("and_count_sparse", (q, ids, offsets, np.array([0, 1, 2, 3, 1], dtype=np.int64)), {}),
        ("and_count_ids", (query_ids, ids, offsets, np.array([3, 1, 0], dtype=np.int64)), {}),
        ("bitset_to_ids", (q, n_rows), {}),
        ("ids_to_bitset", (query_ids, n_words), {}),
        ("gather_present", (q, values), {}),
        ("histogram_present", (q, np.nan_to_num(values, nan=0.0), 0, 6), {}),
        ("histogram_codes_present", (q, codes8, 256), {}),
        ("histogram_codes_present", (q, codes16, 65536), {}),
        ("csr_histogram", (indptr, indices, listed, 50), {}),
        ("compact_csr_histogram", (block_base, within, indices.astype(np.uint16), listed, 50), {}),
        ("csr_row_scores", (indptr, indices, weights, listed), {}),
        ("csr_pair_scores", (indptr, indices, slot_of, pair_u, listed), {}),
        ("table_statistics", (n, n_c, n_f, n_cf, 10.0), {}),
        ("table_mutual_information", (n, n_c, n_f, n_cf), {}),
        ("top_by_mutual_information", (n, n_c, n_f, n_cf, ties, 3, "over", None, 7), {}),
        ("hypergeom_tail", (n_cf, n_f, np.full(40, n_c, dtype=np.int64), n), {"upper": True}),
        ("hypergeom_tail", (n_cf, n_f, np.full(40, n_c, dtype=np.int64), n), {"upper": False}),
    ]


def _same(got, want):
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
    elif isinstance(want, np.ndarray) and want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("threshold", [0, NEVER], ids=["released", "held"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernels_agree_with_their_twins_whether_or_not_they_release_the_gil(monkeypatch, threshold, seed):
    monkeypatch.setattr(K, "GIL_RELEASE_WORDS", threshold)
    for name, args, kwargs in _cases(np.random.default_rng(seed)):
        _same(getattr(K, name)(*args, **kwargs), getattr(N, name)(*args, **kwargs))


def test_a_released_and_a_held_call_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(7)
    q, matrix = _bits(rng, 3000), np.stack([_bits(rng, 3000) for _ in range(12)])
    rows = np.arange(12, dtype=np.int64)
    monkeypatch.setattr(K, "GIL_RELEASE_WORDS", 0)
    released = K.and_count_dense(q, matrix, rows)
    monkeypatch.setattr(K, "GIL_RELEASE_WORDS", NEVER)
    np.testing.assert_array_equal(K.and_count_dense(q, matrix, rows), released)


# --- outputs that overlap their inputs (bitset._overlaps: no GIL release) --------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_overlaps_is_may_share_memory_for_contiguous_slices(a0, a_len, b0, b_len):
    buf = np.zeros(100, dtype=np.uint64)
    a, b = buf[a0:a0 + a_len], buf[b0:b0 + b_len]
    assert _overlaps(a, b) == (a.size > 0 and b.size > 0 and np.may_share_memory(a, b))
    assert _overlaps(a, b) == _overlaps(b, a)


def test_overlaps_of_other_objects_and_distinct_arrays():
    x = np.zeros(8, dtype=np.uint64)
    assert not _overlaps(x, np.zeros(8, dtype=np.uint64))
    assert not _overlaps(x, 5) and not _overlaps(None, x)
    assert _overlaps(x, x.view(np.uint8)[3:11])


def test_binary_ops_refuse_a_partially_overlapping_out_and_accept_in_place():
    buf = np.arange(1, 12, dtype=np.uint64)
    a, b = buf[:5].copy(), buf[5:10].copy()
    want = a & b
    with pytest.raises(ValueError, match="out partially overlaps a"):
        big = np.concatenate([a, b])
        K.bitset_and(big[:5], b, out=big[1:6])
    assert K.bitset_and(a, b, out=a) is a
    np.testing.assert_array_equal(a, want)


def test_hypergeom_and_ids_to_bitset_refuse_an_out_sharing_an_input():
    ks = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="out must not share memory with k"):
        K.hypergeom_tail(ks, np.ones(4, dtype=np.int64), np.ones(4, dtype=np.int64), 10, out=ks.view(np.float64))
    ids = np.zeros(4, dtype=np.uint32)
    with pytest.raises(ValueError, match="out must not share memory with ids"):
        K.ids_to_bitset(ids, 2, out=ids.view(np.uint64))
