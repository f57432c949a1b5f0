"""Verifying every byte at open: what it costs on the 1M-customer demo snapshot, and a server's start-up.

Measured in one run, page cache warm (the snapshot was just read once; a cold open adds the disk's
read time to every variant alike):

* ``headers and sizes``: what the old open did (map every file, check headers and sizes);
* ``sizes``: the same plus the manifest-vs-data checks (every feature recounted); no checksum;
* ``full``: every open now (xxh3 tree digests of every file, on 1 thread and on every core);
* ``sha256``: the old full check (SHA-256 of every file, one thread, as the old reload did), and
  SHA-256 on every core;
* the start-up of ``segsrv serve`` over the snapshot: from the process start to health SERVING,
  with ``--no-warm`` (open + verify only) and with the default warm-up (segment catalog,
  propensity models).

Reports medians of --repeat runs, the checksum cost in seconds per GB and GB/s, and ratios to the
old open. Usage: python bench/verify.py [--customers N] [--repeat R]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import REPO, cpu_model, demo_snapshot, write_result

from segsrv._kernels import get_num_threads
from segsrv.snapshot import checksum
from segsrv.snapshot.location import resolve_version_dir
from segsrv.snapshot.reader import VersionFiles, open_snapshot, read_manifest


def timed(fn, repeat: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def sha256_all(files: VersionFiles, threads: int) -> None:
    def one(data) -> str:
        return hashlib.sha256(memoryview(data).cast("B")).hexdigest()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        got = dict(zip(files.maps, pool.map(one, files.maps.values())))
    assert got == {rel: info["sha256"] for rel, info in files.listed.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_up(root, extra: list[str]) -> float:
    """Seconds from `segsrv serve` starting to health SERVING (grpc_health_probe-like check)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "segsrv", "serve", "--snapshots", str(root), "--port", str(port),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.RpcError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 600:
                    raise RuntimeError("the server did not start")
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = demo_snapshot(args.customers)
    vdir = resolve_version_dir(root)
    manifest = read_manifest(vdir)
    n_bytes = sum(f["bytes"] for f in manifest["files"].values())
    gb = n_bytes / 1e9
    threads = get_num_threads()
    files = VersionFiles(vdir, manifest)
    sha256_all(files, threads)  # reads every page once: the runs below start with a warm page cache
    def old_open() -> None:
        VersionFiles(vdir, read_manifest(vdir)).check_headers()

    rows = {}
    rows["open, headers and sizes only (the old open)"] = timed(old_open, args.repeat)
    rows["open, + manifest recount, no checksum"] = timed(lambda: open_snapshot(root, verify="sizes"), args.repeat)
    rows["open, full xxh3, 1 thread"] = timed(lambda: open_snapshot(root, verify="full", threads=1), args.repeat)
    rows[f"open, full xxh3, {threads} threads (default)"] = timed(lambda: open_snapshot(root, verify="full"),
                                                                  args.repeat)
    rows["xxh3 of every file only, 1 thread"] = timed(lambda: files.verify("full", threads=1), args.repeat)
    rows[f"xxh3 of every file only, {threads} threads"] = timed(lambda: files.verify("full", threads=threads),
                                                                args.repeat)
    rows["sha256 of every file only, 1 thread (old check)"] = timed(lambda: sha256_all(files, 1), args.repeat)
    rows[f"sha256 of every file only, {threads} threads"] = timed(lambda: sha256_all(files, threads), args.repeat)
    base = rows["open, headers and sizes only (the old open)"][0]
    print(f"[verify] {args.customers:,} customers: {len(manifest['files'])} files, {gb:.3f} GB; {cpu_model()}; "
          f"{threads} threads; medians of {args.repeat}")
    for name, (median, _) in rows.items():
        rate = f"{gb / median:6.2f} GB/s" if name.startswith(("xxh3", "sha256")) else " " * 11
        print(f"  {name:<48} {median * 1e3:9.1f} ms  {rate}  {median / base:6.2f}x the old open")
    per_gb = {name: median / gb for name, (median, _) in rows.items() if name.startswith(("xxh3", "sha256"))}
    startup = {
        "serve --no-warm": statistics.median(start_up(root, ["--no-warm"]) for _ in range(3)),
        "serve (default warm-up)": statistics.median(start_up(root, []) for _ in range(3)),
    }
    for name, s in startup.items():
        print(f"  start-up to SERVING, {name:<27} {s:7.2f} s (median of 3)")
    result = {
        "customers": args.customers, "files": len(manifest["files"]), "bytes": n_bytes, "threads": threads,
        "cpu": cpu_model(), "repeat": args.repeat,
        "median_seconds": {name: median for name, (median, _) in rows.items()},
        "runs_seconds": {name: runs for name, (_, runs) in rows.items()},
        "seconds_per_gb": per_gb,
        "ratio_to_old_open": {name: median / base for name, (median, _) in rows.items()},
        "startup_seconds": startup,
        "chunk_bytes": checksum.CHUNK_BYTES,
    }
    print(f"[verify] wrote {write_result('verify', result)}")


if __name__ == "__main__":
    main()
