#!/usr/bin/env python
"""All-pairs co-occurrence and hypergeometric tail benchmark of segsrv._kernels.

    python bench/cooccurrence.py [--quick] [--features F] [--rows R] [--repeats N]
                                 [--json OUT] [--calibrate]

Data: F random features over R rows (default 1,000 x 1,000,000: bitsets of
15,625 words), densities log-uniform in 0.5%-30% (seed 12345), held three
ways: a dense uint64 bitset matrix (ours), a scipy.sparse CSR one-hot matrix
int32 [R, F] (scipy), and the same bits for numpy.

Timed in the same process on the same data (medians of --repeats runs;
scipy and the numpy matmul, which take seconds to a minute, get fewer):

  pairs      ours1 / oursN   cooccurrence(dense), 1 thread / all threads
             scipy           X.T @ X on the CSR one-hot matrix (int32)
             numpy_matmul    float32 BLAS B_c @ B_c.T over chunks of rows
                             (bits unpacked per chunk into a reused buffer; exact
                             below 2**24 per chunk)
             numpy_popcount  np.bitwise_count(F[i] & F[i:]).sum(1) for a
                             sample of rows i, extrapolated to all pairs (said so)
  cross      cross_cooccurrence of L left bitsets (conjunctions F_a & F_b) x F
             features vs scipy L.T @ X and numpy float32 matmul
  tails      hypergeom_log_tail over ~1M elements (the Fisher tails of every
             ordered pair of the run's own counts: N = R, K = |F_i|, n = |F_j|,
             k = |F_i & F_j|) vs scipy.stats.hypergeom.logsf (and .sf, Boost)
             on a sample, extrapolated (said so); then 1M synthetic elements at
             N = 100,000 (K, n log-uniform, k = mean +- 3 sd), where Boost's sf
             is two orders of magnitude slower than at N = 1M

Every method's counts are checked equal to ours on the pairs it computed
(the tails: relative error of the probability).  Prints each result, its
anchors and the ratios, and writes bench/results/cooccurrence.json.  The
machine is shared: the JSON records the load average and the busiest other
processes; compare ratios, not absolutes.

--calibrate also measures, on the current CPU path, the sparse-feature cost
rule of segsrv._kernels.cooccur: the ids per feature at which probing equals
materialising, as pair-words per probe (its PROBE_WORDS).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time

import numpy as np

from common import cpu_model, random_ids, write_result  # (common puts the repo on sys.path)

import segsrv._kernels as K  # noqa: E402
from segsrv._kernels import cooccur as C  # noqa: E402

SEED = 12345
DENSITY_RANGE = (0.005, 0.30)
TAILS_POPULATION = 100_000    # scipy's Boost sf is slow (~0.4 ms/element) at this size
MATMUL_CHUNK = 32768           # rows per float32 chunk (F x chunk x 4 bytes = 131 MB at F = 1000)


def make_data(n_features: int, n_rows: int, seed: int):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_words = (n_rows + 63) // 64
    lo, hi = DENSITY_RANGE
    dens = np.exp(rng.uniform(math.log(lo), math.log(hi), n_features))
    dense = np.empty((n_features, n_words), dtype=np.uint64)
    parts = []
    for f, d in enumerate(dens):
        ids = random_ids(rng, n_rows, float(d))
        K.ids_to_bitset(ids, n_words, out=dense[f])
        parts.append(ids)
    lens = np.array([len(p) for p in parts], dtype=np.int64)
    indptr = np.zeros(n_features + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(lens)
    indices = np.concatenate(parts).astype(np.int32)
    # a user's one-hot matrix: rows x features, CSR, int32 counts
    X = sp.csc_matrix((np.ones(len(indices), np.int32), indices, indptr),
                      shape=(n_rows, n_features)).tocsr()
    return dense, X, dens, lens


def unpack_chunk(bits: np.ndarray, w0: int, w1: int, n_rows: int, buf: np.ndarray) -> np.ndarray:
    """float32 [features, rows of words w0..w1] one-hot block of a bitset matrix (into buf)."""
    block = np.ascontiguousarray(bits[:, w0:w1]).view(np.uint8)
    b = np.unpackbits(block, axis=1, bitorder="little")[:, : min(n_rows, 64 * w1) - 64 * w0]
    out = buf[: len(bits), : b.shape[1]]
    np.copyto(out, b, casting="unsafe")
    return out


def numpy_matmul(left: np.ndarray, right: np.ndarray | None, n_rows: int) -> np.ndarray:
    """int64 counts by float32 BLAS over row chunks: sum_c L_c @ R_c.T (R = L when None)."""
    n_words = left.shape[1]
    step = MATMUL_CHUNK // 64
    n_right = (right if right is not None else left).shape[0]
    acc = np.zeros((left.shape[0], n_right), np.int64)
    lbuf = np.empty((left.shape[0], MATMUL_CHUNK), np.float32)
    rbuf = np.empty((n_right, MATMUL_CHUNK), np.float32) if right is not None else None
    for w0 in range(0, n_words, step):
        w1 = min(n_words, w0 + step)
        lc = unpack_chunk(left, w0, w1, n_rows, lbuf)
        rc = lc if right is None else unpack_chunk(right, w0, w1, n_rows, rbuf)
        acc += np.rint(lc @ rc.T).astype(np.int64)
    return acc


def numpy_popcount_rows(dense: np.ndarray, rows) -> dict:
    """{i: counts of pairs (i, j >= i)} by np.bitwise_count, for the sampled rows i."""
    return {int(i): np.bitwise_count(dense[i] & dense[i:]).sum(axis=1).astype(np.int64)
            for i in rows}


def timed(fn):
    t0 = time.perf_counter()
    val = fn()
    return val, time.perf_counter() - t0


def repeat(fn, n):
    times, val = [], None
    for _ in range(n):
        val, t = timed(fn)
        times.append(t)
    return val, times


def interleaved(fns: dict, n: int):
    """Run each fn n times, interleaved (machine noise hits all alike): {name: (last value, times)}."""
    out = {name: (None, []) for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            val, t = timed(fn)
            out[name] = (val, out[name][1] + [t])
    return out


def busy_processes(limit: int = 5) -> list[str]:
    """The busiest other processes right now that ps can see (this PID namespace only; the
    load average also counts work it cannot see), to say what else was running."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu", "--no-headers"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[1]) != me and float(parts[0]) >= 5.0:
            rows.append(f"{parts[2]} {parts[0]}%")
    return rows[:limit]


def med(ts) -> float:
    return float(np.median(ts))


def fmt_s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def bench_pairs(dense, X, n_rows, repeats, slow_repeats, popcount_rows, rng):
    F = dense.shape[0]
    n_pairs = F * (F + 1) // 2
    res = {}
    # ours (first call also the warm-up)
    ours, _ = timed(lambda: K.cooccurrence(dense, n_threads=1))
    runs = interleaved({"1": lambda: K.cooccurrence(dense, n_threads=1),
                        "N": lambda: K.cooccurrence(dense)}, repeats)
    (_, t1), (oursN, tN) = runs["1"], runs["N"]
    assert np.array_equal(oursN, ours), "all-threads result differs from one thread"
    res["ours1"] = {"median_s": med(t1), "times_s": t1}
    res["oursN"] = {"median_s": med(tN), "times_s": tN, "threads": K.get_num_threads()}
    print(f"  ours     1 thread  {fmt_s(med(t1)):>10}   all threads {fmt_s(med(tN)):>10}   "
          f"({n_pairs * dense.shape[1] / med(t1) / 1e9:.1f} G pair-words/s per thread)",
          flush=True)
    # scipy
    sc, ts = repeat(lambda: X.T @ X, slow_repeats)
    sc = sc.toarray().astype(np.int64)
    assert np.array_equal(sc, ours), "scipy X.T @ X disagrees"
    res["scipy"] = {"median_s": med(ts), "times_s": ts, "agrees": True}
    print(f"  scipy    X.T @ X   {fmt_s(med(ts)):>10}   (CSR int32, nnz {X.nnz:,}; counts equal)",
          flush=True)
    # numpy matmul (full)
    nm, tm = repeat(lambda: numpy_matmul(dense, None, n_rows), slow_repeats)
    assert np.array_equal(nm, ours), "numpy matmul disagrees"
    res["numpy_matmul"] = {"median_s": med(tm), "times_s": tm, "agrees": True,
                           "chunk_rows": MATMUL_CHUNK}
    print(f"  numpy    float32 matmul {fmt_s(med(tm)):>10}   (chunks of {MATMUL_CHUNK} rows; "
          f"counts equal)", flush=True)
    # numpy per-pair popcount (sampled rows, extrapolated by pairs)
    sample = np.sort(rng.choice(F, size=min(popcount_rows, F), replace=False))
    pc, tp = repeat(lambda: numpy_popcount_rows(dense, sample), 1)
    for i, row in pc.items():
        assert np.array_equal(row, ours[i, i:]), "numpy bitwise_count disagrees"
    sampled_pairs = int(sum(F - i for i in sample))
    est = tp[0] * n_pairs / sampled_pairs
    res["numpy_popcount"] = {"median_s": est, "measured_s": tp[0], "sampled_rows": len(sample),
                             "sampled_pairs": sampled_pairs, "extrapolated": True,
                             "agrees": True}
    print(f"  numpy    bitwise_count {fmt_s(est):>10}   EXTRAPOLATED from {len(sample)} rows "
          f"({sampled_pairs:,} of {n_pairs:,} pairs, {fmt_s(tp[0])}; counts equal)", flush=True)
    return ours, res


def bench_cross(dense, n_rows, n_left, repeats, slow_repeats, rng):
    import scipy.sparse as sp

    F = dense.shape[0]
    a = rng.integers(0, F, n_left)
    b = rng.integers(0, F, n_left)
    left = dense[a] & dense[b]                       # conjunctions F_a & F_b
    res = {}
    ours, _ = timed(lambda: K.cross_cooccurrence(left, dense, n_threads=1))
    runs = interleaved({"1": lambda: K.cross_cooccurrence(left, dense, n_threads=1),
                        "N": lambda: K.cross_cooccurrence(left, dense)}, repeats)
    (_, t1), (oursN, tN) = runs["1"], runs["N"]
    assert np.array_equal(oursN, ours)
    res["ours1"] = {"median_s": med(t1), "times_s": t1}
    res["oursN"] = {"median_s": med(tN), "times_s": tN}
    print(f"  ours     1 thread  {fmt_s(med(t1)):>10}   all threads {fmt_s(med(tN)):>10}",
          flush=True)

    def one_hot(bits):
        parts = [K.bitset_to_ids(row, n_rows) for row in bits]
        indptr = np.zeros(len(parts) + 1, np.int64)
        indptr[1:] = np.cumsum([len(p) for p in parts])
        ind = np.concatenate(parts).astype(np.int32)
        return sp.csc_matrix((np.ones(len(ind), np.int32), ind, indptr),
                             shape=(n_rows, len(parts))).tocsr()

    L, X = one_hot(left), one_hot(dense)
    sc, ts = repeat(lambda: L.T @ X, slow_repeats)
    assert np.array_equal(sc.toarray().astype(np.int64), ours), "scipy L.T @ X disagrees"
    res["scipy"] = {"median_s": med(ts), "times_s": ts, "agrees": True}
    print(f"  scipy    L.T @ X   {fmt_s(med(ts)):>10}   (CSR int32; counts equal)", flush=True)
    nm, tm = repeat(lambda: numpy_matmul(left, dense, n_rows), slow_repeats)
    assert np.array_equal(nm, ours), "numpy matmul disagrees"
    res["numpy_matmul"] = {"median_s": med(tm), "times_s": tm, "agrees": True}
    print(f"  numpy    float32 matmul {fmt_s(med(tm)):>10}   (counts equal)", flush=True)
    return res


def pair_tails(counts, n_elements, rng):
    """(k, K, n) of the Fisher tails of every ordered pair i != j of a co-occurrence matrix."""
    F = counts.shape[0]
    i, j = np.nonzero(~np.eye(F, dtype=bool))
    if len(i) > n_elements:
        keep = np.sort(rng.choice(len(i), n_elements, replace=False))
        i, j = i[keep], j[keep]
    diag = np.diag(counts)
    return counts[i, j].copy(), diag[i].copy(), diag[j].copy()


def synthetic_tails(population, n_elements, rng):
    """(k, K, n): K, n log-uniform in [10, N/2], k = mean + N(0, 3) standard deviations."""
    K_ = np.exp(rng.uniform(np.log(10), np.log(population / 2), n_elements)).astype(np.int64)
    n = np.exp(rng.uniform(np.log(10), np.log(population / 2), n_elements)).astype(np.int64)
    mean = n * K_ / population
    k = np.rint(mean + rng.normal(0, 3, n_elements) * np.sqrt(mean + 1)).astype(np.int64)
    return k, K_, n


def bench_tails(k, K_, n, n_rows, repeats, scipy_sample, rng):
    from scipy.stats import hypergeom

    m = len(k)
    res = {"elements": int(m), "population": int(n_rows)}
    ours, _ = timed(lambda: K.hypergeom_log_tail(k, K_, n, n_rows, n_threads=1))
    runs = interleaved({"1": lambda: K.hypergeom_log_tail(k, K_, n, n_rows, n_threads=1),
                        "N": lambda: K.hypergeom_log_tail(k, K_, n, n_rows)}, repeats)
    (_, t1), (oursN, tN) = runs["1"], runs["N"]
    assert np.array_equal(oursN, ours)
    res["ours1"] = {"median_s": med(t1), "times_s": t1, "us_per_element": med(t1) / m * 1e6}
    res["oursN"] = {"median_s": med(tN), "times_s": tN, "us_per_element": med(tN) / m * 1e6}
    print(f"  ours     1 thread  {fmt_s(med(t1)):>10}   all threads {fmt_s(med(tN)):>10}   "
          f"({med(t1) / m * 1e6:.2f} us/element, {m:,} elements)", flush=True)
    s = np.sort(rng.choice(m, size=min(scipy_sample, m), replace=False))
    with np.errstate(all="ignore"):
        ref_log, t_log = timed(lambda: hypergeom.logsf(k[s] - 1, n_rows, K_[s], n[s]))
        ref_p, t_sf = timed(lambda: hypergeom.sf(k[s] - 1, n_rows, K_[s], n[s]))
    with np.errstate(invalid="ignore"):              # -inf - -inf where both are log 0
        err = np.abs(np.expm1(ours[s] - ref_log))
    err = np.where(np.isneginf(ours[s]) & np.isneginf(ref_log), 0.0, err)
    p_ok = ref_p > 1e-290
    err_sf = np.abs(np.exp(ours[s][p_ok]) / ref_p[p_ok] - 1) if p_ok.any() else np.zeros(0)
    for name, t, e in (("scipy_logsf", t_log, err), ("scipy_sf", t_sf, err_sf)):
        res[name] = {"median_s": t * m / len(s), "measured_s": t, "sampled": int(len(s)),
                     "extrapolated": True, "us_per_element": t / len(s) * 1e6,
                     "max_rel_err_vs_ours": float(e.max()) if len(e) else 0.0}
        print(f"  {name:<12} {fmt_s(t * m / len(s)):>10}   EXTRAPOLATED from {len(s)} elements "
              f"({t / len(s) * 1e6:.0f} us/element; max relative difference to ours "
              f"{float(e.max()) if len(e) else 0.0:.1e}; scale of scipy's own lgamma error, "
              f"2e-16 N ln N: {2e-16 * n_rows * math.log(n_rows):.0e})", flush=True)
    res["min_log_tail"] = float(ours[np.isfinite(ours)].min())
    return res


def calibrate(n_words: int, rng) -> dict:
    """Ids per sparse feature where probing costs as much as materialising (this CPU path)."""
    kd, ks = 200, 64
    dense = rng.integers(0, 2**63, size=(kd, n_words), dtype=np.uint64)
    rows = {}
    old = C._set_tuning()
    try:
        for m in (n_words // 64, n_words // 16, n_words // 8, n_words // 4, n_words // 2):
            feats = [np.sort(rng.choice(n_words * 64, m, replace=False)).astype(np.uint32)
                     for _ in range(ks)]
            ids = np.concatenate(feats)
            offsets = np.arange(ks + 1, dtype=np.int64) * m
            t = {}
            for mode in (True, False):
                C._set_tuning(materialise=mode)
                _, ts = repeat(lambda: K.cross_cooccurrence(dense, dense[:0], None, ids, offsets,
                                                            n_threads=1), 3)
                t[mode] = min(ts)
            rows[m] = {"materialised_s": t[True], "probed_s": t[False],
                       "probe_words": n_words / m * t[False] / t[True]}
            print(f"  m={m:>6} ids: materialised {fmt_s(t[True])}, probed {fmt_s(t[False])} "
                  f"-> a probe ~ {rows[m]['probe_words']:.1f} pair-words", flush=True)
    finally:
        C._set_tuning(**old)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (200 features x 200k rows)")
    ap.add_argument("--features", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--left", type=int, default=None, help="left bitsets of the cross run")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of the fast methods")
    ap.add_argument("--slow-repeats", type=int, default=None, help="timed runs of scipy / numpy")
    ap.add_argument("--tail-elements", type=int, default=1_000_000)
    ap.add_argument("--json", default=None, help="output path (default bench/results/cooccurrence.json)")
    ap.add_argument("--calibrate", action="store_true", help="also measure the sparse cost rule")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)

    F = args.features or (200 if args.quick else 1000)
    R = args.rows or (200_000 if args.quick else 1_000_000)
    n_left = args.left or (100 if args.quick else 500)
    repeats = args.repeats or (3 if args.quick else 7)
    slow = args.slow_repeats or (1 if args.quick else 3)
    rng = np.random.default_rng(args.seed + 1)
    load_start = os.getloadavg()
    busy_start = busy_processes()
    print(f"segsrv co-occurrence bench: {F} features x {R:,} rows ({(R + 63) // 64:,} words), "
          f"cpu_path={K.cpu_path()} openmp={K.has_openmp()} threads={K.get_num_threads()} "
          f"repeats={repeats}/{slow} numpy={np.__version__}", flush=True)
    if load_start[0] > 0.5:
        print(f"WARNING: load average {load_start[0]:.2f} at start (busy: "
              f"{', '.join(busy_start) or '-'}): absolute numbers will be noisy", flush=True)
    t_start = time.perf_counter()
    (dense, X, dens, lens), t_gen = timed(lambda: make_data(F, R, args.seed))
    print(f"data: {dense.nbytes / 1e6:.0f} MB of bitsets, {X.nnz:,} ones (mean density "
          f"{lens.mean() / R:.1%}), generated in {t_gen:.1f} s", flush=True)

    print(f"\nall pairs ({F * (F + 1) // 2:,} pairs):", flush=True)
    counts, pairs = bench_pairs(dense, X, R, repeats, slow, 25 if not args.quick else 10, rng)
    del X
    print(f"\ncross: {n_left} conjunctions x {F} features:", flush=True)
    cross = bench_cross(dense, R, n_left, repeats, slow, rng)
    print(f"\nhypergeometric tails of the pairs' counts (population {R:,}):", flush=True)
    tails = bench_tails(*pair_tails(counts, args.tail_elements, rng), R, max(3, repeats // 2),
                        100 if args.quick else 400, rng)
    print(f"\nhypergeometric tails, synthetic (population {TAILS_POPULATION:,}, K and n "
          f"log-uniform, k = mean +- 3 sd):", flush=True)
    tails_small = bench_tails(*synthetic_tails(TAILS_POPULATION, args.tail_elements, rng),
                              TAILS_POPULATION, max(3, repeats // 2), 100 if args.quick else 400,
                              rng)
    cal = None
    if args.calibrate:
        print(f"\ncalibration of the sparse cost rule ({K.cpu_path()}):", flush=True)
        cal = calibrate((R + 63) // 64, rng)

    def ratios(res, anchors):
        out = {}
        for a in anchors:
            out[f"ours1_vs_{a}"] = res[a]["median_s"] / res["ours1"]["median_s"]
            out[f"oursN_vs_{a}"] = res[a]["median_s"] / res["oursN"]["median_s"]
        return out

    pairs["ratios"] = ratios(pairs, ("scipy", "numpy_matmul", "numpy_popcount"))
    best_np = min(("numpy_matmul", "numpy_popcount"), key=lambda a: pairs[a]["median_s"])
    pairs["ratios"]["best_numpy"] = best_np
    cross["ratios"] = ratios(cross, ("scipy", "numpy_matmul"))
    tails["ratios"] = ratios(tails, ("scipy_logsf", "scipy_sf"))
    tails_small["ratios"] = ratios(tails_small, ("scipy_logsf", "scipy_sf"))

    print("\nratios (anchor time / our time; >1: ours is faster):")
    for name, res in (("pairs", pairs), ("cross", cross), ("tails", tails),
                      ("tails100k", tails_small)):
        for key, v in res["ratios"].items():
            if key.startswith("ours"):
                print(f"  {name:<6} {key:<28} {v:10.1f}x")
    target = pairs["ratios"]["oursN_vs_scipy"]
    print(f"\ntarget >= 10x scipy.sparse X^T X: {target:.0f}x "
          f"({'met' if target >= 10 else 'NOT met'})")
    elapsed = time.perf_counter() - t_start
    out = {
        "meta": {
            "features": F, "rows": R, "n_words": (R + 63) // 64, "left": n_left,
            "density_range": DENSITY_RANGE, "mean_density": float(lens.mean() / R),
            "ones": int(lens.sum()), "seed": args.seed, "cpu_path": K.cpu_path(),
            "available_paths": K.available_cpu_paths(), "openmp": K.has_openmp(),
            "threads": K.get_num_threads(), "repeats": repeats, "slow_repeats": slow,
            "quick": args.quick, "numpy": np.__version__,
            "scipy": __import__("scipy").__version__, "python": platform.python_version(),
            "processor": cpu_model(), "tile": C._set_tuning()["tile"],
            "block": C._set_tuning()["block"], "elapsed_s": round(elapsed, 1),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "busy_processes_start": busy_start, "busy_processes_end": busy_processes(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "pairs": pairs, "cross": cross, "tails": tails, "tails_population_100k": tails_small,
    }
    if cal is not None:
        out["calibration"] = {str(m): v for m, v in cal.items()}
    if args.json:
        from pathlib import Path
        import json

        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        path = args.json
    else:
        path = write_result("cooccurrence", out)
    print(f"\nwrote {path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
