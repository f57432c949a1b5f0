"""gRPC Count and single-id Assign against an empty server: the calls other services make per request (issue 16, item 2).

The machinery of bench/grpc_relate.py (the same two servers, each in its own process: `empty`, the
same grpcio sync server whose handler of the method returns an empty response, and `segsrv`,
create_server over the snapshot; the same closed-loop clients in up to 4 processes), per method:

  Count              20 conditions (bench/relate.py's conditions) over the 1M demo's customers
  Assign             one id per call (20 ids in turn), without propensities: memberships only
  Assign+propensity  one id per call, include_propensities (the stored logistic models of
                     bench/declared_models.py's catalog: 3 segments, one with pairs)

on the snapshot of bench/declared_models.py (the 1M demo with its catalog and stored models; built
on first use by that bench: run it once first). Prints per method the sequential p50, QPS at
concurrency 1, 8 and 32 for both servers, the ratio (target: >= 60% of the empty server's QPS) and
the server CPU per call.

QPS on a shared 2-core machine moves by up to 20 points between runs of the same server, so the two
servers run in --rounds alternating rounds (empty first in odd rounds, segsrv first in even ones),
each round a fresh server process per kind; the figures are the medians over the rounds (QPS and CPU
per call per concurrency, sequential p50), the ratio is the ratio of the medians, and each round's
own ratios are printed too.

    python bench/grpc_calls.py [--rounds 3] [--seconds 5] [--calls 500] [--customers 1000000] [--methods Count,Assign]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

from common import DATA_ROOT, cpu_model, stale_snapshot, write_result
from grpc_relate import CONCURRENCY, TARGET_RATIO, run_server_bench

METHODS = ("Count", "Assign", "Assign+propensity")


def build_requests(root: str, method: str) -> list[bytes]:
    from relate import conditions

    from segsrv.ops.assign import AssignQuery
    from segsrv.ops.count import CountQuery
    from segsrv.snapshot.reader import open_snapshot

    snap = open_snapshot(root)
    u = snap.universes["customers"]
    if method == "Count":
        queries = [CountQuery(where=c, universe="customers") for c in conditions(u)]
    else:
        ids = u.ids_for_rows(list(range(7, 7 + 20 * 49_999, 49_999)))
        queries = [AssignQuery(universe="customers", ids=[i], include_propensities=method != "Assign") for i in ids]
    return [q.to_proto().SerializeToString() for q in queries]


def median_run(runs: list[dict]) -> dict:
    """One server's figures as the medians over its rounds (each of run_server_bench's shape)."""
    med = statistics.median
    lat = {k: med(r["latency"][k] for r in runs) for k in ("p50_ms", "server_time_p50_ms")}
    thr = {}
    for c in map(str, CONCURRENCY):
        rs = [r["throughput"][c] for r in runs]
        thr[c] = {k: med(x[k] for x in rs) for k in ("qps", "server_cpu_us_per_rpc", "server_cores", "client_cores")}
        thr[c]["errors"] = sum(x["errors"] for x in rs)
    return {"latency": lat, "throughput": thr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both servers; medians over them")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or args.rounds < 1:
        raise SystemExit(f"--methods: expected a subset of {', '.join(METHODS)} (got {args.methods!r}); "
                         f"--rounds: at least 1 (got {args.rounds})")
    root = DATA_ROOT / f"snap-models-{args.customers}"
    if stale_snapshot(root):
        raise SystemExit(f"{root}: no snapshot, or one of an older format; run `python bench/declared_models.py "
                         f"--customers {args.customers}` once first (it builds the demo with the catalog and its "
                         "stored models)")
    ctx = mp.get_context("spawn")
    out: dict = {}
    t0 = time.perf_counter()
    for method in methods:
        rpc = method.split("+")[0]
        blobs = build_requests(str(root), method)
        rounds = []
        for r in range(args.rounds):
            kinds = ("empty", "segsrv") if r % 2 == 0 else ("segsrv", "empty")
            rounds.append({kind: run_server_bench(ctx, kind, str(root), blobs, None, args, method=rpc)
                           for kind in kinds})
        runs = {kind: median_run([rd[kind] for rd in rounds]) for kind in ("empty", "segsrv")}
        ratios = {c: runs["segsrv"]["throughput"][c]["qps"] / runs["empty"]["throughput"][c]["qps"]
                  for c in map(str, CONCURRENCY)}
        round_ratios = {c: [rd["segsrv"]["throughput"][c]["qps"] / rd["empty"]["throughput"][c]["qps"]
                            for rd in rounds] for c in map(str, CONCURRENCY)}
        out[method] = {"empty": runs["empty"], "segsrv": runs["segsrv"], "ratio_qps": ratios,
                       "round_ratios": round_ratios, "rounds": rounds,
                       "meets_target": {c: r >= TARGET_RATIO for c, r in ratios.items()}}
    print(f"gRPC Count / single-id Assign on {args.customers:,} customers; {cpu_model()}; empty = the same grpcio "
          f"sync server, handler returns an empty response; target: segsrv >= {TARGET_RATIO:.0%} of its QPS; "
          f"medians over {args.rounds} alternating round(s)")
    for method, r in out.items():
        e, o = r["empty"], r["segsrv"]
        print(f"{method}: sequential p50 {e['latency']['p50_ms']:.3f} ms (empty) / {o['latency']['p50_ms']:.3f} ms "
              f"(segsrv; handler {o['latency']['server_time_p50_ms']:.3f} ms)")
        for c in map(str, CONCURRENCY):
            et, ot = e["throughput"][c], o["throughput"][c]
            mark = "ok" if r["ratio_qps"][c] >= TARGET_RATIO else f"< {TARGET_RATIO:.0%}"
            print(f"  c={c:<3} QPS {et['qps']:7.0f} / {ot['qps']:7.0f}  {r['ratio_qps'][c]:5.0%} {mark}   server "
                  f"us/call {et['server_cpu_us_per_rpc']:5.0f} / {ot['server_cpu_us_per_rpc']:5.0f}  (cores "
                  f"{et['server_cores']:.2f} / {ot['server_cores']:.2f}; clients {et['client_cores']:.2f} / "
                  f"{ot['client_cores']:.2f})   rounds: "
                  + " ".join(f"{x:.0%}" for x in r["round_ratios"][c]))
    write_result("grpc_calls", {"command": "python bench/grpc_calls.py " + " ".join(sys.argv[1:]),
                                "cpu": cpu_model(), "customers": args.customers, "seconds_per_run": args.seconds,
                                "methods": out, "wall_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
