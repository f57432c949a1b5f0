"""segsrv._kernels.csr vs its naive numpy twin."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import naive as N
from support import readonly


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
