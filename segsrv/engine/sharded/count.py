"""Count over shards: the sum of each shard's count of the condition in its part of the universe."""

from __future__ import annotations

import time

from ...ops.count import CountResult
from ...snapshot.reader import Snapshot
from ..conditions import All, Condition
from ..count import count_matching
from .open import ShardedSnapshot


def count_part(shard: Snapshot, universe: str, where: Condition | None) -> int:
    """The rows of `universe` matching `where` in one shard."""
    u = shard.universe(universe)
    return count_matching(shard, u, where if where is not None else All())


def sharded_count(sharded: ShardedSnapshot, universe: str | None,
                  where: Condition | None = None) -> CountResult:
    t0 = time.perf_counter()
    merged = sharded.universe(universe)
    total = sum(sharded.map(count_part, merged.name, where, shards=merged.shards))
    return CountResult(sharded.name, sharded.version, merged.name, merged.n_rows, total,
                       elapsed_ms=(time.perf_counter() - t0) * 1e3)
