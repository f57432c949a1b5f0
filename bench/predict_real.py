"""Prediction quality on real customer datasets shipped inside PyPI packages, next to scikit-learn and LightGBM.

Datasets (CSV files inside the wheels, read from the package directory without importing the package):

* ``caravan`` - ISLP 0.6.0, ``ISLP/data/Caravan.csv``: CoIL 2000 insurance customers, 5,822 rows, 85
  socio-demographic and product-ownership columns, target ``Purchase`` (bought caravan insurance, ~6% Yes);
* ``oj`` - ISLP, ``ISLP/data/OJ.csv``: 1,070 orange-juice purchases, 17 price / discount / store / loyalty
  columns, target ``Purchase`` (CH or MM; positive = MM);
* ``default`` - ISLP, ``ISLP/data/Default.csv``: 10,000 credit-card customers, ``student``, ``balance``,
  ``income``, target ``default`` (~3% Yes);
* ``cdnow`` - Lifetimes 0.11.3, ``lifetimes/datasets/CDNOW_master.txt``: the 23,570 customers of the CDNOW
  cohort (first purchase Jan-Mar 1997, transactions to June 1998). Features from the calibration period
  1997-01-01 .. 1997-09-30 (the 39 weeks of lifetimes' CDNOW summary): month, CDs and dollars of the first
  purchase day, repeat purchase days (lifetimes' ``frequency``), recency and age in days (``recency``,
  ``T``), CDs and dollars in the period. Target ``buys_later``: the customer buys again between 1997-10-01
  and 1998-06-30 (Yes / No) - "will this customer come back", the question the Pareto/NBD models of
  lifetimes answer.

Two multi-table shops too, built from their own specs (every customer field and the behaviours reached
through orders, lines and events, as evidence): ``petnord`` (specs/petnord.toml, 3,000 customers) and
``demo`` (the synthetic demo shop, the cached snapshot of bench/common.py, --demo-customers, default
100,000), target ``churned`` in both.

Each table gets a key ``id`` (the row number, 1-based; CDNOW: the customer id) and is written to a temporary
directory with a spec: text columns and integer-valued columns with at most 50 distinct values (codes,
small ordinal scales, counts) are ``categorical``; every other numeric column is ``numeric`` with
``quantiles = 10`` (decile bands; edges are values of the column over the whole table, equal edges merge).
``segsrv build`` builds it. Then:

* ours: Evaluate with its DEFAULT method and penalty (no method / l2 passed), holdout 0.2, seed 0;
* scikit-learn LogisticRegression (lbfgs, C=1, max_iter=1000), LogisticRegressionCV (10 Cs, 5 stratified
  folds, scoring neg_log_loss, max_iter=1000), BernoulliNB (alpha=1) and LightGBM (LGBMClassifier, default
  parameters, one thread) on one-hot encodings of exactly our evidence features (the snapshot's CSR
  restricted to the evidence-field mask, as bench/predict.py), fitted on our training rows (not held out,
  with a target value) and scored on Evaluate's test rows.

Prints AUC, log-loss and accuracy per model and our AUC gap to the best of the four (target: >= -0.005),
and the count-based factorized method's AUC and log-loss at prior strengths 0.1 .. 100 (is the pseudo-count
worth choosing from the data?) and with its default, the strength cross-validated on the training rows.
Then on a few test rows per dataset (--explain-rows): Predict by id with the training rows as train_mask,
with the bulk default method (the model Evaluate scored: its probability must equal Evaluate's) and with
Predict's own default method; for every value, in-process and in the JSON form a person reads,
base_probability x prod(factors) / normalizer must equal the probability to 1e-9 (relative).

    python bench/predict_real.py [--datasets petnord,demo,caravan,oj,default,cdnow] [--explain-rows 5]
                                 [--demo-customers 100000]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import REPO, write_result
from predict import log_loss

from segsrv import _kernels
from segsrv.engine.conditions import bool_to_bitset, tail_mask
from segsrv.engine.evaluate import auc_score, evaluate, holdout_rows
from segsrv.engine.predict import predict
from segsrv.engine.predict.target import evidence_feature_mask, resolve_target
from segsrv.ops.conditions import All
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.ops.predict import DEFAULT_BULK_METHOD, DEFAULT_METHOD, PredictQuery
from segsrv.snapshot.reader import open_snapshot

U = "customers"
HOLDOUT, SEED = 0.2, 0
MAX_CATEGORICAL_LEVELS = 50
QUANTILES = 10
TARGET_GAP = 0.005
EXPLAIN_TOL = 1e-9
MODELS = ("sklearn LogisticRegression", "sklearn LogisticRegressionCV", "sklearn BernoulliNB", "LightGBM")


def package_dir(module: str) -> Path:
    """The directory of an installed package, without importing it (ISLP imports torch, lifetimes autograd)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {module!r} is not installed: pip install --no-deps ISLP==0.6.0 Lifetimes==0.11.3")
    return Path(list(spec.submodule_search_locations)[0])


def islp_table(name: str):
    import pandas as pd

    df = pd.read_csv(package_dir("ISLP") / "data" / f"{name}.csv")
    df.insert(0, "id", np.arange(1, len(df) + 1))
    return df


def cdnow_table():
    """One row per CDNOW customer: calibration-period features, target buys_later (see the module doc)."""
    import pandas as pd

    tx = pd.read_csv(package_dir("lifetimes") / "datasets" / "CDNOW_master.txt", sep=r"\s+", header=0,
                     names=["id", "date", "cds", "dollars"])
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    cal_end, later_end = pd.Timestamp("1997-09-30"), pd.Timestamp("1998-06-30")
    cal = tx[tx["date"] <= cal_end]
    first = cal.groupby("id")["date"].min().rename("first_date")
    cal = cal.join(first, on="id")
    first_day = cal[cal["date"] == cal["first_date"]].groupby("id")[["cds", "dollars"]].sum()
    g = cal.groupby("id")
    df = pd.DataFrame({
        "first_month": first.dt.month,
        "first_cds": first_day["cds"],
        "first_dollars": first_day["dollars"],
        "repeat_days": g["date"].nunique() - 1,
        "recency_days": (g["date"].max() - first).dt.days,
        "age_days": (cal_end - first).dt.days,
        "period_cds": g["cds"].sum(),
        "period_dollars": g["dollars"].sum(),
    })
    later = set(tx.loc[(tx["date"] > cal_end) & (tx["date"] <= later_end), "id"].tolist())
    df["buys_later"] = np.where(df.index.isin(list(later)), "Yes", "No")
    return df.rename_axis("id").reset_index()


DEMO_CUSTOMERS = [100_000]  # --demo-customers


def petnord_root(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "segsrv", "build", str(REPO / "specs" / "petnord.toml"), "--out",
                    str(tmp / "snap"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return tmp / "snap"


def demo_root(tmp: Path) -> Path:
    from common import demo_snapshot

    return demo_snapshot(DEMO_CUSTOMERS[0])


# multi-table shops built from their own specs: name -> (snapshot root maker, target, source)
SHOPS = {
    "petnord": (petnord_root, "churned", "specs/petnord.toml: PetNord (../shared/data/petnord), 3,000 customers"),
    "demo": (demo_root, "churned", "the synthetic demo shop (segsrv demo-data, bench/common.py), --demo-customers"),
}

DATASETS = {
    # name: (loader, target, source)
    "caravan": (lambda: islp_table("Caravan"), "Purchase", "ISLP 0.6.0: ISLP/data/Caravan.csv"),
    "oj": (lambda: islp_table("OJ"), "Purchase", "ISLP 0.6.0: ISLP/data/OJ.csv"),
    "default": (lambda: islp_table("Default"), "default", "ISLP 0.6.0: ISLP/data/Default.csv"),
    "cdnow": (cdnow_table, "buys_later", "Lifetimes 0.11.3: lifetimes/datasets/CDNOW_master.txt"),
}


def column_kinds(df, target: str) -> tuple[list[str], list[str]]:
    """(categorical, numeric) columns: text, and integer-valued columns with at most MAX_CATEGORICAL_LEVELS
    distinct values, are categorical; other numeric columns numeric (decile bands)."""
    import pandas as pd

    categorical, numeric = [], []
    for c in df.columns:
        if c == "id":
            continue
        col = df[c]
        if c == target or not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            categorical.append(c)
        elif np.all(np.mod(col.dropna().to_numpy(dtype=float), 1.0) == 0) and col.nunique() <= MAX_CATEGORICAL_LEVELS:
            categorical.append(c)
        else:
            numeric.append(c)
    return categorical, numeric


def build(name: str, df, target: str, tmp: Path) -> tuple[Path, list[str], list[str]]:
    import tomli_w

    categorical, numeric = column_kinds(df, target)
    df.to_csv(tmp / f"{name}.csv", index=False)
    spec = {
        "name": name,
        "description": f"bench/predict_real.py: {name}",
        "tables": {U: {"file": f"{name}.csv", "key": "id", "categorical": categorical,
                       "numeric": {c: {"quantiles": QUANTILES} for c in numeric}}},
        "universes": {U: {"include": ["*"]}},
    }
    (tmp / "spec.toml").write_text(tomli_w.dumps(spec))
    subprocess.run([sys.executable, "-m", "segsrv", "build", str(tmp / "spec.toml"), "--out", str(tmp / "snap"),
                    "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return tmp / "snap", categorical, numeric


def design(snap, target: str, e):
    """One-hot evidence features of every row, the target, and the training / test rows of Evaluate `e`."""
    from scipy.sparse import csr_matrix

    u = snap.universe(U)
    t = resolve_target(snap, U, target, All(), None, 64)
    ev_cols = np.flatnonzero(evidence_feature_mask(t, None))
    X = csr_matrix((np.ones(len(u.csr_indices), dtype=np.float64), np.asarray(u.csr_indices, dtype=np.int64),
                    np.asarray(u.csr_indptr, dtype=np.int64)), shape=(u.n_rows, u.n_features))[:, ev_cols].tocsr()
    has, y = np.zeros(u.n_rows, dtype=bool), np.zeros(u.n_rows, dtype=bool)
    has[_kernels.bitset_to_ids(t.has_target, u.n_rows)] = True
    y[_kernels.bitset_to_ids(t.value_bits[e.values.index(e.positive_value)], u.n_rows)] = True
    hold = holdout_rows(u, HOLDOUT, SEED)
    train = np.flatnonzero(has & ~hold)
    test = e.test_rows
    assert np.array_equal(test, np.flatnonzero(has & hold)), "test rows differ from Evaluate's"
    assert len(train) == e.n_train, "training rows differ from Evaluate's"
    assert np.array_equal(y[test], e.true_index == e.values.index(e.positive_value))
    return X, y, train, test, ev_cols


def others(X, y, train, test) -> dict:
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.naive_bayes import BernoulliNB

    models = {
        "sklearn LogisticRegression": LogisticRegression(C=1.0, max_iter=1000),
        "sklearn LogisticRegressionCV": LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=1000),
        "sklearn BernoulliNB": BernoulliNB(),
        "LightGBM": lgb.LGBMClassifier(n_jobs=1, verbose=-1, random_state=0),
    }
    out = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X[train], y[train])
            p1 = model.predict_proba(X[test])[:, 1]
        m = {"auc": auc_score(y[test], p1), "log_loss": log_loss(y[test], p1),
             "accuracy": float(np.mean((p1 > 0.5) == y[test])), "time_s": round(time.perf_counter() - t0, 3)}
        if name == "sklearn LogisticRegressionCV":
            m["C"] = float(np.ravel(model.C_)[0])
        out[name] = m
    return out


def product_error(base: float, factors, normalizer: float, probability: float) -> float:
    """Relative error of base * prod(factors) / normalizer against the probability (in log space when the
    product leaves the range of a double)."""
    fs = [float(f) for f in factors]
    prod = base * math.prod(fs) / normalizer
    if not math.isfinite(prod) or prod == 0.0:
        if probability <= 0 or base <= 0 or normalizer <= 0 or any(f <= 0 for f in fs):
            return 0.0 if prod == probability else math.inf
        return abs(math.expm1(math.log(base) + sum(math.log(f) for f in fs) - math.log(normalizer)
                              - math.log(probability)))
    return abs(prod - probability) / max(abs(probability), 1e-300)


def explanations(snap, target: str, e, n_rows: int) -> dict:
    """Predict by id on the first test rows (training rows as train_mask): factor products, and the
    bulk-default model's probability against Evaluate's."""
    u = snap.universe(U)
    train_mask = bool_to_bitset(~holdout_rows(u, HOLDOUT, SEED), u.n_words)
    _kernels.bitset_and(train_mask, tail_mask(u.n_rows, u.n_words), train_mask)
    rows = e.test_rows[:n_rows]
    ids = u.ids_for_rows(rows)
    out = {"rows": int(len(rows))}
    for method in dict.fromkeys((DEFAULT_BULK_METHOD, DEFAULT_METHOD)):
        worst = worst_json = worst_eval = 0.0
        n_factors = []
        for j, rid in enumerate(ids):
            res = predict(snap, PredictQuery(target=target, universe=U, row_id=rid, train_mask=train_mask,
                                             method=method))
            for vp in res.probabilities:
                worst = max(worst, product_error(vp.base_probability, [f.factor for f in vp.factors],
                                                 vp.normalizer, vp.probability))
                n_factors.append(len(vp.factors))
                if method == DEFAULT_BULK_METHOD:
                    k = e.values.index(vp.value)
                    worst_eval = max(worst_eval, abs(vp.probability - float(e.probabilities[j, k])))
            for vj in res.to_json()["probabilities"]:
                worst_json = max(worst_json, product_error(vj["base_probability"], [f["factor"] for f in vj["factors"]],
                                                           vj["normalizer"], vj["probability"]))
        m = {"max_relative_error": worst, "max_relative_error_json": worst_json,
             "factors_per_value": int(np.median(n_factors)),
             "ok": bool(worst <= EXPLAIN_TOL and worst_json <= EXPLAIN_TOL)}
        if method == DEFAULT_BULK_METHOD:
            m["max_abs_diff_to_evaluate"] = worst_eval
            m["ok"] = bool(m["ok"] and worst_eval <= EXPLAIN_TOL)
        out[method] = m
    return out


PRIOR_SWEEP = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def prior_sweep(snap, target: str) -> dict:
    """Evaluate's factorized method (count-based) at each prior strength (does the pseudo-count matter?), and
    with the strength cross-validated on the training rows (no prior_strength given: the default)."""
    out = {}
    for a in PRIOR_SWEEP:
        f = evaluate(snap, EvaluateQuery(target=target, universe=U, holdout_fraction=HOLDOUT, seed=SEED,
                                         method="factorized", prior_strength=a, given=frozenset({"prior_strength"})))
        out[str(a)] = {"auc": f.auc, "log_loss": f.log_loss}
    f = evaluate(snap, EvaluateQuery(target=target, universe=U, holdout_fraction=HOLDOUT, seed=SEED,
                                     method="factorized"))
    out["cv"] = {"auc": f.auc, "log_loss": f.log_loss, "prior_strength": f.regularisation.prior_strength}
    return out


def bench_dataset(name: str, explain_rows: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"segsrv-bench-{name}-") as tmp_s:
        t0 = time.perf_counter()
        if name in SHOPS:
            make, target, source = SHOPS[name]
            root = make(Path(tmp_s))
            categorical, numeric = None, None
        else:
            loader, target, source = DATASETS[name]
            root, categorical, numeric = build(name, loader(), target, Path(tmp_s))
        build_s = time.perf_counter() - t0
        snap = open_snapshot(root)
        u = snap.universe(U)
        if categorical is None:  # a shop: every field of the universe (categorical, numeric bands, linked tables)
            categorical, numeric = list(u.fields), []
        t0 = time.perf_counter()
        e = evaluate(snap, EvaluateQuery(target=target, universe=U, holdout_fraction=HOLDOUT, seed=SEED))
        eval_s = time.perf_counter() - t0
        X, y, train, test, ev_cols = design(snap, target, e)
        res = {
            "source": source, "rows": u.n_rows, "target": target, "positive_value": e.positive_value,
            "positive_rate": float(y[np.concatenate([train, test])].mean()),
            "columns_categorical": len(categorical) - 1, "columns_numeric_deciles": len(numeric),
            "evidence_features": int(len(ev_cols)), "n_train": int(len(train)), "n_test": int(len(test)),
            "baseline_accuracy": e.baseline_accuracy, "build_s": round(build_s, 2),
        }
        reg = getattr(e, "regularisation", None)
        ours = {"auc": e.auc, "log_loss": e.log_loss, "accuracy": e.accuracy, "time_s": round(eval_s, 3)}
        label = f"segsrv Evaluate (default: {e.method}"
        if reg is not None:
            ours["l2"] = float(reg.l2)
            ours["l2_cross_validated"] = bool(reg.cross_validated)
            ours["interaction_pairs"] = int(reg.interaction_pairs)
            label += f", l2 {reg.l2:.3g}{' CV' if reg.cross_validated else ''}"
            label += f", {reg.interaction_pairs} pairs" if reg.interaction_pairs else ""
        label += ")"
        res["method"] = e.method
        res["models"] = {"segsrv (default)": ours, **others(X, y, train, test)}
        best_name = max(MODELS, key=lambda k: res["models"][k]["auc"])
        best = res["models"][best_name]["auc"]
        for m in res["models"].values():
            m["auc_gap_to_best"] = m["auc"] - best
        res["best_other"] = best_name
        res["auc_gap_to_best"] = ours["auc"] - best
        res["target_met"] = bool(ours["auc"] >= best - TARGET_GAP)
        res["explanations"] = explanations(snap, target, e, explain_rows)
        res["factorized_prior_sweep"] = prior_sweep(snap, target)

    print(f"\n== {name} ({source}): {u.n_rows:,} rows, target {target} (positive {e.positive_value}, "
          f"rate {res['positive_rate']:.3f}) ==")
    print(f"columns: {res['columns_categorical']} categorical, {res['columns_numeric_deciles']} numeric (deciles); "
          f"{res['evidence_features']} one-hot evidence features; train {res['n_train']:,} / test {res['n_test']:,}; "
          f"baseline accuracy {e.baseline_accuracy:.4f}")
    print(f"{'model':50s} {'AUC':>7s} {'logloss':>8s} {'acc':>7s} {'AUC gap':>8s} {'time s':>7s}")
    for mname, m in res["models"].items():
        shown = label if mname == "segsrv (default)" else mname + (f" (C={m['C']:.3g})" if "C" in m else "")
        print(f"{shown:50s} {m['auc']:7.4f} {m['log_loss']:8.4f} {m['accuracy']:7.4f} {m['auc_gap_to_best']:+8.4f} "
              f"{m['time_s']:7.2f}")
    sweep = res["factorized_prior_sweep"]
    print("  factorized by prior strength (AUC / log-loss): " + ", ".join(
        f"{a}: {m['auc']:.4f} / {m['log_loss']:.3f}" for a, m in sweep.items() if a != "cv")
        + f"; cross-validated (the default): {sweep['cv']['prior_strength']:g} -> {sweep['cv']['auc']:.4f} / "
          f"{sweep['cv']['log_loss']:.3f}")
    verdict = "met" if res["target_met"] else "MISSED"
    print(f"  our AUC gap to the best ({best_name}): {res['auc_gap_to_best']:+.4f} -> target (>= -{TARGET_GAP}) {verdict}")
    for method, m in res["explanations"].items():
        if method == "rows":
            continue
        extra = (f", |P - Evaluate's P| <= {m['max_abs_diff_to_evaluate']:.1e}"
                 if "max_abs_diff_to_evaluate" in m else "")
        print(f"  explanations ({method}, {res['explanations']['rows']} test rows, ~{m['factors_per_value']} factors "
              f"per value): base x prod(factors) / normaliser vs probability, max rel. error "
              f"{m['max_relative_error']:.1e} (JSON form {m['max_relative_error_json']:.1e}){extra} -> "
              f"{'ok' if m['ok'] else 'FAILED'}")
    return res


def git(*args: str) -> str:
    """The code measured: HEAD and the uncommitted files of segsrv/ (the default method is theirs)."""
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return r.stdout.rstrip("\n") if r.returncode == 0 else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    known = [*SHOPS, *DATASETS]
    ap.add_argument("--datasets", default=",".join(known))
    ap.add_argument("--explain-rows", type=int, default=5)
    ap.add_argument("--demo-customers", type=int, default=DEMO_CUSTOMERS[0])
    args = ap.parse_args()
    DEMO_CUSTOMERS[0] = args.demo_customers
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for n in names:
        if n not in known:
            raise SystemExit(f"unknown dataset {n!r}; known: {', '.join(known)}")
    import lightgbm
    import sklearn

    dirty = [line for line in git("status", "--short", "--", "segsrv").splitlines() if line]
    print(f"code: HEAD {git('rev-parse', '--short', 'HEAD')}"
          + (f", uncommitted in segsrv/: {', '.join(d.split()[-1] for d in dirty)}" if dirty else ", segsrv/ clean"))
    result = {"git_head": git("rev-parse", "HEAD"), "segsrv_uncommitted": dirty,
              "threads": _kernels.get_num_threads(), "cpu_path": _kernels.cpu_path(), "cpu_count": os.cpu_count(),
              "load_average_at_start": list(os.getloadavg()), "python": platform.python_version(),
              "scikit_learn": sklearn.__version__, "lightgbm": lightgbm.__version__,
              "holdout_fraction": HOLDOUT, "seed": SEED, "target_auc_gap": TARGET_GAP, "datasets": {}}
    t0 = time.perf_counter()
    for n in names:
        result["datasets"][n] = bench_dataset(n, args.explain_rows)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["all_targets_met"] = all(d["target_met"] for d in result["datasets"].values())
    result["all_explanations_ok"] = all(m["ok"] for d in result["datasets"].values()
                                        for k, m in d["explanations"].items() if k != "rows")
    print(f"\nall AUC targets met: {result['all_targets_met']}; all explanations exact: "
          f"{result['all_explanations_ok']}; {result['total_s']} s")
    if len(names) == len(known):
        print(f"results: {write_result('predict_real', result)}")
    else:
        print("(a subset of the datasets: bench/results/predict_real.json not written)")


if __name__ == "__main__":
    main()
