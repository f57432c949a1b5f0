"""`segsrv diff ROOT/NAME VERSION_A VERSION_B`: report, --json, --segment, --top, --ids-out, errors.

A tiny shop with integer customer ids is built twice (v1-data, v2-data) and
given a segment catalog with `apply_segments` (versions v1, v2); every
expected figure below is counted by hand from the two CSV copies.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segsrv import cli
from segsrv.engine.catalog import apply_segments
from segsrv.snapshot.builder import build_snapshot
from support import TINY_TABLES

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
name = "tiny"

""" + TINY_TABLES + """\
links = { customer = { column = "cust_id", table = "customers", reverse = "orders" } }

[universes.customers]
include = ["*", "orders.channel"]
"""

DATA = {
    "v1": (
        """\
        cust_id,region,age
        1,north,25
        2,south,41
        3,north,30
        4,east,67
        5,south,33
        6,north,52
        7,east,45
        8,north,38
        """,
        """\
        order_id,cust_id,channel
        10,1,web
        11,2,shop
        12,3,web
        13,4,web
        14,6,app
        15,8,web
        """,
    ),
    "v2": (  # 1, 2 gone; 9, 10 new; 4 east -> north, 6 north -> south; order 13 web -> shop
        """\
        cust_id,region,age
        3,north,30
        4,north,67
        5,south,33
        6,south,52
        7,east,45
        8,north,38
        9,north,22
        10,west,50
        """,
        """\
        order_id,cust_id,channel
        12,3,web
        13,4,shop
        14,6,app
        15,8,web
        16,9,web
        17,10,web
        """,
    ),
}

CATALOGS = {
    "v1": {
        "north": {"where": {"region": "north"}, "description": "customers in the north"},
        "web_buyers": {"where": {"orders.channel": "web"}},
        "seniors": {"where": {"age": {"$gte": 60}}},
    },
    "v2": {
        "north": {"where": {"region": "north"}, "description": "customers in the north"},
        "web_buyers": {"where": {"orders.channel": "web"}},
        "west": {"where": {"region": "west"}},
    },
}


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli_diff")
    root = base / "root"
    for version, (customers, orders) in DATA.items():
        data = base / version
        data.mkdir()
        (data / "customers.csv").write_text(textwrap.dedent(customers))
        (data / "orders.csv").write_text(textwrap.dedent(orders))
        (data / "spec.toml").write_text(SPEC)
        build_snapshot(data / "spec.toml", root, version=f"{version}-data", progress=lambda m: None, threads=1)
        apply_segments(root / "tiny", CATALOGS[version], version=version)
    return root / "tiny"


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["diff", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_equals_hand_counts(tiny_versions, capsys):
    code, out, err = run(capsys, tiny_versions, "v1", "v2", "--json", "--min-support", "1",
                         "--field", "orders.channel")
    assert code == 0, err
    obj = json.loads(out)
    assert (obj["snapshot"], obj["version_a"], obj["version_b"], obj["min_support"], obj["top_features"]) == (
        "tiny", "v1", "v2", 1, 10)
    assert obj["universes"] == {"customers": {"n_rows_a": 8, "n_rows_b": 8, "common": 6, "only_a": 2, "only_b": 2}}
    segs = {s["name"]: s for s in obj["segments"]}
    assert list(segs) == ["north", "seniors", "web_buyers", "west"]
    north = segs["north"]
    # v1 north {1,3,6,8}, v2 north {3,4,8,9}
    assert {k: north[k] for k in ("status", "universe", "size_a", "size_b", "share_a", "share_b", "joined", "left",
                                  "stayed", "joined_new", "left_gone", "jaccard", "definition_changed")} == {
        "status": "both", "universe": "customers", "size_a": 4, "size_b": 4, "share_a": 0.5, "share_b": 0.5,
        "joined": 2, "left": 2, "stayed": 2, "joined_new": 1, "left_gone": 1, "jaccard": 2 / 6,
        "definition_changed": False}
    # orders.channel in north: web 3 of 4 (4 of 8 overall) both times; app {6} leaves, shop {4} arrives
    moved = [(m["value"], m["support_a"], m["support_b"], m["lift_a"], m["lift_b"], m["log_ratio"])
             for m in north["moved"]]
    assert moved == [("app", 1, 0, 2.0, 0.0, "-inf"), ("shop", 0, 1, 0.0, 2.0, "inf"), ("web", 3, 3, 1.5, 1.5, 0.0)]
    assert north["n_features_compared"] == 3 and north["new_features"] == [] == north["missing_features"]
    web = segs["web_buyers"]  # v1 {1,3,4,8}, v2 {3,8,9,10}
    assert (web["size_a"], web["size_b"], web["joined"], web["left"], web["stayed"], web["joined_new"],
            web["left_gone"], web["jaccard"]) == (4, 4, 2, 2, 2, 2, 1, 2 / 6)
    # its definition's field, named by --field, is compared (web: 4 of 4, 4 of 8 overall; shop, app: no member)
    assert [(m["value"], m["support_a"], m["support_b"], m["lift_a"], m["lift_b"]) for m in web["moved"]] == [
        ("web", 4, 4, 2.0, 2.0)]
    assert segs["seniors"]["status"] == "removed" and segs["seniors"]["size_a"] == 1 and segs["seniors"]["size_b"] is None
    assert segs["west"]["status"] == "added" and segs["west"]["size_b"] == 1 and segs["west"]["joined"] is None


def test_definition_fields_left_out(tiny_versions, capsys):
    code, out, _ = run(capsys, tiny_versions, "v1", "v2", "--json", "--min-support", "1", "--segment", "web_buyers")
    assert code == 0
    (web,) = json.loads(out)["segments"]
    assert web["moved"] and "orders.channel" not in {m["field"] for m in web["moved"]}
    code, out, _ = run(capsys, tiny_versions, "v1", "v2", "--json", "--min-support", "1", "--segment", "web_buyers",
                       "--include-condition-fields")
    (web,) = json.loads(out)["segments"]
    assert "orders.channel" in {m["field"] for m in web["moved"]}


def test_text_report(tiny_versions, capsys):
    code, out, err = run(capsys, tiny_versions, "v1", "v2", "--segment", "north", "--top", "2",
                         "--min-support", "1", "--format", "table")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[:2] == ["tiny: version v1 (A) -> v2 (B)",
                         "universe customers: 8 -> 8 rows (6 ids in both, 2 only in A, 2 only in B)"]
    assert lines[3:7] == [
        "segment north (customers)",
        "  customers in the north",
        "  size     4 (50.0%) -> 4 (50.0%)",
        "  joined   2 (1 not in A)   left 2 (1 not in B)   stayed 2   Jaccard 0.333",
    ]
    assert lines[7].startswith("  lift moved most (of ") and "support >= 1 in A or B" in lines[7]
    assert lines[8].split() == ["feature", "lift", "A", "lift", "B", "supp", "A", "supp", "B", "delta", "B/A"]
    assert len([line for line in lines if line.startswith("    orders.channel=") or line.startswith("    age=")]) >= 2
    assert lines[-1].startswith("1 segments compared in ")
    code, out, _ = run(capsys, tiny_versions, "v1", "v2", "--segment", "seniors", "--segment", "west", "--format",
                       "table")
    assert "segment seniors (customers)  [removed]\n  size     1 (12.5%) -> -\n" in out
    assert "segment west (customers)  [added]\n  size     - -> 1 (12.5%)\n" in out


def test_ids_out(tiny_versions, capsys, tmp_path):
    out_dir = tmp_path / "ids"
    code, out, err = run(capsys, tiny_versions, "v1", "v2", "--ids-out", out_dir, "--json")
    assert code == 0 and f"[diff] wrote 2 id lists to {out_dir}" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["north.csv", "web_buyers.csv"]
    with open(out_dir / "north.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["id", "change", "note"], ["4", "joined", ""], ["9", "joined", "new"],
                    ["1", "left", "gone"], ["6", "left", ""]]
    with open(out_dir / "web_buyers.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1:] == [["9", "joined", "new"], ["10", "joined", "new"], ["1", "left", "gone"], ["4", "left", ""]]
    json.loads(out)


def test_errors(tiny_versions, capsys, tmp_path):
    code, _, err = run(capsys, tiny_versions, "v1", "v3")
    assert code == 1
    assert err == f"segsrv: error: {tiny_versions}: no version 'v3' (did you mean 'v2', 'v1'?); " \
                  "versions: ['v1', 'v1-data', 'v2', 'v2-data'] (CURRENT is 'v2')\n"
    code, _, err = run(capsys, tiny_versions, "v1", "v2", "--segment", "nort")
    assert code == 1 and "no segment 'nort'" in err and "did you mean 'north'" in err
    code, _, err = run(capsys, tiny_versions, "v1", "v2", "--top", "-1")
    assert code == 1 and "top_features" in err
    code, _, err = run(capsys, tmp_path / "missing", "v1", "v2")
    assert code == 1 and "does not exist" in err
    # a version without a catalog (as built)
    code, out, err = run(capsys, tiny_versions, "v1", "v2-data")
    assert code == 1 and out == ""
    assert err == "segsrv: error: version 'v2-data' of snapshot 'tiny' has no segment catalog; " \
                  "add one with `segsrv segments apply`\n"
    with pytest.raises(SystemExit) as info:
        cli.main(["diff", str(tiny_versions), "v1"])
    assert info.value.code == 2


def test_subprocess(tiny_versions):
    proc = subprocess.run([sys.executable, "-m", "segsrv", "diff", str(tiny_versions.parent), "v1", "CURRENT",
                           "--json", "--segment", "web_buyers"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["version_b"] == "v2" and [s["name"] for s in obj["segments"]] == ["web_buyers"]


def test_format_json_is_the_default_when_piped(tiny_versions, capsys):
    answers = []
    for flags in ([], ["--format", "json"], ["--json"]):
        code, out, _ = run(capsys, tiny_versions, "v1", "v2", "--min-support", "1", *flags)
        assert code == 0
        answer = json.loads(out)
        answer.pop("elapsed_ms")
        answers.append(answer)
    assert answers[0] == answers[1] == answers[2] and answers[0]["segments"][0]["name"] == "north"
