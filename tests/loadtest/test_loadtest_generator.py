"""The request generator draws only the snapshot's own fields and values, deterministically."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clients.loadtest.gen import Catalog, FieldValues, RequestGenerator, catalog_from_response, pools_to_json
from clients.loadtest.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "clients" / "loadtest" / "scenarios"


def _terms(cond) -> list[tuple[str, str]]:
    """The (field, value) terms of a generated condition (a term or an all_of of terms)."""
    kind = cond.WhichOneof("kind")
    if kind == "term":
        return [(cond.term.field, cond.term.value)]
    assert kind == "all_of", kind
    out = []
    for c in cond.all_of.conditions:
        assert c.WhichOneof("kind") == "term"
        out.append((c.term.field, c.term.value))
    return out


def _check_terms(terms, catalog, lo, hi):
    assert lo <= len(terms) <= hi
    assert len({f for f, _ in terms}) == len(terms), "terms on distinct fields"
    for f, v in terms:
        assert f in catalog.fields, f
        assert v in catalog.fields[f].values, (f, v)


def test_requests_use_only_existing_fields_and_values(petnord_catalog):
    cat = petnord_catalog
    sc = load_scenario(SCENARIOS / "default.toml").with_weights({"assign": 1})
    sc.ids.pattern = "CUST-{n:05d}"
    gen = RequestGenerator(sc, cat)
    pools = gen.build_pools(300)
    assert set(pools) == {"relate", "count", "predict", "assign"}
    assert all(len(v) == 300 for v in pools.values())
    for r in pools["relate"]:
        assert r.universe == "customers" and r.limit == 20
        _check_terms(_terms(r.condition), cat, 1, 3)
    sizes = {len(_terms(r.condition)) for r in pools["count"]}
    assert sizes == {1, 2, 3}
    for r in pools["count"]:
        _check_terms(_terms(r.condition), cat, 1, 3)
    with_id = 0
    for r in pools["predict"]:
        t = r.target_field
        assert t in cat.fields and 2 <= len(cat.fields[t].values) <= 8
        seg = _terms(r.segment) if r.HasField("segment") else []
        _check_terms(seg, cat, 0, 1)
        ev = [(e.field, e.value) for e in r.evidence]
        if r.id:
            with_id += 1
            assert not ev
            assert r.id.startswith("CUST-") and 1 <= int(r.id[5:]) <= cat.row_count
        else:
            _check_terms(ev, cat, 1, 3)
        used = [f for f, _ in seg + ev]
        assert t not in used, "never conditions on the target"
        assert len(set(used)) == len(used)
    assert 100 < with_id < 200  # id_fraction 0.5
    for r in pools["assign"]:
        assert 1 <= len(r.ids) <= 20 and r.include_propensities
        assert all(i.startswith("CUST-") and 1 <= int(i[5:]) <= 3000 for i in r.ids)


def test_pools_are_deterministic_and_seeded(petnord_catalog):
    sc = load_scenario(SCENARIOS / "smoke.toml")
    a = RequestGenerator(sc, petnord_catalog).build_pools(50)
    b = RequestGenerator(sc, petnord_catalog).build_pools(50)
    assert {m: [r.SerializeToString() for r in v] for m, v in a.items()} == \
           {m: [r.SerializeToString() for r in v] for m, v in b.items()}
    sc.seed += 1
    c = RequestGenerator(sc, petnord_catalog).build_pools(50)
    assert [r.SerializeToString() for r in c["count"]] != [r.SerializeToString() for r in a["count"]]


def test_generated_requests_are_accepted_by_the_server(loadtest_server, petnord_catalog):
    """Every drawn request of the smoke mix answers OK (its fields and values are real)."""
    import grpc

    from segsrv.v1 import segsrv_pb2_grpc

    sc = load_scenario(SCENARIOS / "smoke.toml")
    pools = RequestGenerator(sc, petnord_catalog).build_pools(40)
    with grpc.insecure_channel(loadtest_server) as ch:
        stub = segsrv_pb2_grpc.SegmentationServiceStub(ch)
        for m, call in (("relate", stub.Relate), ("count", stub.Count), ("predict", stub.Predict)):
            for r in pools[m]:
                call(r, timeout=10)


def test_ghz_json_round_trips(petnord_catalog):
    from google.protobuf import json_format

    from segsrv.v1 import segsrv_pb2 as pb

    sc = load_scenario(SCENARIOS / "default.toml")
    sc.ids.pattern = "CUST-{n:05d}"
    pools = RequestGenerator(sc, petnord_catalog).build_pools(20)
    js = pools_to_json(pools)
    types = {"relate": pb.RelateRequest, "count": pb.CountRequest, "predict": pb.PredictRequest,
             "assign": pb.AssignRequest}
    for m, reqs in pools.items():
        assert [json_format.ParseDict(d, types[m]()) for d in js[m]] == reqs


def _toy_catalog() -> Catalog:
    fields = {
        "region": FieldValues("region", "categorical", ["north", "south"], [90, 10]),
        "churned": FieldValues("churned", "categorical", ["false", "true"], [70, 30]),
        "pet": FieldValues("pet", "categorical", ["dog", "cat", "fish"], [5, 5, 0]),
        "sku": FieldValues("sku", "categorical", [f"s{i}" for i in range(100)], [1] * 100),
    }
    return Catalog("toy", "v1", "customers", "customer_id", 100, fields, ["customers"])


def test_weighted_values_follow_counts_and_skip_empty_values():
    sc = parse_scenario({"methods": {"count": {"terms": 1}}})
    gen = RequestGenerator(sc, _toy_catalog())
    rng = random.Random(0)
    draws = [gen.value(rng, "region") for _ in range(5000)]
    assert 0.87 < draws.count("north") / len(draws) < 0.93
    assert "fish" not in {gen.value(rng, "pet") for _ in range(2000)}  # count 0 is never drawn
    sc.value_choice = "uniform"
    draws = [gen.value(rng, "region") for _ in range(5000)]
    assert 0.45 < draws.count("north") / len(draws) < 0.55


def test_scenario_checked_against_the_snapshot():
    cat = _toy_catalog()
    with pytest.raises(ScenarioError, match="has 4 usable fields.*needs 5"):
        RequestGenerator(parse_scenario({"methods": {"count": {"terms": 5}}}), cat)
    with pytest.raises(ScenarioError, match="has 2 usable fields"):
        RequestGenerator(parse_scenario({"exclude_fields": ["s*", "p*"], "methods": {"count": {"terms": 3}}}), cat)
    with pytest.raises(ScenarioError, match="targets: universe 'customers' has no field 'nope'"):
        RequestGenerator(parse_scenario({"methods": {"predict": {"targets": ["nope"]}}}), cat)
    with pytest.raises(ScenarioError, match="'sku' has 100 values, above max_target_values 8"):
        RequestGenerator(parse_scenario({"methods": {"predict": {"targets": ["sku"]}}}), cat)
    gen = RequestGenerator(parse_scenario({"methods": {"predict": {"weight": 1}}}), cat)
    assert gen.targets == ["churned", "pet", "region"]


def test_unknown_universe_is_reported(petnord_info):
    with pytest.raises(ScenarioError, match="no universe 'shoppers'.*customers"):
        catalog_from_response(petnord_info, "shoppers")
    assert catalog_from_response(petnord_info, None).universe == "customers"
    assert catalog_from_response(petnord_info, "orders").key == "order_id"
