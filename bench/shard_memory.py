"""Peak memory of one shard's build alone (docs/scale.md, "Measured").

Runs the dictionary pass of a spec with [shards] in this process, then builds shard 0 of N in a fresh
(spawned) process and prints both peaks (max RSS). The whole `segsrv build --shards N` is measured with
/usr/bin/time -v (docs/scale.md).

    python bench/shard_memory.py SPEC OUT [--shards N] [--json]

--json prints one JSON object ({"shards", "dictionary_peak_mb", "shard_peak_mb"}) instead (bench/scale.py
reads it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
from dataclasses import replace

from segsrv.snapshot.builder import ShardRows, build_snapshot
from segsrv.snapshot.shardbuild import plan_vocabulary
from segsrv.snapshot.shards import partition_plan
from segsrv.snapshot.spec import load_spec


def build_one_shard(spec_path: str, vocabulary: dict, out: str, count: int) -> None:
    spec = load_spec(spec_path)
    build_snapshot(replace(spec, name="shard-probe"), out, progress=lambda m: None, vocabulary=vocabulary,
                   shard=ShardRows(partition_plan(spec), 0, count), set_current=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("out")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    vocabulary, _ = plan_vocabulary(load_spec(args.spec), lambda m: None)
    dictionary_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = mp.get_context("spawn").Process(target=build_one_shard, args=(args.spec, vocabulary, args.out, args.shards))
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"the build of shard 0 of {args.shards} failed (exit code {child.exitcode})")
    shard_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"shards": args.shards, "dictionary_peak_mb": round(dictionary_peak, 1),
                          "shard_peak_mb": round(shard_peak, 1)}))
        return
    print(f"dictionary pass: peak {dictionary_peak:,.0f} MB")
    print(f"shard 0 of {args.shards} alone, in a fresh process: peak {shard_peak:,.0f} MB")


if __name__ == "__main__":
    main()
