"""The logistic method's fit against scikit-learn's LogisticRegression on the same design matrix.

The demo shop (bench/common.py, --customers, default 1M), target `churned`, segment = every
customer, evidence = the default evidence features (every field except the target and fields
copying it): the rows' one-hot design matrix as the engine builds it (`design_matrix`). Times,
in one run and on the same matrix:

* ours: `fit_logistic` (the distinct evidence patterns with their class counts as weights, then
  L-BFGS in preconditioned coordinates), l2 = --l2;
* scikit-learn: LogisticRegression(C = 1 / l2, lbfgs, max_iter=1000, its default tol 1e-4);
* the first call of the engine (`logistic_weights`, cache cleared: rows, design matrix, patterns, fit);
  with --cv also the first call with l2 cross-validated and the pairwise interactions tried, with the time
  of each cross-validation (`choose_l2`) and of the first look and the bar (`pairs_gain_z`).

Prints both fit times, the ratio, the distinct patterns, and how close the two fits are (max |w|
difference, training log-loss of each). --cv also times the cross-validated choice of l2 (5 folds x
10 grid values, then the final fit: what the first call without an l2 costs).

    python bench/logistic_fit.py [--customers N] [--l2 X] [--cv]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from common import cpu_model, demo_snapshot, write_result

from segsrv import _kernels
from segsrv.engine.predict import logistic as L
from segsrv.engine.predict.target import base_probabilities, evidence_feature_mask, questions, resolve_target
from segsrv.ops.conditions import All
from segsrv.snapshot.reader import open_snapshot

TARGET = "churned"
U = "customers"


def train_log_loss(X, y, b, w) -> float:
    z = X @ w + b
    return float(np.mean(np.where(y == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))


def objective(X, y, b, w, l2) -> float:
    """The minimised objective per row: mean -ln P(y | x) + l2/2 ||w||^2 / n."""
    return train_log_loss(X, y, b, w) + 0.5 * l2 * float(w @ w) / X.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--cv", action="store_true", help="also time the cross-validated choice of l2")
    args = ap.parse_args()
    snap = open_snapshot(demo_snapshot(args.customers))
    u = snap.universe(U)
    t = resolve_target(snap, U, TARGET, All(), None, 64)
    ev = evidence_feature_mask(t, None)
    classes, p0, _ = questions(t)[0]
    _, _, base = base_probabilities(t.S, t.n_S, classes, p0, 1.0)
    fids = np.flatnonzero(ev)
    col_of = np.full(u.n_features, -1, dtype=np.int64)
    col_of[fids] = np.arange(len(fids))
    rows = _kernels.bitset_to_ids(t.S, u.n_rows).astype(np.int64)
    y = np.zeros(len(rows), dtype=np.int64)
    y[np.searchsorted(rows, _kernels.bitset_to_ids(_kernels.bitset_and(t.S, classes[1]), u.n_rows))] = 1
    t0 = time.perf_counter()
    X = L.design_matrix(u, rows, col_of, len(fids))
    design_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    P, _ = L.distinct_patterns(X)
    patterns_s = time.perf_counter() - t0
    n_distinct = L.distinct_patterns(X, max_share=1.0)[0].shape[0]  # counted exactly, for the report
    used = P.shape[0] < X.shape[0]
    print(f"demo {u.n_rows:,} customers: design {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} non-zeros "
          f"({design_s:.2f} s); {n_distinct:,} distinct evidence patterns: the fit runs on "
          f"{'them' if used else 'the rows (more than 80% distinct)'} ({patterns_s:.2f} s)", flush=True)

    t0 = time.perf_counter()
    b, w = L.fit_logistic(X, y, 2, args.l2)
    ours_s = time.perf_counter() - t0
    print(f"ours   fit_logistic      {ours_s:8.2f} s", flush=True)

    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=1.0 / args.l2, max_iter=1000).fit(X, y)
    sk_s = time.perf_counter() - t0
    print(f"sklearn LogisticRegression {sk_s:6.2f} s  (n_iter {int(sk.n_iter_[0])})")
    print(f"ratio sklearn / ours: {sk_s / ours_s:.2f}x")
    diff = float(np.max(np.abs(w[0] - sk.coef_[0])))
    ll_ours, ll_sk = train_log_loss(X, y, b[0], w[0]), train_log_loss(X, y, sk.intercept_[0], sk.coef_[0])
    ob_ours, ob_sk = objective(X, y, b[0], w[0], args.l2), objective(X, y, sk.intercept_[0], sk.coef_[0], args.l2)
    print(f"max |w_ours - w_sklearn| = {diff:.2e} (both stop at tol 1e-4); training log-loss ours {ll_ours:.6f}, "
          f"sklearn {ll_sk:.6f}; objective per row ours {ob_ours:.7f}, sklearn {ob_sk:.7f}")

    L.LOGISTIC_CACHE.clear()
    L.L2_CACHE.clear()
    t0 = time.perf_counter()
    L.logistic_weights(t, classes, ev, args.l2, 0, base)
    first_s = time.perf_counter() - t0
    print(f"engine first call (l2 given: rows, design, patterns, fit): {first_s:.2f} s")
    result = {
        "cpu": cpu_model(), "threads": _kernels.get_num_threads(), "customers": u.n_rows,
        "design": {"rows": X.shape[0], "features": X.shape[1], "nnz": int(X.nnz), "build_s": round(design_s, 3),
                   "distinct_patterns": int(n_distinct), "fit_on_patterns": bool(used),
                   "patterns_s": round(patterns_s, 3)},
        "l2": args.l2, "ours_fit_s": round(ours_s, 3), "sklearn_fit_s": round(sk_s, 3),
        "ratio_sklearn_over_ours": round(sk_s / ours_s, 3), "max_abs_weight_diff": diff,
        "train_log_loss": {"ours": ll_ours, "sklearn": ll_sk}, "objective_per_row": {"ours": ob_ours, "sklearn": ob_sk},
        "engine_first_call_l2_given_s": round(first_s, 3),
    }
    if args.cv:
        L.LOGISTIC_CACHE.clear()
        L.L2_CACHE.clear()
        phases: dict[str, list[float]] = {"choose_l2": [], "pairs_gain_z": []}

        def timed(name, fn):
            def run(*a, **k):
                t1 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    phases[name].append(round(time.perf_counter() - t1, 3))
            return run

        # the phases of the choice (each choose_l2: the main effects', then the pair design's; each
        # pairs_gain_z: the first look, then the bar), timed where logistic.fit_rows calls them
        originals = {name: getattr(L, name) for name in phases}
        for name, fn in originals.items():
            setattr(L, name, timed(name, fn))
        try:
            t0 = time.perf_counter()
            _, _, reg, inter = L.logistic_weights(t, classes, ev, None, 0, base)
            cv_s = time.perf_counter() - t0
        finally:
            for name, fn in originals.items():
                setattr(L, name, fn)
        print(f"engine first call (l2 by 5-fold CV over {len(L.L2_GRID)} values and a refining search, the "
              f"pairwise interactions tried, then the fit): {cv_s:.1f} s; chosen l2 = {reg.l2:g}, "
              f"{len(inter)} pairs; choose_l2 calls {phases['choose_l2']} s, pairs_gain_z calls "
              f"{phases['pairs_gain_z']} s")
        result["engine_first_call_cv_s"] = round(cv_s, 3)
        result["cv_chosen_l2"] = reg.l2
        result["cv_interaction_pairs"] = len(inter)
        result["cv_phases_s"] = phases
    print(f"results: {write_result('logistic_fit', result)}")


if __name__ == "__main__":
    main()
