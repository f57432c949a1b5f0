"""Relate's two counting plans (segsrv.engine.relate: "scan" and "histogram") on the 1M demo, and the cost
model that picks between them (HISTOGRAM_COST_FACTOR).

For the 20 conditions of bench/relate.py, in two request shapes (a few fields, bench/relate.py's pick_fields:
~90 features; and "every field"), times count_features under each plan, the 20 requests one after another as
a server counts them (what one request's scan leaves in the caches is what the next finds), the median of
--repeat rounds per request. Prints each request's condition rows, both times and the model's estimates, the
total over the 20 requests under the model's choices against the best choice per request, and the same
total for other factors (so the range of factors that choose as well as the best is seen).

    python bench/plan_choice.py [--root ROOT] [--repeat 7] [--threads 1]

ROOT: a snapshot root holding "demo" (default: the cached 1M demo snapshot, built when missing or stale).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import demo_snapshot, write_result
from relate import conditions, pick_fields

from segsrv import _kernels
from segsrv.engine import relate as rel
from segsrv.engine import set_kernel_threads
from segsrv.engine.compact_csr import compact_sparse_csr
from segsrv.engine.conditions import evaluate
from segsrv.ops.conditions import where_json
from segsrv.ops.relate import RelateQuery
from segsrv.snapshot.reader import open_snapshot

FACTORS = (5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0)
PLANS = ("scan", "histogram")


def requests(snap, u, fields: list[str] | None) -> list[tuple]:
    """(condition bits, n_c, candidate fids, their layout) of the 20 requests over `fields` (None: every field)."""
    out = []
    for cond in conditions(u):
        query = {"from": "customers", "where": where_json(cond), "limit": 20}
        if fields is not None:
            query["relate"] = fields
        q = RelateQuery.from_json(query)
        bits = evaluate(snap, u, q.where)
        fids = rel.candidate_features(u, q)
        layout = rel.feature_layout(u, fids, derive_partitions=True)  # as Relate lays them out
        out.append((bits, int(_kernels.popcount(bits)), fids, layout))
    return out


def timed(u, reqs: list[tuple], repeat: int) -> dict[str, np.ndarray]:
    """Per plan, the median ms of each request's count_features, the requests run one after another."""
    ms = {plan: np.zeros((repeat, len(reqs))) for plan in PLANS}
    for r in range(repeat):
        for plan in PLANS:
            for i, (bits, n_c, fids, layout) in enumerate(reqs):
                t = time.perf_counter()
                rel.count_features(u, bits, n_c, fids, plan, layout)
                ms[plan][r, i] = (time.perf_counter() - t) * 1e3
    return {plan: np.median(v, axis=0) for plan, v in ms.items()}


def shape_table(u, reqs: list[tuple], repeat: int) -> dict:
    ms = timed(u, reqs, repeat)
    scan, hist = ms["scan"], ms["histogram"]
    best = float(np.minimum(scan, hist).sum())

    def total(factor: float) -> tuple[float, int]:
        pick = np.array([rel.histogram_cost(u, n_c, factor) < layout.scan_cost for _, n_c, _, layout in reqs])
        return float(np.where(pick, hist, scan).sum()), int(pick.sum())

    rows = []
    for i, (_, n_c, _, layout) in enumerate(reqs):
        rows.append({"n_c": n_c, "scan_ms": round(float(scan[i]), 3), "histogram_ms": round(float(hist[i]), 3),
                     "estimate_scan": layout.scan_cost, "estimate_histogram": rel.histogram_cost(u, n_c),
                     "picked": "histogram" if rel.histogram_cost(u, n_c) < layout.scan_cost else "scan"})
    picked_ms, picked_hist = total(rel.HISTOGRAM_COST_FACTOR)
    return {"requests": rows, "best_ms": round(best, 3), "picked_ms": round(picked_ms, 3),
            "picked_histogram": picked_hist, "picked_over_best": round(picked_ms / best, 4),
            "by_factor": {str(f): {"total_ms": round(t, 3), "histogram": h, "over_best": round(t / best, 4)}
                          for f in FACTORS for t, h in [total(f)]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="snapshot root (default: the cached 1M demo)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds over the 20 requests (default 7; the median)")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads (default 1, as `segsrv serve` runs)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    set_kernel_threads(args.threads)
    snap = open_snapshot(args.root or str(demo_snapshot(1_000_000)))
    u = snap.universes["customers"]
    compact_sparse_csr(u)  # as the server's warm-up builds it
    result = {"factor": rel.HISTOGRAM_COST_FACTOR, "threads": args.threads, "repeat": args.repeat, "shapes": {}}
    for shape, fields in (("few fields", pick_fields(u)), ("every field", None)):
        print(f"{shape}: counting the 20 requests under each plan, {args.repeat} rounds ...", flush=True)
        table = shape_table(u, requests(snap, u, fields), args.repeat)
        result["shapes"][shape] = table
        print(f"{'rows in C':>10s} {'scan ms':>9s} {'hist ms':>9s} {'est. hist/scan':>15s}  picked")
        for r in table["requests"]:
            print(f"{r['n_c']:10,d} {r['scan_ms']:9.3f} {r['histogram_ms']:9.3f} "
                  f"{r['estimate_histogram'] / r['estimate_scan']:15.2f}  {r['picked']}")
        print(f"  the 20 requests: {table['picked_ms']:.2f} ms as picked (factor {rel.HISTOGRAM_COST_FACTOR:g}, "
              f"{table['picked_histogram']} histogram), {table['best_ms']:.2f} ms choosing the faster each time "
              f"({table['picked_over_best']:.3f}x)")
        print("  other factors: " + ", ".join(f"{f}: {v['over_best']:.3f}x ({v['histogram']})"
                                              for f, v in table["by_factor"].items()))
    print(f"results: {write_result('plan_choice', result)}")


if __name__ == "__main__":
    main()
