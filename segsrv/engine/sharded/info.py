"""GetSnapshotInfo over shards: the shared dictionary (fields, values, band edges) with each universe's
rows and each value's rows summed over the shards that hold it (a replicated universe counted once:
``ShardedSnapshot.universe``), answered as the sharded build (its name and ``shards-...`` version).

The shared dictionary may list values no row of the whole data has (count 0) that an unsharded build
leaves out (docs/scale.md, "What is exact"): n_values and n_features can be larger than an unsharded
build's; every value an unsharded build lists has the same count here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ...ops.info import InfoQuery, InfoResult
from ...snapshot.reader import FieldInfo
from .open import MergedUniverse, ShardedSnapshot


@dataclass(frozen=True)
class MergedUniverseInfo:
    """What InfoResult reads of a universe (.name .table .key .n_rows .n_features .fields), over the shards."""

    name: str
    table: str
    key: str
    n_rows: int
    n_features: int
    fields: dict[str, FieldInfo]

    @classmethod
    def of(cls, merged: MergedUniverse) -> "MergedUniverseInfo":
        u = merged.schema
        fields = {name: dataclasses.replace(f, counts=np.asarray(merged.feature_count[f.feature_ids], dtype=np.int64))
                  for name, f in u.fields.items()}
        return cls(u.name, u.table, u.key, merged.n_rows, u.n_features, fields)


def sharded_info(sharded: ShardedSnapshot, query: InfoQuery, served: Iterable[str]) -> InfoResult:
    """The InfoResult of a sharded build (before the privacy floor); served: the names of the snapshots served."""
    query.validate()
    names = [sharded.schema.universe(query.universe).name] if query.universe else list(sharded.schema.universes)
    universes = [MergedUniverseInfo.of(sharded.universe(name)) for name in names]
    return InfoResult.from_snapshot(sharded, universes, query.include_values, served)
