"""gRPC Relate benchmark: our server against an empty server on the same stack.

Two servers, each in its own process(es), built the same way (grpcio sync server,
the same thread pool size, options and concurrency limit as
segsrv.server.app.create_server):

  empty   a generic handler for /segsrv.v1.SegmentationService/Relate that
          parses the request and returns an empty RelateResponse (the floor:
          pure per-RPC framework cost)
  segsrv  create_server over the 1M-customer demo snapshot (bench/common.py)

The requests are the same for both: Relate over the customers universe, a few
fields (~100 features, bench/relate.py's pick_fields) and 20 conditions
(bench/relate.py's conditions), limit 20. Measured per server:

  * sequential latency p50/p99: one client, one channel, ~500 calls
  * throughput at concurrency 1, 8, 32: closed loop for ~5 s, the load spread
    over up to 4 client processes (each with its own channel / connection, or
    4 of them when the server runs as several processes: below), threads within
    a process sharing its channel(s)
  * server CPU per RPC (from /proc/PID/stat) and client CPU, to say what limits it, and the server's
    context switches per RPC (its threads' /proc/PID/task/*/status: GIL and thread hand-offs)
  * the floor (issue 16, item 1): what a Relate must cost at least, the empty RPC's server CPU plus
    the bytes its counts read at the memory bandwidth this machine's probe reads
    (segsrv._kernels.read_bandwidth_probe, one thread, 256 MB, best of 5). Counted bytes: the
    condition's bitset and, per candidate feature, its dense row or its sparse ids (what the issue
    counts as "~11 MB" for ~90 features at 1M rows), averaged over the 20 requests. The histogram plan
    reads the condition's rows of the CSR index instead, fewer bytes at random places; the engine picks
    it only where it estimates it cheaper, and the ratio against those bytes is printed beside.
    Printed: segsrv's server CPU per Relate / floor at the highest concurrency (target <= 1.5), for the
    few-fields request and for "every field" (no `relate`: every field but the identifier-like ones).
    The host's speed drifts by tens of percent over minutes, so the floor is measured in --floor-rounds
    interleaved rounds (default 5) on servers started side by side: each round probes the memory bandwidth,
    runs the empty server, then segsrv on the few-fields requests, then on "every field", one closed-loop
    window each, and its ratios divide by that round's floor (its empty-RPC CPU and its bandwidth); the
    median over the rounds is the figure (five rounds: a single round on this shared host has come out a third
    above its neighbours, and three left the median one such round from the figure). Beside it, not the target:
    the ratio at the bandwidth each stream gets when as many threads as server processes stream at once
    (concurrent_bandwidth; each round), since the server's processes share the memory bus (two streams on the
    2-core EPYC read 16-17 GB/s each against 27-28 alone): what part of the gap the shared bus explains.

Both servers run as --processes processes sharing the port (SO_REUSEPORT), by default one per CPU as
`segsrv serve` does; server CPU is the sum over them. The kernel hashes each client connection to a process,
so with one connection per client process (4 in all) a window put every connection on one process about one
time in eight (24 trials: 13 even, 8 three to one, 3 all on one), which then served alone with the other
idle, its handler threads taking turns at its GIL (19 context switches per Relate against 7): with several
server processes each client process opens CONNECTIONS_PER_CLIENT connections (16 in all), its threads
spread over them, as many callers would. Each floor round prints the part of the servers' CPU their busiest
process took (an even spread: 1 / processes).

    python bench/grpc_relate.py [--seconds 5] [--calls 500] [--customers 1000000] [--processes N]
                                [--floor-rounds 5]
"""

from __future__ import annotations

import argparse
import glob
import inspect
import multiprocessing as mp
import os
import statistics
import threading
import time

from common import best_ms, demo_snapshot, percentile, sparse_bytes, write_result

from segsrv.cpus import usable_cpus

CONCURRENCY = (1, 8, 32)
MAX_CLIENT_PROCS = 4
CONNECTIONS_PER_CLIENT = 4  # per client process, when the server runs as several processes
TARGET_RATIO = 0.60  # Count and single-id Assign QPS against the empty server's (bench/grpc_calls.py)
FLOOR_TARGET = 1.5  # Relate's server CPU against its floor (issue 16, item 1)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- servers (each in its own process) -------------------------------------------------------


def _server_defaults() -> dict:
    from segsrv.server.app import create_server

    return {k: p.default for k, p in inspect.signature(create_server).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _empty_server(method: str = "Relate", port: int = 0, reuse_port: bool = False):
    """The same grpc.server construction as create_server, with a handler of `method` that does nothing."""
    from concurrent import futures

    import grpc

    d = _server_defaults()
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", int(d["max_receive_message_bytes"])),
        ("grpc.max_send_message_length", int(d["max_send_message_bytes"])),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=d["max_workers"], thread_name_prefix="empty-rpc"),
                         options=options, maximum_concurrent_rpcs=d["max_concurrent_rpcs"])
    request_type, response_type = _messages(method)
    empty = response_type()
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: empty,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "segsrv.v1.SegmentationService", {method: handler}),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    return server, port


def _messages(method: str):
    """(request, response) message classes of a unary SegmentationService method."""
    from segsrv.v1 import segsrv_pb2 as pb

    desc = pb.DESCRIPTOR.services_by_name["SegmentationService"].methods_by_name[method]
    return getattr(pb, desc.input_type.name), getattr(pb, desc.output_type.name)


def server_main(kind: str, root: str, conn, stop, method: str = "Relate", port: int = 0,
                reuse_port: bool = False) -> None:
    if kind == "empty":
        server, port = _empty_server(method, port, reuse_port)
    else:
        from segsrv.server.app import create_server

        server, port = create_server(root, host="127.0.0.1", port=port, reuse_port=reuse_port)
    server.start()
    conn.send(port)
    stop.wait()
    server.stop(0)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of process `pid` so far (threads that
    ended are not counted: the servers' thread pools keep theirs)."""
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:  # the thread ended meanwhile
            pass
    return total


# --- clients ------------------------------------------------------------------------------


def _stub(addr: str):
    import grpc

    from segsrv.v1 import segsrv_pb2_grpc

    channel = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, segsrv_pb2_grpc.SegmentationServiceStub(channel)


def _requests(blobs: list[bytes], method: str = "Relate"):
    request_type = _messages(method)[0]
    return [request_type.FromString(b) for b in blobs]


def latency_main(addr: str, blobs: list[bytes], calls: int, client_queries: list[dict] | None, out,
                 method: str = "Relate", keep_answers: bool = False) -> None:
    """Sequential calls on one channel: per-call latency (raw stub), and the SegsrvClient path. With
    `keep_answers`, "answers": the first answer to each request, serialized without its `info` (which
    holds the server's time), to compare two servers' answers."""
    channel, stub = _stub(addr)
    reqs = _requests(blobs, method)
    rpc = getattr(stub, method)
    answers = []
    for i in range(max(50, len(reqs))):  # connect, warm caches
        resp = rpc(reqs[i % len(reqs)], timeout=30)
        if i < len(reqs):
            resp.ClearField("info")
            answers.append(resp.SerializeToString(deterministic=True))
    lat, server_ms = [], []
    for i in range(calls):
        t = time.perf_counter()
        resp = rpc(reqs[i % len(reqs)], timeout=30)
        lat.append(time.perf_counter() - t)
        server_ms.append(resp.info.server_time_ms)
    result = {"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
              "best_ms": best_ms(lat, len(reqs)),
              "server_time_p50_ms": percentile(server_ms, 50)}
    if keep_answers:
        result["answers"] = answers
    if client_queries:  # the whole client path: JSON query -> request -> RPC -> rendered dict
        from segsrv.client import SegsrvClient

        with SegsrvClient(addr) as client:
            queries = client_queries
            for q in queries[:10]:
                client.relate(q)
            lat2 = []
            for i in range(min(calls, 200)):
                t = time.perf_counter()
                client.relate(queries[i % len(queries)])
                lat2.append(time.perf_counter() - t)
        result["client_relate_p50_ms"] = percentile(lat2, 50) * 1e3
    channel.close()
    out.put(result)


def load_main(addr: str, blobs: list[bytes], threads: int, start, seconds: float, ready, out,
              method: str = "Relate", connections: int = 1) -> None:
    """Closed loop: `threads` threads over `connections` channels (each its own connection; thread k on channel
    k mod connections), for `seconds` from the shared start time."""
    channels = [_stub(addr) for _ in range(max(1, connections))]
    reqs = _requests(blobs, method)
    rpcs = [getattr(stub, method) for _, stub in channels]
    for i in range(max(20, len(rpcs))):
        rpcs[i % len(rpcs)](reqs[i % len(reqs)], timeout=30)
    ready.put(True)
    while start.value == 0.0:
        time.sleep(0.002)
    start_at = start.value
    stop_at = start_at + seconds
    counts = [0] * threads
    errors = [0] * threads

    def loop(k: int) -> None:
        i = k
        rpc = rpcs[k % len(rpcs)]
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            try:
                rpc(reqs[i % len(reqs)], timeout=30)
                counts[k] += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors[k] += 1
            i += threads

    cpu0 = time.process_time()
    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put({"calls": sum(counts), "errors": sum(errors), "cpu_s": time.process_time() - cpu0})
    for channel, _ in channels:
        channel.close()


def throughput(ctx, addr: str, blobs: list[bytes], concurrency: int, seconds: float, server_pids: list[int],
               method: str = "Relate") -> dict:
    procs = min(concurrency, MAX_CLIENT_PROCS)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    # several server processes: several connections per client process, so that the kernel's placement of
    # connections on processes (a hash per connection) is about even in every window (module docstring)
    connections = [min(n, CONNECTIONS_PER_CLIENT if len(server_pids) > 1 else 1) for n in per]
    ready, out = ctx.Queue(), ctx.Queue()
    start = ctx.Value("d", 0.0)  # set once every client is connected and warm
    workers = [ctx.Process(target=load_main, args=(addr, blobs, n, start, seconds, ready, out, method, m))
               for n, m in zip(per, connections)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=120)
    start_at = time.time() + 0.2
    stop_at = start_at + seconds
    start.value = start_at
    time.sleep(max(0.0, start_at - time.time()))
    cpus0 = [proc_cpu_seconds(pid) for pid in server_pids]
    switches0 = sum(map(proc_context_switches, server_pids))
    time.sleep(max(0.0, stop_at - time.time()))
    cpus1 = [proc_cpu_seconds(pid) for pid in server_pids]
    switches1 = sum(map(proc_context_switches, server_pids))
    cpu0, cpu1 = sum(cpus0), sum(cpus1)
    # how evenly the kernel placed the connections on the processes (module docstring)
    busiest = max((b - a for a, b in zip(cpus0, cpus1)), default=0.0) / (cpu1 - cpu0) if cpu1 > cpu0 else None
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    calls = sum(r["calls"] for r in results)
    return {
        "concurrency": concurrency,
        "client_processes": procs,
        "connections": sum(connections),
        "calls": calls,
        "errors": sum(r["errors"] for r in results),
        "qps": calls / seconds,
        "server_cores": (cpu1 - cpu0) / seconds,
        "server_cpu_us_per_rpc": (cpu1 - cpu0) / calls * 1e6 if calls else None,
        "server_context_switches_per_rpc": (switches1 - switches0) / calls if calls else None,
        "busiest_process_cpu_share": busiest,
        "client_cores": sum(r["cpu_s"] for r in results) / seconds,
    }


def start_servers(ctx, kind: str, root: str, processes: int, method: str = "Relate"):
    """`processes` server processes of `kind` on one port (SO_REUSEPORT when more than one, as `segsrv
    serve --workers N` runs them; the kernel spreads connections over them) -> (address, processes, stop)."""
    stop = ctx.Event()
    procs: list = []
    port = 0
    try:
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=server_main, args=(kind, root, child, stop, method, port, processes > 1))
            proc.start()
            procs.append(proc)
            port = parent.recv()
    except BaseException:
        stop_servers(procs, stop)
        raise
    return f"127.0.0.1:{port}", procs, stop


def stop_servers(procs, stop) -> None:
    stop.set()
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def run_server_bench(ctx, kind: str, root: str, blobs: list[bytes], queries: list[dict] | None, args,
                     method: str = "Relate") -> dict:
    """Latency and throughput at each concurrency of `kind` served by args.processes processes (default 1)."""
    addr, procs, stop = start_servers(ctx, kind, root, getattr(args, "processes", 1), method)
    pids = [p.pid for p in procs]
    try:
        out = ctx.Queue()
        lat = ctx.Process(target=latency_main, args=(addr, blobs, args.calls, queries if kind == "segsrv" else None,
                                                      out, method))
        lat.start()
        latency = out.get(timeout=300)
        lat.join()
        runs = [throughput(ctx, addr, blobs, c, args.seconds, pids, method) for c in CONCURRENCY]
        return {"latency": latency, "throughput": {str(r["concurrency"]): r for r in runs}}
    finally:
        stop_servers(procs, stop)


def floor_rounds(ctx, root: str, shapes: dict[str, list[bytes]], args) -> list[dict]:
    """Interleaved closed-loop windows at the highest concurrency (module docstring: the floor): both servers
    started side by side, then per round the memory probe, the empty server on the first shape's requests,
    then segsrv on each shape -> per round {"bandwidth": bytes/s, "empty": its throughput run, shape: segsrv's
    run}."""
    top = CONCURRENCY[-1]
    started = {}
    try:
        for kind in ("empty", "segsrv"):
            started[kind] = start_servers(ctx, kind, root, args.processes)
        empty_blobs = next(iter(shapes.values()))
        rounds = []
        for _ in range(args.floor_rounds):
            addr, procs, _stop = started["empty"]
            one = {"bandwidth": probed_bandwidth(),
                   "shared_bandwidth": concurrent_bandwidth(args.processes) if args.processes > 1 else None,
                   "empty": throughput(ctx, addr, empty_blobs, top, args.seconds, [p.pid for p in procs])}
            addr, procs, _stop = started["segsrv"]
            for shape, blobs in shapes.items():
                one[shape] = throughput(ctx, addr, blobs, top, args.seconds, [p.pid for p in procs])
            rounds.append(one)
        return rounds
    finally:
        for procs_stop in started.values():
            stop_servers(procs_stop[1], procs_stop[2])


def counted_bytes(root, queries: list[dict]) -> dict[str, float]:
    """Mean bytes the counts of these Relate queries read (module docstring: the floor), as
    {"bitsets": the condition's bitset and each candidate's dense row or sparse ids (the scan plan's
    reads, the issue's "~11 MB"), "plan": the same under the plan count_features chooses, where the
    histogram plan reads the condition's rows of the CSR index instead, and the scan's rows method the listed
    rows of the sparse CSR instead of the sparse ids}."""
    import numpy as np

    from segsrv import _kernels
    from segsrv.engine.conditions import evaluate
    from segsrv.engine.relate import candidate_features, count_features, feature_layout
    from segsrv.ops.relate import RelateQuery
    from segsrv.snapshot.reader import open_snapshot

    snap = open_snapshot(root)
    u = snap.universes["customers"]
    indptr = np.asarray(u.csr_indptr)
    bitsets = plan_bytes = 0.0
    for q in queries:
        query = RelateQuery.from_json(q)
        fids = candidate_features(u, query)
        bits = evaluate(snap, u, query.where)
        n_c = int(np.bitwise_count(bits).sum())
        _, plan = count_features(u, bits, n_c, fids)
        query_bytes = 8.0 * u.n_words
        slots = np.asarray(u.feature_slot[fids])
        dense = slots >= 0
        scan = query_bytes + 8.0 * u.n_words * int(dense.sum()) + 4.0 * float(
            np.asarray(u.feature_count[fids[~dense]]).sum())
        bitsets += scan
        if plan == "histogram":
            rows = _kernels.bitset_to_ids(bits, u.n_rows).astype(np.int64)
            plan_bytes += query_bytes + 4.0 * float((indptr[rows + 1] - indptr[rows]).sum()) + 16.0 * len(rows)
        else:  # Relate's layout: a partitioning field's costliest value is derived from the others, not read
            layout = feature_layout(u, fids, derive_partitions=True)
            plan_bytes += query_bytes + 8.0 * u.n_words * len(layout.dense) + sparse_bytes(u, bits, n_c, layout)
    return {"bitsets": bitsets / len(queries), "plan": plan_bytes / len(queries)}


def probed_bandwidth() -> float:
    """Bytes per second of one thread's streaming read (best of 5 over 256 MB)."""
    return concurrent_bandwidth(1)


def concurrent_bandwidth(streams: int) -> float:
    """Bytes per second each of `streams` threads reads when all stream at once (each its own 256 MB, the
    probe 5 times, started together; the median thread's best): what each server process's counts can read
    while the others' count too, the memory bus being shared."""
    import numpy as np

    from segsrv import _kernels

    bufs = [np.ones(32 << 20, dtype=np.uint64) for _ in range(streams)]
    barrier = threading.Barrier(streams)
    best = [0.0] * streams

    def run(i: int) -> None:
        for _ in range(5):
            barrier.wait()
            t = time.perf_counter()
            _kernels.read_bandwidth_probe(bufs[i])  # releases the GIL
            best[i] = max(best[i], bufs[i].nbytes / (time.perf_counter() - t))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.median(best)


def build_requests(root) -> tuple[list[bytes], list[str], list[dict], int, int]:
    """Serialized RelateRequests (customers, few fields, 20 conditions, limit 20), built by SegsrvClient."""
    from relate import conditions, pick_fields

    from segsrv.client import SegsrvClient
    from segsrv.ops.conditions import where_json
    from segsrv.snapshot.reader import open_snapshot

    snap = open_snapshot(root)
    u = snap.universes["customers"]
    fields = pick_fields(u)
    queries = [{"from": "customers", "where": where_json(c), "relate": fields, "limit": 20}
               for c in conditions(u)]
    client = SegsrvClient("127.0.0.1:1")  # request building only: no RPC
    try:
        blobs = [client.relate_request(q)[0].SerializeToString() for q in queries]
    finally:
        client.close()
    n_features = sum(len(u.fields[f].values) for f in fields)
    return blobs, fields, queries, n_features, u.n_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--processes", type=int, default=usable_cpus(),
                    help="server processes sharing the port, for both servers (default: one per CPU, as "
                         "`segsrv serve` runs by default; 1: one process)")
    ap.add_argument("--floor-rounds", type=int, default=5,
                    help="interleaved rounds of the floor's windows (module docstring; default 5)")
    args = ap.parse_args()
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    if args.floor_rounds < 1:
        ap.error("--floor-rounds must be at least 1")
    root = str(demo_snapshot(args.customers))
    blobs, fields, queries, n_features, n_rows = build_requests(root)
    every_queries = [{k: v for k, v in q.items() if k != "relate"} for q in queries]
    from segsrv.client import SegsrvClient

    with SegsrvClient("127.0.0.1:1") as client:  # request building only: no RPC
        every_blobs = [client.relate_request(q)[0].SerializeToString() for q in every_queries]
    floor_bytes = {"few fields": counted_bytes(root, queries), "every field": counted_bytes(root, every_queries)}
    bandwidth = probed_bandwidth()
    ctx = mp.get_context("spawn")  # this process has used grpc (request building): no fork
    t0 = time.perf_counter()
    servers = {kind: run_server_bench(ctx, kind, root, blobs, queries, args) for kind in ("empty", "segsrv")}
    rounds = floor_rounds(ctx, root, {"few fields": blobs, "every field": every_blobs}, args)
    empty, ours = servers["empty"], servers["segsrv"]
    ratios = {c: ours["throughput"][c]["qps"] / empty["throughput"][c]["qps"] for c in map(str, CONCURRENCY)}

    # what limits it, at the highest concurrency
    top = str(CONCURRENCY[-1])
    e, o = empty["throughput"][top], ours["throughput"][top]
    cores = os.cpu_count()
    engine_ms = ours["latency"]["server_time_p50_ms"]
    cpu_ratio = o["server_cpu_us_per_rpc"] / e["server_cpu_us_per_rpc"]
    limit_line = (
        f"at c={top}: each Relate costs the server {o['server_cpu_us_per_rpc']:.0f} us CPU against "
        f"{e['server_cpu_us_per_rpc']:.0f} us for an empty RPC ({cpu_ratio:.1f}x; the handler's time is "
        f"~{engine_ms:.2f} ms of it), in {args.processes} process(es) ({o['server_cores']:.2f} server cores used; "
        f"clients {o['client_cores']:.2f}; {cores} cores shared by server and clients). With both servers "
        f"CPU-bound the ratio could not exceed {1 / cpu_ratio:.0%}; the empty server was capped by the client "
        f"side here ({e['server_cores']:.2f} server cores), so the measured ratio is higher"
    )
    floor = {}
    for shape in floor_bytes:
        per_round = []
        for one in rounds:
            empty_us, run, bw = one["empty"]["server_cpu_us_per_rpc"], one[shape], one["bandwidth"]
            floor_us = empty_us + floor_bytes[shape]["bitsets"] / bw * 1e6
            shared_bw = one["shared_bandwidth"]
            shared_floor_us = empty_us + floor_bytes[shape]["bitsets"] / shared_bw * 1e6 if shared_bw else None
            plan_floor_us = empty_us + floor_bytes[shape]["plan"] / bw * 1e6
            per_round.append({"empty_us": empty_us, "bandwidth_gbs": bw / 1e9, "floor_us": floor_us,
                              "switches_per_rpc": run["server_context_switches_per_rpc"],
                              "empty_switches_per_rpc": one["empty"]["server_context_switches_per_rpc"],
                              "server_cpu_us_per_rpc": run["server_cpu_us_per_rpc"], "qps": run["qps"],
                              "busiest_process_cpu_share": run["busiest_process_cpu_share"],
                              "ratio": run["server_cpu_us_per_rpc"] / floor_us,
                              "ratio_to_plan_bytes": run["server_cpu_us_per_rpc"] / plan_floor_us,
                              "shared_bandwidth_gbs": shared_bw / 1e9 if shared_bw else None,
                              "ratio_at_shared_bandwidth": (run["server_cpu_us_per_rpc"] / shared_floor_us
                                                            if shared_floor_us else None),
                              "errors": run["errors"] + one["empty"]["errors"]})
        mid = sorted(per_round, key=lambda r: r["ratio"])[(len(per_round) - 1) // 2]  # the median round
        floor[shape] = {"counted_bytes": floor_bytes[shape]["bitsets"], "plan_bytes": floor_bytes[shape]["plan"],
                        **{k: mid[k] for k in ("empty_us", "bandwidth_gbs", "floor_us", "server_cpu_us_per_rpc", "qps",
                                               "switches_per_rpc", "empty_switches_per_rpc")},
                        "ratio": statistics.median(r["ratio"] for r in per_round),
                        "ratio_to_plan_bytes": statistics.median(r["ratio_to_plan_bytes"] for r in per_round),
                        "ratio_at_shared_bandwidth": (statistics.median(r["ratio_at_shared_bandwidth"] for r in per_round)
                                                      if args.processes > 1 else None),
                        "shared_bandwidth_gbs": (statistics.median(r["shared_bandwidth_gbs"] for r in per_round)
                                                 if args.processes > 1 else None),
                        "rounds": per_round}
    result = {
        "customers": n_rows,
        "probed_bandwidth_gbs": bandwidth / 1e9,
        "floor": floor,
        "fields": fields,
        "n_features": n_features,
        "requests": len(blobs),
        "seconds_per_run": args.seconds,
        "floor_rounds": args.floor_rounds,
        "sequential_calls": args.calls,
        "cpu_count": cores,
        "server_processes": args.processes,
        "server_settings": {k: v for k, v in _server_defaults().items()
                            if k in ("max_workers", "max_concurrent_rpcs", "reuse_port")},
        "empty": empty,
        "segsrv": ours,
        "ratio_qps_segsrv_over_empty": {c: round(r, 3) for c, r in ratios.items()},
        "target_floor_ratio": FLOOR_TARGET,
        "meets_target": {shape: f["ratio"] <= FLOOR_TARGET for shape, f in floor.items()},
        "what_limits_it": limit_line,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(f"gRPC Relate on {n_rows:,} customers, {n_features} features ({len(fields)} fields), limit 20, "
          f"{cores} cores; {args.processes} server process(es) each (empty = same grpcio sync server, handler "
          f"returns an empty RelateResponse)")
    print(f"{'':24s}{'empty':>12s}{'segsrv':>12s}{'ratio':>9s}")
    el, ol = empty["latency"], ours["latency"]
    print(f"{'sequential p50 (ms)':24s}{el['p50_ms']:12.3f}{ol['p50_ms']:12.3f}")
    print(f"{'sequential p99 (ms)':24s}{el['p99_ms']:12.3f}{ol['p99_ms']:12.3f}")
    print(f"{'server time p50 (ms)':24s}{el['server_time_p50_ms']:12.3f}{ol['server_time_p50_ms']:12.3f}")
    print(f"{'SegsrvClient.relate p50':24s}{'':12s}{ol['client_relate_p50_ms']:12.3f}")
    for c in map(str, CONCURRENCY):
        et, ot = empty["throughput"][c], ours["throughput"][c]
        print(f"{'QPS c=' + c + ' (' + str(ot['client_processes']) + ' procs)':24s}{et['qps']:12.0f}{ot['qps']:12.0f}"
              f"{ratios[c]:8.0%}")
        print(f"{'  server us/RPC, cores':24s}{et['server_cpu_us_per_rpc']:7.0f}/{et['server_cores']:4.2f}"
              f"{ot['server_cpu_us_per_rpc']:7.0f}/{ot['server_cores']:4.2f}"
              f"   clients {et['client_cores']:.2f} / {ot['client_cores']:.2f} cores"
              + (f"  errors {et['errors']}/{ot['errors']}" if et["errors"] or ot["errors"] else ""))
    print(f"what limits it: {limit_line}")
    print(f"floor (issue 16): server CPU per Relate <= {FLOOR_TARGET} x (empty RPC + counted bytes / the memory "
          f"bandwidth probed in the same round), at c={top}, {args.floor_rounds} interleaved round(s) (median):")
    for shape, f in floor.items():
        print(f"  {shape:<12} {f['counted_bytes'] / 1e6:6.2f} MB counted, floor {f['floor_us']:6.0f} us (empty RPC "
              f"{f['empty_us']:.0f} us, {f['bandwidth_gbs']:.1f} GB/s), segsrv {f['server_cpu_us_per_rpc']:6.0f} us "
              f"({f['qps']:.0f} QPS): "
              f"{f['ratio']:.2f}x ({'met' if f['ratio'] <= FLOOR_TARGET else 'NOT met'}); against the chosen "
              f"plans' {f['plan_bytes'] / 1e6:.2f} MB: {f['ratio_to_plan_bytes']:.2f}x")
        if f["ratio_at_shared_bandwidth"] is not None:
            print(f"  {'':<12} beside it (not the target's floor): at the bandwidth each of {args.processes} concurrent "
                  f"streams reads ({f['shared_bandwidth_gbs']:.1f} GB/s, as {args.processes} server processes counting at "
                  f"once do): {f['ratio_at_shared_bandwidth']:.2f}x")
        print(f"  {'':<12} context switches per RPC (median round): segsrv {f['switches_per_rpc']:.1f}, empty "
              f"{f['empty_switches_per_rpc']:.1f}")
        print(f"  {'':<12} rounds: " + ", ".join(f"{r['ratio']:.2f}x ({r['server_cpu_us_per_rpc']:.0f} / "
                                                 f"{r['floor_us']:.0f} us{_share(r)})" for r in f["rounds"])
              + (f"; errors {sum(r['errors'] for r in f['rounds'])}" if any(r["errors"] for r in f["rounds"]) else ""))
    print(f"results: {write_result('grpc_relate', result)}")


def _share(run: dict) -> str:
    """', busiest process 74%': the part of the servers' CPU its busiest process took (an even spread of the
    client connections over N processes: 1/N)."""
    share = run.get("busiest_process_cpu_share")
    return "" if share is None else f", busiest process {share:.0%}"


if __name__ == "__main__":
    main()
