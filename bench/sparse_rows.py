"""The rare features' two counting methods (segsrv.engine.relate: "probe" and "rows") on the 1M demo.

For the 20 conditions of bench/relate.py and the "every field" Relate (RelateQuery.from_json({"from":
"customers", "where": ..., "limit": 20})), times the sparse part of the scan plan both ways (median of
--repeat calls each): probing every id of the candidates' sparse features (and_count_sparse) and the rows
method (bitset_to_ids of the condition or its complement, compact_csr_histogram through the compact sparse CSR,
segsrv.engine.compact_csr), says which
one the cost model picks, and sums the picked method and probing over the 20 requests and over those of the
scan plan (the histogram plan, which small conditions get, counts every feature through the full CSR: no
sparse part). Also the whole count_features, probing and "auto". --fit measures the cost model's constants
instead (ns per probed id; per listed word and row of bitset_to_ids; per listed row and per CSR entry of
the histogram through the compact sparse CSR: least squares over the same conditions, whose rows hold 2 to 23
sparse entries each, with no constant term).

    python bench/sparse_rows.py [--root ROOT] [--repeat 5] [--threads 1] [--fit]

ROOT: a snapshot root holding "demo" (default: the cached 1M demo snapshot, built when missing or stale).
"""

from __future__ import annotations

import argparse

import numpy as np

from common import demo_snapshot, median_ms, write_result
from relate import conditions

from segsrv import _kernels
from segsrv.engine import relate as rel
from segsrv.engine.compact_csr import compact_sparse_csr
from segsrv.engine.conditions import evaluate
from segsrv.ops.conditions import where_json
from segsrv.ops.relate import RelateQuery
from segsrv.snapshot.reader import open_snapshot


def requests(snap, u):
    """(query, condition bits, n_c, candidate fids, their layout) of the 20 "every field" requests."""
    for cond in conditions(u):
        query = RelateQuery.from_json({"from": "customers", "where": where_json(cond), "limit": 20})
        bits = evaluate(snap, u, query.where)
        fids, _, layout = rel._candidates(u, query)
        yield query, bits, int(_kernels.popcount(bits)), fids, layout


def listed(u, bits, n_c) -> np.ndarray:
    """The bitset the rows method lists: the condition's, or its complement's past half the rows."""
    return np.invert(bits) if 2 * n_c > u.n_rows else bits


def table(snap, u, repeat: int) -> dict:
    out = []
    for query, bits, n_c, fids, layout in requests(snap, u):
        sparse_fids = fids[layout.sparse]
        probe = median_ms(lambda: _kernels.and_count_sparse(bits, u.sparse_ids, u.sparse_offsets,
                                                             layout.sparse_slots), repeat)
        rows = median_ms(lambda: rel.count_sparse_by_rows(u, bits, n_c, sparse_fids), repeat)
        method = rel.sparse_method(u, layout, n_c)
        est_probe, est_rows = rel.sparse_costs(u, layout, n_c)
        _, plan = rel.count_features(u, bits, n_c, fids)
        # the whole count (every candidate; the plan the request gets) probing and by the chosen method, in two
        # interleaved rounds (the better median of each: what runs first pays for the caches)
        count_probe, count_auto = (min(pair) for pair in zip(*[
            [median_ms(lambda: rel.count_features(u, bits, n_c, fids, layout=layout, sparse=s), repeat)
             for s in ("probe", "auto")] for _ in range(2)]))
        out.append({"n_c": n_c, "listed": min(n_c, u.n_rows - n_c), "sparse_ids": layout.sparse_ids, "plan": plan,
                    "method": method, "probe_ms": round(probe, 3), "rows_ms": round(rows, 3),
                    "chosen_ms": round(rows if method == "rows" else probe, 3),
                    "estimate_probe_ms": round(est_probe / 1e6, 3), "estimate_rows_ms": round(est_rows / 1e6, 3),
                    "count_probe_ms": round(count_probe, 3), "count_auto_ms": round(count_auto, 3)})
    scan = [r for r in out if r["plan"] == "scan"]  # the histogram plan counts every feature through the CSR
    sums = {f"sum_{k}": round(sum(r[k] for r in out), 2)
            for k in ("probe_ms", "chosen_ms", "count_probe_ms", "count_auto_ms")}
    sums.update({f"scan_sum_{k}": round(sum(r[k] for r in scan), 2)
                 for k in ("probe_ms", "chosen_ms", "count_probe_ms", "count_auto_ms")})
    return {"requests": out, **sums, "scan_requests": len(scan),
            "sum_best_ms": round(sum(min(r["probe_ms"], r["rows_ms"]) for r in out), 2)}


def fit(snap, u, repeat: int) -> dict:
    """The cost model's constants, least squares over the 20 conditions (ns)."""
    probe, lists, hists = [], [], []
    indptr, indices = u.sparse_csr_indptr, u.sparse_csr_indices
    compact = compact_sparse_csr(u)
    for _, bits, n_c, _, layout in requests(snap, u):
        if layout.sparse_ids:
            t = median_ms(lambda: _kernels.and_count_sparse(bits, u.sparse_ids, u.sparse_offsets, layout.sparse_slots),
                          repeat)
            probe.append(t * 1e6 / layout.sparse_ids)
        b = listed(u, bits, n_c)
        rows = _kernels.bitset_to_ids(b, u.n_rows)
        lists.append((len(rows), median_ms(lambda: _kernels.bitset_to_ids(b, u.n_rows), repeat) * 1e6))
        ip = np.asarray(indptr)
        entries = int((ip[rows.astype(np.int64) + 1] - ip[rows]).sum())
        t = median_ms(lambda: compact.histogram(rows, u.n_features), repeat) * 1e6
        hists.append((len(rows), entries, t))
    m, t = np.array(lists, dtype=float).T
    (list_row, list_const), *_ = np.linalg.lstsq(np.stack([m, np.ones_like(m)], 1), t, rcond=None)
    m, e, t = np.array(hists, dtype=float).T
    (row, entry), *_ = np.linalg.lstsq(np.stack([m, e], 1), t, rcond=None)
    per_row = len(indices) / u.n_rows
    return {"probe_ns_per_id_median": round(float(np.median(probe)), 3),
            "probe_ns_per_id_range": [round(float(min(probe)), 3), round(float(max(probe)), 3)],
            "bitset_to_ids_ns_per_word": round(float(list_const) / u.n_words, 3),
            "bitset_to_ids_ns_per_row": round(float(list_row), 3),
            "histogram_ns_per_row": round(float(row), 3), "histogram_ns_per_entry": round(float(entry), 3),
            "average_sparse_entries_per_row": round(per_row, 3),
            # the conditions' rows against the average row, and each histogram's ns per listed row
            "listed_entries_over_average": [round(float(x), 2) for x in sorted(e / m / per_row)],
            "histogram_ns_per_listed_row": [round(float(x), 1) for x in (t / m)[np.argsort(e / m)]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="kernel threads (default 1, as `segsrv serve` runs "
                    "them; 0: the kernels' default)")
    ap.add_argument("--fit", action="store_true")
    args = ap.parse_args()
    if args.threads:
        _kernels.set_num_threads(args.threads)
    snap = open_snapshot(args.root or demo_snapshot(1_000_000))
    u = snap.universes["customers"]
    if u.sparse_csr_indices is None:
        raise SystemExit("the snapshot has no sparse CSR (format version 1): rebuild it")
    head = f"{u.n_rows:,} customers, {u.n_features:,} features, {_kernels.get_num_threads()} threads"
    if args.fit:
        result = fit(snap, u, args.repeat)
        print(head)
        for k, v in result.items():
            print(f"  {k}: {v}")
        return
    result = table(snap, u, args.repeat)
    print(f"{head}; sparse part of the scan, median of {args.repeat} (ms)")
    print(f"{'n_c':>8} {'listed':>8} {'plan':>9} {'method':>6} {'probe':>7} {'rows':>7} {'chosen':>7} "
          f"{'est probe':>9} {'est rows':>9} {'count probe':>11} {'count auto':>10}")
    for r in result["requests"]:
        print(f"{r['n_c']:8d} {r['listed']:8d} {r['plan']:>9} {r['method']:>6} {r['probe_ms']:7.3f} {r['rows_ms']:7.3f} "
              f"{r['chosen_ms']:7.3f} {r['estimate_probe_ms']:9.3f} {r['estimate_rows_ms']:9.3f} "
              f"{r['count_probe_ms']:11.3f} {r['count_auto_ms']:10.3f}")
    print(f"sum over {len(result['requests'])} requests: sparse part probing {result['sum_probe_ms']} ms, by the "
          f"chosen method {result['sum_chosen_ms']} ms (the better of the two each time {result['sum_best_ms']} ms); "
          f"whole count_features probing {result['sum_count_probe_ms']} ms, auto {result['sum_count_auto_ms']} ms")
    print(f"the {result['scan_requests']} requests of the scan plan (the others' histogram plan has no sparse part): "
          f"sparse part probing {result['scan_sum_probe_ms']} ms, chosen {result['scan_sum_chosen_ms']} ms; "
          f"count_features probing {result['scan_sum_count_probe_ms']} ms, auto {result['scan_sum_count_auto_ms']} ms")
    print(f"results: {write_result('sparse_rows', {'threads': _kernels.get_num_threads(), **result})}")


if __name__ == "__main__":
    main()
