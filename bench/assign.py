"""Assign throughput and a 500,000-member export over gRPC, on the 1M-customer demo snapshot
with a catalog of 50 segments (issue 5).

    python bench/assign.py [--customers 1000000] [--batch 10000] [--batch-calls 5]
                           [--single-calls 500] [--threads 1,4] [--export-repeats 3] [--seed 5]

Setup. The cached demo snapshot (bench/common.py demo_snapshot) is copied with hard links into
bench/.data/assign-root (nothing big is copied; the cached root is never modified: apply_segments
publishes a new version and replaces CURRENT by rename). A deterministic catalog of 50 segments
is generated from the snapshot's own fields and values (single terms, value sets, conjunctions of
2-3 terms, $or, $not / $ne, raw numeric ranges on the fields that have raw values, $segment
references, varied priorities) and applied with apply_segments. The load-test run of
docs/loadtest.md serves the same root.

Servers, each in its own process, so that the server's CPU is not the client's:

  segsrv  `python -m segsrv serve --snapshots ROOT` (a subprocess, default settings: 8 handler
          threads, 64 concurrent RPCs, one kernel thread, access log on, to
          bench/.data/assign-serve.log)
  empty   the same grpcio sync server construction as create_server (bench/grpc_relate.py's
          approach) with an Assign handler that parses the request and returns an empty
          AssignResponse: the fixed per-call cost of the stack

The machine is shared (2 cores, other work running): every gRPC figure is measured back to
back with its anchor (paired), and the ratios are medians of the per-pair ratios. CPU times
(this process's, and the server's from /proc/PID/stat) are reported next to wall times.
Measured (client: this process, segsrv.client.SegsrvClient unless noted):

  (a) batch Assign of --batch random ids per call (a fresh sample per batch, ids as text), ids/s
      and ms per call, median over --batch-calls batches, each batch without and with
      include_propensities. The first call of each kind, on a fresh server and in-process, is
      reported on its own (the first compiles the catalog; the first with propensities fits the
      50 membership models, once per snapshot version). Per batch, back to back: the engine's
      assign() in-process (the anchor: gRPC / in-process = the cost of gRPC and the
      conversions), its response proto built + serialized in-process, the raw stub (answer
      parsed to a proto, not converted; the server's handler time from
      ResponseInfo.server_time_ms, taken before the response proto is built, and its CPU), then
      SegsrvClient.assign (answer -> dicts), then the same request to the empty server
      (request transport only).
  (b) single-id Assign: calls/s and latency p50/p99 over --single-calls calls per thread, from 1
      and 4 threads sharing one SegsrvClient (one channel), without and with propensities; the
      empty server right after with the same ids; the server's CPU per call from /proc.
  (c) export of the ~500,000-member catalog segment `export_age_35_55` (age 35-55: 523,865 demo
      customers) through gRPC with bench/export.py's bench_export ({"$segment": ...}, chunk
      10,000, every id touched, one run per repeat): rows/s, median of --export-repeats; anchor,
      after each gRPC run: numpy bitset -> row numbers -> external ids -> text in-process for the
      same segment (and the engine's export_members, for reference).

Results: bench/results/assign.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import DATA_ROOT, REPO, demo_snapshot, percentile, write_result

SNAPSHOT = "demo"
UNIVERSE = "customers"
EXPORT_SEGMENT = "export_age_35_55"
EXPORT_WHERE = {"age": ["35-45", "45-55"]}  # bench/export.py's condition: 523,865 of 1M
N_SEGMENTS = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_MSG = 256 << 20  # a 10,000-id answer with 50 segments each is ~25 MB (default client limit: 4 MB)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MSG), ("grpc.max_send_message_length", MAX_MSG),
                   ("grpc.use_local_subchannel_pool", 1)]


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, every thread


def med(xs) -> float:
    return float(statistics.median(xs))


# --- the snapshot root and its catalog ----------------------------------------------------------


def assign_root(n_customers: int) -> tuple[Path, Path]:
    """bench/.data/assign-root: hard links to the cached demo snapshot (re-made when that changed)."""
    src = demo_snapshot(n_customers)
    dst = DATA_ROOT / ("assign-root" if n_customers == 1_000_000 else f"assign-root-{n_customers}")
    src_version = (src / SNAPSHOT / "CURRENT").read_text().strip()
    if dst.exists():
        try:
            cur = (dst / SNAPSHOT / "CURRENT").read_text().strip()
            manifest = json.loads((dst / SNAPSHOT / cur / "manifest.json").read_text())
            ok = manifest.get("data_version", manifest["version"]) == src_version
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            shutil.rmtree(dst)
    if not dst.exists():
        tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=os.link)
        os.rename(tmp, dst)
    return src, dst


def make_catalog(snapshot, seed: int) -> dict:
    """50 segments drawn deterministically from the universe's own fields, values and counts.

    Values are drawn uniformly among a field's values (so segment sizes range from a few
    hundred members to most of the universe); fields with more than 40 values (product names)
    are left out. References point only at earlier segments (no cycles)."""
    import numpy as np

    u = snapshot.universe(UNIVERSE)
    counts = np.asarray(u.feature_count)
    fields = {}
    for name in sorted(u.fields):
        info = u.fields[name]
        if 2 <= len(info.values) <= 40:
            fields[name] = [(v, int(counts[info.feature_offset + i])) for i, v in enumerate(info.values)]
    raw = sorted(n for n in u.fields if u.fields[n].numeric is not None)  # age, tenure_months
    ranges = {}
    for n in raw:
        x = np.asarray(u.fields[n].numeric)
        lo, hi = np.nanpercentile(x, [5, 95])
        ranges[n] = (float(np.floor(lo)), float(np.ceil(hi)))
    rng = random.Random(f"assign-catalog:{seed}")
    names = sorted(fields)

    def value(f):
        vals = [v for v, c in fields[f] if c > 0]
        return vals[rng.randrange(len(vals))]

    def terms(n, exclude=()):
        return {f: value(f) for f in rng.sample([f for f in names if f not in exclude], n)}

    def num_range(f):
        lo, hi = ranges[f]
        a = rng.randint(int(lo), int((lo + hi) / 2))
        b = rng.randint(a + 3, int(hi) + 1)
        return {"$gte": a, "$lt": b}

    kinds = (["term"] * 11 + ["in"] * 4 + ["and2"] * 8 + ["and3"] * 4 + ["or"] * 4 + ["not"] * 3 + ["ne"]
             + ["range"] * 3 + ["range_and"] * 3 + ["export"] + ["ref_and"] * 3 + ["ref_not"] * 2
             + ["ref_or"] + ["ref_ref"] + ["ref_range"])
    assert len(kinds) == N_SEGMENTS, len(kinds)
    cat: dict[str, dict] = {}
    priorities = [0, 0, 0, 1, 2, 3, 5, 5, 8, 10, 20, 50, 100, -1]
    for i, kind in enumerate(kinds):
        earlier = [n for n in cat if n != EXPORT_SEGMENT]
        if kind == "term":
            where = terms(1)
        elif kind == "in":
            f = rng.choice([f for f in names if len(fields[f]) >= 3])
            vals = sorted(rng.sample([v for v, _ in fields[f]], 2))
            where = {f: vals}
        elif kind == "and2":
            where = terms(2)
        elif kind == "and3":
            where = terms(3)
        elif kind == "or":
            a = terms(1)
            b = terms(rng.randint(1, 2), exclude=tuple(a))
            where = {"$or": [a, b]}
        elif kind == "not":
            a = terms(1)
            where = {**a, "$not": terms(rng.randint(1, 2), exclude=tuple(a))}
        elif kind == "ne":
            f = rng.choice(names)
            where = {f: {"$ne": value(f)}}
        elif kind == "range":
            f = rng.choice(raw)
            where = {f: num_range(f)}
        elif kind == "range_and":
            f = rng.choice(raw)
            where = {f: num_range(f), **terms(1, exclude=tuple(raw))}
        elif kind == "export":
            where = dict(EXPORT_WHERE)
        elif kind == "ref_and":
            where = {"$segment": rng.choice(earlier), **terms(1)}
        elif kind == "ref_not":
            a, b = rng.sample(earlier, 2)
            where = {"$and": [{"$segment": a}, {"$not": {"$segment": b}}]}
        elif kind == "ref_or":
            a, b = rng.sample(earlier, 2)
            where = {"$or": [{"$segment": a}, {"$segment": b}]}
        elif kind == "ref_ref":
            refs = [n for n in earlier if n.split("_", 1)[1].startswith("ref")]
            where = {"$segment": rng.choice(refs), **terms(1)}
        else:  # ref_range
            f = rng.choice(raw)
            where = {"$segment": rng.choice(earlier), f: num_range(f)}
        name = EXPORT_SEGMENT if kind == "export" else f"s{i:02d}_{kind}"
        cat[name] = {"where": where, "universe": UNIVERSE, "priority": rng.choice(priorities),
                     "description": f"bench/assign.py {kind}", "tags": ["bench", kind]}
    return cat


# --- the empty server (bench/grpc_relate.py's approach, with Assign and ExportMembers) -----------


def _server_defaults() -> dict:
    from segsrv.server.app import create_server

    return {k: p.default for k, p in inspect.signature(create_server).parameters.items()
            if p.default is not inspect.Parameter.empty}


def empty_server_main(conn, stop) -> None:
    from concurrent import futures

    import grpc

    from segsrv.v1 import segsrv_pb2 as pb

    d = _server_defaults()
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", int(d["max_receive_message_bytes"])),
        ("grpc.max_send_message_length", int(d["max_send_message_bytes"])),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=d["max_workers"], thread_name_prefix="empty-rpc"),
                         options=options, maximum_concurrent_rpcs=d["max_concurrent_rpcs"])
    empty_assign = pb.AssignResponse()
    handlers = {
        "Assign": grpc.unary_unary_rpc_method_handler(
            lambda request, context: empty_assign,
            request_deserializer=pb.AssignRequest.FromString,
            response_serializer=pb.AssignResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "segsrv.v1.SegmentationService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    stop.wait()
    server.stop(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_segsrv(root: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    from segsrv.client import SegsrvClient

    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "segsrv", "serve", "--snapshots", str(root),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    log.close()
    addr = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    with SegsrvClient(addr, timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"segsrv serve exited with {proc.returncode}; see {log_path}")
            try:
                if client.health() == "SERVING":
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"segsrv serve did not become SERVING; see {log_path}")
            time.sleep(0.2)
    return proc, addr


# --- measurements -----------------------------------------------------------------------------


def batches(n_rows: int, size: int, count: int, seed: int) -> list[list[str]]:
    """`count` batches of `size` distinct random ids (the demo shop's ids are 1..N), as text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[str(i) for i in (rng.choice(n_rows, size=size, replace=False) + 1).tolist()] for _ in range(count)]


def first_calls(snap, addr: str, plain_ids: list[str], props_ids: list[str]) -> dict:
    """The first Assign calls of a fresh server and of this process: without propensities (compiles
    the catalog), then with (fits the 50 membership models)."""
    from segsrv.engine.assign import assign
    from segsrv.ops.assign import AssignQuery
    from segsrv.client import SegsrvClient
    from segsrv.v1 import segsrv_pb2 as pb

    out = {}
    with SegsrvClient(addr, timeout=600, channel_options=CHANNEL_OPTIONS) as client:
        client.health()  # connect
        for key, ids, props in (("no_propensities", plain_ids, False), ("propensities", props_ids, True)):
            t = time.perf_counter()
            resp = client._stub.Assign(pb.AssignRequest(universe=UNIVERSE, ids=ids, include_propensities=props),
                                       timeout=600)
            grpc_s = time.perf_counter() - t
            t = time.perf_counter()
            assign(snap, AssignQuery(universe=UNIVERSE, ids=ids, include_propensities=props))
            local_s = time.perf_counter() - t
            out[key] = {"grpc_raw_s": round(grpc_s, 3), "grpc_server_ms": round(resp.info.server_time_ms, 1),
                        "in_process_s": round(local_s, 3), "response_bytes": resp.ByteSize(),
                        "found": sum(a.found for a in resp.assignments),
                        "members_per_id": round(sum(sum(m.member for m in a.segments) for a in resp.assignments)
                                                / max(1, len(resp.assignments)), 2)}
    return out


def batch_paired(snap, addr: str, eaddr: str, batches_: list[list[str]], server_pid: int) -> dict:
    """Each batch, without then with propensities, measured back to back (paired, so that the
    ratios hold under the shared machine's varying load): the engine's assign() in-process, its
    response proto built + serialized, the raw stub (answer parsed to a proto, not converted),
    SegsrvClient.assign (answer -> dicts); and the same request to the empty server."""
    from segsrv.client import SegsrvClient
    from segsrv.engine.assign import assign
    from segsrv.ops.assign import AssignQuery
    from segsrv.v1 import segsrv_pb2 as pb

    keys = ("in_process_s", "in_process_cpu_s", "proto_s", "raw_s", "raw_client_cpu_s", "server_ms", "server_cpu_s",
            "client_s")
    runs = {False: {k: [] for k in keys}, True: {k: [] for k in keys}}
    empty = []
    with SegsrvClient(addr, timeout=600, channel_options=CHANNEL_OPTIONS) as client, \
            SegsrvClient(eaddr, timeout=600, channel_options=CHANNEL_OPTIONS) as eclient:
        client.health()
        eclient.assign(batches_[0][:10], universe=UNIVERSE)
        for ids in batches_:
            for props in (False, True):
                r = runs[props]
                t, c = time.perf_counter(), time.process_time()
                res = assign(snap, AssignQuery(universe=UNIVERSE, ids=ids, include_propensities=props))
                r["in_process_s"].append(time.perf_counter() - t)
                r["in_process_cpu_s"].append(time.process_time() - c)
                t = time.perf_counter()
                res.to_proto((time.perf_counter() - t) * 1e3).SerializeToString()
                r["proto_s"].append(time.perf_counter() - t)
                del res
                c0 = proc_cpu_seconds(server_pid)
                t, c = time.perf_counter(), time.process_time()
                resp = client._stub.Assign(pb.AssignRequest(universe=UNIVERSE, ids=ids, include_propensities=props),
                                           timeout=600)
                r["raw_s"].append(time.perf_counter() - t)
                r["raw_client_cpu_s"].append(time.process_time() - c)
                r["server_cpu_s"].append(proc_cpu_seconds(server_pid) - c0)
                r["server_ms"].append(resp.info.server_time_ms)
                assert len(resp.assignments) == len(ids)
                del resp
                t = time.perf_counter()
                ans = client.assign(ids, universe=UNIVERSE, include_propensities=props)
                r["client_s"].append(time.perf_counter() - t)
                assert len(ans["assignments"]) == len(ids)
                del ans
            t = time.perf_counter()
            eclient.assign(ids, universe=UNIVERSE)
            empty.append(time.perf_counter() - t)
    n = len(batches_[0])
    out = {}
    for props, r in runs.items():
        m = {k: med(v) for k, v in r.items()}
        out["propensities" if props else "no_propensities"] = {
            "calls": len(batches_), "batch": n,
            **{k: [round(x, 4) for x in v] for k, v in r.items()},
            "in_process_median_s": round(m["in_process_s"], 4),
            "in_process_cpu_median_s": round(m["in_process_cpu_s"], 4),
            "raw_stub_client_cpu_median_s": round(m["raw_client_cpu_s"], 4),
            "proto_build_serialize_median_s": round(m["proto_s"], 4),
            "server_time_median_ms": round(m["server_ms"], 1),
            "server_cpu_median_s": round(m["server_cpu_s"], 3),
            "raw_stub_median_s": round(m["raw_s"], 4),
            "client_median_s": round(m["client_s"], 4),
            "in_process_ids_per_s": round(n / m["in_process_s"]),
            "raw_stub_ids_per_s": round(n / m["raw_s"]),
            "client_ids_per_s": round(n / m["client_s"]),
            # medians of the per-batch ratios (paired)
            "raw_over_in_process": round(med([a / b for a, b in zip(r["raw_s"], r["in_process_s"])]), 3),
            "client_over_in_process": round(med([a / b for a, b in zip(r["client_s"], r["in_process_s"])]), 3),
        }
    out["empty_server"] = {"calls": len(empty), "batch": n, "seconds": [round(s, 5) for s in empty],
                           "median_s": round(med(empty), 5), "ids_per_s": round(n / med(empty))}
    return out


def single(addr: str, ids: list[str], threads: int, calls: int, props: bool, server_pid: int | None) -> dict:
    """`threads` threads sharing one SegsrvClient, `calls` single-id Assign calls each."""
    from segsrv.client import SegsrvClient

    with SegsrvClient(addr, timeout=60, channel_options=CHANNEL_OPTIONS) as client:
        for i in range(20):  # connect, warm
            client.assign([ids[i]], universe=UNIVERSE, include_propensities=props)
        lat: list[list[float]] = [[] for _ in range(threads)]
        errors = [0] * threads
        barrier = threading.Barrier(threads + 1)

        def loop(k: int) -> None:
            mine = ids[k * calls:(k + 1) * calls]
            barrier.wait()
            for i in mine:
                t = time.perf_counter()
                try:
                    client.assign([i], universe=UNIVERSE, include_propensities=props)
                except Exception:  # noqa: BLE001 - counted, reported
                    errors[k] += 1
                lat[k].append(time.perf_counter() - t)

        ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        c0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
        cc0 = time.process_time()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        cpu = proc_cpu_seconds(server_pid) - c0 if server_pid else None
        client_cpu = time.process_time() - cc0
    allv = [x for xs in lat for x in xs]
    out = {"threads": threads, "calls": len(allv), "errors": sum(errors), "wall_s": round(wall, 3),
           "calls_per_s": round(len(allv) / wall, 1), "p50_ms": round(percentile(allv, 50) * 1e3, 3),
           "p99_ms": round(percentile(allv, 99) * 1e3, 3), "client_cores": round(client_cpu / wall, 2)}
    if cpu is not None:
        out["server_cpu_us_per_call"] = round(cpu / len(allv) * 1e6)
        out["server_cores"] = round(cpu / wall, 2)
    return out


def export_interleaved(root: Path, addr: str, server_pid: int, repeats: int) -> tuple[dict, dict]:
    """Each repeat, back to back: bench/export.py's bench_export over gRPC ({"$segment": ...}, chunk
    10,000, one run), then the numpy anchor in-process (the segment's bitset -> row numbers ->
    external ids -> text) and the engine's export_members (chunks of 10,000 ids as text)."""
    import numpy as np

    from export import bench_export  # bench/export.py (this script's directory is on sys.path)

    from segsrv import _kernels
    from segsrv.engine.conditions import Evaluator
    from segsrv.ops.conditions import SegmentRef
    from segsrv.engine.export import export_members
    from segsrv.ops.export import ExportQuery
    from segsrv.snapshot.reader import open_snapshot

    where = {"$segment": EXPORT_SEGMENT}
    snap = open_snapshot(root / SNAPSHOT)
    u = snap.universe(UNIVERSE)
    row_ids = np.asarray(u.row_ids)
    bench_export(addr, where=where, repeats=1)  # warm: page cache, channel, code paths
    runs = []
    keys = ("grpc_s", "grpc_client_cpu_s", "grpc_server_cpu_s", "evaluate_ms", "numpy_rows_ms", "numpy_text_ms",
            "numpy_s", "numpy_cpu_s", "engine_s", "engine_cpu_s")
    acc = {k: [] for k in keys}
    rows = total = 0
    for _ in range(repeats):
        c = time.process_time()
        r = bench_export(addr, where=where, chunk_size=10_000, repeats=1, server_pid=server_pid)
        acc["grpc_client_cpu_s"].append(time.process_time() - c)
        acc["grpc_s"].append(r["median_s"])
        acc["grpc_server_cpu_s"].append(r.get("server_cpu_s", float("nan")))
        runs.append(r)
        t = time.perf_counter()
        bits = Evaluator(snap, u).evaluate(SegmentRef(EXPORT_SEGMENT))
        acc["evaluate_ms"].append((time.perf_counter() - t) * 1e3)
        t, c = time.perf_counter(), time.process_time()
        rows_np = np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:u.n_rows])
        t1 = time.perf_counter()
        texts = list(map(str, row_ids[rows_np].tolist()))
        t2 = time.perf_counter()
        acc["numpy_cpu_s"].append(time.process_time() - c)
        acc["numpy_rows_ms"].append((t1 - t) * 1e3)
        acc["numpy_text_ms"].append((t2 - t1) * 1e3)
        acc["numpy_s"].append(t2 - t)
        rows = len(texts)
        del texts
        assert np.array_equal(rows_np, _kernels.bitset_to_ids(bits, u.n_rows))
        t, c = time.perf_counter(), time.process_time()
        res = export_members(snap, ExportQuery(universe=UNIVERSE, condition=SegmentRef(EXPORT_SEGMENT),
                                               chunk_size=10_000))
        n = sum(len(ids) for ids, _ in res.chunks())
        acc["engine_s"].append(time.perf_counter() - t)
        acc["engine_cpu_s"].append(time.process_time() - c)
        total = r["total"]
        assert n == rows == r["rows"] == total, (n, rows, r["rows"], total)
    m = {k: med(v) for k, v in acc.items()}
    grpc = {"total": total, "rows": rows, "chunk_size": 10_000, "repeats": repeats,
            "runs": runs, "seconds": [round(x, 4) for x in acc["grpc_s"]], "median_s": round(m["grpc_s"], 4),
            "rows_per_s": round(rows / m["grpc_s"]),
            "messages": runs[-1]["messages"], "first_message_ms": round(med([x["first_message_ms"] for x in runs]), 2),
            "server_cpu_s": round(m["grpc_server_cpu_s"], 3), "client_cpu_s": round(m["grpc_client_cpu_s"], 3)}
    local = {"rows": rows, "evaluate_bitset_ms": round(m["evaluate_ms"], 2),
             "numpy_bitset_to_rows_ms": round(m["numpy_rows_ms"], 2),
             "numpy_rows_to_text_ms": round(m["numpy_text_ms"], 2),
             "numpy_seconds": [round(x, 4) for x in acc["numpy_s"]], "numpy_median_s": round(m["numpy_s"], 4),
             "numpy_cpu_median_s": round(m["numpy_cpu_s"], 4), "numpy_rows_per_s": round(rows / m["numpy_s"]),
             "engine_export_seconds": [round(x, 4) for x in acc["engine_s"]],
             "engine_export_median_s": round(m["engine_s"], 4), "engine_export_cpu_median_s": round(m["engine_cpu_s"], 4),
             "engine_export_rows_per_s": round(rows / m["engine_s"]),
             # medians of the per-repeat ratios (paired)
             "grpc_over_numpy_time": round(med([a / b for a, b in zip(acc["grpc_s"], acc["numpy_s"])]), 3),
             "grpc_over_engine_time": round(med([a / b for a, b in zip(acc["grpc_s"], acc["engine_s"])]), 3)}
    return grpc, local


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batch-calls", type=int, default=5, help="timed batch calls per case (after the first)")
    ap.add_argument("--single-calls", type=int, default=500, help="single-id calls per thread")
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--export-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t]
    wall0 = time.perf_counter()

    from segsrv.engine.catalog import apply_segments
    from segsrv.snapshot.reader import open_snapshot

    src, root = assign_root(args.customers)
    base = open_snapshot(src / SNAPSHOT)
    catalog = make_catalog(base, args.seed)
    t = time.perf_counter()
    vdir, changed = apply_segments(root / SNAPSHOT, catalog)
    apply_s = time.perf_counter() - t
    snap = open_snapshot(root / SNAPSHOT)
    n_rows = snap.universe(UNIVERSE).n_rows
    from segsrv.engine.assign import compiled_catalog

    cat = compiled_catalog(snap, snap.universe(UNIVERSE))
    sizes = {s.name: s.size for s in cat.segments}
    shares = sorted(s.share for s in cat.segments)
    del cat, snap
    print(f"[assign] root {root}: {SNAPSHOT}/{vdir.name} with {len(sizes)} segments "
          f"({'published' if changed else 'unchanged'} in {apply_s:.2f} s); shares {shares[0]:.4f} .. "
          f"{shares[-1]:.3f} (median {statistics.median(shares):.3f}); {EXPORT_SEGMENT}: {sizes[EXPORT_SEGMENT]:,}",
          file=sys.stderr)

    n_b = args.batch_calls
    bs = batches(n_rows, args.batch, n_b + 2, args.seed)
    first_plain, first_props, rest = bs[0], bs[1], bs[2:]
    max_threads = max(threads)
    single_ids = batches(n_rows, args.single_calls * max_threads, 1, args.seed + 1)[0]
    load0 = list(os.getloadavg())

    ctx = mp.get_context("spawn")  # no gRPC state crosses a fork
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    eproc = ctx.Process(target=empty_server_main, args=(child, stop), daemon=True)
    eproc.start()
    eaddr = f"127.0.0.1:{parent.recv()}"
    log_path = DATA_ROOT / "assign-serve.log"
    proc, addr = start_segsrv(root, log_path)
    pid = proc.pid
    print(f"[assign] segsrv serve pid {pid} on {addr}; empty server pid {eproc.pid} on {eaddr}", file=sys.stderr)
    local = open_snapshot(root / SNAPSHOT)  # the in-process anchor's snapshot (its own catalog cache)
    try:
        first = first_calls(local, addr, first_plain, first_props)
        print(f"[assign] first calls: {json.dumps(first)}", file=sys.stderr)
        batch = batch_paired(local, addr, eaddr, rest, pid)
        print(f"[assign] batch: ids/s client {batch['no_propensities']['client_ids_per_s']:,} / "
              f"{batch['propensities']['client_ids_per_s']:,} (with propensities)", file=sys.stderr)
        single_ours, single_empty = {}, {}
        for k in threads:  # ours and the empty server back to back
            single_ours[f"plain_t{k}"] = single(addr, single_ids, k, args.single_calls, False, pid)
            single_empty[f"plain_t{k}"] = single(eaddr, single_ids, k, args.single_calls, False, eproc.pid)
            single_ours[f"props_t{k}"] = single(addr, single_ids, k, args.single_calls, True, pid)
        print(f"[assign] single calls/s: {json.dumps({k: v['calls_per_s'] for k, v in single_ours.items()})}, "
              f"empty {json.dumps({k: v['calls_per_s'] for k, v in single_empty.items()})}", file=sys.stderr)
        export_grpc, export_local = export_interleaved(root, addr, pid, args.export_repeats)
        print(f"[assign] export: {export_grpc['rows_per_s']:,} rows/s", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop.set()
        eproc.join(10)

    def ratio(a, b):
        return round(a / b, 3) if b else None

    bp, bq = batch["no_propensities"], batch["propensities"]
    ratios = {
        "batch_no_propensities_client_over_in_process_time": bp["client_over_in_process"],
        "batch_no_propensities_raw_stub_over_in_process_time": bp["raw_over_in_process"],
        "batch_propensities_client_over_in_process_time": bq["client_over_in_process"],
        "batch_propensities_raw_stub_over_in_process_time": bq["raw_over_in_process"],
        **{f"single_{k}_calls_per_s_ours_over_empty": ratio(single_ours[k]["calls_per_s"],
                                                             single_empty[k]["calls_per_s"]) for k in single_empty},
        **{f"single_{k}_server_cpu_per_call_ours_over_empty": ratio(single_ours[k]["server_cpu_us_per_call"],
                                                                     single_empty[k]["server_cpu_us_per_call"])
           for k in single_empty},
        "export_grpc_over_numpy_rows_per_s": ratio(export_grpc["rows_per_s"], export_local["numpy_rows_per_s"]),
        "export_grpc_over_engine_in_process_rows_per_s": ratio(export_grpc["rows_per_s"],
                                                               export_local["engine_export_rows_per_s"]),
        "export_grpc_over_numpy_rows_per_s_paired": ratio(1.0, export_local["grpc_over_numpy_time"]),
    }
    result = {
        "customers": n_rows, "snapshot": f"{SNAPSHOT}/{vdir.name}", "root": str(root), "universe": UNIVERSE,
        "cpu_count": os.cpu_count(), "loadavg_at_start": load0, "loadavg_at_end": list(os.getloadavg()),
        "server": "python -m segsrv serve --snapshots ROOT (subprocess, default settings: 8 handler threads, "
                  "64 concurrent RPCs, kernel threads 1, access log on); client and in-process anchor = this "
                  "process (segsrv.client.SegsrvClient); empty server = bench/grpc_relate.py's construction",
        "catalog": {"segments": len(sizes), "apply_s": round(apply_s, 3), "published": changed,
                    "sizes": sizes, "definitions": catalog},
        "batch": {"size": args.batch, "timed_calls": n_b, "first_calls": first, **batch},
        "single": {"calls_per_thread": args.single_calls, "segsrv": single_ours, "empty_server": single_empty},
        "export": {"segment": EXPORT_SEGMENT, "where": EXPORT_WHERE, "grpc": export_grpc, "in_process": export_local},
        "ratios": ratios,
        "wall_s": round(time.perf_counter() - wall0, 1),
    }
    path = write_result("assign", result)

    fp, fq = first["no_propensities"], first["propensities"]
    eb = batch["empty_server"]
    print(f"Assign on {n_rows:,} customers, {len(sizes)} catalog segments; {os.cpu_count()} cores shared by the "
          f"server (segsrv serve subprocess) and this process (client, in-process anchor), load average "
          f"{load0[0]:.1f} -> {result['loadavg_at_end'][0]:.1f}")
    print(f"(a) batch of {args.batch:,} random ids, median of {n_b} paired calls  {'no propensities':>16s}"
          f"{'propensities':>14s}")
    rows = [
        ("first call, gRPC (s)", f"{fp['grpc_raw_s']:.2f}", f"{fq['grpc_raw_s']:.2f}"),
        ("first call, in-process (s)", f"{fp['in_process_s']:.2f}", f"{fq['in_process_s']:.2f}"),
        ("engine assign() in-process (ms)", f"{bp['in_process_median_s'] * 1e3:.0f}",
         f"{bq['in_process_median_s'] * 1e3:.0f}"),
        ("  its CPU time (ms)", f"{bp['in_process_cpu_median_s'] * 1e3:.0f}",
         f"{bq['in_process_cpu_median_s'] * 1e3:.0f}"),
        ("  response proto build + serialize (ms)", f"{bp['proto_build_serialize_median_s'] * 1e3:.0f}",
         f"{bq['proto_build_serialize_median_s'] * 1e3:.0f}"),
        ("server handler time before proto (ms)", f"{bp['server_time_median_ms']:.0f}",
         f"{bq['server_time_median_ms']:.0f}"),
        ("server CPU per call (ms)", f"{bp['server_cpu_median_s'] * 1e3:.0f}", f"{bq['server_cpu_median_s'] * 1e3:.0f}"),
        ("gRPC raw stub (ms)", f"{bp['raw_stub_median_s'] * 1e3:.0f}", f"{bq['raw_stub_median_s'] * 1e3:.0f}"),
        ("  client CPU of the raw stub call (ms)", f"{bp['raw_stub_client_cpu_median_s'] * 1e3:.0f}",
         f"{bq['raw_stub_client_cpu_median_s'] * 1e3:.0f}"),
        ("gRPC SegsrvClient.assign (ms)", f"{bp['client_median_s'] * 1e3:.0f}", f"{bq['client_median_s'] * 1e3:.0f}"),
        ("ids/s in-process engine", f"{bp['in_process_ids_per_s']:,}", f"{bq['in_process_ids_per_s']:,}"),
        ("ids/s gRPC raw stub", f"{bp['raw_stub_ids_per_s']:,}", f"{bq['raw_stub_ids_per_s']:,}"),
        ("ids/s gRPC SegsrvClient", f"{bp['client_ids_per_s']:,}", f"{bq['client_ids_per_s']:,}"),
        ("raw stub / in-process (paired)", f"{bp['raw_over_in_process']:.2f}x", f"{bq['raw_over_in_process']:.2f}x"),
        ("SegsrvClient / in-process (paired)", f"{bp['client_over_in_process']:.2f}x",
         f"{bq['client_over_in_process']:.2f}x"),
        ("response size (MB)", f"{fp['response_bytes'] / 1e6:.1f}", f"{fq['response_bytes'] / 1e6:.1f}"),
        ("empty server, same request (ms)", f"{eb['median_s'] * 1e3:.1f}", ""),
    ]
    for label, a, b in rows:
        print(f"  {label:46s}{a:>16s}{b:>14s}")
    print(f"(b) single-id Assign, {args.single_calls} calls per thread, threads sharing one SegsrvClient")
    print(f"  {'':30s}{'calls/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}{'srv us/call':>12s}{'calls/s vs empty':>18s}")
    for k in threads:
        for label, r, e in ((f"segsrv, {k} thread(s)", single_ours[f"plain_t{k}"], single_empty[f"plain_t{k}"]),
                            ("  with propensities", single_ours[f"props_t{k}"], single_empty[f"plain_t{k}"]),
                            (f"empty server, {k} thread(s)", single_empty[f"plain_t{k}"], None)):
            vs = f"{r['calls_per_s'] / e['calls_per_s']:.0%}" if e else ""
            print(f"  {label:30s}{r['calls_per_s']:9.0f}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}"
                  f"{r.get('server_cpu_us_per_call', 0):12,}{vs:>18s}"
                  + (f"  errors {r['errors']}" if r["errors"] else ""))
    eg, el = export_grpc, export_local
    print(f"(c) export of {EXPORT_SEGMENT} ({eg['total']:,} members), median of {args.export_repeats} "
          f"interleaved repeats")
    print(f"  gRPC bench_export (chunk 10,000)        {eg['rows_per_s']:>12,} rows/s  {eg['median_s']:.3f} s  "
          f"CPU server {eg['server_cpu_s']:.2f} s + client {eg['client_cpu_s']:.2f} s")
    print(f"  numpy bitset->rows->ids->text, 1 proc   {el['numpy_rows_per_s']:>12,} rows/s  {el['numpy_median_s']:.3f} s"
          f"  CPU {el['numpy_cpu_median_s']:.2f} s (rows {el['numpy_bitset_to_rows_ms']:.0f} ms, text "
          f"{el['numpy_rows_to_text_ms']:.0f} ms; evaluating the bitset, {el['evaluate_bitset_ms']:.1f} ms, not included)")
    print(f"  engine export_members in-process        {el['engine_export_rows_per_s']:>12,} rows/s  "
          f"{el['engine_export_median_s']:.3f} s  CPU {el['engine_export_cpu_median_s']:.2f} s")
    print(f"  gRPC rows/s over numpy anchor: {ratios['export_grpc_over_numpy_rows_per_s']:.2f}x (paired: "
          f"{1 / el['grpc_over_numpy_time']:.2f}x); over engine in-process: "
          f"{ratios['export_grpc_over_engine_in_process_rows_per_s']:.2f}x (server and client are two processes: "
          f"ids are made and consumed in parallel)")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
