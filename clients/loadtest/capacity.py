#!/usr/bin/env python3
"""How much load the generator itself can push: grpc.aio against threads, 1 and 2 processes.

Against clients/loadtest/trivialserver (grpc-go answering every call with an empty message,
built into clients/loadtest/bin/ on first use), so that the generator, not the server, is
the limit. The requests are a real scenario's (from a saved GetSnapshotInfo: any earlier
run's OUT/snapshot-info.json).

    python clients/loadtest/capacity.py --snapshot-info OUT/snapshot-info.json \\
        [--scenario clients/loadtest/scenarios/smoke.toml] [--seconds 5] [--rate 3000] [--out DIR]

Prints a table (throughput, latency, generator CPU per request, send lag) and writes
DIR/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

HERE = Path(__file__).resolve().parent
TRIVIAL = HERE / "bin" / "trivialserver"


def trivial_server():
    if not TRIVIAL.exists():
        print("[capacity] building trivialserver (go build)", file=sys.stderr)
        subprocess.run(["go", "build", "-o", str(TRIVIAL), "."], cwd=HERE / "trivialserver", check=True)
    p = subprocess.Popen([str(TRIVIAL), "-addr", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("listening on "):
        p.kill()
        raise RuntimeError(f"trivialserver did not start: {line!r}")
    return p, line.removeprefix("listening on ")


def main(argv=None) -> int:
    from clients.loadtest.gen import catalog_from_response, info_from_json
    from clients.loadtest.report import build_report
    from clients.loadtest.runner import LoadConfig, prepare, run_load
    from clients.loadtest.scenario import load_scenario

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot-info", required=True, help="a saved GetSnapshotInfo (OUT/snapshot-info.json)")
    ap.add_argument("--scenario", default=str(HERE / "scenarios" / "smoke.toml"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=3000.0)
    ap.add_argument("--out", default=None, help="directory for capacity.json")
    a = ap.parse_args(argv)
    sc = load_scenario(a.scenario)
    cat = catalog_from_response(info_from_json(Path(a.snapshot_info).read_text()), sc.universe)
    proc, addr = trivial_server()
    rows = []
    try:
        for mode in ("closed", "open"):
            for backend in ("aio", "threads"):
                for processes in (1, 2):
                    cfg = LoadConfig(addr=addr, mode=mode, concurrency=a.concurrency, rate=a.rate,
                                     duration_s=a.seconds, processes=processes, backend=backend)
                    res = run_load(prepare(cfg, sc, cat))
                    rep = build_report(res.samples, tool="segsrv-loadtest", target=addr, duration_s=a.seconds,
                                       scenario={}, snapshot={}, config={"mode": mode}, generator=res.meta)
                    o, g = rep["overall"], rep["generator"]
                    rows.append({"mode": mode, "load": a.concurrency if mode == "closed" else a.rate,
                                 "backend": backend, "processes": processes, "rps": o["throughput_rps"],
                                 "errors": o["errors"], "p50_ms": o["latency_ms"]["p50"],
                                 "p99_ms": o["latency_ms"]["p99"], "cpu_us_per_request": g.get("cpu_us_per_request"),
                                 "send_lag_p99_ms": g.get("send_lag_ms", {}).get("p99") if mode == "open" else None})
                    r = rows[-1]
                    print(f"{mode:6} {r['load']:>6g} {backend:7} x{processes}: {r['rps']:>8,.0f} req/s  "
                          f"p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>8} ms  CPU {r['cpu_us_per_request']:>6} us/req"
                          + (f"  send lag p99 {r['send_lag_p99_ms']} ms" if mode == "open" else "")
                          + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
    finally:
        proc.terminate()
        proc.wait(5)
    out = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": a.seconds, "rows": rows}
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "capacity.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
