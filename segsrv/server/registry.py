"""The snapshots a server serves, by name.

``SnapshotRegistry(root)`` opens every snapshot ``ROOT/NAME`` (the version
``ROOT/NAME/CURRENT`` points at; ``ROOT`` itself may also be one ``NAME``
directory) with ``verify="sizes"``. A snapshot that fails to open is logged
and skipped; the others serve.

``resolve(name, version)`` picks the snapshot of a request. The served set
is an immutable dict swapped under a lock, so a request holds on to the
Snapshot it resolved even if ``refresh()`` swaps in another version meanwhile.
Watching CURRENT (hot reload) is a later issue; ``refresh()`` is its building
block: it opens new names and new CURRENT versions fully before swapping them
in, and keeps the old version when the new one fails to open.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from ..errors import NoSnapshotServedError, QueryError, SnapshotError, SnapshotNotFoundError, VersionNotServedError
from ..snapshot import format as fmt
from ..snapshot.reader import Snapshot, open_snapshot
from ..snapshot.spec import suggest

log = logging.getLogger("segsrv.server")


class SnapshotRegistry:
    def __init__(self, root: str | Path, *, verify: str = "sizes", load: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SnapshotNotFoundError(f"snapshot root {str(self.root)!r} is not a directory")
        self.verify = verify
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._listeners: list[Callable[[dict[str, Snapshot]], None]] = []
        if load:
            self.refresh()

    # -- loading ---------------------------------------------------------------

    def _snapshot_dirs(self) -> list[Path]:
        if (self.root / fmt.CURRENT).exists():
            return [self.root]
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / fmt.CURRENT).exists())

    def refresh(self) -> list[str]:
        """Open snapshots that are new or whose CURRENT moved; returns the names (re)loaded."""
        changed: list[str] = []
        with self._lock:
            current = dict(self._snapshots)
            for d in self._snapshot_dirs():
                try:
                    version = (d / fmt.CURRENT).read_text().strip()
                except OSError as exc:
                    log.error("cannot read %s: %s", d / fmt.CURRENT, exc)
                    continue
                old = next((s for s in current.values() if s.path.parent == d), None)
                if old is not None and old.version == version:
                    continue
                try:
                    snap = open_snapshot(d, verify=self.verify)
                except SnapshotError as exc:
                    log.error("refusing snapshot %s: %s%s", d, exc.message,
                              f"; still serving version {old.version}" if old else "")
                    continue
                if snap.name != d.name:
                    log.warning("snapshot directory %s holds snapshot named %r; serving it as %r", d, snap.name, snap.name)
                if old is None and snap.name in current:
                    log.error("two snapshots named %r (%s and %s); keeping the first", snap.name,
                              current[snap.name].path, snap.path)
                    continue
                current[snap.name] = snap
                changed.append(snap.name)
                log.info("loaded snapshot %s version %s from %s", snap.name, snap.version, snap.path)
            self._snapshots = current
            listeners = list(self._listeners)
        for fn in listeners:
            fn(current)
        return changed

    def add_listener(self, fn: Callable[[dict[str, Snapshot]], None]) -> None:
        """Call fn(snapshots) now and after every refresh (e.g. to update health)."""
        with self._lock:
            self._listeners.append(fn)
            snaps = self._snapshots
        fn(snaps)

    # -- lookup ----------------------------------------------------------------

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        return self._snapshots  # an immutable-by-convention dict, replaced on refresh

    def names(self) -> list[str]:
        return sorted(self._snapshots)

    def resolve(self, name: str = "", version: str = "") -> Snapshot:
        snaps = self._snapshots
        if not snaps:
            raise NoSnapshotServedError(f"no snapshot is loaded yet from {str(self.root)!r}; the server is not ready")
        if not name:
            if len(snaps) == 1:
                snap = next(iter(snaps.values()))
            else:
                raise QueryError(
                    f"the server serves several snapshots {sorted(snaps)}; name one in snapshot.name",
                    [("snapshot.name", "required when the server serves several snapshots")],
                )
        else:
            snap = snaps.get(name)
            if snap is None:
                raise SnapshotNotFoundError(
                    f"no snapshot {name!r} is served{suggest(name, snaps)}; served: {sorted(snaps)}",
                    [("snapshot.name", f"unknown snapshot {name!r}")],
                )
        if version and version != snap.version:
            raise VersionNotServedError(
                f"version {version} of {snap.name} is not served; serving {snap.version}",
                [("snapshot.version", f"version {version!r} is not served; serving {snap.version!r}")],
            )
        return snap
