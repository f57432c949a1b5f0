"""Throughput sweep of `segsrv serve` (not part of `make bench`): the harness's default scenario at
several load levels against one server, with the server's cores and CPU per request per level.

    .venv/bin/python bench/tools/sweep.py OUT LEVELS [--seconds 60] [--root ROOT] [--workers 1]

LEVELS: comma-separated, rNNN = open loop at NNN req/s, NN = closed loop at concurrency NN.
ROOT defaults to bench/.data/assign-root (bench/assign.py builds it); the version CURRENT names is
pinned (hard links) as bench/soak.py does. Writes OUT/sweep.json and the harness report of each level.
"""
import argparse, json, os, sys, time, tempfile, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import soak
from soak import Server, pin_root, run_phase, DATA_ROOT, psi_cpu_some_avg10
import psutil
from clients.loadtest.scenario import load_scenario
from clients.loadtest.gen import fetch_catalog

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("levels", help="comma-separated: rNNN open loop at NNN req/s, NN closed loop at concurrency NN")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per level after a 5 s warm-up")
    ap.add_argument("--root", type=Path, default=DATA_ROOT / "assign-root")
    ap.add_argument("--workers", type=int, default=1, help="segsrv serve --workers")
    args = ap.parse_args()
    out = args.out; out.mkdir(parents=True, exist_ok=True)
    levels = [x for x in args.levels.split(",")]
    dur = args.seconds
    root = args.root
    pinned, versions = pin_root(root)
    tmp = Path(tempfile.mkdtemp())
    srv = Server(pinned or root, args.workers, tmp / "server.log")
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
                 "machine_busy_cores": round(busy, 3), "psi_some_avg10_end": psi_cpu_some_avg10(),
                 "loadavg_end": os.getloadavg()[0]}
            print(json.dumps(r), flush=True)
            res.append(r)
    finally:
        srv.stop()
        if pinned:
            shutil.rmtree(pinned, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "sweep.json").write_text(json.dumps({"duration_s": dur, "warmup_s": 5, "connections": 2, "workers": args.workers,
                                                "server": f"segsrv serve defaults, pinned copy of {root}", "runs": res},
                                               indent=1) + "\n")

if __name__ == '__main__':
    main()
