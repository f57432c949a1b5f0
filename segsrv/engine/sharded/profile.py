"""Profile over shards: per shard the segment's rows, each value's rows within it, and the segment's
values of each numeric field, sorted. The counts are summed and go through the unsharded engine's
``rank_profile_counts`` (every share, lift, interval, p-value and order); the sorted values are merged
into the segment's sorted values and go through its ``numeric_stats``, so count, min, max and the
percentiles are the unsharded ones exactly, and mean and std are numpy's over the values in ascending
order (the unsharded engine sums them in row order: the two differ by rounding only).

A numeric field's population statistics are found once per opened build (the first Profile that needs
them gathers every row's value from the shards), then kept. Data moved per call: the counts, plus 8
bytes per member of the segment per numeric field (docs/scale.md).
"""

from __future__ import annotations

import time

import numpy as np

from ... import _kernels
from ...ops.profile import NumericProfile, NumericStats, ProfileQuery, ProfileResult
from ...snapshot.reader import Snapshot, Universe
from ..conditions import Condition, evaluate
from ..profile import cached_population, numeric_stats, profile_feature_ids, profile_fields, rank_profile_counts
from ..relate import count_features
from .open import ShardedSnapshot


def sorted_present(u: Universe, bits: np.ndarray | None, fields: list[str]) -> list[np.ndarray]:
    """Per numeric field, its non-missing values in the rows of `bits` (None: every row), ascending."""
    out = []
    for name in fields:
        x = u.fields[name].numeric
        x = np.asarray(x, dtype=np.float64)  # float64 already: no copy
        present = x[~np.isnan(x)] if bits is None else _kernels.gather_present(bits, x)  # fresh arrays
        present.sort()
        out.append(present)
    return out


def profile_part(shard: Snapshot, universe: str, segment: Condition, fids: np.ndarray,
                 numeric_fields: list[str]) -> tuple[int, np.ndarray, str | None, list[np.ndarray]]:
    """(the segment's rows, each value's rows within them, the counting plan used or None, each numeric
    field's values in the segment, ascending) in one shard."""
    u = shard.universe(universe)
    bits = evaluate(shard, u, segment)
    n_s = int(_kernels.popcount(bits))
    plan = None
    if n_s == 0 or not len(fids):
        n_sv = np.zeros(len(fids), dtype=np.int64)
    elif n_s == u.n_rows:  # every row of the shard: its own counts, nothing to count
        n_sv = np.asarray(u.feature_count[fids], dtype=np.int64)
    else:
        n_sv, plan = count_features(u, bits, n_s, fids)
        n_sv = np.asarray(n_sv, dtype=np.int64)
    values = sorted_present(u, None if n_s == u.n_rows else bits, numeric_fields) if n_s else \
        [np.zeros(0, dtype=np.float64) for _ in numeric_fields]
    return n_s, n_sv, plan, values


def population_values_part(shard: Snapshot, universe: str, field: str) -> np.ndarray:
    """A numeric field's non-missing values over every row of one shard, ascending."""
    return sorted_present(shard.universe(universe), None, [field])[0]


def merged_stats(sorted_parts: list[np.ndarray]) -> NumericStats:
    """The statistics of the union of the shards' sorted values (a k-way merge: concatenate and sort)."""
    values = np.concatenate(sorted_parts) if sorted_parts else np.zeros(0, dtype=np.float64)
    return numeric_stats(values, owned=True)  # sorts in place, then mean and std over ascending values


def sharded_profile(sharded: ShardedSnapshot, query: ProfileQuery) -> ProfileResult:
    t0 = time.perf_counter()
    query.validate()
    merged = sharded.universe(query.universe)
    schema, n = merged.schema, merged.n_rows
    names = profile_fields(schema, query, merged.identifier_like)
    fids = profile_feature_ids(schema, names)
    numeric = [f for f in names if schema.fields[f].numeric is not None]  # an empty shard has them too
    parts = sharded.map(profile_part, merged.name, query.segment, fids, numeric, shards=merged.shards)
    n_s = sum(p[0] for p in parts)
    n_sv = np.sum([p[1] for p in parts], axis=0).astype(np.int64)
    n_v = np.asarray(merged.feature_count[fids], dtype=np.int64)
    plans = {p[2] for p in parts if p[2] is not None}
    fields_out = rank_profile_counts(schema, names, n, n_s, n_v, n_sv, query.values_per_field)

    numeric_out = []
    for j, name in enumerate(numeric):
        segment = merged_stats([p[3][j] for p in parts])
        key = (merged.name, name)
        if n_s == n:  # the segment's values are every row's: the population, found without another round
            segment = population = cached_population(sharded, key, lambda: segment)
        else:
            population = cached_population(sharded, key, lambda: merged_stats(
                sharded.map(population_values_part, merged.name, name, shards=merged.shards)))
        numeric_out.append(NumericProfile(name, segment, population))

    return ProfileResult(
        snapshot=sharded.name, version=sharded.version, universe=merged.name, n_rows=n, n_segment=n_s,
        fields=fields_out, numeric=numeric_out, elapsed_ms=(time.perf_counter() - t0) * 1e3,
        plan="+".join(sorted(plans)) or "none",
    )
