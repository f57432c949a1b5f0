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

    def _unary(self, method: str, query_type, request, context):
        """Request -> query -> service -> answer, as one call."""
        t0 = time.perf_counter()
        paths = query_type.paths(request)
        try:
            auth.check_row_reads(method, request)  # the scope `rows` (the method's own: the pipeline)
            with cancel.checking(lambda: check_active(context)):
                query = query_type.from_proto(request, paths)
                result = self.service.call(query, Selector.from_proto(request.snapshot))
                return result.to_proto(_elapsed_ms(t0))
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, method)

    def Count(self, request, context):
        return self._unary("Count", CountQuery, request, context)

    def Relate(self, request, context):
        return self._unary("Relate", RelateQuery, request, context)

    def Predict(self, request, context):
        return self._unary("Predict", PredictQuery, request, context)

    def Evaluate(self, request, context):
        return self._unary("Evaluate", EvaluateQuery, request, context)

    def Assign(self, request, context):
        return self._unary("Assign", AssignQuery, request, context)

    def Profile(self, request, context):
        return self._unary("Profile", ProfileQuery, request, context)

    def ListSegments(self, request, context):
        return self._unary("ListSegments", SegmentsQuery, request, context)

    def GetSnapshotInfo(self, request, context):
        return self._unary("GetSnapshotInfo", InfoQuery, request, context)

    def Discover(self, request, context):
        return self._unary("Discover", DiscoverQuery, request, context)

    def ScoreSegment(self, request, context):
        """Chunks of `chunk_size` scored members, then one summary; the deadline is checked between
        chunks. When a logistic model must be fitted first (not cached here, not stored in the
        snapshot), a progress message says so before the fit. An error before the first message
        ends the call like a unary one; after a progress message it ends the stream there."""
        t0 = time.perf_counter()
        paths = ScoreQuery.paths(request)
        try:
            chunk = score_op.chunk_size_from_proto(request.chunk_size)
            with cancel.checking(lambda: check_active(context)):
                query = ScoreQuery.from_proto(request, paths)
                header, run = self.service.score_segment_steps(query, Selector.from_proto(request.snapshot))
            for message in header.pending if header is not None else ():
                yield score_op.progress_to_proto(header, message, _elapsed_ms(t0))
            with cancel.checking(lambda: check_active(context)):
                result = run()
            for start in range(0, len(result.rows), chunk):
                check_active(context)
                ids = result.ids_between(start, start + chunk)
                yield result.chunk_to_proto(ids, result.scores[start:start + chunk], _elapsed_ms(t0))
            check_active(context)
            yield result.summary_response(_elapsed_ms(t0))
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, "ScoreSegment")

    def ExportMembers(self, request, context):
        """The total first (a message with total_count and no ids), then chunks of `chunk_size` ids (with
        their scores when ranked by a target). The rows are selected (and scored) before the first message,
        so any error ends the call like a unary one; ids become strings one chunk at a time, and the
        deadline is checked before every chunk (CANCELLED / DEADLINE_EXCEEDED mid-stream). When the
        ranking must fit a logistic model first, the first message (total_count and `progress`) goes
        before the fit: an error of the fit or scoring then ends the stream after it."""
        t0 = time.perf_counter()
        paths: RequestPaths = ExportQuery.paths(request)
        try:
            with cancel.checking(lambda: check_active(context)):
                query = ExportQuery.from_proto(request, paths)
                header, run = self.service.export_members_steps(query, Selector.from_proto(request.snapshot))
            if header is not None:
                yield export_op.header_to_proto(header, _elapsed_ms(t0))
            with cancel.checking(lambda: check_active(context)):
                result = run()
            if header is None:
                yield export_op.total_to_proto(result, _elapsed_ms(t0))
            for i in range(result.n_chunks):
                check_active(context)
                ids, scores = result.chunk(i)
                yield export_op.chunk_to_proto(result, ids, scores, _elapsed_ms(t0))
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, "ExportMembers")
