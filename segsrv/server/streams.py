"""Server-streaming calls (ScoreSegment, ExportMembers): their own threads, a bound, a stall watchdog.

A stream's handler thread blocks in every send until the client's HTTP/2
window has room, so a client that stops reading holds that thread for as long
as its connection lives. Measured (issue 14): four ExportMembers streams that
read one message pinned the four handler threads, and every other call,
health included, timed out until they were cancelled. So streams:

- run on a pool of their own (grpc's per-handler ``experimental_thread_pool``),
  never on the unary handler threads: a stream cannot starve a unary call;
- are at most ``max_streams`` at once: one more is refused at once with
  RESOURCE_EXHAUSTED (no ErrorInfo: capacity, worth a retry with back-off);
  the pool has ``SPARE_THREADS`` threads beyond the slots so that refusing
  never waits behind stalled streams;
- are cancelled by a watchdog once one message has waited ``write_timeout``
  seconds to be sent (the client read nothing meanwhile): cancelling the
  call wakes the handler blocked in the send (measured: the thread is back
  within one watchdog tick), which frees the slot and the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc

log = logging.getLogger("segsrv.server")

SPARE_THREADS = 2  # threads that only refuse streams beyond the limit


class StreamGuard:
    """Slots, threads and the stall watchdog shared by the streaming calls of one server."""

    def __init__(self, max_streams: int, write_timeout: float | None):
        if max_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if write_timeout is not None and not write_timeout > 0:
            raise ValueError(f"stream_write_timeout must be positive (or None: off), got {write_timeout}")
        self.max_streams = max_streams
        self.write_timeout = write_timeout
        self.pool = futures.ThreadPoolExecutor(max_workers=max_streams + SPARE_THREADS,
                                               thread_name_prefix="segsrv-stream")
        self._slots = threading.BoundedSemaphore(max_streams)
        self._lock = threading.Lock()
        self._open: set[_Stream] = set()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        if self.write_timeout is not None and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="segsrv-stream-watchdog", daemon=True)
            self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)
            self._watchdog = None
        self.pool.shutdown(wait=False)

    def open(self, method: str, context: grpc.ServicerContext, request_id: str) -> "_Stream":
        """A slot for this stream (release it with close()); aborts with RESOURCE_EXHAUSTED when none is free."""
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_streams} streaming calls (ScoreSegment, ExportMembers) are in progress, "
                          f"the server's limit (--max-concurrent-streams); retry with back-off")
        stream = _Stream(self, method, context, request_id)
        with self._lock:
            self._open.add(stream)
        return stream

    def _close(self, stream: "_Stream") -> None:
        with self._lock:
            if stream not in self._open:
                return
            self._open.discard(stream)
        self._slots.release()

    def _watch(self) -> None:
        tick = min(1.0, max(0.05, self.write_timeout / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                stalled = [s for s in self._open
                           if s.since is not None and not s.cancelled and now - s.since > self.write_timeout]
            for s in stalled:
                s.cancelled = True
                log.warning("%s stream cancelled: message %d waited %.1f s to be sent (the client reads "
                            "nothing; --stream-write-timeout %g)", s.method, s.sent + 1, now - s.since,
                            self.write_timeout,
                            extra={"fields": {"event": "stream_stalled", "method": s.method,
                                              "messages_sent": s.sent}, "request_id": s.request_id})
                s.context.cancel()


class _Stream:
    """One stream's slot; `sending()` / `sent()` bracket each message handed to gRPC."""

    __slots__ = ("guard", "method", "context", "request_id", "since", "sent", "cancelled")

    def __init__(self, guard: StreamGuard, method: str, context, request_id: str):
        self.guard = guard
        self.method = method
        self.context = context
        self.request_id = request_id
        self.since: float | None = None
        self.sent = 0
        self.cancelled = False

    def sending(self) -> None:
        self.since = time.monotonic()

    def done_sending(self) -> None:
        self.since = None
        self.sent += 1

    def close(self) -> None:
        self.guard._close(self)

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
