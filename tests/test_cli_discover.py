"""From discovery to use in one flow: `segsrv discover --save` writes a catalog that `segsrv segments apply`
takes as it is; Assign, Export and `segments list` then answer on the discovered segments, and their
numbers equal the brute-force oracle's."""

from __future__ import annotations

import json
import os
import shutil
import tomllib

import numpy as np

from support import segsrv_cli as cli

FIELDS = ["segment", "pet_size", "region", "lifestyle", "health_focus", "orders.lines.product.category"]


def test_discover_save_apply_assign_export(petnord_root, oracle, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(petnord_root, root, copy_function=os.link)  # published files are read-only: links suffice
    snap = root / "petnord"
    catalog = tmp_path / "discovered.toml"
    run = cli("discover", "--local", str(snap), "--from", "customers", "--fields", *FIELDS, "--min-support", "30",
              "--k", "3", "--save", str(catalog), "--format", "json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert "saved" in run.stderr and "segments apply" in run.stderr and "[discover]" in run.stderr
    segments = answer["segments"]
    assert len(segments) >= 3 and answer["segmentation"]["personas"]
    saved = tomllib.loads(catalog.read_text())
    assert saved["universe"] == "customers" and list(saved["segments"]) == \
        sorted((s["name"] for s in segments), key=lambda n: -saved["segments"][n]["priority"])

    applied = cli("segments", "apply", str(snap), str(catalog), "--quiet", "--no-propensity-models")  # no Assign propensities here
    assert applied.returncode == 0, applied.stderr
    listed = json.loads(cli("segments", "list", "--local", str(snap)).stdout)
    sizes = {s["name"]: s["size"] for s in listed}
    bu = oracle.universe("customers")
    masks = {}
    for s in segments:
        m = np.ones(bu.n, dtype=bool)
        for f, v in s["terms"]:
            m &= bu.fields[f].masks[v]
        masks[s["name"]] = m
        assert sizes[s["name"]] == s["support"] == int(m.sum())

    # Assign: a member of the first persona is in it, with the documented primary segment
    ids = np.asarray(bu.ids)
    first = segments[answer["segmentation"]["personas"][0]["segment"]]["name"]
    member = str(ids[np.flatnonzero(masks[first])[0]])
    assigned = json.loads(cli("assign", "--local", str(snap), "--id", member).stdout)
    got = {m["segment"] for m in assigned["assignments"][0]["segments"] if m["member"]}
    assert got == {name for name, m in masks.items() if m[np.flatnonzero(ids == ids[np.flatnonzero(masks[first])[0]])[0]]}

    # Export: the members of a discovered segment, by its catalog name
    out = tmp_path / "members.csv"
    exported = cli("export", "--local", str(snap), "--json", json.dumps({"from": "customers",
                                                                         "where": {"$segment": first}}),
                   "--out", str(out), "--quiet")
    assert exported.returncode == 0, exported.stderr
    got_ids = out.read_text().split()[1:]
    assert sorted(got_ids) == sorted(str(i) for i in ids[masks[first]])


def test_text_output_and_help(petnord_root):
    run = cli("discover", "--local", str(petnord_root), "--from", "customers", "--fields", *FIELDS,
              "--min-support", "30", "--target", "churned=true", "--format", "text", "--quiet")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "target" in lines[0] and "rows" in lines[0]
    assert any(line.strip().startswith("1 ") for line in lines)
    helped = cli("discover", "--help")
    assert "JSON keys" in helped.stdout and "Example" in helped.stdout
    bad = cli("discover", "--local", str(petnord_root), "--from", "customers", "--max-length", "9")
    assert bad.returncode == 1 and "max_length" in bad.stderr
    bad = cli("discover", "--local", str(petnord_root), "--from", "customers", "--weight", "region")
    assert bad.returncode == 1 and "FIELD=WEIGHT" in bad.stderr


def test_query_discover_is_the_same_answer(petnord_root):
    q = json.dumps({"from": "customers", "fields": FIELDS, "min_support": 30, "limit": 5})
    via_query = json.loads(cli("query", "discover", "--local", str(petnord_root), "--json", q).stdout)
    via_discover = json.loads(cli("discover", "--local", str(petnord_root), "--json", q, "--quiet").stdout)
    via_query.pop("elapsed_ms"), via_discover.pop("elapsed_ms")
    assert via_query == via_discover and len(via_query["segments"]) == 5
