"""Discover benchmark on the 1M-customer demo snapshot, each part against its anchor in the same run.

1. Co-occurrence: every pair of the 1,000 most frequent customer features over 1,000,000 customers.
   Ours (segsrv._kernels.cooccurrence, one thread and all threads) against scipy.sparse X^T X on the
   same one-hot matrix (CSC int32, as a user would) and numpy (float32 X^T X through BLAS); the counts
   must agree.
2. Discover to length 3 over every customer field of the 1M demo (the default request: ~250 candidate
   features at 1% support): ours, against pyfim's C fpgrowth (itemsets of 2-3 at the same support) and
   mlxtend fpgrowth + association_rules (min_support 1%, max_len 3, lift >= 1.25) on the same one-hot
   matrix of the same candidate features. mlxtend (pure Python) ran 35 minutes on the 1M matrix without
   finishing (and 20 on its first 100,000 rows): at 1M it runs in a forked process stopped after
   --mlxtend-budget seconds, so a lower bound of the ratio is reported; a complete measurement of both
   is made on a whole --shop-customer shop (20,000) at --shop-support (5%), where mlxtend finishes. The anchors only enumerate
   frequent itemsets and their rules; ours also tests every split, corrects, ranks, removes redundancy
   and describes; the supports of our segments are checked against mlxtend's itemsets.
3. Supervised discover (target churned = true, depth 3, 13 fields) against pysubgroup's Apriori with
   WRAcc on a shop it can handle (--sample customers, default 100,000; the same fields as selectors);
   ours with adjust_for_activity false (pysubgroup's ranking), also on the 1M shop.

Medians of --repeats runs; ratios are anchor / ours. What else was running is printed (load average)
and stored in bench/results/discover.json.

    python bench/discover.py [--customers N] [--repeats R] [--sample N] [--mlxtend-budget S] [--shop N]
                             [--shop-support F] [--skip-slow] [--skip-cooc]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from common import demo_snapshot, write_result

from segsrv import _kernels
from segsrv.engine.conditions import feature_bits
from segsrv.engine.cooccurrence import FeatureSet
from segsrv.engine.discover import discover
from segsrv.engine.fields import default_fields
from segsrv.ops.discover import DiscoverQuery
from segsrv.snapshot.reader import open_snapshot


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def bool_rows(universe, fids) -> np.ndarray:
    """bool[n_rows, k]: the one-hot matrix of the features (what the anchors take)."""
    out = np.empty((universe.n_rows, len(fids)), dtype=bool)
    for j, f in enumerate(fids):
        bits = np.asarray(feature_bits(universe, int(f)))
        out[:, j] = np.unpackbits(bits.view(np.uint8), bitorder="little")[: universe.n_rows].astype(bool)
    return out


def part_cooccurrence(u, repeats: int) -> dict:
    counts = np.asarray(u.feature_count)
    fids = np.sort(np.argsort(-counts, kind="stable")[:1000])
    fs = FeatureSet.of(u, fids)
    print(f"[cooc] {len(fids)} features over {u.n_rows:,} rows ({fs.n_dense} dense, {len(fs) - fs.n_dense} sparse), "
          f"densities {counts[fids].min() / u.n_rows:.3%}..{counts[fids].max() / u.n_rows:.1%}", flush=True)
    threads = _kernels.get_num_threads()
    t1, t1s, ours = timed(lambda: _kernels.cooccurrence(*fs_args(fs), n_threads=1), repeats)
    tn, tns, _ = timed(lambda: _kernels.cooccurrence(*fs_args(fs), n_threads=threads), repeats)
    print(f"[cooc] ours: {t1:.3f} s one thread, {tn:.3f} s {threads} threads", flush=True)
    import scipy.sparse as sp

    x = bool_rows(u, fs.fids)
    csc = sp.csc_matrix(x.astype(np.int32))
    ts, tss, prod = timed(lambda: (csc.T @ csc).toarray(), max(1, repeats // 3))
    assert np.array_equal(prod, ours), "scipy and ours disagree"
    print(f"[cooc] scipy.sparse X^T X: {ts:.3f} s -> ours is {ts / tn:.1f}x faster ({ts / t1:.1f}x one thread)",
          flush=True)
    x8 = x.astype(np.float32)
    tnp, tnps, prod = timed(lambda: x8.T @ x8, max(1, repeats // 3))
    assert np.array_equal(prod.astype(np.int64), ours), "numpy and ours disagree"
    print(f"[cooc] numpy float32 X^T X (BLAS): {tnp:.3f} s -> ours is {tnp / tn:.1f}x faster", flush=True)
    return {"features": len(fids), "rows": u.n_rows, "ours_1thread_s": t1, "ours_s": tn, "threads": threads,
            "scipy_sparse_s": ts, "numpy_blas_s": tnp, "ratio_scipy": ts / tn, "ratio_numpy": tnp / tn,
            "times": {"ours_1thread": t1s, "ours": tns, "scipy": tss, "numpy": tnps}, "counts_agree": True}


def fs_args(fs: FeatureSet) -> tuple:
    return (fs.dense, fs.dense_rows, fs.ids, fs.offsets, fs.sparse_features)


def part_discover(snap, u, repeats: int, skip_slow: bool, budget: float) -> dict:
    q = {"from": u.name, "max_length": 3}
    med, times, res = timed(lambda: discover(snap, DiscoverQuery.from_json(q)), repeats)
    print(f"[discover] ours, every field of {u.n_rows:,} customers to length 3: {med:.2f} s median "
          f"({res.candidates} candidates, {res.tested:,} conjunctions tested, {len(res.segments)} segments)",
          flush=True)
    out = {"ours_s": med, "times": times, "candidates": res.candidates, "tested": res.tested,
           "fields": len(default_fields(u))}
    # the anchors' input: the same candidate features (every default field, >= 1% support, not on every row)
    fids = np.concatenate([u.fields[f].feature_ids for f in default_fields(u)])
    cnt = np.asarray(u.feature_count[fids])
    cand = fids[(cnt >= res.min_support) & (cnt < u.n_rows)]
    assert len(cand) == res.candidates
    x = bool_rows(u, cand)
    try:
        import fim  # pyfim (C)

        t = time.perf_counter()
        rows = [np.flatnonzero(r).tolist() for r in x]
        prep = time.perf_counter() - t
        t = time.perf_counter()
        sets = fim.fpgrowth(rows, target="s", supp=-res.min_support, zmin=2, zmax=3, report="a")
        tf = time.perf_counter() - t
        out.update(pyfim_s=tf, pyfim_itemsets=len(sets), pyfim_prepare_s=prep, ratio_pyfim=tf / med)
        print(f"[discover] pyfim fpgrowth (C), itemsets of 2-3 at the same support: {tf:.2f} s "
              f"({len(sets):,} itemsets; transactions built in {prep:.1f} s) -> ours is {tf / med:.1f}x faster",
              flush=True)
        del rows
    except ImportError:
        out["pyfim"] = "not installed"
        print("[discover] pyfim not installed: skipped", flush=True)
    if skip_slow:
        return out
    out.update(part_mlxtend_1m(u, cand, x, res, med, budget))
    return out


def mlxtend_run(x: np.ndarray, names: list[str], min_support: float, budget: float) -> dict:
    """mlxtend fpgrowth (max_len 3) + association_rules (lift >= 1.25) in a forked process (the matrix is
    inherited, not copied), stopped after `budget` seconds: {"fpgrowth_s", "rules_s", "itemsets", "rules",
    "supports"} or {"unfinished_after_s"}."""
    import multiprocessing as mp

    def work(queue):
        import pandas as pd
        from mlxtend.frequent_patterns import association_rules, fpgrowth

        df = pd.DataFrame(x, columns=names)
        t = time.perf_counter()
        itemsets = fpgrowth(df, min_support=min_support, max_len=3, use_colnames=True)
        t_fp = time.perf_counter() - t
        t = time.perf_counter()
        rules = association_rules(itemsets, metric="lift", min_threshold=1.25)
        supports = {tuple(sorted(s)): float(v) for s, v in zip(itemsets["itemsets"], itemsets["support"])}
        queue.put({"fpgrowth_s": t_fp, "rules_s": time.perf_counter() - t, "itemsets": len(itemsets),
                   "rules": len(rules), "supports": supports})

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=work, args=(queue,))
    t = time.perf_counter()
    proc.start()
    while proc.is_alive() and time.perf_counter() - t < budget:
        try:
            return queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001 - queue.Empty: not finished yet
            continue
    if not queue.empty():
        return queue.get()
    proc.terminate()
    proc.join()
    return {"unfinished_after_s": budget}


def part_mlxtend_1m(u, cand, x, res, ours_s: float, budget: float) -> dict:
    names = [f"{a}={b}" for a, b in (u.feature_name(int(f)) for f in cand)]
    got = mlxtend_run(x, names, res.min_support / u.n_rows, budget)
    if "unfinished_after_s" in got:
        print(f"[discover] mlxtend fpgrowth + association_rules on the same {u.n_rows:,} x {len(cand)} matrix: not "
              f"finished after {budget:.0f} s (stopped) -> ours is more than {budget / ours_s:.0f}x faster", flush=True)
        return {"mlxtend_1m": got, "ratio_mlxtend_at_least": budget / ours_s}
    total = got["fpgrowth_s"] + got["rules_s"]
    print(f"[discover] mlxtend at {u.n_rows:,} rows: {total:.1f} s -> ours is {total / ours_s:.0f}x faster", flush=True)
    got.pop("supports")
    return {"mlxtend_1m": got, "ratio_mlxtend": total / ours_s}


def part_same_shop(snap, repeats: int, support: float, budget: float) -> dict:
    """Ours and mlxtend on one whole smaller shop, both measured: every field to length 3 at `support`."""
    u = snap.universe("customers")
    ms = int(np.ceil(support * u.n_rows))
    q = {"from": "customers", "max_length": 3, "min_support": ms}
    med, times, res = timed(lambda: discover(snap, DiscoverQuery.from_json(q)), repeats)
    fids = np.concatenate([u.fields[f].feature_ids for f in default_fields(u)])
    cnt = np.asarray(u.feature_count[fids])
    cand = fids[(cnt >= ms) & (cnt < u.n_rows)]
    x = bool_rows(u, cand)
    names = [f"{a}={b}" for a, b in (u.feature_name(int(f)) for f in cand)]
    got = mlxtend_run(x, names, ms / u.n_rows, budget)
    if "unfinished_after_s" in got:
        raise SystemExit(f"mlxtend did not finish on the {u.n_rows:,}-customer shop within {budget} s")
    for seg in res.segments:  # the same supports
        assert round(got["supports"][tuple(sorted(f"{f}={v}" for f, v in seg.terms))] * u.n_rows) == seg.support
    total = got["fpgrowth_s"] + got["rules_s"]
    print(f"[discover] the {u.n_rows:,}-customer shop, every field to length 3 at {support:.0%} support: ours "
          f"{med:.3f} s ({res.candidates} candidates, {len(res.segments)} segments); mlxtend fpgrowth "
          f"{got['fpgrowth_s']:.1f} s + association_rules {got['rules_s']:.1f} s = {total:.1f} s "
          f"({got['itemsets']:,} itemsets, {got['rules']:,} rules) -> ours is {total / med:.0f}x faster; "
          f"our segments' supports equal mlxtend's itemsets'", flush=True)
    got.pop("supports")
    return {"customers": u.n_rows, "min_support": ms, "ours_s": med, "times": times, "candidates": res.candidates,
            "mlxtend": got, "ratio_mlxtend": total / med, "supports_agree": True}


FIELDS = ["region", "lifetime_value_band", "signup_channel", "pet_type", "newsletter", "tenure_months",
          "orders.channel", "orders.subscription", "orders.lines.product.brand_tier",
          "orders.lines.product.category", "orders.lines.returned", "events.event_type", "events.filter"]


def one_hot(u, fields, target: str) -> "object":
    """The pandas frame pysubgroup takes: a column per single-valued field, a boolean column per value of a
    behaviour (exists) field, and the target."""
    import pandas as pd

    n = u.n_rows
    cols = {}

    def mask(fid):
        bits = np.asarray(feature_bits(u, int(fid)))
        return np.unpackbits(bits.view(np.uint8), bitorder="little")[:n].astype(bool)

    for f in fields:
        info = u.fields[f]
        if info.kind == "multi" or info.semantics != "own":
            for v in info.values:
                cols[f"{f}={v}"] = mask(u.feature_id(f, v))
            continue
        col = np.full(n, "(none)", dtype=object)
        for v in info.values:
            col[mask(u.feature_id(f, v))] = v
        cols[f] = col
    field, value = target.split("=")
    cols[field] = mask(u.feature_id(field, value))
    return pd.DataFrame(cols)


def part_supervised(snap, u, repeats: int, sample: int) -> dict:
    q = {"from": "customers", "target": "churned=true", "fields": FIELDS, "max_length": 3,
         "adjust_for_activity": False, "max_overlap": 1, "max_excess_overlap": 1, "limit": 30}
    full, full_times, res = timed(lambda: discover(snap, DiscoverQuery.from_json(q)), repeats)
    print(f"[subgroups] ours, {u.n_rows:,} customers, {res.candidates} candidates, depth 3: {full:.2f} s", flush=True)
    small = open_snapshot(demo_snapshot(sample))
    su = small.universe("customers")
    ours_s, ours_times, mine = timed(lambda: discover(small, DiscoverQuery.from_json(q)), repeats)
    import pysubgroup as ps

    df = one_hot(su, FIELDS, "churned=true")
    target = ps.BinaryTarget("churned", True)
    space = [s for s in ps.create_selectors(df, ignore=["churned"])
             if "(none)" not in str(s) and "False" not in str(s)]
    task = ps.SubgroupDiscoveryTask(df, target, space, result_set_size=30, depth=3, qf=ps.WRAccQF())
    t = time.perf_counter()
    theirs = ps.Apriori().execute(task).to_dataframe()
    tp = time.perf_counter() - t
    print(f"[subgroups] pysubgroup Apriori (WRAcc, depth 3, {len(space)} selectors) on the {su.n_rows:,}-customer "
          f"shop: {tp:.2f} s; ours on it: {ours_s:.3f} s -> ours is {tp / ours_s:.0f}x faster; ours on "
          f"{u.n_rows:,} customers: {full:.2f} s", flush=True)
    print(f"[subgroups] best by WRAcc: pysubgroup {theirs['subgroup'].iloc[0]} ({theirs['quality'].iloc[0]:.4f}); "
          f"ours {mine.segments[0].name} ({mine.segments[0].wracc:.4f})", flush=True)
    return {"sample_customers": su.n_rows, "selectors": len(space), "pysubgroup_s": tp, "ours_sample_s": ours_s,
            "ours_full_s": full, "ratio_pysubgroup": tp / ours_s,
            "pysubgroup_best": [str(theirs["subgroup"].iloc[0]), float(theirs["quality"].iloc[0])],
            "ours_best": [mine.segments[0].name, mine.segments[0].wracc],
            "times": {"ours_sample": ours_times, "ours_full": full_times}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample", type=int, default=100_000, help="customers of the shop pysubgroup is compared on")
    ap.add_argument("--skip-slow", action="store_true", help="no mlxtend")
    ap.add_argument("--mlxtend-budget", type=float, default=600,
                    help="seconds mlxtend may take on the 1M matrix before it is stopped (a lower bound is reported)")
    ap.add_argument("--shop", type=int, default=20_000,
                    help="customers of the smaller shop ours and mlxtend are both measured on")
    ap.add_argument("--shop-support", type=float, default=0.05, help="min support (share) on that shop")
    ap.add_argument("--skip-cooc", action="store_true", help="no co-occurrence part")
    args = ap.parse_args()
    snap = open_snapshot(demo_snapshot(args.customers))
    u = snap.universe("customers")
    load0 = os.getloadavg()
    result = {"meta": {"customers": args.customers, "repeats": args.repeats, "cpu_path": _kernels.cpu_path(),
                       "threads": _kernels.get_num_threads(), "processor": platform.processor(),
                       "loadavg_start": load0}}
    if not args.skip_cooc:
        result["cooccurrence"] = part_cooccurrence(u, args.repeats)
    result["discover"] = part_discover(snap, u, args.repeats, args.skip_slow, args.mlxtend_budget)
    if not args.skip_slow:
        result["discover_same_shop"] = part_same_shop(open_snapshot(demo_snapshot(args.shop)), args.repeats,
                                                      args.shop_support, 3600)
    result["supervised"] = part_supervised(snap, u, args.repeats, args.sample)
    result["meta"]["loadavg_end"] = os.getloadavg()
    print(f"[bench] load average at start {load0}, at end {result['meta']['loadavg_end']}")
    print(f"[bench] wrote {write_result('discover', result)}")


if __name__ == "__main__":
    main()
