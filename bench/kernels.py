#!/usr/bin/env python
"""One-vs-many AND-count benchmark of segsrv._kernels.

    python bench/kernels.py [--quick] [--json OUT] [--repeats R] [--query-density D]

For each population size (1M and 10M customers = bits per feature) and each
feature density (0.01%, 0.1%, 1%, 10%, 50%) it builds random features and one
random query, then times -- interleaved, medians over --repeats runs, all in
the same process on the same data:

  probe      read_bandwidth_probe over the dense matrix bytes (1 thread): the
             memory-bandwidth anchor
  dense1     and_count_dense, 1 thread            (query bitset vs bitset matrix)
  denseN     and_count_dense, default thread policy (= all threads here)
  numpy      np.bitwise_count(query & matrix).sum(axis=1)
  sparse1/N  and_count_sparse (dense query bitset probed by sorted feature ids)
  ids1/N     and_count_ids    (sorted query ids vs sorted feature ids)
             ("N": n_threads=None, i.e. resolve_threads' policy: all threads
             unless the work is small, then one)
  roaring    pyroaring: query.intersection_cardinality(feature) per feature

The dense matrix has enough features (F) to exceed 4x the L3 cache.  At most
64M random ids are generated per case; further features repeat them (timing
does not depend on content, and it lets every method's counts be
cross-checked).  The sparse and roaring stores hold the same F features unless
that exceeds 600M ids (then the first Fsp; throughput is per feature).  Methods
slower than 0.25 s per run get 3 timed runs.  By default the query has
the same density as the features (--query-density fixes it instead).

Results: a table on stdout and JSON in bench/results/kernels.json (or --json).
"""
from __future__ import annotations

import argparse
import array
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import segsrv._kernels as K  # noqa: E402
from segsrv._kernels import bitset as B  # noqa: E402  (the prefetch tuning hook)
from common import cpu_model, random_ids  # noqa: E402

try:
    from pyroaring import BitMap
    import pyroaring
except ImportError:  # pragma: no cover
    BitMap = None
    pyroaring = None

DENSITIES = [0.0001, 0.001, 0.01, 0.1, 0.5]
SIZES = [1_000_000, 10_000_000]
MAX_UNIQUE_IDS = 64_000_000    # ids generated at random per case
MAX_SPARSE_IDS = 600_000_000   # ids held by the sparse store (2.4 GB)
SLOW_SECONDS = 0.25            # methods slower than this get fewer repeats


def l3_bytes() -> int:
    try:
        txt = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
        return int(txt.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return 32 << 20


def random_bitset_ids(rng, n_bits, density):
    """(ids, dense bitset) of one random feature."""
    n_words = (n_bits + 63) // 64
    if density >= 0.25:
        # threshold random bytes -> bits (vectorised), exact Bernoulli per bit
        mask = rng.random(n_bits, dtype=np.float32) < density
        ids = np.flatnonzero(mask).astype(np.uint32)
    else:
        ids = random_ids(rng, n_bits, density)
    return ids, K.ids_to_bitset(ids, n_words)


def timeit(fn, results, key):
    t0 = time.perf_counter()
    val = fn()
    results.setdefault(key, []).append(time.perf_counter() - t0)
    return val


def bench_case(n_bits, density, q_density, repeats, target_bytes, rng, all_threads):
    n_words = (n_bits + 63) // 64
    row_bytes = n_words * 8
    n_feat = max(2, math.ceil(target_bytes / row_bytes))
    ids_per_feat = max(1.0, n_bits * density)
    # distinct random features generated; the rest repeat them (timing does not
    # depend on content, and repeats let every method's counts be cross-checked)
    n_unique = int(min(n_feat, max(2, MAX_UNIQUE_IDS // ids_per_feat)))
    # sparse / roaring stores cover the same n_feat features unless too big
    n_sparse = int(min(n_feat, max(n_unique, MAX_SPARSE_IDS // ids_per_feat)))

    # --- data -------------------------------------------------------------
    t0 = time.perf_counter()
    qids, qbits = random_bitset_ids(rng, n_bits, q_density)
    feats = [random_bitset_ids(rng, n_bits, density) for _ in range(n_unique)]
    matrix = np.empty((n_feat, n_words), dtype=np.uint64)
    for f in range(n_feat):
        matrix[f] = feats[f % n_unique][1]
    lens = np.array([len(feats[f % n_unique][0]) for f in range(n_sparse)], dtype=np.int64)
    offsets = np.zeros(n_sparse + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    ids = np.empty(int(offsets[-1]), dtype=np.uint32)
    for f in range(n_sparse):
        ids[offsets[f]:offsets[f + 1]] = feats[f % n_unique][0]
    del feats
    roaring = None
    q_roaring = None
    if BitMap is not None:
        q_roaring = BitMap(array.array("I", qids.tobytes()))
        roaring = [BitMap(array.array("I", ids[offsets[j]:offsets[j + 1]].tobytes()))
                   for j in range(n_sparse)]
    gen_s = time.perf_counter() - t0

    # --- methods ----------------------------------------------------------
    def numpy_count():
        return np.bitwise_count(qbits & matrix).sum(axis=1)

    def roaring_count():
        ic = q_roaring.intersection_cardinality
        return np.array([ic(b) for b in roaring], dtype=np.int64)

    def dense1_one_row():  # the rows path one row at a time (AVX-512 only: the same code elsewhere)
        old = B._set_dense_rows_in_flight(1)
        try:
            return K.and_count_dense(qbits, matrix, n_threads=1)
        finally:
            B._set_dense_rows_in_flight(old)

    methods = {
        "probe": (lambda: K.read_bandwidth_probe(matrix), n_feat),
        "dense1": (lambda: K.and_count_dense(qbits, matrix, n_threads=1), n_feat),
        "dense1_one_row": (dense1_one_row, n_feat),
        "denseN": (lambda: K.and_count_dense(qbits, matrix), n_feat),
        "numpy": (numpy_count, n_feat),
        "sparse1": (lambda: K.and_count_sparse(qbits, ids, offsets, n_threads=1), n_sparse),
        "sparseN": (lambda: K.and_count_sparse(qbits, ids, offsets),
                    n_sparse),
        "ids1": (lambda: K.and_count_ids(qids, ids, offsets, n_threads=1), n_sparse),
        "idsN": (lambda: K.and_count_ids(qids, ids, offsets), n_sparse),
    }
    if roaring is not None:
        methods["roaring"] = (roaring_count, n_sparse)

    # correctness cross-check (also the warm-up run; slow methods get fewer repeats)
    ref = None
    reps = {}
    for name, (fn, k) in methods.items():
        t0 = time.perf_counter()
        res = fn()
        reps[name] = repeats if time.perf_counter() - t0 < SLOW_SECONDS else min(repeats, 3)
        if name == "probe":
            continue
        res = np.asarray(res)[:n_sparse]
        if ref is None:
            ref = res
        elif not np.array_equal(res, ref):
            raise AssertionError(f"{name} disagrees with dense1 at n={n_bits} d={density}")

    times: dict[str, list[float]] = {}
    for rep in range(repeats):     # interleaved: machine noise hits all methods alike
        for name, (fn, _k) in methods.items():
            if rep < reps[name]:
                timeit(fn, times, name)

    rec = {
        "n_bits": n_bits, "density": density, "query_density": q_density,
        "n_features_dense": n_feat, "n_features_sparse": n_sparse,
        "matrix_bytes": int(matrix.nbytes), "sparse_ids": int(len(ids)),
        "sparse_bytes": int(ids.nbytes + offsets.nbytes), "gen_seconds": round(gen_s, 2),
        "threads": all_threads, "methods": {},
    }
    for name, (fn, k) in methods.items():
        med = float(np.median(times[name]))
        m = {"median_s": med, "features_per_s": k / med, "features": k,
             "times_s": [round(t, 6) for t in times[name]]}
        if name in ("probe", "dense1", "dense1_one_row", "denseN", "numpy"):
            m["GBps"] = matrix.nbytes / med / 1e9
        rec["methods"][name] = m

    M = rec["methods"]
    fps = {n: M[n]["features_per_s"] for n in M}
    best1 = max(("dense1", "sparse1", "ids1"), key=lambda n: fps[n])
    bestN = max(("denseN", "sparseN", "idsN"), key=lambda n: fps[n])
    bests = max(("sparse1", "ids1"), key=lambda n: fps[n])
    # ours/probe: median of per-repeat ratios (probe and dense run back to back,
    # so slow drifts of a shared machine cancel)
    n_pair = min(len(times["probe"]), len(times["dense1"]), len(times["denseN"]))
    pair1 = [times["probe"][i] / times["dense1"][i] for i in range(n_pair)]
    pair1_one_row = [times["probe"][i] / times["dense1_one_row"][i] for i in range(n_pair)]
    pairN = [times["probe"][i] / times["denseN"][i] for i in range(n_pair)]
    rec["ratios"] = {
        "dense1_over_probe": float(np.median(pair1)),
        "dense1_one_row_over_probe": float(np.median(pair1_one_row)),
        "denseN_over_probe": float(np.median(pairN)),
        "dense1_over_numpy": fps["dense1"] / fps["numpy"],
        "sparse1_best": bests,
        "sparse1_over_numpy": fps[bests] / fps["numpy"],
        "best1": best1,
        "best1_over_numpy": fps[best1] / fps["numpy"],
        "bestN": bestN,
        "bestN_over_numpy": fps[bestN] / fps["numpy"],
    }
    if "roaring" in fps:
        rec["ratios"].update({
            "dense1_over_roaring": fps["dense1"] / fps["roaring"],
            "sparse1_over_roaring": fps[bests] / fps["roaring"],
            "best1_over_roaring": fps[best1] / fps["roaring"],
            "bestN_over_roaring": fps[bestN] / fps["roaring"],
        })
    del matrix, ids, roaring
    return rec


def fmt_rate(x):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def print_tables(records):
    hdr1 = (f"{'bits':>5} {'dens':>6} {'F':>5} {'Fsp':>5} | {'probe':>6} {'dense1':>6} "
            f"{'denseN':>6} {'numpy':>6} | {'dense1':>7} {'denseN':>7} {'numpy':>7} "
            f"{'sparse1':>7} {'sparseN':>7} {'ids1':>7} {'idsN':>7} {'roaring':>7}")
    print("\nThroughput: GB/s of dense matrix bytes (probe/dense/numpy) | features/s")
    print(hdr1)
    print("-" * len(hdr1))
    for r in records:
        M = r["methods"]
        g = lambda n: f"{M[n]['GBps']:6.1f}"  # noqa: E731
        f = lambda n: f"{fmt_rate(M[n]['features_per_s']):>7}" if n in M else f"{'-':>7}"  # noqa: E731
        print(f"{r['n_bits'] // 1_000_000:>4}M {r['density'] * 100:>5.2g}% "
              f"{r['n_features_dense']:>5} {r['n_features_sparse']:>5} | "
              f"{g('probe')} {g('dense1')} {g('denseN')} {g('numpy')} | "
              f"{f('dense1')} {f('denseN')} {f('numpy')} {f('sparse1')} {f('sparseN')} "
              f"{f('ids1')} {f('idsN')} {f('roaring')}")
    hdr2 = (f"{'bits':>5} {'dens':>6} | {'d1/probe':>8} {'1 row':>8} {'dN/probe':>8} | {'d1/numpy':>8} "
            f"{'d1/roar':>8} | {'sp1 path':>8} {'sp1/np':>8} {'sp1/roar':>8} | "
            f"{'best1':>7} {'b1/numpy':>8} {'b1/roar':>8} | {'bestN':>7} {'bN/numpy':>8} "
            f"{'bN/roar':>8}")
    print("\nRatios (features/s; '1' = one thread, 'N' = default thread policy; best = faster "
          "of dense vs sparse paths; d/probe = median of paired per-repeat GB/s ratios; '1 row': d1/probe "
          "reading one row at a time instead of 4 rows per pass over the query, AVX-512)")
    print(hdr2)
    print("-" * len(hdr2))
    for r in records:
        x = r["ratios"]
        o = lambda k: f"{x[k]:8.2f}" if k in x else f"{'-':>8}"  # noqa: E731
        print(f"{r['n_bits'] // 1_000_000:>4}M {r['density'] * 100:>5.2g}% | "
              f"{o('dense1_over_probe')} {o('dense1_one_row_over_probe')} {o('denseN_over_probe')} | "
              f"{o('dense1_over_numpy')} "
              f"{o('dense1_over_roaring')} | {x['sparse1_best']:>8} {o('sparse1_over_numpy')} "
              f"{o('sparse1_over_roaring')} | {x['best1']:>7} {o('best1_over_numpy')} "
              f"{o('best1_over_roaring')} | {x['bestN']:>7} {o('bestN_over_numpy')} "
              f"{o('bestN_over_roaring')}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run in seconds")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "kernels.json"),
                    help="output JSON path (default bench/results/kernels.json)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per method (median)")
    ap.add_argument("--query-density", type=float, default=None,
                    help="fixed query density (default: same as the feature density)")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)

    l3 = l3_bytes()
    if args.quick:
        sizes, densities = [1_000_000], [0.001, 0.1, 0.5]
        target, repeats = 2 * l3, args.repeats or 3
    else:
        sizes, densities = SIZES, DENSITIES
        target, repeats = 4 * l3, args.repeats or 11
    threads = K.get_num_threads()
    rng = np.random.default_rng(args.seed)
    print(f"segsrv kernels bench: cpu_path={K.cpu_path()} openmp={K.has_openmp()} "
          f"threads={threads} L3={l3 >> 20} MiB dense matrix>={target >> 20} MiB "
          f"repeats={repeats} numpy={np.__version__} "
          f"pyroaring={getattr(pyroaring, '__version__', None)}", flush=True)

    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"WARNING: load average {load_start[0]:.2f} at start: other processes share "
              f"the machine, absolute numbers will be noisy", flush=True)
    records = []
    t_start = time.perf_counter()
    for n_bits in sizes:
        for d in densities:
            qd = args.query_density if args.query_density is not None else d
            rec = bench_case(n_bits, d, qd, repeats, target, rng, threads)
            records.append(rec)
            M = rec["methods"]
            print(f"  n={n_bits:>9,} d={d:<7g} F={rec['n_features_dense']:>5} "
                  f"probe={M['probe']['GBps']:.1f} dense1={M['dense1']['GBps']:.1f} "
                  f"denseN={M['denseN']['GBps']:.1f} numpy={M['numpy']['GBps']:.2f} GB/s "
                  f"(gen {rec['gen_seconds']}s)", flush=True)
    print_tables(records)
    elapsed = time.perf_counter() - t_start
    out = {
        "meta": {
            "cpu_path": K.cpu_path(), "available_paths": K.available_cpu_paths(),
            "openmp": K.has_openmp(), "threads": threads, "l3_bytes": l3,
            "target_matrix_bytes": target, "repeats": repeats, "quick": args.quick,
            "numpy": np.__version__, "pyroaring": getattr(pyroaring, "__version__", None),
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": cpu_model(), "elapsed_s": round(elapsed, 1),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "results": records,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
