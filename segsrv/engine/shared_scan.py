"""Shared scans: concurrent counts over the same dense rows read the rows once.

A Relate's scan plan reads every candidate feature's dense row (10 MB for ~90 features at 1M rows, 66 MB for
"every field"). Under concurrent load the same rows are asked for by several requests at once: the same fields
come back request after request. A count that arrives while a scan of the same rows is running waits for that
scan to end and then runs with every other count that arrived meanwhile, in one pass over the rows
(segsrv._kernels.and_count_dense_many: each row block is read from memory once for the whole batch).

* Only scans of at least MIN_SHARED_BYTES share: smaller rows are likely still in the cache from the last
  request, where waiting for another scan costs more than reading them again.
* Nothing waits when no scan of those rows is running: a single caller, or a server at low load, counts at
  once as before.
* A count waits for at most the scan that was running when it arrived, then its own batch runs (the first
  of the batch runs it; the others sleep until their counts are ready).
* Counts share a scan when they read the same matrix and the caller gives them the same `family` (Relate:
  the fields asked for; its requests' rows then differ only by the fields of their own conditions, which
  are left out): the pass counts the union of their rows and each gets its own. Without a family, only
  counts of the very same row array share.
* The counts are exact, the same numbers as and_count_dense's for each query alone.
"""

from __future__ import annotations

import threading

import numpy as np

from .. import _kernels

# queries per pass: their blocks (2,048 words each) and a group of rows' blocks stay in L2 together
MAX_BATCH = 16
# the rows a scan must read for it to share (module docstring). Measured on the 1M demo snapshot (2-core AMD
# EPYC, 32 MB L3 shared with other tenants, two server processes at 32 concurrent Relates, December 2026):
# "every field" (66 MB of dense rows) 6,267 -> 5,840 us of server CPU per Relate with sharing; 17 fields
# (10 MB, read at cache speed) 1,167 -> 1,282 us, its waits and wake-ups costing more than the reads saved
MIN_SHARED_BYTES = 32 << 20


class _Job:
    __slots__ = ("bits", "rows", "wake", "counts", "error", "batch")

    def __init__(self, bits: np.ndarray, rows: np.ndarray):
        self.bits = bits
        self.rows = rows
        self.wake = threading.Event()
        self.counts: np.ndarray | None = None
        self.error: BaseException | None = None
        self.batch: list[_Job] | None = None  # set when this job is to run the next pass for these jobs


class _Scans:
    """The scans of one matrix and family: whether one is running, and the counts waiting for the next."""

    __slots__ = ("matrix", "running", "waiting")

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix  # held: the key holds its id
        self.running = False
        self.waiting: list[_Job] = []


class SharedScans:
    """and_count_dense(query, matrix, rows) for concurrent callers, batched per (matrix, rows) (module
    docstring). Thread-safe; one per process is enough (`shared_scans`)."""

    def __init__(self, max_batch: int = MAX_BATCH, min_bytes: int = MIN_SHARED_BYTES):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be at least 0, got {min_bytes}")
        self.max_batch = max_batch
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        self._scans: dict[tuple, _Scans] = {}
        self.passes = 0  # scans run, and the queries they counted (tests, benchmarks)
        self.queries = 0

    def waiting(self) -> int:
        """Counts queued behind a running scan now."""
        with self._lock:
            return sum(len(scan.waiting) for scan in self._scans.values())

    def and_count_dense(self, query: np.ndarray, matrix: np.ndarray, rows: np.ndarray, family=None) -> np.ndarray:
        """popcount(query & matrix[rows[i]]) for each i -> int64[len(rows)], as _kernels.and_count_dense.
        family: a hashable naming the requests whose rows mostly agree (module docstring); None: the same
        `rows` array only."""
        if not isinstance(query, np.ndarray) or query.dtype != np.uint64 or query.ndim != 1:
            raise TypeError("query must be a 1-D numpy.ndarray of dtype uint64")
        if query.shape[0] != matrix.shape[1]:
            raise ValueError(f"query has {query.shape[0]} words but matrix rows have {matrix.shape[1]}")
        if len(rows) * matrix.shape[1] * 8 < self.min_bytes:
            return _kernels.and_count_dense(query, matrix, rows)
        job = _Job(query, rows)
        key = (id(matrix), ("rows", id(rows)) if family is None else ("family", family))
        with self._lock:
            scan = self._scans.get(key)
            if scan is None:
                scan = self._scans[key] = _Scans(matrix)
            if scan.running:
                scan.waiting.append(job)
                batch = None
            else:
                scan.running = True
                batch = [job]
        if batch is None:
            job.wake.wait()
            batch = job.batch  # None: another job's pass counted this one
        if batch is not None:
            self._run(key, scan, batch)
            job.batch = None  # no cycle left for the collector
        if job.error is not None:
            raise job.error
        return job.counts

    def _run(self, key: tuple, scan: _Scans, batch: list[_Job]) -> None:
        """Count `batch` in one pass (this thread runs batch[0]), then hand the next batch to its first job."""
        try:
            if len(batch) == 1:
                batch[0].counts = _kernels.and_count_dense(batch[0].bits, scan.matrix, batch[0].rows)
            else:
                rows = batch[0].rows
                same = all(j.rows is rows for j in batch)
                if not same:
                    rows = np.unique(np.concatenate([j.rows for j in batch]))
                counts = _kernels.and_count_dense_many(np.stack([j.bits for j in batch]), scan.matrix, rows)
                for j, row in zip(batch, counts):
                    j.counts = row if same else row[np.searchsorted(rows, j.rows)]
        except BaseException as exc:  # every job of the pass gets it: none is left waiting
            for j in batch:
                j.error = exc
        finally:
            with self._lock:
                self.passes += 1
                self.queries += len(batch)
                following = scan.waiting[:self.max_batch]
                del scan.waiting[:self.max_batch]
                if following:
                    following[0].batch = following
                else:
                    scan.running = False
                    del self._scans[key]
            for j in batch[1:]:
                j.wake.set()
            if following:
                following[0].wake.set()


shared_scans = SharedScans()
