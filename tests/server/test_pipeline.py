"""The request pipeline's per-RPC work: handlers wrapped once per method, request ids without a syscall."""

from __future__ import annotations

import os
import re

import grpc
import pytest

from segsrv.server import logs
from segsrv.server.pipeline import MAX_WRAPPED_HANDLERS, RequestPipeline
from segsrv.server.registry import SnapshotRegistry
from segsrv.server.streams import StreamGuard
from segsrv.v1 import segsrv_pb2 as pb

SERVICE = "segsrv.v1.SegmentationService"


class Details:
    def __init__(self, method: str):
        self.method = method
        self.invocation_metadata = ()


class Context:
    """The parts of grpc.ServicerContext the pipeline uses."""

    def __init__(self):
        self.trailing = ()

    def invocation_metadata(self):
        return ()

    def set_trailing_metadata(self, md):
        self.trailing = tuple(md)

    def trailing_metadata(self):
        return self.trailing

    def code(self):
        return None

    def is_active(self):
        return True

    def peer(self):
        return "ipv4:127.0.0.1:1"


def handler_answering(value: int):
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: pb.CountResponse(count=value),
        request_deserializer=pb.CountRequest.FromString, response_serializer=pb.CountResponse.SerializeToString)


@pytest.fixture
def pipeline(tmp_path):
    return RequestPipeline(SERVICE, SnapshotRegistry(str(tmp_path)), StreamGuard(1, None))


def call(wrapped) -> int:
    return wrapped.unary_unary(pb.CountRequest(), Context()).count


def test_a_methods_handler_is_wrapped_once_and_answers_through_the_pipeline(pipeline):
    handler = handler_answering(7)
    first = pipeline.intercept_service(lambda d: handler, Details(f"/{SERVICE}/Count"))
    second = pipeline.intercept_service(lambda d: handler, Details(f"/{SERVICE}/Count"))
    assert first is second and first is not handler and call(first) == 7
    # the same handler object under another method is that method's own wrapper (its name in logs and metrics)
    other = pipeline.intercept_service(lambda d: handler, Details(f"/{SERVICE}/Relate"))
    assert other is not first and call(other) == 7


def test_a_fresh_handler_per_call_is_never_answered_by_a_stale_wrapper(pipeline):
    # an inner interceptor may return a new handler every time: each call runs its own
    answers = [call(pipeline.intercept_service(lambda d, v=v: handler_answering(v), Details(f"/{SERVICE}/Count")))
               for v in range(MAX_WRAPPED_HANDLERS + 10)]
    assert answers == list(range(MAX_WRAPPED_HANDLERS + 10))


def test_other_services_and_unknown_methods_pass_through(pipeline):
    handler = handler_answering(1)
    assert pipeline.intercept_service(lambda d: handler, Details("/grpc.health.v1.Health/Check")) is handler
    assert pipeline.intercept_service(lambda d: None, Details(f"/{SERVICE}/Nope")) is None


def test_request_ids_are_16_hex_digits_distinct_and_differ_in_a_forked_worker():
    ids = [logs.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker after the supervisor's fork
        try:
            os.write(write, ",".join(logs.new_request_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [logs.new_request_id() for _ in range(5)]
    assert len(child) == 5 and not set(child) & set(parent)
    # a client's own safe id is kept, an unsafe one replaced
    assert logs.new_request_id("trace-42") == "trace-42"
    assert logs.new_request_id("bad id") != "bad id"


class RecordingServer:
    """The two grpc.Server methods `register` calls."""

    def __init__(self):
        self.generic = []
        self.registered = {}

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name, handlers):
        self.registered[service_name] = handlers


def test_register_puts_every_method_wrapped_where_grpc_finds_it(pipeline, monkeypatch):
    """Without other interceptors the server adds the service's handlers wrapped once (no interceptor
    runs per call): every method of the service is registered, and a call goes through the pipeline."""
    from segsrv.v1 import segsrv_pb2_grpc

    class Servicer(segsrv_pb2_grpc.SegmentationServiceServicer):
        def Count(self, request, context):
            return pb.CountResponse(count=7)

    server = RecordingServer()
    pipeline.register(server, segsrv_pb2_grpc.add_SegmentationServiceServicer_to_server, Servicer())
    methods = set(pb.DESCRIPTOR.services_by_name["SegmentationService"].methods_by_name)
    assert set(server.registered[SERVICE]) == methods
    assert server.generic[0].service(Details(f"/{SERVICE}/Count")) is server.registered[SERVICE]["Count"]
    seen = []

    def start(self, method, context):  # the pipeline's first step: record the call, go no further
        seen.append(method)
        raise RuntimeError("stop")

    monkeypatch.setattr(RequestPipeline, "_start", start)
    with pytest.raises(RuntimeError, match="stop"):
        server.registered[SERVICE]["Count"].unary_unary(pb.CountRequest(), Context())
    assert seen == ["Count"]
