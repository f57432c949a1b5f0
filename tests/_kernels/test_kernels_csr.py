"""segsrv._kernels.csr vs its naive numpy twin."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import naive as N
from support import compact, readonly


def make_csr(rng, n_rows, n_features, mean_len):
    lens = rng.poisson(mean_len, size=n_rows)
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum(lens)
    indices = rng.integers(0, max(n_features, 1), size=int(indptr[-1])).astype(np.uint32)
    return indptr, indices


@pytest.mark.parametrize("n_rows,n_features,mean_len", [
    (0, 5, 3), (1, 1, 0), (1, 64, 10), (63, 65, 4), (500, 1000, 30), (3000, 7, 2)])
def test_histogram(n_rows, n_features, mean_len):
    rng = np.random.default_rng(n_rows * 7 + n_features)
    indptr, indices = make_csr(rng, n_rows, n_features, mean_len)
    for k in (0, 1, n_rows, 2 * n_rows + 3):
        rows = rng.integers(0, max(n_rows, 1), size=k if n_rows else 0).astype(np.uint32)
        expected = N.csr_histogram(indptr, indices, rows, n_features)
        for nt in (1, 2):
            np.testing.assert_array_equal(
                K.csr_histogram(indptr, indices, rows, n_features, n_threads=nt), expected)
        out = np.full(n_features, 99, np.int64)
        res = K.csr_histogram(readonly(indptr), readonly(indices), readonly(rows), n_features,
                              out=out, n_threads=2)
        assert res is out
        np.testing.assert_array_equal(out, expected)


def test_histogram_large_parallel():
    rng = np.random.default_rng(3)
    indptr, indices = make_csr(rng, 200_000, 300, 5)
    rows = rng.permutation(200_000).astype(np.uint32)
    expected = np.bincount(indices, minlength=300)
    h1 = K.csr_histogram(indptr, indices, rows, 300, n_threads=1)
    h2 = K.csr_histogram(indptr, indices, rows, 300, n_threads=2)
    np.testing.assert_array_equal(h1, expected)
    np.testing.assert_array_equal(h2, expected)


@pytest.mark.parametrize("n_rows,n_features,mean_len", [
    (0, 5, 3), (1, 1, 0), (1, 64, 10), (65, 63, 4), (2000, 500, 20)])
def test_row_scores(n_rows, n_features, mean_len):
    rng = np.random.default_rng(n_rows + 11 * n_features)
    indptr, indices = make_csr(rng, n_rows, n_features, mean_len)
    weights = rng.normal(size=n_features)
    expected = N.csr_row_scores(indptr, indices, weights)
    for nt in (1, 2):
        np.testing.assert_array_equal(
            K.csr_row_scores(indptr, indices, weights, n_threads=nt), expected)
    if n_rows:
        rows = rng.integers(0, n_rows, size=3 * n_rows).astype(np.uint32)
        exp_rows = N.csr_row_scores(indptr, indices, weights, rows)
        out = np.empty(len(rows))
        res = K.csr_row_scores(readonly(indptr), readonly(indices), readonly(weights),
                               readonly(rows), out=out, n_threads=2)
        assert res is out
        np.testing.assert_array_equal(out, exp_rows)
        np.testing.assert_array_equal(
            K.csr_row_scores(indptr, indices, weights, rows, n_threads=1), exp_rows)


@pytest.mark.parametrize("n_rows,n_features,mean_len,n_cols", [
    (0, 5, 3, 4), (1, 1, 0, 1), (3, 7, 4, 0), (65, 63, 4, 3), (2000, 500, 20, 50)])
def test_row_scores_matrix(n_rows, n_features, mean_len, n_cols):
    """A [n_features, m] weight matrix scores m models at once: column c equals the 1-D kernel
    with weights[:, c], exactly (same summation order), at any thread count."""
    rng = np.random.default_rng(7 * n_rows + n_cols)
    indptr, indices = make_csr(rng, n_rows, n_features, mean_len)
    W = rng.normal(size=(n_features, n_cols))
    rows = rng.integers(0, max(n_rows, 1), size=2 * n_rows).astype(np.uint32)
    expected = N.csr_row_scores(indptr, indices, W, rows)
    assert expected.shape == (len(rows), n_cols)
    for nt in (1, 2):
        got = K.csr_row_scores(readonly(indptr), readonly(indices), readonly(W), readonly(rows), n_threads=nt)
        assert got.shape == (len(rows), n_cols)
        np.testing.assert_array_equal(got, expected)
        for c in range(n_cols):
            np.testing.assert_array_equal(got[:, c], K.csr_row_scores(indptr, indices, np.ascontiguousarray(W[:, c]),
                                                                      rows, n_threads=nt))
    out = np.empty((len(rows), n_cols))
    assert K.csr_row_scores(indptr, indices, W, rows, out=out) is out
    with pytest.raises(ValueError, match="shape"):
        K.csr_row_scores(indptr, indices, W, rows, out=np.empty(len(rows)))
    if n_cols > 1:
        with pytest.raises(ValueError, match="C-contiguous"):
            K.csr_row_scores(indptr, indices, np.asfortranarray(W), rows)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        K.csr_row_scores(indptr, indices, W.reshape(n_features, n_cols, 1), rows)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 19), max_size=12), max_size=30),
       st.lists(st.integers(0, 40), max_size=40), st.integers(0, 5), st.integers(1, 2))
def test_csr_row_scores_matrix_hypothesis(row_lists, row_sel, n_cols, nt):
    n_rows = len(row_lists)
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in row_lists])
    indices = np.array([x for r in row_lists for x in r], dtype=np.uint32)
    rows = np.array([r for r in row_sel if r < n_rows], dtype=np.uint32)
    W = np.linspace(-1, 2, 20 * n_cols).reshape(20, n_cols)
    np.testing.assert_array_equal(K.csr_row_scores(indptr, indices, W, rows, n_threads=nt),
                                  N.csr_row_scores(indptr, indices, W, rows))
    if n_rows and n_cols:  # a feature id beyond the matrix is an error, not a read out of bounds
        bad = np.array([x for r in row_lists for x in r] or [0], dtype=np.uint32)
        if bad.max() >= 10 and len(rows):
            sel = rows[[bool(np.any(indices[indptr[r]:indptr[r + 1]] >= 10)) for r in rows]]
            if len(sel):
                with pytest.raises(ValueError, match="feature id"):
                    K.csr_row_scores(indptr, indices, np.ascontiguousarray(W[:10]), sel, n_threads=nt)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 19), max_size=12), max_size=30),
       st.lists(st.integers(0, 40), max_size=40), st.integers(1, 2))
def test_csr_hypothesis(row_lists, row_sel, nt):
    n_rows = len(row_lists)
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in row_lists])
    indices = np.array([x for r in row_lists for x in r], dtype=np.uint32)
    rows = np.array([r for r in row_sel if r < n_rows], dtype=np.uint32)
    weights = np.linspace(-1, 2, 20)
    np.testing.assert_array_equal(K.csr_histogram(indptr, indices, rows, 20, n_threads=nt),
                                  N.csr_histogram(indptr, indices, rows, 20))
    np.testing.assert_array_equal(K.csr_row_scores(indptr, indices, weights, rows, n_threads=nt),
                                  N.csr_row_scores(indptr, indices, weights, rows))


def test_csr_errors():
    indptr = np.array([0, 2, 3], np.int64)
    indices = np.array([0, 4, 1], np.uint32)
    rows = np.array([0, 1], np.uint32)
    w = np.ones(5)
    with pytest.raises(ValueError, match="feature id"):
        K.csr_histogram(indptr, indices, rows, 4)
    with pytest.raises(ValueError, match="feature id"):
        K.csr_row_scores(indptr, indices, np.ones(3))
    for nt in (1, 2):
        with pytest.raises(ValueError, match="rows"):
            K.csr_histogram(indptr, indices, np.array([2], np.uint32), 5, n_threads=nt)
        with pytest.raises(ValueError, match="rows"):
            K.csr_row_scores(indptr, indices, w, np.array([0, 5], np.uint32), n_threads=nt)
    with pytest.raises(ValueError, match="indptr"):
        K.csr_histogram(np.array([0, 3, 2], np.int64), indices, rows, 5)
    with pytest.raises(ValueError, match="indptr"):
        K.csr_row_scores(np.array([0, 2, 4], np.int64), indices, w)
    with pytest.raises(ValueError, match="indptr"):
        K.csr_histogram(np.zeros(0, np.int64), indices, rows, 5)
    with pytest.raises(TypeError, match="indptr"):
        K.csr_histogram(indptr.astype(np.int32), indices, rows, 5)
    with pytest.raises(TypeError, match="indices"):
        K.csr_row_scores(indptr, indices.astype(np.int64), w)
    with pytest.raises(TypeError, match="rows"):
        K.csr_histogram(indptr, indices, rows.astype(np.int64), 5)
    with pytest.raises(TypeError, match="weights"):
        K.csr_row_scores(indptr, indices, w.astype(np.float32))
    with pytest.raises(ValueError, match="n_features"):
        K.csr_histogram(indptr, indices, rows, -1)
    with pytest.raises(TypeError, match="n_features"):
        K.csr_histogram(indptr, indices, rows, 5.0)
    with pytest.raises(ValueError, match="out"):
        K.csr_histogram(indptr, indices, rows, 5, out=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="out"):
        K.csr_row_scores(indptr, indices, w, out=np.zeros(3))
    np.testing.assert_array_equal(K.csr_histogram(indptr, indices, rows, 5), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(K.csr_histogram(indptr, indices, rows[:0], 0), [])


def _pair_case(rng, n_rows, n_features, mean_len, m, n_cls):
    """A CSR with distinct features per row, slots for m of the features, and U[n_cls, m, m]."""
    lens = np.minimum(rng.poisson(mean_len, size=n_rows), n_features)
    rows_f = [np.sort(rng.choice(n_features, int(n), replace=False)) for n in lens]
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum(lens)
    indices = (np.concatenate(rows_f) if n_rows else np.zeros(0)).astype(np.uint32)
    slot_of = np.full(n_features, -1, np.int32)
    slot_of[rng.choice(n_features, min(m, n_features), replace=False)] = rng.permutation(min(m, n_features))
    return indptr, indices, slot_of, rng.normal(size=(n_cls, m, m))


@pytest.mark.parametrize("n_rows,n_features,mean_len,m,n_cls", [
    (0, 5, 3, 2, 1), (1, 1, 1, 1, 1), (65, 63, 8, 10, 2), (3000, 500, 20, 40, 1), (500, 300, 60, 256, 3)])
def test_pair_scores(n_rows, n_features, mean_len, m, n_cls):
    """csr_pair_scores equals its naive twin (every pair of a row's slotted features, U[c, s, t], s < t),
    at any thread count, for all rows and for listed ones."""
    rng = np.random.default_rng(n_rows + 3 * m)
    indptr, indices, slot_of, U = _pair_case(rng, n_rows, n_features, mean_len, m, n_cls)
    expected = N.csr_pair_scores(indptr, indices, slot_of, U)
    for nt in (1, 2):
        np.testing.assert_array_equal(K.csr_pair_scores(readonly(indptr), readonly(indices), readonly(slot_of),
                                                        readonly(U), n_threads=nt), expected)
    if n_rows:
        rows = rng.integers(0, n_rows, size=2 * n_rows).astype(np.uint32)
        out = np.empty((len(rows), n_cls))
        assert K.csr_pair_scores(indptr, indices, slot_of, U, rows, out=out, n_threads=2) is out
        np.testing.assert_array_equal(out, N.csr_pair_scores(indptr, indices, slot_of, U, rows))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 19), max_size=12), max_size=30), st.lists(st.integers(-1, 5), min_size=20,
       max_size=20), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_pair_scores_hypothesis(row_sets, slot_draw, n_cls, nt, seed):
    """Any rows and any slot assignment (distinct slots, some features without one): the kernel equals
    the naive twin, and a row's score is the sum over its pairs of slotted features, by brute force."""
    slot_of = np.full(20, -1, np.int32)
    used = set()
    for f, s in enumerate(slot_draw):
        if s >= 0 and s not in used:
            slot_of[f] = s
            used.add(s)
    U = np.random.default_rng(seed).normal(size=(n_cls, 6, 6))
    indptr = np.zeros(len(row_sets) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in row_sets])
    indices = np.array([f for r in row_sets for f in sorted(r)], dtype=np.uint32)
    got = K.csr_pair_scores(indptr, indices, slot_of, U, n_threads=nt)
    np.testing.assert_array_equal(got, N.csr_pair_scores(indptr, indices, slot_of, U))
    for i, r in enumerate(row_sets):
        slots = sorted(int(slot_of[f]) for f in r if slot_of[f] >= 0)
        want = sum((U[:, s, t] for a, s in enumerate(slots) for t in slots[a + 1:]), np.zeros(n_cls))
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


def test_pair_scores_errors():
    indptr, indices = np.array([0, 2, 3], np.int64), np.array([0, 1, 2], np.uint32)
    slot_of, U = np.array([0, 1, -1], np.int32), np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="len\\(slot_of\\)"):
        K.csr_pair_scores(indptr, indices, slot_of[:2], U)
    with pytest.raises(ValueError, match="slots < m"):
        K.csr_pair_scores(indptr, indices, np.array([0, 2, -1], np.int32), U)
    with pytest.raises(ValueError, match="\\[K, m, m\\]"):
        K.csr_pair_scores(indptr, indices, slot_of, np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="PAIR_MAX_SLOTS"):
        K.csr_pair_scores(indptr, indices, slot_of, np.zeros((1, 257, 257)))
    with pytest.raises(ValueError, match="rows"):
        K.csr_pair_scores(indptr, indices, slot_of, U, np.array([5], np.uint32))
    with pytest.raises(TypeError, match="slot_of"):
        K.csr_pair_scores(indptr, indices, slot_of.astype(np.int64), U)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70000), st.floats(0, 8), st.integers(0, 400), st.integers(1, 2),
       st.integers(0, 2 ** 32 - 1))
def test_compact_csr_histogram_is_csr_histogram(n_rows, n_features, mean_len, n_listed, nt, seed):
    """The histogram through the compact form (uint16 ids below 65,536 features, else uint32; rows across
    several 64-row blocks, listed in any order and repeated; one thread or two) = csr_histogram's = the
    naive twin's; `out` (pre-filled) is zeroed first, inputs may be read-only."""
    rng = np.random.default_rng(seed)
    indptr, indices = make_csr(rng, n_rows, n_features, mean_len)
    block_base, within = compact(indptr)
    narrow = indices.astype(np.uint16) if n_features <= 1 << 16 else indices
    rows = rng.integers(0, n_rows, n_listed if n_rows else 0).astype(np.uint32)
    want = K.csr_histogram(indptr, indices, rows, n_features)
    got = K.compact_csr_histogram(block_base, within, narrow, rows, n_features, n_threads=nt)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(N.compact_csr_histogram(block_base, within, narrow, rows, n_features), want)
    out = np.full(n_features, 3, np.int64)
    assert K.compact_csr_histogram(readonly(block_base), readonly(within), readonly(narrow), readonly(rows),
                                   n_features, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_compact_csr_histogram_errors():
    """Bad rows, pointers and feature ids are refused naming the row; wrong dtypes and shapes naming the
    argument."""
    indptr = np.array([0, 2, 3], np.int64)
    indices = np.array([0, 4, 1], np.uint16)
    block_base, within = compact(indptr)
    rows = np.array([0, 1], np.uint32)
    for nt in (1, 2):
        with pytest.raises(ValueError, match=r"row 0 has a feature id >= n_features = 4"):
            K.compact_csr_histogram(block_base, within, indices, rows, 4, n_threads=nt)
        with pytest.raises(ValueError, match=r"rows\[0\] = 2 is out of range for 2 rows \(len\(within\) - 1\)"):
            K.compact_csr_histogram(block_base, within, indices, np.array([2], np.uint32), 5, n_threads=nt)
    with pytest.raises(ValueError, match="the pointers of row 1 are invalid"):
        K.compact_csr_histogram(block_base, np.array([0, 2, 9], np.uint16), indices, rows, 5)
    with pytest.raises(ValueError, match="the pointers of row 0 are invalid"):
        K.compact_csr_histogram(np.array([-1], np.int64), within, indices, rows, 5)
    with pytest.raises(ValueError, match=r"block_base must have \(len\(within\) - 1\) // 64 \+ 1 = 1 entries"):
        K.compact_csr_histogram(np.zeros(2, np.int64), within, indices, rows, 5)
    with pytest.raises(TypeError, match="within"):
        K.compact_csr_histogram(block_base, within.astype(np.uint32), indices, rows, 5)
    with pytest.raises(TypeError, match="indices must be a numpy.ndarray of dtype uint16 or uint32"):
        K.compact_csr_histogram(block_base, within, indices.astype(np.int64), rows, 5)
    with pytest.raises(TypeError, match="rows"):
        K.compact_csr_histogram(block_base, within, indices, rows.astype(np.int64), 5)
    with pytest.raises(ValueError, match="within must have n_rows"):
        K.compact_csr_histogram(block_base, np.zeros(0, np.uint16), indices, rows, 5)
    with pytest.raises(ValueError, match="out"):
        K.compact_csr_histogram(block_base, within, indices, rows, 5, out=np.zeros(4, np.int64))
    np.testing.assert_array_equal(K.compact_csr_histogram(block_base, within, indices, rows, 5), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(K.compact_csr_histogram(block_base, within, indices, rows[:0], 0), [])
