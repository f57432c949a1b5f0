"""Count over shards: the sum of each shard's count of the condition in its part of the universe."""

from __future__ import annotations

import time

from ... import _kernels
from ...ops.count import CountResult
from .. import cancel
from ..conditions import All, Condition, evaluate
from .open import ShardedSnapshot


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
