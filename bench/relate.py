"""Relate benchmark (in-process) on the 1M-customer demo snapshot.

Two request shapes over the customers universe: a few fields (~100 features)
and every field. Conditions are drawn from the snapshot's own features
(single terms and two-term ANDs, deterministic). Reports median and p99 of the
whole relate call (condition, counts, every statistic, ordering), the count
step alone, and the anchor: numpy counting the same intersections
(np.bitwise_count(cond & dense_rows).sum(axis=1) plus np.isin for sparse
features), with the ratio; and the default order's selection alone (the first
20 by mutual information among the over-indexed: _kernels.top_by_mutual_information
on those counts) against its numpy twin (segsrv._kernels.naive: every
candidate's mutual information, then a full sort), the same keys checked.

    python bench/relate.py [--customers N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import demo_snapshot, percentile, write_result

from segsrv.engine.conditions import evaluate
from segsrv.ops.conditions import And, Term
from segsrv.engine.relate import count_features, relate
from segsrv.ops.relate import RelateQuery
from segsrv.snapshot.reader import open_snapshot
from segsrv import _kernels
from segsrv._kernels import naive


def pick_fields(universe, target: int = 100) -> list[str]:
    chosen, total = [], 0
    for name, f in sorted(universe.fields.items(), key=lambda kv: len(kv[1].values)):
        if total + len(f.values) <= target * 1.1:
            chosen.append(name)
            total += len(f.values)
        if total >= target * 0.9:
            break
    return chosen


def conditions(universe, k: int = 20, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    counts = np.asarray(universe.feature_count)
    ok = np.flatnonzero((counts > universe.n_rows * 0.01) & (counts < universe.n_rows * 0.6))
    out = []
    for i in range(k):
        a, b = rng.choice(ok, 2, replace=False)
        ta = Term(*universe.feature_name(int(a)))
        tb = Term(*universe.feature_name(int(b)))
        out.append(ta if i % 2 == 0 or ta.field == tb.field else And((ta, tb)))
    return out


def numpy_counts(universe, cond_bits, fids) -> np.ndarray:
    slots = np.asarray(universe.feature_slot[fids])
    out = np.zeros(len(fids), dtype=np.int64)
    d = slots >= 0
    out[d] = np.bitwise_count(cond_bits & universe.dense[slots[d]]).sum(axis=1)
    cond_ids = _kernels.bitset_to_ids(cond_bits, universe.n_rows)
    for i in np.flatnonzero(~d):
        out[i] = np.isin(universe.sparse_feature_ids(int(fids[i])), cond_ids, assume_unique=True).sum()
    return out


def bench_shape(snap, universe, fields, conds, repeats: int) -> dict:
    total, count_t, numpy_t, top_t, numpy_top_t, plans = [], [], [], [], [], {}
    fids = np.ascontiguousarray(np.concatenate([universe.fields[f].feature_ids for f in fields]) if fields
                                else np.arange(universe.n_features), dtype=np.int64)
    n_f = np.asarray(universe.feature_count[fids], dtype=np.int64)
    for r in range(repeats):
        cond = conds[r % len(conds)]
        t = time.perf_counter()
        res = relate(snap, RelateQuery(where=cond, universe=universe.name, relate=fields or None, limit=20))
        total.append(time.perf_counter() - t)
        plans[res.plan] = plans.get(res.plan, 0) + 1
        bits = evaluate(snap, universe, cond)
        n_c = int(_kernels.popcount(bits))
        t = time.perf_counter()
        ours, _ = count_features(universe, bits, n_c, fids)
        count_t.append(time.perf_counter() - t)
        top_args = (universe.n_rows, n_c, n_f, ours, fids, 1, "over", None, 20)
        t = time.perf_counter()
        matching, top = _kernels.top_by_mutual_information(*top_args)
        top_t.append(time.perf_counter() - t)
        if r < max(5, repeats // 5):
            t = time.perf_counter()
            ref = numpy_counts(universe, bits, fids)
            numpy_t.append(time.perf_counter() - t)
            assert np.array_equal(ref, ours)
            t = time.perf_counter()
            ref_matching, ref_top = naive.top_by_mutual_information(*top_args)
            numpy_top_t.append(time.perf_counter() - t)
            mi = _kernels.table_mutual_information(universe.n_rows, n_c, n_f, ours)
            assert matching == ref_matching and np.allclose(mi[top], mi[ref_top], rtol=1e-12, atol=0)
    return {
        "n_features": int(len(fids)),
        "relate_median_ms": round(np.median(total) * 1e3, 3),
        "relate_p99_ms": round(percentile(total, 99) * 1e3, 3),
        "count_median_ms": round(np.median(count_t) * 1e3, 3),
        "numpy_count_median_ms": round(np.median(numpy_t) * 1e3, 3),
        "ratio_numpy_over_ours_count": round(np.median(numpy_t) / np.median(count_t), 1),
        "top20_median_us": round(np.median(top_t) * 1e6, 1),
        "numpy_top20_median_us": round(np.median(numpy_top_t) * 1e6, 1),
        "ratio_numpy_over_ours_top20": round(np.median(numpy_top_t) / np.median(top_t), 1),
        "plans": plans,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    root = demo_snapshot(args.customers)
    snap = open_snapshot(root)
    u = snap.universes["customers"]
    conds = conditions(u)
    few = pick_fields(u)
    for c in conds[:3]:  # warm the page cache
        relate(snap, RelateQuery(where=c, universe="customers"))
    result = {
        "customers": u.n_rows,
        "features_total": u.n_features,
        "threads": _kernels.get_num_threads(),
        "cpu_path": _kernels.cpu_path(),
        "few_fields": {"fields": few, **bench_shape(snap, u, few, conds, args.repeats)},
        "all_fields": bench_shape(snap, u, [], conds, max(20, args.repeats // 4)),
    }
    print(f"relate over {u.n_rows:,} customers ({u.n_features:,} features), {result['threads']} threads, {result['cpu_path']}")
    for shape in ("few_fields", "all_fields"):
        r = result[shape]
        print(f"  {shape:10s} {r['n_features']:5d} features: relate median {r['relate_median_ms']:8.3f} ms "
              f"p99 {r['relate_p99_ms']:8.3f} ms | counts {r['count_median_ms']:7.3f} ms vs numpy "
              f"{r['numpy_count_median_ms']:8.3f} ms ({r['ratio_numpy_over_ours_count']}x) | plans {r['plans']}")
        print(f"  {'':10s} first 20 by mutual information {r['top20_median_us']:7.1f} us vs numpy "
              f"{r['numpy_top20_median_us']:8.1f} us ({r['ratio_numpy_over_ours_top20']}x)")
    print(f"results: {write_result('relate', result)}")


if __name__ == "__main__":
    main()
