"""clients/fixtures/petnord_expected.json is up to date with the PetNord source data.

The Go, Java and Node client tests check the server against that file; it is written by
clients/fixtures/make_expected.py from the source tables with DuckDB. This recomputes it
(the script's --check) so a stale fixture fails here instead of misleading the client tests.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "clients" / "fixtures" / "make_expected.py"
FIXTURE = REPO / "clients" / "fixtures" / "petnord_expected.json"


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
    from segsrv.engine import RelateQuery, parse_where, relate

    res = relate(petnord_snapshot, RelateQuery(universe=computed["universe"],
                                               where=parse_where({"churned": True}),
                                               relate=["region"], direction="all", limit=100))
    assert res.snapshot == computed["snapshot"]
    assert res.n_rows == computed["n_customers"]
    assert res.n_condition == computed["relate"]["condition_count"]
    assert {hit.value: hit.support for hit in res.hits} == {
        h["value"]: h["support"] for h in computed["relate"]["hits"]}
