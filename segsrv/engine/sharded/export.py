"""Export (without a target) over shards: the rows matching the condition, shard after shard.

Round one (``export_part``): each shard holding the universe answers its matching row numbers, ascending
(4 bytes per member, as an unsharded export holds them). The export lists them in shard order, then each
shard's row order, so its ids are the unsharded export's as a set (each id is in exactly one shard), in
another order. Then, one chunk at a time (``ShardedExportResult.chunk``), the shards a chunk spans turn
its row numbers into ids as text (``ids_part``): no more than one chunk of ids is ever made at once, and
chunks have the unsharded sizes (every one ``chunk_size`` ids but the last). An export has no option
that picks rows by position without a target (``top_k`` needs one), so nothing depends on the order.

An Export with a target (ranked by ScoreSegment) is refused by name for now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ... import _kernels
from ...errors import SegsrvError
from ...ops.conditions import All, Condition
from ...ops.export import ExportQuery
from ...snapshot.reader import Snapshot
from ..conditions import evaluate
from ..export import ExportResult, ids_text
from .open import ShardedSnapshot


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
        ids: list[str] = []
        for j, shard in enumerate(self.shards):
            a, b = max(lo, int(self.shard_starts[j])), min(hi, int(self.shard_starts[j + 1]))
            if a < b:
                ids += self._sharded.map(ids_part, self.universe, self.rows[a:b], shards=[shard])[0]
        return ids, None


def refuse_ranked(sharded: ShardedSnapshot, query: ExportQuery) -> None:
    """An Export with a target needs ScoreSegment over shards: refused by name until it is there."""
    if query.target is not None:
        raise SegsrvError(f"Export with a target: not yet supported for sharded snapshots ({sharded.path} holds "
                          f"SHARDS); an export without a target is answered over shards (docs/scale.md)")


def sharded_export(sharded: ShardedSnapshot, query: ExportQuery) -> ShardedExportResult:
    """Select each shard's rows; ids are made per chunk by the result."""
    t0 = time.perf_counter()
    query.validate()
    refuse_ranked(sharded, query)
    merged = sharded.universe(query.universe)
    parts = sharded.map(export_part, merged.name, query.condition if query.condition is not None else All(),
                        shards=merged.shards)
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    starts = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
    return ShardedExportResult(sharded.name, sharded.version, merged.name, merged.n_rows, len(rows), rows, None,
                               int(query.chunk_size), None, None, (time.perf_counter() - t0) * 1e3,
                               shards=merged.shards, shard_starts=starts, _sharded=sharded)
