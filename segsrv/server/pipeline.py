"""What runs around every SegmentationService handler (one server interceptor).

For each RPC, in order: a request id (``logs``), metrics (in flight, then
count and latency by status code), token authentication and scope check
(``auth``; UNAUTHENTICATED / PERMISSION_DENIED through the errors table),
the request's bytes decoded (INVALID_ARGUMENT when they are not a message of
the method's request type: gRPC alone would answer INTERNAL), a snapshot
request scope (the versions the handler resolves stay served
until the RPC ends, ``registry``), the handler, then one access-log line
(logger ``segsrv.access``) and the trailing metadata ``x-request-id``
(added to whatever the handler set, e.g. a rich error's status details).

Streaming methods (ScoreSegment, ExportMembers) also take a slot of the
``StreamGuard`` (``streams``) and run on its threads; each message handed to
gRPC is bracketed so the guard's watchdog can cancel a stream whose client
stopped reading.

Health and reflection are passed through untouched: they are open (no
token), not counted and not logged. The interceptor itself only wraps
handlers: grpc calls ``intercept_service`` on its polling thread, so nothing
slow happens there; the wrapped behaviour runs on the handler thread.

Without other interceptors the server does not install the pipeline as one:
``register`` puts the service's handlers, wrapped once, where grpc finds them
(``add_registered_method_handlers``), so no interceptor chain runs on the
polling thread per call (which every call waits for; measured in
bench/grpc_calls.py).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import grpc

from ..errors import QueryError
from . import errors
from .auth import TokenStore
from .logs import new_request_id, set_request_id
from .metrics import Metrics
from .registry import SnapshotRegistry
from .streams import StreamGuard

access_log = logging.getLogger("segsrv.access")

REQUEST_ID_KEY = "x-request-id"
MAX_WRAPPED_HANDLERS = 256


def _code_name(context) -> str:
    code = context.code()
    return "OK" if code is None else code.name


class RequestPipeline(grpc.ServerInterceptor):
    def __init__(self, service_name: str, registry: SnapshotRegistry, streams: StreamGuard, *,
                 tokens: TokenStore | None = None, metrics: Metrics | None = None, access_log_enabled: bool = True):
        self.prefix = f"/{service_name}/"
        self.registry = registry
        self.streams = streams
        self.tokens = tokens
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled
        # grpc calls intercept_service for every RPC on its one polling thread, which every RPC waits
        # for: each method's handler is wrapped once (keyed by the handler the chain returned)
        self._wrapped: dict[int, tuple] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method_path = handler_call_details.method
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler and cached[1] == method_path:
            return cached[2]
        wrapped = self._wrap_handler(handler, method_path)
        if len(self._wrapped) < MAX_WRAPPED_HANDLERS:  # an inner interceptor may make a handler per call
            self._wrapped[id(handler)] = (handler, method_path, wrapped)
        return wrapped

    def register(self, server: grpc.Server, add_servicer: Callable, servicer) -> None:
        """Add `servicer` to `server` as the generated `add_servicer` would, each handler wrapped by
        this pipeline once (instead of installing the pipeline as an interceptor)."""
        captured = _CapturedHandlers()
        add_servicer(servicer, captured)
        for service_name, handlers in captured.registered.items():
            wrapped = {m: self._wrap_handler(h, f"/{service_name}/{m}") for m, h in handlers.items()}
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, wrapped),))
            server.add_registered_method_handlers(service_name, wrapped)

    def _wrap_handler(self, handler, method_path: str):
        if handler is None or not method_path.startswith(self.prefix):
            return handler  # health, reflection: open and unwrapped
        method = method_path[len(self.prefix):]
        if handler.request_streaming or not (handler.unary_unary or handler.unary_stream):
            return handler  # SegmentationService has no client-streaming methods
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(
            self._wrap_stream(method, handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer)

    # -- one call ----------------------------------------------------------------

    def _start(self, method: str, context) -> "_Call":
        metadata = context.invocation_metadata() or ()
        client_id = next((v for k, v in metadata if k == REQUEST_ID_KEY), None)
        call = _Call(method, new_request_id(client_id if isinstance(client_id, str) else None), metadata)
        set_request_id(call.request_id)  # each RPC runs in its own contextvars.Context
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        if self.metrics is not None:
            self.metrics.started()
        return call

    def _admit(self, call: "_Call", request, context) -> None:
        """Check the token (aborts with UNAUTHENTICATED / PERMISSION_DENIED), then that the request could be
        decoded (INVALID_ARGUMENT), open the snapshot scope."""
        if self.tokens is not None:
            try:
                call.principal = self.tokens.authorize(call.metadata, call.method).name
            except Exception as exc:  # noqa: BLE001 - auth errors map through the table
                errors.abort(context, exc, method=call.method)
        if isinstance(request, _Undecodable):
            errors.abort(context, request.error(), method=call.method)
        call.scope = self.registry.request_scope()

    def _end(self, call: "_Call", context, failed: bool) -> None:
        versions: list[str] = []
        if call.scope is not None:
            versions = call.scope.versions
            call.scope.close()
        code = _code_name(context)
        if failed and code == "OK":
            # an exception without a status (grpc answers UNKNOWN), or a stream the client left
            code = "UNKNOWN" if context.is_active() else "CANCELLED"
        seconds = time.perf_counter() - call.t0
        md = tuple(context.trailing_metadata() or ())
        if not any(k == REQUEST_ID_KEY for k, _ in md):  # abort_with_status replaced it
            context.set_trailing_metadata(md + ((REQUEST_ID_KEY, call.request_id),))
        if self.metrics is not None:
            self.metrics.finished(call.method, code, seconds)
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            fields = {"event": "rpc", "method": call.method, "code": code, "duration_ms": round(seconds * 1e3, 3),
                      "peer": context.peer(), "request_id": call.request_id}
            if versions:
                fields["snapshot"] = versions[0] if len(versions) == 1 else versions
            if call.principal:
                fields["principal"] = call.principal
            if call.messages:
                fields["messages"] = call.messages
            access_log.info("%s %s %.1f ms", call.method, code, seconds * 1e3,
                            extra={"fields": fields, "request_id": call.request_id})

    def _wrap_unary(self, method: str, behavior: Callable):
        def wrapped(request, context):
            call = self._start(method, context)
            failed = True
            try:
                self._admit(call, request, context)
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._end(call, context, failed)

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable):
        def wrapped(request, context):
            call = self._start(method, context)
            failed = True
            try:
                self._admit(call, request, context)
                with self.streams.open(method, context, call.request_id) as stream:
                    for message in behavior(request, context):
                        call.messages += 1
                        stream.sending()
                        yield message  # gRPC sends it before asking for the next one
                        stream.done_sending()
                failed = False
            finally:
                self._end(call, context, failed)

        wrapped.experimental_thread_pool = self.streams.pool  # grpc runs the handler on the streams' pool
        return wrapped


class _CapturedHandlers:
    """Stands in for a grpc.Server while generated code adds a servicer: keeps its method handlers."""

    def __init__(self):
        self.registered: dict[str, dict] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        self.registered[service_name] = dict(method_handlers)


class _Undecodable:
    """A request whose bytes are not a message of the method's request type (truncated, not protobuf,
    nested deeper than the parser allows, invalid UTF-8 in a string, ...). gRPC answers a deserializer
    that raises with INTERNAL ("Exception deserializing request!"); the wrapped deserializer returns this
    instead, and the handler answers INVALID_ARGUMENT (reason INVALID_REQUEST) after authentication."""

    __slots__ = ("type_name", "reason")

    def __init__(self, type_name: str, reason: str):
        self.type_name = type_name
        self.reason = reason

    def error(self) -> QueryError:
        return QueryError(f"the request is not a valid {self.type_name} message: {self.reason}")


def _tolerant(deserializer: Callable | None) -> Callable | None:
    """`deserializer` (a message class's FromString), returning an _Undecodable instead of raising."""
    if deserializer is None:
        return None
    cls = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(cls, "DESCRIPTOR", None), "full_name", None) or "request"

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError, ...: the client's bytes
            reason = str(exc).replace(f"Error parsing message with type '{type_name}'", "").strip(": ")
            if "MaxDepth" in reason:  # upb's "Exceeded upb_DecodeOptions_MaxDepth"
                reason = "nested deeper than the protobuf parser allows (100 levels)"
            return _Undecodable(type_name, reason or type(exc).__name__)

    return deserialize


class _Call:
    __slots__ = ("method", "request_id", "metadata", "t0", "principal", "scope", "messages")

    def __init__(self, method: str, request_id: str, metadata=()):
        self.method = method
        self.request_id = request_id
        self.metadata = metadata
        self.t0 = time.perf_counter()
        self.principal: str | None = None
        self.scope = None
        self.messages = 0
