"""Shared scans (segsrv.engine.shared_scan): concurrent counts of the same rows join one circular scan,
every count equal to the naive twin's whatever chunk it joined at; errors reach every caller in the scan;
Relates run concurrently answer what they answer one at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv import _kernels
from segsrv._kernels import naive
from segsrv.engine import shared_scan
from segsrv.engine.relate import relate
from segsrv.engine.shared_scan import SharedScans
from segsrv.ops.relate import RelateQuery
from support import CUSTOMER_CONDITIONS


class _HeldKernels:
    """Stands in for segsrv._kernels in shared_scan: the first chunk counted waits until released, so that
    the callers that come meanwhile join the scan at its second chunk (a deterministic schedule)."""

    def __init__(self, fail_many: bool = False):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_many = fail_many
        self.many_calls: list[int] = []

    def and_count_dense(self, query, matrix, rows):
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return _kernels.and_count_dense(query, matrix, rows)

    def and_count_dense_many(self, queries, matrix, rows):
        self.many_calls.append(len(queries))
        if self.fail_many:
            raise RuntimeError("kernel failed")
        return _kernels.and_count_dense_many(queries, matrix, rows)


def _run_held(scans: SharedScans, held: _HeldKernels, calls, monkeypatch):
    """Run calls [(query, matrix, rows, family)] on threads: the first starts the scan and is held in its
    first chunk until the others are about to join -> each call's result or exception."""
    monkeypatch.setattr(shared_scan, "_kernels", held)
    out: list = [None] * len(calls)

    def one(i):
        try:
            out[i] = scans.and_count_dense(*calls[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=one, args=(0,))]
    threads[0].start()
    assert held.entered.wait(30)
    threads += [threading.Thread(target=one, args=(i,)) for i in range(1, len(calls))]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while scans.waiting() < len(calls) - 1:
        assert time.monotonic() < deadline, "the followers never queued"
        time.sleep(0.001)
    held.release.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return out


def test_a_single_caller_counts_at_once_as_the_kernel_does():
    rng = np.random.default_rng(1)
    m = rng.integers(0, 2**63, size=(9, 40), dtype=np.uint64)
    q = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    rows = np.array([8, 0, 3, 3, 5], dtype=np.int64)
    scans = SharedScans(chunk_bytes=2 * 40 * 8, min_bytes=0)  # chunks of 2 rows: 3 chunks
    for family in (None, "f"):
        np.testing.assert_array_equal(scans.and_count_dense(q, m, rows, family), naive.and_count_dense(q, m, rows))
    assert (scans.scans, scans.queries, scans.chunks, scans.chunk_queries) == (2, 2, 6, 6)
    assert (scans.waiting(), scans.running()) == (0, 0)


def test_small_scans_do_not_share():
    rng = np.random.default_rng(2)
    m = rng.integers(0, 2**63, size=(4, 16), dtype=np.uint64)
    q = rng.integers(0, 2**63, size=16, dtype=np.uint64)
    scans = SharedScans(min_bytes=4 * 16 * 8 + 1)  # one byte more than the rows
    rows = np.arange(4, dtype=np.int64)
    np.testing.assert_array_equal(scans.and_count_dense(q, m, rows), naive.and_count_dense(q, m, rows))
    np.testing.assert_array_equal(SharedScans(min_bytes=0).and_count_dense(q, m, rows[:0]), np.zeros(0))
    assert scans.scans == 0  # the kernel, directly


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_joining=st.integers(1, 6), chunk_rows=st.integers(1, 5), same_rows=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_callers_that_join_a_scan_go_round_it_once_and_get_their_own_counts(monkeypatch, n_joining, chunk_rows,
                                                                            same_rows, seed):
    """One caller starts the scan and is held in its first chunk; the others join at the second chunk, go
    round (past the last chunk to the first) and take the scan over as each one before them completes: each
    gets exactly its own counts (a family's rows that the scan does not read counted apart), and every chunk
    after the first was counted once for all of them."""
    rng = np.random.default_rng(seed)
    n_words = int(rng.integers(1, 70))
    m = rng.integers(0, 2**63, size=(12, n_words), dtype=np.uint64)
    first_rows = rng.integers(0, 12, size=7).astype(np.int64)
    calls = [(rng.integers(0, 2**63, size=n_words, dtype=np.uint64), m, first_rows, None if same_rows else "f")]
    for _ in range(n_joining):
        rows = first_rows if same_rows else rng.choice(12, size=int(rng.integers(1, 12)), replace=False)
        calls.append((rng.integers(0, 2**63, size=n_words, dtype=np.uint64), m, rows.astype(np.int64, copy=False),
                      None if same_rows else "f"))
    scans = SharedScans(chunk_bytes=chunk_rows * n_words * 8, min_bytes=0)
    out = _run_held(scans, _HeldKernels(), calls, monkeypatch)
    for (q, _, rows, _), got in zip(calls, out):
        np.testing.assert_array_equal(got, naive.and_count_dense(q, m, rows))
    n_chunks = -(-7 // chunk_rows)
    # the first chunk alone, the rest with every caller, then the joiners' way round to the second chunk
    assert scans.chunks == n_chunks + (1 if n_chunks > 1 else 0)
    assert scans.chunk_queries == 1 + (n_chunks - 1) * (1 + n_joining) + n_joining
    assert (scans.scans, scans.queries, scans.waiting(), scans.running()) == (1, 1 + n_joining, 0, 0)


def test_an_error_in_a_shared_chunk_reaches_every_caller_in_it_and_the_next_scan_runs(monkeypatch):
    rng = np.random.default_rng(4)
    m = rng.integers(0, 2**63, size=(5, 8), dtype=np.uint64)
    rows = np.arange(5, dtype=np.int64)
    calls = [(rng.integers(0, 2**63, size=8, dtype=np.uint64), m, rows, None) for _ in range(4)]
    scans = SharedScans(chunk_bytes=2 * 8 * 8, min_bytes=0)
    out = _run_held(scans, _HeldKernels(fail_many=True), calls, monkeypatch)
    assert all(isinstance(e, RuntimeError) and str(e) == "kernel failed" for e in out)
    assert (scans.waiting(), scans.running()) == (0, 0)
    monkeypatch.setattr(shared_scan, "_kernels", _kernels)
    np.testing.assert_array_equal(scans.and_count_dense(*calls[1]), naive.and_count_dense(calls[1][0], m, rows))


def test_a_failure_to_stack_the_queries_reaches_every_caller_in_the_chunk(monkeypatch):
    rng = np.random.default_rng(5)
    m = rng.integers(0, 2**63, size=(5, 8), dtype=np.uint64)
    rows = np.arange(5, dtype=np.int64)
    calls = [(rng.integers(0, 2**63, size=8, dtype=np.uint64), m, rows, None) for _ in range(3)]

    def no_memory(arrays):
        raise MemoryError("no memory for the stacked queries")

    monkeypatch.setattr(shared_scan.np, "stack", no_memory)
    scans = SharedScans(chunk_bytes=2 * 8 * 8, min_bytes=0)
    out = _run_held(scans, _HeldKernels(), calls, monkeypatch)
    assert all(isinstance(e, MemoryError) for e in out)
    assert (scans.waiting(), scans.running()) == (0, 0)


def test_a_failure_outside_the_kernel_call_leaves_no_caller_waiting(monkeypatch):
    """Memory for a joining count's counts runs out as it joins: every caller in the scan gets the error
    and the scan is closed (a later count starts a new one)."""
    rng = np.random.default_rng(6)
    m = rng.integers(0, 2**63, size=(5, 8), dtype=np.uint64)
    rows = np.arange(5, dtype=np.int64)
    calls = [(rng.integers(0, 2**63, size=8, dtype=np.uint64), m, rows, None) for _ in range(3)]
    real_zeros = np.zeros
    made = []

    def zeros_once(*args, **kwargs):
        made.append(1)
        if len(made) == 2:  # the first joiner's
            raise MemoryError("no memory for the counts")
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(shared_scan.np, "zeros", zeros_once)
    scans = SharedScans(chunk_bytes=2 * 8 * 8, min_bytes=0)
    out = _run_held(scans, _HeldKernels(), calls, monkeypatch)
    assert all(isinstance(e, MemoryError) for e in out)
    assert (scans.waiting(), scans.running()) == (0, 0)
    monkeypatch.setattr(shared_scan.np, "zeros", real_zeros)
    monkeypatch.setattr(shared_scan, "_kernels", _kernels)
    np.testing.assert_array_equal(scans.and_count_dense(*calls[0]), naive.and_count_dense(calls[0][0], m, rows))


def test_bad_arguments_are_refused_before_anything_waits():
    scans = SharedScans(min_bytes=0)
    m = np.zeros((3, 4), np.uint64)
    rows = np.arange(3, dtype=np.int64)
    with pytest.raises(TypeError, match="query must be a 1-D numpy.ndarray of dtype uint64"):
        scans.and_count_dense(np.zeros(4, np.int64), m, rows)
    with pytest.raises(ValueError, match="query has 5 words but matrix rows have 4"):
        scans.and_count_dense(np.zeros(5, np.uint64), m, rows)
    with pytest.raises(ValueError, match="chunk_bytes must be at least 1, got 0"):
        SharedScans(chunk_bytes=0)
    with pytest.raises(ValueError, match="min_bytes must be at least 0, got -1"):
        SharedScans(min_bytes=-1)
    assert scans.scans == 0


@pytest.mark.parametrize("relate_fields", [None, ["region", "pet_size", "lifestyle", "segment"]])
def test_concurrent_relates_answer_as_one_at_a_time(petnord_snapshot, monkeypatch, relate_fields):
    """Relates over every field (or a few) from 6 threads, every scan sharable (min_bytes 0): the same
    answers as run one by one (how many share a pass depends on the threads' timing)."""
    queries = [RelateQuery.from_json({"from": "customers", "where": where, "relate": relate_fields,
                                      "plan": "scan", "limit": 50})
               for where in CUSTOMER_CONDITIONS.values()]
    scans = shared_scan.shared_scans
    monkeypatch.setattr(scans, "min_bytes", 0)
    monkeypatch.setattr(scans, "chunk_bytes", 3 * petnord_snapshot.universe("customers").n_words * 8)
    before = scans.queries
    alone = [relate(petnord_snapshot, q) for q in queries]
    counted_alone = scans.queries - before  # the scans with dense rows to count (not an empty condition)
    assert counted_alone > 0
    before = scans.queries
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: relate(petnord_snapshot, q), queries * 8))
    for i, got in enumerate(together):
        want = alone[i % len(queries)]
        assert (got.n_condition, got.n_matching, got.plan) == (want.n_condition, want.n_matching, want.plan)
        assert [(h.field, h.value, h.stats["support"]) for h in got.hits] == \
               [(h.field, h.value, h.stats["support"]) for h in want.hits]
    assert scans.queries - before == 8 * counted_alone
    assert (scans.waiting(), scans.running()) == (0, 0)
