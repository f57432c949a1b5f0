"""The compact in-memory form of a universe's sparse CSR (row -> rare features), which the scan's rows method
histograms (segsrv.engine.relate.count_sparse_by_rows).

The snapshot's sparse CSR (format version 2) is an int64 row pointer and uint32 feature ids: 8 bytes of
pointer per row and 4 per entry. A condition's listed rows are far apart (~10 rows at 10% of the rows), so
each row's pointer and entries are memory accesses of their own, and the histogram's time follows the
cache lines it touches, not its bytes. The compact form holds

  block_base  int64[n_rows // 64 + 1]   the first entry of each block of 64 rows (kernel COMPACT_BLOCK_ROWS)
  within      uint16[n_rows + 1]        each row's first entry, from its block's
  indices     uint16 where the universe has at most 65,536 features (else the snapshot's uint32, not copied)

2 bytes of pointer per row and 2 per entry: on the 1M demo, 100k listed rows after a scan pushed them out
of cache histogram in 1.4 ms instead of 2.4 (bench/sparse_rows.py). It is built from the mapped files on
first use (or by the server's warm-up, segsrv.engine.warm) and kept per universe in the process's memory:
about 2 + 2 x (sparse entries per row) bytes per row, 16 MB for the 1M demo's customers. A universe
where a block of 64 rows holds more than 65,535 entries keeps the snapshot's form (compact_csr: None).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .. import _kernels
from ..snapshot.reader import Universe

MAX_WITHIN = np.iinfo(np.uint16).max
MAX_NARROW_FEATURES = 1 << 16


@dataclass(frozen=True)
class CompactCsr:
    block_base: np.ndarray
    within: np.ndarray
    indices: np.ndarray

    def histogram(self, rows: np.ndarray, n_features: int) -> np.ndarray:
        """int64[n_features]: how many of the listed rows (uint32) have each feature."""
        return _kernels.compact_csr_histogram(self.block_base, self.within, self.indices, rows, n_features)


def compact_csr(indptr: np.ndarray, indices: np.ndarray, n_features: int) -> CompactCsr | None:
    """The compact form of a CSR (indptr int64[n_rows + 1] rising from 0, indices uint32 below n_features),
    or None when a block of 64 rows holds more than 65,535 entries."""
    indptr = np.asarray(indptr, dtype=np.int64)
    block = _kernels.COMPACT_BLOCK_ROWS
    block_base = np.ascontiguousarray(indptr[::block])
    within = indptr - np.repeat(block_base, block)[: len(indptr)]
    if len(within) and int(within.max()) > MAX_WITHIN:
        return None
    narrow = n_features <= MAX_NARROW_FEATURES
    return CompactCsr(block_base, within.astype(np.uint16),
                      np.asarray(indices).astype(np.uint16) if narrow else np.asarray(indices))


# universe -> [its compact sparse CSR, or None] (snapshots are immutable; entries go with their universe)
_COMPACT: "weakref.WeakKeyDictionary[Universe, list]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def compact_sparse_csr(universe: Universe) -> CompactCsr | None:
    """compact_csr of the universe's sparse CSR, built on first use and kept; None without a sparse CSR
    (format version 1, or none built: segsrv.snapshot.format.sparse_csr_pays) or where it does not fit."""
    if universe.sparse_csr_indices is None:
        return None
    with _LOCK:
        kept = _COMPACT.get(universe)
    if kept is None:
        kept = [compact_csr(universe.sparse_csr_indptr, universe.sparse_csr_indices, universe.n_features)]
        with _LOCK:
            kept = _COMPACT.setdefault(universe, kept)
    return kept[0]
