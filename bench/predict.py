"""Predict / Evaluate / ScoreSegment benchmark, next to scikit-learn.

Two datasets, target `churned` of the customers universe:

* PetNord (specs/petnord.toml, built into a temporary root): evidence = every
  other customer field plus the purchase behaviours reached through orders and
  order lines (the default evidence fields: every field except the target and
  fields copying it);
* the demo shop (cached snapshot of bench/common.py, --customers, default 1M).

For each: our Evaluate (holdout 0.2, seed 0) for every method, next to
scikit-learn's LogisticRegression (lbfgs, C=1, max_iter=1000) and BernoulliNB
trained on one-hot encodings of the SAME evidence features (the snapshot's CSR
restricted to the evidence feature columns) with the SAME training / test rows.
Prints AUC, log-loss, accuracy and the AUC gap to the better scikit-learn
model. The conjunction method runs the full model per test row, so it is
evaluated on a deterministic subset of the test rows (--conjunction-rows); its
line shows the scikit-learn AUCs on the same subset.

Then on the demo shop: time per single Predict with 20 explicit evidence
features (median over 200 rows; the logistic model is fitted once per segment
and cached, its first call is reported apart) and ScoreSegment over every
customer (median of 5, plus the first call including the fit).

    python bench/predict.py [--customers N] [--conjunction-rows R] [--skip-petnord]
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import REPO, demo_snapshot, write_result

from segsrv import _kernels
from segsrv.ops.conditions import All
from segsrv.engine.evaluate import auc_score, evaluate, holdout_rows
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.engine.predict import predict, score_segment
from segsrv.engine.predict.target import evidence_feature_mask, resolve_target, row_features
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from segsrv.snapshot.reader import open_snapshot

PM = importlib.import_module("segsrv.engine.predict.logistic")
TARGET = "churned"
U = "customers"


def log_loss(y: np.ndarray, p1: np.ndarray) -> float:
    p = np.clip(np.where(y, p1, 1.0 - p1), 1e-300, 1.0)
    return float(-np.mean(np.log(p)))


def sklearn_models(snap, e_full) -> dict:
    """LogisticRegression and BernoulliNB on one-hot encodings of the evidence features."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import BernoulliNB

    u = snap.universe(U)
    t = resolve_target(snap, U, TARGET, All(), None, 64)
    ev_cols = np.flatnonzero(evidence_feature_mask(t, None))
    X = csr_matrix((np.ones(len(u.csr_indices), dtype=np.float64), np.asarray(u.csr_indices, dtype=np.int64),
                    np.asarray(u.csr_indptr, dtype=np.int64)), shape=(u.n_rows, u.n_features))[:, ev_cols].tocsr()
    positive = e_full.values.index(e_full.positive_value)
    has = np.zeros(u.n_rows, dtype=bool)
    yall = np.zeros(u.n_rows, dtype=bool)
    for i, bits in enumerate(t.value_bits):
        ids = _kernels.bitset_to_ids(bits, u.n_rows)
        has[ids] = True
        if i == positive:
            yall[ids] = True
    hold = holdout_rows(u, 0.2, 0)
    train = np.flatnonzero(has & ~hold)
    test = e_full.test_rows
    assert np.array_equal(test, np.flatnonzero(has & hold))
    assert len(train) == e_full.n_train
    y_test = yall[test]
    assert np.array_equal(y_test, e_full.true_index == positive)
    out = {"n_features": int(len(ev_cols)), "_y": yall}
    for name, model in (("sklearn LogisticRegression", LogisticRegression(max_iter=1000)),
                        ("sklearn BernoulliNB", BernoulliNB())):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X[train], yall[train])
        fit_s = time.perf_counter() - t0
        p1_all = np.zeros(u.n_rows)
        p1_all[test] = model.predict_proba(X[test])[:, 1]
        p1 = p1_all[test]
        out[name] = {
            "auc": auc_score(y_test, p1),
            "log_loss": log_loss(y_test, p1),
            "accuracy": float(np.mean((p1 > 0.5) == y_test)),
            "fit_s": round(fit_s, 3),
            "_p1_all": p1_all,
        }
    return out


def bench_dataset(label: str, snap, conjunction_rows: int) -> dict:
    u = snap.universe(U)
    print(f"\n== {label}: {u.n_rows:,} customers, {u.n_features:,} features, target {TARGET} ==", flush=True)
    res = {"customers": u.n_rows, "features_total": u.n_features, "methods": {}}
    evals = {}
    for method in ("logistic", "factorized", "conjunction"):
        PM.LOGISTIC_CACHE.clear()
        t0 = time.perf_counter()
        kw = dict(max_test_rows=conjunction_rows) if method == "conjunction" else {}
        e = evaluate(snap, EvaluateQuery(target=TARGET, universe=U, holdout_fraction=0.2, seed=0, method=method, **kw))
        evals[method] = e
        res["methods"][method] = {"auc": e.auc, "log_loss": e.log_loss, "accuracy": e.accuracy,
                                  "n_test": e.n_test, "evaluate_s": round(time.perf_counter() - t0, 3)}
    e_full = evals["logistic"]
    res["n_train"], res["n_test"] = e_full.n_train, e_full.n_test
    res["baseline_accuracy"] = e_full.baseline_accuracy
    sk = sklearn_models(snap, e_full)
    res["evidence_features"] = sk["n_features"]
    y = sk["_y"]
    for name in ("sklearn LogisticRegression", "sklearn BernoulliNB"):
        res["methods"][name] = {k: v for k, v in sk[name].items() if not k.startswith("_")}
        res["methods"][name]["n_test"] = e_full.n_test
    best_sk = max(sk["sklearn LogisticRegression"]["auc"], sk["sklearn BernoulliNB"]["auc"])
    # scikit-learn on the conjunction subset, for a like-for-like line
    sub = evals["conjunction"].test_rows
    sub_sk = {n: auc_score(y[sub], sk[n]["_p1_all"][sub]) for n in ("sklearn LogisticRegression", "sklearn BernoulliNB")}
    res["methods"]["conjunction"]["sklearn_auc_same_rows"] = sub_sk
    print(f"evidence features {sk['n_features']:,}; train {e_full.n_train:,} / test {e_full.n_test:,} rows; "
          f"baseline accuracy {e_full.baseline_accuracy:.4f}")
    print(f"{'model':30s} {'AUC':>7s} {'logloss':>8s} {'acc':>7s} {'AUC gap':>8s} {'time s':>8s} {'test rows':>10s}")
    for name, m in res["methods"].items():
        ref = best_sk if name != "conjunction" else max(sub_sk.values())
        m["auc_gap_to_best_sklearn"] = m["auc"] - ref
        tsec = m.get("evaluate_s", m.get("fit_s"))
        print(f"{name:30s} {m['auc']:7.4f} {m['log_loss']:8.4f} {m['accuracy']:7.4f} {m['auc_gap_to_best_sklearn']:+8.4f} "
              f"{tsec:8.2f} {m['n_test']:10,d}")
    print(f"  (conjunction: {len(sub):,} test rows; scikit-learn AUC on those rows: "
          + ", ".join(f"{k.split()[1]} {v:.4f}" for k, v in sub_sk.items()) + ")")
    ours = res["methods"]["logistic"]
    res["targets"] = {
        "auc_within_0.01_of_best_sklearn": ours["auc"] >= best_sk - 0.01,
        "logloss_not_worse_than_bnb": ours["log_loss"] <= res["methods"]["sklearn BernoulliNB"]["log_loss"],
    }
    print(f"  targets (logistic, the default): {res['targets']}")
    return res


def bench_timing(snap, repeats: int = 200) -> dict:
    u = snap.universe(U)
    t = resolve_target(snap, U, TARGET, All(), None, 64)
    ev_mask = evidence_feature_mask(t, None)
    rng = np.random.default_rng(0)
    rows = []
    for r in rng.permutation(u.n_rows).tolist():
        f = row_features(u, r)
        f = f[ev_mask[f]]
        if len(f) >= 20:
            rows.append([u.feature_name(int(x)) for x in rng.choice(f, 20, replace=False)])
        if len(rows) == repeats:
            break
    out = {"predict_evidence_features": 20, "predict_repeats": len(rows)}
    PM.LOGISTIC_CACHE.clear()
    t0 = time.perf_counter()
    predict(snap, PredictQuery(target=TARGET, universe=U, evidence=rows[0], method="logistic"))
    out["predict_logistic_first_call_ms (fits the model)"] = round((time.perf_counter() - t0) * 1e3, 1)
    for method in ("logistic", "factorized", "conjunction"):
        ts = []
        for ev in rows:
            t0 = time.perf_counter()
            predict(snap, PredictQuery(target=TARGET, universe=U, evidence=ev, method=method))
            ts.append(time.perf_counter() - t0)
        out[f"predict_{method}_median_ms"] = round(float(np.median(ts)) * 1e3, 3)
    for method in ("logistic", "factorized"):
        PM.LOGISTIC_CACHE.clear()
        t0 = time.perf_counter()
        r = score_segment(snap, ScoreQuery(target=TARGET, value="true", universe=U, method=method))
        first = time.perf_counter() - t0
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = score_segment(snap, ScoreQuery(target=TARGET, value="true", universe=U, method=method))
            ts.append(time.perf_counter() - t0)
        out[f"score_segment_{method}_median_s"] = round(float(np.median(ts)), 3)
        out[f"score_segment_{method}_first_call_s"] = round(first, 3)
        out["score_segment_members"] = r.n_members
    print(f"\n== timing on {u.n_rows:,} customers ==")
    for k, v in out.items():
        print(f"  {k}: {v}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--conjunction-rows", type=int, default=2000)
    ap.add_argument("--skip-petnord", action="store_true")
    args = ap.parse_args()
    result = {"threads": _kernels.get_num_threads(), "cpu_path": _kernels.cpu_path()}
    if not args.skip_petnord:
        with tempfile.TemporaryDirectory(prefix="segsrv-bench-petnord-") as tmp:
            subprocess.run([sys.executable, "-m", "segsrv", "build", str(REPO / "specs" / "petnord.toml"),
                            "--out", tmp, "--quiet"], check=True)
            result["petnord"] = bench_dataset("PetNord", open_snapshot(Path(tmp)), args.conjunction_rows)
    snap = open_snapshot(demo_snapshot(args.customers))
    result["demo"] = bench_dataset(f"demo shop ({args.customers:,})", snap, args.conjunction_rows)
    result["timing"] = bench_timing(snap)
    print(f"\nresults: {write_result('predict', result)}")


if __name__ == "__main__":
    main()
