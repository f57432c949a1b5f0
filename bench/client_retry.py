"""What the client retry policy costs on calls that succeed.

SegsrvClient buffers each call so that it can send it again after UNAVAILABLE
(proto/segsrv/v1/segsrv_grpc_service_config.json, docs/clients.md#retries).
This measures, in one run against one in-process server over the PetNord
snapshot (built into a temporary directory), sequential calls per second of

  retry     SegsrvClient(addr)               the default: the retry policy
  no-retry  SegsrvClient(addr, retry=False)  the anchor: same client, no policy
  raw       the generated stub, no policy     (the floor of the Python stack)

for Count (a one-term condition) and Assign (one id), in interleaved rounds,
and prints the medians and the ratio retry / no-retry.

    python bench/client_retry.py [--calls 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import write_result  # noqa: E402

from segsrv.client import SegsrvClient  # noqa: E402
from segsrv.engine.catalog import apply_segments  # noqa: E402
from segsrv.server.app import create_server  # noqa: E402
from segsrv.snapshot.builder import build_snapshot  # noqa: E402
from segsrv.v1 import segsrv_pb2 as pb  # noqa: E402
from segsrv.v1 import segsrv_pb2_grpc as pb_grpc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000, help="calls per round and variant (1000)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    args = ap.parse_args()

    import grpc

    with tempfile.TemporaryDirectory() as tmp:
        print("building the PetNord snapshot ...", file=sys.stderr, flush=True)
        build_snapshot(REPO / "specs" / "petnord.toml", Path(tmp), progress=lambda m: None)
        apply_segments(Path(tmp) / "petnord", REPO / "clients" / "fixtures" / "segments.toml")
        server, port = create_server(tmp, port=0, reload_interval=None)
        server.start()
        addr = f"127.0.0.1:{port}"
        try:
            retry, no_retry = SegsrvClient(addr), SegsrvClient(addr, retry=False)
            channel = grpc.insecure_channel(addr)
            stub = pb_grpc.SegmentationServiceStub(channel)
            count_req = pb.CountRequest(universe="customers", condition=retry.count_request(
                {"from": "customers", "where": {"churned": True}}).condition)
            assign_req = pb.AssignRequest(universe="customers", ids=["CUST-00001"])
            calls = {
                "count": {
                    "retry": lambda: retry.count({"from": "customers", "where": {"churned": True}}),
                    "no-retry": lambda: no_retry.count({"from": "customers", "where": {"churned": True}}),
                    "raw": lambda: stub.Count(count_req, timeout=10),
                },
                "assign": {
                    "retry": lambda: retry.assign(["CUST-00001"], universe="customers"),
                    "no-retry": lambda: no_retry.assign(["CUST-00001"], universe="customers"),
                    "raw": lambda: stub.Assign(assign_req, timeout=10),
                },
            }
            rates: dict[str, dict[str, list[float]]] = {m: {v: [] for v in vs} for m, vs in calls.items()}
            for variants in calls.values():  # warm every channel and code path
                for fn in variants.values():
                    for _ in range(100):
                        fn()
            for r in range(args.rounds):
                for method, variants in calls.items():
                    for variant, fn in variants.items():
                        t0 = time.perf_counter()
                        for _ in range(args.calls):
                            fn()
                        rates[method][variant].append(args.calls / (time.perf_counter() - t0))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            retry.close(), no_retry.close(), channel.close()
        finally:
            server.stop(0)

    result = {"calls_per_round": args.calls, "rounds": args.rounds, "methods": {}}
    for method, variants in rates.items():
        med = {v: statistics.median(x) for v, x in variants.items()}
        ratio = med["retry"] / med["no-retry"]
        overhead_us = (1 / med["retry"] - 1 / med["no-retry"]) * 1e6
        result["methods"][method] = {"median_calls_per_s": med, "runs": variants,
                                     "ratio_retry_over_no_retry": ratio, "overhead_us_per_call": overhead_us}
        print(f"{method:7s} retry {med['retry']:7.0f}/s   no-retry {med['no-retry']:7.0f}/s   raw stub "
              f"{med['raw']:7.0f}/s   retry/no-retry {ratio:.3f} ({overhead_us:+.0f} us per call)")
    print(f"wrote {write_result('client_retry', result)}")


if __name__ == "__main__":
    main()
