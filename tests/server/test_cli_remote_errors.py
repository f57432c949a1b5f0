"""The CLI's error paths over --addr, against a real server: each error is one `segsrv: error: CODE: message`
line (a violation that repeats the message is not printed again), it names the command's flags (--universe,
--snapshot, --version) rather than request keys, exit 1, no traceback; an unreachable server too. Issue 17, item 6."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from segsrv import cli

CATALOG = 'universe = "customers"\n[segments.oulu]\nwhere = {region = "oulu"}\n'


@pytest.fixture(scope="module")
def catalog_root(petnord_root, tmp_path_factory):
    """A copy of PetNord with a one-segment catalog (published files are read-only: links suffice)."""
    base = tmp_path_factory.mktemp("cli_remote")
    root = base / "root"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    (base / "catalog.toml").write_text(CATALOG)
    assert cli.main(["segments", "apply", str(root / "petnord"), str(base / "catalog.toml"), "--quiet",
                     "--no-propensity-models"]) == 0
    return root


@pytest.fixture
def addr(catalog_root, start_server):
    return start_server(catalog_root).address


def fails(capsys, *args) -> str:
    """Run the CLI; it must fail with exit 1, print nothing on stdout and one error line on stderr."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 1 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("segsrv: error: "), err
    return lines[0]


def test_assign_without_universe_names_the_flag(addr, petnord_root, capsys):
    # the catalog is over customers: Assign needs no universe; without a catalog it must be named
    assert cli.main(["assign", "--addr", addr, "--id", "CUST-00001"]) == 0
    capsys.readouterr()
    line = fails(capsys, "assign", "--local", petnord_root, "--id", "CUST-00001")
    assert "name one (--universe)" in line and "'from'" not in line


def test_assign_errors(addr, capsys):
    line = fails(capsys, "assign", "--addr", addr, "--id", "CUST-00001", "--universe", "nope")
    assert line == ("segsrv: error: INVALID_ARGUMENT: snapshot 'petnord' has no universe 'nope'; universes: "
                    "['customers', 'impressions', 'order_lines', 'orders'] [--universe]")
    line = fails(capsys, "assign", "--addr", addr, "--features", json.dumps({"regoin": "oulu"}))
    assert line.startswith("segsrv: error: INVALID_ARGUMENT: ") and line.count("has no field 'regoin'") == 1
    line = fails(capsys, "assign", "--addr", addr, "--features", json.dumps({"region": "oulo"}))
    assert line.count("has no value 'oulo'") == 1 and line.endswith("[features[0].value]")
    line = fails(capsys, "assign", "--addr", addr, "--id", "CUST-00001", "--version", "nope")
    assert line.startswith("segsrv: error: FAILED_PRECONDITION: version nope of petnord is not served")
    assert line.endswith("[--version]")
    line = fails(capsys, "assign", "--addr", addr, "--id", "CUST-00001", "--snapshot", "nope")
    assert line == "segsrv: error: NOT_FOUND: no snapshot 'nope' is served; served: ['petnord'] [--snapshot]"
    line = fails(capsys, "assign", "--addr", addr, "--id", "CUST-00001", "--propensities",
                 "--propensity-method", "conjunction")
    assert "--propensity-method" in line and "propensity_method" not in line
    line = fails(capsys, "assign", "--addr", addr, "--ids-file", "/nonexistent/ids.txt")
    assert line == "segsrv: error: --ids-file: cannot read '/nonexistent/ids.txt': No such file or directory"


def test_segments_list_errors(addr, capsys):
    assert cli.main(["segments", "list", "--addr", addr]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["oulu"]
    line = fails(capsys, "segments", "list", "--addr", addr, "--universe", "nope")
    assert line.startswith("segsrv: error: INVALID_ARGUMENT: snapshot 'petnord' has no universe 'nope'")
    assert line.endswith("[--universe]") and line.count("no universe 'nope'") == 1
    line = fails(capsys, "segments", "list", "--addr", addr, "--snapshot", "nope")
    assert line.startswith("segsrv: error: NOT_FOUND: no snapshot 'nope' is served")
    line = fails(capsys, "segments", "list", "--addr", addr, "--version", "nope")
    assert line.startswith("segsrv: error: FAILED_PRECONDITION: ")


def test_query_and_export_errors_are_printed_once(addr, tmp_path, capsys):
    bad = json.dumps({"from": "customers", "where": {"regoin": "oulu"}})
    line = fails(capsys, "query", "count", "--addr", addr, "--json", bad)
    assert line.count("has no field 'regoin'") == 1 and line.endswith("[condition.term.field]")
    line = fails(capsys, "export", "--addr", addr, "--json", bad, "--out", tmp_path / "x.csv")
    assert line.count("has no field 'regoin'") == 1 and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("command", [["assign", "--id", "CUST-00001"], ["segments", "list"]])
def test_unreachable_server(command, capsys):
    line = fails(capsys, *command, "--addr", "127.0.0.1:1", "--timeout", "2")
    assert line.startswith("segsrv: error: UNAVAILABLE: ")
