"""clients/fixtures/petnord_expected.json is up to date with the PetNord source data.

The Go, Java and Node client tests check the server against that file; it is written by
clients/fixtures/make_expected.py from the source tables with DuckDB. This recomputes it
(the script's --check) so a stale fixture fails here instead of misleading the client tests.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "clients" / "fixtures" / "make_expected.py"
FIXTURE = REPO / "clients" / "fixtures" / "petnord_expected.json"
CATALOG = REPO / "clients" / "fixtures" / "segments.toml"


@pytest.fixture(scope="module")
def make_expected():
    spec = importlib.util.spec_from_file_location("segsrv_clients_make_expected", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def computed(make_expected) -> dict:
    return make_expected.compute()


def test_script_writes_the_committed_file(make_expected):
    assert Path(make_expected.OUT).resolve() == FIXTURE.resolve()


def test_fixture_is_up_to_date(computed):
    committed = json.loads(FIXTURE.read_text())
    hint = f"stale fixture: run .venv/bin/python {SCRIPT.relative_to(REPO)}"
    assert committed == computed, hint
    # byte for byte, as `make_expected.py --check` compares it
    assert FIXTURE.read_text() == json.dumps(computed, indent=2, sort_keys=True) + "\n", hint


def test_check_mode_passes(make_expected, capsys):
    assert make_expected.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_fixture_is_consistent(computed):
    relate = computed["relate"]
    churned = next(c for c in computed["counts"] if c["description"] == "churned = true")
    assert relate["condition"] == churned["condition"]
    assert relate["condition_count"] == churned["count"]
    assert sum(h["support"] for h in relate["hits"]) == relate["condition_count"]
    assert sum(h["feature_count"] for h in relate["hits"]) == computed["n_customers"]
    for hit in relate["hits"]:
        lift = (hit["support"] / relate["condition_count"]) / (hit["feature_count"] / computed["n_customers"])
        assert hit["lift"] == pytest.approx(lift, rel=1e-12)
    assert computed["known_id"] != computed["unknown_id"]


def test_fixture_matches_the_snapshot(computed, petnord_snapshot):
    """The snapshot built from the same data agrees, so the client tests can compare the server with it."""
    from segsrv.engine.relate import relate
    from segsrv.ops.conditions import parse_where
    from segsrv.ops.relate import RelateQuery

    res = relate(petnord_snapshot, RelateQuery(universe=computed["universe"],
                                               where=parse_where({"churned": True}),
                                               relate=["region"], direction="all", limit=100))
    assert res.snapshot == computed["snapshot"]
    assert res.n_rows == computed["n_customers"]
    assert res.n_condition == computed["relate"]["condition_count"]
    assert {hit.value: hit.support for hit in res.hits} == {
        h["value"]: h["support"] for h in computed["relate"]["hits"]}


def test_assign_section_is_consistent(computed, make_expected):
    a = computed["assign"]
    assert Path(make_expected.CATALOG).resolve() == CATALOG.resolve()
    assert (REPO / a["catalog"]).resolve() == CATALOG.resolve()
    sizes = {s["name"]: s["size"] for s in a["segments"]}
    assert len(sizes) == len(a["segments"]) >= 3
    # sizes of 1..9 would be reported as 0 by the server's default privacy floor (k = 10)
    assert all(10 <= n < computed["n_customers"] for n in sizes.values()), sizes
    large_helsinki = next(c for c in computed["counts"] if c["description"] == "pet_size = large and region = helsinki")
    churned = next(c for c in computed["counts"] if c["description"] == "churned = true")
    assert sizes["helsinki_large"] == large_helsinki["count"]
    assert sizes["churners"] == churned["count"]
    assert [x["id"] for x in a["assignments"]] == a["ids"]
    assert len(set(a["ids"])) == len(a["ids"]) >= 4
    assert computed["known_id"] in a["ids"] and a["ids"][-1] == computed["unknown_id"]
    assert [x["found"] for x in a["assignments"]] == [True] * (len(a["ids"]) - 1) + [False]
    for x in a["assignments"] + [a["features"]]:
        assert x["members"] == sorted(x["members"]) and set(x["members"]) <= set(sizes)
        assert (x["primary_segment"] in x["members"]) if x["members"] else x["primary_segment"] == ""
    # the picks cover: a member of helsinki_large, a customer in two segments, one in none
    assert any("helsinki_large" in x["members"] for x in a["assignments"])
    assert any(len(x["members"]) >= 2 for x in a["assignments"])
    assert any(x["found"] and not x["members"] for x in a["assignments"])
    assert a["features"]["members"] == ["helsinki_large"] and a["features"]["primary_segment"] == "helsinki_large"


def test_where_sql_refuses_what_it_does_not_translate(make_expected):
    assert make_expected.where_sql({"region": "helsinki", "tenure_months": {"$gte": 24}}) == (
        "coalesce((region = 'helsinki') and (tenure_months >= 24), false)")
    for where in ({"$or": [{"region": "oulu"}]}, {"region": ["oulu", "espoo"]}, {"tenure_months": {"$in": [1]}},
                  {"$segment": "churners"}, {}):
        with pytest.raises(ValueError):
            make_expected.where_sql(where)


def test_assign_fixture_matches_the_engine(computed, petnord_root, tmp_path):
    """The catalog applied to the snapshot built from the same data gives the fixture's answers."""
    from segsrv.engine.assign import assign
    from segsrv.ops.assign import AssignQuery
    from segsrv.engine.catalog import apply_segments
    from segsrv.snapshot.reader import open_snapshot

    root = tmp_path / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    apply_segments(root / "petnord", CATALOG, fit_propensities=False)  # memberships and ranking are checked here,
    snap = open_snapshot(root / "petnord")  # not the propensities (tests/engine/test_catalog_models.py)
    a = computed["assign"]
    res = assign(snap, AssignQuery(universe=computed["universe"], ids=a["ids"], include_propensities=True,
                                   propensity_method="factorized"))
    assert [x.id for x in res.assignments] == a["ids"]
    for got, want in zip(res.assignments, a["assignments"]):
        assert got.found == want["found"], want["id"]
        assert sorted(m.segment for m in got.segments if m.member) == want["members"], want["id"]
        assert (got.primary_segment or "") == want["primary_segment"], want["id"]
        if got.found:
            assert {m.segment: (m.segment_size, m.priority) for m in got.segments} == {
                s["name"]: (s["size"], s["priority"]) for s in a["segments"]}
    f = a["features"]
    res = assign(snap, AssignQuery(universe=computed["universe"], include_propensities=True,
                                   propensity_method="factorized",
                                   features=[(t["field"], t["value"]) for t in f["terms"]]))
    (got,) = res.assignments
    assert got.found
    assert sorted(m.segment for m in got.segments if m.member) == f["members"]
    assert got.primary_segment == f["primary_segment"]
