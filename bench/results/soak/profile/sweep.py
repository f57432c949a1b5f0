# Ad-hoc profiling driver used for docs/loadtest.md#soak (provenance; not part of the bench suite).
"""closed/open loop mix against `segsrv serve` with given flags: ok/s, server cores, CPU ms/call, p50/p99."""
import json, os, socket, subprocess, sys, time
ROOT = "/work/main/bench/.data/assign-root"
def run(flags, load, dur=30, tag=""):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    srv = subprocess.Popen([sys.executable, "-m", "segsrv", "serve", "--snapshots", ROOT, "--port", str(port),
                            "--no-access-log", *flags], stderr=open(f"/tmp/prof/srv{tag}.log", "w"), cwd="/work/main")
    import grpc
    grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=120)
    def cpu():
        import psutil
        p = psutil.Process(srv.pid)
        return sum(sum(x.cpu_times()[:2]) for x in [p, *p.children(recursive=True)])
    out = f"/tmp/prof/lt{tag}"
    c0, t0 = cpu(), time.time()
    subprocess.run([sys.executable, "clients/loadtest/run.py", "--addr", f"127.0.0.1:{port}", "--duration", str(dur),
                    "--warmup", "3", *load, "--connections", "2", "--out", out, "--no-plot", "--quiet"],
                   cwd="/work/main", check=True)
    c1, t1 = cpu(), time.time()
    srv.terminate(); srv.wait()
    r = json.load(open(f"{out}/report.json"))["overall"]
    n = r["requests"]
    print(f"{' '.join(flags) or 'default':32s} {' '.join(load):18s} ok/s {r['ok_rps']:6.1f} err {r['errors']:5d} "
          f"cores {(c1-c0)/(t1-t0):.2f} cpu/call~ {1e3*(c1-c0)/max(n,1)/((dur+3)/dur):5.2f} ms "
          f"p50 {r['latency_ms']['p50']:6.1f} p99 {r['latency_ms']['p99']:7.1f}", flush=True)
if __name__ == "__main__":
    dur = float(os.environ.get("DUR", "30"))
    for spec in sys.argv[1:]:
        flags, load = spec.split("|")
        run(flags.split(), load.split(), dur)
