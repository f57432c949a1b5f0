"""Discover: every listed segment and every number against a brute-force search over the source tables.

support.brute_discover writes the documented search out naively over the oracle's boolean masks (pandas
joins of the PetNord JSON files), with scipy's hypergeometric tails; nothing is read from the snapshot but
field names. Planted patterns on synthetic data check the redundancy rules; pysubgroup checks the
supervised statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from segsrv.engine.discover import BEAM, discover
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError
from segsrv.ops.conditions import parse_where
from segsrv.ops.discover import DiscoverQuery
from support import brute_discover

FIELDS = ["segment", "pet_size", "region", "lifestyle", "health_focus", "treat_affinity", "brand_loyalty",
          "orders.lines.product.category", "orders.lines.product.dietary", "impressions.surface"]


def close(a, b, rtol=1e-9, atol=0.0) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def check(result, expected, *, supervised: bool) -> None:
    assert result.n_rows == expected["n"]
    assert result.candidates == expected["candidates"]
    assert result.tested == expected["tested"]
    assert all(k <= BEAM for k in expected["kept_per_level"]), "the search is not exhaustive: raise BEAM"
    got = [tuple(sorted(s.terms)) for s in result.segments]
    want = [tuple(sorted(s.terms)) for s in expected["segments"]]
    assert got == want
    for g, w in zip(result.segments, expected["segments"]):
        assert g.support == w.support, g.terms
        assert close(g.share, w.share), g.terms
        assert close(g.lift, w.lift), (g.terms, g.lift, w.lift)
        assert close(g.split_lift, w.split_lift), (g.terms, g.split_lift, w.split_lift)
        assert close(g.adjusted_lift, w.adjusted_lift), (g.terms, g.adjusted_lift, w.adjusted_lift)
        assert close(g.p_value, w.p_value, rtol=1e-7, atol=1e-300), (g.terms, g.p_value, w.p_value)
        assert close(g.q_value, w.q_value, rtol=1e-7, atol=1e-300), (g.terms, g.q_value, w.q_value)
        assert close(g.score, w.score, rtol=1e-9), (g.terms, g.score, w.score)
        if supervised:
            assert g.target_support == w.target_support and g.direction == w.direction, g.terms
            assert close(g.target_rate, w.target_rate) and close(g.wracc, w.wracc), g.terms
        else:
            assert g.direction == "" and g.target_support == 0
        assert g.name and g.description
    if supervised:
        assert result.target_count == expected["target_count"]


CASES = {
    "default": dict(query={}, brute={}),
    "length2_plain": dict(query={"max_length": 2, "adjust_for_activity": False, "min_lift": 1.5},
                          brute={"max_length": 2, "adjust": False, "min_lift": 1.5}),
    "within_weights": dict(query={"within": {"pet_size": "large"}, "field_weights": {"orders.**": 3.0},
                                  "max_overlap": 0.3, "limit": 8, "min_support": 12},
                           brute={"within": {"pet_size": "large"}, "weights": "orders", "max_overlap": 0.3,
                                  "limit": 8, "min_support": 12}),
    "no_redundancy_rules": dict(query={"max_overlap": 1.0, "max_excess_overlap": 1.0, "limit": 60, "max_q_value": 1.0},
                                brute={"max_overlap": 1.0, "max_excess_overlap": 1.0, "limit": 60,
                                       "max_q_value": 1.0}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unsupervised_equals_bruteforce(petnord_snapshot, oracle, name):
    case = CASES[name]
    bu = oracle.universe("customers")
    q = {"from": "customers", "fields": FIELDS, "min_support": 40, **case["query"]}
    result = discover(petnord_snapshot, DiscoverQuery.from_json(q))
    kw = dict(case["brute"])
    within = kw.pop("within", None)
    if kw.get("weights") == "orders":
        kw["weights"] = {f: 3.0 for f in FIELDS if f.startswith("orders.")}
    expected = brute_discover(bu, FIELDS, min_support=kw.pop("min_support", 40), min_lift=kw.pop("min_lift", 1.25),
                              within=None if within is None else bu.eval(within), **kw)
    assert len(result.segments) >= 2, name
    check(result, expected, supervised=False)
    if name == "default":
        assert any(len(s.terms) == 3 for s in result.segments)  # longer conjunctions are found


SUPERVISED = {
    "both": dict(query={}, brute={}),
    "high_plain": dict(query={"direction": "high", "adjust_for_activity": False, "max_length": 2},
                       brute={"direction": "high", "adjust": False, "max_length": 2}),
    "low_lift": dict(query={"direction": "low", "min_lift": 1.1, "max_excess_overlap": 1.0, "max_length": 2},
                     brute={"direction": "low", "min_lift": 1.1, "max_excess_overlap": 1.0, "max_length": 2}),
}


@pytest.mark.parametrize("name", list(SUPERVISED))
def test_supervised_equals_bruteforce(petnord_snapshot, oracle, name):
    case = SUPERVISED[name]
    bu = oracle.universe("customers")
    q = {"from": "customers", "fields": FIELDS, "min_support": 40, "target": "churned=true", **case["query"]}
    result = discover(petnord_snapshot, DiscoverQuery.from_json(q))
    kw = dict(case["brute"])
    expected = brute_discover(bu, FIELDS, min_support=40, min_lift=kw.pop("min_lift", 1.2),
                              target=bu.eval({"churned": True}), **kw)
    assert result.segments, name
    check(result, expected, supervised=True)
    if name == "both":
        assert {s.direction for s in result.segments} == {"high", "low"}


def test_segmentation_is_the_greedy_cover(petnord_snapshot, oracle):
    bu = oracle.universe("customers")
    res = discover(petnord_snapshot, DiscoverQuery.from_json(
        {"from": "customers", "fields": FIELDS, "min_support": 40, "k": 4}))
    masks = []
    for seg in res.segments:
        m = np.ones(bu.n, dtype=bool)
        for f, v in seg.terms:
            m &= bu.fields[f].masks[v]
        masks.append(m)
    covered = np.zeros(bu.n, dtype=bool)
    chosen = []
    for _ in range(4):
        gains = [int((m & ~covered).sum()) if i not in chosen else -1 for i, m in enumerate(masks)]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        chosen.append(best)
        covered |= masks[best]
    seg = res.segmentation
    assert [p.segment for p in seg.personas] == chosen
    multi = np.sum([masks[i] for i in chosen], axis=0) >= 2
    assert seg.covered == covered.sum() and seg.other == bu.n - covered.sum() and seg.overlap == multi.sum()
    assert math.isclose(seg.coverage, covered.sum() / bu.n)
    # primary: the chosen persona with the highest lift (ties: listed first)
    assigned = np.zeros(bu.n, dtype=bool)
    for i in sorted(chosen, key=lambda i: (-res.segments[i].lift, i)):
        persona = next(p for p in seg.personas if p.segment == i)
        assert persona.primary == int((masks[i] & ~assigned).sum())
        assigned |= masks[i]
    assert sum(p.primary for p in seg.personas) == seg.covered


def test_related_features_are_over_indexed_in_the_segment(petnord_snapshot, oracle):
    bu = oracle.universe("customers")
    res = discover(petnord_snapshot, DiscoverQuery.from_json(
        {"from": "customers", "fields": FIELDS, "min_support": 40, "describe": 4, "limit": 5}))
    for seg in res.segments:
        m = np.ones(bu.n, dtype=bool)
        for f, v in seg.terms:
            m &= bu.fields[f].masks[v]
        assert 0 < len(seg.related) <= 4
        for r in seg.related:
            fm = bu.fields[r.field].masks[r.value]
            assert r.support == int((m & fm).sum()) >= 40
            assert math.isclose(r.lift, (r.support / m.sum()) / (fm.sum() / bu.n), rel_tol=1e-12)
            assert r.lift > 1 and (r.field, r.value) not in seg.terms
        assert seg.description.count(",") >= 1 and f"{seg.support:,}" in seg.description


# ----------------------------------------------------------------------------
# planted patterns: redundancy rules
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Customers with planted behaviour: A and B co-occur strongly; C is independent of both (so A, B, C is
    the pair plus noise); A2 is A on all but 1% of its rows (a near-duplicate); D and E co-occur only with
    F (D, E, F is productive: more than every split predicts); Z is rare noise."""
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot

    rng = np.random.default_rng(11)
    n = 20_000
    a = rng.random(n) < 0.2
    b = np.where(a, rng.random(n) < 0.7, rng.random(n) < 0.1)
    c = rng.random(n) < 0.4
    a2 = a.copy()
    flip = np.flatnonzero(a)[: int(a.sum()) // 100]
    a2[flip] = False
    f = rng.random(n) < 0.3
    d = np.where(f, rng.random(n) < 0.5, rng.random(n) < 0.2)
    e = np.where(f & d, rng.random(n) < 0.8, rng.random(n) < 0.2)
    z = rng.random(n) < 0.002
    d_tmp = tmp_path_factory.mktemp("planted")
    tags = []
    for i in range(n):
        t = [name for name, m in (("A", a), ("B", b), ("C", c), ("A2", a2), ("D", d), ("E", e), ("F", f), ("Z", z))
             if m[i]]
        tags.append("|".join(t))
    pd.DataFrame({"id": np.arange(n), "tags": tags}).to_csv(d_tmp / "people.csv", index=False)
    (d_tmp / "spec.toml").write_text('name = "planted"\n[tables.people]\nfile = "people.csv"\nkey = "id"\n'
                                     'multi = { tags = "|" }\n[universes.people]\ntable = "people"\n'
                                     'include = ["*"]\n')
    root = d_tmp / "snap"
    build_snapshot(d_tmp / "spec.toml", root, progress=lambda m: None)
    return open_snapshot(root), dict(a=a, b=b, c=c, a2=a2, d=d, e=e, f=f, n=n)


def _terms(seg):
    return {v for _, v in seg.terms}


def test_planted_patterns(planted):
    snap, m = planted
    res = discover(snap, DiscoverQuery.from_json({"from": "people", "limit": 50}))
    listed = [_terms(s) for s in res.segments]
    # the pair is found, and A2 (a near-duplicate of A) gives no second segment
    assert {"A", "B"} in listed or {"A2", "B"} in listed
    assert not ({"A", "B"} in listed and {"A2", "B"} in listed)
    # a superset of the planted pair that adds nothing (C is independent) is not listed
    assert not any({"A", "B", "C"} <= t or {"A2", "B", "C"} <= t for t in listed)
    assert not any("C" in t for t in listed)
    # the productive triple is listed: more than every split predicts
    assert {"D", "E", "F"} in listed
    triple = res.segments[listed.index({"D", "E", "F"})]
    n_x = int((m["d"] & m["e"] & m["f"]).sum())
    assert triple.support == n_x
    splits = [(m["d"], m["e"] & m["f"]), (m["e"], m["d"] & m["f"]), (m["f"], m["d"] & m["e"])]
    assert math.isclose(triple.split_lift, min(n_x * m["n"] / (x.sum() * y.sum()) for x, y in splits))
    # with the redundancy rules off, the near-duplicate is there too
    loose = discover(snap, DiscoverQuery.from_json({"from": "people", "limit": 50, "max_overlap": 1,
                                                    "max_excess_overlap": 1}))
    loose_terms = [_terms(s) for s in loose.segments]
    assert {"A", "B"} in loose_terms and {"A2", "B"} in loose_terms
    # "A implies A2" is nearly a tautology (A2 holds for 99% of A's rows): never a segment
    assert {"A", "A2"} not in loose_terms


def test_field_weights_lead(planted):
    snap, _ = planted
    res = discover(snap, DiscoverQuery.from_json({"from": "people", "limit": 50}))
    weighted = discover(snap, DiscoverQuery.from_json({"from": "people", "limit": 50,
                                                       "field_weights": {"tags": 2.0}}))
    # one field: every score doubles, the order stays
    assert [s.terms for s in res.segments] == [s.terms for s in weighted.segments]
    assert all(math.isclose(w.score, 2 * s.score) for s, w in zip(res.segments, weighted.segments))


def test_prioritised_fields_lead(petnord_snapshot):
    base = discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "fields": FIELDS,
                                                               "min_support": 40, "limit": 10}))
    first = {f for f, _ in base.segments[0].terms}
    other = next(f for s in base.segments[1:] for f, _ in s.terms if f not in first)
    weighted = discover(petnord_snapshot, DiscoverQuery.from_json(
        {"from": "customers", "fields": FIELDS, "min_support": 40, "limit": 10, "field_weights": {other: 50}}))
    assert other in {f for f, _ in weighted.segments[0].terms}


# ----------------------------------------------------------------------------
# supervised statistics against pysubgroup
# ----------------------------------------------------------------------------


def test_supervised_against_pysubgroup(petnord_snapshot, oracle):
    """With the ranking by plain weighted relative accuracy (adjust_for_activity false) and no rule but the
    lift floor, the single-feature subgroups are pysubgroup's depth-1 search: the same subgroups in the same
    order, with the same size, positives and WRAcc."""
    import pysubgroup as ps
    bu = oracle.universe("customers")
    fields = ["segment", "pet_size", "region", "lifestyle", "health_focus", "treat_affinity", "brand_loyalty"]
    df = pd.DataFrame({f: np.full(bu.n, "(none)", dtype=object) for f in fields})
    for f in fields:
        for v, m in bu.fields[f].masks.items():
            df.loc[m, f] = v
    df["churned"] = bu.fields["churned"].masks["true"]
    target = ps.BinaryTarget("churned", True)
    space = [sel for sel in ps.create_selectors(df, ignore=["churned"]) if "(none)" not in str(sel)]
    task = ps.SubgroupDiscoveryTask(df, target, space, result_set_size=15, depth=1, qf=ps.WRAccQF())
    theirs = ps.Apriori().execute(task).to_dataframe()
    ours = discover(petnord_snapshot, DiscoverQuery.from_json(
        {"from": "customers", "fields": fields, "target": "churned=true", "max_length": 1, "min_lift": 1.0,
         "min_support": 1, "adjust_for_activity": False, "direction": "high", "max_overlap": 1,
         "max_excess_overlap": 1, "max_q_value": 1, "limit": 15}))
    theirs = theirs[theirs["quality"] > 0]
    got = [(s.terms[0][0], s.terms[0][1]) for s in ours.segments if s.wracc > 0]
    want = [tuple(str(sel).split("==")) for sel in theirs["subgroup"]]
    want = [(f, v.strip("'")) for f, v in want]
    assert got[: len(want)] == want[: len(got)]
    for s, (_, row) in zip(ours.segments, theirs.iterrows()):
        assert s.support == row["size_sg"] and s.target_support == row["positives_sg"]
        assert math.isclose(s.wracc, row["quality"], rel_tol=1e-9)


# ----------------------------------------------------------------------------
# limits and errors
# ----------------------------------------------------------------------------


def test_limits_and_errors(petnord_snapshot):
    with pytest.raises(LimitExceededError, match="max_candidates"):
        discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "min_support": 1}), max_candidates=20)
    with pytest.raises(LimitExceededError, match="server's limit"):
        discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "max_candidates": 5000}))
    with pytest.raises(LimitExceededError, match="max_length"):
        DiscoverQuery.from_json({"from": "customers", "max_length": 9})
    with pytest.raises(QueryError, match="max_length"):
        DiscoverQuery.from_json({"from": "customers", "max_length": 1})
    with pytest.raises(UnknownFieldError, match="field_weights"):
        discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "field_weights": {"nope*": 2}}))
    with pytest.raises(QueryError, match="target"):
        discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "target": {"tenure_months": {"$lt": -5}}}))
    with pytest.raises(QueryError, match="k"):
        DiscoverQuery.from_json({"from": "customers", "k": 30, "limit": 10})


def test_privacy_floor_min_support(petnord_snapshot):
    res = discover(petnord_snapshot, DiscoverQuery.from_json({"from": "customers", "fields": FIELDS,
                                                              "min_support": 3}), privacy_k=50)
    assert res.min_support == 50
    assert all(s.support >= 50 for s in res.segments)
    tiny = discover(petnord_snapshot, DiscoverQuery(universe="customers", within=parse_where({"tenure_months": {"$lt": -5}})))
    assert tiny.n_rows == 0 and tiny.segments == [] and not tiny.suppressed
