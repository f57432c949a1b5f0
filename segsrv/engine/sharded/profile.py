"""Profile over shards: per shard the segment's rows, each value's rows within it, and the segment's
values of each numeric field, sorted. The counts are summed and go through the unsharded engine's
``rank_profile_counts`` (every share, lift, interval, p-value and order); the sorted values are merged
into the segment's sorted values and go through its ``numeric_stats``, so count, min, max and the
percentiles are the unsharded ones exactly, and mean and std are numpy's over the values in ascending
order (the unsharded engine sums them in row order: the two differ by rounding only).

A numeric field's population statistics are found once per opened build (the first Profile that needs
them gathers every row's value from the shards), then kept; a segment of every row is the population.
Data moved per call: the counts, plus 8 bytes per member of the segment per numeric field, except from
a shard whose every row is in the segment when the whole segment is every row (docs/scale.md).
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
                 numeric_fields: list[str]) -> tuple[int, np.ndarray, str | None, list[np.ndarray] | None]:
    """(the segment's rows, each value's rows within them, the counting plan used or None, each numeric
    field's values in the segment, ascending) in one shard; the values are None when the segment holds
    every row of the shard (the merge has them from the population, or asks: population_values_part)."""
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
    if n_s == 0:
        values = [np.zeros(0, dtype=np.float64) for _ in numeric_fields]
    else:
        values = None if n_s == u.n_rows else sorted_present(u, bits, numeric_fields)
    return n_s, n_sv, plan, values


def population_values_part(shard: Snapshot, universe: str, fields: list[str]) -> list[np.ndarray]:
    """Each numeric field's non-missing values over every row of one shard, ascending."""
    return sorted_present(shard.universe(universe), None, fields)


def merged_stats(sorted_parts: list[np.ndarray]) -> NumericStats:
    """The statistics of the union of the shards' sorted values (a k-way merge: concatenate and sort)."""
    values = np.concatenate(sorted_parts) if sorted_parts else np.zeros(0, dtype=np.float64)
    return numeric_stats(values, owned=True)  # exact order statistics; mean and std summed in shard order


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

    segments: list[NumericStats | None] = [None] * len(numeric)  # None: every row, the population's
    if numeric and n_s != n:
        # a shard whose every row is in the segment sent no values: ask it for its whole columns
        whole = iter(sharded.map(population_values_part, merged.name, numeric,
                                 shards=[merged.shards[i] for i, p in enumerate(parts) if p[3] is None]))
        values = [next(whole) if p[3] is None else p[3] for p in parts]
        segments = [merged_stats([v[j] for v in values]) for j in range(len(numeric))]
    numeric_out = []
    for name, segment in zip(numeric, segments):
        population = cached_population(sharded, (merged.name, name), lambda: merged_stats(
            [v[0] for v in sharded.map(population_values_part, merged.name, [name], shards=merged.shards)]))
        numeric_out.append(NumericProfile(name, population if segment is None else segment, population))

    return ProfileResult(
        snapshot=sharded.name, version=sharded.version, universe=merged.name, n_rows=n, n_segment=n_s,
        fields=fields_out, numeric=numeric_out, elapsed_ms=(time.perf_counter() - t0) * 1e3,
        plan="+".join(sorted(plans)) or "none",
    )
