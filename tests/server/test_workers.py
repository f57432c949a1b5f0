"""`segsrv serve --workers N`: forked workers on one port, crash restarts, graceful stop, busy ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc
from support import ServeProcess, process_alive, repo_env


class _CallLoop:
    """Client threads calling Count in a loop; records (start, end, "ok" | status code) per call."""

    def __init__(self, call, n_threads: int = 4):
        self.call = call  # () -> row count; raises grpc.RpcError or SegsrvRpcError
        self.stop = threading.Event()
        self.results: list[tuple[float, float, str]] = []
        self.errors: list[tuple[float, float, str]] = []  # (start, end, "CODE: details") of each failure
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(n_threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            error = None
            try:
                outcome = "ok" if self.call() == 3000 else "wrong"
            except grpc.RpcError as exc:
                outcome, error = exc.code().name, f"{exc.code().name}: {exc.details()}"
            except SegsrvRpcError as exc:
                outcome, error = exc.code.name, f"{exc.code.name}: {exc}"
            t1 = time.monotonic()
            with self._lock:
                self.results.append((t0, t1, outcome))
                if error is not None:
                    self.errors.append((t0, t1, error))

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.results) >= n, self.results

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _what_happened(loop: _CallLoop, t_kill: float, sup: ServeProcess) -> str:
    """For a failed assertion: each failed call (seconds from the kill, its status and details) and the
    supervisor's worker events (a second worker lost, a missed probe, ...)."""
    failed = [f"  {t0 - t_kill:+.3f} .. {t1 - t_kill:+.3f} s  {error}" for t0, t1, error in loop.errors[:20]]
    events = [f"  {rec.get('ts')} {rec.get('message')}" for rec in sup.records()
              if str(rec.get("event", "")).startswith(("worker_", "probe_"))]
    return "\n".join([f"{len(loop.errors)} failed calls of {len(loop.results)}:", *failed,
                      "supervisor events:", *events])


def _serving_pid(sup: ServeProcess) -> int:
    """The worker pid that served the last 20 calls logged (the loop has made at least 40)."""
    pids = {rec.get("pid") for rec in [r for r in sup.records() if r.get("event") == "rpc"][-20:]}
    assert len(pids) == 1, pids  # the loop's threads share one channel, so one connection
    return pids.pop()


def _kill_serving_worker(sup: ServeProcess, call) -> tuple[_CallLoop, float, int, int]:
    """Loop `call` in 4 threads, SIGKILL the worker serving them, wait for its replacement to be
    ready and 0.5 s more; returns (the loop, stopped; kill time; killed pid; replacement pid)."""
    loop = _CallLoop(call)
    try:
        loop.wait_for(40)
        pid = _serving_pid(sup)
        index = next(i for i, p in sup.worker_pids().items() if p == pid)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        sup.wait_for_line(rf'"event": "worker_exited".*"worker_pid": {pid}', timeout=30)
        deadline = time.monotonic() + 60
        while sup.worker_pids()[index] == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        new_pid = sup.worker_pids()[index]
        assert new_pid != pid and process_alive(new_pid)
        sup.wait_for_line(rf'"event": "worker_ready".*"worker_pid": {new_pid}', timeout=60)
        time.sleep(0.5)
    finally:
        loop.join()
    return loop, t_kill, pid, new_pid


def test_workers_share_the_port_survive_a_killed_worker_and_stop_on_sigterm(petnord_root, tmp_path):
    sup = ServeProcess(petnord_root, tmp_path / "serve.log", "--workers", "2", "--grace", "2", "--max-workers", "2")
    try:
        pids = sup.worker_pids()
        assert sorted(pids) == [0, 1] and sup.proc.pid not in pids.values()
        # the supervisor forked before any gRPC or numpy existed: one thread, neither library mapped
        assert len(os.listdir(f"/proc/{sup.proc.pid}/task")) == 1
        maps = Path(f"/proc/{sup.proc.pid}/maps").read_text()
        assert "cygrpc" not in maps and "numpy" not in maps and "_kernels" not in maps

        # 1. the generated stub, no retry policy, one channel: kill the worker serving it
        with grpc.insecure_channel(sup.address) as channel:
            stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)

            def raw_count() -> int:
                # wait_for_ready: a call made while the channel reconnects waits for a live worker
                # instead of failing fast (docs/server.md, multi-process mode)
                return stub.Count(pb.CountRequest(universe="customers"), timeout=20, wait_for_ready=True).row_count

            loop, t_kill, killed, new_pid = _kill_serving_worker(sup, raw_count)
        failed = [(t0, t1, o) for t0, t1, o in loop.results if o != "ok"]
        assert {o for _, _, o in failed} <= {"UNAVAILABLE"}, _what_happened(loop, t_kill, sup)
        # Only calls sent on the killed worker's connection fail: those in flight when it died, and
        # those a thread sent in the instant before gRPC dropped the reset connection (its first
        # failure arrives a moment before the transport is closed). Once a call has succeeded on
        # the new connection, no later call fails.
        if failed:
            first_failure_end = min(t1 for _, t1, _ in failed)
            reconnected = min(t1 for t0, t1, o in loop.results if o == "ok" and t0 >= first_failure_end)
            assert not [f for f in failed if f[0] >= reconnected], (failed, reconnected)
        assert sum(1 for t0, _, o in loop.results if o == "ok" and t0 > t_kill) >= 10  # serving went on
        assert "wrong" not in [o for _, _, o in loop.results]

        # 2. SegsrvClient (retry policy proto/segsrv/v1/segsrv_grpc_service_config.json), no
        # wait_for_ready: kill the worker serving it; not one call fails
        with SegsrvClient(sup.address, timeout=20) as client:
            loop, t_kill, killed_again, _ = _kill_serving_worker(
                sup, lambda: client.count({"from": "customers"})["n_rows"])
        assert [o for _, _, o in loop.results if o != "ok"] == [], _what_happened(loop, t_kill, sup)
        assert sum(1 for t0, _, o in loop.results if o == "ok" and t0 > t_kill) >= 10

        # fresh connections reach every worker, replacements included (a local subchannel pool:
        # channels to one target would otherwise share a connection that outlives its channel)
        since = len(sup.records())
        for _ in range(24):
            with grpc.insecure_channel(sup.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                segsrv_pb2_grpc.SegmentationServiceStub(channel).Count(pb.CountRequest(universe="customers"),
                                                                       timeout=20)
        served_by = {rec.get("pid") for rec in sup.records()[since:] if rec.get("event") == "rpc"}
        assert served_by == set(sup.worker_pids().values()), served_by
        assert {killed, killed_again}.isdisjoint(served_by) and new_pid in served_by | {killed_again}

        # SIGTERM: every worker drains and exits, then the supervisor exits 0
        workers = list(sup.worker_pids().values())
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(timeout=60) == 0
        assert not [p for p in workers if process_alive(p)]
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
            capture_output=True, text=True, env=repo_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"segsrv: error: cannot listen on 127.0.0.1:{port}: the port is in use" in proc.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor(petnord_root):
    with _busy_port() as s:
        metrics_port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", "0",
             "--workers", "2", "--metrics-port", str(metrics_port)],
            capture_output=True, text=True, env=repo_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in proc.stderr
    assert "failed to start" in proc.stderr


def test_workers_check_their_flags_before_forking(petnord_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(petnord_root), "--port", "0",
         "--workers", "2", "--tokens", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, env=repo_env(), timeout=120)
    assert proc.returncode == 1
    assert "--tokens: cannot read" in proc.stderr and "worker 0 started" not in proc.stderr


def test_a_stopped_worker_is_noticed_killed_and_replaced(petnord_root, tmp_path):
    # issue 14: a SIGSTOPped worker was never noticed; the kernel kept giving it half the new connections
    sup = ServeProcess(petnord_root, tmp_path / "serve.log", "--workers", "2", "--grace", "1", "--no-warm",
                       "--probe-interval", "0.5", "--probe-timeout", "1", "--probe-failures", "2")
    try:
        stopped = sup.worker_pids()[0]
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.monotonic()
        sup.wait_for_line(rf'"event": "worker_unresponsive".*"worker_pid": {stopped}', timeout=15)
        detected = time.monotonic() - t_stop
        sup.wait_for_line(rf'"event": "worker_exited".*"worker_pid": {stopped}', timeout=10)
        deadline = time.monotonic() + 30
        while sup.worker_pids()[0] == stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        replacement = sup.worker_pids()[0]
        sup.wait_for_line(rf'"event": "worker_ready".*"worker_pid": {replacement}', timeout=30)
        assert not process_alive(stopped) and detected < 6, detected
        # every new connection is served, and answers health
        for _ in range(20):
            with grpc.insecure_channel(sup.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
                assert stub.Count(pb.CountRequest(universe="customers"), timeout=5).row_count == 3000
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(timeout=30) == 0
    finally:
        sup.close()


def test_serve_runs_one_worker_per_cpu_by_default(petnord_root, tmp_path):
    """Without --workers, `segsrv serve` runs one worker per CPU it may run on (issue 16: one Python process
    serves about one core); on a one-CPU machine that is one plain process. Every worker answers."""
    from segsrv.cli import default_workers

    cpus = len(os.sched_getaffinity(0))
    assert default_workers() == cpus
    sup = ServeProcess(petnord_root, tmp_path / "serve.log", "--grace", "1", "--no-warm", default_workers=True)
    try:
        pids = sup.worker_pids()
        assert len(pids) == (cpus if cpus > 1 else 0)  # worker_started events: the supervisor's, per worker
        from segsrv.snapshot.reader import open_snapshot

        rows = open_snapshot(petnord_root).universe("customers").n_rows
        answered = set()
        for _ in range(4 * max(cpus, 1)):  # one channel per call: the kernel spreads connections over workers
            with SegsrvClient(sup.address) as client:
                answered.add(client.count({"from": "customers"})["count"])
        assert answered == {rows}
    finally:
        sup.close()
