"""Prometheus metrics on their own port, JSON logs with a request id per RPC (also in trailing metadata)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

import segsrv.service as service_mod
from segsrv.server.app import BindError, create_server
from segsrv.server.logs import JsonFormatter, configure_logging, context_filter
from segsrv.server.registry import SnapshotRegistry
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def churned() -> c.Condition:
    return c.Condition(term=c.Term(field="churned", value="true"))


def test_metrics_count_requests_by_method_and_code_with_latency(petnord_root, petnord_snapshot, start_server):
    r = start_server(petnord_root, metrics_port=0)
    assert r.server.metrics_port
    for _ in range(2):
        r.stub.Count(pb.CountRequest(universe="customers", condition=churned()), timeout=10)
    with pytest.raises(grpc.RpcError):
        r.stub.Count(pb.CountRequest(universe="customers", condition=c.Condition(
            term=c.Term(field="regoin", value="x"))), timeout=10)
    r.stub.Relate(pb.RelateRequest(universe="customers", condition=churned(), limit=3), timeout=30)
    health_pb2_grpc.HealthStub(r.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    m = scrape(r.server.metrics_port)
    assert value(m, "segsrv_requests_total", method="Count", code="OK") == 2
    assert value(m, "segsrv_requests_total", method="Count", code="INVALID_ARGUMENT") == 1
    assert value(m, "segsrv_requests_total", method="Relate", code="OK") == 1
    assert not [k for k in m if k[0] == "segsrv_requests_total" and "Check" in str(k)]  # health is not counted
    assert value(m, "segsrv_request_duration_seconds_count", method="Count") == 3
    assert value(m, "segsrv_request_duration_seconds_bucket", method="Count", le="+Inf") == 3
    assert value(m, "segsrv_requests_in_flight") == 0
    from segsrv.server.options import DEFAULT_MAX_CONCURRENT_RPCS

    assert value(m, "segsrv_max_concurrent_rpcs") == DEFAULT_MAX_CONCURRENT_RPCS
    v = petnord_snapshot.version
    assert value(m, "segsrv_snapshot_info", snapshot="petnord", version=v, state="current") == 1
    assert value(m, "segsrv_snapshot_refs", snapshot="petnord", version=v) == 0
    assert value(m, "segsrv_snapshot_reloads_total", snapshot="petnord", result="success") == 1
    assert value(m, "segsrv_snapshot_age_seconds", snapshot="petnord") >= 0
    assert value(m, "segsrv_snapshot_loaded_timestamp_seconds", snapshot="petnord") > 1.7e9
    assert value(m, "process_resident_memory_bytes") > 0


def test_metrics_follow_reloads_and_refusals(petnord_root, tmp_path, start_server):
    shutil.copytree(petnord_root / "petnord", tmp_path / "petnord")
    v1 = (tmp_path / "petnord" / "CURRENT").read_text().strip()
    v2 = tmp_path / "petnord" / "v2"
    shutil.copytree(tmp_path / "petnord" / v1, v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["version"] = "v2"
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    registry = SnapshotRegistry(tmp_path)
    r = start_server(tmp_path, registry=registry, metrics_port=0)
    (tmp_path / "petnord" / "CURRENT").write_text("v2\n")
    assert registry.refresh() == ["petnord"]
    (tmp_path / "petnord" / "CURRENT").write_text("nope\n")
    assert registry.refresh() == []
    m = scrape(r.server.metrics_port)
    assert value(m, "segsrv_snapshot_reloads_total", snapshot="petnord", result="success") == 2
    assert value(m, "segsrv_snapshot_reloads_total", snapshot="petnord", result="failure") == 1
    assert value(m, "segsrv_snapshot_info", snapshot="petnord", version="v2", state="current") == 1
    assert value(m, "segsrv_snapshot_info", snapshot="petnord", version=v1, state="current") is None


def test_busy_metrics_port_is_an_error(petnord_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BindError, match="cannot serve metrics on 127.0.0.1"):
            create_server(petnord_root, metrics_port=s.getsockname()[1])


def test_metrics_endpoint_serves_only_metrics(petnord_root, start_server):
    r = start_server(petnord_root, metrics_port=0)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{r.server.metrics_port}/secrets", timeout=10)
    assert err.value.code == 404


# -- logs and request ids -------------------------------------------------------------------------


@pytest.fixture
def json_access_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(context_filter())
    logger = logging.getLogger("segsrv.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_every_rpc_has_a_request_id_in_trailing_metadata_and_the_json_access_log(petnord_root, start_server,
                                                                                 json_access_log,
                                                                                 petnord_snapshot):
    r = start_server(petnord_root)
    _, call = r.stub.Count.with_call(pb.CountRequest(universe="customers"), timeout=10)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 16
    _, call = r.stub.Count.with_call(pb.CountRequest(universe="customers"), timeout=10,
                                     metadata=(("x-request-id", "trace-42"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "trace-42"
    _, call = r.stub.Count.with_call(pb.CountRequest(universe="customers"), timeout=10,
                                     metadata=(("x-request-id", "bad id with spaces"),))
    replaced = dict(call.trailing_metadata())["x-request-id"]
    assert replaced != "bad id with spaces" and len(replaced) == 16
    # an error keeps its rich status details and gains the id
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Count(pb.CountRequest(universe="nope"), timeout=10, metadata=(("x-request-id", "trace-43"),))
    md = dict(err.value.trailing_metadata())
    assert md["x-request-id"] == "trace-43" and rpc_status.from_call(err.value) is not None
    # streams too
    stream = r.stub.ScoreSegment(pb.ScoreSegmentRequest(universe="customers", target_field="churned",
                                                        target_value="true", top_k=2),
                                 timeout=30, metadata=(("x-request-id", "trace-44"),))
    assert list(stream)[-1].summary.returned_count == 2
    assert dict(stream.trailing_metadata())["x-request-id"] == "trace-44"

    lines = json_access_log()
    by_id = {line["request_id"]: line for line in lines}
    assert {generated, "trace-42", replaced, "trace-43", "trace-44"} <= set(by_id)
    ok = by_id["trace-42"]
    assert ok["logger"] == "segsrv.access" and ok["method"] == "Count" and ok["code"] == "OK"
    assert ok["duration_ms"] >= 0 and ok["snapshot"] == f"petnord@{petnord_snapshot.version}"
    assert ok["peer"].startswith("ipv4:127.0.0.1:") and ok["level"] == "INFO" and ok["ts"].endswith("Z")
    assert by_id["trace-43"]["code"] == "INVALID_ARGUMENT"
    assert by_id["trace-44"]["method"] == "ScoreSegment" and by_id["trace-44"]["messages"] >= 2


def test_internal_errors_report_the_rpcs_request_id(petnord_root, start_server, monkeypatch):
    r = start_server(petnord_root)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service_mod, "count", broken)
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Count(pb.CountRequest(universe="customers"), timeout=10, metadata=(("x-request-id", "trace-500"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL and "trace-500" in err.value.details()
    infos = []
    for d in rpc_status.from_call(err.value).details:
        if d.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            d.Unpack(info)
            infos.append(info.request_id)
    assert infos == ["trace-500"]
    assert dict(err.value.trailing_metadata())["x-request-id"] == "trace-500"


def test_configure_logging_json_and_text():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", "info", stream=stream, worker=3)
        logging.getLogger("segsrv.test").info("hello %s", "there", extra={"fields": {"k": 1}})
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("segsrv.test").exception("failed")
        logging.getLogger("segsrv.test").debug("hidden")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        assert first["message"] == "hello there" and first["k"] == 1 and first["worker"] == 3
        assert first["level"] == "INFO" and "request_id" not in first
        assert second["level"] == "ERROR" and "ValueError: bad" in second["exception"]
        stream.truncate(0)
        stream.seek(0)
        configure_logging("text", "info", stream=stream)
        logging.getLogger("segsrv.test").info("plain")
        assert stream.getvalue().rstrip().endswith("INFO segsrv.test: plain")
        with pytest.raises(ValueError):
            configure_logging("xml")
    finally:
        from segsrv.server.logs import set_worker

        set_worker(None)
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_idle_connections_to_metrics_hold_no_thread_and_cannot_lock_scrapers_out(petnord_root, start_server):
    # issue 14: ThreadingHTTPServer held one thread per idle (or slowloris) connection, forever
    r = start_server(petnord_root, metrics_port=0)
    port = r.server.metrics_port
    scrape(port)
    before = threading.active_count()
    idle = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # slowloris: a head never finished
            idle.append(s)
        time.sleep(0.5)
        assert threading.active_count() - before <= 2, threading.active_count() - before
        m = scrape(port)  # answered at once, beside 200 open connections
        assert value(m, "segsrv_max_concurrent_rpcs") == 256
        # the oldest idle connections were closed to make room (at most 64 stay open)
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""
    finally:
        for s in idle:
            s.close()
