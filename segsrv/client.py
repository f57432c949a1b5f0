"""Python client of a segsrv gRPC server.

    from segsrv.client import SegsrvClient, SegsrvRpcError

    with SegsrvClient("127.0.0.1:50051", timeout=5.0) as client:
        answer = client.relate({"from": "customers", "where": {"region": "north"}, "limit": 10})
        n = client.count({"from": "customers", "where": {"region": "north"}})["count"]

Each method takes an operation's JSON form (docs/query.md) and returns the same dict
as `segsrv query ... --local`: the query is read with its ops module's ``from_json``
(so malformed input raises the QueryError a local query raises, before any RPC),
sent with ``to_proto`` and the answer read back with the result's ``from_proto``.
``call(query)`` takes and returns the ops types themselves (segsrv.ops), the same
interface as the in-process segsrv.service.SegmentationService, which is how the CLI
runs one code path for --local and --addr. Every failed RPC (server errors, deadline
exceeded, server unavailable) raises SegsrvRpcError. See docs/client.md.

Light by design: it imports grpc, protobuf and segsrv.ops (numpy), never scipy,
duckdb or the compiled kernels.
"""

from __future__ import annotations

import json

import grpc

from .ops import (
    AssignQuery, CountQuery, DiscoverQuery, EvaluateQuery, ExportQuery, InfoQuery, PredictQuery, ProfileQuery, RelateQuery,
    ScoreQuery, SegmentsQuery,
)
from .ops import score as score_op
from .ops.assign import AssignResult
from .ops.base import Selector
from .ops.count import CountResult
from .ops.discover import DiscoverResult
from .ops.evaluate import EvaluateResult
from .ops.info import InfoResult
from .ops.params import merge_query
from .ops.predict import PredictResult
from .ops.profile import ProfileResult
from .ops.relate import RelateResult
from .ops.score import ScoreResult
from .ops.segments import SegmentsResult
from .v1 import segsrv_pb2_grpc as pb_grpc

__all__ = ["SegsrvClient", "SegsrvRpcError", "ScoreStream", "ExportStream", "SERVICE_CONFIG"]

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
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}



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
    retry       send a call that failed with UNAVAILABLE again (up to 5 attempts in all, 100 ms back-off
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

    def _selector(self) -> Selector:
        return Selector(self.snapshot, self.version)

    def _stream(self, method, request, timeout):
        """A server-streaming call (its messages are read, and errors raised, by the caller)."""
        try:
            return method(request, timeout=self.timeout if timeout is _UNSET else timeout)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None

    def _call(self, method, request, timeout):
        timeout = self.timeout if timeout is _UNSET else timeout
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None



    # --- typed calls: ops query in, ops result out (the service's interface) -----------------

    def call(self, query, *, timeout=_UNSET, progress=None):
        """The operation of `query`'s type (a segsrv.ops query), answered by the server: its result
        type, as segsrv.service.SegmentationService.call returns it in-process (ScoreSegment: the
        collected ScoreAnswer; ExportMembers: an ExportStream). progress: called with each progress
        line of a ScoreSegment / ExportMembers stream (a logistic model fitted first) as it arrives."""
        if isinstance(query, ScoreQuery):
            stream = self.score_stream(query, timeout=timeout)
            stream.on_progress = progress
            return stream.collect()
        if isinstance(query, ExportQuery):
            stream = self._export(query, query.chunk_size, timeout)
            stream.on_progress = progress
            return stream
        rpc, result_type = _UNARY[type(query)]
        resp = self._call(getattr(self._stub, rpc), query.to_proto(self._selector()), timeout)
        return result_type.from_proto(resp)

    # --- requests (exposed for callers that want the proto) --------------------

    def relate_request(self, query: dict | None = None, **kwargs):
        """The JSON relate query -> (RelateRequest, select); raises QueryError like a local query."""
        q = RelateQuery.from_json(merge_query(query, kwargs))
        return q.to_proto(self._selector()), q.select

    def count_request(self, query: dict | None = None, **kwargs):
        return CountQuery.from_json(merge_query(query, kwargs)).to_proto(self._selector())

    def export_request(self, query: dict | None = None, *, chunk_size: int = 0, **kwargs):
        """The JSON export query (from, where, top_k, target, value) -> ExportMembersRequest
        (chunk_size 0: the server's default); raises QueryError like a local export."""
        q = ExportQuery.from_json(merge_query(query, kwargs))
        return q.to_proto(self._selector(), chunk_size=chunk_size)

    # --- RPCs: the JSON forms ----------------------------------------------------

    def relate(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Relate: the same dict as `segsrv query relate --local` (elapsed_ms is the server's time).

        `query` is the JSON relate query; keyword arguments add or override keys
        (`from_=` or `universe=` for "from"). `where` may also be a condition tree
        (segsrv.ops.conditions) or a proto Condition.
        """
        q = RelateQuery.from_json(merge_query(query, kwargs))
        return self.call(q, timeout=timeout).to_json(q.select)

    def count(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Count: the same dict as `segsrv query count --local`."""
        return self.call(CountQuery.from_json(merge_query(query, kwargs)), timeout=timeout).to_json()

    def predict(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Predict: the same dict as `segsrv query predict --local`."""
        return self.call(PredictQuery.from_json(merge_query(query, kwargs)), timeout=timeout).to_json()

    def evaluate(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Evaluate: the same dict as `segsrv query evaluate --local`."""
        return self.call(EvaluateQuery.from_json(merge_query(query, kwargs)), timeout=timeout).to_json()

    def profile(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Profile: the same dict as `segsrv query profile --local` (docs/query.md)."""
        return self.call(ProfileQuery.from_json(merge_query(query, kwargs)), timeout=timeout).to_json()

    def discover(self, query: dict | None = None, /, *, timeout=_UNSET, **kwargs) -> dict:
        """Discover: the same dict as `segsrv discover --local --format json` (docs/discover.md).
        A search takes seconds on millions of rows: give a timeout that allows it."""
        return self.call(DiscoverQuery.from_json(merge_query(query, kwargs)), timeout=timeout).to_json()

    def score_stream(self, query=None, /, *, timeout=_UNSET, chunk_size: int = 0, **kwargs) -> "ScoreStream":
        """ScoreSegment as it streams: iterate (id, score) pairs; `.summary` afterwards."""
        q = query if isinstance(query, ScoreQuery) else ScoreQuery.from_json(merge_query(query, kwargs))
        return ScoreStream(self._stream(self._stub.ScoreSegment, q.to_proto(self._selector(), chunk_size=chunk_size),
                                        timeout))

    def score_segment(self, query: dict | None = None, /, *, timeout=_UNSET, chunk_size: int = 0,
                      **kwargs) -> dict:
        """ScoreSegment, collected: the same dict as `segsrv query score --local` (ids as text)."""
        return self.score_stream(query, timeout=timeout, chunk_size=chunk_size, **kwargs).collect().to_json()

    def export(self, query: dict | None = None, /, *, timeout=_UNSET, chunk_size: int = 0,
               **kwargs) -> "ExportStream":
        """ExportMembers as it streams: `.total` (rows matching), then iterate the ids (text), or
        `.chunks()` for (ids, scores or None) per chunk, or `.members()` for (id, score or None).

        `query` is the JSON export query {"from", "where", "top_k", "target", "value"} (docs/export.md);
        with "target" the ids come ranked, best first, with scores. `timeout` is the deadline of the
        whole stream."""
        return self._export(ExportQuery.from_json(merge_query(query, kwargs)), chunk_size, timeout)

    def _export(self, q: ExportQuery, chunk_size: int, timeout) -> "ExportStream":
        req = q.to_proto(self._selector(), chunk_size=chunk_size)
        return ExportStream(self._stream(self._stub.ExportMembers, req, timeout), ranked=bool(req.target_field))

    def snapshot_info(self, universe: str = "", include_values: bool = False, *, timeout=_UNSET) -> dict:
        """The served snapshot, shaped like `segsrv info` (values as {value: count} when requested)."""
        return self.call(InfoQuery(universe=universe or None, include_values=include_values), timeout=timeout).to_json()

    def list_segments(self, universe: str = "", *, timeout=_UNSET) -> list[dict]:
        """The segment catalog: name, description, universe, where (JSON form), priority, tags, size, share."""
        return self.call(SegmentsQuery(universe=universe or None), timeout=timeout).to_json()

    def assign(self, ids=None, *, features=None, universe: str = "", include_propensities: bool = False,
               propensity_method: str | None = None, propensity_l2: float | None = None,
               prior_strength: float | None = None, max_p_value: float | None = None, timeout=_UNSET) -> dict:
        """Catalog segments of known customers (`ids`, a batch) or of a new customer (`features`:
        (field, value) pairs or a {field: value} dict). Returns {"snapshot", "version", "universe",
        "assignments": [{"id", "found", "primary_segment", "segments": [{"segment", "member",
        "propensity", "segment_size", "share", "priority"}]}]} (see docs/segments.md). Propensities:
        `propensity_method` "logistic" (the default; `propensity_l2` absent: the cross-validated models
        `segments apply` stores) or "factorized" (`prior_strength`, `max_p_value`); docs/assign.md."""
        # checked by the server, which places each violation at its request field (features[i].value, ...)
        q = AssignQuery(universe=universe or None, ids=list(ids or []),
                        features=None if features is None else list(features.items() if isinstance(features, dict)
                                                                    else features),
                        include_propensities=include_propensities)
        if propensity_method is not None:
            q.propensity_method = propensity_method
        if propensity_l2 is not None:
            q.propensity_l2 = propensity_l2
        if prior_strength is not None:
            q.prior_strength = prior_strength
        if max_p_value is not None:
            q.max_p_value = max_p_value
        return self.call(q, timeout=timeout).to_json()

    def health(self, service: str = "", *, timeout=_UNSET) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


_UNARY = {
    CountQuery: ("Count", CountResult), RelateQuery: ("Relate", RelateResult), PredictQuery: ("Predict", PredictResult),
    EvaluateQuery: ("Evaluate", EvaluateResult), AssignQuery: ("Assign", AssignResult),
    ProfileQuery: ("Profile", ProfileResult), SegmentsQuery: ("ListSegments", SegmentsResult),
    InfoQuery: ("GetSnapshotInfo", InfoResult), DiscoverQuery: ("Discover", DiscoverResult),
}


class ScoreStream:
    """The (id, score) pairs of a ScoreSegment call as they arrive (ids as text).

    After the last pair, `summary` holds the closing summary shaped like the local score
    answer without "scores" (elapsed_ms: the server's time at the summary); `chunks` counts
    the chunk messages; `collect()` reads the whole stream into a ScoreResult. `progress` lists
    the server's progress messages as they arrive (before the first chunk, when it fits a logistic
    model first; none when nothing is fitted), each also passed to `on_progress` when set. A failed
    call raises SegsrvRpcError while iterating; `cancel()` ends the call early."""

    def __init__(self, call, on_progress=None):
        self._call = call
        self.summary: dict | None = None
        self.chunks = 0
        self.progress: list[str] = []
        self.on_progress = on_progress
        self._summary: score_op.ScoreSummary | None = None

    def __iter__(self):
        try:
            for msg in self._call:
                kind = msg.WhichOneof("payload")
                if kind == "chunk":
                    self.chunks += 1
                    for m in msg.chunk.scores:
                        yield m.id, m.score
                elif kind == "summary":
                    self._summary = score_op.ScoreSummary.from_proto(msg)
                    self.summary = self._summary.to_json()
                elif kind == "progress":
                    self.progress.append(msg.progress.message)
                    if self.on_progress is not None:
                        self.on_progress(msg.progress.message)
        except grpc.RpcError as exc:
            raise SegsrvRpcError.from_rpc_error(exc) from None

    def collect(self) -> ScoreResult:
        pairs = list(self)
        if self._summary is None:
            raise SegsrvRpcError(grpc.StatusCode.UNKNOWN, "the server ended ScoreSegment without its summary")
        return ScoreResult.from_stream(self._summary, [i for i, _ in pairs], [s for _, s in pairs])

    def cancel(self) -> None:
        self._call.cancel()


class ExportStream:
    """The ids of an ExportMembers call as they arrive (text).

    `total` is the number of rows matching the condition (reading it waits for the first message);
    `snapshot` / `version` name what answered; `ranked` is true when the request named a target
    (the ids then come best first, each with its score). Iterating yields ids; `chunks()` yields
    (ids, scores or None) lists per chunk; `members()` yields (id, score or None). `returned` and
    `chunks_received` count what has arrived. A failed call raises SegsrvRpcError (reading `total`
    or while iterating); `cancel()` ends the call early. A stream is read once. `progress` lists the
    server's progress lines (a ranked export whose logistic model is fitted first says so in its first
    message; none when nothing is fitted), each also passed to `on_progress` when set; they are known
    once the first message is read (`total`)."""

    def __init__(self, call, ranked: bool = False, on_progress=None):
        self._call = call
        self._messages = iter(call)
        self._first = None
        self.ranked = ranked
        self.returned = 0
        self.chunks_received = 0
        self.progress: list[str] = []
        self.on_progress = on_progress

    def _header(self):
        if self._first is None:
            try:
                self._first = next(self._messages)
            except grpc.RpcError as exc:
                raise SegsrvRpcError.from_rpc_error(exc) from None
            except StopIteration:
                raise SegsrvRpcError(grpc.StatusCode.UNKNOWN,
                                     "the server ended the export without its total") from None
            self._note_progress(self._first)
        return self._first

    def _note_progress(self, msg) -> None:
        if msg.progress:
            for line in msg.progress.splitlines():
                self.progress.append(line)
                if self.on_progress is not None:
                    self.on_progress(line)

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
                self._note_progress(msg)
                if msg.progress and not msg.ids:
                    continue  # a progress line only
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


