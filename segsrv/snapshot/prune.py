"""Removing old versions of a snapshot: ``segsrv prune ROOT/NAME --keep N``.

Versions are ordered by when they were published (the modification time of their manifest, written last;
ties by name). The newest N are kept, and so is the version CURRENT names, whatever its age; every other
version is removed, oldest first, each atomically (segsrv.snapshot.publish.withdraw_version: renamed to a
hidden directory in one step, then deleted). Versions being written are hidden staging directories,
never listed as versions, so never touched. CURRENT is read again after each rename: if a concurrent
build pointed it at the version just renamed (an identical rebuild reuses an old version), the version is
renamed back and kept. A server serving a removed version it still has open keeps its memory maps; files
a kept version shares by hard link (catalog versions share their data files) stay on disk. docs/server.md
"Removing old versions".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import SegsrvError, SnapshotNotFoundError
from . import format as fmt
from .location import list_versions, read_current, resolve_snapshot_dir, snapshot_dirs
from .publish import discard, withdraw_version
from .spec import suggest


@dataclass
class RemovedVersion:
    version: str
    published: float  # the manifest's modification time (seconds since the epoch)
    freed_bytes: int  # bytes of files no kept version shares


@dataclass
class PruneResult:
    snapshot_dir: Path
    current: str
    kept: list[str] = field(default_factory=list)  # newest first
    removed: list[RemovedVersion] = field(default_factory=list)  # oldest first
    dry_run: bool = False


def published_order(snapshot_dir: Path) -> list[tuple[str, float]]:
    """(version, publication time) of every version of ROOT/NAME, newest first."""
    found = []
    for name in list_versions(snapshot_dir):
        st = os.stat(snapshot_dir / name / fmt.MANIFEST)
        found.append((name, st.st_mtime_ns, st.st_mtime))
    found.sort(key=lambda v: (-v[1], v[0]))
    return [(name, seconds) for name, _, seconds in found]


def _snapshot_dir(location: str | Path) -> Path:
    path = Path(location)
    if (path / fmt.MANIFEST).exists():
        raise SegsrvError(f"{path} is a version directory; prune takes the snapshot, {path.parent}")
    if not path.exists() and path.parent.is_dir():
        names = [p.name for p in snapshot_dirs(path.parent)]
        raise SnapshotNotFoundError(f"no snapshot {path.name!r} in {path.parent}{suggest(path.name, names)}; "
                                    f"snapshots there: {names}")
    return resolve_snapshot_dir(path)


def _freed_bytes(vdir: Path) -> int:
    """Bytes of the files of `vdir` that no other directory links (removing it frees them)."""
    total = 0
    for p in vdir.rglob("*"):
        st = p.lstat()
        if p.is_file() and st.st_nlink == 1:
            total += st.st_size
    return total


def prune_versions(location: str | Path, keep: int, *, dry_run: bool = False,
                   progress: Callable[[str], None] | None = None) -> PruneResult:
    """Remove the versions of ROOT/NAME beyond the newest `keep` (never the CURRENT one); see the module
    docstring. `dry_run` reports what would be removed and removes nothing."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise SegsrvError(f"--keep: expected the number of newest versions to keep, at least 1, got {keep!r}")
    say = progress or (lambda msg: None)
    snapshot_dir = _snapshot_dir(location)
    current = read_current(snapshot_dir)
    result = PruneResult(snapshot_dir, current, dry_run=dry_run)
    ordered = published_order(snapshot_dir)
    doomed = [(name, t) for i, (name, t) in enumerate(ordered) if i >= keep and name != current]
    result.kept = [name for name, _ in ordered if name not in {d for d, _ in doomed}]
    for name, published in reversed(doomed):  # oldest first
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(published))
        if dry_run:
            result.removed.append(RemovedVersion(name, published, _freed_bytes(snapshot_dir / name)))
            say(f"would remove {snapshot_dir.name}/{name} (published {when})")
            continue
        try:
            hidden = withdraw_version(snapshot_dir, name)
        except FileNotFoundError:  # removed meanwhile by someone else
            continue
        if read_current(snapshot_dir) == name:  # a concurrent build made it CURRENT again: keep it
            try:
                os.rename(hidden, snapshot_dir / name)
                result.kept.append(name)
                say(f"kept {snapshot_dir.name}/{name}: it became CURRENT meanwhile")
                continue
            except OSError:  # the build published it afresh under that name; this copy is not needed
                pass
        freed = _freed_bytes(hidden)
        discard(hidden)
        result.removed.append(RemovedVersion(name, published, freed))
        say(f"removed {snapshot_dir.name}/{name} (published {when}; {freed / 1e6:,.1f} MB freed)")
    return result
