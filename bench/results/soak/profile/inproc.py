# Ad-hoc profiling driver used for docs/loadtest.md#soak (provenance; not part of the bench suite).
import sys, time, cProfile, pstats, statistics
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/clients")
from loadtest.gen import RequestGenerator, catalog_from_response
from loadtest.scenario import load_scenario
from segsrv.server.registry import SnapshotRegistry
from segsrv.server.servicer import SegmentationServiceServicer
from segsrv.engine import set_kernel_threads
from segsrv.v1 import segsrv_pb2
set_kernel_threads(1)
class Ctx:
    def is_active(self): return True
    def time_remaining(self): return 1e9
    def abort(self, code, msg): raise RuntimeError(code, msg)
    def abort_with_status(self, st): raise RuntimeError(st)
    def invocation_metadata(self): return ()
    def set_trailing_metadata(self, md): pass
reg = SnapshotRegistry("/work/main/bench/.data/assign-root")
sv = SegmentationServiceServicer(reg)
info = sv.GetSnapshotInfo(segsrv_pb2.GetSnapshotInfoRequest(universe="customers", include_values=True), Ctx())
sc = load_scenario("/work/main/clients/loadtest/scenarios/default.toml")
cat = catalog_from_response(info, "customers")
pools = RequestGenerator(sc, cat).build_pools()
fn = {"relate": sv.Relate, "count": sv.Count, "predict": sv.Predict, "assign": sv.Assign}
methods = sys.argv[1].split(",")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200
for m in methods:
    for r in pools[m][:N]: fn[m](r, Ctx())   # warm
    lat = []
    for r in pools[m][:N]:
        t = time.thread_time(); fn[m](r, Ctx()); lat.append(time.thread_time() - t)
    lat.sort()
    print(f"{m}: mean {1e3*sum(lat)/len(lat):.2f} ms  p50 {1e3*lat[len(lat)//2]:.2f}  p90 {1e3*lat[int(len(lat)*.9)]:.2f}  max {1e3*lat[-1]:.2f}")
    pr = cProfile.Profile(); pr.enable()
    for r in pools[m][:N]: fn[m](r, Ctx())
    pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
