"""Where a snapshot is: resolving ROOT, ROOT/NAME and ROOT/NAME/VERSION to directories.

A snapshot root holds one directory per snapshot, ``ROOT/NAME``, recognised by its ``CURRENT``
file (the name of the served version); ``ROOT`` may itself be a ``NAME`` directory. A version
is ``ROOT/NAME/VERSION`` with its ``manifest.json`` (see segsrv.snapshot.format and, for how
versions are written, segsrv.snapshot.publish).

``resolve_version_dir`` is the resolver a command or an API taking a location calls: ROOT (when
it holds one snapshot), ROOT/NAME or a version directory, and optionally a version name, to the
version directory to open. ``resolve_snapshot_dir`` does the same one level up (the ROOT/NAME
whose versions are compared or replaced), ``snapshot_dirs`` lists the snapshots of a root (what
the server serves) and ``version_dir`` finds a version by name (``CURRENT`` = the served one).
"""

from __future__ import annotations

from pathlib import Path

import os

from ..errors import CorruptSnapshotError, SnapshotNotFoundError
from . import format as fmt
from .mapping import open_regular
from .spec import suggest

MAX_CURRENT_BYTES = 4096


def read_current(name_dir: Path) -> str:
    """The version ROOT/NAME/CURRENT names.

    CURRENT is read only if it is a regular file (not a symbolic link, FIFO or device: the open
    never blocks) of at most MAX_CURRENT_BYTES, holding UTF-8 text; anything else is a
    CorruptSnapshotError (SnapshotNotFoundError when it is missing)."""
    path = name_dir / fmt.CURRENT
    if not os.path.lexists(path):
        raise SnapshotNotFoundError(f"{path} does not exist")
    fd = open_regular(path, "CURRENT")
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_CURRENT_BYTES + 1)
    if len(raw) > MAX_CURRENT_BYTES:
        raise CorruptSnapshotError(f"{path}: longer than {MAX_CURRENT_BYTES} bytes; CURRENT holds one version name")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CorruptSnapshotError(f"{path}: not UTF-8 text; CURRENT holds one version name") from None


def _check_version_dir(vdir: Path) -> None:
    """A version ROOT/NAME/VERSION must be a real directory there (never a link to elsewhere)."""
    if vdir.is_symlink():
        raise CorruptSnapshotError(f"{vdir}: the version directory is a symbolic link; a version must be a "
                                   f"directory inside {vdir.parent}")


def snapshot_dirs(root: Path) -> list[Path]:
    """The ROOT/NAME directories of a root (the root itself when it has a CURRENT), by name.
    Raises OSError when the root cannot be listed."""
    root = Path(root)
    if (root / fmt.CURRENT).exists():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / fmt.CURRENT).exists())


def _only_snapshot(path: Path, none_here: str) -> Path:
    """The one ROOT/NAME below a root; `none_here` is the message when there is none."""
    names = [p.name for p in snapshot_dirs(path)]
    if len(names) == 1:
        return path / names[0]
    if not names:
        raise SnapshotNotFoundError(f"{path}: {none_here}")
    raise SnapshotNotFoundError(f"{path}: holds several snapshots {names}; name one as ROOT/NAME")


def resolve_version_dir(location: str | Path, version: str | None = None) -> Path:
    """ROOT, ROOT/NAME or ROOT/NAME/VERSION -> the version directory to open.

    `version` names a version of the snapshot (default: the one CURRENT names; a version
    directory given as `location` is itself the version)."""
    path = Path(location)
    if not path.exists():
        raise SnapshotNotFoundError(f"{str(path)!r} does not exist")
    if (path / fmt.MANIFEST).exists() and version is None:
        return path
    if (path / fmt.CURRENT).exists() or version is not None and (path / version).exists():
        if version is None:
            version = read_current(path)
        vdir = path / version
        if not vdir.is_dir():
            raise SnapshotNotFoundError(f"{path}: version {version!r} does not exist")
        _check_version_dir(vdir)
        return vdir
    return resolve_version_dir(_only_snapshot(path, "no snapshot here (no NAME/CURRENT below it)"), version)


def resolve_snapshot_dir(location: str | Path) -> Path:
    """ROOT/NAME (or ROOT holding one snapshot, or a version directory) -> the ROOT/NAME directory."""
    path = Path(location)
    if not path.is_dir():
        raise SnapshotNotFoundError(f"{str(path)!r} does not exist or is not a directory")
    if (path / fmt.CURRENT).exists():
        return path
    if (path / fmt.MANIFEST).exists() and (path.parent / fmt.CURRENT).exists():
        return path.parent  # a version directory: its snapshot
    return _only_snapshot(path, "no snapshot here (no CURRENT in it nor in NAME/ below it)")


def list_versions(name_dir: Path) -> list[str]:
    return sorted(p.name for p in name_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / fmt.MANIFEST).exists())


def version_dir(name_dir: Path, version: str) -> Path:
    """The directory of VERSION (``CURRENT`` = the served one) with a message listing the versions."""
    if version == fmt.CURRENT:
        version = read_current(name_dir)
    vdir = name_dir / version
    if not version or "/" in version or version.startswith(".") or not (vdir / fmt.MANIFEST).exists():
        versions = list_versions(name_dir)
        current = read_current(name_dir) if (name_dir / fmt.CURRENT).exists() else None
        raise SnapshotNotFoundError(
            f"{name_dir}: no version {version!r}{suggest(version, versions)}; versions: {versions}"
            + (f" (CURRENT is {current!r})" if current else "")
        )
    _check_version_dir(vdir)
    return vdir
