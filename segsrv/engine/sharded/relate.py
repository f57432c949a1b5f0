"""Relate over shards: per shard the condition's count and each candidate's count in it; summed, every
statistic, filter, order, q-value and limit comes from the unsharded engine's ``rank_counts``."""

from __future__ import annotations

import time

import numpy as np

from ... import _kernels
from ...ops.relate import RelateQuery, RelateResult
from .. import cancel
from ..conditions import evaluate
from ..relate import count_features, rank_counts, select_candidates
from .open import ShardedSnapshot


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
