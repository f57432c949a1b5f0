"""A sharded snapshot opened: every shard at the version its SHARDS manifest names (segsrv/snapshot/shards.py),
and what a universe's merged answers need found once per build (package docstring: the merge rules)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import CorruptSnapshotError
from ...snapshot.location import read_current
from ...snapshot.reader import Snapshot, open_snapshot
from ...snapshot.shards import SHARDS, dictionary_sha256, read_shard_manifest
from ..fields import is_identifier_like


def is_sharded(location: str | Path) -> bool:
    """Whether LOCATION is a sharded snapshot's directory (ROOT/NAME holding SHARDS)."""
    return (Path(location) / SHARDS).is_file()


@dataclass(frozen=True)
class MergedUniverse:
    """What a universe's answers over shards need that does not change within a build, found once."""

    parts: list  # the universe in each shard that holds part of it
    feature_count: np.ndarray  # each feature's rows, summed over the parts
    identifier_like: list[str]  # the fields "every field" leaves out, judged by the summed counts


@dataclass(frozen=True)
class ShardedSnapshot:
    """The shards of one sharded build, open at the versions its SHARDS manifest names."""

    path: Path
    name: str
    version: str  # "shards-" + the first 16 hex digits of the SHA-256 of the shard versions, in order
    shards: list[Snapshot]
    _merged: dict = field(default_factory=dict, compare=False, repr=False)

    def universe(self, universe: str | None) -> MergedUniverse:
        """The universe over the shards: every shard holds part of a partitioned one; a replicated one
        (the same rows in every shard) is shard 0's alone. Found on first use (comparing row ids is
        linear in the rows), then kept: the shards do not change."""
        merged = self._merged.get(self.shards[0].universe(universe).name)
        if merged is None:
            parts = [s.universe(universe) for s in self.shards]
            first, last = parts[0], parts[-1]
            if len(parts) > 1 and first.n_rows > 0 and first.n_rows == last.n_rows \
                    and np.array_equal(first.row_ids, last.row_ids):
                parts = parts[:1]
            feature_count = np.sum([np.asarray(u.feature_count, dtype=np.int64) for u in parts], axis=0)
            merged = MergedUniverse(parts, feature_count,
                                    [f for f in first.fields if is_identifier_like(first, f, feature_count)])
            self._merged[first.name] = merged  # two threads may both find it: the same answer
        return merged


def open_sharded(location: str | Path) -> ShardedSnapshot:
    """Every shard of ROOT/NAME at the version SHARDS names (each verified as open_snapshot verifies)."""
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
        snap = open_snapshot(shard_dir, version=entry["version"])
        if dictionary_sha256(snap.manifest) != manifest["dictionary_sha256"]:
            raise CorruptSnapshotError(f"{snap.path}: its feature "
                                       f"dictionary is not the one {location / SHARDS} records")
        shards.append(snap)
    versions = "\n".join(e["version"] for e in manifest["shards"]).encode("utf-8")
    return ShardedSnapshot(location, manifest["name"], "shards-" + hashlib.sha256(versions).hexdigest()[:16],
                           shards)
