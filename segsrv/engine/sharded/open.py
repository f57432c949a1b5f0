"""A sharded snapshot opened: every shard at the version its SHARDS manifest names (segsrv/snapshot/shards.py),
and what a universe's merged answers need found once per build (package docstring: the merge rules)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CorruptSnapshotError, UnknownUniverseError
from ...snapshot.location import read_current
from ...snapshot.reader import DEFAULT_VERIFY, Snapshot, int_key, open_snapshot
from ...snapshot.shards import SHARDS, dictionary_sha256, read_shard_manifest, shard_dir_name, shard_of_keys
from .. import cancel
from ..fields import is_identifier_like


def is_sharded(location: str | Path) -> bool:
    """Whether LOCATION is a sharded snapshot's directory (ROOT/NAME holding SHARDS)."""
    return (Path(location) / SHARDS).is_file()


def holds_row(shard: Snapshot, universe: str, row_id) -> bool:
    """Whether this shard's part of `universe` has the row `row_id`."""
    return bool(shard.universe(universe).rows_for_ids([row_id])[0] >= 0)


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

    def unsharded_features(self) -> np.ndarray:
        """bool[n_features]: the features an unsharded build of the same data holds. Its dictionary leaves out
        a categorical or multi-valued field's values that no row of the universe reaches (count 0 in every
        shard: a product no one ordered); the shared dictionary keeps them. A logistic fit over shards leaves
        them out of its design, so that its columns, and so its arithmetic, are the unsharded fit's."""
        keep = np.asarray(self.feature_count) > 0
        for f in self.schema.fields.values():
            if f.kind == "numeric":  # every band is in both dictionaries, reached or not
                keep[f.feature_offset: f.feature_offset + len(f.values)] = True
        return keep


class ShardedSnapshot:
    """The shards of one sharded build, open at the versions its SHARDS manifest names.

    Every merged operation runs through ``map``: a module-level function ``fn(shard, *args)`` over one
    shard's snapshot, applied to each shard named, its (small, picklable) answers returned in shard
    order (``map_each``: the same with each shard's own arguments, still one round). In-process (this
    class) they call it on each open shard in turn; the Ray router runs the same functions on the shard
    replicas, every shard group's call of a round in parallel. So one merge serves both, and a partial
    answer is counts, never a shard's bitsets.
    """

    def __init__(self, path: Path, name: str, version: str, schema: Snapshot, shard_count: int,
                 shards: list[Snapshot] | None = None, entity: str | None = None):
        self.path = Path(path)
        self.name = name
        self.version = version  # "shards-" + the first 16 hex digits of the SHA-256 of the shard versions
        self.schema = schema  # shard 0: the shared dictionary, fields and catalog
        self.shard_count = shard_count
        self.shards = shards  # the open shards (in-process), or None when `map` runs them elsewhere
        self.entity = entity  # the shard entity's table (SHARDS' "entity"): its keys route ids
        self._merged: dict[str, MergedUniverse] = {}

    @property
    def description(self) -> str:
        return self.schema.description  # the spec's, the same in every shard

    def map(self, fn, *args, shards=None) -> list:
        """[fn(shard, *args) for each shard in `shards` (default all)], in that order: one round
        (``map_each`` with the same arguments for every shard)."""
        return self.map_each(fn, {i: args for i in (range(self.shard_count) if shards is None else shards)})

    def map_each(self, fn, shard_args: dict[int, tuple]) -> list:
        """[fn(shard i, *shard_args[i]) for each shard i of `shard_args`], in its order: one round, as ``map``,
        with each shard's own arguments (an Assign's ids of each shard). A transport's deadline or a gone
        caller stops it between shards (segsrv/engine/cancel.py)."""
        out = []
        for i, args in shard_args.items():
            out.append(fn(self.shards[i], *args))
            cancel.check()
        return out

    @property
    def segments(self) -> dict:
        """The segment catalog: the same in every shard (segsrv.engine.sharded.catalog publishes it so)."""
        return self.schema.segments

    def route_ids(self, universe: str | None, ids) -> np.ndarray:
        """int64: the shard holding each id of `universe`, by the sharding rule (shard_of_keys) for the shard
        entity's universe; 0 for a replicated universe; -1 for a universe of another partitioned table
        (orders: a row goes with its entity row, not by its own key), which any shard may hold: ask each.
        An id that is no key of the universe's kind is routed anywhere: its shard says it is not found."""
        merged = self.universe(universe)
        if merged.shards == (0,):
            return np.zeros(len(ids), dtype=np.int64)
        if merged.schema.table != self.entity:
            return np.full(len(ids), -1, dtype=np.int64)
        if merged.schema.key_kind == "int":
            keys = np.array([int_key(i) for i in ids], dtype=np.int64)
        else:
            keys = [str(i).encode("utf-8") for i in ids]
        return shard_of_keys(keys, self.shard_count)

    def shard_of(self, universe: str | None, row_id) -> int:
        """The one shard holding the row `row_id` of `universe` (an id the universe lacks: the shard that
        would hold it, which reports it unknown as an unsharded snapshot does): ``route_ids``' shard, and for
        a universe partitioned through links (orders by their customer), which cannot be routed from its own
        id, the shard that holds it (one round of `holds_row`)."""
        shard = int(self.route_ids(universe, [row_id])[0])
        if shard >= 0:
            return shard
        merged = self.universe(universe)
        held = self.map(holds_row, merged.name, row_id, shards=merged.shards)
        return next((i for i, h in zip(merged.shards, held) if h), 0)

    def verify(self, mode: str = DEFAULT_VERIFY, threads: int | None = None) -> None:
        """Check the open shards' bytes again (a server's scrub): raises as open_snapshot does when one
        changed on disk."""
        for shard in self.shards or ():
            shard.files.verify(mode, threads)

    def universe(self, universe: str | None) -> MergedUniverse:
        """The universe over the shards: every shard holds part of a partitioned one; a replicated one
        (the same rows in every shard) is shard 0's alone. Found on first use (hashing row ids is linear
        in the rows), then kept: the shards do not change."""
        try:
            schema = self.schema.universe(universe)
        except UnknownUniverseError as exc:  # named as the sharded snapshot, not as its shard 0
            raise UnknownUniverseError(exc.message.replace(f"snapshot {self.schema.name!r}", f"snapshot {self.name!r}", 1),
                                       exc.violations) from None
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


def open_versions(location: str | Path, name: str, versions: list[str], entity: str,
                  verify: str = DEFAULT_VERIFY) -> ShardedSnapshot:
    """The shards of ROOT/NAME at the given versions (each verified: `verify` as open_snapshot's), whatever
    SHARDS names: a build carrying its catalog over opens the shards it built before SHARDS names them."""
    location = Path(location)
    shards = [open_snapshot(location / shard_dir_name(i), version=v, verify=verify) for i, v in enumerate(versions)]
    return ShardedSnapshot(location, name, "building", shards[0], len(shards), shards, entity=entity)


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
        shards.append(open_shard(location, entry, manifest["dictionary_sha256"], verify, threads))
    return ShardedSnapshot(location, manifest["name"], sharded_version(manifest), shards[0], len(shards), shards,
                           entity=manifest["entity"])


def open_shard(location: str | Path, entry: dict, dictionary: str, verify: str = DEFAULT_VERIFY,
               threads: int | None = None) -> Snapshot:
    """The shard of ROOT/NAME that a SHARDS `entry` names, at its version (whatever its CURRENT says: a
    router's request finishes on the build it started on), verified as open_snapshot verifies (`verify`,
    `threads`: open_snapshot's), and refused unless its feature dictionary's digest is `dictionary`
    (SHARDS' dictionary_sha256)."""
    location = Path(location)
    snap = open_snapshot(location / entry["dir"], version=entry["version"], verify=verify, threads=threads)
    if dictionary_sha256(snap.manifest) != dictionary:
        raise CorruptSnapshotError(f"{snap.path}: its feature dictionary is not the one {location / SHARDS} records")
    return snap


def sharded_version(manifest: dict) -> str:
    """The version a sharded build answers as: "shards-" + 16 hex digits of the SHA-256 of its shard
    versions, in order (one build, one version)."""
    versions = "\n".join(e["version"] for e in manifest["shards"]).encode("utf-8")
    return "shards-" + hashlib.sha256(versions).hexdigest()[:16]
