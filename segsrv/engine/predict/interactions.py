"""Pairwise interactions of the logistic method: "A and B together" as a term of its own.

A model linear in the one-hot evidence gives each behaviour one weight, whatever else the customer
does. Where the effect of one behaviour depends on another (no order last month says more about a
customer who orders every month than about one who orders twice a year), the logistic method adds
the conjunctions of pairs of its strongest features as extra columns, when cross-validation says they
help (logistic.fit_rows):

1. ``strongest_columns``: after the main-effects fit, the columns whose effect
   |weight| x sqrt(p (1 - p)) is largest (p: the column's share of the rows), at most
   INTERACTION_FEATURES of them;
2. ``candidate_pairs``: every pair of those seen together in at least INTERACTION_MIN_ROWS rows and
   not equal to either column alone (one-hot values of one field never meet; a pair that always
   comes with one of its columns adds nothing that column lacks);
3. ``pair_design``: the pairs' indicator columns over the design's distinct patterns (a function of
   the pattern: the fit's rows and weights are unchanged).

``Interactions`` is the fitted part of a model: the pairs as feature ids of the universe and one
weight per class and pair. A row's class logit gains W[c, pair] for each pair whose two features it
has (``pair_scores``, the kernel ``csr_pair_scores``); Predict explains it as one factor per such pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import _kernels

INTERACTION_FEATURES = 40  # at most this many strongest columns are paired (at most 780 pairs)
INTERACTION_MIN_ROWS = 10  # a pair seen in fewer training rows is not a candidate
PAIR_COUNT_CHUNK = 1 << 17  # rows per gather of pair_counts
INTERACTION_MIN_Z = 2.0  # the pairs are used when they lower the held-out log-loss by this many standard errors


@dataclass(frozen=True)
class Interactions:
    """pairs: int64[n, 2], feature ids of the universe (a < b); weights: float64[K, n], per class;
    support: int64[n], the fitted rows (of S) with both features of the pair."""

    pairs: np.ndarray
    weights: np.ndarray
    support: np.ndarray

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's form: (features int64[m], the sorted distinct features of the pairs;
        U float64[K, m, m], U[c, i, j] (i < j) the weight of the pair of features i and j)."""
        feats = np.unique(self.pairs.reshape(-1))
        K = self.weights.shape[0]
        U = np.zeros((K, len(feats), len(feats)), dtype=np.float64)
        i = np.searchsorted(feats, self.pairs[:, 0])
        j = np.searchsorted(feats, self.pairs[:, 1])
        U[:, i, j] = self.weights
        return feats.astype(np.int64), U

    def slot_of(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's arguments over a universe of n_features: (slot_of int32[n_features], -1 for a
        feature in no pair; U as `slots()`), built once and kept with the model (a per-request Assign
        scores the same pairs every call; read-only: shared between calls)."""
        hit = self.__dict__.get("_slot_of")  # (a frozen dataclass: set through __dict__)
        if hit is None or len(hit[0]) != n_features:
            feats, U = self.slots()
            slot = np.full(n_features, -1, dtype=np.int32)
            slot[feats] = np.arange(len(feats), dtype=np.int32)
            slot.flags.writeable = False
            U.flags.writeable = False
            hit = self.__dict__["_slot_of"] = (slot, U)
        return hit


def none(K: int) -> Interactions:
    """The model without interaction terms (K classes)."""
    return Interactions(np.zeros((0, 2), np.int64), np.zeros((K, 0)), np.zeros(0, np.int64))


def strongest_columns(P, n_pat: np.ndarray, W: np.ndarray, limit: int = INTERACTION_FEATURES) -> np.ndarray:
    """Columns of the design P (patterns weighted by n_pat rows) ordered by the main-effects fit's effect
    max_c |W[c, j]| sqrt(p_j (1 - p_j)), largest first (ties: the lower column); at most `limit`, only
    columns with a non-zero effect."""
    n = float(n_pat.sum())
    p = np.asarray(P.T @ n_pat, dtype=np.float64) / max(n, 1.0)
    effect = np.abs(np.asarray(W)).max(axis=0) * np.sqrt(np.clip(p * (1.0 - p), 0.0, None))
    order = np.lexsort((np.arange(len(effect)), -effect))
    return np.sort(order[effect[order] > 0][:limit]).astype(np.int64)


def candidate_pairs(P, n_pat: np.ndarray, cols: np.ndarray, min_rows: int = INTERACTION_MIN_ROWS) -> np.ndarray:
    """int64[n, 2] pairs (a < b) of the columns `cols` seen together in >= min_rows rows, whose
    conjunction is neither column alone (ordered by a, then b)."""
    if len(cols) < 2:
        return np.zeros((0, 2), np.int64)
    D = np.asarray(P[:, cols].todense(), dtype=np.float64)
    both = (D * n_pat[:, None]).T @ D  # rows with columns i and j
    single = np.diag(both)
    i, j = np.triu_indices(len(cols), 1)
    keep = (both[i, j] >= min_rows) & (both[i, j] < single[i]) & (both[i, j] < single[j])
    return np.column_stack([cols[i[keep]], cols[j[keep]]]).astype(np.int64)


def pair_design(P, pairs: np.ndarray):
    """CSR [n_patterns, len(pairs)]: 1 where the pattern has both columns of the pair."""
    from scipy.sparse import csr_matrix

    n_p = P.shape[0]
    if len(pairs) == 0:
        return csr_matrix((n_p, 0))
    cols = np.unique(pairs.reshape(-1))
    D = np.asarray(P[:, cols].todense()) != 0
    a, b = np.searchsorted(cols, pairs[:, 0]), np.searchsorted(cols, pairs[:, 1])
    rows_of = [np.flatnonzero(D[:, a[k]] & D[:, b[k]]) for k in range(len(pairs))]
    indices = np.concatenate([np.full(len(r), k, np.int32) for k, r in enumerate(rows_of)])
    rows = np.concatenate(rows_of)
    order = np.argsort(rows, kind="stable")  # row-major, columns ascending within a row
    indptr = np.zeros(n_p + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_p), out=indptr[1:])
    return csr_matrix((np.ones(len(rows)), indices[order], indptr), shape=(n_p, len(pairs)))


def pair_scores(u, inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """float64[len(rows), K]: each row's sum of its pairs' weights, per class."""
    K = inter.weights.shape[0]
    if len(inter) == 0 or len(rows) == 0:
        return np.zeros((len(rows), K))
    slot_of, U = inter.slot_of(u.n_features)
    r = np.ascontiguousarray(rows, dtype=np.uint32)
    return _kernels.csr_pair_scores(u.csr_indptr, u.csr_indices, slot_of, U, r)


def pair_counts(u, pairs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64[len(pairs)]: how many of `rows` (rows of the universe u) have both features of each pair
    (pairs int64[n, 2], feature ids), from the rows index."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0 or len(rows) == 0:
        return np.zeros(len(pairs), np.int64)
    from scipy.sparse import csr_matrix

    feats = np.unique(pairs.reshape(-1))
    rows = np.asarray(rows, dtype=np.int64)
    both = np.zeros((len(feats), len(feats)), np.int64)  # rows with features i and j
    for start in range(0, len(rows), PAIR_COUNT_CHUNK):  # chunks: the gather is ~ rows x features per row
        chunk = rows[start: start + PAIR_COUNT_CHUNK]
        owner, got = u.rows_features(chunk)
        slot = np.searchsorted(feats, got)
        slot[slot >= len(feats)] = 0
        hit = feats[slot] == got
        M = csr_matrix((np.ones(int(hit.sum()), np.int64), (owner[hit], slot[hit])), shape=(len(chunk), len(feats)))
        both += np.asarray((M.T @ M).todense(), dtype=np.int64)
    return both[np.searchsorted(feats, pairs[:, 0]), np.searchsorted(feats, pairs[:, 1])]
