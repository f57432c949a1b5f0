"""A sharded snapshot opened: every shard at the version its SHARDS manifest names (segsrv/snapshot/shards.py),
and what a universe's merged answers need found once per build (package docstring: the merge rules)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CorruptSnapshotError
from ...snapshot.location import read_current
from ...snapshot.reader import DEFAULT_VERIFY, Snapshot, open_snapshot
from ...snapshot.shards import SHARDS, dictionary_sha256, read_shard_manifest
from .. import cancel
from ..fields import is_identifier_like


def is_sharded(location: str | Path) -> bool:
    """Whether LOCATION is a sharded snapshot's directory (ROOT/NAME holding SHARDS)."""
    return (Path(location) / SHARDS).is_file()


def universe_summary(shard: Snapshot, universe: str | None) -> tuple[str, int, bytes, np.ndarray]:
    """One shard's part of a universe, as the merge needs it: (name, rows, SHA-256 of its row ids,
    each feature's rows)."""
    u = shard.universe(universe)
    digest = hashlib.sha256(np.ascontiguousarray(u.row_ids).view(np.uint8)).digest() if u.n_rows else b""
    return u.name, int(u.n_rows), digest, np.asarray(u.feature_count, dtype=np.int64)


@dataclass(frozen=True)
class MergedUniverse:
    """What a universe's answers over shards need that does not change within a build, found once."""

    name: str
    schema: object  # the universe in the schema shard (shard 0): fields, values, feature names; not its rows
    shards: tuple[int, ...]  # the shards holding part of it: all of them, or (0,) for a replicated table
    n_rows: int  # its rows over those shards
    feature_count: np.ndarray  # each feature's rows, summed over those shards
    identifier_like: list[str]  # the fields "every field" leaves out, judged by the summed counts


class ShardedSnapshot:
    """The shards of one sharded build, open at the versions its SHARDS manifest names.

    Every merged operation runs through ``map``: a module-level function ``fn(shard, *args)`` over one
    shard's snapshot, applied to each shard named, its (small, picklable) answers returned in shard
    order. In-process (this class) ``map`` calls it on each open shard in turn; the Ray router runs the
    same functions on the shard replicas. So one merge serves both, and a partial answer is counts,
    never a shard's bitsets.
    """

    def __init__(self, path: Path, name: str, version: str, schema: Snapshot, shard_count: int,
                 shards: list[Snapshot] | None = None):
        self.path = Path(path)
        self.name = name
        self.version = version  # "shards-" + the first 16 hex digits of the SHA-256 of the shard versions
        self.schema = schema  # shard 0: the shared dictionary, fields and catalog
        self.shard_count = shard_count
        self.shards = shards  # the open shards (in-process), or None when `map` runs them elsewhere
        self._merged: dict[str, MergedUniverse] = {}

    def map(self, fn, *args, shards=None) -> list:
        """[fn(shard, *args) for each shard in `shards` (default all)], in that order. A transport's
        deadline or a gone caller stops it between shards (segsrv/engine/cancel.py)."""
        out = []
        for i in range(self.shard_count) if shards is None else shards:
            out.append(fn(self.shards[i], *args))
            cancel.check()
        return out

    def verify(self, mode: str = DEFAULT_VERIFY, threads: int | None = None) -> None:
        """Check the open shards' bytes again (a server's scrub): raises as open_snapshot does when one
        changed on disk."""
        for shard in self.shards or ():
            shard.files.verify(mode, threads)

    def universe(self, universe: str | None) -> MergedUniverse:
        """The universe over the shards: every shard holds part of a partitioned one; a replicated one
        (the same rows in every shard) is shard 0's alone. Found on first use (hashing row ids is linear
        in the rows), then kept: the shards do not change."""
        schema = self.schema.universe(universe)
        merged = self._merged.get(schema.name)
        if merged is None:
            parts = self.map(universe_summary, schema.name)
            first, last = parts[0], parts[-1]
            held = tuple(range(len(parts)))
            if len(parts) > 1 and first[1] > 0 and first[1:3] == last[1:3]:
                held, parts = (0,), parts[:1]  # the same rows in every shard: a replicated table
            feature_count = np.sum([p[3] for p in parts], axis=0)
            merged = MergedUniverse(schema.name, schema, held, sum(p[1] for p in parts), feature_count,
                                    [f for f in schema.fields if is_identifier_like(schema, f, feature_count)])
            self._merged[schema.name] = merged  # two threads may both find it: the same answer
        return merged


def open_sharded(location: str | Path, verify: str = DEFAULT_VERIFY, threads: int | None = None) -> ShardedSnapshot:
    """Every shard of ROOT/NAME at the version SHARDS names, each verified as open_snapshot verifies
    (`verify` and `threads`: open_snapshot's)."""
    location = Path(location)
    manifest = read_shard_manifest(location)
    shards = []
    for entry in manifest["shards"]:
        shard_dir = location / entry["dir"]
        current = read_current(shard_dir)
        if current != entry["version"]:
            raise CorruptSnapshotError(
                f"{shard_dir}: CURRENT names version {current!r} but {location / SHARDS} names "
                f"{entry['version']!r}: the shards are not of one build (a build in progress, or a shard "
                f"changed since); rebuild, or wait for the build to finish")
        snap = open_snapshot(shard_dir, version=entry["version"], verify=verify, threads=threads)
        if dictionary_sha256(snap.manifest) != manifest["dictionary_sha256"]:
            raise CorruptSnapshotError(f"{snap.path}: its feature "
                                       f"dictionary is not the one {location / SHARDS} records")
        shards.append(snap)
    return ShardedSnapshot(location, manifest["name"], sharded_version(manifest), shards[0], len(shards), shards)


def sharded_version(manifest: dict) -> str:
    """The version a sharded build answers as: "shards-" + 16 hex digits of the SHA-256 of its shard
    versions, in order (one build, one version)."""
    versions = "\n".join(e["version"] for e in manifest["shards"]).encode("utf-8")
    return "shards-" + hashlib.sha256(versions).hexdigest()[:16]
