"""Soak test (issue 7): a long open-loop run at a fraction of the measured maximum throughput,
with the server's memory recorded all along.

    python bench/soak.py [--root ROOT] [--duration 600] [--fraction 0.8] [--max-duration 60]
                         [--max-concurrency 16] [--max-rps R] [--window 60] [--interval 10]
                         [--memory-warmup 120] [--connections 2] [--workers N] [--no-pin]
                         [--scenario clients/loadtest/scenarios/default.toml] [--out bench/results/soak]
    python bench/soak.py --replot DIR     # redraw DIR/soak.png and DIR/summary.txt from DIR/soak.json

Steps:

 1. Root. Default: bench/.data/assign-root (the 1M-customer demo snapshot with bench/assign.py's
    50-segment catalog) if it exists, else bench/.data/snap-1000000 (bench/common.py
    demo_snapshot). Unless --no-pin, the version each ROOT/NAME/CURRENT names is mirrored with
    hard links (no data copied) into a private temporary root, so that nothing publishing into
    the shared root during the soak (bench/assign.py applies its catalog there) hot-reloads the
    server under test: a reload maps and checksums a whole new version, which would show up as
    a memory step that is not a leak. Falls back to the shared root if hard links fail.
 2. Server. `python -m segsrv serve --snapshots ROOT --host 127.0.0.1 --port P` (a free port;
    otherwise the default flags: 4 handler threads, 256 concurrent RPCs, privacy floor k=10,
    access log on; `--workers N` if given), stderr to a temporary log. Ready when the gRPC
    health check says SERVING.
 3. Mix. The harness's default scenario. If the snapshot has no segment catalog (ListSegments
    empty), Assign is dropped (weight 0): it would only measure "no segments".
 4. Maximum throughput: a closed-loop run of the harness (clients/loadtest runner, as a library;
    one spawned load process with --connections channels) at --max-concurrency callers for
    --max-duration s after a 5 s warm-up. Max = its OK requests per second (--max-rps skips it).
 5. Soak: one open-loop run at --fraction x max for --duration s (uniform schedule, latency from
    the scheduled send: no coordinated omission), in a spawned load process. The harness keeps
    every request's (method, scheduled send, latency, status), so the run is cut into --window s
    windows by send time for p50 / p90 / p99 per window, and completions per window come from its
    exact per-second counters.
 6. Memory: a sampler thread reads the server's RSS every --interval s (psutil; with --workers the
    supervisor plus every worker: file pages shared by workers are then counted once per worker)
    from start to stop, with RssAnon / RssFile from /proc/PID/status (heap vs mapped snapshot
    pages), threads and open files; and, to tell the server's behaviour from a noisy machine: the
    CPU of the server, of the load generator and of every other process (the three busiest named),
    the machine's busy and steal time, CPU pressure (/proc/pressure/cpu) and load average, and a
    speed probe (CPU time of a fixed Python loop and of a numpy pass over 32 MB: constant unless
    the core itself gets slower). Per window the server's CPU per handled call is derived from its
    CPU time and the access log (the server log is digested into OUT/server-events.log).

Verdicts (soak phase only): zero errors; RSS growth < 5 % from the first sample at or after
--memory-warmup s (default 120: the snapshot's pages fault in as new requests touch them) to the
last one; p99 of the last window within 2x of the first window's (last / first <= 2).

Writes OUT/soak.json, OUT/soak.png, OUT/summary.txt, the harness reports of both runs
(OUT/max/, OUT/run/: report.json, summary.txt, report.png) and OUT/server-events.log (the
server's log without the per-RPC access lines, plus a count of access lines by status code).
Exit 0 when every verdict holds, 1 when one does not, 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT, REPO, RESULTS, demo_snapshot  # noqa: E402  (sets sys.path / PYTHONPATH)

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from clients.loadtest.report import build_report, relative_paths, summary_table, validate_report, write_report  # noqa: E402
from clients.loadtest.runner import LoadConfig, prepare, run_load  # noqa: E402
from clients.loadtest.scenario import load_scenario  # noqa: E402
from clients.loadtest.stats import STATUS_NAMES, percentile  # noqa: E402

DEFAULT_SCENARIO = REPO / "clients" / "loadtest" / "scenarios" / "default.toml"
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- root ----------------------------------------------------------------------------------------


def default_root() -> Path:
    root = DATA_ROOT / "assign-root"
    if any(root.glob("*/CURRENT")):
        return root
    return demo_snapshot(1_000_000)


def pin_root(root: Path) -> tuple[Path | None, dict]:
    """Mirror each ROOT/NAME/<CURRENT version> with hard links into a temporary root.

    Returns (temporary root or None when it could not be made, {name: version})."""
    names = [p.parent for p in sorted(root.glob("*/CURRENT"))]
    if (root / "CURRENT").exists():  # ROOT is itself one NAME directory
        names = [root]
    versions = {}
    tmp = Path(tempfile.mkdtemp(prefix="segsrv-soak-root-"))
    try:
        for src in names:
            version = (src / "CURRENT").read_text().strip()
            vdir = src / version
            if not vdir.is_dir():
                raise OSError(f"{src}/CURRENT names {version!r}, which is not a directory")
            dst = tmp / src.name / version
            for dirpath, _dirs, files in os.walk(vdir):
                rel = Path(dirpath).relative_to(vdir)
                (dst / rel).mkdir(parents=True, exist_ok=True)
                for f in files:
                    os.link(Path(dirpath) / f, dst / rel / f)
            (tmp / src.name / "CURRENT").write_text(version + "\n")
            versions[src.name] = version
        return tmp, versions
    except OSError as exc:
        log(f"cannot pin {root} with hard links ({exc}); serving the shared root")
        shutil.rmtree(tmp, ignore_errors=True)
        return None, {}


def git_state() -> dict:
    """The commit the server runs and whether its code (segsrv/) differs from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"head": git("rev-parse", "HEAD"), "segsrv_dirty": bool(git("status", "--porcelain", "--", "segsrv"))}


# --- server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, workers: int, log_path: Path):
        self.root = root
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.cmd: list[str] = []
        self.exit_code = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> float:
        """Start and wait for SERVING; returns seconds to ready. Retries once on a port race."""
        for attempt in range(3):
            self.port = free_port()
            self.cmd = [sys.executable, "-m", "segsrv", "serve", "--snapshots", str(self.root),
                        "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
            self._log = open(self.log_path, "ab")
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            try:
                self._wait_serving(timeout_s)
                return time.monotonic() - t0
            except _PortBusy:
                log(f"port {self.port} was taken; retrying")
                self.proc.wait()
                continue
        raise RuntimeError("could not find a free port")

    def _wait_serving(self, timeout_s: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    if "port is in use" in tail:
                        raise _PortBusy()
                    raise RuntimeError(f"segsrv serve exited with {self.proc.returncode}:\n{tail}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise RuntimeError(f"segsrv serve not SERVING after {timeout_s:.0f} s")

    def stop(self, grace_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            self.exit_code = None if self.proc is None else self.proc.returncode
            return self.exit_code
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log("server did not stop on SIGTERM; killing it")
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self._log.close()
        return self.exit_code


class _PortBusy(Exception):
    pass


def count_segments(addr: str) -> int:
    import grpc

    from segsrv.v1 import segsrv_pb2 as pb
    from segsrv.v1 import segsrv_pb2_grpc as pb_grpc

    with grpc.insecure_channel(addr) as ch:
        resp = pb_grpc.SegmentationServiceStub(ch).ListSegments(pb.ListSegmentsRequest(), timeout=30)
        return len(resp.segments)


# --- memory sampler --------------------------------------------------------------------------------


def _proc_status_kb(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def psi_cpu_some_avg10() -> float | None:
    """CPU pressure (PSI): share of the last 10 s in which some runnable task waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


_PROBE_ARRAY = None


def speed_probe() -> dict:
    """CPU time (this thread's, ms) of a fixed piece of work: pure Python, and a numpy pass over 32 MB.
    On an otherwise idle core these are constant; when they rise, the same work costs more CPU time
    (a slower or shared core: host contention, frequency, caches, memory bandwidth), which steal time
    and the guest's own CPU accounting do not show."""
    global _PROBE_ARRAY
    if _PROBE_ARRAY is None:
        _PROBE_ARRAY = np.random.default_rng(0).random(4_000_000)
    py, mem = [], []
    for _ in range(3):
        t0 = time.thread_time()
        x = 0
        for i in range(100_000):
            x += i * i
        t1 = time.thread_time()
        float(_PROBE_ARRAY.sum())
        t2 = time.thread_time()
        py.append(t1 - t0)
        mem.append(t2 - t1)
    return {"probe_py_ms": round(min(py) * 1e3, 3), "probe_mem_ms": round(min(mem) * 1e3, 3)}


class Sampler(threading.Thread):
    """Every `interval` s: RSS of the server process and its children, and context (the server's CPU,
    the load generator's, the machine's, CPU pressure, and the other processes using the most CPU)."""

    def __init__(self, pid: int, interval: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.root = psutil.Process(pid)
        self.me = psutil.Process(os.getpid())
        self.interval = interval
        self.phase = "startup"
        self.samples: list[dict] = []
        self._halt = threading.Event()
        self._last = None            # (wall, server cpu s, client cpu s, machine cpu_times)
        self._last_other: dict = {}  # pid -> cpu s
        self.errors: list[str] = []

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        now = time.time()
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error as exc:
            self.errors.append(f"{now:.0f}: {exc}")
            return
        server_pids = {p.pid for p in procs}
        rss = anon = filep = threads = fds = 0
        cpu = 0.0
        n = 0
        for p in procs:
            try:
                with p.oneshot():
                    mi = p.memory_info()
                    ct = p.cpu_times()
                    threads += p.num_threads()
                    fds += p.num_fds()
            except psutil.Error:
                continue
            st = _proc_status_kb(p.pid)
            rss += mi.rss
            anon += st.get("RssAnon", 0) * 1024
            filep += (st.get("RssFile", 0) + st.get("RssShmem", 0)) * 1024
            cpu += ct.user + ct.system
            n += 1
        client_pids, client_cpu = set(), 0.0
        try:
            for p in [self.me] + self.me.children(recursive=True):
                if p.pid in server_pids:
                    continue
                try:
                    client_cpu += self._cpu(p)
                    client_pids.add(p.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        others = {}
        for p in psutil.process_iter(["pid", "cpu_times"]):
            if p.pid in server_pids or p.pid in client_pids or p.info["cpu_times"] is None:
                continue
            others[p.pid] = (p.info["cpu_times"].user + p.info["cpu_times"].system, p)
        mt = psutil.cpu_times()
        rec = {"wall": round(now, 3), "phase": self.phase, "processes": n,
               "rss_mb": round(rss / MB, 2), "rss_anon_mb": round(anon / MB, 2),
               "rss_file_mb": round(filep / MB, 2), "threads": threads, "fds": fds,
               "server_cpu_s": round(cpu, 2), "server_cores": None, "client_cores": None,
               "machine_busy_cores": None, "steal_cores": None, "other_cores": None, "top_others": [],
               "cpu_pressure_some_avg10": psi_cpu_some_avg10(), "loadavg1": round(os.getloadavg()[0], 2)}
        if self._last is not None:
            dt = now - self._last[0]
            if dt > 0:
                rec["server_cores"] = round((cpu - self._last[1]) / dt, 3)
                c = (client_cpu - self._last[2]) / dt
                rec["client_cores"] = round(c, 3) if c >= 0 else None  # negative: a load process exited
                m0 = self._last[3]
                busy = sum(getattr(mt, k, 0) - getattr(m0, k, 0) for k in ("user", "nice", "system", "irq", "softirq"))
                rec["machine_busy_cores"] = round(busy / dt, 3)
                rec["steal_cores"] = round((getattr(mt, "steal", 0) - getattr(m0, "steal", 0)) / dt, 3)
                deltas = []
                for pid, (c, p) in others.items():
                    if pid in self._last_other:
                        d = c - self._last_other[pid]
                    else:  # born during the interval: all its CPU time is in it (else: not ours to count)
                        try:
                            d = c if p.create_time() >= self._last[0] else 0.0
                        except psutil.Error:
                            d = 0.0
                    deltas.append((max(0.0, d), pid, p))
                rec["other_cores"] = round(sum(d for d, _, _ in deltas) / dt, 3)
                for d, pid, p in sorted(deltas, key=lambda x: x[0], reverse=True)[:3]:
                    if d <= 0.05 * dt:
                        break
                    try:
                        cmd = " ".join(p.cmdline())[:100] or p.name()
                    except psutil.Error:
                        cmd = "?"
                    rec["top_others"].append({"pid": pid, "cores": round(d / dt, 3), "cmd": cmd})
        self._last = (now, cpu, client_cpu, mt)
        self._last_other = {pid: c for pid, (c, _p) in others.items()}
        rec.update(speed_probe())
        self.samples.append(rec)

    def run(self) -> None:
        nxt = time.monotonic()
        while not self._halt.is_set():
            self.sample()
            nxt += self.interval
            self._halt.wait(max(0.0, nxt - time.monotonic()))

    def set_phase(self, phase: str, sample_now: bool = False) -> None:
        self.phase = phase
        if sample_now:
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)


# --- load ------------------------------------------------------------------------------------------


def run_phase(addr, scenario, catalog, *, mode, duration_s, warmup_s, rate=0.0, concurrency=0,
              connections=2, processes=1, config_extra=None, out_dir: Path, title: str):
    cfg = LoadConfig(addr=addr, mode=mode, rate=rate, concurrency=concurrency, duration_s=duration_s,
                     warmup_s=warmup_s, processes=processes, connections=connections, inline=False)
    plan = prepare(cfg, scenario, catalog)
    if mode == "closed":
        for job in plan.jobs:
            job.connections = max(1, min(job.connections, job.concurrency))
    config = {"mode": mode, "rate": rate if mode == "open" else None,
              "concurrency": concurrency if mode == "closed" else None, "duration_s": duration_s,
              "warmup_s": warmup_s, "processes": len(plan.jobs), "connections": connections, "backend": cfg.backend,
              "timeout_s": scenario.timeout_s, "max_inflight": cfg.max_inflight if mode == "open" else None,
              "cpus": os.cpu_count(), "auth": False, **(config_extra or {})}
    log(f"{title}: {'open loop at %.2f req/s' % rate if mode == 'open' else 'closed loop at concurrency %d' % concurrency}"
        f" for {warmup_s:g} + {duration_s:g} s, {processes} process(es) x {connections} connection(s)")
    result = run_load(plan, progress=lambda m: log(f"{title}: {m}"))
    gen = {"cpu_s": result.meta["cpu_s"], "wall_s": result.meta["wall_s"],
           "late_sends": result.meta["late_sends"], "sampled": result.meta["sampled"]}
    rep = build_report(result.samples, tool="segsrv-loadtest", target=addr, duration_s=duration_s,
                       scenario=scenario.to_json(), snapshot=catalog.to_json(), config=config, generator=gen)
    validate_report(rep)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(rep, out_dir / "report.json")
    (out_dir / "summary.txt").write_text(summary_table(rep) + "\n")
    try:
        from clients.loadtest.plot import plot_report

        plot_report(rep, out_dir / "report.png", title=f"{title}: {rep['config']['mode']} loop")
    except Exception as exc:  # the plot is a convenience
        log(f"{title}: plot failed: {exc}")
    return rep, result


def in_flight(result):
    """Requests outstanding at each request's actual send (itself excluded), as the client sees them:
    sent (scheduled time + send lag) and not yet answered (scheduled time + latency)."""
    _m, t_send, lat, _code, lag = result.samples.arrays()
    sent = t_send + lag
    done = t_send + lat
    s_sorted, d_sorted = np.sort(sent), np.sort(done)
    return np.searchsorted(s_sorted, sent, side="left") - np.searchsorted(d_sorted, sent, side="right")


def errors_detail(result) -> dict:
    """When the failed requests were sent (per second) and how many requests were outstanding then."""
    s = result.samples
    m_arr, t_send, lat, code, _lag = s.arrays()
    bad = code != 0
    if not bad.any():
        return {"seconds": {}, "in_flight_at_send": None}
    fl = in_flight(result)
    secs = {}
    for t, c, mi in zip(np.floor(t_send[bad]).astype(int), code[bad], m_arr[bad]):
        d = secs.setdefault(str(int(t)), {})
        k = f"{s.methods[mi]} {STATUS_NAMES.get(int(c), str(int(c)))}"
        d[k] = d.get(k, 0) + 1
    fb = np.sort(fl[bad])
    fo = np.sort(fl[~bad])
    return {"seconds": secs,
            "in_flight_at_send": {"failed": {"min": int(fb[0]), "p50": float(np.median(fb)), "max": int(fb[-1])},
                                  "ok": {"p50": float(np.median(fo)) if fo.size else None,
                                         "p99": round(percentile(fo, 99), 1) if fo.size else None,
                                         "max": int(fo[-1]) if fo.size else None}},
            "latency_ms_of_failed": {"p50": round(float(np.median(lat[bad])) * 1e3, 3),
                                     "max": round(float(lat[bad].max()) * 1e3, 3)}}


def windows(result, duration_s: float, window_s: float) -> list[dict]:
    """Per-window figures of the soak from the harness's raw samples (send time) and exact bins."""
    s = result.samples
    m_arr, t_send, lat, code, lag = s.arrays()
    fl = in_flight(result)
    n = int(math.ceil(duration_s / window_s - 1e-9))
    per_sec_done = {}
    per_sec_ok = {}
    for (sec, _mi, ok), cnt in s.bins.items():
        per_sec_done[sec] = per_sec_done.get(sec, 0) + cnt
        if ok:
            per_sec_ok[sec] = per_sec_ok.get(sec, 0) + cnt
    out = []
    for w in range(n):
        a, b = w * window_s, min(duration_s, (w + 1) * window_s)
        sel = (t_send >= a) & (t_send < b)
        lw = np.sort(lat[sel]) * 1e3
        cw = code[sel]
        errs = {}
        for c, k in zip(*np.unique(cw[cw != 0], return_counts=True)):
            errs[STATUS_NAMES.get(int(c), str(int(c)))] = int(k)
        done = sum(v for k, v in per_sec_done.items() if a <= k < b)
        okd = sum(v for k, v in per_sec_ok.items() if a <= k < b)
        methods = {}
        for mi, name in enumerate(s.methods):
            lm = np.sort(lat[sel & (m_arr == mi)]) * 1e3
            methods[name] = {"requests": int(lm.size),
                             "p50_ms": round(percentile(lm, 50), 3) if lm.size else None,
                             "p99_ms": round(percentile(lm, 99), 3) if lm.size else None}
        lg = np.sort(lag[sel]) * 1e3
        out.append({
            "window": w, "start_s": a, "end_s": b, "requests": int(lw.size), "ok": int((cw == 0).sum()),
            "errors": int((cw != 0).sum()), "errors_by_code": errs,
            "sent_rps": round(lw.size / (b - a), 3),
            "completed_rps": round(done / (b - a), 3), "ok_completed_rps": round(okd / (b - a), 3),
            "p50_ms": round(percentile(lw, 50), 3) if lw.size else None,
            "p90_ms": round(percentile(lw, 90), 3) if lw.size else None,
            "p99_ms": round(percentile(lw, 99), 3) if lw.size else None,
            "max_ms": round(float(lw[-1]), 3) if lw.size else None,
            "send_lag_p99_ms": round(percentile(lg, 99), 3) if lg.size else None,
            "max_in_flight": int(fl[sel].max()) if sel.any() else None,
            "methods": methods,
        })
    return out


# --- memory analysis -----------------------------------------------------------------------------


def memory_summary(series: list[dict], warmup_s: float) -> dict:
    soak = [x for x in series if x["phase"] == "soak"]
    if len(soak) < 2:
        return {"error": "fewer than two RSS samples during the soak"}
    first, last = soak[0], soak[-1]
    after = [x for x in soak if x["t_s"] >= warmup_s - 1e-6]
    out = {
        "samples": len(soak),
        "first_mb": first["rss_mb"], "last_mb": last["rss_mb"],
        "growth_first_to_last_mb": round(last["rss_mb"] - first["rss_mb"], 2),
        "growth_first_to_last_pct": round((last["rss_mb"] / first["rss_mb"] - 1) * 100, 3),
        "max_minus_min_mb": round(max(x["rss_mb"] for x in soak) - min(x["rss_mb"] for x in soak), 2),
        "anon_first_to_last_mb": round(last["rss_anon_mb"] - first["rss_anon_mb"], 2),
        "file_first_to_last_mb": round(last["rss_file_mb"] - first["rss_file_mb"], 2),
        "memory_warmup_s": warmup_s,
    }
    if len(after) >= 2:
        base = after[0]
        t = np.array([x["t_s"] for x in after])
        r = np.array([x["rss_mb"] for x in after])
        ra = np.array([x["rss_anon_mb"] for x in after])
        slope = float(np.polyfit(t, r, 1)[0]) * 60 if len(after) >= 3 else None
        slope_a = float(np.polyfit(t, ra, 1)[0]) * 60 if len(after) >= 3 else None
        out.update({
            "after_warmup": {
                "from_t_s": base["t_s"], "to_t_s": last["t_s"], "samples": len(after),
                "base_mb": base["rss_mb"], "last_mb": last["rss_mb"],
                "growth_mb": round(last["rss_mb"] - base["rss_mb"], 2),
                "growth_pct": round((last["rss_mb"] / base["rss_mb"] - 1) * 100, 3),
                "max_minus_min_mb": round(float(r.max() - r.min()), 2),
                "max_mb": round(float(r.max()), 2),
                "anon_growth_mb": round(last["rss_anon_mb"] - base["rss_anon_mb"], 2),
                "anon_max_minus_min_mb": round(float(ra.max() - ra.min()), 2),
                "file_growth_mb": round(last["rss_file_mb"] - base["rss_file_mb"], 2),
                "slope_mb_per_min": round(slope, 3) if slope is not None else None,
                "anon_slope_mb_per_min": round(slope_a, 3) if slope_a is not None else None,
            }})
    return out


# --- plot ------------------------------------------------------------------------------------------


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = doc["rss"]["series"]
    win = doc["soak"]["windows"]
    wu = doc["config"]["memory_warmup_s"]
    dur = doc["config"]["duration_s"]
    fig, axes = plt.subplots(4, 1, figsize=(12, 13), sharex=True, constrained_layout=True,
                             gridspec_kw={"height_ratios": [3, 3, 2.2, 2.2]})
    ax_m, ax_l, ax_t, ax_c = axes
    t = [x["t_s"] for x in rss]
    ax_m.plot(t, [x["rss_mb"] for x in rss], "o-", ms=3, color="C0", label="RSS (total)")
    ax_m.plot(t, [x["rss_anon_mb"] for x in rss], "s-", ms=2.5, color="C3", label="RssAnon (heap)")
    ax_m.plot(t, [x["rss_file_mb"] for x in rss], "^-", ms=2.5, color="C2", label="RssFile (mapped snapshot, code)")
    ax_m.set_ylabel("MB")
    ax_m.set_ylim(bottom=0)
    mem = doc["rss"]["summary"].get("after_warmup")
    if mem:
        ax_m.set_title(f"server RSS every {doc['config']['interval_s']:g} s: after the {wu:g} s warm-up "
                       f"{mem['base_mb']:.0f} -> {mem['last_mb']:.0f} MB ({mem['growth_pct']:+.2f} %), "
                       f"heap {mem['anon_growth_mb']:+.1f} MB", fontsize=10)
    ax_m.legend(fontsize=8, loc="lower right")

    mids = [(w["start_s"] + w["end_s"]) / 2 for w in win]
    ax_l.step([w["start_s"] for w in win] + [win[-1]["end_s"]], [w["p99_ms"] for w in win] + [win[-1]["p99_ms"]],
              where="post", color="C1", lw=2, label=f"p99 per {doc['config']['window_s']:g} s window")
    ax_l.step([w["start_s"] for w in win] + [win[-1]["end_s"]], [w["p50_ms"] for w in win] + [win[-1]["p50_ms"]],
              where="post", color="C0", lw=2, label="p50 per window")
    ax_l.plot(mids, [w["p99_ms"] for w in win], "o", color="C1")
    ax_l.plot(mids, [w["p50_ms"] for w in win], "o", color="C0")
    ts = doc["soak"]["timeseries_10s"]
    ax_l.plot(ts["t_mid"], ts["p99_ms"], "-", color="C1", alpha=0.35, lw=1, label="p99 per 10 s")
    ax_l.plot(ts["t_mid"], ts["p50_ms"], "-", color="C0", alpha=0.35, lw=1, label="p50 per 10 s")
    hd = doc["server"]["log"].get("handler_ms_10s")
    if hd:
        ax_l.plot(hd["t_mid"], hd["p99_ms"], ":", color="C3", lw=1.2, label="server handler time p99 per 10 s")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency ms (log), from scheduled send")
    ax_l.grid(True, which="both", alpha=0.3)
    ax_l.legend(fontsize=8, loc="upper left")
    v = doc["verdicts"]
    ax_l.set_title(f"open loop at {doc['target_rps']:.1f} req/s ({doc['config']['fraction']:.0%} of max "
                   f"{doc['max']['rps']:.1f}); p99 last / first window = {v['p99_ratio_last_over_first']}",
                   fontsize=10)

    ax_t.step([w["start_s"] for w in win] + [win[-1]["end_s"]],
              [w["completed_rps"] for w in win] + [win[-1]["completed_rps"]], where="post", color="C0", lw=2,
              label="completed / s per window")
    ax_t.step([w["start_s"] for w in win] + [win[-1]["end_s"]],
              [w["ok_completed_rps"] for w in win] + [win[-1]["ok_completed_rps"]], where="post", color="C2",
              lw=1.5, ls="--", label="OK completed / s per window")
    ax_t.plot(ts["t_mid"], ts["completed_rps"], "-", color="C0", alpha=0.3, lw=1, label="completed / s per 10 s")
    ax_t.axhline(doc["target_rps"], color="k", ls=":", lw=1, label="target rate")
    errs = [w["errors"] / (w["end_s"] - w["start_s"]) for w in win]
    if any(errs):
        ax_t.step([w["start_s"] for w in win] + [win[-1]["end_s"]], errs + [errs[-1]], where="post", color="C3",
                  label="errors / s")
    ax_f = ax_t.twinx()
    ax_f.plot(ts["t_mid"], ts["max_in_flight"], "-", color="C5", lw=1, alpha=0.8, label="max in flight per 10 s (right)")
    from segsrv.server.options import DEFAULT_MAX_CONCURRENT_RPCS

    limit = DEFAULT_MAX_CONCURRENT_RPCS * doc["config"]["workers"]
    ax_f.axhline(limit, color="C5", ls="--", lw=0.8, label=f"max-concurrent-rpcs {limit}")
    ax_f.set_ylabel("requests in flight")
    ax_f.set_ylim(0, max([limit] + [x for x in ts["max_in_flight"] if x]) * 1.2)
    ax_f.legend(fontsize=8, loc="lower left")
    ax_t.set_ylabel("req/s")
    top = max([doc["target_rps"]] + [w["completed_rps"] for w in win] + [x for x in ts["completed_rps"] if x])
    ax_t.set_ylim(0, top * 1.15)
    ax_t.grid(True, alpha=0.3)
    ax_t.legend(fontsize=8, loc="lower right")

    ax_c.plot(t, [x["server_cores"] for x in rss], "-", color="C4", label="server CPU")
    ax_c.plot(t, [x.get("client_cores") for x in rss], "-", color="C9", label="load generator CPU")
    ax_c.plot(t, [x.get("other_cores") for x in rss], "-", color="C3", label="other processes' CPU")
    ax_c.plot(t, [x.get("machine_busy_cores") for x in rss], "-", color="k", lw=0.8, label="machine busy")
    ax_c.plot(t, [x["loadavg1"] for x in rss], "--", color="C7", lw=0.8, label="load average (1 min)")
    ax_c.plot(t, [x.get("steal_cores") for x in rss], "-", color="C1", lw=1.2, label="steal (CPU the host took)")
    ax_c.axhline(doc["cpu_count"], color="k", ls=":", lw=0.8)
    for key, color, name in (("probe_py_ms", "C8", "Python"), ("probe_mem_ms", "C2", "numpy 32 MB")):
        vals = [x.get(key) for x in rss]
        ref = [v for v in vals if v]
        if ref:
            med = float(np.median(ref))
            ax_c.plot(t, [v / med if v else None for v in vals], ":", color=color, lw=1.2,
                      label=f"CPU time of a fixed {name} probe / its median")
    ax_c.set_ylabel("cores / load")
    ax_c.set_xlabel("seconds since the soak started (negative: start-up and max-throughput run)")
    ax_c.grid(True, alpha=0.3)
    ax_c.legend(fontsize=7, loc="upper left", ncol=3)
    psi = [x.get("cpu_pressure_some_avg10") for x in rss]
    if any(v is not None for v in psi):
        ax_p = ax_c.twinx()
        ax_p.plot(t, psi, "-", color="C6", lw=1, alpha=0.7, label="CPU pressure some avg10 % (right)")
        ax_p.set_ylabel("PSI %")
        ax_p.set_ylim(0, 100)
        ax_p.legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.axvspan(min(t[0], 0), 0, color="0.85", alpha=0.5, lw=0)
        ax.axvspan(0, wu, color="C1", alpha=0.07, lw=0)
        ax.axvline(dur, color="0.5", lw=0.8)
    fig.suptitle(f"segsrv soak: {doc['soak']['duration_s']:g} s, {doc['snapshot']['snapshot']}@"
                 f"{doc['snapshot']['version']} ({doc['snapshot']['row_count']:,} rows), mix "
                 + ", ".join(f"{m} {w:g}" for m, w in doc["scenario_weights"].items())
                 + f"; errors {doc['soak']['errors']}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ts_10s(result, duration_s: float, step: float = 10.0) -> dict:
    s = result.samples
    _m, t_send, lat, code, _lag = s.arrays()
    fl = in_flight(result)
    n = int(math.ceil(duration_s / step - 1e-9))
    out = {"t_mid": [], "p50_ms": [], "p99_ms": [], "completed_rps": [], "max_in_flight": [], "errors": []}
    done = {}
    for (sec, _mi, _ok), cnt in s.bins.items():
        done[int(sec // step)] = done.get(int(sec // step), 0) + cnt
    for i in range(n):
        sel = (t_send >= i * step) & (t_send < (i + 1) * step)
        lw = np.sort(lat[sel]) * 1e3
        out["t_mid"].append(i * step + step / 2)
        out["p50_ms"].append(round(percentile(lw, 50), 3) if lw.size else None)
        out["p99_ms"].append(round(percentile(lw, 99), 3) if lw.size else None)
        out["completed_rps"].append(round(done.get(i, 0) / step, 3))
        out["max_in_flight"].append(int(fl[sel].max()) if sel.any() else None)
        out["errors"].append(int((code[sel] != 0).sum()))
    return out


# --- server log ------------------------------------------------------------------------------------


ACCESS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*segsrv\.access: (\w+) (\w+) ([\d.]+) ms")


def digest_log(src: Path, dst: Path, t0: float, duration_s: float, step: float = 10.0) -> dict:
    """The server log without its access lines (to dst, with counts by method and status and the
    slowest calls), and the handler time per `step` s of the soak (by the access line's time, i.e.
    the call's end; t0 = the soak's start, wall clock)."""
    by_code: dict[str, int] = {}
    other = []
    slow = []
    n = int(math.ceil(duration_s / step - 1e-9))
    buckets: list[list[float]] = [[] for _ in range(n)]
    for line in src.read_text(errors="replace").splitlines():
        m = ACCESS_RE.search(line)
        if m:
            key = f"{m.group(3)} {m.group(4)}"
            by_code[key] = by_code.get(key, 0) + 1
            ms = float(m.group(5))
            slow.append((ms, line))
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1e3 - t0
            if 0 <= t < n * step and m.group(3) in ("Relate", "Count", "Predict", "Assign"):
                buckets[int(t // step)].append(ms)
            continue
        other.append(line)
    slow.sort(reverse=True)
    lines = other + ["", "# access log lines by method and status:"] + \
        [f"#   {k}: {v}" for k, v in sorted(by_code.items())] + \
        ["", "# the 10 slowest calls (handler time):"] + [f"#   {line}" for _ms, line in slow[:10]]
    dst.write_text("\n".join(lines) + "\n")
    levels = {lv: sum(1 for x in other if f" {lv} " in x) for lv in ("WARNING", "ERROR", "CRITICAL")}
    events = [x for x in other if re.search(r"swapp|refus|released|Traceback|exited", x)]
    handler = {"t_mid": [], "calls": [], "p50_ms": [], "p99_ms": [], "max_ms": []}
    for i, b in enumerate(buckets):
        a = np.sort(np.asarray(b))
        handler["t_mid"].append(i * step + step / 2)
        handler["calls"].append(int(a.size))
        handler["p50_ms"].append(round(percentile(a, 50), 3) if a.size else None)
        handler["p99_ms"].append(round(percentile(a, 99), 3) if a.size else None)
        handler["max_ms"].append(round(float(a[-1]), 3) if a.size else None)
    return {"access_lines_by_method_code": by_code, "other_lines": len(other), "levels": levels,
            "reload_or_exit_events": events[:20], "handler_ms_10s": handler,
            "slowest_calls": [line for _ms, line in slow[:10]]}


# --- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="snapshot root (default: bench/.data/assign-root, else snap-1000000)")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    p.add_argument("--fraction", type=float, default=0.8, help="soak rate as a fraction of the max (default 0.8)")
    p.add_argument("--max-duration", type=float, default=60.0, help="closed-loop max-throughput run, s")
    p.add_argument("--max-warmup", type=float, default=5.0)
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--max-rps", type=float, help="skip the max-throughput run and use this rate as the max")
    p.add_argument("--window", type=float, default=60.0, help="latency window, s (default 60)")
    p.add_argument("--interval", type=float, default=10.0, help="RSS sampling interval, s (default 10)")
    p.add_argument("--memory-warmup", type=float, default=120.0,
                   help="soak seconds excluded from the RSS-growth verdict (default 120)")
    p.add_argument("--connections", type=int, default=2, help="channels of the load process (default 2)")
    p.add_argument("--processes", type=int, default=1, help="load processes (default 1)")
    p.add_argument("--workers", type=int, default=1, help="segsrv serve --workers (default 1)")
    p.add_argument("--no-pin", action="store_true", help="serve ROOT itself instead of a hard-linked private copy")
    p.add_argument("--out", type=Path, default=RESULTS / "soak")
    p.add_argument("--replot", type=Path, metavar="DIR",
                   help="redraw DIR/soak.png and rewrite DIR/summary.txt from DIR/soak.json (no load)")
    a = p.parse_args(argv)
    if a.replot is not None:
        doc = json.loads((a.replot / "soak.json").read_text())
        window_context(doc["soak"]["windows"], doc["rss"]["series"])
        (a.replot / "soak.json").write_text(json.dumps(doc, indent=1) + "\n")
        plot(doc, a.replot / "soak.png")
        (a.replot / "summary.txt").write_text(summary(doc) + "\n")
        print(summary(doc))
        return 0 if doc["verdicts"]["pass"] else 1
    if not 0 < a.fraction <= 1.5 or a.duration <= 0 or a.window <= 0 or a.interval <= 0:
        p.error("bad --fraction / --duration / --window / --interval")

    root = (a.root or default_root()).resolve()
    out = a.out.resolve()  # relative --out works too (report paths are made relative to the repo)
    out.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix="segsrv-soak-"))
    pinned, versions = (None, {}) if a.no_pin else pin_root(root)
    serve_root = pinned or root
    server = Server(serve_root, a.workers, tmpdir / "server.log")
    sampler = None
    t_start = time.time()
    doc: dict = {"schema": "segsrv.bench.soak/v1", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "root": str(root), "served_root": "private hard-linked copy of " + str(root) if pinned else str(root),
                 "pinned_versions": versions, "cpu_count": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                 "git": git_state()}
    try:
        log(f"serving {serve_root}" + (f" (pinned {versions} of {root})" if pinned else ""))
        ready_s = server.start()
        log(f"server pid {server.proc.pid} SERVING on {server.addr} after {ready_s:.1f} s")
        sampler = Sampler(server.proc.pid, a.interval)
        sampler.start()
        doc["server"] = {"command": " ".join(server.cmd[1:]).replace(str(serve_root), "ROOT"), "pid": server.proc.pid,
                         "ready_s": round(ready_s, 2), "workers": a.workers,
                         "settings": "defaults: 4 handler threads, 256 concurrent RPCs, kernel threads 1, "
                                     "privacy k=10, access log on, reload interval 1 s"}

        from clients.loadtest.gen import fetch_catalog

        scenario = load_scenario(a.scenario)
        catalog = fetch_catalog(server.addr, snapshot=scenario.snapshot,
                                universe=scenario.universe if scenario.universe else None)
        n_segments = count_segments(server.addr)
        if n_segments == 0 and "assign" in scenario.weights:
            log("the snapshot has no segment catalog: Assign dropped from the mix (weight 0)")
            scenario = scenario.with_weights({"assign": 0})
        doc["snapshot"] = catalog.to_json() | {"segments": n_segments}
        doc["scenario"] = str(a.scenario.resolve().relative_to(REPO)) if a.scenario.resolve().is_relative_to(REPO) \
            else str(a.scenario)
        doc["scenario_weights"] = scenario.weights
        log(f"snapshot {catalog.snapshot_name}@{catalog.snapshot_version}: {catalog.row_count:,} rows, "
            f"{n_segments} segments; mix {scenario.weights}")

        # 4. maximum throughput
        if a.max_rps:
            max_rps, max_rep = float(a.max_rps), None
            doc["max"] = {"rps": max_rps, "source": "--max-rps"}
        else:
            sampler.set_phase("max", sample_now=True)
            max_rep, _ = run_phase(server.addr, scenario, catalog, mode="closed", duration_s=a.max_duration,
                                   warmup_s=a.max_warmup, concurrency=a.max_concurrency,
                                   connections=a.connections, processes=a.processes, out_dir=out / "max",
                                   title="max")
            o = max_rep["overall"]
            max_rps = float(o["ok_rps"])
            doc["max"] = {"rps": max_rps, "source": f"closed loop, concurrency {a.max_concurrency}, "
                                                    f"{a.max_warmup:g} s warm-up + {a.max_duration:g} s",
                          "requests": o["requests"], "throughput_rps": o["throughput_rps"], "ok_rps": o["ok_rps"],
                          "errors": o["errors"], "errors_by_code": o["errors_by_code"], "latency_ms": o["latency_ms"],
                          "methods": {m: {"throughput_rps": s["throughput_rps"], "p50_ms": s["latency_ms"]["p50"],
                                          "p99_ms": s["latency_ms"]["p99"], "errors": s["errors"]}
                                      for m, s in max_rep["methods"].items()},
                          "report": str((out / "max" / "report.json").relative_to(REPO))
                          if out.resolve().is_relative_to(REPO) else str(out / "max" / "report.json")}
            log(f"max: {o['throughput_rps']:.1f} req/s ({o['ok_rps']:.1f} OK/s), p50 {o['latency_ms']['p50']} ms, "
                f"p99 {o['latency_ms']['p99']} ms, errors {o['errors_by_code'] or 0}")
            if max_rps <= 0:
                raise RuntimeError("the max-throughput run answered no request")
        target = round(a.fraction * max_rps, 2)
        doc["target_rps"] = target

        # 5. soak
        sampler.set_phase("soak", sample_now=False)
        soak_rep, soak_res = run_phase(server.addr, scenario, catalog, mode="open", duration_s=a.duration,
                                       warmup_s=0.0, rate=target, connections=a.connections, processes=a.processes,
                                       out_dir=out / "run", title="soak",
                                       config_extra={"fraction_of_max": a.fraction, "max_rps": max_rps})
        sampler.set_phase("after", sample_now=True)
        soak_t0 = soak_res.meta["started_at"]
        sampler.stop()
        rc = server.stop()
    except BaseException as exc:
        if sampler:
            sampler.stop()
        server.stop()
        log(f"soak failed: {type(exc).__name__}: {exc}")
        if server.log_path.exists():
            shutil.copy(server.log_path, out / "server-failed.log")
            log(f"server log copied to {out / 'server-failed.log'}")
        shutil.rmtree(tmpdir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        import traceback

        traceback.print_exc()
        return 2
    finally:
        server.stop()
        if pinned:
            shutil.rmtree(pinned, ignore_errors=True)
    doc["server"]["exit_code"] = rc
    doc["server"]["log"] = digest_log(server.log_path, out / "server-events.log", soak_t0, a.duration)
    shutil.rmtree(tmpdir, ignore_errors=True)
    doc["loadavg_at_end"] = os.getloadavg()
    doc["wall_s"] = round(time.time() - t_start, 1)

    # RSS series relative to the soak's start
    series = []
    for x in sampler.samples:
        y = dict(x)
        y["t_s"] = round(x["wall"] - soak_t0, 1)
        if y["phase"] == "soak" and not (0 <= y["t_s"] <= a.duration + 1):
            y["phase"] = "soak-edge"  # sampled while the load process started / finished
        series.append(y)
    mem = memory_summary(series, a.memory_warmup)
    doc["rss"] = {"interval_s": a.interval, "includes_children": True, "summary": mem, "series": series,
                  "sampler_errors": sampler.errors}

    o = soak_rep["overall"]
    win = windows(soak_res, a.duration, a.window)
    cum = [(x["t_s"], x["server_cpu_s"]) for x in series if x["phase"] in ("max", "soak", "soak-edge", "after")]
    if len(cum) >= 2:
        ct, cs = np.array([c[0] for c in cum]), np.array([c[1] for c in cum])
        handled = doc["server"]["log"]["handler_ms_10s"]
        for w in win:
            if w["start_s"] < ct[0] or w["end_s"] > ct[-1]:
                continue  # not covered by samples
            cpu_s = float(np.interp(w["end_s"], ct, cs) - np.interp(w["start_s"], ct, cs))
            calls = sum(n for tm, n in zip(handled["t_mid"], handled["calls"]) if w["start_s"] <= tm < w["end_s"])
            w["server_cores"] = round(cpu_s / (w["end_s"] - w["start_s"]), 3)
            w["server_calls_handled"] = calls
            w["server_cpu_ms_per_handled_call"] = round(cpu_s / calls * 1e3, 2) if calls else None
        window_context(win, series)
    doc["soak"] = {
        "duration_s": a.duration, "target_rps": target, "requests": o["requests"], "ok": o["ok"],
        "errors": o["errors"], "errors_by_code": o["errors_by_code"],
        "errors_by_method": {m: s["errors_by_code"] for m, s in soak_rep["methods"].items() if s["errors"]},
        "sent_rps": o["throughput_rps"], "achieved_ok_rps": o["ok_rps"],
        "completed_in_window_rps": round(sum(w["completed_rps"] for w in win) * a.window / a.duration, 3),
        "latency_ms": o["latency_ms"],
        "methods": {m: {"requests": s["requests"], "throughput_rps": s["throughput_rps"], "p50_ms": s["latency_ms"]["p50"],
                        "p99_ms": s["latency_ms"]["p99"], "max_ms": s["latency_ms"]["max"], "errors": s["errors"]}
                    for m, s in soak_rep["methods"].items()},
        "send_lag_ms": soak_rep["generator"].get("send_lag_ms"), "generator_cpu_cores": soak_rep["generator"].get("cpu_cores"),
        "windows": win, "timeseries_10s": ts_10s(soak_res, a.duration),
        "errors_detail": errors_detail(soak_res),
        "report": str((out / "run" / "report.json").relative_to(REPO))
        if out.resolve().is_relative_to(REPO) else str(out / "run" / "report.json"),
    }
    p99_first, p99_last = win[0]["p99_ms"], win[-1]["p99_ms"]
    ratio = round(p99_last / p99_first, 3) if p99_first and p99_last is not None else None
    after = mem.get("after_warmup") or {}
    doc["verdicts"] = {
        "zero_errors": o["errors"] == 0,
        "rss_growth_after_warmup_pct": after.get("growth_pct"),
        "rss_flat": after.get("growth_pct") is not None and after["growth_pct"] < 5.0,
        "p99_first_window_ms": p99_first, "p99_last_window_ms": p99_last,
        "p99_ratio_last_over_first": ratio,
        "p99_stable": ratio is not None and ratio <= 2.0,
        "p99_max_over_min_window": round(max(w["p99_ms"] for w in win) / min(w["p99_ms"] for w in win), 3)
        if all(w["p99_ms"] for w in win) else None,
    }
    doc["verdicts"]["pass"] = bool(doc["verdicts"]["zero_errors"] and doc["verdicts"]["rss_flat"]
                                   and doc["verdicts"]["p99_stable"])
    doc["config"] = {"duration_s": a.duration, "fraction": a.fraction, "max_duration_s": a.max_duration,
                     "max_warmup_s": a.max_warmup, "max_concurrency": a.max_concurrency, "window_s": a.window,
                     "interval_s": a.interval, "memory_warmup_s": a.memory_warmup, "connections": a.connections,
                     "processes": a.processes, "workers": a.workers, "pinned": bool(pinned)}
    (out / "soak.json").write_text(json.dumps(relative_paths(doc, out), indent=1) + "\n")
    plot(doc, out / "soak.png")
    text = summary(doc)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    log(f"wrote {out / 'soak.json'}, {out / 'soak.png'}, {out / 'summary.txt'}")
    return 0 if doc["verdicts"]["pass"] else 1


def window_context(win: list[dict], series: list[dict]) -> None:
    """Per window, from the 10 s samples: the speed probe (median) and the CPU the host took (steal,
    mean cores): the machine-side context of that window's latency."""
    samples = [x for x in series if x["phase"] == "soak"]
    for w in win:
        pw = [x for x in samples if w["start_s"] <= x["t_s"] < w["end_s"]]
        probes = [x for x in pw if x.get("probe_py_ms") is not None]
        if probes:
            w["probe_py_ms"] = round(float(np.median([x["probe_py_ms"] for x in probes])), 3)
            w["probe_mem_ms"] = round(float(np.median([x["probe_mem_ms"] for x in probes])), 3)
        steal = [x["steal_cores"] for x in pw if x.get("steal_cores") is not None]
        if steal:
            w["steal_cores_mean"] = round(float(np.mean(steal)), 3)
            w["steal_cores_max"] = round(float(np.max(steal)), 3)


def summary(doc: dict) -> str:
    s, v, mem = doc["soak"], doc["verdicts"], doc["rss"]["summary"]
    aw = mem.get("after_warmup", {})
    lines = [
        f"segsrv soak: {doc['snapshot']['snapshot']}@{doc['snapshot']['version']} ({doc['snapshot']['row_count']:,} rows, "
        f"{doc['snapshot']['segments']} segments), mix {doc['scenario_weights']}",
        f"max throughput {doc['max']['rps']:.2f} OK req/s ({doc['max']['source']}"
        + (f"; errors {doc['max']['errors_by_code'] or 0}" if 'errors_by_code' in doc['max'] else "") + ")",
        f"soak {s['duration_s']:g} s open loop at {s['target_rps']:.2f} req/s ({doc['config']['fraction']:.0%}): "
        f"{s['requests']:,} requests, {s['ok']:,} OK ({s['achieved_ok_rps']:.2f} OK/s), errors "
        f"{s['errors_by_code'] or 0}; p50 {s['latency_ms']['p50']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms, "
        f"max {s['latency_ms']['max']:.1f} ms; send lag p99 {(s['send_lag_ms'] or {}).get('p99')} ms",
        "",
        "window     sent/s  done/s   ok/s     p50 ms     p90 ms     p99 ms     max ms  in-flight  srv cores  "
        "srv CPU ms/call  probe py/mem ms  steal mean/max  errors",
    ]

    def f(v, spec):
        return format(v, spec) if v is not None else format("-", spec.split(".")[0].rstrip("f"))
    for w in s["windows"]:
        lines.append(f"{w['start_s']:4.0f}-{w['end_s']:<4.0f} {w['sent_rps']:7.2f} {w['completed_rps']:7.2f} "
                     f"{w['ok_completed_rps']:6.2f} {w['p50_ms']:10.1f} {w['p90_ms']:10.1f} {w['p99_ms']:10.1f} "
                     f"{w['max_ms']:10.1f} {f(w.get('max_in_flight'), '10d')} {f(w.get('server_cores'), '10.2f')} "
                     f"{f(w.get('server_cpu_ms_per_handled_call'), '16.2f')} "
                     f"{f(w.get('probe_py_ms'), '8.1f')}/{f(w.get('probe_mem_ms'), '<7.1f')} "
                     f"{f(w.get('steal_cores_mean'), '8.2f')}/{f(w.get('steal_cores_max'), '<5.2f')}  "
                     f"{w['errors_by_code'] or 0}")
    ed = s.get("errors_detail") or {}
    if ed.get("seconds"):
        fl = ed["in_flight_at_send"]
        lines += ["", f"failed requests by send second (s since start): " + "; ".join(
            f"{k}: {sum(v.values())}" for k, v in ed["seconds"].items()),
            f"  requests in flight (client side) when a failed one was sent: min {fl['failed']['min']}, "
            f"median {fl['failed']['p50']}, max {fl['failed']['max']} (OK ones: median {fl['ok']['p50']}, "
            f"p99 {fl['ok']['p99']}, max {fl['ok']['max']}); failed requests' latency median "
            f"{ed['latency_ms_of_failed']['p50']} ms"]
    ctx = [x for x in doc["rss"]["series"] if x["phase"] == "soak" and x.get("server_cores") is not None]
    if ctx:
        def mean(k):
            v = [x[k] for x in ctx if x.get(k) is not None]
            return round(sum(v) / len(v), 2) if v else None
        lines += [f"CPU during the soak (mean of {doc['rss']['interval_s']:g} s samples, cores): server "
                  f"{mean('server_cores')}, load generator {mean('client_cores')}, other processes "
                  f"{mean('other_cores')}, machine busy {mean('machine_busy_cores')} of {doc['cpu_count']}, steal "
                  f"{mean('steal_cores')}; CPU pressure (some avg10) mean {mean('cpu_pressure_some_avg10')} %"]
    lines += [
        "",
        f"RSS (every {doc['rss']['interval_s']:g} s, server + children): soak first {mem.get('first_mb')} MB -> last "
        f"{mem.get('last_mb')} MB ({mem.get('growth_first_to_last_pct')} %), max-min {mem.get('max_minus_min_mb')} MB; "
        f"heap (RssAnon) {mem.get('anon_first_to_last_mb'):+} MB, mapped (RssFile) {mem.get('file_first_to_last_mb'):+} MB",
        f"  after {doc['config']['memory_warmup_s']:g} s warm-up (t={aw.get('from_t_s')}..{aw.get('to_t_s')} s): "
        f"{aw.get('base_mb')} -> {aw.get('last_mb')} MB ({aw.get('growth_pct')} %), max-min {aw.get('max_minus_min_mb')} MB, "
        f"slope {aw.get('slope_mb_per_min')} MB/min; heap {aw.get('anon_growth_mb')} MB "
        f"(slope {aw.get('anon_slope_mb_per_min')} MB/min)",
        "",
        f"verdicts: zero errors {'PASS' if v['zero_errors'] else 'FAIL'}; RSS growth after warm-up "
        f"{v['rss_growth_after_warmup_pct']} % < 5 % {'PASS' if v['rss_flat'] else 'FAIL'}; p99 last/first window "
        f"{v['p99_last_window_ms']}/{v['p99_first_window_ms']} = {v['p99_ratio_last_over_first']} <= 2 "
        f"{'PASS' if v['p99_stable'] else 'FAIL'}  => {'PASS' if v['pass'] else 'FAIL'}",
        f"machine: {doc['cpu_count']} cores, load average at start {[round(x, 2) for x in doc['loadavg_at_start']]}, "
        f"at end {[round(x, 2) for x in doc['loadavg_at_end']]}; server log: {doc['server']['log']['levels']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
