"""segsrv._kernels.bitset vs its naive numpy twin, on every dispatch path."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import bitset as B
from segsrv._kernels import naive as N
from support import as_memmap, readonly

WORD_COUNTS = [0, 1, 63, 64, 65, 129, 1031]
PATHS = B.available_cpu_paths()
HYP = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=PATHS)
def cpu_path(request):
    B.set_cpu_path(request.param)
    assert B.cpu_path() == request.param
    yield request.param
    B.set_cpu_path(None)


def rand_bits(rng, n_words, density, shape=()):
    shape = tuple(shape) + (n_words * 64,)
    mask = rng.random(shape) < density
    packed = np.packbits(mask, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed.view("<u8").astype(np.uint64))


def sparse_store(rng, n_bits, n_features, density):
    """Concatenated sorted uint32 ids + int64 offsets."""
    parts = [np.flatnonzero(rng.random(n_bits) < density).astype(np.uint32)
             for _ in range(n_features)]
    offsets = np.zeros(n_features + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    ids = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    return ids.astype(np.uint32), offsets


# ---------------------------------------------------------------------------
# dispatch / config
# ---------------------------------------------------------------------------

def test_paths_and_openmp():
    assert B.cpu_path() in ("avx512vpopcntdq", "avx2", "popcnt", "generic")
    assert PATHS[-1] == "generic"
    assert B.cpu_path() == PATHS[0] or os.environ.get("SEGSRV_CPU_PATH")
    assert isinstance(K.has_openmp(), bool)
    assert K.cpu_path is B.cpu_path


def test_set_cpu_path_errors():
    with pytest.raises(ValueError):
        B.set_cpu_path("sse9")
    if "avx512vpopcntdq" not in PATHS:
        with pytest.raises(ValueError):
            B.set_cpu_path("avx512vpopcntdq")
    assert B.set_cpu_path(None) == PATHS[0]


@pytest.mark.parametrize("path", PATHS)
def test_env_forces_path(path):
    code = ("import numpy as np, segsrv._kernels as K;"
            "q = np.arange(1, 200, dtype=np.uint64);"
            "m = np.stack([q, q[::-1].copy()]);"
            "print(K.cpu_path(), K.and_count_dense(q, m).tolist(), K.popcount(m))")
    env = dict(os.environ, SEGSRV_CPU_PATH=path)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    q = np.arange(1, 200, dtype=np.uint64)
    m = np.stack([q, q[::-1].copy()])
    expected = f"{path} {N.and_count_dense(q, m).tolist()} {N.popcount(m)}"
    assert res.stdout.strip() == expected


def test_env_bad_path_warns():
    code = "import segsrv._kernels as K; print(K.cpu_path())"
    env = dict(os.environ, SEGSRV_CPU_PATH="bogus")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert res.stdout.strip() == PATHS[0]
    assert "SEGSRV_CPU_PATH" in res.stderr


@pytest.mark.parametrize("env,want", [
    ({}, ("PASSIVE", "True")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", "False")),
    ({"GOMP_SPINCOUNT": "1000"}, ("None", "False")),
])
def test_openmp_waits_passively_unless_the_environment_says_otherwise(env, want):
    """segsrv._kernels sets OMP_WAIT_POLICY=PASSIVE before libgomp loads (bench/contention.py: spinning
    waits fall off a cliff beside a busy process), and leaves a caller's own setting alone."""
    code = ("import os, segsrv._kernels as K; import numpy as np;"
            "K.popcount(np.ones(4, np.uint64));"
            "print(os.environ.get('OMP_WAIT_POLICY'), K.WAIT_POLICY_SET)")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    res = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True,
                         text=True, check=True)
    assert tuple(res.stdout.split()) == want


# ---------------------------------------------------------------------------
# popcount / probe
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_words", WORD_COUNTS)
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_popcount(cpu_path, n_words, density):
    rng = np.random.default_rng(n_words)
    a = rand_bits(rng, n_words, density)
    expected = N.popcount(a)
    assert K.popcount(a) == expected
    assert K.popcount(readonly(a), n_threads=2) == expected
    assert K.read_bandwidth_probe(a) == N.read_bandwidth_probe(a)


def test_popcount_large_threads(cpu_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**64 - 1, size=300_001, dtype=np.uint64, endpoint=True)
    expected = int(np.bitwise_count(a).sum())
    assert K.popcount(a, n_threads=1) == K.popcount(a, n_threads=2) == expected
    assert K.popcount(a.reshape(1, -1)[:, :300_000]) == int(np.bitwise_count(a[:300_000]).sum())
    assert K.read_bandwidth_probe(a) == N.read_bandwidth_probe(a)


# ---------------------------------------------------------------------------
# dense one-vs-many
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_words", WORD_COUNTS)
def test_and_count_dense(cpu_path, n_words):
    rng = np.random.default_rng(100 + n_words)
    for density in (0.001, 0.2, 0.9):
        q = rand_bits(rng, n_words, density)
        m = rand_bits(rng, n_words, density, shape=(7,))
        expected = N.and_count_dense(q, m)
        for nt in (1, 2):
            np.testing.assert_array_equal(K.and_count_dense(q, m, n_threads=nt), expected)
        rows = np.array([6, 0, 0, 3], dtype=np.int64)
        np.testing.assert_array_equal(K.and_count_dense(q, m, rows=rows, n_threads=2),
                                      N.and_count_dense(q, m, rows))
        # one row, two threads: the word-split path
        one = np.array([5], dtype=np.int64)
        np.testing.assert_array_equal(K.and_count_dense(q, m, rows=one, n_threads=2),
                                      expected[5:6])


@pytest.mark.parametrize("prefetch_words", [0, 1, 31, 32, 256, 5000])
@pytest.mark.parametrize("block_words", [0, 40])
def test_and_count_dense_prefetch_and_blocks(cpu_path, prefetch_words, block_words):
    """The rows path's software prefetch (AVX-512: ahead in the row, then into the next row's start;
    a distance past the next row too) and column blocks change no count, whatever the row order."""
    rng = np.random.default_rng(prefetch_words + block_words)
    m = rand_bits(rng, 157, 0.3, shape=(9,))
    q = rand_bits(rng, 157, 0.5)
    rows = np.array([8, 0, 0, 3, 2, 1, 8, 7], dtype=np.int64)
    want = N.and_count_dense(q, m, rows)
    old = B._set_dense_prefetch_words(prefetch_words)
    try:
        B._set_dense_block_words(block_words)
        for nt in (1, 2):
            np.testing.assert_array_equal(K.and_count_dense(q, m, rows=rows, n_threads=nt), want)
            np.testing.assert_array_equal(K.and_count_dense(q, m, n_threads=nt), N.and_count_dense(q, m))
    finally:
        B._set_dense_prefetch_words(old)
        B._set_dense_block_words(0)


@pytest.mark.parametrize("rows_in_flight", [1, 2, 4, 8])
@pytest.mark.parametrize("n_words", [1, 7, 8, 15, 16, 17, 33, 157])
def test_and_count_dense_rows_in_flight(cpu_path, rows_in_flight, n_words):
    """Rows read together (AVX-512: 2, 4 or 8 rows per pass over the query) change no count: every row
    count (k = 1..9, so every remainder of 2, 4 and 8), repeated rows, lengths around the 8- and
    16-word steps, with and without column blocks."""
    rng = np.random.default_rng(rows_in_flight * 1000 + n_words)
    m = rand_bits(rng, n_words, 0.4, shape=(9,))
    q = rand_bits(rng, n_words, 0.6)
    old = B._set_dense_rows_in_flight(rows_in_flight)
    try:
        for block_words in (0, 5):
            B._set_dense_block_words(block_words)
            for k in range(1, 10):
                rows = np.array([(3 * i + 1) % 9 for i in range(k - 1)] + [2], dtype=np.int64)
                np.testing.assert_array_equal(K.and_count_dense(q, m, rows=rows, n_threads=1),
                                              N.and_count_dense(q, m, rows))
            np.testing.assert_array_equal(K.and_count_dense(q, m, n_threads=1), N.and_count_dense(q, m))
    finally:
        B._set_dense_rows_in_flight(old)
        B._set_dense_block_words(0)
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        B._set_dense_rows_in_flight(3)


def test_and_count_dense_memmap_out_and_threads(cpu_path, tmp_path):
    rng = np.random.default_rng(7)
    n_words = 2053
    q = rand_bits(rng, n_words, 0.3)
    m = rand_bits(rng, n_words, 0.4, shape=(33,))
    expected = np.bitwise_count(q & m).sum(axis=1).astype(np.int64)
    qm, mm = as_memmap(tmp_path, q, "q"), as_memmap(tmp_path, m, "m")
    out = np.full(33, -5, dtype=np.int64)
    res = K.and_count_dense(qm, mm, out=out, n_threads=2)
    assert res is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(K.and_count_dense(readonly(q), readonly(m), n_threads=1),
                                  expected)
    rows = readonly(np.arange(32, -1, -1, dtype=np.int64))
    np.testing.assert_array_equal(K.and_count_dense(qm, mm, rows=rows), expected[::-1])


def test_and_count_dense_empty_and_errors():
    q = np.zeros(3, np.uint64)
    m = np.zeros((4, 3), np.uint64)
    assert K.and_count_dense(q, np.zeros((0, 3), np.uint64)).shape == (0,)
    np.testing.assert_array_equal(K.and_count_dense(np.zeros(0, np.uint64),
                                                    np.zeros((2, 0), np.uint64)), [0, 0])
    assert K.and_count_dense(q, m, rows=np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(TypeError, match="query"):
        K.and_count_dense(q.astype(np.int64), m)
    with pytest.raises(TypeError, match="matrix"):
        K.and_count_dense(q, m.astype(np.uint32))
    with pytest.raises(TypeError, match="query"):
        K.and_count_dense(list(q), m)
    with pytest.raises(ValueError, match="matrix"):
        K.and_count_dense(q, m[0])
    with pytest.raises(ValueError, match="matrix"):
        K.and_count_dense(q, np.zeros((3, 4), np.uint64).T)
    with pytest.raises(ValueError, match="query"):
        K.and_count_dense(np.zeros(4, np.uint64), m)
    with pytest.raises(TypeError, match="rows"):
        K.and_count_dense(q, m, rows=np.array([0], np.int32))
    with pytest.raises(ValueError, match="rows"):
        K.and_count_dense(q, m, rows=np.array([0, 4], np.int64))
    with pytest.raises(ValueError, match="rows"):
        K.and_count_dense(q, m, rows=np.array([-1], np.int64))
    with pytest.raises(ValueError, match="out"):
        K.and_count_dense(q, m, out=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="out"):
        K.and_count_dense(q, m, out=np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="out"):
        K.and_count_dense(q, m, out=readonly(np.zeros(4, np.int64)))
    with pytest.raises(TypeError, match="query"):
        K.and_count_dense(q.astype(">u8"), m)
    with pytest.raises(ValueError, match="n_threads"):
        K.and_count_dense(q, m, n_threads=0)


# ---------------------------------------------------------------------------
# dense many-vs-many (shared scans)
# ---------------------------------------------------------------------------

@HYP
@given(n_q=st.integers(0, 6), n_words=st.integers(0, 200), k=st.integers(0, 11), density=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_and_count_dense_many_vs_naive_hypothesis(cpu_path, n_q, n_words, k, density, seed):
    """Each query's counts equal and_count_dense's and the naive twin's: any number of queries and rows
    (every remainder of the AVX-512 path's groups of 4), repeated rows, one and two threads."""
    rng = np.random.default_rng(seed)
    m = rand_bits(rng, n_words, density, shape=(7,))
    qs = rand_bits(rng, n_words, 1 - density, shape=(n_q,))
    rows = rng.integers(0, 7, size=k).astype(np.int64)
    want = N.and_count_dense_many(qs, m, rows)
    assert want.shape == (n_q, k)
    for nt in (1, 2):
        got = K.and_count_dense_many(qs, m, rows, n_threads=nt)
        np.testing.assert_array_equal(got, want)
        for j in range(n_q):
            np.testing.assert_array_equal(got[j], K.and_count_dense(qs[j], m, rows, n_threads=1))


@pytest.mark.parametrize("n_words", [16383, 16384, 16385, 33000])
def test_and_count_dense_many_column_blocks(cpu_path, n_words):
    """Rows longer than the 16,384-word column block: each block's counts add up, the last one short."""
    rng = np.random.default_rng(n_words)
    m = rand_bits(rng, n_words, 0.5, shape=(13,))
    qs = rand_bits(rng, n_words, 0.3, shape=(3,))
    rows = np.array([12, 0, 5, 5, 1, 7, 3, 2, 9, 11], dtype=np.int64)
    for nt in (1, 2):
        np.testing.assert_array_equal(K.and_count_dense_many(qs, m, rows, n_threads=nt),
                                      N.and_count_dense_many(qs, m, rows))
    np.testing.assert_array_equal(K.and_count_dense_many(qs, m), N.and_count_dense_many(qs, m))


def test_and_count_dense_many_memmap_out_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    m = rand_bits(rng, 70, 0.4, shape=(5,))
    qs = rand_bits(rng, 70, 0.6, shape=(2,))
    out = np.full((2, 5), -1, dtype=np.int64)
    res = K.and_count_dense_many(as_memmap(tmp_path, qs, "qs"), as_memmap(tmp_path, m, "m"), out=out)
    assert res is out
    np.testing.assert_array_equal(out, N.and_count_dense_many(qs, m))
    np.testing.assert_array_equal(K.and_count_dense_many(readonly(qs), readonly(m), readonly(np.arange(5))),
                                  out)
    assert K.and_count_dense_many(qs[:0], m).shape == (0, 5)
    assert K.and_count_dense_many(qs, m, np.zeros(0, np.int64)).shape == (2, 0)
    np.testing.assert_array_equal(K.and_count_dense_many(np.zeros((2, 0), np.uint64), np.zeros((3, 0), np.uint64)),
                                  np.zeros((2, 3)))
    with pytest.raises(TypeError, match="queries"):
        K.and_count_dense_many(qs.astype(np.int64), m)
    with pytest.raises(ValueError, match="queries"):
        K.and_count_dense_many(qs[0], m)
    with pytest.raises(ValueError, match="queries have 69 words"):
        K.and_count_dense_many(np.ascontiguousarray(qs[:, :69]), m)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.and_count_dense_many(qs.T, m)
    with pytest.raises(TypeError, match="matrix"):
        K.and_count_dense_many(qs, m.astype(np.uint32))
    with pytest.raises(TypeError, match="rows"):
        K.and_count_dense_many(qs, m, np.array([0], np.int32))
    with pytest.raises(ValueError, match=r"rows\[1\] = 5 is out of range"):
        K.and_count_dense_many(qs, m, np.array([0, 5], np.int64))
    with pytest.raises(ValueError, match="out"):
        K.and_count_dense_many(qs, m, out=np.zeros((5, 2), np.int64))
    with pytest.raises(ValueError, match="n_threads"):
        K.and_count_dense_many(qs, m, n_threads=0)


# ---------------------------------------------------------------------------
# sparse features
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_words", WORD_COUNTS)
def test_and_count_sparse_and_ids(n_words):
    rng = np.random.default_rng(200 + n_words)
    n_bits = n_words * 64
    for density in (0.001, 0.05, 0.6):
        q = rand_bits(rng, n_words, 0.3)
        qids = N.bitset_to_ids(q)
        ids, offsets = sparse_store(rng, n_bits, 9, density)
        expected = N.and_count_sparse(q, ids, offsets)
        np.testing.assert_array_equal(N.and_count_ids(qids, ids, offsets), expected)
        for nt in (1, 2):
            np.testing.assert_array_equal(
                K.and_count_sparse(q, ids, offsets, n_threads=nt), expected)
            np.testing.assert_array_equal(
                K.and_count_ids(qids, ids, offsets, n_threads=nt), expected)
        feats = np.array([8, 0, 0, 4], np.int64)
        np.testing.assert_array_equal(
            K.and_count_sparse(readonly(q), readonly(ids), readonly(offsets), readonly(feats)),
            expected[feats])
        np.testing.assert_array_equal(
            K.and_count_ids(readonly(qids), readonly(ids), readonly(offsets), readonly(feats)),
            expected[feats])


@st.composite
def id_sets(draw, max_id=5000):
    n_feat = draw(st.integers(0, 6))
    feats = [sorted(draw(st.sets(st.integers(0, max_id - 1), max_size=300)))
             for _ in range(n_feat)]
    # mix in a huge/tiny pair so galloping is exercised both ways
    if draw(st.booleans()):
        feats.append(list(range(0, max_id, draw(st.integers(1, 3)))))
    query = sorted(draw(st.sets(st.integers(0, max_id - 1), max_size=draw(
        st.sampled_from([0, 3, 50, 2000])))))
    return query, feats


@HYP
@given(id_sets())
def test_ids_vs_naive_hypothesis(data):
    query, feats = data
    n_words = (5000 + 63) // 64
    qids = np.array(query, dtype=np.uint32)
    ids = np.array([x for f in feats for x in f], dtype=np.uint32)
    offsets = np.zeros(len(feats) + 1, np.int64)
    offsets[1:] = np.cumsum([len(f) for f in feats])
    qbits = N.ids_to_bitset(qids, n_words)
    expected = N.and_count_ids(qids, ids, offsets)
    np.testing.assert_array_equal(K.and_count_ids(qids, ids, offsets), expected)
    np.testing.assert_array_equal(K.and_count_sparse(qbits, ids, offsets), expected)
    np.testing.assert_array_equal(K.and_count_ids(qids, ids, offsets, n_threads=2), expected)


def test_sparse_errors():
    q = np.zeros(2, np.uint64)
    ids = np.array([1, 5, 127, 3], np.uint32)
    offsets = np.array([0, 3, 4], np.int64)
    np.testing.assert_array_equal(K.and_count_sparse(q, ids, offsets), [0, 0])
    assert K.and_count_sparse(q, ids, np.array([0], np.int64)).shape == (0,)
    assert K.and_count_ids(np.zeros(0, np.uint32), ids, offsets).tolist() == [0, 0]
    with pytest.raises(ValueError, match="id >= 64"):
        K.and_count_sparse(np.zeros(1, np.uint64), ids, offsets)
    with pytest.raises(ValueError, match="features"):
        K.and_count_sparse(q, ids, offsets, features=np.array([2], np.int64))
    with pytest.raises(ValueError, match="features"):
        K.and_count_ids(q.view(np.uint32)[:0], ids, offsets, features=np.array([-1], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.and_count_sparse(q, ids, np.array([0, 5, 4], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.and_count_ids(np.zeros(0, np.uint32), ids, np.array([0, 3, 2], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        K.and_count_ids(np.zeros(0, np.uint32), ids, np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="ids"):
        K.and_count_sparse(q, ids.astype(np.int64), offsets)
    with pytest.raises(TypeError, match="offsets"):
        K.and_count_ids(np.zeros(0, np.uint32), ids, offsets.astype(np.int32))
    with pytest.raises(TypeError, match="query_ids"):
        K.and_count_ids(np.zeros(0, np.int32), ids, offsets)
    with pytest.raises(ValueError, match="sorted"):
        K.and_count_ids(np.array([3, 1], np.uint32), ids, offsets)
    with pytest.raises(ValueError, match="sorted"):
        K.and_count_ids(np.array([1, 1], np.uint32), ids, offsets)


# ---------------------------------------------------------------------------
# element-wise ops
# ---------------------------------------------------------------------------

OPS = [(K.bitset_and, N.bitset_and), (K.bitset_or, N.bitset_or),
       (K.bitset_andnot, N.bitset_andnot)]


@pytest.mark.parametrize("n_words", WORD_COUNTS + [200_003])
@pytest.mark.parametrize("op,ref", OPS)
def test_binops(op, ref, n_words):
    rng = np.random.default_rng(n_words)
    a = rng.integers(0, 2**64 - 1, size=n_words, dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, size=n_words, dtype=np.uint64, endpoint=True)
    expected = ref(a, b) if n_words < 5000 else {
        K.bitset_and: a & b, K.bitset_or: a | b, K.bitset_andnot: a & ~b}[op]
    np.testing.assert_array_equal(op(readonly(a), readonly(b)), expected)
    out = np.empty_like(a)
    assert op(a, b, out=out) is out
    np.testing.assert_array_equal(out, expected)
    a2, b2 = a.copy(), b.copy()
    assert op(a2, b, out=a2) is a2          # in place into a
    np.testing.assert_array_equal(a2, expected)
    assert op(a, b2, out=b2) is b2          # in place into b
    np.testing.assert_array_equal(b2, expected)
    a3 = a.copy()
    op(a3, a3, out=a3[:])                   # same memory, different view object
    np.testing.assert_array_equal(a3, ref(a, a) if n_words < 5000 else op(a, a))


def test_binop_errors():
    a = np.zeros(8, np.uint64)
    with pytest.raises(ValueError, match="same length"):
        K.bitset_and(a, np.zeros(7, np.uint64))
    with pytest.raises(TypeError, match="b"):
        K.bitset_or(a, np.zeros(8, np.int64))
    with pytest.raises(ValueError, match="overlap"):
        big = np.zeros(9, np.uint64)
        K.bitset_andnot(big[:8], a, out=big[1:])
    with pytest.raises(ValueError, match="out"):
        K.bitset_and(a, a, out=readonly(a))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.bitset_and(np.zeros(16, np.uint64)[::2], a)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_words", WORD_COUNTS)
def test_bitset_ids_roundtrip(n_words):
    rng = np.random.default_rng(300 + n_words)
    for density in (0.0, 0.01, 0.5, 1.0):
        bits = rand_bits(rng, n_words, density)
        ids = K.bitset_to_ids(readonly(bits))
        assert ids.dtype == np.uint32
        np.testing.assert_array_equal(ids, N.bitset_to_ids(bits))
        np.testing.assert_array_equal(K.ids_to_bitset(readonly(ids), n_words), bits)
        for n_bits in sorted({0, 1, 63, 64, 65, n_words * 64 - 1, n_words * 64}):
            if 0 <= n_bits <= n_words * 64:
                np.testing.assert_array_equal(K.bitset_to_ids(bits, n_bits),
                                              N.bitset_to_ids(bits, n_bits))
        out = np.full(n_words, 2**64 - 1, np.uint64)
        assert K.ids_to_bitset(ids, n_words, out=out) is out   # zeroed first
        np.testing.assert_array_equal(out, bits)


@HYP
@given(st.lists(st.integers(0, 64 * 70 - 1), max_size=400), st.integers(70, 90))
def test_ids_to_bitset_hypothesis(id_list, n_words):
    ids = np.array(id_list, dtype=np.uint32)   # any order, duplicates allowed
    np.testing.assert_array_equal(K.ids_to_bitset(ids, n_words), N.ids_to_bitset(ids, n_words))
    np.testing.assert_array_equal(K.bitset_to_ids(K.ids_to_bitset(ids, n_words)),
                                  np.unique(ids))


def test_conversion_errors():
    with pytest.raises(ValueError, match="out of range"):
        K.ids_to_bitset(np.array([0, 128], np.uint32), 2)
    with pytest.raises(ValueError, match="out of range"):
        K.ids_to_bitset(np.array([0], np.uint32), 0)
    assert K.ids_to_bitset(np.zeros(0, np.uint32), 0).shape == (0,)
    with pytest.raises(TypeError, match="ids"):
        K.ids_to_bitset(np.array([0], np.int64), 2)
    with pytest.raises(ValueError, match="n_words"):
        K.ids_to_bitset(np.array([0], np.uint32), -1)
    with pytest.raises(ValueError, match="n_bits"):
        K.bitset_to_ids(np.zeros(2, np.uint64), 129)
    with pytest.raises(TypeError, match="bits"):
        K.bitset_to_ids(np.zeros(2, np.uint32))
    assert K.bitset_to_ids(np.zeros(0, np.uint64)).shape == (0,)


def test_set_bits():
    rng = np.random.default_rng(5)
    for n_words in (1, 63, 64, 65):
        m = np.zeros((5, n_words), np.uint64)
        rows = rng.integers(0, 5, size=300).astype(np.int64)
        ids = rng.integers(0, 64 * n_words, size=300).astype(np.uint32)
        ref = m.copy()
        N.set_bits(ref, rows, ids)
        assert K.set_bits(m, readonly(rows), readonly(ids)) is None
        np.testing.assert_array_equal(m, ref)
    m = np.zeros((2, 2), np.uint64)
    K.set_bits(m, np.zeros(0, np.int64), np.zeros(0, np.uint32))
    with pytest.raises(ValueError, match="out of range"):
        K.set_bits(m, np.array([0, 2], np.int64), np.array([0, 0], np.uint32))
    with pytest.raises(ValueError, match="out of range"):
        K.set_bits(m, np.array([0, 1], np.int64), np.array([0, 128], np.uint32))
    assert not m.any()   # nothing written on error
    with pytest.raises(ValueError, match="same length"):
        K.set_bits(m, np.array([0], np.int64), np.array([0, 1], np.uint32))
    with pytest.raises(ValueError, match="writable"):
        K.set_bits(readonly(m), np.array([0], np.int64), np.array([0], np.uint32))
    with pytest.raises(TypeError, match="matrix_rows"):
        K.set_bits(m, np.array([0], np.uint32), np.array([0], np.uint32))


# ---------------------------------------------------------------------------
# thread policy
# ---------------------------------------------------------------------------

def test_thread_policy(monkeypatch):
    monkeypatch.delenv("SEGSRV_NUM_THREADS", raising=False)
    K.set_num_threads(None)
    default = len(os.sched_getaffinity(0))
    assert K.get_num_threads() == default
    assert K.resolve_threads(None, 10) == 1
    assert K.resolve_threads(None, 1 << 40) == default
    assert K.resolve_threads(3, 10) == 3
    monkeypatch.setenv("SEGSRV_NUM_THREADS", "5")
    assert K.get_num_threads() == default  # read once, at first use
    K.set_num_threads(None)  # read again
    assert K.get_num_threads() == 5
    assert K.resolve_threads(None, 1 << 40) == 5
    assert K.resolve_threads(None, 2 * K.SMALL_WORK_WORDS) == 2
    K.set_num_threads(1)
    try:
        assert K.resolve_threads(None, 1 << 40) == 1
        assert K.resolve_threads(2, 1) == 2
    finally:
        K.set_num_threads(None)
    with pytest.raises(ValueError):
        K.resolve_threads(0, 10)
    with pytest.raises(TypeError):
        K.resolve_threads(1.5, 10)
    with pytest.raises(ValueError):
        K.set_num_threads(0)
    monkeypatch.setenv("SEGSRV_NUM_THREADS", "zero")
    K.set_num_threads(None)
    with pytest.raises(ValueError, match="SEGSRV_NUM_THREADS"):
        K.get_num_threads()
    monkeypatch.delenv("SEGSRV_NUM_THREADS")
    K.set_num_threads(None)


def _threads_picked(monkeypatch, call) -> int:
    """The thread count the policy gives `call` (its wrapper asks resolve_threads once)."""
    picked = []
    resolve = K.resolve_threads
    monkeypatch.setattr(K, "resolve_threads", lambda n, work: picked.append(resolve(n, work)) or picked[-1])
    call()
    monkeypatch.setattr(K, "resolve_threads", resolve)
    return picked[-1]


def test_a_second_thread_only_for_work_it_wins_back(monkeypatch):
    """Waking a passive team member costs 15-60 us: with two CPUs, each kernel runs one thread until its
    work, weighed in streamed words, passes SMALL_WORK_WORDS (the crossovers bench/thread_crossover.py
    measured): 90 dense rows of 1M bits and 300k random probes on one, 200 rows and 1M probes on two."""
    monkeypatch.delenv("SEGSRV_NUM_THREADS", raising=False)
    K.set_num_threads(2)
    try:
        rng = np.random.default_rng(0)
        n_words = 15_625
        q = rng.integers(0, 2 ** 63, size=n_words, dtype=np.int64).view(np.uint64)
        m = np.zeros((200, n_words), dtype=np.uint64)
        assert _threads_picked(monkeypatch, lambda: K.and_count_dense(q, m, np.arange(90, dtype=np.int64))) == 1
        assert _threads_picked(monkeypatch, lambda: K.and_count_dense(q, m)) == 2
        for n_ids, threads in ((300_000, 1), (1_000_000, 2)):
            ids = np.sort(rng.integers(0, n_words * 64, size=n_ids).astype(np.uint32))
            offsets = np.linspace(0, n_ids, 101).astype(np.int64)
            assert _threads_picked(monkeypatch, lambda: K.and_count_sparse(q, ids, offsets)) == threads, n_ids
    finally:
        K.set_num_threads(None)


@pytest.mark.parametrize("n_words", [1, 65, 1031, 40_000])
def test_and_count_sparse_on_every_path(cpu_path, n_words):
    """Features of every length around the AVX-512 path's blocks of 64 ids (and its scalar tail), dense
    and sparse ones, on a bitset past 2**21 bits too."""
    rng = np.random.default_rng(n_words)
    n_bits = n_words * 64
    q = rand_bits(rng, n_words, 0.4)
    parts = [np.sort(rng.choice(n_bits, size=min(n_bits, length), replace=False)).astype(np.uint32)
             for length in (0, 1, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 129, 1000, n_bits)]
    ids = np.concatenate(parts).astype(np.uint32)
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    np.testing.assert_array_equal(K.and_count_sparse(q, ids, offsets), N.and_count_sparse(q, ids, offsets))


def test_sparse_id_out_of_range_on_every_path(cpu_path):
    """An id past the bitset inside a block of 64 is refused like one in the tail."""
    q = np.full(2, np.uint64(0xFFFFFFFFFFFFFFFF))
    for position in (3, 70, 129):
        ids = np.arange(130, dtype=np.uint32) % 128
        ids[position] = 128
        with pytest.raises(ValueError, match="id >= 64"):
            K.and_count_sparse(q, ids, np.array([0, 130], np.int64))


@HYP
@given(st.integers(0, 3000), st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_gather_present_vs_naive(n_rows, density, nan_share, seed):
    """The non-NaN values of the set rows, in row order (the prefetch reads ahead of the last word)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n_rows)
    values[rng.random(n_rows) < nan_share] = np.nan
    n_words = (n_rows + 63) // 64
    bits = rand_bits(rng, n_words, density)
    want = N.gather_present(bits, values)
    got = K.gather_present(bits, values)
    np.testing.assert_array_equal(got, want)
    set_rows = int(N._bools(bits)[:n_rows].sum())  # `out` holds every set row's value, NaN or not
    out = np.full(set_rows + 3, -1.0)
    view = K.gather_present(readonly(bits), readonly(values), out=out)
    np.testing.assert_array_equal(view, want)
    assert np.shares_memory(view, out) or len(want) == 0


def test_gather_present_errors():
    with pytest.raises(ValueError, match="words"):
        K.gather_present(np.zeros(2, np.uint64), np.zeros(10))
    with pytest.raises(TypeError, match="values"):
        K.gather_present(np.zeros(1, np.uint64), np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="at least"):
        K.gather_present(np.full(1, np.uint64(3)), np.zeros(10), out=np.zeros(1))
    assert K.gather_present(np.zeros(0, np.uint64), np.zeros(0)).shape == (0,)


@st.composite
def histogram_cases(draw):
    """(bits, values, lo, n_bins): random bitsets (empty, all set, lengths not a multiple of 64, bits set
    past the last row), integer values in [lo, lo + n_bins) with NaNs and negative zeros."""
    n_rows = draw(st.integers(0, 3000))
    density = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0, 1)))
    nan_share = draw(st.one_of(st.just(0.0), st.floats(0, 1)))
    lo = draw(st.one_of(st.integers(-50, 50), st.integers(-2 ** 52, 2 ** 52 - 200)))
    n_bins = draw(st.one_of(st.integers(1, 100), st.integers(1, 5000)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    values = (lo + rng.integers(0, n_bins, n_rows)).astype(np.float64)
    if lo <= 0 < lo + n_bins:
        values[(values == 0) & (rng.random(n_rows) < 0.5)] = -0.0  # counts as 0
    values[rng.random(n_rows) < nan_share] = np.nan
    return rand_bits(rng, (n_rows + 63) // 64, density), values, float(lo), n_bins


@HYP
@given(histogram_cases())
def test_histogram_present_vs_naive_and_bincount(case):
    """The counts of the set rows' non-NaN values by value: the naive twin's, and np.bincount's over the
    gathered values; `out` (pre-filled) is zeroed first and returned, inputs may be read-only."""
    bits, values, lo, n_bins = case
    got = K.histogram_present(bits, values, lo, n_bins)
    assert got.dtype == np.int64 and got.shape == (n_bins,)
    np.testing.assert_array_equal(got, N.histogram_present(bits, values, lo, n_bins))
    present = K.gather_present(bits, values)
    np.testing.assert_array_equal(got, np.bincount((present - lo).astype(np.int64), minlength=n_bins))
    out = np.full(n_bins, 7, np.int64)
    assert K.histogram_present(readonly(bits), readonly(values), int(lo), n_bins, out=out) is out
    np.testing.assert_array_equal(out, got)


_OUTSIDE = {"fraction": lambda lo, n_bins: lo + n_bins // 2 + 0.5, "below lo": lambda lo, n_bins: lo - 1,
            "at lo + n_bins": lambda lo, n_bins: lo + n_bins, "inf": lambda lo, n_bins: math.inf,
            "-inf": lambda lo, n_bins: -math.inf, "tiny fraction": lambda lo, n_bins: lo + 1e-9,
            "denormal": lambda lo, n_bins: 5e-324}


@HYP
@given(st.sampled_from(sorted(_OUTSIDE)), st.integers(-60, 60), st.integers(1, 40), st.integers(1, 1500),
       st.integers(0, 2 ** 32 - 1))
def test_histogram_present_rejects_values_outside_its_bins(kind, lo, n_bins, n_rows, seed):
    """A set row's value that is not an integer in [lo, lo + n_bins) raises ValueError naming the first such
    row and its value (the naive twin the same), and nothing is written outside `out`; the same value on a
    row whose bit is clear is ignored."""
    rng = np.random.default_rng(seed)
    values = (lo + rng.integers(0, n_bins, n_rows)).astype(np.float64)
    values[rng.random(n_rows) < 0.2] = np.nan
    bits = rand_bits(rng, (n_rows + 63) // 64, 0.5)
    set_rows = np.flatnonzero(N._bools(bits)[:n_rows])
    clear_rows = np.setdiff1d(np.arange(n_rows), set_rows)
    bad = _OUTSIDE[kind](float(lo), n_bins)
    if len(clear_rows):
        values[rng.choice(clear_rows)] = bad
        np.testing.assert_array_equal(K.histogram_present(bits, values, lo, n_bins),
                                      N.histogram_present(bits, values, lo, n_bins))
    if not len(set_rows):
        return
    row = int(rng.choice(set_rows))
    values[row] = bad
    values[set_rows[set_rows > row][:3]] = bad  # later bad rows: the first is named
    guard = np.full(n_bins + 2 * 64, -5, np.int64)
    with pytest.raises(ValueError, match=rf"values\[{row}\] = ") as raised:
        K.histogram_present(bits, values, lo, n_bins, out=guard[64:-64])
    assert (guard[:64] == -5).all() and (guard[-64:] == -5).all()
    assert guard[64:-64].sum() <= len(set_rows)  # the counts of the rows before it
    with pytest.raises(ValueError) as naive_raised:
        N.histogram_present(bits, values, lo, n_bins)
    assert str(naive_raised.value) == str(raised.value)


@HYP
@given(st.integers(0, 3000), st.sampled_from([np.uint8, np.uint16]), st.one_of(st.just(0.0), st.just(1.0), st.floats(0, 1)),
       st.integers(1, 1 << 16), st.integers(0, 2 ** 32 - 1))
def test_histogram_codes_present_vs_naive_and_bincount(n_rows, dtype, density, n_bins, seed):
    """The counts of the set rows' codes below n_bins (codes at or past it, an absent value's, not counted):
    the naive twin's and np.bincount's over the set rows; `out` (pre-filled) zeroed first, read-only and
    inputs accepted, bits past the last row ignored."""
    rng = np.random.default_rng(seed)
    top = int(np.iinfo(dtype).max)
    codes = rng.integers(0, min(n_bins, top + 1), n_rows).astype(dtype)
    wide = rng.random(n_rows) < 0.1  # anywhere in the dtype's range, at or past n_bins too
    codes[wide] = rng.integers(0, top + 1, int(wide.sum()))
    codes[rng.random(n_rows) < 0.1] = top  # absent
    bits = rand_bits(rng, (n_rows + 63) // 64, density)
    got = K.histogram_codes_present(bits, codes, n_bins)
    assert got.dtype == np.int64 and got.shape == (n_bins,)
    np.testing.assert_array_equal(got, N.histogram_codes_present(bits, codes, n_bins))
    member = N._bools(bits)[:n_rows]
    picked = codes[member].astype(np.int64)
    np.testing.assert_array_equal(got, np.bincount(picked[picked < n_bins], minlength=n_bins))
    out = np.full(n_bins, 7, np.int64)
    assert K.histogram_codes_present(readonly(bits), readonly(codes), n_bins, out=out) is out
    np.testing.assert_array_equal(out, got)


def test_histogram_codes_present_errors():
    """Wrong dtypes, shapes and bin counts are refused, naming the argument."""
    bits, codes = np.zeros(1, np.uint64), np.zeros(10, np.uint8)
    with pytest.raises(TypeError, match="codes must be a numpy.ndarray of dtype uint8 or uint16"):
        K.histogram_codes_present(bits, codes.astype(np.uint32), 4)
    with pytest.raises(TypeError, match="codes must be"):
        K.histogram_codes_present(bits, [0, 1], 4)
    with pytest.raises(ValueError, match="bits must have"):
        K.histogram_codes_present(np.zeros(2, np.uint64), codes, 4)
    with pytest.raises(ValueError, match="n_bins"):
        K.histogram_codes_present(bits, codes, 0)
    with pytest.raises(ValueError, match="n_bins must be at most"):
        K.histogram_codes_present(bits, codes, (1 << 16) + 1)
    with pytest.raises(ValueError, match="out must have shape"):
        K.histogram_codes_present(bits, codes, 4, out=np.zeros(3, np.int64))
    assert K.histogram_codes_present(np.zeros(0, np.uint64), np.zeros(0, np.uint16), 3).tolist() == [0, 0, 0]


def test_histogram_present_tells_a_fraction_from_its_bin_near_2_to_the_51():
    """Where float64 still has halves, lo + 0.5 lands in bin 0 by truncation: the kernel rejects it."""
    lo = 2.0 ** 51
    values = np.array([lo, lo + 1, lo + 0.5])
    bits = np.array([0b111], np.uint64)
    np.testing.assert_array_equal(K.histogram_present(np.array([0b011], np.uint64), values, lo, 2), [1, 1])
    with pytest.raises(ValueError, match=r"values\[2\] = 2251799813685248.5"):
        K.histogram_present(bits, values, lo, 2)


def test_histogram_present_errors():
    bits, values = np.full(1, np.uint64(3)), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="words"):
        K.histogram_present(np.zeros(2, np.uint64), np.zeros(10), 0, 4)
    with pytest.raises(TypeError, match="values"):
        K.histogram_present(bits, values.astype(np.float32), 0, 4)
    with pytest.raises(TypeError, match="lo"):
        K.histogram_present(bits, values, "0", 4)
    with pytest.raises(TypeError, match="lo"):
        K.histogram_present(bits, values, True, 4)
    for lo in (0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="lo must be an integer"):
            K.histogram_present(bits, values, lo, 4)
    with pytest.raises(ValueError, match="n_bins"):
        K.histogram_present(bits, values, 0, 0)
    with pytest.raises(TypeError, match="n_bins"):
        K.histogram_present(bits, values, 0, 4.0)
    with pytest.raises(ValueError, match=r"2\*\*53"):
        K.histogram_present(bits, values, 2 ** 53 - 1, 2)
    with pytest.raises(ValueError, match=r"2\*\*53"):
        K.histogram_present(bits, values, -2 ** 53 - 1, 2)
    with pytest.raises(ValueError, match="shape"):
        K.histogram_present(bits, values, 0, 4, out=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="out"):
        K.histogram_present(bits, values, 0, 4, out=np.zeros(4))
    with pytest.raises(ValueError, match="writable"):
        K.histogram_present(bits, values, 0, 4, out=readonly(np.zeros(4, np.int64)))
    np.testing.assert_array_equal(K.histogram_present(bits, values, np.float64(1), np.int64(2)), [1, 1])
    np.testing.assert_array_equal(K.histogram_present(np.zeros(0, np.uint64), np.zeros(0), -3, 2), [0, 0])
