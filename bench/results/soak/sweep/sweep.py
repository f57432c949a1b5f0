# Ad-hoc driver of the throughput sweep in this directory (provenance; not part of the bench suite).
# Run from the repo root: .venv/bin/python bench/results/soak/sweep/sweep.py OUT LEVELS SECONDS
# LEVELS: comma-separated, rNNN = open loop at NNN req/s, NN = closed loop at concurrency NN.
import json, os, sys, time, tempfile, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import soak
from soak import Server, pin_root, run_phase, DATA_ROOT, _psi_cpu_some_avg10
import psutil
from clients.loadtest.scenario import load_scenario
from clients.loadtest.gen import fetch_catalog

def main():
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    levels = [x for x in sys.argv[2].split(",")]
    dur = float(sys.argv[3])
    root = DATA_ROOT / "assign-root"
    pinned, versions = pin_root(root)
    tmp = Path(tempfile.mkdtemp())
    srv = Server(pinned, 1, tmp / "server.log")
    srv.start()
    res = []
    try:
        sc = load_scenario(soak.DEFAULT_SCENARIO)
        cat = fetch_catalog(srv.addr, universe=sc.universe)
        p = psutil.Process(srv.proc.pid)
        for c in levels:
            t0 = time.time(); c0 = sum(p.cpu_times()[:2]); m0 = psutil.cpu_times()
            if c.startswith("r"):
                rep, _ = run_phase(srv.addr, sc, cat, mode="open", duration_s=dur, warmup_s=5, rate=float(c[1:]),
                                   connections=2, out_dir=out / c, title=c)
            else:
                rep, _ = run_phase(srv.addr, sc, cat, mode="closed", duration_s=dur, warmup_s=5, concurrency=int(c),
                                   connections=2, out_dir=out / f"c{c}", title=f"c{c}")
            dt = time.time() - t0; c1 = sum(p.cpu_times()[:2]); m1 = psutil.cpu_times()
            busy = sum(getattr(m1, k) - getattr(m0, k) for k in ("user", "nice", "system", "irq", "softirq")) / dt
            o = rep["overall"]
            cores = (c1 - c0) / dt
            r = {"level": c, "rps": o["throughput_rps"], "ok_rps": o["ok_rps"], "errors": o["errors_by_code"],
                 "p50_ms": o["latency_ms"]["p50"], "p99_ms": o["latency_ms"]["p99"], "server_cores": round(cores, 3),
                 "server_cpu_ms_per_request": round(cores / o["throughput_rps"] * 1e3, 2) if o["throughput_rps"] else None,
                 "machine_busy_cores": round(busy, 3), "psi_some_avg10_end": _psi_cpu_some_avg10(),
                 "loadavg_end": os.getloadavg()[0]}
            print(json.dumps(r), flush=True)
            res.append(r)
    finally:
        srv.stop()
        shutil.rmtree(pinned, ignore_errors=True)
    (out / "sweep.json").write_text(json.dumps({"duration_s": dur, "warmup_s": 5, "connections": 2, "server": "segsrv serve defaults (8 handler threads, 64 concurrent RPCs), pinned copy of bench/.data/assign-root", "runs": res}, indent=1) + "\n")

if __name__ == '__main__':
    main()
