# Ad-hoc profiling driver used for docs/loadtest.md#soak (provenance; not part of the bench suite).
"""Server CPU per call per method, serial (concurrency 1) and with C concurrent callers."""
import os, sys, time, subprocess, socket, threading, statistics
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/clients")
import grpc
from loadtest.gen import fetch_catalog, RequestGenerator, rpc_path
from loadtest.scenario import load_scenario
from segsrv.v1 import segsrv_pb2, segsrv_pb2_grpc

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/work/main/bench/.data/assign-root"
CONC = [int(c) for c in (sys.argv[2] if len(sys.argv) > 2 else "1").split(",")]
EXTRA = sys.argv[3].split() if len(sys.argv) > 3 else []
N = int(os.environ.get("N", "200"))
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = subprocess.Popen([sys.executable, "-m", "segsrv", "serve", "--snapshots", ROOT, "--port", str(port), *EXTRA],
                       stderr=open("/tmp/prof/server.log", "w"), cwd="/work/main")
addr = f"127.0.0.1:{port}"
ch = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64<<20)])
grpc.channel_ready_future(ch).result(timeout=60)
time.sleep(1)
def cpu():
    with open(f"/proc/{srv.pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")
sc = load_scenario("/work/main/clients/loadtest/scenarios/default.toml")
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
