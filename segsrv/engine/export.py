"""Export: the external ids of the rows matching a condition, in chunks, the total first.

    from segsrv.engine.export import ExportQuery, export_members

    res = export_members(snapshot, ExportQuery(universe="customers", condition=Term("region", "north")))
    res.total                      # rows matching the condition (known before any id is made)
    for ids, scores in res.chunks():   # ids: list[str] (the external ids as text); scores: None
        ...

Without a target, every matching row is exported in row order (the order of the
universe's keys). With ``target`` (and ``value``) the members are ranked by the
probability of ``target = value`` that ScoreSegment gives them (``method``,
default ``logistic``; best first, ties in row order) and each id carries its
score; ``top_k`` > 0 keeps the K best ("who in segment X is most likely to
churn"). ``top_k`` needs a target.

The selection (a bitset -> row numbers, or the scores) is computed once up
front: 4 bytes per member (plus 8 per score when ranked). Ids become strings one
chunk at a time (``chunk(i)``), so a 500,000-member export never holds more
than one chunk of id strings; a front end checks its deadline between chunks.
The query, its JSON form and its messages: segsrv.ops.export. See docs/export.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .. import _kernels
from ..snapshot.reader import Snapshot, Universe
from ..ops.conditions import All
from ..ops.export import ExportQuery
from ..ops.score import ScoreQuery
from .conditions import evaluate
from .predict import score_segment

@dataclass
class ExportResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int
    total: int  # rows matching the condition
    rows: np.ndarray  # row numbers in export order (row order; ranked: best first)
    scores: np.ndarray | None  # float64 P(target = value) per exported row when ranked, else None
    chunk_size: int
    target: str | None
    value: str | None
    elapsed_ms: float  # time to select (and score) the rows, before any id is made
    _universe: Universe = field(repr=False, default=None)

    @property
    def returned(self) -> int:
        """Ids to be exported: total, or min(top_k, total) when ranked with top_k."""
        return len(self.rows)

    @property
    def ranked(self) -> bool:
        return self.scores is not None

    @property
    def n_chunks(self) -> int:
        return -(-len(self.rows) // self.chunk_size)

    def chunk(self, i: int) -> tuple[list[str], np.ndarray | None]:
        """(ids as text, scores or None) of chunk i (0 <= i < n_chunks)."""
        lo = i * self.chunk_size
        hi = lo + self.chunk_size
        scores = None if self.scores is None else self.scores[lo:hi]
        return ids_text(self._universe, self.rows[lo:hi]), scores

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray | None]]:
        """Every chunk in order; the ids of a chunk are made when it is reached."""
        for i in range(self.n_chunks):
            yield self.chunk(i)


def ids_text(universe: Universe, rows: np.ndarray) -> list[str]:
    """External ids of `rows` as text (what gRPC carries and the CLI writes); ~10x faster than
    str() over Universe.ids_for_rows for large chunks."""
    vals = universe.row_ids[np.asarray(rows, dtype=np.int64)]
    if universe.key_kind == "int":
        return list(map(str, vals.tolist()))
    return [b.decode("utf-8") for b in vals.tolist()]


def ranking_query(query: ExportQuery) -> ScoreQuery:
    """The ScoreSegment query that ranks a targeted export (its pending fits: predict.pending_fits)."""
    cond = query.condition if query.condition is not None else All()
    return ScoreQuery(
        target=query.target, value=query.value, universe=query.universe, segment=cond,
        top_k=int(query.top_k) if query.top_k else int(2**62), method=query.method,
        prior_strength=query.prior_strength, evidence_fields=query.evidence_fields,
        max_target_values=query.max_target_values)


def export_members(snapshot: Snapshot, query: ExportQuery) -> ExportResult:
    """Select the rows (and score them when ranked); ids are made per chunk by the result."""
    t0 = time.perf_counter()
    query.validate()
    cond = query.condition if query.condition is not None else All()
    if query.target is None:
        u = snapshot.universe(query.universe)
        bits = evaluate(snapshot, u, cond)
        rows = _kernels.bitset_to_ids(bits, u.n_rows)  # uint32, ascending
        total, scores = len(rows), None
    else:
        res = score_segment(snapshot, ranking_query(query))
        u = snapshot.universe(res.universe)
        rows, scores, total = res.rows, res.scores, int(res.n_members)
    return ExportResult(snapshot.name, snapshot.version, u.name, u.n_rows, int(total), rows, scores,
                        int(query.chunk_size), query.target, query.value if query.target is not None else None,
                        (time.perf_counter() - t0) * 1e3, u)
