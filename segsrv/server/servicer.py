"""SegmentationService over gRPC: a thin adapter over segsrv.service.

Each handler reads its request with the operation's ``from_proto`` (segsrv/ops),
calls the service and writes the answer with the result's ``to_proto``. The
handler's time is ResponseInfo.server_time_ms; any exception becomes a status
through the one table in errors.py, its violations placed at their request paths
by the operation's ``RequestPaths``. The caller's deadline and cancellation are
installed as the engine's cancellation check (segsrv/engine/cancel.py), so long
work stops between steps once nobody waits for it; streams check before every
message.
"""

from __future__ import annotations

import time
from typing import Iterator, NoReturn, Protocol

import grpc

from ..engine import cancel
from ..engine.discover import DEFAULT_MAX_CANDIDATES
from ..engine.privacy import DEFAULT_PRIVACY_K
from ..errors import DeadlineExpired, RequestCancelled
from ..ops import (
    AssignQuery, CountQuery, DiscoverQuery, EvaluateQuery, ExportQuery, InfoQuery, PredictQuery, ProfileQuery, RelateQuery,
    ScoreQuery, SegmentsQuery,
)
from ..ops import export as export_op
from ..ops import score as score_op
from ..ops.base import Selector
from ..ops.conditions import RequestPaths
from ..ops.relate import MAX_LIMIT
from ..ops.predict import DEFAULT_MAX_TARGET_VALUES
from ..service import SegmentationService
from ..v1 import segsrv_pb2_grpc
from . import auth, errors
from .registry import SnapshotRegistry


def check_active(context: grpc.ServicerContext) -> None:
    """Raise DeadlineExpired / RequestCancelled when the call is over (cheap)."""
    if context.is_active():
        return
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExpired("deadline exceeded while the server was working")
    raise RequestCancelled("the call was cancelled")


def _elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class Call(Protocol):
    """What the handlers need of a call's transport (a grpc context here; Ray Serve's in
    segsrv/ray/serve.py)."""

    def check(self) -> None:
        """Raise DeadlineExpired / RequestCancelled when the call is over (cheap)."""

    def fail(self, exc: BaseException, locate, method: str) -> NoReturn:
        """End the call with the status for `exc` (errors.py) and raise."""


class GrpcCall:
    """A grpc.ServicerContext as a Call."""

    def __init__(self, context: grpc.ServicerContext):
        self.context = context

    def check(self) -> None:
        check_active(self.context)

    def fail(self, exc: BaseException, locate, method: str) -> NoReturn:
        errors.abort(self.context, exc, locate, method)


# the unary methods and the query each reads its request into
UNARY_QUERIES = {
    "Count": CountQuery, "Relate": RelateQuery, "Predict": PredictQuery, "Evaluate": EvaluateQuery,
    "Assign": AssignQuery, "Profile": ProfileQuery, "ListSegments": SegmentsQuery, "GetSnapshotInfo": InfoQuery,
    "Discover": DiscoverQuery,
}


def answer_unary(service: SegmentationService, method: str, request, call: Call):
    """Request -> query -> service -> answer, as one call."""
    t0 = time.perf_counter()
    query_type = UNARY_QUERIES[method]
    paths = query_type.paths(request)
    try:
        auth.check_row_reads(method, request)  # the scope `rows` (the method's own: the pipeline)
        with cancel.checking(call.check):
            query = query_type.from_proto(request, paths)
            result = service.call(query, Selector.from_proto(request.snapshot))
            return result.to_proto(_elapsed_ms(t0))
    except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
        call.fail(exc, paths.locate, method)


def score_segment_messages(service: SegmentationService, request, call: Call) -> Iterator:
    """ScoreSegment's messages: chunks of `chunk_size` scored members, then one summary; the deadline is
    checked between chunks. When a logistic model must be fitted first (not cached here, not stored in
    the snapshot), a progress message says so before the fit. An error before the first message ends the
    call like a unary one; after a progress message it ends the stream there."""
    t0 = time.perf_counter()
    paths = ScoreQuery.paths(request)
    try:
        chunk = score_op.chunk_size_from_proto(request.chunk_size)
        with cancel.checking(call.check):
            query = ScoreQuery.from_proto(request, paths)
            header, run = service.score_segment_steps(query, Selector.from_proto(request.snapshot))
        for message in header.pending if header is not None else ():
            yield score_op.progress_to_proto(header, message, _elapsed_ms(t0))
        with cancel.checking(call.check):
            result = run()
        for start in range(0, len(result.rows), chunk):
            call.check()
            ids = result.ids_between(start, start + chunk)
            yield result.chunk_to_proto(ids, result.scores[start:start + chunk], _elapsed_ms(t0))
        call.check()
        yield result.summary_response(_elapsed_ms(t0))
    except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
        call.fail(exc, paths.locate, "ScoreSegment")


def export_messages(service: SegmentationService, request, call: Call) -> Iterator:
    """ExportMembers' messages: the total first (a message with total_count and no ids), then chunks of
    `chunk_size` ids (with their scores when ranked by a target). The rows are selected (and scored)
    before the first message, so any error ends the call like a unary one; ids become strings one chunk
    at a time, and the deadline is checked before every chunk (CANCELLED / DEADLINE_EXCEEDED
    mid-stream). When the ranking must fit a logistic model first, the first message (total_count and
    `progress`) goes before the fit: an error of the fit or scoring then ends the stream after it."""
    t0 = time.perf_counter()
    paths: RequestPaths = ExportQuery.paths(request)
    try:
        with cancel.checking(call.check):
            query = ExportQuery.from_proto(request, paths)
            header, run = service.export_members_steps(query, Selector.from_proto(request.snapshot))
        if header is not None:
            yield export_op.header_to_proto(header, _elapsed_ms(t0))
        with cancel.checking(call.check):
            result = run()
        if header is None:
            yield export_op.total_to_proto(result, _elapsed_ms(t0))
        for i in range(result.n_chunks):
            call.check()
            ids, scores = result.chunk(i)
            yield export_op.chunk_to_proto(result, ids, scores, _elapsed_ms(t0))
    except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
        call.fail(exc, paths.locate, "ExportMembers")


class SegmentationServiceServicer(segsrv_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, registry: SnapshotRegistry, *, max_result_hits: int = MAX_LIMIT,
                 max_target_values: int = DEFAULT_MAX_TARGET_VALUES, privacy_k: int = DEFAULT_PRIVACY_K,
                 max_discover_candidates: int = DEFAULT_MAX_CANDIDATES):
        self.registry = registry
        self.service = SegmentationService(registry, privacy_k=privacy_k, max_result_hits=max_result_hits,
                                           max_target_values=max_target_values,
                                           max_discover_candidates=max_discover_candidates)

    @property
    def privacy_k(self) -> int:
        return self.service.privacy_k

    def Count(self, request, context):
        return answer_unary(self.service, "Count", request, GrpcCall(context))

    def Relate(self, request, context):
        return answer_unary(self.service, "Relate", request, GrpcCall(context))

    def Predict(self, request, context):
        return answer_unary(self.service, "Predict", request, GrpcCall(context))

    def Evaluate(self, request, context):
        return answer_unary(self.service, "Evaluate", request, GrpcCall(context))

    def Assign(self, request, context):
        return answer_unary(self.service, "Assign", request, GrpcCall(context))

    def Profile(self, request, context):
        return answer_unary(self.service, "Profile", request, GrpcCall(context))

    def ListSegments(self, request, context):
        return answer_unary(self.service, "ListSegments", request, GrpcCall(context))

    def GetSnapshotInfo(self, request, context):
        return answer_unary(self.service, "GetSnapshotInfo", request, GrpcCall(context))

    def Discover(self, request, context):
        return answer_unary(self.service, "Discover", request, GrpcCall(context))

    def ScoreSegment(self, request, context):
        yield from score_segment_messages(self.service, request, GrpcCall(context))

    def ExportMembers(self, request, context):
        yield from export_messages(self.service, request, GrpcCall(context))
