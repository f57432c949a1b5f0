"""SegsrvClient's retry policy: UNAVAILABLE is sent again (every segsrv method is read-only), within
the call's deadline; other codes are not; `retry=False` turns it off."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from segsrv.client import SERVICE_CONFIG, SegsrvClient, SegsrvRpcError
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc as pb_grpc

CANONICAL = Path(__file__).resolve().parents[2] / "proto" / "segsrv" / "v1" / "segsrv_grpc_service_config.json"


def test_the_policy_is_the_contracts():
    assert SERVICE_CONFIG == json.loads(CANONICAL.read_text())
    policy = SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and 2 <= policy["maxAttempts"] <= 5


class Flaky(pb_grpc.SegmentationServiceServicer):
    """Count fails with `code` for the first `failures` attempts, then answers; attempts are counted."""

    def __init__(self, failures: int, code=grpc.StatusCode.UNAVAILABLE, delay: float = 0.0):
        self.failures = failures
        self.delay = delay
        self.code = code
        self.attempts: list[float] = []
        self._lock = threading.Lock()

    def Count(self, request, context):
        with self._lock:
            self.attempts.append(time.monotonic())
            n = len(self.attempts)
        time.sleep(self.delay)
        if n <= self.failures:
            context.abort(self.code, f"attempt {n} fails")
        return pb.CountResponse(universe=request.universe, row_count=3000, count=3000)


@pytest.fixture
def flaky_server():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_unavailable_is_retried_with_backoff(flaky_server):
    servicer = Flaky(failures=3)
    with SegsrvClient(flaky_server(servicer), timeout=10) as client:
        assert client.count({"from": "customers"})["n_rows"] == 3000
    assert len(servicer.attempts) == 4  # maxAttempts: 3 failures, then the answer
    gaps = [b - a for a, b in zip(servicer.attempts, servicer.attempts[1:])]
    # gRPC draws each back-off uniformly from [0, min(0.1 s * 2^k, 1 s)): jittered, never longer
    assert all(g < 1.0 + 0.5 for g in gaps), gaps


def test_retries_stop_after_max_attempts(flaky_server):
    servicer = Flaky(failures=100)
    with SegsrvClient(flaky_server(servicer), timeout=10) as client:
        with pytest.raises(SegsrvRpcError) as err:
            client.count({"from": "customers"})
    max_attempts = SERVICE_CONFIG["methodConfig"][0]["retryPolicy"]["maxAttempts"]
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and f"attempt {max_attempts} fails" in str(err.value)
    assert len(servicer.attempts) == max_attempts


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL])
def test_other_codes_are_not_retried(flaky_server, code):
    servicer = Flaky(failures=1, code=code)
    with SegsrvClient(flaky_server(servicer), timeout=10) as client:
        with pytest.raises(SegsrvRpcError) as err:
            client.count({"from": "customers"})
    assert err.value.code == code and len(servicer.attempts) == 1


def test_retry_false_sends_once(flaky_server):
    servicer = Flaky(failures=1)
    with SegsrvClient(flaky_server(servicer), timeout=10, retry=False) as client:
        with pytest.raises(SegsrvRpcError) as err:
            client.count({"from": "customers"})
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and len(servicer.attempts) == 1


def test_the_deadline_bounds_the_retries(flaky_server):
    servicer = Flaky(failures=100, delay=0.3)
    with SegsrvClient(flaky_server(servicer), timeout=0.5) as client:
        t0 = time.monotonic()
        with pytest.raises(SegsrvRpcError) as err:
            client.count({"from": "customers"})
        elapsed = time.monotonic() - t0
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # 0.3 s per attempt: a second one starts before the 0.5 s deadline, a third cannot
    assert 1 <= len(servicer.attempts) <= 2 and elapsed < 1.5


def test_a_service_config_in_channel_options_wins(flaky_server):
    servicer = Flaky(failures=1)
    no_retry = json.dumps({"methodConfig": [{"name": [{"service": "segsrv.v1.SegmentationService"}]}]})
    with SegsrvClient(flaky_server(servicer), timeout=10,
                      channel_options=[("grpc.service_config", no_retry)]) as client:
        with pytest.raises(SegsrvRpcError):
            client.count({"from": "customers"})
    assert len(servicer.attempts) == 1
