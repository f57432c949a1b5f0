"""Server CPU per call per method (not part of `make bench`): `segsrv serve` as a subprocess, each
method's request pool of the harness's default scenario sent serially (concurrency 1) and from C
threads; server CPU per call from /proc/PID/stat (Linux).

    .venv/bin/python bench/tools/percall.py [--root ROOT] [--concurrency 1,8] [--calls 200]
                                            [--scenario SCENARIO] [--server-args "--max-workers 4"]
"""
import argparse, os, sys, time, subprocess, socket, threading, statistics, shlex, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA_ROOT, REPO  # noqa: E402  (puts the repository on sys.path)
import grpc
from clients.loadtest.gen import fetch_catalog, RequestGenerator
from clients.loadtest.scenario import load_scenario
from segsrv.v1 import segsrv_pb2_grpc

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--root", type=Path, default=DATA_ROOT / "assign-root", help="snapshot root (default bench/.data/assign-root)")
ap.add_argument("--concurrency", default="1", help="comma-separated caller counts (default 1)")
ap.add_argument("--calls", type=int, default=200, help="requests per method and level (default 200)")
ap.add_argument("--scenario", type=Path, default=REPO / "clients" / "loadtest" / "scenarios" / "default.toml")
ap.add_argument("--server-args", default="", help="extra `segsrv serve` flags, one string")
args = ap.parse_args()
ROOT = args.root
CONC = [int(c) for c in args.concurrency.split(",")]
EXTRA = shlex.split(args.server_args)
N = args.calls
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = subprocess.Popen([sys.executable, "-m", "segsrv", "serve", "--snapshots", ROOT, "--port", str(port), *EXTRA],
                       stderr=tempfile.TemporaryFile(), cwd=REPO)
addr = f"127.0.0.1:{port}"
ch = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64<<20)])
grpc.channel_ready_future(ch).result(timeout=60)
time.sleep(1)
def cpu():
    with open(f"/proc/{srv.pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")
sc = load_scenario(args.scenario)
cat = fetch_catalog(addr, universe="customers")
pools = RequestGenerator(sc, cat).build_pools()
stub = segsrv_pb2_grpc.SegmentationServiceStub(ch)
calls = {"relate": stub.Relate, "count": stub.Count, "predict": stub.Predict, "assign": stub.Assign}
# warm: one pass over each pool
for m, reqs in pools.items():
    t = time.perf_counter()
    for r in reqs[:N]:
        calls[m](r, timeout=60)
    print(f"warm {m}: {time.perf_counter()-t:.1f}s", flush=True)
for c in CONC:
    for m, reqs in pools.items():
        reqs = reqs[:N]
        lat = []
        idx = [0]; lock = threading.Lock()
        def worker():
            while True:
                with lock:
                    i = idx[0]; idx[0] += 1
                if i >= len(reqs): return
                t = time.perf_counter(); calls[m](reqs[i], timeout=60); lat.append(time.perf_counter() - t)
        c0, w0 = cpu(), time.perf_counter()
        th = [threading.Thread(target=worker) for _ in range(c)]
        [x.start() for x in th]; [x.join() for x in th]
        c1, w1 = cpu(), time.perf_counter()
        print(f"c={c} {m:8s} server CPU {1e3*(c1-c0)/len(reqs):6.2f} ms/call  cores {(c1-c0)/(w1-w0):.2f}  "
              f"rate {len(reqs)/(w1-w0):6.1f}/s  p50 {1e3*statistics.median(lat):6.1f} ms", flush=True)
srv.terminate(); srv.wait()
