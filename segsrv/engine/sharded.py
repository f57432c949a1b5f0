"""Answers over a sharded snapshot (ROOT/NAME with a SHARDS manifest: segsrv/snapshot/shards.py), merged
in-process and exact.

``open_sharded`` opens every shard at the version SHARDS names, and refuses a shard whose CURRENT names
another version (a build in progress, or a shard changed since) or whose dictionary is not the shared
one, so no answer mixes builds. All shards share one feature dictionary, so counts add feature by
feature:

* Count: the sum of the shards' counts.
* Relate: per shard, the condition's count and each candidate's count in the condition and overall;
  summed, they go through the unsharded engine's ``rank_counts`` (every statistic, filter, order,
  q-value and limit). Identifier-like fields ("every field" leaves them out) are judged by the
  summed counts, as the unsharded engine judges them by its own.

A universe of a replicated table (every shard holds it whole) is answered from shard 0 alone: its
rows would otherwise count N times. It is recognised exactly: a partitioned universe's shards hold
disjoint ids, a replicated one's the same ids in every shard.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _kernels
from ..errors import CorruptSnapshotError
from ..ops.count import CountResult
from ..ops.relate import RelateQuery, RelateResult
from ..snapshot.location import read_current
from ..snapshot.reader import Snapshot, open_snapshot
from ..snapshot.shards import SHARDS, dictionary_sha256, read_shard_manifest
from . import cancel
from .conditions import All, Condition, evaluate
from .fields import is_identifier_like
from .relate import count_features, rank_counts, select_candidates

# the operations answered over shards so far (docs/scale.md, "Answers over shards")
SHARDED_OPERATIONS = ("Count", "Relate")


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


def sharded_count(sharded: ShardedSnapshot, universe: str | None,
                  where: Condition | None = None) -> CountResult:
    t0 = time.perf_counter()
    n_rows = total = 0
    for shard, u in zip(sharded.shards, sharded.universe(universe).parts):
        bits = evaluate(shard, u, where if where is not None else All())
        n_rows += u.n_rows
        total += int(_kernels.popcount(bits))
        cancel.check()
    return CountResult(sharded.name, sharded.version, u.name, n_rows, total,
                       elapsed_ms=(time.perf_counter() - t0) * 1e3)


def sharded_relate(sharded: ShardedSnapshot, query: RelateQuery) -> RelateResult:
    t0 = time.perf_counter()
    query.validate()
    merged = sharded.universe(query.universe)
    first = merged.parts[0]
    fids = select_candidates(first, query, () if query.relate else merged.identifier_like)
    n = n_c = 0
    n_cf = np.zeros(len(fids), dtype=np.int64)
    plans = set()
    for shard, u in zip(sharded.shards, merged.parts):
        cond_bits = evaluate(shard, u, query.where)
        shard_c = int(_kernels.popcount(cond_bits))
        n += u.n_rows
        n_c += shard_c
        if shard_c and len(fids):
            counts, plan = count_features(u, cond_bits, shard_c, fids, query.plan)
            n_cf += counts
            plans.add(plan)
        cancel.check()
    n_f = merged.feature_count[fids]
    n_matching, hits = rank_counts(first, query, n, n_c, fids, n_f, n_cf)
    return RelateResult(
        snapshot=sharded.name, version=sharded.version, universe=first.name, n_rows=n, n_condition=n_c,
        n_candidates=len(fids), n_matching=n_matching, plan="+".join(sorted(plans)) or "none", hits=hits,
        elapsed_ms=(time.perf_counter() - t0) * 1e3)
