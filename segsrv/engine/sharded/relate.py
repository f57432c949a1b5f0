"""Relate over shards: per shard the condition's count and each candidate's count in it; summed, every
statistic, filter, order, q-value and limit comes from the unsharded engine's ``rank_counts``."""

from __future__ import annotations

import time

import numpy as np

from ... import _kernels
from ...ops.relate import RelateQuery, RelateResult
from ...snapshot.reader import Snapshot
from ..conditions import Condition, evaluate_to_read
from ..relate import count_features, rank_counts, select_candidates
from .open import ShardedSnapshot


def relate_part(shard: Snapshot, universe: str, where: Condition, fids: np.ndarray,
                plan: str) -> tuple[int, np.ndarray, str | None]:
    """(the condition's rows, each candidate's rows within them, the counting plan used or None) in one
    shard."""
    u = shard.universe(universe)
    cond_bits = evaluate_to_read(shard, u, where)  # only counted
    n_c = int(_kernels.popcount(cond_bits))
    if not n_c or not len(fids):
        return n_c, np.zeros(len(fids), dtype=np.int64), None
    counts, used = count_features(u, cond_bits, n_c, fids, plan)
    return n_c, np.asarray(counts, dtype=np.int64), used


def sharded_relate(sharded: ShardedSnapshot, query: RelateQuery) -> RelateResult:
    t0 = time.perf_counter()
    query.validate()
    merged = sharded.universe(query.universe)
    fids = select_candidates(merged.schema, query, () if query.relate else merged.identifier_like)
    parts = sharded.map(relate_part, merged.name, query.where, fids, query.plan, shards=merged.shards)
    n_c = sum(p[0] for p in parts)
    n_cf = np.sum([p[1] for p in parts], axis=0) if parts else np.zeros(len(fids), dtype=np.int64)
    plans = {p[2] for p in parts if p[2] is not None}
    n_matching, hits = rank_counts(merged.schema, query, merged.n_rows, n_c, fids, merged.feature_count[fids], n_cf)
    return RelateResult(
        snapshot=sharded.name, version=sharded.version, universe=merged.name, n_rows=merged.n_rows,
        n_condition=n_c, n_candidates=len(fids), n_matching=n_matching, plan="+".join(sorted(plans)) or "none",
        hits=hits, elapsed_ms=(time.perf_counter() - t0) * 1e3)
