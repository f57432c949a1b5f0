"""ExportMembers throughput: a ~500,000-member export of the 1M-customer demo snapshot.

    python bench/export.py [--customers 1000000] [--repeats 3] [--chunk-sizes 1000,10000,100000]

The condition is `age` in the bands 35-45 and 45-55 (523,865 of the 1,000,000 demo
customers). Measured, each the median of --repeats runs:

  * grpc: ExportMembers from a server in its own process (create_server over the demo
    snapshot, default settings), drained by one client with a raw stub (`bench_export`,
    every id touched); rows/s at each chunk size, and the server's CPU per run;
  * client: the same through SegsrvClient.export (ids as Python lists), default chunk size;
  * in-process: export_members + every chunk's ids as text (the engine's share, no gRPC);
  * ranked: the top 1,000 by P(churned = true) (logistic) over gRPC; the first run fits the
    logistic model within the 523,865 members (cached per segment afterwards), so it is reported
    apart from the median.

`bench_export(addr_or_stub, ...) -> dict` is importable (bench/assign.py uses it):

    from export import bench_export
    r = bench_export("127.0.0.1:50051", where={"age": ["35-45", "45-55"]}, repeats=3)
    r["rows_per_s"], r["median_s"], r["total"]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

from common import demo_snapshot, write_result

CONDITION = {"age": ["35-45", "45-55"]}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def bench_export(addr_or_stub, *, where=None, universe: str = "customers", snapshot: str = "",
                 chunk_size: int = 10_000, top_k: int = 0, target: str = "", value: str = "",
                 repeats: int = 3, timeout: float = 600.0, server_pid: int | None = None) -> dict:
    """Run one ExportMembers `repeats` times, draining every message and touching every id.

    addr_or_stub: "HOST:PORT" (a fresh channel) or a SegmentationServiceStub. where: the JSON
    `where` form, an engine condition or a proto Condition (None: every row). server_pid: a local
    server process whose CPU time per run is reported. Returns {"total", "rows", "messages",
    "chunk_size", "seconds" (each run), "median_s", "rows_per_s" (rows / median_s),
    "first_message_ms" (median time to the total), "server_cpu_s" (median, with server_pid)}."""
    import grpc

    from segsrv.ops.conditions import to_condition, to_proto
    from segsrv.v1 import segsrv_pb2 as pb
    from segsrv.v1 import segsrv_pb2_grpc

    channel = None
    if isinstance(addr_or_stub, str):
        channel = grpc.insecure_channel(addr_or_stub, options=[("grpc.use_local_subchannel_pool", 1),
                                                               ("grpc.max_receive_message_length", 64 << 20)])
        stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
    else:
        stub = addr_or_stub
    req = pb.ExportMembersRequest(snapshot=pb.SnapshotSelector(name=snapshot), universe=universe,
                                  condition=to_proto(to_condition(where)), chunk_size=chunk_size,
                                  top_k=top_k, target_field=target, target_value=value)
    seconds, first_ms, cpu = [], [], []
    total = rows = messages = 0
    try:
        for _ in range(repeats):
            c0 = _proc_cpu_seconds(server_pid) if server_pid else 0.0
            t0 = time.perf_counter()
            rows = messages = 0
            for msg in stub.ExportMembers(req, timeout=timeout):
                if messages == 0:
                    total = msg.total_count
                    first_ms.append((time.perf_counter() - t0) * 1e3)
                messages += 1
                ids = list(msg.ids)  # touch every id, as a consumer would
                rows += len(ids)
            seconds.append(time.perf_counter() - t0)
            if server_pid:
                cpu.append(_proc_cpu_seconds(server_pid) - c0)
    finally:
        if channel is not None:
            channel.close()
    median = statistics.median(seconds)
    out = {"total": total, "rows": rows, "messages": messages, "chunk_size": chunk_size, "top_k": top_k,
           "seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4),
           "rows_per_s": round(rows / median) if median > 0 else None,
           "first_message_ms": round(statistics.median(first_ms), 2) if first_ms else None}
    if cpu:
        out["server_cpu_s"] = round(statistics.median(cpu), 3)
    return out


def bench_client(addr: str, where, repeats: int, chunk_size: int = 0) -> dict:
    """The same export through SegsrvClient.export (default chunk size unless given)."""
    from segsrv.client import SegsrvClient

    seconds, rows, total = [], 0, 0
    with SegsrvClient(addr, timeout=600) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            stream = client.export({"from": "customers", "where": where}, chunk_size=chunk_size)
            total = stream.total
            rows = sum(len(ids) for ids, _ in stream.chunks())
            seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"total": total, "rows": rows, "chunk_size": chunk_size, "seconds": [round(s, 4) for s in seconds],
            "median_s": round(median, 4), "rows_per_s": round(rows / median)}


def bench_in_process(root: str, where, repeats: int, chunk_size: int) -> dict:
    from segsrv.ops.conditions import parse_where
    from segsrv.engine.export import export_members
    from segsrv.ops.export import ExportQuery
    from segsrv.snapshot.reader import open_snapshot

    snap = open_snapshot(os.path.join(root, "demo"))
    seconds, select_ms, rows, total = [], [], 0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = export_members(snap, ExportQuery(universe="customers", condition=parse_where(where),
                                               chunk_size=chunk_size))
        select_ms.append(res.elapsed_ms)
        rows = sum(len(ids) for ids, _ in res.chunks())
        total = res.total
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"total": total, "rows": rows, "chunk_size": chunk_size, "seconds": [round(s, 4) for s in seconds],
            "median_s": round(median, 4), "rows_per_s": round(rows / median),
            "select_ms": round(statistics.median(select_ms), 2)}


def _server_main(root: str, conn, stop) -> None:
    from segsrv.server.app import create_server

    server, port = create_server(root, host="127.0.0.1", port=0, access_log=False)
    server.start()
    conn.send(port)
    stop.wait()
    server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-sizes", default="1000,10000,100000", help="comma-separated chunk sizes (gRPC)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.chunk_sizes.split(",") if s]
    root = str(demo_snapshot(args.customers))

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_server_main, args=(root, child, stop), daemon=True)
    proc.start()
    try:
        port = parent.recv()
        addr = f"127.0.0.1:{port}"
        bench_export(addr, where=CONDITION, repeats=1)  # warm up: page cache, channel, code paths
        grpc_runs = {str(c): bench_export(addr, where=CONDITION, chunk_size=c, repeats=args.repeats,
                                          server_pid=proc.pid) for c in sizes}
        client = bench_client(addr, CONDITION, args.repeats)
        ranked = bench_export(addr, where=CONDITION, top_k=1000, target="churned", value="true",
                              repeats=args.repeats, server_pid=proc.pid)
    finally:
        stop.set()
        proc.join(10)
    local = bench_in_process(root, CONDITION, args.repeats, 10_000)

    result = {"customers": args.customers, "condition": CONDITION, "members": local["total"],
              "repeats": args.repeats, "cpu_count": os.cpu_count(), "grpc_by_chunk_size": grpc_runs,
              "client_default_chunk": client, "in_process": local, "ranked_top_1000": ranked}
    print(f"ExportMembers of {local['total']:,} members ({CONDITION}) of {args.customers:,} customers, "
          f"median of {args.repeats}; {os.cpu_count()} cores shared by server and client")
    for c, r in grpc_runs.items():
        print(f"  gRPC chunk {int(c):>7,}: {r['rows_per_s']:>12,} rows/s  {r['median_s']:.3f} s  "
              f"{r['messages']:,} messages  total after {r['first_message_ms']:.1f} ms  "
              f"server CPU {r.get('server_cpu_s', float('nan')):.2f} s")
    print(f"  SegsrvClient.export (chunk {client['chunk_size'] or 'server default'}): "
          f"{client['rows_per_s']:>12,} rows/s  {client['median_s']:.3f} s")
    print(f"  in-process (select {local['select_ms']:.1f} ms + ids per chunk): {local['rows_per_s']:>12,} rows/s  "
          f"{local['median_s']:.3f} s")
    print(f"  ranked top 1,000 by churned=true (logistic), gRPC: {ranked['median_s']:.3f} s "
          f"(total {ranked['total']:,}); first run {ranked['seconds'][0]:.2f} s (fits the model, then cached)")
    print(f"results: {write_result('export', result)}")


if __name__ == "__main__":
    main()
