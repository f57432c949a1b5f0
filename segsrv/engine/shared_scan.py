"""Shared scans: concurrent counts over the same dense rows read the rows once (circular scans).

A Relate's scan plan reads every candidate feature's dense row (10 MB for ~90 features at 1M rows, 66 MB for
"every field"). Under concurrent load the same rows are asked for by several requests at once: the same fields
come back request after request. Here the counts of one family of rows (below) run as one circular scan over
the rows, in chunks of about CHUNK_BYTES:

* The first count starts the scan at the first chunk; the thread that asked for it runs the chunks.
* A count that arrives while the scan runs joins it at the next chunk: from then on each chunk is read once
  for every count in the scan (segsrv._kernels.and_count_dense_many) and the scan goes round, past the last
  chunk to the first, until every count has had every chunk once.
* The thread running the scan stops when its own count is complete and hands the scan over to the next count
  in it; the last count closes it. No count waits for another to finish before its own starts, none takes
  part in more than one round, and a single caller (or a server at low load) counts at once as before.
* Counts share a scan when they read the same matrix and the caller gives them the same `family` (Relate:
  the fields asked for; its requests' rows then differ only by the fields of their own conditions, which are
  left out). The scan reads the rows of the count that started it; a joining count's rows that are not
  among them are counted apart, by the thread that asked for it. Without a family only counts of the very
  same row array share.
* Only scans of at least MIN_SHARED_BYTES share: smaller rows are likely still in the cache from the last
  request, where running in chunks and waiting cost more than reading them again.
* The counts are exact, the same numbers as and_count_dense's for each query alone.
"""

from __future__ import annotations

import threading

import numpy as np

from .. import _kernels

# the scan's step: a joining count waits for at most one chunk (~0.4 ms at 20 GB/s) before it takes part,
# and each chunk costs a kernel call and the bookkeeping below (~10 us)
CHUNK_BYTES = 8 << 20
# the rows a scan must read for it to share (module docstring). Measured on the 1M demo snapshot (2-core AMD
# EPYC, 32 MB L3 shared with other tenants, two server processes at 32 concurrent Relates, December 2026):
# 17 fields (10 MB of dense rows, read at cache speed) gained nothing from sharing (1,337-1,496 against 1,339 us
# of server CPU per Relate)
MIN_SHARED_BYTES = 32 << 20


class _Job:
    __slots__ = ("bits", "rows", "wake", "error", "lead", "remaining", "scanned")

    def __init__(self, bits: np.ndarray, rows: np.ndarray):
        self.bits, self.rows = bits, rows
        self.wake = threading.Event()  # set once: the count is complete, or this thread is to run the scan
        self.error: BaseException | None = None
        self.lead = False
        self.remaining = 0  # chunks still to count
        self.scanned: np.ndarray | None = None  # the counts of the scan's rows, filled chunk by chunk


class _Scan:
    """One circular scan: its rows, chunks, position, and the counts in it (or about to join)."""

    __slots__ = ("matrix", "rows", "chunks", "position", "jobs", "joining", "stacked", "stacked_jobs")

    def __init__(self, matrix: np.ndarray, rows: np.ndarray, chunk_rows: int):
        self.matrix, self.rows = matrix, rows
        self.chunks = [(lo, min(lo + chunk_rows, len(rows))) for lo in range(0, len(rows), chunk_rows)]
        self.position = 0
        self.jobs: list[_Job] = []
        self.joining: list[_Job] = []
        self.stacked: np.ndarray | None = None  # the queries of stacked_jobs (held: compared by identity)
        self.stacked_jobs: list[_Job] = []

    def attach(self, job: _Job) -> None:
        job.remaining = len(self.chunks)
        job.scanned = np.zeros(len(self.rows), dtype=np.int64)
        self.jobs.append(job)


class SharedScans:
    """and_count_dense(query, matrix, rows) for concurrent callers, as circular scans per (matrix, family)
    (module docstring). Thread-safe; one per process is enough (`shared_scans`)."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, min_bytes: int = MIN_SHARED_BYTES):
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
        if min_bytes < 0:
            raise ValueError(f"min_bytes must be at least 0, got {min_bytes}")
        self.chunk_bytes = chunk_bytes
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        self._scans: dict[tuple, _Scan] = {}
        # scans started, counts taken, chunks counted and the counts they served (tests, benchmarks)
        self.scans = self.queries = self.chunks = self.chunk_queries = 0

    def waiting(self) -> int:
        """Counts about to join a running scan now."""
        with self._lock:
            return sum(len(scan.joining) for scan in self._scans.values())

    def running(self) -> int:
        """Scans running now."""
        with self._lock:
            return len(self._scans)

    def and_count_dense(self, query: np.ndarray, matrix: np.ndarray, rows: np.ndarray, family=None) -> np.ndarray:
        """popcount(query & matrix[rows[i]]) for each i -> int64[len(rows)], as _kernels.and_count_dense.
        family: a hashable naming the requests whose rows mostly agree (module docstring); None: the same
        `rows` array only."""
        # checked before joining: one caller's bad query must not fail the others' chunks
        if not isinstance(query, np.ndarray) or query.dtype != np.uint64 or query.ndim != 1:
            raise TypeError("query must be a 1-D numpy.ndarray of dtype uint64")
        if query.shape[0] != matrix.shape[1]:
            raise ValueError(f"query has {query.shape[0]} words but matrix rows have {matrix.shape[1]}")
        row_bytes = matrix.shape[1] * 8
        if len(rows) == 0 or len(rows) * row_bytes < self.min_bytes:
            return _kernels.and_count_dense(query, matrix, rows)
        job = _Job(query, rows)
        key = (id(matrix), ("rows", id(rows)) if family is None else ("family", family))
        with self._lock:
            self.queries += 1
            scan = self._scans.get(key)
            if scan is None:
                scan = self._scans[key] = _Scan(matrix, rows, max(1, self.chunk_bytes // max(row_bytes, 1)))
                scan.attach(job)
                job.lead = True
                self.scans += 1
            else:
                scan.joining.append(job)
        if not job.lead:
            job.wake.wait()
        if job.lead:
            self._run(key, scan, job)
        if job.error is not None:
            raise job.error
        return self._own_counts(scan, job)

    def _run(self, key: tuple, scan: _Scan, me: _Job) -> None:
        """Count chunks for every job in the scan until `me` has had every chunk; then hand the scan to the
        next job in it (or close it). Whatever fails, no job is left waiting: each gets the error."""
        try:
            self._run_chunks(key, scan, me)
        except BaseException as exc:
            with self._lock:
                stranded = scan.jobs + scan.joining
                scan.jobs, scan.joining = [], []
                if self._scans.get(key) is scan:
                    del self._scans[key]
            for job in stranded:
                job.error, job.remaining = exc, 0
                if job is not me:
                    job.wake.set()
            me.error = exc

    def _run_chunks(self, key: tuple, scan: _Scan, me: _Job) -> None:
        while True:
            with self._lock:
                for job in scan.joining:  # they take part from this chunk on
                    scan.attach(job)
                scan.joining.clear()
                if me.remaining == 0:
                    if scan.jobs:
                        scan.jobs[0].lead = True
                        scan.jobs[0].wake.set()
                    else:
                        del self._scans[key]
                    scan.stacked, scan.stacked_jobs = None, []
                    return
                jobs = list(scan.jobs)
                lo, hi = scan.chunks[scan.position]
            error = None
            counts = None
            try:  # only this thread runs the scan now: its stacked queries are its own
                if len(jobs) == 1:
                    counts = _kernels.and_count_dense(jobs[0].bits, scan.matrix, scan.rows[lo:hi])[None, :]
                else:
                    if len(jobs) != len(scan.stacked_jobs) or any(a is not b for a, b in zip(jobs, scan.stacked_jobs)):
                        scan.stacked = np.stack([j.bits for j in jobs])  # re-stacked only when the jobs change
                        scan.stacked_jobs = jobs
                    counts = _kernels.and_count_dense_many(scan.stacked, scan.matrix, scan.rows[lo:hi])
            except BaseException as exc:  # every job of the chunk gets it: none is left waiting
                error = exc
            complete = []
            with self._lock:
                self.chunks += 1
                self.chunk_queries += len(jobs)
                for i, job in enumerate(jobs):
                    if error is not None:
                        job.error, job.remaining = error, 0
                    else:
                        job.scanned[lo:hi] = counts[i]
                        job.remaining -= 1
                    if job.remaining == 0:
                        scan.jobs.remove(job)
                        if job is not me:
                            complete.append(job)
                scan.position = (scan.position + 1) % len(scan.chunks)
            for job in complete:
                job.wake.set()

    @staticmethod
    def _own_counts(scan: _Scan, job: _Job) -> np.ndarray:
        """The job's counts, in its rows' order, from the scan's (its rows that the scan did not read are
        counted here)."""
        if job.rows is scan.rows:
            return job.scanned
        order = np.argsort(scan.rows, kind="stable")
        where = np.minimum(np.searchsorted(scan.rows, job.rows, sorter=order), len(order) - 1)
        at = order[where]
        found = scan.rows[at] == job.rows
        counts = np.where(found, job.scanned[at], 0)
        if not found.all():
            missing = np.flatnonzero(~found)
            counts[missing] = _kernels.and_count_dense(job.bits, scan.matrix, np.ascontiguousarray(job.rows[missing]))
        return counts


shared_scans = SharedScans()
