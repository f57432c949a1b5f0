"""Python client of a segsrv gRPC server.

    from segsrv.client import SegsrvClient, SegsrvRpcError

    with SegsrvClient("127.0.0.1:50051", timeout=5.0) as client:
        answer = client.relate({"from": "customers", "where": {"region": "north"}, "limit": 10})
        n = client.count({"from": "customers", "where": {"region": "north"}})["count"]

`relate` and `count` take the JSON query form of `segsrv query --local` (see
docs/query.md) and return the same dicts as segsrv.engine.query's
run_relate_json / run_count_json; `predict`, `score_segment` (or `score_stream`)
and `evaluate` those of segsrv.engine.predict_query's run_*_json. Queries are validated client-side with the
engine's own parser first, so malformed input raises the same QueryError a
local query raises, before any RPC. Every failed RPC (server errors, deadline
exceeded, server unavailable) raises SegsrvRpcError. See docs/client.md.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import grpc

from .client_conditions import condition_to_proto, to_condition, where_from_proto
from .engine.predict_query import (
    EVALUATE_KEYS, PREDICT_KEYS, SCORE_KEYS, evaluate_query_from_json, predict_query_from_json,
    render_evaluate, render_predict, score_query_from_json, score_summary,
)
from .engine.conditions import value_text
from .engine.export import export_query_from_json
from .engine.profile import PROFILE_KEYS, profile_query_from_json, render_profile
from .engine.query import _check_keys, relate_query_from_json, render_relate
from .engine.relate import STAT_NAMES, RelateHit, RelateResult
from .errors import QueryError
from .v1 import condition_pb2
from .v1 import segsrv_pb2 as pb
from .v1 import segsrv_pb2_grpc as pb_grpc

__all__ = ["SegsrvClient", "SegsrvRpcError", "ScoreStream", "ExportStream"]

_UNSET = object()
DEFAULT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# The client-side retry policy of every segsrv client (proto/segsrv/v1/segsrv_grpc_service_config.json,
# which tests compare with this). Every segsrv method is read-only, so a call that failed with
# UNAVAILABLE (its worker was killed, its connection reset, no snapshot loaded yet) is safe to
# send again; gRPC retries within the call's deadline.
SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": "segsrv.v1.SegmentationService"}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}

# the engine's order names -> RelateOrder ("p", P(feature | condition), is RELATE_ORDER_CONFIDENCE)
_ORDER_PROTO_NAMES = {"p": "confidence"}
ORDER_TO_PROTO = {name: pb.RelateOrder.Value(f"RELATE_ORDER_{_ORDER_PROTO_NAMES.get(name, name).upper()}")
                  for name in ("lift_smoothed", "lift", "support", "p_value", "q_value", "mutual_information", "p",
                               "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang",
                               "support_ratio")}
DIRECTION_TO_PROTO = {name: pb.RelateDirection.Value(f"RELATE_DIRECTION_{name.upper()}") for name in ("over", "under", "all")}
PLAN_TO_PROTO = {name: pb.RelatePlan.Value(f"RELATE_PLAN_{name.upper()}") for name in ("auto", "scan", "histogram")}
# the engine reports "none" when nothing was counted (empty condition or no features): no proto value
PLAN_FROM_PROTO = {v: k for k, v in PLAN_TO_PROTO.items()} | {pb.RELATE_PLAN_UNSPECIFIED: "none"}

# engine method name <-> PredictMethod
METHOD_TO_PROTO = {name.removeprefix("PREDICT_METHOD_").lower(): number
                   for name, number in pb.PredictMethod.items() if number}
METHOD_FROM_PROTO = {v: k for k, v in METHOD_TO_PROTO.items()} | {pb.PREDICT_METHOD_UNSPECIFIED: ""}
FACTOR_KIND_FROM_PROTO = {number: name.removeprefix("FACTOR_KIND_").lower()
                          for name, number in pb.FactorKind.items() if number} | {pb.FACTOR_KIND_UNSPECIFIED: ""}

# engine statistic name -> RelateHit proto field
_STAT_FIELDS = {name: name for name in STAT_NAMES} | {"n_feature": "feature_count"}
_INT_STATS = {"support", "n_feature"}

_FIELD_KINDS = {pb.FIELD_KIND_CATEGORICAL: "categorical", pb.FIELD_KIND_MULTI: "multi",
                pb.FIELD_KIND_NUMERIC: "numeric", pb.FIELD_KIND_UNSPECIFIED: None}
_FIELD_SEMANTICS = {pb.FIELD_SEMANTICS_OWN: "own", pb.FIELD_SEMANTICS_FORWARD: "forward",
                    pb.FIELD_SEMANTICS_EXISTS: "exists", pb.FIELD_SEMANTICS_UNSPECIFIED: None}


class SegsrvRpcError(Exception):
    """A failed RPC: the gRPC status code, its message and the BadRequest field violations.

    code        grpc.StatusCode (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED, UNAVAILABLE, ...)
    message     the status message
    violations  [(field, description)] from google.rpc.BadRequest details (may be empty)
    details     the raw google.protobuf.Any details of the google.rpc.Status (may be empty)
    status      the google.rpc.Status, or None when the server sent no rich status
    """

    def __init__(self, code: grpc.StatusCode, message: str, violations=None, details=None, status=None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = list(violations or [])
        self.details = list(details or [])
        self.status = status

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> "SegsrvRpcError":
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        message = (exc.details() if hasattr(exc, "details") else None) or ""
        status, violations, details = None, [], []
        try:
            from google.rpc import error_details_pb2
            from grpc_status import rpc_status

            status = rpc_status.from_call(exc)
        except Exception:  # no grpc_status, or a status that disagrees with the call's code/message
            status = None
        if status is not None:
            details = list(status.details)
            for any_msg in details:
                if any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    any_msg.Unpack(br)
                    violations.extend((v.field, v.description) for v in br.field_violations)
            message = status.message or message
        return cls(code, message, violations, details, status)


class SegsrvClient:
    """Blocking client of segsrv.v1.SegmentationService over one insecure channel.

    timeout     per-call deadline in seconds (None: no deadline); each method takes timeout= too
    snapshot    snapshot name sent with every request ("" : the server's only snapshot)
    version     snapshot version to pin ("" : the version the server currently serves)
    channel_options  grpc channel options; grpc.max_receive_message_length defaults to 64 MiB
    retry       send a call that failed with UNAVAILABLE again (up to 4 attempts in all, 50 ms back-off
                doubling to 1 s, within the call's deadline: SERVICE_CONFIG); a "grpc.service_config"
                in channel_options replaces this policy
    """

    def __init__(self, address: str, *, timeout: float | None = 10.0, snapshot: str = "", version: str = "",
                 channel_options=None, retry: bool = True):
        self.address = address
        self.timeout = timeout
        self.snapshot = snapshot or ""
        self.version = version or ""
        # answers can be large (a 10,000-id Assign with propensities, a 10,000-hit Relate): accept up to
        # 64 MiB unless the caller says otherwise (gRPC's own default is 4 MiB)
        options = dict(channel_options or [])
        options.setdefault("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE_BYTES)
        if retry:
            options.setdefault("grpc.service_config", json.dumps(SERVICE_CONFIG))
        else:
            options.setdefault("grpc.enable_retries", 0)
        self._channel = grpc.insecure_channel(address, options=list(options.items()))
        self._stub = pb_grpc.SegmentationServiceStub(self._channel)

    # --- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SegsrvClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------

    def _selector(self) -> pb.SnapshotSelector:
        return pb.SnapshotSelector(name=self.snapshot, version=self.version)

    def _call(self, method, request, timeout):
        timeout = self.timeout if timeout is _UNSET else timeout
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None

    # --- requests (exposed for callers that want the proto) --------------------

    def relate_request(self, query: dict | None = None, **kwargs) -> tuple[pb.RelateRequest, list[str]]:
        """The JSON relate query -> (RelateRequest, select); raises QueryError like a local query."""
        obj = _merge_query(query, kwargs)
        where = obj.get("where")
        direct = where is not None and not isinstance(where, dict)
        if direct:  # an engine dataclass or a proto Condition: validate the rest with the engine's parser
            obj = {k: v for k, v in obj.items() if k != "where"}
        q, select = relate_query_from_json(obj)
        # limits (depth, terms) are checked here, as the local evaluation checks them
        cond = to_condition(where if direct else q.where)
        for pat in q.relate or ():
            if not isinstance(pat, str) or not pat:
                raise QueryError(f"relate: bad field pattern {pat!r}", [("relate", f"bad pattern {pat!r}")])
        if q.universe is not None and not isinstance(q.universe, str):
            raise QueryError(f"from: expected a universe name, got {q.universe!r}", [("from", "expected a string")])
        req = pb.RelateRequest(
            snapshot=self._selector(),
            universe=q.universe or "",
            condition=condition_to_proto(cond),
            fields=list(q.relate or ()),
            order_by=ORDER_TO_PROTO[q.order_by],
            direction=DIRECTION_TO_PROTO[q.direction],
            limit=q.limit,
            min_support=q.min_support,
            prior_strength=float(q.prior_strength),
            include_condition_fields=not q.exclude_condition_fields,
            plan=PLAN_TO_PROTO[q.plan],
        )
        if q.min_lift is not None:
            req.min_lift = float(q.min_lift)
        if q.max_p_value is not None:
            req.max_p_value = float(q.max_p_value)
        return req, select

    def count_request(self, query: dict | None = None, **kwargs) -> pb.CountRequest:
        obj = _merge_query(query, kwargs)
        where = obj.get("where")
        if where is not None and not isinstance(where, dict):
            cond = to_condition(where)
            obj = {k: v for k, v in obj.items() if k != "where"}
            _check_keys(obj, {"from"}, "count")
        else:
            _check_keys(obj, {"from", "where"}, "count")
            cond = to_condition(where)
        universe = obj.get("from")
        if universe is not None and not isinstance(universe, str):
            raise QueryError(f"from: expected a universe name, got {universe!r}", [("from", "expected a string")])
        return pb.CountRequest(snapshot=self._selector(), universe=universe or "", condition=condition_to_proto(cond))

    def _segment(self, obj: dict, keys: set, kind: str) -> tuple[dict, object]:
        """(the query without a non-JSON segment, the segment condition as a proto)."""
        segment = obj.get("segment")
        if segment is not None and not isinstance(segment, dict):  # an engine dataclass or a proto Condition
            cond = to_condition(segment, "segment")
            obj = {k: v for k, v in obj.items() if k != "segment"}
            _check_keys(obj, keys, kind)
            return obj, condition_to_proto(cond)
        _check_keys(obj, keys, kind)
        return obj, None

    def _method(self, obj: dict) -> int:
        if "method" not in obj:
            return pb.PREDICT_METHOD_UNSPECIFIED
        if obj["method"] not in METHOD_TO_PROTO:
            raise QueryError(f"method: must be one of {sorted(METHOD_TO_PROTO)}, got {obj['method']!r}",
                             [("method", f"unknown method {obj['method']!r}")])
        return METHOD_TO_PROTO[obj["method"]]

    def predict_request(self, query: dict | None = None, **kwargs) -> pb.PredictRequest:
        """The JSON predict query -> PredictRequest; raises QueryError like a local query.

        Keys not given stay unset, so the server applies the engine's defaults."""
        obj, segment = self._segment(_merge_query(query, kwargs), PREDICT_KEYS, "predict")
        q = predict_query_from_json(obj)
        req = pb.PredictRequest(
            snapshot=self._selector(), universe=q.universe or "",
            segment=segment if segment is not None else condition_to_proto(to_condition(q.segment, "segment")),
            target_field=q.target, id="" if q.row_id is None else str(q.row_id),
            evidence=[condition_pb2.Term(field=f, value=v) for f, v in q.evidence],
            evidence_fields=list(q.evidence_fields or ()), method=self._method(obj),
        )
        if "prior_strength" in obj:
            req.prior_strength = float(q.prior_strength)
        if "min_support" in obj:
            req.min_support = int(q.min_support)
        for key in ("min_support_fraction", "max_p_value"):
            if key in obj:
                setattr(req, key, float(getattr(q, key)))
        return req

    def score_request(self, query: dict | None = None, *, chunk_size: int = 0, **kwargs) -> pb.ScoreSegmentRequest:
        """The JSON score query -> ScoreSegmentRequest (chunk_size 0: the server's default)."""
        obj, segment = self._segment(_merge_query(query, kwargs), SCORE_KEYS, "score")
        q = score_query_from_json(obj)
        req = pb.ScoreSegmentRequest(
            snapshot=self._selector(), universe=q.universe or "",
            segment=segment if segment is not None else condition_to_proto(to_condition(q.segment, "segment")),
            target_field=q.target, target_value=q.value, top_k=int(q.top_k), chunk_size=int(chunk_size),
            evidence_fields=list(q.evidence_fields or ()), method=self._method(obj),
        )
        if "prior_strength" in obj:
            req.prior_strength = float(q.prior_strength)
        return req

    def export_request(self, query: dict | None = None, *, chunk_size: int = 0, **kwargs) -> pb.ExportMembersRequest:
        """The JSON export query (from, where, top_k, target, value) -> ExportMembersRequest
        (chunk_size 0: the server's default); raises QueryError like a local export."""
        obj = _merge_query(query, kwargs)
        where = obj.get("where")
        direct = where is not None and not isinstance(where, dict)
        if direct:  # an engine dataclass or a proto Condition: validate the rest with the engine's parser
            obj = {k: v for k, v in obj.items() if k != "where"}
        q = export_query_from_json(obj)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise QueryError(f"chunk_size: expected a non-negative integer (0: the server's default), got "
                             f"{chunk_size!r}", [("chunk_size", "expected a non-negative integer")])
        return pb.ExportMembersRequest(
            snapshot=self._selector(), universe=q.universe or "",
            condition=condition_to_proto(to_condition(where if direct else q.condition)),
            chunk_size=chunk_size, top_k=q.top_k, target_field=q.target or "", target_value=q.value or "",
        )

    def evaluate_request(self, query: dict | None = None, **kwargs) -> pb.EvaluateRequest:
        """The JSON evaluate query -> EvaluateRequest."""
        obj, segment = self._segment(_merge_query(query, kwargs), EVALUATE_KEYS, "evaluate")
        q = evaluate_query_from_json(obj)
        req = pb.EvaluateRequest(
            snapshot=self._selector(), universe=q.universe or "",
            segment=segment if segment is not None else condition_to_proto(to_condition(q.segment, "segment")),
            target_field=q.target, evidence_fields=list(q.evidence_fields or ()),
            holdout_fraction=float(q.holdout_fraction) if "holdout_fraction" in obj else 0.0,
            seed=int(q.seed), method=self._method(obj),
        )
        if "prior_strength" in obj:
            req.prior_strength = float(q.prior_strength)
        if "min_support" in obj:
            req.min_support = int(q.min_support)
        for key in ("min_support_fraction", "max_p_value"):
            if key in obj:
                setattr(req, key, float(getattr(q, key)))
        return req

    # --- RPCs ------------------------------------------------------------------

    def relate(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Relate: the same dict as run_relate_json (elapsed_ms is the server's handling time).

        `query` is the JSON relate query; keyword arguments add or override keys
        (`from_=` or `universe=` for "from"). `where` may also be an engine
        condition dataclass or a proto Condition.
        """
        req, select = self.relate_request(query, **kwargs)
        resp = self._call(self._stub.Relate, req, timeout)
        answer = render_relate(relate_result_from_proto(resp), select)
        if resp.suppressed or resp.suppressed_hit_count:  # the server's privacy floor (docs/server.md)
            answer["suppressed"] = bool(resp.suppressed)
            answer["suppressed_hits"] = int(resp.suppressed_hit_count)
        return answer

    def count(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Count: the same dict as run_count_json."""
        resp = self._call(self._stub.Count, self.count_request(query, **kwargs), timeout)
        answer = {
            "snapshot": resp.info.snapshot_name,
            "version": resp.info.snapshot_version,
            "from": resp.universe,
            "n_rows": resp.row_count,
            "count": resp.count,
        }
        if resp.suppressed:  # below the server's privacy floor: count reported as 0 (docs/server.md)
            answer["suppressed"] = True
        return answer

    def predict(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Predict: the same dict as segsrv.engine.predict_query.run_predict_json."""
        resp = self._call(self._stub.Predict, self.predict_request(query, **kwargs), timeout)
        return render_predict(predict_result_from_proto(resp))

    def score_stream(self, query: dict | None = None, /, *, timeout=_UNSET, chunk_size: int = 0,
                     **kwargs) -> "ScoreStream":
        """ScoreSegment as it streams: iterate (id, score) pairs; `.summary` afterwards."""
        req = self.score_request(query, chunk_size=chunk_size, **kwargs)
        timeout = self.timeout if timeout is _UNSET else timeout
        try:
            call = self._stub.ScoreSegment(req, timeout=timeout)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None
        return ScoreStream(call)

    def score_segment(self, query: dict | None = None, /, *, timeout=_UNSET, chunk_size: int = 0,
                      **kwargs) -> dict:
        """ScoreSegment, collected: the same dict as run_score_json (ids as text)."""
        stream = self.score_stream(query, timeout=timeout, chunk_size=chunk_size, **kwargs)
        scores = [{"id": i, "score": s} for i, s in stream]
        out = dict(stream.summary)
        out["scores"] = scores
        return out

    def export(self, query: dict | None = None, /, *, timeout=_UNSET, chunk_size: int = 0,
               **kwargs) -> "ExportStream":
        """ExportMembers as it streams: `.total` (rows matching), then iterate the ids (text), or
        `.chunks()` for (ids, scores or None) per chunk, or `.members()` for (id, score or None).

        `query` is the JSON export query {"from", "where", "top_k", "target", "value"} (docs/export.md);
        with "target" the ids come ranked, best first, with scores. `timeout` is the deadline of the
        whole stream."""
        req = self.export_request(query, chunk_size=chunk_size, **kwargs)
        timeout = self.timeout if timeout is _UNSET else timeout
        try:
            call = self._stub.ExportMembers(req, timeout=timeout)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None
        return ExportStream(call, ranked=bool(req.target_field))

    def evaluate(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Evaluate: the same dict as run_evaluate_json."""
        resp = self._call(self._stub.Evaluate, self.evaluate_request(query, **kwargs), timeout)
        return render_evaluate(evaluate_result_from_proto(resp))

    def profile_request(self, query: dict | None = None, **kwargs) -> pb.ProfileRequest:
        """The JSON profile query {"from", "segment", "fields", "values_per_field"} -> ProfileRequest;
        raises QueryError like a local query."""
        obj, segment = self._segment(_merge_query(query, kwargs), PROFILE_KEYS, "profile")
        q = profile_query_from_json(obj)
        return pb.ProfileRequest(
            snapshot=self._selector(), universe=q.universe or "",
            segment=segment if segment is not None else condition_to_proto(to_condition(q.segment, "segment")),
            fields=list(q.fields or ()), values_per_field=int(q.values_per_field),
        )

    def profile(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Profile: the same dict as segsrv.engine.profile.run_profile_json (docs/query.md)."""
        resp = self._call(self._stub.Profile, self.profile_request(query, **kwargs), timeout)
        return render_profile(profile_result_from_proto(resp))

    def snapshot_info(self, universe: str = "", include_values: bool = False, *, timeout=_UNSET) -> dict:
        """The served snapshot, shaped like `segsrv info` (values as {value: count} when requested)."""
        req = pb.GetSnapshotInfoRequest(snapshot=self._selector(), universe=universe or "",
                                        include_values=include_values)
        resp = self._call(self._stub.GetSnapshotInfo, req, timeout)
        universes = {}
        for u in resp.universes:
            fields = {}
            for f in u.fields:
                entry = {"kind": _FIELD_KINDS.get(f.kind), "semantics": _FIELD_SEMANTICS.get(f.semantics),
                         "n_values": f.value_count, "has_raw_values": f.has_raw_values}
                if include_values:
                    entry["values"] = {v.value: v.count for v in f.values}
                if f.band_edges:
                    entry["edges"] = list(f.band_edges)
                fields[f.name] = entry
            universes[u.name] = {"table": u.table, "key": u.key, "n_rows": u.row_count,
                                 "n_features": u.feature_count, "fields": fields}
        return {
            "name": resp.info.snapshot_name,
            "version": resp.info.snapshot_version,
            "description": resp.description,
            "served_snapshots": list(resp.served_snapshots),
            "universes": universes,
            "elapsed_ms": round(resp.info.server_time_ms, 3),
        }

    def list_segments(self, universe: str = "", *, timeout=_UNSET) -> list[dict]:
        """The segment catalog: name, description, universe, where (JSON form), priority, tags, size, share."""
        req = pb.ListSegmentsRequest(snapshot=self._selector(), universe=universe or "")
        resp = self._call(self._stub.ListSegments, req, timeout)
        return [
            {"name": s.name, "description": s.description, "universe": s.universe,
             "where": where_from_proto(s.condition), "priority": s.priority, "tags": list(s.tags),
             "size": s.size, "share": s.share}
            for s in resp.segments
        ]

    def assign(self, ids=None, *, features=None, universe: str = "", include_propensities: bool = False,
               prior_strength: float | None = None, max_p_value: float | None = None, timeout=_UNSET) -> dict:
        """Catalog segments of known customers (`ids`, a batch) or of a new customer (`features`:
        (field, value) pairs or a {field: value} dict). Returns {"snapshot", "version", "universe",
        "assignments": [{"id", "found", "primary_segment", "segments": [{"segment", "member",
        "propensity", "segment_size", "share", "priority"}]}]} (see docs/segments.md)."""
        if isinstance(features, dict):
            features = list(features.items())
        req = pb.AssignRequest(snapshot=self._selector(), universe=universe or "",
                               ids=[str(i) for i in (ids or [])],
                               features=[condition_pb2.Term(field=str(f), value=value_text(v)) for f, v in (features or [])],
                               include_propensities=include_propensities)
        if prior_strength is not None:
            req.prior_strength = float(prior_strength)
        if max_p_value is not None:
            req.max_p_value = float(max_p_value)
        resp = self._call(self._stub.Assign, req, timeout)
        return {
            "snapshot": resp.info.snapshot_name, "version": resp.info.snapshot_version, "universe": resp.universe,
            "assignments": [
                {"id": a.id, "found": a.found, "primary_segment": a.primary_segment or None,
                 "segments": [{"segment": m.segment, "member": m.member,
                               "propensity": None if m.member or not include_propensities else m.propensity,
                               "segment_size": m.segment_size, "share": m.share, "priority": m.priority}
                              for m in a.segments]}
                for a in resp.assignments],
        }

    def health(self, service: str = "", *, timeout=_UNSET) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class ScoreStream:
    """The (id, score) pairs of a ScoreSegment call as they arrive (ids as text).

    After the last pair, `summary` holds the closing summary shaped like run_score_json's
    answer without "scores" (elapsed_ms: the server's time at the summary); `chunks` counts
    the chunk messages. A failed call raises SegsrvRpcError while iterating; `cancel()`
    ends the call early."""

    def __init__(self, call):
        self._call = call
        self.summary: dict | None = None
        self.chunks = 0

    def __iter__(self):
        try:
            for msg in self._call:
                kind = msg.WhichOneof("payload")
                if kind == "chunk":
                    self.chunks += 1
                    for m in msg.chunk.scores:
                        yield m.id, m.score
                elif kind == "summary":
                    s = msg.summary
                    self.summary = score_summary(SimpleNamespace(
                        snapshot=msg.info.snapshot_name, version=msg.info.snapshot_version, universe=s.universe,
                        target=s.target_field, value=s.target_value, n_members=s.member_count,
                        scores=range(s.returned_count), mean_score=s.mean_score, elapsed_ms=msg.info.server_time_ms))
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class ExportStream:
    """The ids of an ExportMembers call as they arrive (text).

    `total` is the number of rows matching the condition (reading it waits for the first message);
    `snapshot` / `version` name what answered; `ranked` is true when the request named a target
    (the ids then come best first, each with its score). Iterating yields ids; `chunks()` yields
    (ids, scores or None) lists per chunk; `members()` yields (id, score or None). `returned` and
    `chunks_received` count what has arrived. A failed call raises SegsrvRpcError (reading `total`
    or while iterating); `cancel()` ends the call early. A stream is read once."""

    def __init__(self, call, ranked: bool = False):
        self._call = call
        self._messages = iter(call)
        self._first = None
        self.ranked = ranked
        self.returned = 0
        self.chunks_received = 0

    def _header(self):
        if self._first is None:
            try:
                self._first = next(self._messages)
            except grpc.RpcError as exc:
                raise SegsrvRpcError.from_rpc_error(exc) from None
            except StopIteration:
                raise SegsrvRpcError(grpc.StatusCode.UNKNOWN,
                                     "the server ended the export without its total") from None
        return self._first

    @property
    def total(self) -> int:
        return int(self._header().total_count)

    @property
    def snapshot(self) -> str:
        return self._header().info.snapshot_name

    @property
    def version(self) -> str:
        return self._header().info.snapshot_version

    def chunks(self):
        """(ids, scores) per chunk: lists of str and float (scores None when not ranked)."""
        self._header()
        try:
            for msg in self._messages:
                ids = list(msg.ids)
                scores = list(msg.scores) if self.ranked else None
                self.chunks_received += 1
                self.returned += len(ids)
                yield ids, scores
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None

    def members(self):
        """(id, score) pairs (score None when not ranked)."""
        for ids, scores in self.chunks():
            yield from zip(ids, scores if scores is not None else [None] * len(ids))

    def __iter__(self):
        for ids, _ in self.chunks():
            yield from ids

    def cancel(self) -> None:
        self._call.cancel()


def _terms_from_proto(terms) -> list[tuple[str, str]]:
    return [(t.field, t.value) for t in terms]


def predict_result_from_proto(resp: pb.PredictResponse) -> SimpleNamespace:
    """PredictResponse -> an object with the attributes of the engine's PredictResult."""
    probs = []
    for tp in resp.probabilities:
        e = tp.explanation
        factors = [SimpleNamespace(evidence=_terms_from_proto(f.evidence), factor=f.factor, support=f.support,
                                   kind=FACTOR_KIND_FROM_PROTO.get(f.kind, ""), note=f.note) for f in e.factors]
        probs.append(SimpleNamespace(value=tp.value, probability=tp.probability, base_probability=e.base_probability,
                                     factors=factors, normalizer=e.normalizer))
    return SimpleNamespace(
        snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
        target=resp.target_field, multi_valued=resp.multi_valued, method=METHOD_FROM_PROTO.get(resp.method, ""),
        n_segment=resp.segment_count, evidence=_terms_from_proto(resp.evidence), probabilities=probs,
        elapsed_ms=resp.info.server_time_ms,
    )


def evaluate_result_from_proto(resp: pb.EvaluateResponse) -> SimpleNamespace:
    """EvaluateResponse -> an object with the attributes of the engine's EvaluateResult (no per-row arrays)."""
    return SimpleNamespace(
        snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
        target=resp.target_field, method=METHOD_FROM_PROTO.get(resp.method, ""), values=list(resp.values),
        n_train=resp.train_count, n_test=resp.test_count, accuracy=resp.accuracy,
        baseline_accuracy=resp.baseline_accuracy, baseline_value=resp.baseline_value, log_loss=resp.log_loss,
        auc=resp.auc if resp.HasField("auc") else None,
        positive_value=resp.positive_value if resp.HasField("positive_value") else None,
        mean_rank=resp.mean_rank, geometric_mean_probability=resp.geometric_mean_probability,
        calibration_of=resp.calibration_of,
        calibration=[SimpleNamespace(predicted_low=b.predicted_low, predicted_high=b.predicted_high,
                                     mean_predicted=b.mean_predicted, observed_rate=b.observed_rate, count=b.count)
                     for b in resp.calibration],
        elapsed_ms=resp.info.server_time_ms,
    )


def profile_result_from_proto(resp: pb.ProfileResponse) -> SimpleNamespace:
    """ProfileResponse -> an object with the attributes of the engine's ProfileResult. A field's values
    are its over-indexed ones (lift > 1) followed by its under-indexed ones (lift < 1)."""
    def value(v):
        return SimpleNamespace(value=v.value, segment_count=v.segment_count, segment_share=v.segment_share,
                               population_share=v.population_share, lift=v.lift, p_value=v.p_value)

    fields = [SimpleNamespace(field=f.field, over=[value(v) for v in f.values if v.lift > 1],
                              under=[value(v) for v in f.values if v.lift < 1]) for f in resp.fields]
    numeric = [SimpleNamespace(field=p.field, segment=p.segment, population=p.population) for p in resp.numeric_fields]
    return SimpleNamespace(
        snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
        n_rows=resp.row_count, n_segment=resp.segment_count, fields=fields, numeric=numeric,
        elapsed_ms=resp.info.server_time_ms,
    )


def _merge_query(query, kwargs) -> dict:
    if query is not None and not isinstance(query, dict):
        raise QueryError(f"query must be a JSON object (dict), got {type(query).__name__}", [("query", "not an object")])
    obj = dict(query or {})
    for key, val in kwargs.items():
        obj["from" if key in ("from_", "universe") else key] = val
    return obj


def relate_result_from_proto(resp: pb.RelateResponse) -> RelateResult:
    """RelateResponse -> the engine's RelateResult (feature ids are not sent: None)."""
    hits = []
    for h in resp.hits:
        stats = {}
        for name, attr in _STAT_FIELDS.items():
            v = getattr(h, attr)
            stats[name] = int(v) if name in _INT_STATS else float(v)
        hits.append(RelateHit(None, h.field, h.value, stats))
    return RelateResult(
        snapshot=resp.info.snapshot_name,
        version=resp.info.snapshot_version,
        universe=resp.universe,
        n_rows=resp.row_count,
        n_condition=resp.condition_count,
        n_candidates=resp.candidate_count,
        n_matching=resp.matching_count,
        plan=PLAN_FROM_PROTO.get(resp.plan, "none"),
        hits=hits,
        elapsed_ms=resp.info.server_time_ms,
    )
