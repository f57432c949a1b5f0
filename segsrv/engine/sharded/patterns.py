"""The logistic fit over shards, from the shards' evidence patterns and their counts: the fit of Predict,
ScoreSegment and Evaluate (``predict``: the rows of S by class) and of the segment catalog's propensity
models (``catalog``: every row of the universe, member or not).

The unsharded fit (segsrv.engine.predict.logistic: ``fit_rows``, ``fit_patterns``) runs on the distinct
evidence patterns of its rows, in the order of each pattern's first row, with their rows per
cross-validation fold and class as weights: its objective and every fold's are sums over the patterns'
counts, and a row's fold is a hash of its id. So each shard sends (``patterns_part``) its own distinct
patterns (CSR), the id of each one's first row and its rows per fold and class; the merge
(``fit_over_shards``) takes the union of the patterns in the order of their first row by id (rows are in
id order in every build: the unsharded order), sums the counts and runs ``fit_patterns``: the same
objective, term for term in the same order, so the same l2 choice, pairs and weights, bit for bit. No
process holds the rows.

The exception is the unsharded fit's own: when the distinct patterns are more than PATTERN_MAX_SHARE of the
rows, it fits on the rows themselves (one term per row, in row order). Then one more round
(``pattern_rows_part``) sends each row's (id, pattern, class, fold) and the merge fits on the rows in id
order, as it does.

Which rows and classes: ``rows_of(shard, *args) -> (universe, rows, class of each row, number of classes)``,
a module-level function passed to the shards with its (picklable) arguments, so one pair of part functions
serves every fit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...snapshot.reader import Snapshot
from ..predict.logistic import (CV_FOLDS, PATTERN_MAX_SHARE, _gtol, cv_folds, distinct_patterns, evidence_design,
                                fit_patterns, fold_table, row_hashes)
from .open import ShardedSnapshot

RowsOf = Callable  # (shard, *args) -> (Universe, rows int64 ascending, y int64 class per row, K classes)


def _design(shard: Snapshot, rows_of: RowsOf, args: tuple, fids: np.ndarray, n_folds: int):
    """(universe, distinct patterns P of the rows' design over the columns `fids`, each row's pattern, rows,
    classes, folds, K) of this shard."""
    u, rows, y, K = rows_of(shard, *args)
    X = evidence_design(u, rows, fids)
    P, inverse = distinct_patterns(X, max_share=1.0) if len(rows) else (X, np.zeros(0, np.int64))
    folds = cv_folds(u, rows) if n_folds > 1 else np.zeros(len(rows), np.int64)
    return u, P, inverse, rows, y, folds, K


def patterns_part(shard: Snapshot, rows_of: RowsOf, args: tuple, fids: np.ndarray, n_folds: int):
    """This shard's rows (`rows_of(shard, *args)`) as distinct evidence patterns: (the patterns' CSR indptr
    and column indices, the id of each pattern's first row, float64[n_folds, n_patterns, K] its rows per
    fold and class)."""
    u, P, inverse, rows, y, folds, K = _design(shard, rows_of, args, fids, n_folds)
    first = np.unique(inverse, return_index=True)[1] if len(rows) else np.zeros(0, np.int64)
    return (np.asarray(P.indptr, np.int64), np.asarray(P.indices, np.int32), u.row_ids[rows[first]],
            fold_table(inverse, y, folds, P.shape[0], K, n_folds))


def pattern_rows_part(shard: Snapshot, rows_of: RowsOf, args: tuple, fids: np.ndarray, n_folds: int):
    """Each of this shard's rows: (its id, its pattern in `patterns_part`'s answer, its class, its fold)."""
    u, _, inverse, rows, y, folds, _ = _design(shard, rows_of, args, fids, n_folds)
    return u.row_ids[rows], inverse, y, folds


def merged_patterns(sharded: ShardedSnapshot, shards: tuple[int, ...], rows_of: RowsOf, args: tuple,
                    fids: np.ndarray, present: np.ndarray, n_folds: int):
    """(the design's distinct patterns P over the shards' rows, in the order of their first row by id, as the
    unsharded distinct_patterns orders them; their rows per fold and class `present`, T[n_folds, n_p,
    len(present)]; the design's non-zeros over the rows); the rows themselves in id order when the patterns
    are more than PATTERN_MAX_SHARE of the rows (the unsharded fit's cut-off: one more round)."""
    from scipy.sparse import csr_matrix, vstack

    F = len(fids)
    parts = sharded.map(patterns_part, rows_of, args, fids, n_folds, shards=shards)
    blocks = [csr_matrix((np.ones(len(p[1])), p[1], p[0]), shape=(len(p[0]) - 1, F)) for p in parts]
    first_ids = np.concatenate([p[2] for p in parts])
    order = np.argsort(first_ids, kind="stable")
    Q = vstack(blocks, format="csr")[order]
    P, inverse_q = distinct_patterns(Q, max_share=1.0)
    K = parts[0][3].shape[2]
    T = np.zeros((n_folds, P.shape[0], K))
    where = np.empty(len(order), np.int64)
    where[order] = inverse_q  # global pattern of each shard's pattern, in shard order
    offsets = np.cumsum([0] + [b.shape[0] for b in blocks])
    for s, p in enumerate(parts):
        T[:, where[offsets[s]:offsets[s + 1]], :] += p[3]  # a shard's patterns are distinct: no index repeats
    T = np.ascontiguousarray(T[:, :, present])  # (the fit's dot products take C order, as unsharded)
    n_pat = T.sum(axis=(0, 2))
    nnz = int(np.diff(P.indptr).astype(np.int64) @ n_pat.astype(np.int64))
    if len(np.unique(row_hashes(P))) > PATTERN_MAX_SHARE * n_pat.sum():
        rows = sharded.map(pattern_rows_part, rows_of, args, fids, n_folds, shards=shards)
        ids = np.concatenate([r[0] for r in rows])
        pattern = np.concatenate([where[offsets[s]:offsets[s + 1]][r[1]] for s, r in enumerate(rows)])
        y = np.searchsorted(present, np.concatenate([r[2] for r in rows]))
        folds = np.concatenate([r[3] for r in rows])
        by_id = np.argsort(ids, kind="stable")
        P = P[pattern[by_id]]
        T = fold_table(np.arange(len(by_id)), y[by_id], folds[by_id], len(by_id), len(present), n_folds)
    return P, T, nnz


def fit_over_shards(sharded: ShardedSnapshot, shards: tuple[int, ...], rows_of: RowsOf, args: tuple,
                    fids: np.ndarray, present: np.ndarray, l2: float | None, interactions: bool = True):
    """``logistic.fit_patterns`` over the rows `rows_of(shard, *args)` of the shards `shards`, classes
    `present` (at least two, each with rows) on the evidence columns `fids`: l2 cross-validated when None
    (then the pairs tried, with `interactions`). -> fit_patterns' (intercepts, weights over fids, l2 used,
    Interactions), the unsharded fit's of the same rows, bit for bit (module docstring)."""
    n_folds = CV_FOLDS if l2 is None else 1
    P, T, nnz = merged_patterns(sharded, shards, rows_of, args, fids, present, n_folds)
    return fit_patterns(P, T, len(present), fids, l2, _gtol(nnz), interactions)
