"""Assign's propensity methods on held-out rows, and what fitting them ahead costs `segments apply` (issue 15).

    python bench/assign_propensity.py [--customers 5000] [--segments 12] [--holdout 0.2] [--seed 0]

Data: the cached demo snapshot of --customers customers (bench/common.py demo_snapshot) and the first
--segments segments of bench/assign.py's deterministic catalog (make_catalog: single terms, value sets,
conjunctions, $or / $not, raw ranges, segment references), applied to a hard-linked copy of the root.

(a) Quality. Rows are held out by the repo's row hash (segsrv.engine.evaluate.holdout_rows, fraction
    --holdout, seed --seed). For each segment with members among both the training and the held-out
    rows, both propensity methods are fitted on the training rows only, with the evidence Assign uses
    (every feature but those of the fields the condition mentions): "logistic" (the default; l2
    cross-validated on the training rows and the pairwise interactions tried,
    segsrv.engine.catalog_models.fit_membership), the same without the pairs ("main effects", the
    default until December 2026, for comparison) and "factorized"
    (prior_strength 1, max_p_value 0.001; segsrv.engine.assign.factorized_membership from the training
    rows' counts). P(member) of every held-out row is scored against its membership: ROC AUC and mean
    log-loss per segment, and the medians over the segments.
(b) Cost. `segments apply` of the catalog on a fresh copy, without fitting (fit_propensities=False) and
    with it (the default: one cross-validated fit per segment, this process's cache of earlier fits
    cleared), wall seconds each.

Results: bench/results/assign_propensity.json.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assign import UNIVERSE, make_catalog  # noqa: E402
from common import DATA_ROOT, cpu_model, demo_snapshot, write_result  # noqa: E402

from segsrv.engine import catalog_models as CM  # noqa: E402
from segsrv.engine.assign import CompiledCatalog, factorized_membership  # noqa: E402
from segsrv.engine.catalog import apply_segments  # noqa: E402
from segsrv.engine.evaluate import auc_score, holdout_rows  # noqa: E402
from segsrv.snapshot.reader import open_snapshot  # noqa: E402


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fresh_root(src: Path, name: str) -> Path:
    root = DATA_ROOT / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(src, root, copy_function=os.link)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--segments", type=int, default=12)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src = demo_snapshot(args.customers)
    base = open_snapshot(src / "demo")
    catalog = dict(list(make_catalog(base, 5).items())[: args.segments])

    # (b) the cost of `segments apply` without and with the fits
    root = fresh_root(src, "assign-propensity-nofit")
    t0 = time.perf_counter()
    apply_segments(root / "demo", catalog, fit_propensities=False)
    apply_plain = time.perf_counter() - t0
    root = fresh_root(src, "assign-propensity-fit")
    CM._FITTED.clear()
    lines = []
    t0 = time.perf_counter()
    apply_segments(root / "demo", catalog, progress=lambda m: (lines.append(m), print(f"[apply] {m}", file=sys.stderr)))
    apply_fit = time.perf_counter() - t0
    print(f"segments apply of {len(catalog)} segments on {args.customers:,} customers: {apply_plain:.2f} s without "
          f"the propensity models, {apply_fit:.1f} s with them")

    # (a) quality on held-out rows
    snap = open_snapshot(root / "demo")
    u = snap.universe(UNIVERSE)
    cat = CompiledCatalog(snap, u)
    test = holdout_rows(u, args.holdout, args.seed)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    X = np.zeros((u.n_rows, u.n_features), dtype=bool)
    indptr = np.asarray(u.csr_indptr)
    X[np.repeat(np.arange(u.n_rows), np.diff(indptr)), np.asarray(u.csr_indices)] = True
    Xtr, Xte = X[train_rows], X[test_rows].astype(np.float64)
    nf_tr = Xtr.sum(axis=0).astype(np.int64)
    rows = []
    for i, seg in enumerate(cat.segments):
        from segsrv.engine.conditions import evaluate
        from segsrv.ops.conditions import SegmentRef

        bits = evaluate(snap, u, SegmentRef(seg.name))
        member = np.unpackbits(bits.view(np.uint8), bitorder="little")[: u.n_rows].astype(bool)
        ytr, yte = member[train_rows], member[test_rows]
        if not (0 < ytr.sum() < len(ytr)) or not (0 < yte.sum() < len(yte)):
            continue
        ev = cat.evidence_mask(i)
        t0 = time.perf_counter()
        b, d, l2, _, pairs = CM.fit_membership(u, member, ev, None, rows=train_rows)
        t_log = time.perf_counter() - t0
        pair_term = sum((Xte[:, a] * Xte[:, c] * w for (a, c), w in zip(pairs.pairs, pairs.weights[0])),
                        np.zeros(len(test_rows)))
        p_log = 1.0 / (1.0 + np.exp(-(b + Xte @ d + pair_term)))
        t0 = time.perf_counter()
        bm, dm, l2m, _, _ = CM.fit_membership(u, member, ev, None, rows=train_rows, interactions=False)
        t_main = time.perf_counter() - t0
        p_main = 1.0 / (1.0 + np.exp(-(bm + Xte @ dm)))
        log_base, W = factorized_membership(Xtr[ytr].sum(axis=0).astype(np.int64), nf_tr, int(ytr.sum()),
                                            len(train_rows), ev, 1.0, 0.001)
        with np.errstate(over="ignore"):
            p_fac = 1.0 / (1.0 + np.exp(-(log_base[0] - log_base[1] + Xte @ (W[0] - W[1]))))
        row = {"segment": seg.name, "members": int(seg.size), "evidence_features": int(ev.sum()), "l2": l2,
               "pairs": len(pairs), "logistic_fit_s": round(t_log, 3), "main_effects_fit_s": round(t_main, 3),
               "auc": {"logistic": auc_score(yte, p_log), "main_effects": auc_score(yte, p_main),
                       "factorized": auc_score(yte, p_fac)},
               "log_loss": {"logistic": log_loss(yte, p_log), "main_effects": log_loss(yte, p_main),
                            "factorized": log_loss(yte, p_fac)}}
        rows.append(row)
        print(f"{seg.name:28s} {seg.size:6d} members  AUC logistic {row['auc']['logistic']:.4f} main effects "
              f"{row['auc']['main_effects']:.4f} factorized {row['auc']['factorized']:.4f}  log-loss logistic "
              f"{row['log_loss']['logistic']:.4f} main effects {row['log_loss']['main_effects']:.4f} factorized "
              f"{row['log_loss']['factorized']:.4f}  (l2 {l2:.3g}, {len(pairs)} pairs, fit {t_log:.1f} s, "
              f"main effects alone {t_main:.1f} s)")
    methods = ("logistic", "main_effects", "factorized")
    med = {k: {m: statistics.median(r[k][m] for r in rows) for m in methods} for k in ("auc", "log_loss")}
    wins = {k: sum((r[k]["logistic"] > r[k]["factorized"]) == (k == "auc") for r in rows) for k in ("auc", "log_loss")}
    with_pairs = [r for r in rows if r["pairs"]]
    print(f"median over {len(rows)} segments: AUC logistic {med['auc']['logistic']:.4f} (main effects alone "
          f"{med['auc']['main_effects']:.4f}) factorized {med['auc']['factorized']:.4f}; log-loss logistic "
          f"{med['log_loss']['logistic']:.4f} (main effects alone {med['log_loss']['main_effects']:.4f}) factorized "
          f"{med['log_loss']['factorized']:.4f}; logistic better than factorized on {wins['auc']} (AUC) and "
          f"{wins['log_loss']} (log-loss) of {len(rows)}; {len(with_pairs)} segments kept pairs")
    for r in with_pairs:
        print(f"  pairs kept: {r['segment']} ({r['pairs']} pairs): AUC {r['auc']['main_effects']:.4f} -> "
              f"{r['auc']['logistic']:.4f}, log-loss {r['log_loss']['main_effects']:.4f} -> {r['log_loss']['logistic']:.4f}")
    fit_s = [r["logistic_fit_s"] for r in rows]
    main_s = [r["main_effects_fit_s"] for r in rows]
    print(f"fit per segment: median {statistics.median(fit_s):.1f} s with the pairs tried, "
          f"{statistics.median(main_s):.1f} s main effects alone")
    result = {
        "command": "python bench/assign_propensity.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(), "customers": args.customers, "segments": len(catalog), "scored_segments": len(rows),
        "holdout": {"fraction": args.holdout, "seed": args.seed, "test_rows": int(len(test_rows))},
        "median": med, "logistic_better": wins,
        "segments_apply_s": {"without_models": round(apply_plain, 3), "with_models": round(apply_fit, 2)},
        "apply_progress": lines, "per_segment": rows,
    }
    if any(math.isnan(v) for k in med.values() for v in k.values()):
        raise SystemExit("NaN in the medians")
    print(f"wrote {write_result('assign_propensity', result)}")


if __name__ == "__main__":
    main()
