"""segsrv._kernels.cooccur vs its naive numpy twin, on every dispatch path."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import bitset as B
from segsrv._kernels import cooccur as C
from segsrv._kernels import naive as N
from support import as_memmap, readonly

PATHS = B.available_cpu_paths()
WORD_COUNTS = [0, 1, 63, 64, 65, 1031]
DENSITIES = [0.0, 0.001, 0.02, 0.3, 0.9, 1.0]
HYP = settings(max_examples=30, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
# sparse features: the cost rule, all materialised as bitsets, all probed / intersected
MODES = [None, True, False]


@pytest.fixture(params=PATHS)
def cpu_path(request):
    B.set_cpu_path(request.param)
    assert B.cpu_path() == request.param
    yield request.param
    B.set_cpu_path(None)


@pytest.fixture
def tuning():
    """Restore the kernel's tuning after a test that changes it."""
    old = C._set_tuning()
    yield C._set_tuning
    C._set_tuning(**old)


def rand_bits(rng, n_words, densities):
    """uint64[len(densities), n_words]: one random bitset per density."""
    d = np.asarray(densities, dtype=float).reshape(-1, 1)
    mask = rng.random((len(d), n_words * 64)) < d
    packed = np.packbits(mask, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed.view("<u8").astype(np.uint64)).reshape(len(d), n_words)


def to_store(bits):
    """Sparse store (ids uint32, offsets int64) holding the rows of a bitset matrix."""
    parts = [N.bitset_to_ids(row) for row in bits]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    ids = np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, np.uint32)
    return ids, offsets


def check_all(dense, rows, ids, offsets, feats, left=None):
    """Kernel == naive twin for every sparse mode and 1 / 2 threads (cross: 2 threads with
    the cost rule only); symmetric."""
    expected = N.cooccurrence(dense, rows, ids, offsets, feats)
    assert (expected == expected.T).all()
    if left is not None:
        expected_x = N.cross_cooccurrence(left, dense, rows, ids, offsets, feats)
    for mode in MODES:
        C._set_tuning(materialise=mode)
        try:
            for nt in (1, 2):
                got = K.cooccurrence(dense, rows, ids, offsets, feats, n_threads=nt)
                assert got.dtype == np.int64
                np.testing.assert_array_equal(got, expected)
                if left is not None and (nt == 1 or mode is None):
                    got_x = K.cross_cooccurrence(left, dense, rows, ids, offsets, feats,
                                                 n_threads=nt)
                    np.testing.assert_array_equal(got_x, expected_x)
        finally:
            C._set_tuning(materialise=None)
    return expected


# ---------------------------------------------------------------------------
# dispatch: the tiles follow segsrv._kernels.bitset's path
# ---------------------------------------------------------------------------

def test_follows_bitset_path(cpu_path):
    assert C._path_in_use() == cpu_path == K.cpu_path()


def test_env_forces_path():
    path = PATHS[-1]
    code = ("import numpy as np, segsrv._kernels as K; from segsrv._kernels import cooccur as C;"
            "m = np.arange(1, 601, dtype=np.uint64).reshape(3, 200);"
            "print(C._path_in_use(), K.cooccurrence(m).tolist())")
    env = dict(os.environ, SEGSRV_CPU_PATH=path)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    m = np.arange(1, 601, dtype=np.uint64).reshape(3, 200)
    assert res.stdout.strip() == f"{path} {N.cooccurrence(m).tolist()}"


# ---------------------------------------------------------------------------
# hypothesis: random shapes, densities, selections
# ---------------------------------------------------------------------------

@st.composite
def feature_sets(draw):
    n_words = draw(st.sampled_from(WORD_COUNTS))
    n_dense = draw(st.integers(0, 5))
    n_sparse = draw(st.integers(0, 5))
    dens = draw(st.lists(st.sampled_from(DENSITIES), min_size=n_dense + n_sparse,
                         max_size=n_dense + n_sparse))
    seed = draw(st.integers(0, 2**32 - 1))
    rows = None
    if n_dense and draw(st.booleans()):   # a subset, in any order, duplicates allowed
        rows = draw(st.lists(st.integers(0, n_dense - 1), max_size=7))
    sparse = draw(st.sampled_from(["none", "all", "subset"]))
    feats = None
    if sparse == "subset" and n_sparse:
        feats = draw(st.lists(st.integers(0, n_sparse - 1), max_size=7))
    if sparse == "none":
        n_sparse = 0
    n_left = draw(st.integers(0, 4))
    return n_words, n_dense, n_sparse, dens, seed, rows, sparse, feats, n_left


@HYP
@given(feature_sets())
def test_cooccurrence_vs_naive_hypothesis(cpu_path, case):
    n_words, n_dense, n_sparse, dens, seed, rows, sparse, feats, n_left = case
    rng = np.random.default_rng(seed)
    dense = rand_bits(rng, n_words, dens[:n_dense])
    ids = offsets = None
    if sparse != "none":
        ids, offsets = to_store(rand_bits(rng, n_words, dens[n_dense:n_dense + n_sparse]))
    rows = None if rows is None else np.array(rows, dtype=np.int64)
    feats = None if feats is None else np.array(feats, dtype=np.int64)
    left = rand_bits(rng, n_words, rng.random(n_left))
    expected = check_all(dense, rows, ids, offsets, feats, left)
    k = (n_dense if rows is None else len(rows)) + (
        0 if ids is None else (n_sparse if feats is None else len(feats)))
    assert expected.shape == (k, k)


@pytest.mark.parametrize("n_words", WORD_COUNTS)
def test_zero_one_many_features(cpu_path, n_words):
    rng = np.random.default_rng(10 + n_words)
    for k in (0, 1, 2, 5, 9):
        dense = rand_bits(rng, n_words, rng.random(k))
        check_all(dense, None, None, None, None, left=dense[::-1].copy())
        ids, offsets = to_store(dense)
        check_all(dense[:0], None, ids, offsets, None, left=dense.copy())


@pytest.mark.parametrize("tile,block", [(64, 512), (4, 3), (8, 64), (12, 1)])
def test_many_features_tiles(cpu_path, tuning, tile, block):
    """Many tiles (and tile / micro-tile edges) with default and tiny tilings."""
    tuning(tile=tile, block=block)
    rng = np.random.default_rng(tile * 1000 + block)
    n_words = 65 if block < 512 else 1031
    k = 70 if block < 512 else 103
    dense = rand_bits(rng, n_words, rng.choice(DENSITIES, size=k))
    expected = N.cooccurrence(dense)
    for nt in (1, 2):
        np.testing.assert_array_equal(K.cooccurrence(dense, n_threads=nt), expected)
    rows = rng.integers(0, k, size=37).astype(np.int64)
    left = rand_bits(rng, n_words, rng.random(11))
    np.testing.assert_array_equal(K.cross_cooccurrence(left, dense, rows, n_threads=2),
                                  N.cross_cooccurrence(left, dense, rows))


def test_mixed_large_sparse_cost_rule(cpu_path):
    """A realistic mix: the cost rule materialises big sparse features, probes small ones."""
    rng = np.random.default_rng(3)
    n_words = 2000
    dense = rand_bits(rng, n_words, [0.3, 0.05, 0.5, 0.01])
    sparse_bits = rand_bits(rng, n_words, [0.0, 0.0001, 0.001, 0.05, 0.2, 0.0005, 0.6])
    ids, offsets = to_store(sparse_bits)
    mat, probe = C._split_sparse(offsets, np.arange(7, dtype=np.int64), n_words)
    assert len(mat) and len(probe)        # both paths in play
    rows = np.array([3, 0, 0, 2], np.int64)
    feats = np.array([6, 1, 4, 4, 0, 3, 2, 5], np.int64)
    left = rand_bits(rng, n_words, [0.5, 0.01, 1.0])
    check_all(dense, rows, ids, offsets, feats, left)


def test_materialise_cap(monkeypatch):
    rng = np.random.default_rng(4)
    n_words = 64
    bits = rand_bits(rng, n_words, [0.9, 0.5, 0.95, 0.7])
    ids, offsets = to_store(bits)
    monkeypatch.setattr(C, "MATERIALISE_MAX_BYTES", 2 * n_words * 8)
    mat, probe = C._split_sparse(offsets, np.arange(4, dtype=np.int64), n_words)
    assert sorted(mat.tolist()) == [0, 2]          # the two largest only
    np.testing.assert_array_equal(K.cooccurrence(bits[:0], None, ids, offsets, n_threads=2),
                                  N.cooccurrence(bits))


def test_memmap_readonly_out_and_symmetry(cpu_path, tmp_path):
    rng = np.random.default_rng(7)
    n_words = 1031
    dense = rand_bits(rng, n_words, [0.2, 0.5, 0.01, 0.9, 0.3])
    ids, offsets = to_store(rand_bits(rng, n_words, [0.001, 0.4, 0.02]))
    left = rand_bits(rng, n_words, [0.1, 0.7])
    dm, im, om, lm = (as_memmap(tmp_path, dense, "d"), as_memmap(tmp_path, ids, "i"),
                      as_memmap(tmp_path, offsets, "o"), as_memmap(tmp_path, left, "l"))
    rows = readonly(np.array([4, 1, 1, 0], np.int64))
    feats = readonly(np.array([2, 0, 1], np.int64))
    expected = N.cooccurrence(dense, rows, ids, offsets, feats)
    out = np.full((7, 7), -3, np.int64)
    assert K.cooccurrence(dm, rows, im, om, feats, out=out, n_threads=2) is out
    np.testing.assert_array_equal(out, expected)
    assert (out == out.T).all()
    np.testing.assert_array_equal(np.diag(out), [N.popcount(dense[r]) for r in rows] +
                                  [int(offsets[f + 1] - offsets[f]) for f in feats])
    out_x = np.full((2, 7), 99, np.int64)
    assert K.cross_cooccurrence(lm, dm, rows, im, om, feats, out=out_x) is out_x
    np.testing.assert_array_equal(out_x, N.cross_cooccurrence(left, dense, rows, ids, offsets, feats))
    np.testing.assert_array_equal(
        K.cooccurrence(readonly(dense), None, readonly(ids), readonly(offsets)),
        N.cooccurrence(dense, None, ids, offsets))


def test_cross_is_slice_of_full(cpu_path):
    rng = np.random.default_rng(8)
    n_words = 129
    dense = rand_bits(rng, n_words, [0.3, 0.6, 0.02])
    ids, offsets = to_store(rand_bits(rng, n_words, [0.01, 0.5]))
    left = rand_bits(rng, n_words, [0.5, 0.05, 0.0, 1.0])
    both = np.concatenate([left, dense])
    full = K.cooccurrence(both, None, ids, offsets, n_threads=2)
    np.testing.assert_array_equal(K.cross_cooccurrence(left, dense, None, ids, offsets),
                                  full[:4, 4:])
    rows = np.array([2, 0], np.int64)
    np.testing.assert_array_equal(
        K.cross_cooccurrence(left, dense, rows, ids, offsets, np.array([1], np.int64)),
        full[:4][:, [6, 4, 8]])


def test_big_counts_and_threads():
    """Counts past 2**16 per pair and the split of few tiles into word segments."""
    rng = np.random.default_rng(9)
    n_words = 40_000
    dense = rand_bits(rng, n_words, [1.0, 0.5, 0.9])
    expected = N.cooccurrence(dense)
    assert expected[0, 0] == 64 * n_words
    for nt in (1, 2, 3):
        np.testing.assert_array_equal(K.cooccurrence(dense, n_threads=nt), expected)
        np.testing.assert_array_equal(K.cross_cooccurrence(dense[:1], dense, n_threads=nt),
                                      expected[:1])


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def test_empty_shapes():
    d = np.zeros((3, 2), np.uint64)
    assert K.cooccurrence(np.zeros((0, 2), np.uint64)).shape == (0, 0)
    assert K.cooccurrence(d, np.zeros(0, np.int64)).shape == (0, 0)
    np.testing.assert_array_equal(K.cooccurrence(np.zeros((2, 0), np.uint64)), np.zeros((2, 2)))
    ids, offsets = np.zeros(0, np.uint32), np.zeros(3, np.int64)
    np.testing.assert_array_equal(K.cooccurrence(np.zeros((0, 0), np.uint64), None, ids, offsets),
                                  np.zeros((2, 2)))
    np.testing.assert_array_equal(K.cooccurrence(d, None, ids, np.zeros(1, np.int64)),
                                  np.zeros((3, 3)))
    assert K.cross_cooccurrence(np.zeros((0, 2), np.uint64), d).shape == (0, 3)
    assert K.cross_cooccurrence(np.zeros((2, 2), np.uint64), d[:0]).shape == (2, 0)


def test_errors():
    d = np.zeros((3, 2), np.uint64)
    ids = np.array([1, 5, 127, 3], np.uint32)
    offsets = np.array([0, 3, 4], np.int64)
    left = np.zeros((2, 2), np.uint64)
    with pytest.raises(TypeError, match="dense"):
        K.cooccurrence(d.astype(np.int64))
    with pytest.raises(TypeError, match="dense"):
        K.cooccurrence(d.tolist())
    with pytest.raises(TypeError, match="dense"):
        K.cooccurrence(d.astype(">u8"))
    with pytest.raises(ValueError, match="dense"):
        K.cooccurrence(d[0])
    with pytest.raises(ValueError, match="dense"):
        K.cooccurrence(np.zeros((2, 3), np.uint64).T)
    with pytest.raises(TypeError, match="dense_rows"):
        K.cooccurrence(d, np.array([0], np.int32))
    with pytest.raises(ValueError, match="dense_rows"):
        K.cooccurrence(d, np.array([0, 3], np.int64))
    with pytest.raises(ValueError, match="dense_rows"):
        K.cooccurrence(d, np.array([-1], np.int64))
    with pytest.raises(ValueError, match="dense_rows"):
        K.cooccurrence(d, np.zeros((1, 1), np.int64))
    with pytest.raises(TypeError, match="ids"):
        K.cooccurrence(d, None, ids.astype(np.int64), offsets)
    with pytest.raises(TypeError, match="offsets"):
        K.cooccurrence(d, None, ids, offsets.astype(np.int32))
    with pytest.raises(ValueError, match="offsets"):
        K.cooccurrence(d, None, ids, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="ids and offsets"):
        K.cooccurrence(d, None, ids, None)
    with pytest.raises(ValueError, match="ids and offsets"):
        K.cooccurrence(d, None, None, offsets)
    with pytest.raises(ValueError, match="sparse_features"):
        K.cooccurrence(d, None, None, None, np.array([0], np.int64))
    with pytest.raises(TypeError, match="sparse_features"):
        K.cooccurrence(d, None, ids, offsets, np.array([0], np.uint64))
    with pytest.raises(ValueError, match="sparse_features"):
        K.cooccurrence(d, None, ids, offsets, np.array([2], np.int64))
    with pytest.raises(ValueError, match="sparse_features"):
        K.cooccurrence(d, None, ids, offsets, np.array([-1], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.cooccurrence(d, None, ids, np.array([0, 5, 4], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.cooccurrence(d, None, ids, np.array([0, 3, 2], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.cooccurrence(d, None, ids, np.array([-1, 3, 4], np.int64))
    # feature 1 is [3]: fine; feature 0 holds 127 >= 64 * 2 = 128? no: 127 < 128 -> fine
    np.testing.assert_array_equal(K.cooccurrence(d[:0], None, ids, offsets), [[3, 0], [0, 1]])
    with pytest.raises(ValueError, match="ids .*>= 64 \\* n_words"):
        K.cooccurrence(np.zeros((0, 1), np.uint64), None, ids, offsets)
    with pytest.raises(ValueError, match="ids .*>= 64 \\* n_words"):
        K.cross_cooccurrence(left[:, :1].copy(), np.zeros((0, 1), np.uint64), None, ids, offsets)
    with pytest.raises(ValueError, match="sorted"):
        K.cooccurrence(d, None, np.array([5, 1], np.uint32), np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="sorted"):
        K.cooccurrence(d, None, np.array([1, 1], np.uint32), np.array([0, 2], np.int64))
    # only the selected sparse features are checked
    np.testing.assert_array_equal(
        K.cooccurrence(d[:0], None, np.array([1, 1, 7], np.uint32), np.array([0, 2, 3], np.int64),
                       np.array([1], np.int64)), [[1]])
    with pytest.raises(TypeError, match="left"):
        K.cross_cooccurrence(left.astype(np.int64), d)
    with pytest.raises(ValueError, match="left"):
        K.cross_cooccurrence(left[0], d)
    with pytest.raises(ValueError, match="left"):
        K.cross_cooccurrence(np.zeros((2, 3), np.uint64), d)
    with pytest.raises(ValueError, match="out"):
        K.cooccurrence(d, out=np.zeros((3, 2), np.int64))
    with pytest.raises(TypeError, match="out"):
        K.cooccurrence(d, out=np.zeros((3, 3), np.float64))
    with pytest.raises(ValueError, match="out"):
        K.cooccurrence(d, out=readonly(np.zeros((3, 3), np.int64)))
    with pytest.raises(ValueError, match="out"):
        K.cross_cooccurrence(left, d, out=np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="out"):
        buf = np.zeros((3, 3), np.uint64)
        K.cooccurrence(buf, out=buf.view(np.int64))
    with pytest.raises(ValueError, match="out must not share memory with dense_rows"):
        buf = np.zeros(9, np.int64)
        K.cooccurrence(d, buf[:3], out=buf.reshape(3, 3))
    with pytest.raises(ValueError, match="n_threads"):
        K.cooccurrence(d, n_threads=0)
    with pytest.raises(TypeError, match="n_threads"):
        K.cross_cooccurrence(left, d, n_threads=1.0)


def test_naive_exports():
    for name in ("cooccurrence", "cross_cooccurrence"):
        assert name in N.__all__ and name in K.__all__
        assert getattr(K, name) is getattr(C, name)
