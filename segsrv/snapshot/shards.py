"""Customer-sharded snapshots: the sharding rule, the layout and the shard manifest. This docstring is the spec.

Rule
----
A spec names its shard entity (``[shards] entity = "customers"``), a table with a key column. Its row with
key K belongs to shard ``xxh3_64(canonical bytes of K) % N`` (xxhash's XXH3 64-bit, seed 0, the hash the
snapshot checksums use). The canonical bytes of a key: an integer key (a key the builder stores as "int")
is its 8-byte little-endian two's complement; any other key is the UTF-8 of its text (the bytes the
snapshot's ``row_ids.bin`` holds). ``shard_of_keys`` routes ids; it is the only implementation.

A table that reaches the entity by forward links (orders -> customers, order_lines -> orders ->
customers) is *partitioned*: each row goes to the shard of the entity row its links reach (the first link,
by name, on a shortest path to the entity). A row whose link on that path is empty reaches no entity row
and goes to shard 0. Every other table (products) is *replicated* into every shard. A universe goes with
its table: the customers, orders and order_lines universes are partitioned, a products universe would be
replicated (each shard holds it whole).

Every shard is a regular snapshot (format.py) and all shards share one feature dictionary: every field has
the same values in the same order, the same feature ids, the same band edges and labels, decided over the
whole data before any shard is built (a value no row of a shard reaches has count 0 there). So a feature's
row count over the whole data is the sum of its counts over the shards.

Layout
------
::

    ROOT/NAME/SHARDS                 the shard manifest (JSON), written last and atomically
    ROOT/NAME/shard-000/CURRENT      shard 0: a regular snapshot directory (ROOT/NAME/shard-000/VERSION/...)
    ROOT/NAME/shard-001/...

A shard's snapshot is named ``shard-III`` (its manifest's ``name``); open it with
``open_snapshot("ROOT/NAME/shard-000")``. ``SHARDS`` names the versions that make up one build: a build
publishes every shard's version first, then points each shard's CURRENT at it, then writes SHARDS. A build
that fails leaves SHARDS and every CURRENT as they were (versions it already published stay, unreferenced,
for ``segsrv prune``). Rebuilding with fewer shards leaves the directories of the dropped shards in place;
SHARDS no longer names them.

Shard manifest
--------------
``SHARDS`` is UTF-8 JSON with sorted keys::

    format          "segsrv-shards"
    format_version  1
    name            the spec's name
    entity, key     the shard entity table and its key column
    hash            "xxh3_64"
    shard_count     N
    dictionary_sha256  SHA-256 of the shared feature dictionary (every shard's fields, values and edges)
    shards          [{index, dir ("shard-000"), version, manifest_sha256 (SHA-256 of the version's
                      manifest.json), input_sha256}] in index order

``input_sha256`` fingerprints what the shard was built from: the spec text, the shard count, the shared
dictionary, the segsrv and DuckDB versions and, for every table the shard loads, its row count and the sum of DuckDB's hash of each row
(order-independent). A rebuild whose shard has the same fingerprint reuses the shard's published version
instead of building it again. ``read_shard_manifest`` refuses a manifest that is not one of these, or
whose shard versions are missing or do not match their ``manifest_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from ..errors import CorruptSnapshotError, SpecError
from . import format as fmt
from .spec import ROW_KEY, Spec

SHARDS = "SHARDS"
SHARDS_FORMAT = "segsrv-shards"
SHARDS_FORMAT_VERSION = 1
HASH_NAME = "xxh3_64"


def shard_dir_name(index: int) -> str:
    return f"shard-{index:03d}"


def check_shard_count(count) -> int:
    """N must be a positive integer; more shards than entity rows is allowed (some shards are empty)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(f"--shards: expected a shard count >= 1, got {count!r}")
    return count


def shard_of_keys(keys: np.ndarray, count: int) -> np.ndarray:
    """The shard (int64) of each key: int64 keys by their 8 little-endian bytes, byte-string keys by their bytes
    (trailing NULs of a fixed-width numpy string are not part of the key)."""
    keys = np.asarray(keys)
    if keys.dtype.kind in "iu":
        raw = keys.astype("<i8").tobytes()
        digests = [xxhash.xxh3_64_intdigest(raw[i:i + 8]) for i in range(0, len(raw), 8)]
    else:
        digests = [xxhash.xxh3_64_intdigest(k if isinstance(k, bytes) else str(k).encode("utf-8"))
                   for k in keys.tolist()]
    return (np.array(digests, dtype=np.uint64) % np.uint64(count)).astype(np.int64)


@dataclass(frozen=True)
class PartitionPlan:
    """Which tables a sharded build partitions, and through which link each reaches the entity."""

    entity: str
    key: str
    # partitioned table -> (link column, parent table): the parent is the entity or another partitioned table
    parents: dict[str, tuple[str, str]]

    def partitioned(self, table: str) -> bool:
        return table == self.entity or table in self.parents

    def depth(self, table: str) -> int:
        """Links from TABLE to the entity (0 for the entity, -1 for a replicated table)."""
        if table == self.entity:
            return 0
        if table not in self.parents:
            return -1
        return 1 + self.depth(self.parents[table][1])


def partition_plan(spec: Spec) -> PartitionPlan:
    """The partition of SPEC's tables: breadth first from the entity along reverse links (shortest paths)."""
    entity = spec.shard_entity
    if entity is None:
        raise SpecError("shards.entity: the spec has no [shards] section naming the shard entity "
                        "(add [shards] entity = \"TABLE\"; docs/scale.md)")
    parents: dict[str, tuple[str, str]] = {}
    frontier = [entity]
    while frontier:
        nxt = []
        for parent in frontier:
            for t in sorted(spec.tables.values(), key=lambda t: t.name):
                if t.name == entity or t.name in parents:
                    continue
                links = sorted((n, lk) for n, lk in t.links.items() if lk.table == parent)
                if links:
                    parents[t.name] = (links[0][1].column, parent)
                    nxt.append(t.name)
        frontier = nxt
    for table in [entity, *parents]:
        if spec.tables[table].key == ROW_KEY:
            raise SpecError(f"tables.{table}.key: a sharded table needs a key column ({ROW_KEY!r} numbers the "
                            f"rows of a file, which differs from shard to shard)")
    return PartitionPlan(entity, spec.tables[entity].key, parents)


def dictionary_of(manifest: dict) -> dict:
    """The feature dictionary of a snapshot manifest: what every shard of a build must share."""
    keep = ("name", "kind", "semantics", "hops", "values", "feature_offset", "edges")
    return {u: [{k: f.get(k) for k in keep} for f in meta["fields"]] for u, meta in manifest["universes"].items()}


def dictionary_sha256(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(dictionary_of(manifest), sort_keys=True).encode("utf-8")).hexdigest()


def name_version(snapshot_dir: Path, entry: dict, version: str) -> None:
    """Make a SHARDS entry name another published version of its shard (its manifest_sha256 with it)."""
    entry["version"] = version
    entry["manifest_sha256"] = hashlib.sha256((Path(snapshot_dir) / entry["dir"] / version / fmt.MANIFEST)
                                              .read_bytes()).hexdigest()


def write_shard_manifest(snapshot_dir: Path, manifest: dict) -> Path:
    path = snapshot_dir / SHARDS
    fmt.write_atomic(path, fmt.dumps_manifest(manifest))
    return path


def read_shard_manifest(snapshot_dir: str | Path) -> dict:
    """The shard manifest of ROOT/NAME, checked: its shape, and every shard's version against its digest."""
    path = Path(snapshot_dir) / SHARDS
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{path}: no shard manifest (not a sharded snapshot)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptSnapshotError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise CorruptSnapshotError(f"{path}: format is not {SHARDS_FORMAT!r}")
    fmt.check_format_version(manifest.get("format_version"), str(path))
    if manifest.get("hash") != HASH_NAME:
        raise CorruptSnapshotError(f"{path}: hash {manifest.get('hash')!r} is not {HASH_NAME!r}")
    count = manifest.get("shard_count")
    shards = manifest.get("shards")
    if not isinstance(count, int) or count < 1 or not isinstance(shards, list) or len(shards) != count:
        raise CorruptSnapshotError(f"{path}: shard_count {count!r} does not match the {len(shards or [])} "
                                   f"shards listed")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or entry.get("index") != i or entry.get("dir") != shard_dir_name(i):
            raise CorruptSnapshotError(f"{path}: shard entry {i} is not {{index: {i}, dir: {shard_dir_name(i)!r}, ...}}")
        version = entry.get("version")
        if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
            raise CorruptSnapshotError(f"{path}: shard {i}: bad version {version!r}")
        vmanifest = Path(snapshot_dir) / entry["dir"] / version / fmt.MANIFEST
        if not vmanifest.is_file():
            raise CorruptSnapshotError(f"{path}: shard {i}: version {version!r} is missing ({vmanifest})")
        if hashlib.sha256(vmanifest.read_bytes()).hexdigest() != entry.get("manifest_sha256"):
            raise CorruptSnapshotError(f"{path}: shard {i}: {vmanifest} does not match its manifest_sha256")
    return manifest
