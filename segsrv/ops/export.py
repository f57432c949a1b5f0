"""Export: the external ids of the rows matching a condition, in chunks, the total first.

JSON form: {"from", "where", "top_k", "target", "value"} (docs/export.md); chunk_size is not part of
it (the in-process default, or what a front end sets). Without a target every matching row is
exported in row order; with ``target`` and ``value`` the members are ranked by the probability of
target = value (ScoreSegment's bulk model), best first, each id with its score, and ``top_k`` > 0
keeps the K best. ``top_k`` needs a target, a target needs a value.

The stream: one message with the total (no ids), then one message per chunk of ids (with their
scores when ranked). The selected rows (ExportResult) are engine state and stay in the engine;
``total_to_proto`` / ``chunk_to_proto`` render its messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .base import chunk_size_from_proto as base_chunk_size
from .conditions import All, Condition, value_text
from .params import Integer, Param, Text, bad, check_keys, check_params, read_json
from .predict import DEFAULT_BULK_METHOD, DEFAULT_MAX_TARGET_VALUES, DEFAULT_PRIOR_STRENGTH

DEFAULT_CHUNK_SIZE = 10_000  # in-process default; the server's is SERVER_DEFAULT_CHUNK_SIZE (docs/server.md)
SERVER_DEFAULT_CHUNK_SIZE = 10_000  # chunk_size 0 over gRPC: ids are small, 10x ScoreSegment's default
KEYS = {"from", "where", "top_k", "target", "value"}

PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("top_k", Integer(low=0), hint=" (0 = every member)"),
    Param("target", Text("a field name"), none=True),
)
CHUNK_SIZE = Param("chunk_size", Integer(low=1))


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

    @property
    def ranked(self) -> bool:
        return self.target is not None

    def validate(self) -> None:
        """The declared parameters, then the combination (a value that is not text becomes its canonical
        text, as in `where`: True -> "true", 3 -> "3")."""
        check_params(self, PARAMS)
        CHUNK_SIZE.check(self.chunk_size)
        if self.value is not None and not isinstance(self.value, str):
            self.value = value_text(self.value, "value")
        if self.target is None:
            if self.top_k:
                raise bad("target", f"required with top_k={self.top_k}: the K best members are ranked by the "
                                    "probability of target = value")
            if self.value is not None:
                raise bad("target", f"required with value {self.value!r} (the field whose value ranks the members)")
        elif self.value is None:
            raise bad("value", f"required with target {self.target!r}: the target value whose probability ranks "
                               "the members")

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "ExportQuery":
        """`where` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "export")
        q = cls(condition=cond.to_condition(obj.get("where")))
        read_json(obj, q, PARAMS)
        if obj.get("value") is not None:
            q.value = value_text(obj["value"], "value")
        q.validate()
        return q

    def to_json(self) -> dict:
        out = {"from": self.universe, "where": cond.where_json(self.condition)}
        if self.target is not None:
            out.update(top_k=self.top_k, target=self.target, value=self.value)
        return out

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT, chunk_size: int = 0) -> pb.ExportMembersRequest:
        """chunk_size: ids per streamed message, 0 for the server's default (the query's own chunk_size
        is the in-process one and is not sent)."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise bad("chunk_size", f"expected a non-negative integer (0: the server's default), got {chunk_size!r}")
        return pb.ExportMembersRequest(
            snapshot=at.to_proto(), universe=self.universe or "", condition=cond.to_proto(self.condition),
            chunk_size=chunk_size, top_k=int(self.top_k), target_field=self.target or "",
            target_value=self.value or "",
        )

    @staticmethod
    def paths(req: pb.ExportMembersRequest) -> cond.RequestPaths:
        """The condition is `condition`; the engine's target / value name target_field / target_value, and
        an unknown value of the target field is `target_value`."""
        return cond.RequestPaths("condition", ("evidence_fields", []),
                                 aliases={"target": ["target_field"], "value": ["target_value"]},
                                 target=(req.target_field, req.target_value))

    @classmethod
    def from_proto(cls, req: pb.ExportMembersRequest, paths: cond.RequestPaths,
                   max_target_values: int = DEFAULT_MAX_TARGET_VALUES) -> "ExportQuery":
        """Empty target_field / target_value mean "not ranked"; validate() checks the combination
        (top_k needs a target, a target needs a value)."""
        if req.top_k < 0:
            raise bad("top_k", f"must be >= 0 (0 means every member), got {req.top_k}")
        return cls(
            universe=req.universe or None,
            condition=cond.from_proto(req.condition if req.HasField("condition") else None, paths),
            top_k=int(req.top_k), target=req.target_field or None, value=req.target_value or None,
            chunk_size=chunk_size_from_proto(req.chunk_size), max_target_values=max_target_values,
        )


def chunk_size_from_proto(n: int) -> int:
    """ExportMembers' chunk_size: 0 means SERVER_DEFAULT_CHUNK_SIZE; at most MAX_CHUNK_SIZE."""
    return base_chunk_size(n, SERVER_DEFAULT_CHUNK_SIZE)


# --- the stream's messages (ExportResult: segsrv.engine.export) ----------------------------------


def total_to_proto(result, server_ms: float) -> pb.ExportMembersResponse:
    """The first message: what answered and the total (rows matching the condition), no ids."""
    return pb.ExportMembersResponse(info=response_info(result, server_ms), total_count=int(result.total))


def header_to_proto(header, server_ms: float) -> pb.ExportMembersResponse:
    """The first message sent before a long fit (header: segsrv.service.PendingHeader): what answers,
    the total and `progress` (what the ranking fits first), no ids."""
    return pb.ExportMembersResponse(info=response_info(header, server_ms), total_count=int(header.total),
                                    progress="\n".join(header.pending))


def chunk_to_proto(result, ids: Sequence[str], scores, server_ms: float) -> pb.ExportMembersResponse:
    """One chunk of ids (text), with their scores when ranked (scores: an array or list, None if not)."""
    if scores is not None and hasattr(scores, "tolist"):
        scores = scores.tolist()
    return pb.ExportMembersResponse(info=response_info(result, server_ms), ids=list(ids),
                                    scores=list(scores) if scores is not None else None)


@dataclass
class ExportHeader:
    """The first message of the stream, read back."""

    snapshot: str
    version: str
    total: int
    elapsed_ms: float
    progress: str = ""  # what the ranking fitted first ("" when nothing)

    @classmethod
    def from_proto(cls, msg: pb.ExportMembersResponse) -> "ExportHeader":
        return cls(msg.info.snapshot_name, msg.info.snapshot_version, int(msg.total_count), msg.info.server_time_ms,
                   msg.progress)


def chunk_from_proto(msg: pb.ExportMembersResponse, ranked: bool) -> tuple[list[str], list[float] | None]:
    """(ids, scores or None) of a chunk message."""
    return list(msg.ids), (list(msg.scores) if ranked else None)
