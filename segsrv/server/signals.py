"""Stop signals (SIGTERM, SIGINT) for a main loop, safe against bursts.

A Python signal handler runs in the main thread between two bytecodes, even
while that thread holds a lock, and a burst of signals runs handlers inside
handlers. The handler that called ``threading.Event.set()`` deadlocked the
server in 1 of 6 runs of a SIGTERM burst (the Event's lock was already held
by the code it interrupted). So the handler here does nothing at all: the
interpreter's C-level handler writes the signal number to a wakeup pipe
(``signal.set_wakeup_fd``), and the main loop reads it when it waits. No lock,
no logging, no allocation in the handler. Stdlib only: the multi-process
supervisor uses it too.
"""

from __future__ import annotations

import os
import select
import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum, frame) -> None:
    """A Python-level handler must exist for the wakeup byte to be written; the loop does the work."""


class StopSignals:
    """`with StopSignals() as stop:` records SIGTERM / SIGINT; `stop.wait(timeout)` returns them.

    `received` lists every stop signal read so far with its arrival time (monotonic); a burst
    delivered before the loop reads the pipe may arrive as one (the kernel merges pending signals).
    Only the main thread may enter it (signal handlers are per process). On exit the previous
    handlers come back, except that after a stop signal a default (fatal) one becomes SIG_IGN: the
    process is stopping, and the rest of a burst must not turn a clean exit into death by signal.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: list[tuple[int, float]] = []
        self._read_fd = self._write_fd = -1
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1

    def __enter__(self) -> "StopSignals":
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, _ignore) for sig in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # once a stop was asked for, the rest of a burst must not kill the process on its way out
            dies = handler in (signal.SIG_DFL, signal.default_int_handler)
            signal.signal(sig, signal.SIG_IGN if dies and self.received else handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        self.close_fds()

    def close_fds(self) -> None:
        """Close the pipe (also what a forked child does with its parent's copy)."""
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1

    def fileno(self) -> int:
        """The pipe to select() on beside other descriptors; call `read()` when it is readable."""
        return self._read_fd

    def read(self) -> list[int]:
        """The stop signals that arrived since the last read (drains the pipe)."""
        now = time.monotonic()
        new = []
        while True:
            try:
                data = os.read(self._read_fd, 512)
            except BlockingIOError:
                break
            if not data:
                break
            new += [b for b in data if b in self.signals]
        self.received += [(sig, now) for sig in new]
        return new

    def wait(self, timeout: float | None) -> list[int]:
        """Wait up to `timeout` seconds for stop signals; the new ones (empty on timeout)."""
        readable, _, _ = select.select([self._read_fd], [], [], timeout)  # a signal wakes it (the pipe)
        return self.read() if readable else []
