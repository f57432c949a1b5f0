"""Discover over shards in-process against the unsharded snapshot (docs/scale.md, "Answers over shards").

Builds one dataset unsharded and with each --shards count (cached in --work), then times the same Discover
requests on each, interleaved (a round runs every configuration once; --repeats rounds), checks that
every sharded answer equals the unsharded one, and prints the median and fastest time of each, with the
ratio to unsharded and the number of map rounds (batches of counts) a sharded search made.

    python bench/sharded_discover.py [--dataset petnord | demo] [--customers N] [--shards 3 7]
                                     [--repeats R] [--work DIR]

The demo dataset is the demo shop of --customers customers (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from common import REPO, demo_tables, write_result

from segsrv.engine.discover import discover
from segsrv.engine.sharded import discover as sharded_module
from segsrv.engine.sharded import open_sharded, sharded_discover
from segsrv.ops.discover import DiscoverQuery
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.spec import load_spec

REQUESTS = {
    "default": {"from": "customers"},
    "target churned": {"from": "customers", "target": "churned=true"},
    "k 4": {"from": "customers", "k": 4},
}


def quiet(_msg: str) -> None:
    pass


def snapshots(spec_path: Path, work: Path, counts: list[int]):
    spec = load_spec(spec_path)
    whole_root = work / "whole"
    if not whole_root.exists():
        build_snapshot(spec, whole_root, progress=quiet)
    out = {1: None}
    for n in counts:
        root = work / f"shards-{n}"
        if not (root / spec.name / "SHARDS").exists():
            build_shards(replace(spec, shard_entity="customers"), root, n, progress=quiet)
        out[n] = open_sharded(root / spec.name)
    return open_snapshot(whole_root), out


def comparable(result) -> dict:
    answer = result.to_json()
    for key in ("elapsed_ms", "version"):
        answer.pop(key)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["petnord", "demo"], default="petnord")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if args.dataset == "petnord":
        spec_path, label = REPO / "specs" / "petnord.toml", "PetNord"
    else:
        spec_path, label = demo_tables(args.customers), f"demo shop of {args.customers:,} customers"
    work = args.work or Path(os.environ.get("SEGSRV_BENCH_DATA", REPO / "bench" / ".data")) / \
        f"sharded-discover-{args.dataset}{'' if args.dataset == 'petnord' else args.customers}"
    whole, sharded = snapshots(spec_path, work, args.shards)
    configs = {"unsharded": lambda q: discover(whole, q)}
    configs.update({f"{n} shards": (lambda q, s=sharded[n]: sharded_discover(s, q)) for n in args.shards})
    rounds: dict[int, int] = {}
    real_part = sharded_module.discover_part

    def counting_part(shard, *rest):
        rounds[id(shard)] = rounds.get(id(shard), 0) + 1
        return real_part(shard, *rest)

    print(f"Discover on {label}: median (fastest) of {args.repeats} interleaved runs; load average "
          f"{os.getloadavg()[0]:.1f}")
    results = {}
    for name, obj in REQUESTS.items():
        want = comparable(configs["unsharded"](DiscoverQuery.from_json(obj)))  # also warms every cache
        times = {config: [] for config in configs}
        for config, run in configs.items():
            if config != "unsharded":
                sharded_module.discover_part, rounds = counting_part, {}
                got = comparable(run(DiscoverQuery.from_json(obj)))
                sharded_module.discover_part = real_part
                assert got == want, f"{config}: {name} differs from unsharded"
                times[config + " rounds"] = max(rounds.values())
        for _ in range(args.repeats):
            for config, run in configs.items():
                t0 = time.perf_counter()
                run(DiscoverQuery.from_json(obj))
                times[config].append((time.perf_counter() - t0) * 1e3)
        base = statistics.median(times["unsharded"])
        row = []
        for config in configs:
            median = statistics.median(times[config])
            extra = "" if config == "unsharded" else f", x{median / base:.2f}, {times[config + ' rounds']} rounds"
            row.append(f"{config} {median:,.0f} ms ({min(times[config]):,.0f}{extra})")
        print(f"  {name}: " + "; ".join(row))
        results[name] = {config: {"median_ms": statistics.median(times[config]), "min_ms": min(times[config])}
                         for config in configs} | {
            "rounds": {config: times[config + " rounds"] for config in configs if config != "unsharded"}}
    write_result(f"sharded_discover_{args.dataset}", {"dataset": label, "repeats": args.repeats,
                                                      "load_average": os.getloadavg()[0], "requests": REQUESTS,
                                                      "results": results})
    print(json.dumps({"written": f"bench/results/sharded_discover_{args.dataset}.json"}))


if __name__ == "__main__":
    main()
