"""`segsrv serve --workers N`: forked workers on one port, crash restarts, graceful stop, busy ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Supervisor:
    """`segsrv serve --workers N ... --log-format json` with stderr in a file we can re-read."""

    def __init__(self, root: Path, log_path: Path, *args: str):
        self.root = root
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(root), "--port", "0",
             "--log-format", "json", *args],
            stderr=self.log, stdout=subprocess.DEVNULL, env=_env())
        self.address = self.wait_for_line(rf"serving {re.escape(str(root))} on (127\.0\.0\.1:\d+)").group(1)

    def text(self) -> str:
        return self.log_path.read_text()

    def records(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
        return out

    def wait_for_line(self, pattern: str, timeout: float = 90.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; log:\n{self.text()[-4000:]}")

    def worker_pids(self) -> dict[int, int]:
        """Latest pid of each worker index (from the supervisor's worker_started events)."""
        pids = {}
        for rec in self.records():
            if rec.get("event") == "worker_started":
                pids[rec["worker_index"]] = rec["worker_pid"]
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            for pid in self.worker_pids().values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_share_the_port_survive_a_killed_worker_and_stop_on_sigterm(petnord_root, tmp_path):
    sup = Supervisor(petnord_root, tmp_path / "serve.log", "--workers", "2", "--grace", "2", "--max-workers", "2")
    try:
        pids = sup.worker_pids()
        assert sorted(pids) == [0, 1] and sup.proc.pid not in pids.values()
        # the supervisor forked before any gRPC or numpy existed: one thread, neither library mapped
        assert len(os.listdir(f"/proc/{sup.proc.pid}/task")) == 1
        maps = Path(f"/proc/{sup.proc.pid}/maps").read_text()
        assert "cygrpc" not in maps and "numpy" not in maps and "_kernels" not in maps

        stop = threading.Event()
        results: list[tuple[float, str]] = []  # (time, "ok" | code)
        lock = threading.Lock()

        def client() -> None:
            with grpc.insecure_channel(sup.address) as channel:
                stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
                while not stop.is_set():
                    try:
                        # wait_for_ready: a call made while this channel reconnects (its worker was just
                        # killed) waits for a live worker instead of failing fast; only calls already in
                        # flight on the killed worker can fail (docs/server.md, multi-process mode)
                        got = stub.Count(pb.CountRequest(universe="customers"), timeout=20, wait_for_ready=True)
                        outcome = "ok" if got.row_count == 3000 else "wrong"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name
                    with lock:
                        results.append((time.monotonic(), outcome))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while len(results) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            t_kill = time.monotonic()
            sup.wait_for_line(r'"event": "worker_exited".*"worker_index": 0', timeout=30)
            deadline = time.monotonic() + 60
            while sup.worker_pids()[0] == killed and time.monotonic() < deadline:
                time.sleep(0.05)
            new_pid = sup.worker_pids()[0]
            assert new_pid != killed and _alive(new_pid)
            sup.wait_for_line(rf'"event": "worker_ready".*"worker_pid": {new_pid}', timeout=60)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        failed = [o for _, o in results if o != "ok"]
        # only calls in flight on the killed worker may fail: at most one per client thread
        assert len(failed) <= len(threads) and set(failed) <= {"UNAVAILABLE"}, failed
        assert sum(1 for t, o in results if o == "ok" and t > t_kill) >= 10  # serving went on meanwhile
        assert "wrong" not in [o for _, o in results]
        # fresh connections reach the new worker too
        for _ in range(16):
            with grpc.insecure_channel(sup.address) as channel:
                segsrv_pb2_grpc.SegmentationServiceStub(channel).Count(pb.CountRequest(universe="customers"),
                                                                       timeout=20)
        served_by = {rec.get("pid") for rec in sup.records() if rec.get("event") == "rpc"}
        assert {new_pid, pids[1]} <= served_by

        # SIGTERM: every worker drains and exits, then the supervisor exits 0
        workers = list(sup.worker_pids().values())
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(timeout=60) == 0
        assert not [p for p in workers if _alive(p)]
        text = sup.text()
        assert text.count('received SIGTERM: NOT_SERVING') == 2 and '"message": "stopped"' in text
    finally:
        sup.close()


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_an_error_with_or_without_workers(petnord_root, workers):
    with _busy_port() as s:
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", str(port),
             "--workers", workers],
            capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"segsrv: error: cannot listen on 127.0.0.1:{port}: the port is in use" in proc.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor(petnord_root):
    with _busy_port() as s:
        metrics_port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", "0",
             "--workers", "2", "--metrics-port", str(metrics_port)],
            capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in proc.stderr
    assert "failed to start" in proc.stderr


def test_workers_check_their_flags_before_forking(petnord_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", "0",
         "--workers", "2", "--tokens", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1
    assert "--tokens: cannot read" in proc.stderr and "worker 0 started" not in proc.stderr
