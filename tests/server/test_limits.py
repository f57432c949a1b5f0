"""Capacity limits: concurrent RPCs beyond the limit are refused at once, message sizes, keepalive options."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from segsrv.server.app import Keepalive, create_server
from segsrv.server.options import ConfigError, server_options
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb


class SlowCount(grpc.ServerInterceptor):
    """Test-only slow path: a Count whose metadata has x-test-slow blocks on `release` in its handler thread."""

    def __init__(self):
        self.release = threading.Event()
        self.running = 0
        self.lock = threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.endswith("/Count") or \
                ("x-test-slow", "1") not in tuple(details.invocation_metadata or ()):
            return handler
        inner = handler.unary_unary

        def behavior(request, context):
            with self.lock:
                self.running += 1
            self.release.wait(30)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(behavior, handler.request_deserializer,
                                                   handler.response_serializer)


def test_calls_beyond_max_concurrent_rpcs_are_refused_at_once_not_queued(petnord_root, start_server):
    slow = SlowCount()
    # 2 handler threads, 4 RPCs in progress at most: 2 run, 2 wait for a thread, the 5th is refused
    r = start_server(petnord_root, max_workers=2, max_concurrent_rpcs=4, interceptors=[slow])
    count = pb.CountRequest(universe="customers")
    slow_calls = [r.stub.Count.future(count, timeout=60, metadata=(("x-test-slow", "1"),)) for _ in range(4)]
    try:
        deadline = time.monotonic() + 20
        while slow.running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.running == 2  # both handler threads are busy; two calls wait in the queue
        time.sleep(0.3)  # let the server take in the two queued calls
        refused = []
        for _ in range(3):
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                r.stub.Count(count, timeout=20)
            refused.append(time.perf_counter() - t0)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "Concurrent RPC limit exceeded" in err.value.details()
        assert max(refused) < 2.0  # answered at once, not after the slow calls
        assert slow.running == 2 and not any(f.done() for f in slow_calls)
    finally:
        slow.release.set()
    assert [f.result().row_count for f in slow_calls] == [3000] * 4
    assert r.stub.Count(count, timeout=20).row_count == 3000  # capacity is back


def test_calls_whose_deadline_passes_in_the_queue_do_no_work(petnord_root, start_server, monkeypatch):
    """A generous concurrency limit is safe: a call still waiting for a handler thread when its
    deadline passes is dropped when it reaches one, before any engine work."""
    from segsrv import service as servicer  # the service calls the engine

    engine_calls = []
    real_relate = servicer.relate
    monkeypatch.setattr(servicer, "relate", lambda *a, **k: engine_calls.append(1) or real_relate(*a, **k))
    slow = SlowCount()
    r = start_server(petnord_root, max_workers=1, max_concurrent_rpcs=16, interceptors=[slow])
    blocker = r.stub.Count.future(pb.CountRequest(universe="customers"), timeout=60, metadata=(("x-test-slow", "1"),))
    try:
        deadline = time.monotonic() + 20
        while slow.running < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.running == 1  # the only handler thread is busy
        churned = c.Condition(term=c.Term(field="churned", value="true"))
        queued = [r.stub.Relate.future(pb.RelateRequest(universe="customers", condition=churned), timeout=0.3)
                  for _ in range(3)]
        for f in queued:
            with pytest.raises(grpc.RpcError) as err:
                f.result()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        slow.release.set()
    assert blocker.result().row_count == 3000
    answer = r.stub.Relate(pb.RelateRequest(universe="customers", condition=churned), timeout=20)
    assert answer.condition_count > 0
    assert len(engine_calls) == 1  # only the last call, which had time, reached the engine


def test_an_unbounded_queue_is_refused(petnord_root):
    with pytest.raises(ValueError, match="without bound"):
        create_server(petnord_root, max_concurrent_rpcs=None)
    with pytest.raises(ValueError, match="max_concurrent_rpcs"):
        create_server(petnord_root, max_concurrent_rpcs=0)


def test_message_size_limits(petnord_root, start_server):
    r = start_server(petnord_root, max_receive_message_bytes=4096, max_send_message_bytes=2048)
    churned = c.Condition(term=c.Term(field="churned", value="true"))
    # a request over the receive limit
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Relate(pb.RelateRequest(universe="customers", fields=["x" * 5000]), timeout=20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a response over the send limit
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Relate(pb.RelateRequest(universe="customers", condition=churned, limit=200), timeout=20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # within both
    assert r.stub.Count(pb.CountRequest(universe="customers", condition=churned), timeout=20).count
    with pytest.raises(ValueError, match="at least 1 KiB"):
        create_server(petnord_root, max_send_message_bytes=10)


def test_server_options_set_the_documented_keepalive_and_reuseport():
    opts = dict(server_options(reuse_port=False, max_receive_message_bytes=4 << 20, max_send_message_bytes=64 << 20,
                               keepalive=Keepalive()))
    assert opts["grpc.so_reuseport"] == 0
    assert opts["grpc.keepalive_time_ms"] == 60_000 and opts["grpc.keepalive_timeout_ms"] == 20_000
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert opts["grpc.keepalive_permit_without_calls"] == 1 and opts["grpc.http2.max_ping_strikes"] == 2
    assert "grpc.max_connection_age_ms" not in opts
    aged = dict(Keepalive(max_connection_age=300, max_connection_age_grace=5).grpc_options())
    assert aged["grpc.max_connection_age_ms"] == 300_000 and aged["grpc.max_connection_age_grace_ms"] == 5_000
    assert dict(server_options(reuse_port=True, max_receive_message_bytes=1 << 20, max_send_message_bytes=1 << 20,
                               keepalive=Keepalive()))["grpc.so_reuseport"] == 1
    with pytest.raises(ConfigError, match="keepalive time must be positive"):
        Keepalive(time=0).check()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: expected at least 1, got 0"),
    (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs: expected at least 1, got 0"),
    (["--max-workers", "0"], "--max-workers: expected at least 1"),
    (["--reload-interval", "-1"], "--reload-interval: expected 0 (never) or more seconds"),
    (["--keep-versions", "-2"], "--keep-versions: expected 0 or more"),
    (["--keepalive-time", "0"], "keepalive time must be positive"),
    (["--metrics-port", "70000"], "--metrics-port: expected a port number"),
])
def test_serve_refuses_bad_limits_before_serving(petnord_root, capsys, args, message):
    from segsrv.cli import main

    assert main(["serve", "--snapshots", str(petnord_root), "--port", "0", *args]) == 1
    assert f"segsrv: error: {message}" in capsys.readouterr().err
