"""SegmentationService: convert the request, call the engine, convert the answer.

Every handler runs inside ``_call``, which times it (ResponseInfo.server_time_ms),
and turns any exception into a status through the one table in errors.py. The
client's deadline is checked (``context.is_active()``) between the expensive
steps; the engine's computations are not interrupted inside.
"""

from __future__ import annotations

import time
from typing import Callable

import grpc

from ..engine import cancel, privacy
from ..engine.assign import assign
from ..engine.privacy import DEFAULT_PRIVACY_K
from ..engine.conditions import SegmentRef, parse_where
from ..engine.count import count
from ..engine.evaluate import evaluate
from ..engine.export import export_members
from ..engine.predict import DEFAULT_MAX_TARGET_VALUES, predict, score_segment
from ..engine.profile import profile
from ..engine.relate import MAX_LIMIT, relate
from ..errors import LimitExceededError, NotBuiltYetError
from ..v1 import segsrv_pb2, segsrv_pb2_grpc
from . import convert, errors
from .convert import RequestPaths
from .registry import SnapshotRegistry

# what will provide the methods that are part of the contract but not built yet
NOT_BUILT = {
    "Discover": "Discover (strongest non-redundant conjunctions) arrives with the discover engine",
}


def check_active(context: grpc.ServicerContext) -> None:
    """Raise DeadlineExpired / RequestCancelled when the call is over (cheap)."""
    if context.is_active():
        return
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise errors.DeadlineExpired("deadline exceeded while the server was working")
    raise errors.RequestCancelled("the call was cancelled")


class SegmentationServiceServicer(segsrv_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, registry: SnapshotRegistry, *, max_result_hits: int = MAX_LIMIT,
                 max_target_values: int = DEFAULT_MAX_TARGET_VALUES, privacy_k: int = DEFAULT_PRIVACY_K):
        if privacy_k < 0:
            raise ValueError(f"privacy_k must be >= 0 (0 or 1: no floor), got {privacy_k}")
        self.privacy_k = int(privacy_k)
        if not 1 <= max_result_hits <= MAX_LIMIT:
            raise ValueError(f"max_result_hits must be within 1..{MAX_LIMIT}, got {max_result_hits}")
        if max_target_values < 2:
            raise ValueError(f"max_target_values must be at least 2, got {max_target_values}")
        self.registry = registry
        self.max_result_hits = max_result_hits
        self.max_target_values = max_target_values

    # -- plumbing ----------------------------------------------------------------

    def _call(self, context, method: str, paths: RequestPaths, body: Callable[[float], object]):
        t0 = time.perf_counter()
        try:
            with cancel.checking(lambda: check_active(context)):  # long engine loops stop for a gone caller
                return body(t0)
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, method)

    def _resolve(self, selector: segsrv_pb2.SnapshotSelector):
        return self.registry.resolve(selector.name, selector.version)

    # -- implemented ---------------------------------------------------------------

    def Relate(self, request, context):
        paths = RequestPaths("condition", list(request.fields))

        def body(t0):
            query = convert.relate_query_from_proto(request, paths)
            if request.limit == 0:  # "0 means 100", but never more than this server returns
                query.limit = min(query.limit, self.max_result_hits)
            if query.limit > self.max_result_hits:
                raise LimitExceededError(
                    f"limit: {query.limit} exceeds the maximum {self.max_result_hits}",
                    [("limit", f"at most {self.max_result_hits}")],
                )
            if self.privacy_k > 1:  # hits below the floor are never candidates, so `limit` still fills up
                query.min_support = max(query.min_support, self.privacy_k)
            snap = self._resolve(request.snapshot)
            check_active(context)
            result = relate(snap, query)
            check_active(context)
            result, suppressed, dropped = privacy.floor_relate(result, self.privacy_k)
            return convert.relate_response_to_proto(result, convert.response_info(snap, t0), suppressed, dropped)

        return self._call(context, "Relate", paths, body)

    def Count(self, request, context):
        paths = RequestPaths("condition")

        def body(t0):
            where = convert.condition_from_proto(request.condition if request.HasField("condition") else None, paths)
            snap = self._resolve(request.snapshot)
            check_active(context)
            result, suppressed = privacy.floor_count(count(snap, request.universe or None, where), self.privacy_k)
            return convert.count_response_to_proto(result, convert.response_info(snap, t0), suppressed)

        return self._call(context, "Count", paths, body)

    def GetSnapshotInfo(self, request, context):
        paths = RequestPaths("condition")

        def body(t0):
            snap = self._resolve(request.snapshot)
            universes = [snap.universe(request.universe)] if request.universe else list(snap.universes.values())
            return convert.snapshot_info_to_proto(snap, universes, request.include_values, self.registry.names(),
                                                  convert.response_info(snap, t0), self.privacy_k)

        return self._call(context, "GetSnapshotInfo", paths, body)

    def ListSegments(self, request, context):
        paths = RequestPaths("condition")

        def body(t0):
            snap = self._resolve(request.snapshot)
            if request.universe:
                snap.universe(request.universe)  # unknown universe -> INVALID_ARGUMENT
            out = []
            for name, entry in sorted((snap.segments or {}).items()):
                universe = entry.get("universe") or request.universe or None
                if request.universe and universe != request.universe:
                    continue
                check_active(context)
                size = count(snap, universe, SegmentRef(name))
                out.append(convert.segment_to_proto(name, entry, parse_where(entry.get("where")),
                                                    privacy.floor_size(size.count, self.privacy_k), size.n_rows))
            return segsrv_pb2.ListSegmentsResponse(info=convert.response_info(snap, t0), segments=out)

        return self._call(context, "ListSegments", paths, body)

    def Predict(self, request, context):
        paths = convert.PredictPaths(list(request.evidence_fields), request.target_field)

        def body(t0):
            query = convert.predict_query_from_proto(request, paths, self.max_target_values)
            snap = self._resolve(request.snapshot)
            if request.id:
                query.row_id = convert.row_id_from_proto(request.id, snap.universe(query.universe))
            check_active(context)
            result = privacy.floor_predict(predict(snap, query), self.privacy_k)
            check_active(context)
            return convert.predict_response_to_proto(result, convert.response_info(snap, t0))

        return self._call(context, "Predict", paths, body)

    def ScoreSegment(self, request, context):
        """Chunks of `chunk_size` scored members, then one summary; the deadline is checked between
        chunks. An error before the first message ends the call like a unary one."""
        paths = convert.PredictPaths(list(request.evidence_fields), request.target_field, request.target_value)
        t0 = time.perf_counter()
        try:
            chunk = convert.chunk_size_from_proto(request.chunk_size)
            query = convert.score_query_from_proto(request, paths, self.max_target_values)
            snap = self._resolve(request.snapshot)
            check_active(context)
            with cancel.checking(lambda: check_active(context)):
                result = score_segment(snap, query)
            privacy.refuse_small(result.n_members, self.privacy_k, "the segment", "segment")
            universe = snap.universe(result.universe)
            for start in range(0, len(result.rows), chunk):
                check_active(context)
                ids = universe.ids_for_rows(result.rows[start:start + chunk])
                scores = result.scores[start:start + chunk].tolist()
                yield segsrv_pb2.ScoreSegmentResponse(
                    info=convert.response_info(snap, t0),
                    chunk=segsrv_pb2.ScoreChunk(scores=[segsrv_pb2.MemberScore(id=str(i), score=s)
                                                        for i, s in zip(ids, scores)]))
            check_active(context)
            yield segsrv_pb2.ScoreSegmentResponse(info=convert.response_info(snap, t0),
                                                  summary=convert.score_summary_to_proto(result))
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, "ScoreSegment")

    def Evaluate(self, request, context):
        paths = convert.PredictPaths(list(request.evidence_fields), request.target_field)

        def body(t0):
            query = convert.evaluate_query_from_proto(request, paths, self.max_target_values)
            snap = self._resolve(request.snapshot)
            check_active(context)
            result = evaluate(snap, query)
            privacy.refuse_small(result.n_train, self.privacy_k, "the training set", "segment")
            privacy.refuse_small(result.n_test, self.privacy_k, "the test set", "segment")
            check_active(context)
            return convert.evaluate_response_to_proto(result, convert.response_info(snap, t0))

        return self._call(context, "Evaluate", paths, body)

    # -- part of the contract, not built yet ------------------------------------------

    def _not_built(self, method: str, context):
        errors.abort(context, NotBuiltYetError(f"{method} is not implemented yet: {NOT_BUILT[method]}"), method=method)

    def Assign(self, request, context):
        paths = convert.PredictPaths([], "")
        paths.root = "ids"

        def body(t0):
            query = convert.assign_query_from_proto(request, paths)
            snap = self._resolve(request.snapshot)
            check_active(context)
            result = privacy.floor_assign(assign(snap, query), self.privacy_k)
            check_active(context)
            return convert.assign_response_to_proto(result, convert.response_info(snap, t0))

        return self._call(context, "Assign", paths, body)

    def ExportMembers(self, request, context):
        """The total first (a message with total_count and no ids), then chunks of `chunk_size` ids (with
        their scores when ranked by a target). The rows are selected (and scored) before the first message,
        so any error ends the call like a unary one; ids become strings one chunk at a time, and the
        deadline is checked before every chunk (CANCELLED / DEADLINE_EXCEEDED mid-stream)."""
        paths = convert.export_paths(request)
        t0 = time.perf_counter()
        try:
            query = convert.export_query_from_proto(request, paths, self.max_target_values)
            snap = self._resolve(request.snapshot)
            check_active(context)
            with cancel.checking(lambda: check_active(context)):
                result = export_members(snap, query)
            privacy.refuse_small(result.total, self.privacy_k, "the condition", "condition")
            check_active(context)
            yield convert.export_total_to_proto(result, convert.response_info(snap, t0))
            for i in range(result.n_chunks):
                check_active(context)
                ids, scores = result.chunk(i)
                yield convert.export_chunk_to_proto(ids, scores, convert.response_info(snap, t0))
        except Exception as exc:  # noqa: BLE001 - every exception becomes a status (INTERNAL if unknown)
            errors.abort(context, exc, paths.locate, "ExportMembers")

    def Discover(self, request, context):
        self._not_built("Discover", context)

    def Profile(self, request, context):
        paths = convert.ProfilePaths(list(request.fields))

        def body(t0):
            query = convert.profile_query_from_proto(request, paths)
            snap = self._resolve(request.snapshot)
            check_active(context)
            result, suppressed = privacy.floor_profile(profile(snap, query), self.privacy_k)
            check_active(context)
            return convert.profile_response_to_proto(result, convert.response_info(snap, t0), suppressed)

        return self._call(context, "Profile", paths, body)

