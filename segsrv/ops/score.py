"""ScoreSegment: every member of a segment scored by the probability of one target value.

JSON keys: from, segment, target, value, top_k, evidence_fields, prior_strength, method
(a bulk method: "logistic", the default, or "factorized"), l2 (logistic; absent: chosen by
cross-validation). Answer: {"snapshot", "version", "from", "target", "value", "n_members",
"returned", "mean_score", "elapsed_ms", "regularisation" (logistic: {"l2", "cross_validated",
"value", "interaction_pairs"}; factorized: {"prior_strength", "cross_validated", "value"}), "scores": [{"id", "score"}]} (ids as text, the form gRPC carries).

Over gRPC the answer streams: chunks of scored members (``ScoreResult.chunk_to_proto``),
then one summary (``ScoreResult.summary_response``); ``ScoreSummary`` is the client's
form of the summary, ``ScoreResult.from_proto`` collects a whole stream. Before the first
chunk, a progress message (``progress_to_proto``) says what the server fits first, if anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .base import chunk_size_from_proto as base_chunk_size
from .conditions import All, Condition
from .params import Integer, Options, Param, bad, check_keys, check_params, json_number, read_json
from .predict import (
    BULK_METHODS, COMMON_PARAMS, DEFAULT_BULK_METHOD, DEFAULT_L2, DEFAULT_MAX_TARGET_VALUES, DEFAULT_PRIOR_STRENGTH,
    evidence_fields_from_proto, given_keys, method_from_proto, method_to_proto, read_target, request_paths,
    Regularisation, segment_from_proto, sent,
)

KEYS = {"from", "segment", "target", "value", "top_k", "evidence_fields", "prior_strength", "method", "l2"}
DEFAULT_CHUNK_SIZE = 1_000

TOP_K = Param("top_k", Integer(low=0), hint=" (0 = every member)")
PARAMS = COMMON_PARAMS + (TOP_K, Param("method", Options(BULK_METHODS)))
_OPTIONAL = ("prior_strength", "method", "l2")


def chunk_size_from_proto(n: int) -> int:
    """ScoreSegment's chunk_size: 0 means DEFAULT_CHUNK_SIZE; at most MAX_CHUNK_SIZE."""
    return base_chunk_size(n, DEFAULT_CHUNK_SIZE)


@dataclass
class ScoreQuery:
    target: str
    value: str
    universe: str | None = None
    segment: Condition = field(default_factory=All)
    top_k: int = 0
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    evidence_fields: list[str] | None = None
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    train_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    method: str = DEFAULT_BULK_METHOD  # "logistic" or "factorized"
    l2: float | None = DEFAULT_L2  # None: chosen by cross-validation (logistic)
    given: frozenset = field(default=frozenset(), compare=False, repr=False)  # optional keys the caller gave

    def validate(self) -> None:
        check_params(self, PARAMS)
        if not isinstance(self.value, str):
            raise bad("value", f"expected a target value, got {self.value!r}")

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "ScoreQuery":
        """`segment` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "score")
        target = read_target(obj)
        if obj.get("value") is None:
            raise bad("value", "required (the target value whose probability is the score)")
        q = cls(target=target, value=cond.value_text(obj["value"], "value"),
                segment=cond.to_condition(obj.get("segment"), "segment"))
        read_json(obj, q, PARAMS)
        q.given = given_keys(obj, _OPTIONAL)
        q.validate()
        return q

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT, chunk_size: int = 0) -> pb.ScoreSegmentRequest:
        """chunk_size 0: the server's default."""
        req = pb.ScoreSegmentRequest(
            snapshot=at.to_proto(), universe=self.universe or "", segment=cond.to_proto(self.segment),
            target_field=self.target, target_value=self.value, top_k=int(self.top_k), chunk_size=int(chunk_size),
            evidence_fields=list(self.evidence_fields or ()),
            method=method_to_proto(self.method) if sent(self, "method", DEFAULT_BULK_METHOD) else 0,
        )
        if sent(self, "prior_strength", DEFAULT_PRIOR_STRENGTH):
            req.prior_strength = float(self.prior_strength)
        if self.l2 is not None:
            req.l2 = float(self.l2)
        return req

    @staticmethod
    def paths(req: pb.ScoreSegmentRequest) -> cond.RequestPaths:
        return request_paths(req, (req.target_field, req.target_value))

    @classmethod
    def from_proto(cls, req: pb.ScoreSegmentRequest, paths: cond.RequestPaths,
                   max_target_values: int = DEFAULT_MAX_TARGET_VALUES) -> "ScoreQuery":
        """The query only: chunk_size_from_proto(req.chunk_size) is the stream's chunk size."""
        TOP_K.check(int(req.top_k))
        q = cls(target=req.target_field, value=req.target_value, universe=req.universe or None,
                segment=segment_from_proto(req, paths), top_k=int(req.top_k),
                evidence_fields=evidence_fields_from_proto(req), max_target_values=max_target_values,
                method=method_from_proto(req.method, DEFAULT_BULK_METHOD))
        given = {"method"} if req.method else set()
        if req.HasField("prior_strength"):
            q.prior_strength = req.prior_strength
            given.add("prior_strength")
        if req.HasField("l2"):
            q.l2 = req.l2
            given.add("l2")
        q.given = frozenset(given)
        return q


# --- the result ---------------------------------------------------------------------------


@dataclass
class ScoreSummary:
    """Everything of a score answer but the scores (the closing message of the stream)."""

    snapshot: str
    version: str
    universe: str
    target: str
    value: str
    n_members: int
    returned: int
    mean_score: float
    elapsed_ms: float
    regularisation: Regularisation | None = None  # logistic: its penalty; factorized: its prior strength

    def to_json(self) -> dict:
        out = {
            "snapshot": self.snapshot, "version": self.version, "from": self.universe, "target": self.target,
            "value": self.value, "n_members": int(self.n_members), "returned": int(self.returned),
            "mean_score": json_number(float(self.mean_score)), "elapsed_ms": round(self.elapsed_ms, 3),
        }
        if self.regularisation is not None:
            out["regularisation"] = self.regularisation.to_json()
        return out

    @classmethod
    def from_proto(cls, msg: pb.ScoreSegmentResponse) -> "ScoreSummary":
        """The stream's summary message (info + summary)."""
        s = msg.summary
        return cls(msg.info.snapshot_name, msg.info.snapshot_version, s.universe, s.target_field, s.target_value,
                   s.member_count, s.returned_count, s.mean_score, msg.info.server_time_ms,
                   Regularisation.from_proto(s.regularisation) if s.HasField("regularisation") else None)


def progress_to_proto(header, message: str, server_ms: float) -> pb.ScoreSegmentResponse:
    """A progress message of the stream (header: what answers, segsrv.service.PendingHeader)."""
    return pb.ScoreSegmentResponse(info=response_info(header, server_ms), progress=pb.Progress(message=message))


@dataclass
class ScoreResult:
    snapshot: str
    version: str
    universe: str
    target: str
    value: str
    rows: np.ndarray  # int64 row numbers (top_k: best first; else every member in row order); -1: unknown (gRPC)
    scores: np.ndarray  # float64 probability of `value`
    n_members: int
    mean_score: float  # over every member (not only the top K)
    elapsed_ms: float
    _universe: object | None = field(default=None, repr=False)  # the engine's Universe (ids_for_rows)
    _ids: list | None = field(default=None, repr=False, compare=False)  # the ids, when they came over gRPC
    regularisation: Regularisation | None = None  # logistic: its penalty; factorized: its prior strength

    @property
    def ids(self) -> list:
        if self._ids is not None:
            return list(self._ids)
        return self._universe.ids_for_rows(self.rows) if self._universe is not None else []

    def ids_between(self, start: int, stop: int) -> list:
        """The ids of rows[start:stop] (one chunk of the stream, without the others' ids)."""
        if self._ids is not None:
            return list(self._ids[start:stop])
        return self._universe.ids_for_rows(self.rows[start:stop]) if self._universe is not None else []

    def summary(self) -> ScoreSummary:
        return ScoreSummary(self.snapshot, self.version, self.universe, self.target, self.value, int(self.n_members),
                            len(self.scores), float(self.mean_score), self.elapsed_ms, self.regularisation)

    def summary_json(self) -> dict:
        """Everything of the answer but the scores."""
        return self.summary().to_json()

    def to_json(self, ids=None) -> dict:
        """ids: the external ids of self.rows (default: self.ids), rendered as text."""
        out = self.summary_json()
        ids = self.ids if ids is None else ids
        out["scores"] = [{"id": str(i), "score": json_number(float(s))} for i, s in zip(ids, self.scores)]
        return out

    # -- proto: the stream ---------------------------------------------------------------

    def summary_to_proto(self) -> pb.ScoreSummary:
        msg = pb.ScoreSummary(member_count=int(self.n_members), returned_count=len(self.scores),
                              mean_score=float(self.mean_score), universe=self.universe,
                              target_field=self.target, target_value=self.value)
        if self.regularisation is not None:
            msg.regularisation.CopyFrom(self.regularisation.to_proto())
        return msg

    def summary_response(self, server_ms: float) -> pb.ScoreSegmentResponse:
        """The stream's last message."""
        return pb.ScoreSegmentResponse(info=response_info(self, server_ms), summary=self.summary_to_proto())

    def chunk_to_proto(self, ids, scores, server_ms: float) -> pb.ScoreSegmentResponse:
        """One chunk of the stream: ids (any form; sent as text) and their scores."""
        scores = scores.tolist() if isinstance(scores, np.ndarray) else list(scores)
        return pb.ScoreSegmentResponse(
            info=response_info(self, server_ms),
            chunk=pb.ScoreChunk(scores=[pb.MemberScore(id=str(i), score=s) for i, s in zip(ids, scores)]))

    def to_proto(self, server_ms: float, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 ids=None) -> list[pb.ScoreSegmentResponse]:
        """The whole stream (chunks, then the summary); ids default to self.ids."""
        ids = self.ids if ids is None else list(ids)
        out = [self.chunk_to_proto(ids[i:i + chunk_size], self.scores[i:i + chunk_size], server_ms)
               for i in range(0, len(self.scores), chunk_size)]
        out.append(self.summary_response(server_ms))
        return out

    @classmethod
    def from_proto(cls, responses: Iterable[pb.ScoreSegmentResponse]) -> "ScoreResult":
        """A whole stream -> the result (ids as text in `ids`; rows unknown: -1)."""
        ids: list[str] = []
        scores: list[float] = []
        summary = None
        for msg in responses:
            kind = msg.WhichOneof("payload")
            if kind == "chunk":
                for m in msg.chunk.scores:
                    ids.append(m.id)
                    scores.append(m.score)
            elif kind == "summary":
                summary = ScoreSummary.from_proto(msg)
        if summary is None:
            raise ValueError("ScoreSegment stream ended without a summary")
        return cls.from_stream(summary, ids, scores)

    @classmethod
    def from_stream(cls, summary: ScoreSummary, ids: list[str], scores: list[float]) -> "ScoreResult":
        """The summary and the (id, score) pairs of a stream -> the result (rows unknown: -1)."""
        return cls(summary.snapshot, summary.version, summary.universe, summary.target, summary.value,
                   np.full(len(ids), -1, dtype=np.int64), np.asarray(scores, dtype=np.float64), summary.n_members,
                   summary.mean_score, summary.elapsed_ms, _ids=list(ids), regularisation=summary.regularisation)
