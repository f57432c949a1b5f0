"""Export (without a target) over shards: the rows matching the condition, shard after shard.

Round one (``export_part``): each shard holding the universe answers its matching row numbers, ascending
(4 bytes per member, as an unsharded export holds them). The export lists them in shard order, then each
shard's row order, so its ids are the unsharded export's as a set (each id is in exactly one shard), in
another order. Then, one chunk at a time (``ShardedExportResult.chunk``), the shards a chunk spans turn
its row numbers into ids as text (``ids_part``, in one round: ``map_each``): no more than one chunk of
ids is ever made at once, and chunks have the unsharded sizes (every one ``chunk_size`` ids but the
last). An export has no option that picks rows by position without a target (``top_k`` needs one), so
nothing depends on the order.

An Export with a target is ranked by ScoreSegment over shards (``sharded_ranked_rows``: the model fitted
over the shards, each shard's own top K by score, merged): its ids come ranked, best first, with their
scores, as text, in the unsharded order (ties in id order, which is row order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ... import _kernels
from ...ops.conditions import All, Condition
from ...ops.export import ExportQuery
from ...snapshot.reader import Snapshot
from ..conditions import evaluate
from ..export import ExportResult, ids_text
from .open import ShardedSnapshot
from .score import sharded_ranked_rows


def export_part(shard: Snapshot, universe: str, condition: Condition) -> np.ndarray:
    """The row numbers (uint32, ascending) of `universe` matching `condition` in one shard."""
    u = shard.universe(universe)
    return _kernels.bitset_to_ids(evaluate(shard, u, condition), u.n_rows)


def ids_part(shard: Snapshot, universe: str, rows: np.ndarray) -> list[str]:
    """The external ids, as text, of rows of `universe` in one shard."""
    return ids_text(shard.universe(universe), rows)


@dataclass
class ShardedExportResult(ExportResult):
    """An ExportResult over shards: `rows` holds each shard's row numbers (within that shard), shard after
    shard, shard `shards[j]`'s at positions shard_starts[j]:shard_starts[j + 1]."""

    shards: tuple[int, ...] = ()
    shard_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    _sharded: ShardedSnapshot | None = field(repr=False, default=None)

    def chunk(self, i: int) -> tuple[list[str], None]:
        """(ids as text, None) of chunk i (0 <= i < n_chunks), asked of the shards it spans."""
        lo = i * self.chunk_size
        hi = min(lo + self.chunk_size, len(self.rows))
        spans = {}  # shard -> its rows in the chunk, asked of every shard in one round
        for j, shard in enumerate(self.shards):
            a, b = max(lo, int(self.shard_starts[j])), min(hi, int(self.shard_starts[j + 1]))
            if a < b:
                spans[shard] = (self.universe, self.rows[a:b])
        return [i for part in self._sharded.map_each(ids_part, spans) for i in part], None


@dataclass
class ShardedRankedExportResult(ExportResult):
    """A ranked ExportResult over shards: the ranked ids (as text) and their scores; `rows` is empty (row
    numbers differ from shard to shard; the merge ranks by id)."""

    ids: list[str] = field(default_factory=list)

    @property
    def returned(self) -> int:
        return len(self.ids)

    @property
    def n_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk_size)

    def chunk(self, i: int) -> tuple[list[str], np.ndarray]:
        """(ids as text, their scores) of chunk i (0 <= i < n_chunks)."""
        lo, hi = i * self.chunk_size, (i + 1) * self.chunk_size
        return self.ids[lo:hi], self.scores[lo:hi]


def sharded_export(sharded: ShardedSnapshot, query: ExportQuery) -> ExportResult:
    """Select each shard's rows (ids are made per chunk by the result), or rank them by a target."""
    t0 = time.perf_counter()
    query.validate()
    merged = sharded.universe(query.universe)
    if query.target is not None:
        ids, scores, total = sharded_ranked_rows(sharded, query)
        return ShardedRankedExportResult(
            sharded.name, sharded.version, merged.name, merged.n_rows, total, np.zeros(0, dtype=np.int64),
            np.asarray(scores, dtype=np.float64), int(query.chunk_size), query.target, query.value,
            (time.perf_counter() - t0) * 1e3, None, ids=[str(i) for i in ids])
    parts = sharded.map(export_part, merged.name, query.condition if query.condition is not None else All(),
                        shards=merged.shards)
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    starts = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
    return ShardedExportResult(sharded.name, sharded.version, merged.name, merged.n_rows, len(rows), rows, None,
                               int(query.chunk_size), None, None, (time.perf_counter() - t0) * 1e3,
                               shards=merged.shards, shard_starts=starts, _sharded=sharded)
