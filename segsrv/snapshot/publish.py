"""Publishing snapshot versions: the one place that writes ROOT/NAME/VERSION and ROOT/NAME/CURRENT.

The protocol (readers and the server rely on it; the builder and ``segments apply`` follow it):

1. A version is written into a new hidden staging directory inside ROOT/NAME
   (``new_staging_dir``: ``.PURPOSE-PID-RANDOM``), on the same file system as its final place.
   Its data files are written there, or hard-linked from a base version (``link_files``: the
   new version shares the base's bytes, nothing is copied; published files are never modified,
   so sharing them is safe).
2. Every file is made read-only, then the manifest is written last (``publish_version``),
   atomically: a version directory without a manifest is unfinished, and readers refuse it.
   Read-only files are a guard, not a lock (root may still write them): an operator must never
   write, truncate or replace a file of a published version (docs/server.md); a server notices a
   changed file by its checksum (at every open, and every ``--verify-interval`` for served
   versions) and stops serving it.
3. The staging directory is renamed to ROOT/NAME/VERSION in one step, so a version appears
   complete or not at all. A published version is immutable: a name already taken may only be
   published again with the identical manifest (the callers check, each with its own message).
4. CURRENT is pointed at the version last (``point_current``), atomically (write a temporary file,
   rename it over CURRENT): a server polling CURRENT sees the old version or the new one.

A failure before step 3 leaves nothing behind but the staging directory, which ``discard``
removes.

5. A version is removed (``withdraw_version``: ``segsrv prune``, or a rebuild whose catalog could not be
   carried over) by renaming it to a hidden directory first, in one step, then deleting that: a reader
   finds the whole version or none of it. A server that has the version open keeps its memory maps.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from . import checksum
from . import format as fmt
from .mapping import map_file


def new_staging_dir(snapshot_dir: Path, purpose: str) -> Path:
    """Create the hidden directory a new version of ROOT/NAME is written into."""
    staging = snapshot_dir / f".{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def link_files(base_dir: Path, staging: Path, files: dict[str, dict]) -> int:
    """Hard-link the manifest `files` (relative path -> {"bytes": ...}) of the version `base_dir`
    into `staging`; returns their total size in bytes."""
    n_bytes = 0
    for rel, meta in sorted(files.items()):
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(base_dir / rel, dst)  # same file system: shares the data, copies nothing
        n_bytes += int(meta["bytes"])
    return n_bytes


def entries_of(directory: Path, rels: list[str], threads: int = 1) -> dict[str, dict]:
    """The manifest's entries of the files `rels` (relative to `directory`): {rel: {bytes, xxh3, sha256}}."""
    maps = {rel: map_file(directory / rel) for rel in rels}
    algorithms = {rel: (checksum.FAST, checksum.STRONG) for rel in maps}
    got = checksum.digests(maps, algorithms, threads=threads)
    return {rel: {"bytes": len(data), checksum.FAST: got[rel][checksum.FAST], checksum.STRONG: got[rel][checksum.STRONG]}
            for rel, data in maps.items()}


def make_read_only(directory: Path) -> None:
    """Clear the write bits of every file below `directory` (hard links share them with their base)."""
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode
            if mode & 0o222:
                os.chmod(path, mode & ~0o222)


def publish_version(staging: Path, snapshot_dir: Path, version: str, manifest: bytes) -> Path:
    """Make the files of `staging` read-only, write the manifest (last, read-only too), then rename
    `staging` to ROOT/NAME/VERSION."""
    make_read_only(staging)
    fmt.write_atomic(staging / fmt.MANIFEST, manifest)
    make_read_only(staging)
    final = snapshot_dir / version
    os.rename(staging, final)
    return final


def point_current(snapshot_dir: Path, version: str) -> None:
    """Atomically make ROOT/NAME/CURRENT name `version`."""
    fmt.write_atomic(snapshot_dir / fmt.CURRENT, (version + "\n").encode())


def withdraw_version(snapshot_dir: Path, version: str) -> Path:
    """Rename ROOT/NAME/VERSION to a hidden directory (atomically: the version is gone for every reader)
    and return it; ``discard`` deletes it."""
    hidden = snapshot_dir / f".removing-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(snapshot_dir / version, hidden)
    return hidden


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
