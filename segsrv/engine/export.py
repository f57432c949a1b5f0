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
The JSON form (``export_query_from_json``): keys ``from``, ``where``, ``top_k``,
``target``, ``value``. See docs/export.md.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .. import _kernels
from ..errors import QueryError
from ..snapshot.reader import Snapshot, Universe
from .conditions import All, Condition, evaluate, parse_where, value_text
from .predict import DEFAULT_BULK_METHOD, DEFAULT_MAX_TARGET_VALUES, DEFAULT_PRIOR_STRENGTH, ScoreQuery, score_segment

DEFAULT_CHUNK_SIZE = 10_000  # in-process default; the server's default is its own (docs/server.md)
EXPORT_KEYS = {"from", "where", "top_k", "target", "value"}


@dataclass
class ExportQuery:
    universe: str | None = None
    condition: Condition = field(default_factory=All)
    top_k: int = 0  # 0: every member; K > 0: the K best by score (needs target)
    target: str | None = None  # rank by P(target = value) ...
    value: str | None = None
    method: str = DEFAULT_BULK_METHOD  # ... under this bulk model (ScoreSegment's: logistic or factorized)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    evidence_fields: list[str] | None = None
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES


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


def _bad(name: str, msg: str):
    raise QueryError(f"{name}: {msg}", [(name, msg)])


def _check(q: ExportQuery) -> None:
    k = q.top_k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        _bad("top_k", f"must be a non-negative integer (0 = every member), got {k!r}")
    c = q.chunk_size
    if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1:
        _bad("chunk_size", f"must be a positive integer, got {c!r}")
    if q.target is not None and (not isinstance(q.target, str) or not q.target):
        _bad("target", f"expected a field name, got {q.target!r}")
    if q.value is not None and not isinstance(q.value, str):
        q.value = value_text(q.value, "value")  # True -> "true", 3 -> "3", as in `where`
    if q.target is None:
        if k:
            _bad("target", f"required with top_k={k}: the K best members are ranked by the probability of "
                           "target = value")
        if q.value is not None:
            _bad("target", f"required with value {q.value!r} (the field whose value ranks the members)")
    elif q.value is None:
        _bad("value", f"required with target {q.target!r}: the target value whose probability ranks the members")


def export_members(snapshot: Snapshot, query: ExportQuery) -> ExportResult:
    """Select the rows (and score them when ranked); ids are made per chunk by the result."""
    t0 = time.perf_counter()
    _check(query)
    cond = query.condition if query.condition is not None else All()
    if query.target is None:
        u = snapshot.universe(query.universe)
        bits = evaluate(snapshot, u, cond)
        rows = _kernels.bitset_to_ids(bits, u.n_rows)  # uint32, ascending
        total, scores = len(rows), None
    else:
        res = score_segment(snapshot, ScoreQuery(
            target=query.target, value=query.value, universe=query.universe, segment=cond,
            top_k=int(query.top_k) if query.top_k else int(2**62), method=query.method,
            prior_strength=query.prior_strength, evidence_fields=query.evidence_fields,
            max_target_values=query.max_target_values))
        u = snapshot.universe(res.universe)
        rows, scores, total = res.rows, res.scores, int(res.n_members)
    return ExportResult(snapshot.name, snapshot.version, u.name, u.n_rows, int(total), rows, scores,
                        int(query.chunk_size), query.target, query.value if query.target is not None else None,
                        (time.perf_counter() - t0) * 1e3, u)


# --- the JSON form --------------------------------------------------------------


def export_query_from_json(obj: dict) -> ExportQuery:
    """{"from", "where", "top_k", "target", "value"} -> ExportQuery (chunk_size stays the default)."""
    from .query import _check_keys

    _check_keys(obj, EXPORT_KEYS, "export")
    q = ExportQuery(condition=parse_where(obj.get("where")))
    universe = obj.get("from")
    if universe is not None and (not isinstance(universe, str) or not universe):
        _bad("from", f"expected a universe name, got {universe!r}")
    q.universe = universe
    if "top_k" in obj:
        k = obj["top_k"]
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            _bad("top_k", f"must be a non-negative integer (0 = every member), got {k!r}")
        q.top_k = int(k)
    target = obj.get("target")
    if target is not None:
        if not isinstance(target, str) or not target:
            _bad("target", f"expected a field name, got {target!r}")
        q.target = target
    if obj.get("value") is not None:
        q.value = value_text(obj["value"], "value")
    _check(q)
    return q

