"""Predict explanations a person reads (docs/predict.md, "The explanation a person reads"): factors by
effect, the evidence without effect folded with its count, the product still exact, and p-values below
1e-300 reported by their exact log10.

PetNord for the by-id explanations (~55 evidence features, most of them without effect), and a synthetic
snapshot whose target a feature determines, so that its G-test p-value underflows a double."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import log_ndtr

from segsrv.engine.predict import predict
from segsrv.engine.predict.target import LOG10_TAIL_BELOW, chi2_log10_sf, g_test
from segsrv.ops.predict import PredictQuery, effect, explained
from segsrv.service import run_json

LN10 = math.log(10.0)


# --- the exact log tail ----------------------------------------------------------------------------


@pytest.mark.parametrize("x", [3.0, 50.0, 600.0, 1300.0, 1390.0, 1400.0, 5000.0, 1e5, 1e7])
def test_chi2_log10_sf_is_the_exact_tail(x):
    """Closed forms of the chi-square tail: df 1 = 2 Phi(-sqrt x) (scipy's log_ndtr is exact in the
    tail), df 2 = exp(-x/2), df 4 = exp(-x/2) (1 + x/2)."""
    refs = {1: (math.log(2.0) + float(log_ndtr(-math.sqrt(x)))) / LN10,
            2: -x / 2 / LN10,
            4: (-x / 2 + math.log1p(x / 2)) / LN10}
    for df, ref in refs.items():
        got = chi2_log10_sf(x, df)
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-12), (x, df)
    assert chi2_log10_sf(0.0, 1) == 0.0


def test_g_test_log10_agrees_with_p_above_the_tail():
    N = np.array([[5, 40, 1200], [30, 2, 0]])
    n_c = np.array([1300, 1300])
    p, lp = g_test(N, n_c)
    assert p[2] < LOG10_TAIL_BELOW and lp[2] < -300  # the underflowing one gets the log tail
    for j in (0, 1):
        assert p[j] > LOG10_TAIL_BELOW and lp[j] == pytest.approx(math.log10(p[j]), rel=1e-12)


# --- a synthetic snapshot: plan determines churn ---------------------------------------------------

SPEC = """
name = "planned"
[tables.customers]
file = "customers.csv"
key = "customer_id"
categorical = ["churned", "plan", "region"]
numeric = { tenure = { edges = [6, 12] } }
[universes.customers]
table = "customers"
include = ["*"]
"""
N_ROWS = 4000


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot

    d = tmp_path_factory.mktemp("planned")
    rng = np.random.default_rng(3)
    lines = ["customer_id,churned,plan,region,tenure"]
    for i in range(N_ROWS):
        churned = i % 2 == 0
        lines.append(f"{i},{'yes' if churned else 'no'},{'a' if churned else 'b'},"
                     f"{rng.choice(['north', 'south'])},{int(rng.integers(0, 30))}")
    (d / "customers.csv").write_text("\n".join(lines) + "\n")
    (d / "planned.toml").write_text(SPEC)
    build_snapshot(d / "planned.toml", d / "snap", progress=lambda m: None)
    return open_snapshot(d / "snap")


def _ref_log10_p_perfect(n: int) -> float:
    """plan=a exactly the churned half of n rows: the 2 x 2 table [[n/2, 0], [0, n/2]], G = 2 n ln 2 (1 df)."""
    g = 2.0 * n * math.log(2.0)
    return (math.log(2.0) + float(log_ndtr(-math.sqrt(g)))) / LN10


@pytest.mark.parametrize("min_support,kind", [(30, "conjunction"), (10 ** 6, "lift")])
def test_p_value_below_1e_300_gets_its_log10(planned, min_support, kind):
    """plan=a joins the conjunction (its factor's test: S' against the class within S) or, with a
    min_support no conjunction reaches, is a backed-off lift; either way p underflows (~1e-1206)."""
    evidence = {"plan": "a"} if kind == "conjunction" else {"plan": "a", "region": "north"}  # S' = plan=a
    q = {"target": "churned", "evidence": evidence, "min_support": min_support, "method": "conjunction"}
    answer = run_json("predict", planned, q)
    ref = _ref_log10_p_perfect(N_ROWS)
    assert ref < -1000
    for vp in answer["probabilities"]:
        (f,) = [f for f in vp["factors"] if ["plan", "a"] in f["evidence"]]
        assert f["kind"] == kind
        assert f["p_value"] < 1e-300  # 0.0: a double cannot hold it
        assert f["log10_p_value"] == pytest.approx(ref, rel=1e-12)
    # the factorized method reports the same test of the same table (within S)
    fz = run_json("predict", planned, {**q, "method": "factorized"})
    for vp in fz["probabilities"]:
        (f,) = [f for f in vp["factors"] if f["evidence"] == [["plan", "a"]]]
        assert f["log10_p_value"] == pytest.approx(ref, rel=1e-12)


def test_logistic_factors_have_no_p_value(planned):
    answer = run_json("predict", planned, {"target": "churned", "evidence": {"plan": "a"}, "method": "logistic"})
    for vp in answer["probabilities"]:
        assert all("p_value" not in f and "log10_p_value" not in f for f in vp["factors"])


# --- by id on PetNord: ordered, folded, still exact ------------------------------------------------

CASES = [dict(target="churned", universe="customers", row_id="CUST-00007", method="conjunction"),
         dict(target="churned", universe="customers", row_id="CUST-00007", method="factorized"),
         dict(target="segment", universe="customers", row_id="CUST-00042", method="conjunction"),
         dict(target="churned", universe="customers", row_id="CUST-00003", method="logistic")]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: f"{k['target']}-{k.get('method', 'conjunction')}")
def test_by_id_explanation_is_ordered_folded_and_exact(snap, kwargs):
    res = predict(snap, PredictQuery(**kwargs))
    q = {"from": "customers", "target": kwargs["target"], "id": kwargs["row_id"]}
    if "method" in kwargs:
        q["method"] = kwargs["method"]
    answer = run_json("predict", snap, q)
    assert len(res.evidence) >= 40
    folded_any = False
    for vp, js in zip(res.probabilities, answer["probabilities"]):
        assert js["value"] == vp.value
        listed = js["factors"]
        # ordered by effect, |ln factor| descending
        effects = [effect(f["factor"]) for f in listed]
        assert effects == sorted(effects, reverse=True)
        # the folded entry: exactly the engine's single-evidence lifts of 1, counted
        ones = [f for f in vp.factors if f.factor == 1.0 and f.kind == "lift" and len(f.evidence) == 1]
        assert js["no_effect"]["count"] == len(ones) == len(js["no_effect"]["evidence"])
        assert js["no_effect"]["evidence"] == [list(f.evidence[0]) for f in ones]
        assert len(listed) + len(ones) == len(vp.factors)
        assert all(not (f["factor"] == 1.0 and f["kind"] == "lift" and len(f["evidence"]) == 1) for f in listed)
        folded_any = folded_any or len(ones) > 0
        # the product over the listed factors is the product over every factor (brute force), and
        # base * product / normalizer is the probability
        prod_listed = math.prod(f["factor"] for f in listed)
        prod_all = math.prod(f.factor for f in vp.factors)
        assert prod_listed == pytest.approx(prod_all, rel=1e-12)
        assert js["base_probability"] * prod_listed / js["normalizer"] == pytest.approx(js["probability"], rel=1e-12)
        # every evidence is accounted for once: in a listed factor or in the folded entry
        mentioned = [tuple(e) for f in listed for e in f["evidence"]] + [tuple(e) for e in js["no_effect"]["evidence"]]
        engine = [tuple(e) for f in vp.factors for e in f.evidence]
        assert sorted(mentioned) == sorted(engine)
        # the proto carries the same: listed factors, the count and the folded evidence
        msg = vp.to_proto().explanation
        assert [gf.factor for gf in msg.factors] == [f["factor"] for f in listed]
        assert msg.no_effect_count == len(ones)
        assert [[t.field, t.value] for t in msg.no_effect_evidence] == js["no_effect"]["evidence"]
        assert msg.base_probability * math.prod(gf.factor for gf in msg.factors) / msg.normalizer == \
            pytest.approx(vp.probability, rel=1e-12)
        got_listed, got_folded = explained(vp.factors)
        assert [f.to_json() for f in got_listed] == listed and len(got_folded) == len(ones)
    if kwargs.get("method") is None:  # conjunction: most of the ~55 evidence features have no effect
        assert folded_any
