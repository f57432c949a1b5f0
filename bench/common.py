"""Shared helpers of the benchmarks: the cached 1M-customer demo shop and its snapshot, timing, and a
`segsrv serve-ray` router on a local Ray instance (bench/ray_router.py, bench/scale.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# run from a checkout without installing: the package and its in-place kernels are in REPO
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
DATA_ROOT = Path(os.environ.get("SEGSRV_BENCH_DATA", BENCH_DIR / ".data"))
RESULTS = BENCH_DIR / "results"


def demo_tables(n_customers: int) -> Path:
    """Generate the demo shop once (cached); returns its spec.toml."""
    out = DATA_ROOT / f"demo-{n_customers}"
    spec = out / "spec.toml"
    if not spec.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "segsrv", "demo-data", "--customers", str(n_customers),
                        "--out", str(out)], check=True)
        print(f"[bench] generated demo shop of {n_customers:,} customers in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return spec


def stale_snapshot(root: Path) -> bool:
    """A cached snapshot written before its files had fast checksums (opens would fall back to SHA-256
    and the benchmarks would measure that) or in an older format version (format version 1 has no sparse
    CSR: the engine would only probe rare features); both are rebuilt."""
    from segsrv.snapshot.format import FORMAT_VERSION

    current = root / "demo" / "CURRENT"
    if not current.exists():
        return True
    manifest = json.loads((root / "demo" / current.read_text().strip() / "manifest.json").read_text())
    return (manifest.get("format_version") != FORMAT_VERSION
            or not all("xxh3" in entry for entry in manifest["files"].values()))


def demo_snapshot(n_customers: int) -> Path:
    """Build the demo snapshot once (cached, rebuilt when stale); returns the snapshot root."""
    spec = demo_tables(n_customers)
    root = DATA_ROOT / f"snap-{n_customers}"
    if stale_snapshot(root):
        subprocess.run([sys.executable, "-m", "segsrv", "build", str(spec), "--out", str(root)], check=True)
    return root


def sparse_bytes(u, bits, n_c: int, layout) -> float:
    """Bytes the scan plan's sparse part reads for a condition (bitset `bits`, n_c rows) and a feature layout
    (segsrv.engine.relate.feature_layout): the layout's sparse ids when they are probed, else the listed rows'
    entries of the sparse CSR and their two row pointers, in the compact form the rows method reads
    (segsrv.engine.compact_csr: its entries' and pointers' sizes; sparse_method picks the method)."""
    import numpy as np

    from segsrv import _kernels
    from segsrv.engine.compact_csr import compact_sparse_csr
    from segsrv.engine.relate import sparse_method

    if len(layout.sparse) and sparse_method(u, layout, n_c) == "rows":
        listed = _kernels.bitset_to_ids(np.invert(bits) if 2 * n_c > u.n_rows else bits, u.n_rows).astype(np.int64)
        indptr = np.asarray(u.sparse_csr_indptr)
        compact = compact_sparse_csr(u)
        entry, pointer = ((compact.indices.itemsize, compact.within.itemsize) if compact is not None
                          else (u.sparse_csr_indices.itemsize, indptr.itemsize))
        return entry * float((indptr[listed + 1] - indptr[listed]).sum()) + 2.0 * pointer * len(listed)
    return 4.0 * float(layout.sparse_ids)


def child_usage(args: list[str]) -> dict:
    """{"wall_s", "cpu_s" (user + system), "peak_rss_mb"} of a command, run from a fresh helper process so
    that its RUSAGE_CHILDREN holds that command (and its children) alone."""
    code = (
        "import json, resource, subprocess, sys, time;"
        "t=time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps({'wall_s': time.perf_counter()-t, 'cpu_s': r.ru_utime+r.ru_stime,"
        " 'peak_rss_mb': r.ru_maxrss/1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using >= min_cpu % CPU (ps's lifetime average), command cut to 90 characters: what
    else was running on a shared machine."""
    try:
        text = subprocess.run(["ps", "-eo", "pid=,pcpu=,args=", "--sort=-pcpu"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in text.splitlines():
        pid, pcpu, args = (line.split(None, 2) + ["", ""])[:3]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if float(pcpu) < min_cpu:
            break
        out.append(f"{pcpu}% {args[:90]}")
    return out


def write_result(name: str, result: dict) -> Path:
    from clients.loadtest.report import relative_paths  # the one rewrite of machine paths

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(relative_paths(result), indent=2) + "\n")
    return path


def threads_picked(call) -> int:
    """The most threads segsrv._kernels' policy gives the kernel calls of `call()` (each wrapper asks
    resolve_threads(n_threads, work) once)."""
    from segsrv import _kernels

    picked = []
    resolve = _kernels.resolve_threads
    _kernels.resolve_threads = lambda n, work: picked.append(resolve(n, work)) or picked[-1]
    try:
        call()
    finally:
        _kernels.resolve_threads = resolve
    return max(picked)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def median_ms(fn, repeat: int) -> float:
    """Median milliseconds of `repeat` calls of fn, after one warm-up call."""
    import numpy as np

    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def best_ms(seconds: list[float], n_requests: int) -> float:
    """The median over the requests of each one's fastest call (ms), of calls that cycled `n_requests`
    requests in order (call i sent request i % n_requests): on a machine other jobs load, steadier than the
    median of every call, and unlike the fastest call overall it does not pick the cheapest request."""
    import numpy as np

    n = min(n_requests, len(seconds))
    return float(np.median([min(seconds[i::n_requests]) for i in range(n)])) * 1e3


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), for the results' metadata."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def random_ids(rng, n_bits: int, density: float):
    """Sorted uint32 ids of a Bernoulli(density) set over n_bits (geometric gaps)."""
    import math

    import numpy as np

    if density >= 1.0:
        return np.arange(n_bits, dtype=np.uint32)
    mean = n_bits * density
    m = int(mean + 8 * math.sqrt(mean) + 64)
    while True:
        pos = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) - 1
        if pos[-1] >= n_bits:
            return pos[pos < n_bits].astype(np.uint32)
        m *= 2


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (Ray Serve's gRPC proxy needs a port number, not 0)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def ray_serve_router(location, *, shards_per_replica: int, address: str = "local", privacy_k: int = 10,
                     timeout: float = 300.0):
    """`segsrv serve-ray`'s deployment (segsrv.ray.serve.deploy) of the sharded snapshot(s) at LOCATION
    (ROOT/NAME, or a root of them), yielding the router's gRPC address once every shard group has opened
    its shards. ADDRESS "local": a Ray instance started here with this machine's CPUs, stopped at the end;
    else the cluster to join (left running). Replicas reserve no CPU (they share the machine's), the
    router does not reload, the privacy floor is `privacy_k` (segsrv serve's default). Bounded: the
    deployment must be running, and the shards open, within `timeout` seconds (SegsrvError otherwise).
    The application is deleted at the end."""
    import ray
    from ray import serve

    from segsrv.client import SegsrvClient
    from segsrv.ray import connect
    from segsrv.ray.serve import APP_NAME, deploy, wait_for_replicas

    local = address == "local" and not ray.is_initialized()
    if local:
        # the replicas' logs (one line per call) stay in Ray's session logs, not in this process's output
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        connect(address)
    port = free_port()
    try:
        deploy(str(location), shards_per_replica=shards_per_replica, port=port,
               service_options={"privacy_k": privacy_k}, replica_cpus=0, reload_interval=0)
        wait_for_replicas(timeout)
        router = f"127.0.0.1:{port}"
        with SegsrvClient(router, timeout=timeout) as client:
            client.snapshot_info()  # answered over every shard: each group opens its shards now, not in a timed call
        yield router
    finally:
        try:
            serve.delete(APP_NAME)
        finally:
            if local:
                ray.shutdown()
