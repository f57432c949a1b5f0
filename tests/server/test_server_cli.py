"""`segsrv serve` as a subprocess: it serves, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for_address(proc, root, timeout=30.0) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        m = re.fullmatch(rf"serving {re.escape(str(root))} on (127\.0\.0\.1:\d+)\n", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no 'serving ROOT on HOST:PORT' line; stderr: {''.join(seen)}")


def test_serve_answers_and_stops_gracefully_on_sigterm(petnord_root):
    proc = subprocess.Popen(
        [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", "0",
         "--max-workers", "2", "--grace", "2"],
        stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        address = _wait_for_address(proc, petnord_root)
        with grpc.insecure_channel(address) as channel:
            stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
            got = stub.Count(pb.CountRequest(universe="customers"), timeout=10)
            assert got.count == got.row_count == 3000 and got.info.snapshot_name == "petnord"
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "received SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_on_a_busy_port_exits_1(served, petnord_root):
    proc = subprocess.run(
        [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", str(served.port)],
        capture_output=True, text=True, env=_env(), timeout=60,
    )
    assert proc.returncode == 1
    assert f"segsrv: error: cannot listen on 127.0.0.1:{served.port}: the port is in use" in proc.stderr
