"""Counting under contention: Relate's counts with a busy neighbour process, per thread policy (issue 16, item 3).

OpenMP's active waiting falls off a cliff on a shared machine: a team member that the OS deschedules
for a neighbour holds the others at the region's barrier, spinning (FIELD-NOTES: 7.0 ms instead of
0.3-1.0 ms for 90 features over 1M customers). This bench measures, in one run, the counts of Relate
(segsrv.engine.relate.count_features: ~90 features, bench/relate.py's pick_fields, over 20 conditions,
bench/relate.py's conditions) on the 1M demo (--customers), each policy in a fresh process (the wait
policy is read when the OpenMP runtime loads):

  default   segsrv as it ships (segsrv._kernels' thread policy, no environment set by the caller)
  active    OMP_WAIT_POLICY=ACTIVE (the spinning the cliff was measured with), default team size;
            idle team threads then spin for ~30 billion iterations after every region: a server
            would burn a core per thread between requests
  passive   OMP_WAIT_POLICY=PASSIVE, default team size: waiting threads sleep at once
  spin N    GOMP_SPINCOUNT=N: libgomp's waits spin N iterations, then sleep (unset: 300,000)
  1 thread  segsrv._kernels.set_num_threads(1): no team at all

each quiet and then with a busy neighbour (--neighbours processes spinning in pure Python, started
after the quiet run and stopped after the busy one). Prints per policy the median and p90 per call
(a call counts every feature for one condition), the busy / quiet ratio of its own medians and of its
p90s (the cliff shows in the tail first), and the busy median over the best quiet median of all
policies, and "idle CPU": the CPU the process burns in the second after its quiet calls, doing nothing
(spinning team threads). Target (issue 16): segsrv's default with a busy neighbour within 2x of quiet,
median and p90.

"threads" is the process's cap, "used" what the thread policy gives one call's kernels at most: with
segsrv's policy 90 features over 1M customers run on one thread (no team: every policy is then the
same), so --features 600 is where the wait policies still differ.

    python bench/contention.py [--customers 1000000] [--calls 400] [--neighbours 1] [--features 90]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import cpu_model, demo_snapshot, percentile, threads_picked, write_result

POLICIES = {
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin 10k": {"GOMP_SPINCOUNT": "10000"},
    "spin 100k": {"GOMP_SPINCOUNT": "100000"},
    "1 thread": {},
}
SPIN = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def child(root: str, policy: str, calls: int, neighbours: int, max_seconds: float, n_features: int) -> dict:
    import numpy as np

    from relate import conditions, pick_fields
    from segsrv import _kernels
    from segsrv.engine.conditions import evaluate
    from segsrv.engine.relate import count_features
    from segsrv.snapshot.reader import open_snapshot

    if policy == "1 thread":
        _kernels.set_num_threads(1)
    snap = open_snapshot(root)
    u = snap.universe("customers")
    fids = np.concatenate([u.fields[f].feature_ids for f in pick_fields(u, n_features)]).astype(np.int64)
    bits = [evaluate(snap, u, c) for c in conditions(u)]
    sizes = [int(_kernels.popcount(b)) for b in bits]

    def run() -> list[float]:
        out = []
        for i in range(calls):
            j = i % len(bits)
            t0 = time.perf_counter()
            count_features(u, bits[j], sizes[j], fids, plan="scan")
            out.append(time.perf_counter() - t0)
        return out

    run()  # pages mapped, caches warm
    used = threads_picked(lambda: count_features(u, bits[0], sizes[0], fids, plan="scan"))
    quiet = run()
    cpu0 = time.process_time()  # what the team costs while the process waits for its next request
    time.sleep(1.0)
    idle_cpu = time.process_time() - cpu0
    procs = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=max_seconds)]) for _ in range(neighbours)]
    try:
        time.sleep(0.3)  # the neighbours are running
        busy = run()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {"features": int(len(fids)), "threads": _kernels.get_num_threads(), "threads_used": used,
            "cpu_path": _kernels.cpu_path(),
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "idle_cpu_s_per_s": idle_cpu,
            "quiet": {"median_ms": statistics.median(quiet) * 1e3, "p90_ms": percentile(quiet, 90) * 1e3},
            "busy": {"median_ms": statistics.median(busy) * 1e3, "p90_ms": percentile(busy, 90) * 1e3}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=400, help="count calls per measurement (20 conditions in turn)")
    ap.add_argument("--neighbours", type=int, default=1, help="busy processes beside the busy measurement")
    ap.add_argument("--features", type=int, default=90,
                    help="about this many features per call (bench/relate.py's pick_fields); from ~600 the thread policy forms a team, which is where the wait policies differ")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root, policy = args.child
        print(json.dumps(child(root, policy, args.calls, args.neighbours, max_seconds=300,
                               n_features=args.features)))
        return
    root = demo_snapshot(args.customers) / "demo"
    got = {}
    for policy, env in POLICIES.items():
        environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        environ.update(env)
        proc = subprocess.run([sys.executable, __file__, "--calls", str(args.calls), "--neighbours",
                               str(args.neighbours), "--features", str(args.features), "--child", str(root), policy],
                              capture_output=True, text=True, env=environ,
                              cwd=os.path.dirname(os.path.abspath(__file__)))
        if proc.returncode:
            raise SystemExit(f"policy {policy!r} failed:\n{proc.stderr}")
        got[policy] = json.loads(proc.stdout.strip().splitlines()[-1])
    best_quiet = min(r["quiet"]["median_ms"] for r in got.values())
    load = os.getloadavg()
    print(f"[contention] {args.customers:,} customers, {got['default']['features']} features per call, "
          f"{args.calls} calls per measurement, {args.neighbours} busy neighbour(s); {cpu_model()}; "
          f"{os.cpu_count()} CPUs; load average {load[0]:.2f}")
    print(f"  {'policy':<9} {'threads':>7} {'used':>5} {'quiet p50':>10} {'p90':>8} {'busy p50':>10} {'p90':>8} "
          f"{'busy/quiet p50':>14} {'p90':>6} {'busy p50/best quiet':>20} {'idle CPU':>9}")
    for policy, r in got.items():
        q, b = r["quiet"], r["busy"]
        r["busy_over_quiet"] = b["median_ms"] / q["median_ms"]
        r["busy_over_quiet_p90"] = b["p90_ms"] / q["p90_ms"]
        r["busy_over_best_quiet"] = b["median_ms"] / best_quiet
        print(f"  {policy:<9} {r['threads']:>7} {r['threads_used']:>5} {q['median_ms']:>8.2f}ms {q['p90_ms']:>6.2f}ms "
              f"{b['median_ms']:>8.2f}ms {b['p90_ms']:>6.2f}ms {r['busy_over_quiet']:>14.2f} "
              f"{r['busy_over_quiet_p90']:>6.2f} {r['busy_over_best_quiet']:>20.2f} {r['idle_cpu_s_per_s']:>8.0%}")
    d = got["default"]
    ok = d["busy_over_quiet"] <= 2.0 and d["busy_over_quiet_p90"] <= 2.0
    print(f"  target: segsrv's default with a busy neighbour within 2x of quiet: p50 {d['busy_over_quiet']:.2f}x, "
          f"p90 {d['busy_over_quiet_p90']:.2f}x ({'met' if ok else 'NOT met'})")
    write_result("contention", {"command": "python bench/contention.py " + " ".join(sys.argv[1:]),
                                "cpu": cpu_model(), "cpus": os.cpu_count(), "customers": args.customers,
                                "calls": args.calls, "neighbours": args.neighbours, "load_average": load,
                                "policies": got})


if __name__ == "__main__":
    main()
