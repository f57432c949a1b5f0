"""Hot reload: a background thread that polls every ROOT/NAME/CURRENT.

Every ``interval`` seconds (``--reload-interval``, default 1) it calls
``SnapshotRegistry.refresh()``: a CURRENT that was replaced names a version
that is opened and fully verified (every checksum) on this thread, then
swapped in atomically; requests in flight finish on the version they
resolved. A version that fails to open is refused with a logged reason, the
old one keeps serving (health stays SERVING), and it is not tried again
until CURRENT changes again. Polling costs one ``stat`` and one small read
per snapshot per interval.

Every ``verify_interval`` seconds (``--verify-interval``, default 300; None:
never) it also scrubs: ``SnapshotRegistry.scrub()`` checks every byte of every
served version again, on one thread (about 0.1 s of CPU per GB), and withdraws
a version whose files were changed on disk.
"""

from __future__ import annotations

import logging
import threading
import time

from .registry import SnapshotRegistry

log = logging.getLogger("segsrv.server")


DEFAULT_VERIFY_INTERVAL = 300.0


class Reloader:
    def __init__(self, registry: SnapshotRegistry, interval: float = 1.0,
                 verify_interval: float | None = DEFAULT_VERIFY_INTERVAL):
        if not interval > 0:
            raise ValueError(f"reload interval must be positive, got {interval}")
        if verify_interval is not None and not verify_interval > 0:
            raise ValueError(f"verify interval must be positive (or None: never), got {verify_interval}")
        self.registry = registry
        self.interval = float(interval)
        self.verify_interval = verify_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="segsrv-reload", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop polling; waits for a load in progress (up to `timeout`)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_scrub = None if self.verify_interval is None else time.monotonic() + self.verify_interval
        while not self._stop.wait(self.interval):
            try:
                self.registry.refresh()
            except Exception:  # noqa: BLE001 - keep watching whatever happens
                log.exception("snapshot reload check failed")
            if next_scrub is not None and time.monotonic() >= next_scrub:
                try:
                    self.registry.scrub()
                except Exception:  # noqa: BLE001
                    log.exception("snapshot scrub failed")
                next_scrub = time.monotonic() + self.verify_interval
