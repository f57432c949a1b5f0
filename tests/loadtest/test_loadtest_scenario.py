"""Scenario files: the shipped ones parse; malformed ones fail with a message naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clients.loadtest.scenario import ScenarioError, load_scenario, parse_scenario, parse_weights

SCENARIOS = Path(__file__).resolve().parents[2] / "clients" / "loadtest" / "scenarios"

MINIMAL = {"methods": {"count": {"weight": 1}}}


def test_default_scenario_has_every_method_and_demo_ids():
    sc = load_scenario(SCENARIOS / "default.toml")
    assert sc.name == "default"
    assert list(sc.weights) == ["relate", "count", "predict", "assign"]
    assert sc.weights == {"relate": 4, "count": 3, "predict": 2, "assign": 1}
    assert abs(sum(sc.shares.values()) - 1) < 1e-12
    assert sc.ids.pattern == "{n}" and sc.ids.first == 1 and sc.ids.last == "row_count"
    src = sc.ids.resolve(1_000_000)
    assert (src.first, src.last) == (1, 1_000_000)
    assert sc.relate.terms == (1, 3) and sc.count.terms == (1, 3)
    assert sc.predict.id_fraction == 0.5 and sc.assign.batch == (1, 20)


def test_smoke_scenario_has_no_assign_and_petnord_ids():
    sc = load_scenario(SCENARIOS / "smoke.toml")
    assert set(sc.weights) == {"relate", "count", "predict"}
    assert sc.assign.weight == 0
    import random

    assert sc.ids.resolve(3000).draw(random.Random(0)).startswith("CUST-")
    assert sc.ids.resolve(3000).pattern.format(n=7) == "CUST-00007"


def test_defaults_of_a_minimal_scenario():
    sc = parse_scenario(MINIMAL, name="mini")
    assert sc.name == "mini" and sc.seed == 1 and sc.pool_size == 500 and sc.universe is None
    assert sc.weights == {"count": 1.0}  # unlisted methods have weight 0


def test_weights_override():
    sc = load_scenario(SCENARIOS / "default.toml")
    no_assign = sc.with_weights(parse_weights("assign=0"))
    assert "assign" not in no_assign.weights and "assign" in sc.weights  # a copy
    assert parse_weights("relate=4, count=0.5") == {"relate": 4.0, "count": 0.5}
    with pytest.raises(ScenarioError, match="unknown method 'delete'"):
        sc.with_weights({"delete": 1})
    with pytest.raises(ScenarioError, match="every method has weight 0"):
        sc.with_weights({"relate": 0, "count": 0, "predict": 0, "assign": 0})
    with pytest.raises(ScenarioError, match="METHOD=WEIGHT"):
        parse_weights("relate")
    with pytest.raises(ScenarioError, match="not a number"):
        parse_weights("relate=lots")


def test_ids_from_list_and_file(tmp_path):
    sc = parse_scenario({**MINIMAL, "ids": {"list": ["a", "b"]}})
    assert sc.ids.resolve(10).ids == ["a", "b"]
    f = tmp_path / "ids.txt"
    f.write_text("# ids\nX-1\n\nX-2\n")
    sc = parse_scenario({**MINIMAL, "ids": {"file": "ids.txt"}}, base_dir=tmp_path)
    assert sc.ids.ids == ["X-1", "X-2"]


BAD = [
    ({"methods": {}}, "methods: expected a table"),
    ({}, "methods: expected a table"),
    ({"methods": {"delete": {"weight": 1}}}, "methods: unknown key 'delete'"),
    ({"methods": {"count": {"weight": 1, "term": [1, 2]}}}, "methods.count: unknown key 'term'"),
    ({"methods": {"count": {"weight": -1}}}, "methods.count.weight: must be at least 0"),
    ({"methods": {"count": {"weight": "heavy"}}}, "methods.count.weight: expected a number"),
    ({"methods": {"count": {"weight": 0}}}, "every method has weight 0"),
    ({"methods": {"count": {"terms": [3, 1]}}}, "methods.count.terms: min 3 is above max 1"),
    ({"methods": {"count": {"terms": [0, 2]}}}, r"methods.count.terms\[0\]: must be at least 1"),
    ({"methods": {"relate": {"terms": [1, 99]}}}, r"methods.relate.terms\[1\]: must be at most 8"),
    ({"methods": {"relate": {"terms": "1-3"}}}, "methods.relate.terms: expected \\[min, max\\]"),
    ({"methods": {"relate": {"limit": 0}}}, "methods.relate.limit: must be at least 1"),
    ({"methods": {"relate": {"order_by": "random"}}}, "methods.relate.order_by: unknown order 'random'"),
    ({"methods": {"relate": {"fields": ["region", ""]}}}, r"methods.relate.fields\[1\]: expected a non-empty string"),
    ({"methods": {"predict": {"id_fraction": 1.5}}}, "methods.predict.id_fraction: must be at most 1.0"),
    ({"methods": {"predict": {"max_target_values": 1}}}, "methods.predict.max_target_values: must be at least 2"),
    ({"methods": {"predict": {"method": "magic"}}}, "methods.predict.method: unknown method 'magic'"),
    ({"methods": {"predict": {"evidence_terms": [0, 0], "id_fraction": 0}}}, "methods.predict: no evidence"),
    ({"methods": {"assign": {"batch": [1, 100_000]}}}, r"methods.assign.batch\[1\]: must be at most 10000"),
    ({"methods": {"assign": {"include_propensities": "yes"}}}, "include_propensities: expected true or false"),
    ({**MINIMAL, "rate": 100}, "scenario: unknown key 'rate'"),
    ({**MINIMAL, "seed": -1}, "seed: must be at least 0"),
    ({**MINIMAL, "seed": 1.5}, "seed: expected an integer"),
    ({**MINIMAL, "pool_size": 0}, "pool_size: must be at least 1"),
    ({**MINIMAL, "timeout_s": 0}, "timeout_s: must be at least"),
    ({**MINIMAL, "value_choice": "random"}, "value_choice: expected one of weighted, uniform"),
    ({**MINIMAL, "exclude_fields": "region"}, "exclude_fields: expected a list of strings"),
    ({**MINIMAL, "ids": {"pattern": "CUST"}}, "ids.pattern: 'CUST' does not use {n}"),
    ({**MINIMAL, "ids": {"pattern": "{id}"}}, "ids.pattern: '{id}' is not a format over n"),
    ({**MINIMAL, "ids": {"pattern": "{n}", "list": ["1"]}}, "ids: give one of pattern, list or file"),
    ({**MINIMAL, "ids": {"list": []}}, "ids.list: empty"),
    ({**MINIMAL, "ids": {"list": ["a"], "first": 3}}, "ids.first: only with ids.pattern"),
    ({**MINIMAL, "ids": {"first": 10, "last": 5}}, "ids.last: 5 is below ids.first 10"),
    ({**MINIMAL, "ids": {"last": "all"}}, "ids.last: expected an integer"),
    ({**MINIMAL, "ids": {"range": [1, 2]}}, "ids: unknown key 'range'"),
    ({**MINIMAL, "ids": {"file": "/nonexistent/ids.txt"}}, "ids.file: cannot read"),
]


@pytest.mark.parametrize("obj,message", BAD, ids=[m for _, m in BAD])
def test_bad_scenarios_name_the_key(obj, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(obj)


def test_load_scenario_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="bad.toml: not valid TOML"):
        load_scenario(bad)
    bad.write_text("[methods.count]\nweight = -2\n")
    with pytest.raises(ScenarioError, match=r"bad.toml: methods.count.weight"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")


def test_resolve_row_count_of_an_empty_universe():
    sc = parse_scenario(MINIMAL)
    with pytest.raises(ScenarioError, match="the universe is empty"):
        sc.ids.resolve(0)


def test_shipped_scenarios_are_valid_toml_with_only_known_keys():
    for path in SCENARIOS.glob("*.toml"):
        parse_scenario(tomllib.loads(path.read_text()), name=path.stem, base_dir=path.parent)


def test_a_scenario_may_order_relate_by_every_order_the_server_accepts():
    from clients.loadtest.scenario import RELATE_ORDERS
    from segsrv.ops.relate import ORDER_KEYS

    assert set(RELATE_ORDERS) == {""} | set(ORDER_KEYS)
