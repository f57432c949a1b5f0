"""Scale-out benchmark: sharded builds and merged queries on the demo shop, and the capacity plan's inputs
(docs/scale.md, "Measured at scale" and "Capacity plan").

(a) Builds of the demo shop (`segsrv demo-data`; default 1M customers, ~10M order lines) as one snapshot
    (N = 1, `segsrv build`) and with `--shards N` (default 4 and 8), each from scratch in a fresh child
    process: wall time, CPU seconds, peak RSS of the build process (the sharded build is one process
    building its shards in turn), customers per second and per CPU-second. One shard's build alone and
    the dictionary pass are measured by bench/shard_memory.py (a fresh process each). A build whose peak,
    extrapolated linearly from a smaller measured size, does not fit in 80% of the memory available now
    is skipped, with the reason and the extrapolation printed (a 5M single build needs ~23 GB).
(b) Query latency on the first size: Count, Relate over ~100 features (bench/relate.py's few fields) and
    over every field, on the customers universe, conditions drawn as bench/relate.py draws them; median
    of --repeats calls through SegmentationService (the path a server's handler takes, with a server's
    default privacy floor and one kernel thread), unsharded (the anchor) vs sharded in-process (N = 4, 8), every sharded answer checked against the unsharded one;
    then the same requests through a gRPC server over each build (create_server, what `segsrv serve`
    runs, in its own process, as bench/grpc_relate.py runs it), next to an empty-RPC server (the anchor
    of one gRPC hop). Per hop: the gRPC median minus the in-process median. Each figure is printed twice:
    the median of every call, and the median over the 20 requests of each one's fastest call (steadier
    on a machine other jobs load; common.best_ms).
    Then through the Ray router (issue 18, item 4), for each N of --ray-shards (default 4 and 8): a local
    Ray instance with this machine's CPUs, `segsrv serve-ray`'s deployment of the N-shard build
    (bench/common.py's ray_serve_router: ceil(N / --ray-shards-per-replica) shard groups, one replica
    each, default one group per CPU), the same requests over gRPC through Ray Serve's proxy, every
    answer checked against `segsrv serve`'s over the same build; per hop (bench/ray_router.py's
    hop_costs): the ingress hop (client -> proxy -> router -> client, a call refused before any shard
    call) and one shard-group call from a handle (no work, and with one shard's Count). It runs in a
    child process bounded by --ray-timeout seconds, Ray stopped at the end; --no-ray skips it.
(c) The capacity plan's inputs: snapshot bytes per customer and per set feature (a row's feature: the
    sum of every universe's feature counts), build CPU-seconds per customer, fan-out latency per hop and
    per shard. docs/scale.md turns them into the plan for 100M and 1B customers.

The machine is usually shared (the load average is printed and recorded): figures are for this machine
at that load.

    python bench/scale.py [--customers 1000000 [5000000]] [--shards 4 8] [--repeats 200] [--calls 200]
                          [--rebuild] [--ray-shards 4 8] [--ray-shards-per-replica K] [--ray-timeout 900]
                          [--no-ray]

Builds are kept in bench/.data/scale-CUSTOMERS/ with their measurements; a later run reuses them unless
--rebuild is given (the query part always runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from common import DATA_ROOT, best_ms, busy_processes, child_usage, cpu_model, demo_tables, write_result
from grpc_relate import latency_main, start_servers, stop_servers
from relate import conditions, pick_fields

from segsrv import _kernels
from segsrv.ops import CountQuery, RelateQuery
from segsrv.ops.base import Selector

REPO = Path(__file__).resolve().parent.parent
SHARD_MEMORY = Path(__file__).resolve().parent / "shard_memory.py"
MEMORY_HEADROOM = 0.8  # a build may use at most this share of the memory available when it starts
SHAPES = ("count", "relate_100", "relate_every")


# --- (a) builds -------------------------------------------------------------------------------------


def sharded_spec(spec: Path) -> Path:
    """The demo spec plus [shards] entity = "customers", beside it (its data paths are relative)."""
    out = spec.with_name("spec-sharded.toml")
    text = spec.read_text() + '\n[shards]\nentity = "customers"\n'
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_dir(customers: int, shards: int) -> Path:
    return DATA_ROOT / f"scale-{customers}" / ("single" if shards == 1 else f"shards-{shards}")


def measure_build(customers: int, shards: int, rebuild: bool) -> dict:
    """One build from scratch in a fresh process (cached with its measurement unless `rebuild`)."""
    out = build_dir(customers, shards)
    record = out.with_suffix(".json")
    if not rebuild and record.exists() and out.exists():
        return {**json.loads(record.read_text()), "cached": True}
    spec = demo_tables(customers)
    shutil.rmtree(out, ignore_errors=True)
    if shards == 1:
        usage = child_usage([sys.executable, "-m", "segsrv", "build", str(spec), "--out", str(out), "--quiet"])
    else:
        usage = child_usage([sys.executable, "-m", "segsrv", "build", str(sharded_spec(spec)), "--out", str(out),
                             "--shards", str(shards), "--quiet"])
    result = {"customers": customers, "shards": shards, **{k: round(v, 2) for k, v in usage.items()},
              "disk_mb": round(tree_bytes(out) / 1e6, 1), "loadavg": os.getloadavg()[0]}
    if shards > 1:  # one shard's build alone, and the dictionary pass, each in a fresh process
        probe = DATA_ROOT / f"scale-{customers}" / "shard-probe"
        shutil.rmtree(probe, ignore_errors=True)
        proc = child_json([sys.executable, str(SHARD_MEMORY), str(sharded_spec(spec)), str(probe), "--shards",
                           str(shards), "--json"])
        shutil.rmtree(probe, ignore_errors=True)
        result.update(one_shard_peak_rss_mb=proc["shard_peak_mb"], dictionary_peak_rss_mb=proc["dictionary_peak_mb"])
    record.write_text(json.dumps(result, indent=2))
    return result


def child_json(args: list[str]) -> dict:
    import subprocess

    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def fits(customers: int, shards: int, measured: list[dict]) -> tuple[bool, str, float | None]:
    """Whether a build is expected to fit in memory now: its peak extrapolated linearly in customers from
    the largest measured build with the same N (None when there is none: it is tried)."""
    same = [m for m in measured if m["shards"] == shards and m["customers"] < customers]
    if not same:
        return True, "", None
    base = max(same, key=lambda m: m["customers"])
    predicted = base["peak_rss_mb"] * customers / base["customers"]
    available = psutil.virtual_memory().available / 2**20
    if predicted <= MEMORY_HEADROOM * available:
        return True, "", predicted
    return False, (f"predicted peak {predicted:,.0f} MB ({base['peak_rss_mb']:,.0f} MB at {base['customers']:,} "
                   f"customers x {customers / base['customers']:g}) exceeds {MEMORY_HEADROOM:.0%} of the "
                   f"{available:,.0f} MB available now"), predicted


def run_builds(sizes: list[int], shard_counts: list[int], rebuild: bool) -> list[dict]:
    builds: list[dict] = []
    for customers in sizes:
        for n in [1, *shard_counts]:
            ok, why, predicted = fits(customers, n, builds)
            if not ok:
                print(f"  {customers:>10,} N={n}: SKIPPED: {why}; extrapolated wall time "
                      f"{extrapolated_wall(customers, n, builds):,.0f} s")
                builds.append({"customers": customers, "shards": n, "skipped": why,
                               "extrapolated_peak_rss_mb": round(predicted),
                               "extrapolated_wall_s": round(extrapolated_wall(customers, n, builds))})
                continue
            b = measure_build(customers, n, rebuild)
            builds.append(b)
            print_build(b, next((x for x in builds if x["customers"] == customers and x["shards"] == 1
                                 and "skipped" not in x), None))
    return builds


def extrapolated_wall(customers: int, shards: int, builds: list[dict]) -> float:
    same = [m for m in builds if m["shards"] == shards and "wall_s" in m]
    base = max(same, key=lambda m: m["customers"])
    return base["wall_s"] * customers / base["customers"]


def print_build(b: dict, single: dict | None) -> None:
    line = (f"  {b['customers']:>10,} N={b['shards']}: wall {b['wall_s']:7.1f} s  cpu {b['cpu_s']:7.1f} s  "
            f"peak RSS {b['peak_rss_mb']:7,.0f} MB  disk {b['disk_mb']:7,.0f} MB  "
            f"{b['customers'] / b['cpu_s']:8,.0f} customers per CPU-second")
    if b["shards"] > 1:
        line += (f"  | one shard alone {b['one_shard_peak_rss_mb']:,.0f} MB, dictionary pass "
                 f"{b['dictionary_peak_rss_mb']:,.0f} MB")
        if single is not None:
            line += (f"  | vs N=1 (anchor): peak {single['peak_rss_mb'] / b['peak_rss_mb']:.1f}x less, "
                     f"wall {b['wall_s'] / single['wall_s']:.2f}x")
    print(line + ("  (cached)" if b.get("cached") else ""))


# --- (b) queries ------------------------------------------------------------------------------------


def query_sets(snapshot) -> dict[str, list]:
    """Per shape, the queries of the run (cycled): 20 conditions drawn from the customers' features."""
    u = snapshot.universes["customers"]
    conds = conditions(u)
    few = pick_fields(u)
    return {
        "count": [CountQuery(where=c, universe="customers") for c in conds],
        "relate_100": [RelateQuery(where=c, universe="customers", relate=few, limit=20) for c in conds],
        "relate_every": [RelateQuery(where=c, universe="customers", limit=20) for c in conds],
    }


def same_answers(shape: str, a, b) -> bool:
    if shape == "count":
        return (a.count, a.n_rows) == (b.count, b.n_rows)
    return ((a.n_rows, a.n_condition, a.n_matching) == (b.n_rows, b.n_condition, b.n_matching)
            and [(h.field, h.value, h.stats.get("support")) for h in a.hits]
            == [(h.field, h.value, h.stats.get("support")) for h in b.hits])


def in_process(services: dict, queries: dict[str, list], repeats: int) -> tuple[dict, dict]:
    """({build: {shape: median ms}}, the same of each request's fastest call: common.best_ms); every answer
    of a sharded build equal to the unsharded one's."""
    out: dict = {}
    best: dict = {}
    reference = {shape: [services["single"].call(q) for q in qs] for shape, qs in queries.items()}
    for build, service in services.items():
        out[build], best[build] = {}, {}
        for shape, qs in queries.items():
            n = repeats if shape != "relate_every" else max(20, repeats // 4)
            for i, q in enumerate(qs):  # warm, and check
                assert same_answers(shape, service.call(q), reference[shape][i]), (build, shape, i)
            ts = []
            for i in range(n):
                t = time.perf_counter()
                service.call(qs[i % len(qs)])
                ts.append(time.perf_counter() - t)
            out[build][shape] = round(float(np.median(ts)) * 1e3, 3)
            best[build][shape] = round(best_ms(ts, len(qs)), 3)
    return out, best


def request_blobs(queries: dict[str, list]) -> dict[str, list[bytes]]:
    return {shape: [q.to_proto(Selector("demo")).SerializeToString() for q in qs] for shape, qs in queries.items()}


METHOD = {"count": "Count", "relate_100": "Relate", "relate_every": "Relate"}


def shape_calls(calls: int, shape: str) -> int:
    """Calls per shape: every field costs ~10x more, so a quarter (at least 50)."""
    return calls if shape != "relate_every" else max(50, calls // 4)


def through_grpc(ctx, kind: str, root: str | None, blobs: dict[str, list[bytes]], calls: int) -> dict:
    """{shape: latency_main's result (p50_ms, answers, ...)} of sequential calls on one channel
    (bench/grpc_relate.py), through a server of `kind` ("segsrv" over `root`, or "empty": one per
    method) started here."""
    out = {}
    started = None
    try:
        for shape, requests in blobs.items():
            if started is None or kind == "empty":
                if started is not None:
                    stop_servers(started[1], started[2])
                started = start_servers(ctx, kind, root, 1, METHOD[shape])
            queue = ctx.Queue()
            proc = ctx.Process(target=latency_main, args=(started[0], requests, shape_calls(calls, shape), None,
                                                          queue, METHOD[shape], kind == "segsrv"))
            proc.start()
            out[shape] = queue.get(timeout=1800)
            proc.join()
    finally:
        if started is not None:
            stop_servers(started[1], started[2])
    return out


def ray_router_main(location: str, blobs: dict[str, list[bytes]], calls: int, shards_per_replica: int,
                    count_where, timeout: float, out) -> None:
    """In a fresh process: a local Ray with the router over LOCATION (ROOT/NAME), each shape's latency
    through it (latency_main, with its answers), the per-hop costs (bench/ray_router.py) and the Ray
    processes' memory; puts the dict (or {"error": ...}) on `out`. Ray is stopped when this returns,
    also on SIGTERM (the parent's time limit)."""
    import queue
    import signal
    import traceback

    from ray_router import hop_costs

    from common import ray_serve_router

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: the application deleted, Ray stopped
    result: dict = {"shards_per_replica": shards_per_replica}
    try:
        t0 = time.perf_counter()
        with ray_serve_router(location, shards_per_replica=shards_per_replica, timeout=timeout) as router:
            result["startup_s"] = round(time.perf_counter() - t0, 1)
            for shape, requests in blobs.items():
                answers = queue.Queue()
                latency_main(router, requests, shape_calls(calls, shape), None, answers, METHOD[shape], True)
                result[shape] = answers.get()
            result["hops"] = hop_costs(router, location, CountQuery(where=count_where, universe="customers"), calls)
            result["memory_mb"] = ray_memory_mb()
    except Exception:  # noqa: BLE001 - reported by the parent with the rest of the run
        result["error"] = traceback.format_exc()
    out.put(result)


def ray_memory_mb() -> dict[str, dict]:
    """RSS and USS (memory of its own: not the shared page cache of the mapped shards) of each Ray Serve
    process (router, shard replicas, proxy, controller), by its process title."""
    out = {}
    for proc in psutil.Process().children(recursive=True):  # this driver's Ray: raylet -> workers, not another's
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController")):
            try:
                mem = proc.memory_full_info()
            except psutil.Error:
                continue
            out[title.split()[0].removeprefix("ray::").split(".")[0]] = {"rss": round(mem.rss / 2**20), "uss": round(mem.uss / 2**20)}
    return out


def through_ray_router(ctx, location: Path, blobs: dict[str, list[bytes]], calls: int, shards_per_replica: int,
                       count_where, timeout: float) -> dict:
    """ray_router_main in a spawned process, given `timeout` seconds in all (then stopped: SIGTERM, then
    SIGKILL): its dict, or {"error": ...}."""
    import queue as queues

    out = ctx.Queue()
    proc = ctx.Process(target=ray_router_main, args=(str(location), blobs, calls, shards_per_replica, count_where,
                                                     timeout, out))
    proc.start()
    try:
        result = out.get(timeout=timeout)
    except queues.Empty:
        result = {"error": f"no answer within --ray-timeout {timeout:g} s; stopped"}
    proc.join(120)  # Ray stops
    if proc.is_alive():
        proc.terminate()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return result


def check_router_answers(router: dict, served: dict) -> list[str]:
    """The shapes whose answers through the router differ from `segsrv serve`'s over the same build."""
    return [shape for shape in SHAPES if router[shape].pop("answers") != served[shape]["answers"]]


# --- (c) capacity inputs ----------------------------------------------------------------------------


def difference(a: dict, b: dict) -> dict:
    """{shape: a - b} (ms)."""
    return {shape: round(a[shape] - b[shape], 3) for shape in SHAPES}


def capacity_inputs(snapshot, builds: list[dict], inproc: dict, grpc_ms: dict, shard_counts: list[int],
                    ray: dict, inproc_best: dict, grpc_best: dict) -> dict:
    customers = snapshot.universes["customers"].n_rows
    single = next(b for b in builds if b["customers"] == customers and b["shards"] == 1)
    set_features = int(sum(int(np.asarray(u.feature_count, dtype=np.int64).sum()) for u in snapshot.universes.values()))
    rows = {name: int(u.n_rows) for name, u in snapshot.universes.items()}
    out = {
        "customers": customers,
        "rows": rows,
        "set_features": set_features,
        "snapshot_bytes_per_customer": round(single["disk_mb"] * 1e6 / customers, 1),
        "snapshot_bytes_per_set_feature": round(single["disk_mb"] * 1e6 / set_features, 2),
        "build_cpu_s_per_million_customers": {
            str(b["shards"]): round(b["cpu_s"] * 1e6 / b["customers"], 1)
            for b in builds if b["customers"] == customers and "cpu_s" in b},
        "grpc_hop_ms": {shape: round(grpc_ms["empty"][shape], 3) for shape in SHAPES},
        "per_hop_ms": {build: difference(grpc_ms[build], inproc[build]) for build in inproc if build in grpc_ms},
        "per_hop_best_ms": {build: difference(grpc_best[build], inproc_best[build])
                            for build in inproc if build in grpc_best},
        "in_process_cost_per_shard_ms": {
            f"shards-{n}": {shape: round((inproc[f"shards-{n}"][shape] - inproc["single"][shape]) / n, 3)
                            for shape in SHAPES} for n in shard_counts if f"shards-{n}" in inproc},
        "ray_router_per_hop_ms": {
            key: {"over_in_process": difference(r["p50_ms"], inproc[key.removeprefix("ray-")]),
                  "over_in_process_best": difference(r["best_ms"], inproc_best[key.removeprefix("ray-")]),
                  **{hop: round(ms, 3) for hop, ms in r["hops"].items()}}
            for key, r in ray.items() if "error" not in r},
    }
    for b in builds:
        if b["customers"] == customers and b["shards"] > 1 and "disk_mb" in b:
            out.setdefault("sharded_disk_overhead", {})[str(b["shards"])] = round(b["disk_mb"] / single["disk_mb"], 3)
    return out


def measure_ray(ctx, args, first: int, blobs: dict, count_where, served: dict) -> dict:
    """{"ray-shards-N": figures} through the Ray router over each N of --ray-shards (through_ray_router),
    its answers checked against `segsrv serve`'s over the same build (`served`)."""
    import importlib.util

    out = {}
    if args.ray_shards and importlib.util.find_spec("ray") is None:
        print("  Ray router: not measured, Ray is not installed (pip install segsrv[ray])")
        return out
    for n in args.ray_shards:
        per_replica = args.ray_shards_per_replica or -(-n // os.cpu_count())
        print(f"  Ray router over the {n}-shard build: local Ray, {-(-n // per_replica)} shard groups of "
              f"{per_replica} (one replica each), at most {args.ray_timeout:g} s ...", flush=True)
        r = through_ray_router(ctx, build_dir(first, n) / "demo", blobs, args.calls, per_replica, count_where,
                               args.ray_timeout)
        if "error" not in r:
            differ = check_router_answers(r, served[f"shards-{n}"])
            r = {"shards": n, "shards_per_replica": per_replica, "startup_s": r["startup_s"],
                 **{stat: {shape: round(r[shape][stat], 3) for shape in SHAPES} for stat in ("p50_ms", "best_ms")},
                 "p99_ms": {shape: round(r[shape]["p99_ms"], 3) for shape in SHAPES},
                 "hops": r["hops"], "memory_mb": r["memory_mb"], "answers_equal_segsrv_serve": not differ}
            if differ:
                print(f"  ANSWERS DIFFER from segsrv serve's over the same build: {differ}")
        else:
            print(f"  FAILED:\n{r['error']}")
        out[f"ray-shards-{n}"] = r
    return out


def print_queries(inproc: dict, grpc_ms: dict, ray: dict, stat: str) -> None:
    """The table of (b), of `stat` ("p50_ms" or "best_ms": the router's figure to print)."""
    anchor = inproc["single"]

    def row(label: str, ms: dict, tail: str = "") -> None:
        print(f"  {label:26s}" + "".join(f"{ms[s]:16.3f}" for s in SHAPES) + tail)

    def ratio(ms: dict) -> str:
        return "   x anchor: " + " ".join(f"{ms[s] / anchor[s]:.2f}" for s in SHAPES)

    def hop(ms: dict, base: dict) -> str:
        return "   per hop: " + " ".join(f"{ms[s] - base[s]:.3f}" for s in SHAPES)

    print(f"  {'':26s}" + "".join(f"{s:>16s}" for s in SHAPES))
    row("empty RPC (hop anchor)", grpc_ms["empty"])
    for build in inproc:
        row(f"{build} in-process", inproc[build], "   (anchor)" if build == "single" else ratio(inproc[build]))
        row(f"{build} segsrv serve", grpc_ms[build], ratio(grpc_ms[build]) + hop(grpc_ms[build], inproc[build]))
    for key, r in ray.items():
        if "error" in r:
            print(f"  {key + ' router':26s} failed (above)")
            continue
        row(f"{key} router", r[stat], ratio(r[stat]) + hop(r[stat], inproc[key.removeprefix("ray-")]))
        if stat != "p50_ms":
            continue
        h = r["hops"]
        memory = ", ".join(f"{name} {m['rss']}/{m['uss']}" for name, m in r["memory_mb"].items())
        print(f"  {'':26s}ingress hop {h['ingress_hop_ms']:.3f}, one shard-group call {h['shard_hop_ms']:.3f} "
              f"(with one shard's Count {h['shard_count_ms']:.3f}); started in {r['startup_s']:.0f} s; answers "
              f"{'equal' if r['answers_equal_segsrv_serve'] else 'DIFFER from'} segsrv serve's; memory MB "
              f"(RSS/USS) {memory}")


def print_busy(processes: list[str]) -> None:
    print("  other processes at >= 20% CPU (ps's average over each one's life): "
          + ("; ".join(processes) if processes else "none"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--shards", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=200, help="in-process calls per shape (every field: a quarter)")
    ap.add_argument("--calls", type=int, default=200, help="gRPC calls per shape (every field: a quarter)")
    ap.add_argument("--rebuild", action="store_true", help="build again even when a measured build is kept")
    ap.add_argument("--ray-shards", type=int, nargs="+", default=[4, 8],
                    help="the N of the builds measured through the Ray router (each one of --shards)")
    ap.add_argument("--ray-shards-per-replica", type=int, default=0, metavar="K",
                    help="shards per shard-replica deployment (default: N / CPUs, one group per CPU)")
    ap.add_argument("--ray-timeout", type=float, default=900, metavar="SECONDS",
                    help="the Ray router's measurement per N, start and stop included, stopped past it")
    ap.add_argument("--no-ray", action="store_true", help="do not measure through the Ray router")
    args = ap.parse_args()
    if args.no_ray:
        args.ray_shards = []
    elif not set(args.ray_shards) <= set(args.shards):
        ap.error(f"--ray-shards {args.ray_shards}: each must be one of --shards {args.shards} (its answers are "
                 f"checked against segsrv serve's over that build)")
    sizes = sorted(args.customers)
    machine = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
               "loadavg_start": os.getloadavg()[0], "busy_processes_start": busy_processes()}
    print(f"scale-out bench on {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']} GiB; load average "
          f"{machine['loadavg_start']:.1f} at start: the machine is shared with other jobs, figures are at that load")
    print_busy(machine["busy_processes_start"])

    print("(a) builds (each from scratch in a fresh process; anchor: the single build, N=1)")
    builds = run_builds(sizes, args.shards, args.rebuild)

    first = sizes[0]
    print(f"(b) query latency at {first:,} customers, customers universe; median ms; one kernel thread per "
          f"call in-process too, as a server runs its calls")
    from segsrv.engine import set_kernel_threads
    from segsrv.service import local_service

    from segsrv.engine.privacy import DEFAULT_PRIVACY_K
    from segsrv.service import SegmentationService

    # create_server's defaults (one kernel thread, its privacy floor): the in-process and gRPC figures
    # differ by the hop only
    set_kernel_threads(1)
    services = {build: SegmentationService(local_service(build_dir(first, n) / "demo").snapshots,
                                           privacy_k=DEFAULT_PRIVACY_K)
                for build, n in [("single", 1), *((f"shards-{n}", n) for n in args.shards)]}
    snapshot = services["single"].snapshots.snapshot
    queries = query_sets(snapshot)
    inproc, inproc_best = in_process(services, queries, args.repeats)
    ctx = mp.get_context("spawn")  # grpc is used in this process (requests): no fork
    blobs = request_blobs(queries)
    served = {"empty": through_grpc(ctx, "empty", None, blobs, args.calls)}
    for build in services:
        served[build] = through_grpc(ctx, "segsrv", str(build_dir(first, 1 if build == "single" else
                                                                   int(build.split("-")[1]))), blobs, args.calls)
    grpc_ms, grpc_best = ({build: {shape: round(r[stat], 3) for shape, r in by_shape.items()}
                          for build, by_shape in served.items()} for stat in ("p50_ms", "best_ms"))
    ray = measure_ray(ctx, args, first, blobs, queries["count"][0].where, served)
    print_queries(inproc, grpc_ms, ray, "p50_ms")
    print("  the median over the 20 requests of each one's fastest call (steadier when other jobs load the "
          "machine):")
    print_queries(inproc_best, grpc_best, ray, "best_ms")

    capacity = capacity_inputs(snapshot, builds, inproc, grpc_ms, args.shards, ray, inproc_best, grpc_best)
    print("(c) capacity plan inputs")
    print(f"  snapshot bytes per customer {capacity['snapshot_bytes_per_customer']:,.0f}, per set feature "
          f"{capacity['snapshot_bytes_per_set_feature']:.2f} ({capacity['set_features']:,} set features over "
          f"{capacity['rows']})")
    print(f"  build CPU-seconds per million customers by N: {capacity['build_cpu_s_per_million_customers']}")
    print(f"  sharded disk / single disk by N: {capacity.get('sharded_disk_overhead')}")
    print(f"  per hop (segsrv serve - in-process) ms: {capacity['per_hop_ms']}; of each request's fastest call: "
          f"{capacity['per_hop_best_ms']}")
    print(f"  in-process cost per shard ms: {capacity['in_process_cost_per_shard_ms']}")
    print(f"  Ray router per hop ms: {capacity['ray_router_per_hop_ms']}")
    machine["loadavg_end"] = os.getloadavg()[0]
    machine["busy_processes_end"] = busy_processes()
    machine["kernel_threads"] = _kernels.get_num_threads()
    print(f"load average at the end {machine['loadavg_end']:.1f}")
    print_busy(machine["busy_processes_end"])
    result = {"machine": machine, "builds": builds, "in_process_median_ms": inproc, "grpc_p50_ms": grpc_ms,
              "in_process_best_ms": inproc_best, "grpc_best_ms": grpc_best,
              "ray_router": ray, "capacity_inputs": capacity}
    print(f"results: {write_result('scale', result)}")


if __name__ == "__main__":
    main()
