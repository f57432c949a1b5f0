"""Assign over shards: each id answered by the shard holding it, ranked and scored with the merged catalog.

By ids: ``ShardedSnapshot.route_ids`` sends each id to its shard (every shard, for a universe of a
partitioned table other than the shard entity's; shard 0 for a replicated one), every shard with its own
ids in one round (``ShardedSnapshot.map_each``); the shard finds its row, evaluates the catalog's
membership programs on it (``assign_part``, the unsharded engine's compiled catalog of the shard) and,
for propensities, returns the row's features. The merge ranks the segments by
their merged sizes (segsrv.engine.sharded.catalog.MergedCatalog) and scores the rows' features with the
merged propensity model, through the unsharded engine's ``assignments`` and ``propensities_of_rows``.
By features (a new customer): the merged catalog answers as the unsharded engine does. The privacy floor
is the unsharded one over the merged counts.
"""

from __future__ import annotations

import time

import numpy as np

from ...ops.assign import AssignQuery, AssignResult
from ...snapshot.reader import Snapshot
from ..assign import RowsIndex, assign_features, assign_params, assign_universe, assignments, compiled_catalog
from .catalog import merged_catalog
from .open import ShardedSnapshot


def assign_part(shard: Snapshot, universe: str, ids: list, with_features: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Of `ids` in one shard: (found bool[len(ids)], membership bool[segments, found ids], and with_features
    the CSR indptr and feature ids of the found ids' rows, else empty)."""
    u = shard.universe(universe)
    cat = compiled_catalog(shard, u)
    rows = np.asarray(u.rows_for_ids(ids), dtype=np.int64)
    found = rows >= 0
    member = cat.membership(cat.presence_of_rows(rows[found]))
    indptr, feats = np.zeros(1, np.int64), np.zeros(0, np.int64)
    if with_features:
        owner, feats = u.rows_features(rows[found])
        indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=int(found.sum())))]).astype(np.int64)
    return found, member, indptr, feats


def sharded_assign(sharded: ShardedSnapshot, query: AssignQuery, privacy_k: int = 0) -> AssignResult:
    t0 = time.perf_counter()
    merged = sharded.universe(assign_universe(sharded.schema, query))
    params = assign_params(query)
    cat = merged_catalog(sharded, merged.name)
    ids = list(query.ids or [])
    if ids:
        want = bool(query.include_propensities and cat.segments)
        found, member, index = _gather(sharded, merged.name, merged.shards, ids, len(cat.segments), want)
        prop = None
        if want and member.shape[1]:
            index = RowsIndex(*index, cat.universe.n_features)
            prop = cat.propensities_of_rows(np.arange(member.shape[1]), params, privacy_k, index=index)
        out = assignments(cat, ids, found, member, prop, privacy_k)
    else:
        out = assign_features(cat, query, params, privacy_k)
    return AssignResult(sharded.name, sharded.version, merged.name, len(cat.segments), out,
                        (time.perf_counter() - t0) * 1e3, len(cat.segments) - len(cat.orders(privacy_k)[0]))


def _gather(sharded: ShardedSnapshot, universe: str, held: tuple[int, ...], ids: list, n_segments: int,
            with_features: bool) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Ask each shard about its ids, every shard in one round (``ShardedSnapshot.map_each``) -> (found
    bool[len(ids)], membership bool[segments, found ids], the found ids' rows (indptr, features)), the found
    ids in the order of `ids` (an id is in one shard at most)."""
    route = sharded.route_ids(universe, ids)
    at = {shard: np.flatnonzero((route == shard) | (route == -1)) for shard in held}
    at = {shard: where for shard, where in at.items() if len(where)}
    answers = sharded.map_each(assign_part, {shard: (universe, [ids[k] for k in where], with_features)
                                             for shard, where in at.items()})
    found = np.zeros(len(ids), dtype=bool)
    member = np.zeros((n_segments, len(ids)), dtype=bool)
    rows = []  # (positions in ids, CSR indptr, features) per shard
    for where, (got, m, indptr, feats) in zip(at.values(), answers):
        where = where[got]
        found[where] = True
        member[:, where] = m
        rows.append((where, indptr, feats))
    if not with_features:
        return found, member[:, found], (np.zeros(1, np.int64), np.zeros(0, np.int64))
    _, owner, feats = merge_rows(rows)
    indptr = np.zeros(int(found.sum()) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(indptr) - 1), out=indptr[1:])
    return found, member[:, found], (indptr, feats)


def merge_rows(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of several shards, each part (sort keys: the rows' positions among the ids asked, CSR indptr,
    feature ids) -> (the order that takes the parts' rows, concatenated, to the order of their keys; the
    rows' (owner, feature) pairs in that order)."""
    keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    lens = np.concatenate([np.zeros(0, np.int64)] + [np.diff(p[1]) for p in parts]).astype(np.int64)[order]
    offsets = np.cumsum([0] + [len(p[2]) for p in parts])
    starts = np.concatenate([np.zeros(0, np.int64)] + [p[1][:-1] + o for p, o in zip(parts, offsets)])
    starts = starts.astype(np.int64)[order]
    indices = np.concatenate([np.zeros(0, np.int64)] + [p[2] for p in parts]).astype(np.int64)
    owner = np.repeat(np.arange(len(order), dtype=np.int64), lens)
    # position j of the gather reads indices[start of its row + j - first j of that row]
    offs = np.arange(len(owner), dtype=np.int64) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return order, owner, indices[offs]
