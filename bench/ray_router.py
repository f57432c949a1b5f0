"""Count and Relate latency through the Ray Serve router (segsrv serve-ray) against in-process over the same
shards, with the cost of each hop (docs/scale.md, "On a Ray cluster").

    python bench/ray_router.py ROOT/NAME [--calls 200] [--shards-per-replica K] [--address local]
                               [--assign-ids 100]

Measured, each the median of CALLS calls after one warm-up (privacy floor 10, as served):

* in-process: ``local_service(ROOT/NAME)``, every shard open in this process (segsrv/engine/sharded/);
* router: a SegsrvClient over gRPC to Ray Serve's proxy -> the router -> one call per shard group on the
  shard replicas (in parallel) -> the merge;
* ingress hop: a call the router refuses before any shard call (an unknown snapshot name): client -> proxy
  -> router -> back;
* shard hop: one shard replica call from this process that does no work (the shard's version): a Ray
  Serve handle call and its answer;
* one shard's Count: the same call running the Count's per-shard function;
* Assign of ASSIGN_IDS customer ids (spread over the key order, so in every shard) with propensities,
  in-process and through the router, when the build has a catalog of customers (one round of shard calls:
  ``ShardedSnapshot.map_each``).

``router_latency(location, ...)`` returns the figures as a dict, the router started and stopped by
bench/common.py's ``ray_serve_router`` (shared with bench/scale.py, which also calls ``hop_costs`` for the
per-hop figures at 1M customers); ``main`` prints them and writes bench/results/ray_router.json.
"""

from __future__ import annotations

import argparse
import time

from common import median_ms, ray_serve_router, write_result

COUNT = {"from": "customers", "where": {"churned": True}}
RELATE = {"from": "orders", "where": {"customer.churned": True}, "limit": 20}
ASSIGN_IDS = 100


def router_latency(location, *, calls: int = 200, shards_per_replica: int = 2, address: str = "local",
                   assign_ids: int = ASSIGN_IDS) -> dict:
    """The medians (ms) of the module docstring for the sharded snapshot at LOCATION (ROOT/NAME). Starts Ray
    Serve on `address` (a local instance by default) and removes the application at the end."""
    from segsrv.client import SegsrvClient
    from segsrv.engine.sharded import open_sharded
    from segsrv.ops import AssignQuery, CountQuery, RelateQuery
    from segsrv.service import SegmentationService, local_service
    from segsrv.snapshot.shards import read_shard_manifest

    manifest = read_shard_manifest(location)
    in_process = SegmentationService(local_service(location).snapshots, privacy_k=10)
    count_query, relate_query = CountQuery.from_json(COUNT), RelateQuery.from_json(RELATE)
    out = {"shards": manifest["shard_count"], "shards_per_replica": shards_per_replica, "calls": calls,
           "in_process_count_ms": median_ms(lambda: in_process.call(count_query), calls),
           "in_process_relate_ms": median_ms(lambda: in_process.call(RelateQuery.from_json(RELATE)), calls)}
    assign, sharded = None, open_sharded(location)
    if any(e.get("universe") == "customers" for e in sharded.segments.values()):
        every = [i.decode() if isinstance(i, bytes) else int(i) for s in sharded.shards
                 for i in s.universe("customers").row_ids]
        assign = {"ids": sorted(every)[:: max(1, len(every) // assign_ids)][:assign_ids], "from": "customers",
                  "include_propensities": True}
        out["assign_ids"] = len(assign["ids"])
        out["in_process_assign_ms"] = median_ms(lambda: in_process.call(AssignQuery.from_json(assign)), calls)
    t0 = time.perf_counter()
    with ray_serve_router(location, shards_per_replica=shards_per_replica, address=address) as router:
        out["startup_s"] = time.perf_counter() - t0
        with SegsrvClient(router, timeout=120) as client:
            out["router_count_ms"] = median_ms(lambda: client.call(count_query), calls)
            out["router_relate_ms"] = median_ms(lambda: client.call(relate_query), calls)
            if assign is not None:
                out["router_assign_ms"] = median_ms(lambda: client.call(AssignQuery.from_json(assign)), calls)
        out.update(hop_costs(router, location, count_query, calls))
    out["router_overhead_count_ms"] = out["router_count_ms"] - out["in_process_count_ms"]
    out["router_overhead_relate_ms"] = out["router_relate_ms"] - out["in_process_relate_ms"]
    return out


def hop_costs(router: str, location, count_query, calls: int) -> dict:
    """The per-hop medians (ms) of the module docstring, of the router at ROUTER serving LOCATION (ROOT/NAME)
    under its name, from a process connected to the router's Ray: "ingress_hop_ms" (a call refused before
    any shard call), "shard_hop_ms" (one call of shard group 0, no work), "shard_count_ms" (the same call
    running `count_query`'s per-shard function on shard 0)."""
    from ray import serve

    from segsrv.client import SegsrvClient, SegsrvRpcError
    from segsrv.engine.sharded import count_part
    from segsrv.ray.serve import APP_NAME, shard_version
    from segsrv.snapshot.shards import read_shard_manifest

    out = {}
    with SegsrvClient(router, timeout=120, snapshot="no-such-snapshot") as elsewhere:
        def refused():
            try:
                elsewhere.call(count_query)
            except SegsrvRpcError:
                pass

        out["ingress_hop_ms"] = median_ms(refused, calls)
    manifest = read_shard_manifest(location)
    shard = serve.get_deployment_handle("shards-0", APP_NAME)
    entry, dictionary = manifest["shards"][0], manifest["dictionary_sha256"]
    args = (count_query.universe, count_query.where)
    out["shard_hop_ms"] = median_ms(
        lambda: shard.run.remote(str(location), [entry], dictionary, shard_version, ()).result(), calls)
    out["shard_count_ms"] = median_ms(
        lambda: shard.run.remote(str(location), [entry], dictionary, count_part, args).result(), calls)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", metavar="ROOT/NAME", help="a sharded snapshot (segsrv build --shards N)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--shards-per-replica", type=int, default=2)
    parser.add_argument("--address", default="local", help="the Ray cluster (default: a local instance)")
    parser.add_argument("--assign-ids", type=int, default=ASSIGN_IDS, help="ids per Assign (with a catalog)")
    args = parser.parse_args()
    r = router_latency(args.location, calls=args.calls, shards_per_replica=args.shards_per_replica,
                       address=args.address, assign_ids=args.assign_ids)
    print(f"{r['shards']} shards, {r['shards_per_replica']} per replica; median of {r['calls']} calls (ms):")
    print(f"  Count   in-process {r['in_process_count_ms']:7.2f}   router {r['router_count_ms']:7.2f}   "
          f"(+{r['router_overhead_count_ms']:.2f})")
    print(f"  Relate  in-process {r['in_process_relate_ms']:7.2f}   router {r['router_relate_ms']:7.2f}   "
          f"(+{r['router_overhead_relate_ms']:.2f})")
    if "router_assign_ms" in r:
        print(f"  Assign  in-process {r['in_process_assign_ms']:7.2f}   router {r['router_assign_ms']:7.2f}   "
              f"({r['assign_ids']} ids with propensities)")
    print(f"  per hop: ingress (client -> proxy -> router -> client) {r['ingress_hop_ms']:.2f}; one shard call "
          f"(a Serve handle in this process -> replica -> answer) {r['shard_hop_ms']:.2f}, with a shard's Count "
          f"{r['shard_count_ms']:.2f}")
    print(f"wrote {write_result('ray_router', r)}")


if __name__ == "__main__":
    main()
