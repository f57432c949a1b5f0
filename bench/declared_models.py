"""First call against warm call on a declared model, and what an undeclared one costs instead.

The demo shop (bench/common.py, --customers, default 1M) built with one declared model
(docs/spec.md, [models.NAME]): target `churned` of every customer over the default evidence
fields, l2 = 1 (a fixed penalty keeps the build's fit to seconds; a cross-validated one is stored the
same way). A small segment catalog is applied for Assign. Then, in a fresh process (nothing cached):
open the snapshot, warm it as the server does before serving it (segsrv.service.warm_version: the engine's
warm-up, its queries answered through a service), and time the first and the
second call of

* Predict (method logistic, the declared question, evidence of one customer),
* ScoreSegment over every customer (1M members, top 100),
* Assign of one id with propensities,
* and, for contrast, the first call of a Predict whose model is not declared (another evidence set):
  it fits on demand.

The calls run in rounds, the three operations in turn: round 1 is the first calls, the median of the
--repeat later rounds the warm time. Every measured call, first or warm, follows the same unmeasured
pass over every customer (a factorized ScoreSegment of another target), so the CPU caches are as cold
for a warm call as for the first: the ratio shows what a first call costs and nothing else.
A first call is one sample per process, and at a millisecond one sample is noisy (a timer interrupt,
the neighbour's work): the child runs --runs times, each a fresh process, and the figures are the
medians over the runs of each run's first call and of each run's warm median. Prints each first / warm
time, the ratio (target: first within 1.2x), the ratio of every run, and for reference the median of
--repeat calls back to back (hot caches).

    python bench/declared_models.py [--customers N] [--repeat R] [--runs P]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import DATA_ROOT, REPO, cpu_model, demo_tables, stale_snapshot, write_result

MODEL = """

[models.churn]
from = "customers"
target = "churned"
l2 = 1.0
"""
CATALOG = {
    "app_families": {"where": {"signup_channel": "app", "pet_type": "dog"}, "universe": "customers"},
    "newsletter": {"where": {"newsletter": "true"}, "universe": "customers"},
    "north": {"where": {"region": "north"}, "universe": "customers"},
}


def models_snapshot(n: int):
    """The demo with the declared model and the catalog, built once (cached)."""
    spec = demo_tables(n)
    with_model = spec.with_name("spec-models.toml")
    with_model.write_text(spec.read_text() + MODEL)
    root = DATA_ROOT / f"snap-models-{n}"
    if stale_snapshot(root):  # missing, or of an older format (a catalog version keeps its base's)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "segsrv", "build", str(with_model), "--out", str(root)], check=True)
        print(f"[bench] built with the declared model in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    from segsrv.engine.catalog import apply_segments

    apply_segments(root / "demo", CATALOG)
    return root


def child(root: str, repeat: int) -> dict:
    """Runs in a fresh process: nothing fitted, nothing cached."""
    from segsrv.engine.predict import logistic
    from segsrv.ops.assign import AssignQuery
    from segsrv.ops.predict import PredictQuery
    from segsrv.ops.score import ScoreQuery
    from segsrv.service import local_service, warm_version

    t0 = time.perf_counter()
    service = local_service(root)
    opened = time.perf_counter() - t0
    snap = service.snapshots.resolve()
    t0 = time.perf_counter()
    warm_version(snap)  # what the server does before serving a version (its warm queries through a service)
    warmed = time.perf_counter() - t0
    u = snap.universe("customers")
    some_id = u.ids_for_rows([12345])[0]
    evidence = {"region": "north", "newsletter": "false", "signup_channel": "app"}
    calls = {
        "predict": lambda: service.predict(PredictQuery.from_json(
            {"from": "customers", "target": "churned", "method": "logistic", "l2": 1.0, "evidence": evidence})),
        "score_segment": lambda: service.score_segment(ScoreQuery.from_json(
            {"from": "customers", "target": "churned", "value": "true", "method": "logistic", "l2": 1.0,
             "top_k": 100})),
        "assign_propensities": lambda: service.assign(AssignQuery.from_json(
            {"from": "customers", "ids": [some_id], "include_propensities": True})),
    }
    out = {"open_s": opened, "warm_s": warmed}
    fits0 = logistic.fit_count()
    # every measured call, first or warm, follows the same unrelated pass over every customer (a factorized
    # ScoreSegment, not measured): the CPU caches are as cold for a warm call as for the first one, so
    # "first / warm" shows what a first call costs and nothing else. Rounds of the three calls: round 1
    # holds the first calls, the median of the later ones is "warm".
    def evict():
        service.score_segment(ScoreQuery.from_json(
            {"from": "customers", "target": "newsletter", "value": "true", "method": "factorized",
             "prior_strength": 2.0, "top_k": 10}))

    evict()
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat + 1):
        for name, call in calls.items():
            evict()
            t0 = time.perf_counter()
            call()
            rounds[name].append(time.perf_counter() - t0)
    for name, call in calls.items():
        hot = []  # back to back, for reference: the caches hold this operation's data
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            hot.append(time.perf_counter() - t0)
        first, warm = rounds[name][0], statistics.median(rounds[name][1:])
        out[name] = {"first_s": first, "warm_s": warm, "ratio": first / warm, "hot_s": statistics.median(hot)}
    out["fits_on_declared_calls"] = logistic.fit_count() - fits0
    t0 = time.perf_counter()
    service.predict(PredictQuery.from_json({"from": "customers", "target": "churned", "method": "logistic", "l2": 1.0,
                                            "evidence": evidence, "evidence_fields": ["region", "newsletter",
                                                                                      "signup_channel", "orders.*"]}))
    out["undeclared_predict_first_s"] = time.perf_counter() - t0
    out["fits_undeclared"] = logistic.fit_count() - fits0 - out["fits_on_declared_calls"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes; the medians over them are printed")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat)))
        return
    root = models_snapshot(args.customers)
    runs = []
    for _ in range(max(1, args.runs)):
        proc = subprocess.run([sys.executable, __file__, "--child", str(root), "--repeat", str(args.repeat)],
                              check=True, capture_output=True, text=True, cwd=REPO / "bench")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = statistics.median
    got = {"open_s": med(r["open_s"] for r in runs), "warm_s": med(r["warm_s"] for r in runs)}
    for name in ("predict", "score_segment", "assign_propensities"):
        first, warm = med(r[name]["first_s"] for r in runs), med(r[name]["warm_s"] for r in runs)
        got[name] = {"first_s": first, "warm_s": warm, "ratio": first / warm,
                     "hot_s": med(r[name]["hot_s"] for r in runs),
                     "run_ratios": [r[name]["ratio"] for r in runs]}
    for k in ("fits_on_declared_calls", "fits_undeclared"):
        got[k] = max(r[k] for r in runs)
    got["undeclared_predict_first_s"] = med(r["undeclared_predict_first_s"] for r in runs)
    print(f"[declared] {args.customers:,} customers; {cpu_model()}; {len(runs)} fresh processes (medians over them): "
          f"open {got['open_s']:.2f} s, warm-up {got['warm_s']:.2f} s")
    for name in ("predict", "score_segment", "assign_propensities"):
        r = got[name]
        print(f"  {name:<22} first {r['first_s'] * 1e3:9.2f} ms   warm {r['warm_s'] * 1e3:9.2f} ms   "
              f"first/warm {r['ratio']:5.2f}   (back to back {r['hot_s'] * 1e3:.2f} ms; per run "
              + " ".join(f"{x:.2f}" for x in r["run_ratios"]) + ")")
    print(f"  fits during the declared calls: {got['fits_on_declared_calls']} (most in any run); an undeclared "
          f"Predict's first call {got['undeclared_predict_first_s']:.2f} s ({got['fits_undeclared']} fit)")
    write_result("declared_models", dict(got, customers=args.customers, cpu=cpu_model(), repeat=args.repeat,
                                        runs=len(runs)))


if __name__ == "__main__":
    main()
