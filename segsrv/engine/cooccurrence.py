"""Candidate feature sets in the layout of the co-occurrence kernels (segsrv._kernels.cooccur).

A ``FeatureSet`` is k features of one universe, restricted to some rows: the dense ones as rows of
a uint64 matrix (the snapshot's memory-mapped matrix itself when nothing restricts them, a
materialised ``dense & rows`` copy otherwise) and the sparse ones as sorted id arrays (filtered by
the rows). Its order is the dense features first, then the sparse ones; ``fids`` says which
feature each position is. ``pairs()`` counts every pair at once, ``cross(left)`` every
(bitset, feature) pair, both exact.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels


class FeatureSet:
    def __init__(self, fids, n_words: int, dense, dense_rows, ids, offsets, sparse_features, at=None):
        self.fids = np.asarray(fids, dtype=np.int64)
        self.n_words = int(n_words)
        self.dense = dense
        self.dense_rows = dense_rows
        self.ids = ids
        self.offsets = offsets
        self.sparse_features = sparse_features
        self.at = at  # None: positions are the kernels' (dense first); else int64[k]: each position's there

    @classmethod
    def of(cls, universe, fids: np.ndarray, in_order: bool = False) -> "FeatureSet":
        """The features `fids` of `universe` over every row, reordered dense first (see `fids`), or in the
        order given with `in_order`."""
        fids = np.asarray(fids, dtype=np.int64)
        slots = np.asarray(universe.feature_slot[fids], dtype=np.int64)
        dense = slots >= 0
        order = np.concatenate([np.flatnonzero(dense), np.flatnonzero(~dense)])
        k_d = int(dense.sum())
        at = None
        if in_order:
            at = np.empty(len(fids), dtype=np.int64)
            at[order] = np.arange(len(fids))
        else:
            fids = fids[order]
        slots = slots[order]
        return cls(fids, universe.n_words, universe.dense, np.ascontiguousarray(slots[:k_d]),
                   universe.sparse_ids, universe.sparse_offsets, np.ascontiguousarray(-slots[k_d:] - 1), at)

    def __len__(self) -> int:
        return len(self.fids)

    @property
    def n_dense(self) -> int:
        return len(self.dense_rows)

    def _args(self) -> tuple:
        return (self.dense, self.dense_rows, self.ids, self.offsets, self.sparse_features)

    def restrict(self, rows: np.ndarray) -> "FeatureSet":
        """The same features counted only on the rows of the bitset `rows` (a copy of their bits)."""
        dense = np.empty((self.n_dense, self.n_words), dtype=np.uint64)
        for i, r in enumerate(self.dense_rows.tolist()):
            _kernels.bitset_and(self.dense[r], rows, out=dense[i])
        parts = []
        for f in self.sparse_features.tolist():
            ids = self.ids[self.offsets[f]:self.offsets[f + 1]]
            keep = (rows[ids >> 6] >> (ids & 63).astype(np.uint64)) & np.uint64(1)
            parts.append(np.ascontiguousarray(ids[keep.astype(bool)]))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        ids = np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, np.uint32)
        return FeatureSet(self.fids, self.n_words, dense, np.arange(self.n_dense, dtype=np.int64), ids, offsets,
                          np.arange(len(parts), dtype=np.int64), self.at)

    def bits(self, i: int) -> np.ndarray:
        """Feature at position i as a bitset to read (a dense row itself, a sparse one materialised)."""
        if self.at is not None:
            i = int(self.at[i])
        if i < self.n_dense:
            return self.dense[self.dense_rows[i]]
        f = int(self.sparse_features[i - self.n_dense])
        return _kernels.ids_to_bitset(np.ascontiguousarray(self.ids[self.offsets[f]:self.offsets[f + 1]]),
                                      self.n_words)

    def stack(self, positions: np.ndarray) -> np.ndarray:
        """uint64[m, n_words]: the features at `positions` as bitsets of our own, read (dense) or set (sparse)
        in a few numpy operations, not one call per feature."""
        at = np.asarray(positions, dtype=np.int64)
        if self.at is not None:
            at = self.at[at]
        out = np.zeros((len(at), self.n_words), dtype=np.uint64)
        dense = at < self.n_dense
        if dense.any():
            out[dense] = self.dense[self.dense_rows[at[dense]]]
        sparse = np.flatnonzero(~dense)
        if len(sparse):
            features = self.sparse_features[at[sparse] - self.n_dense]
            starts, lengths = self.offsets[features], self.offsets[features + 1] - self.offsets[features]
            first = np.cumsum(lengths) - lengths  # each feature's first id among the ids gathered
            ids = self.ids[np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))].astype(np.int64)
            np.bitwise_or.at(out, (np.repeat(sparse, lengths), ids >> 6),
                             np.left_shift(np.uint64(1), (ids & 63).astype(np.uint64)))
        return out

    def pairs(self) -> np.ndarray:
        """int64[k, k]: rows having both features (the diagonal: each feature's rows)."""
        pairs = _kernels.cooccurrence(*self._args())
        return pairs if self.at is None else pairs[np.ix_(self.at, self.at)]

    def cross(self, left: np.ndarray) -> np.ndarray:
        """int64[len(left), k]: rows of each bitset of `left` having each feature."""
        if len(left) == 0 or len(self) == 0:
            return np.zeros((len(left), len(self)), dtype=np.int64)
        counts = _kernels.cross_cooccurrence(np.ascontiguousarray(left), *self._args())
        return counts if self.at is None else counts[:, self.at]
