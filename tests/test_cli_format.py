"""`--format table|json` of query, discover, assign, segments list, export and diff: JSON when piped (the
default of a captured run), tables on request; the tables carry the JSON's numbers, which equal a DuckDB
count over the PetNord source tables; every hit names its field and value; each command's --help shows
its JSON keys and an example."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from segsrv import cli
from support import segsrv_cli

CHURNED = {"from": "customers", "where": {"churned": True}, "relate": ["region", "lifestyle"],
           "select": ["$lift", "$support", "region"], "limit": 20}


@pytest.fixture(scope="module")
def brute_relate(petnord_src):
    """(field, value) -> (support, lift) of churned customers, by DuckDB over the source table."""
    out = {}
    for field in ("region", "lifestyle"):
        rows = petnord_src.execute(f"""
            SELECT {field}, count(*) FILTER (WHERE churned) AS n_cf, count(*) AS n_f,
                   (SELECT count(*) FILTER (WHERE churned) FROM customers) AS n_c,
                   (SELECT count(*) FROM customers) AS n
            FROM customers GROUP BY {field}""").fetchall()
        for value, n_cf, n_f, n_c, n in rows:
            out[(field, value)] = (n_cf, (n_cf / n_c) / (n_f / n))
    return out


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_relate_hits_name_field_and_value_when_select_leaves_them_out(petnord_root, brute_relate, capsys):
    code, out, err = run(capsys, "query", "relate", "--local", petnord_root, "--json", json.dumps(CHURNED))
    assert code == 0, err
    hits = json.loads(out)["hits"]  # piped: JSON
    assert hits and {h["$field"] for h in hits} == {"region", "lifestyle"}
    for h in hits:
        assert list(h) == ["$field", "$value", "$lift", "$support", "region"]
        assert h["region"] == (h["$value"] if h["$field"] == "region" else None)
        support, lift = brute_relate[(h["$field"], h["$value"])]
        assert h["$support"] == support and h["$lift"] == pytest.approx(lift, rel=1e-12)


def test_relate_table_has_the_json_numbers(petnord_root, brute_relate, capsys):
    code, out, err = run(capsys, "query", "relate", "--local", petnord_root, "--json", json.dumps(CHURNED),
                         "--format", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("petnord ") and "1,092 of 3,000 rows in the condition" in lines[0]
    assert lines[2].split() == ["field", "value", "lift", "support"]  # the field-name column is not repeated
    rows = [line.split() for line in lines[3:]]
    assert len(rows) == len(json.loads(cli_json(petnord_root, capsys))["hits"])
    for field, value, lift, support in rows:
        n_cf, brute_lift = brute_relate[(field, value)]
        assert int(support.replace(",", "")) == n_cf and float(lift) == pytest.approx(brute_lift, rel=1e-3)
    assert {len(line) for line in lines[2:]} == {len(lines[2])}  # aligned: the last column is right-aligned


def cli_json(root, capsys) -> str:
    assert cli.main(["query", "relate", "--local", str(root), "--json", json.dumps(CHURNED), "--format", "json"]) == 0
    return capsys.readouterr().out


def test_count_and_profile_tables(petnord_root, petnord_src, capsys):
    n = petnord_src.execute("SELECT count(*) FROM customers WHERE region = 'oulu'").fetchone()[0]
    q = json.dumps({"from": "customers", "where": {"region": "oulu"}})
    code, out, _ = run(capsys, "query", "count", "--local", petnord_root, "--json", q, "--format", "table")
    assert code == 0 and out.startswith(f"{n:,} of 3,000 rows ({n / 3000:.1%}) in petnord ")
    assert out.count("\n") == 1
    q = json.dumps({"from": "customers", "segment": {"region": "oulu"}, "fields": ["lifestyle"], "values_per_field": 5})
    code, out, _ = run(capsys, "query", "profile", "--local", petnord_root, "--json", q, "--format", "table")
    assert code == 0
    counts = dict(petnord_src.execute(
        "SELECT lifestyle, count(*) FROM customers WHERE region = 'oulu' GROUP BY 1").fetchall())
    rows = [line.split() for line in out.splitlines() if line.startswith("lifestyle ")]
    assert {r[1]: int(r[3]) for r in rows} == counts and {r[2] for r in rows} <= {"over", "under"}


def test_piped_default_is_json_and_text_is_table(petnord_root):
    done = segsrv_cli("query", "count", "--local", str(petnord_root), "--json", '{"from": "customers"}')
    assert done.returncode == 0 and json.loads(done.stdout)["count"] == 3000
    fields = ["region", "lifestyle", "segment"]
    as_text = segsrv_cli("discover", "--local", str(petnord_root), "--from", "customers", "--fields", *fields,
                         "--min-support", "30", "--quiet", "--format", "text")
    as_table = segsrv_cli("discover", "--local", str(petnord_root), "--from", "customers", "--fields", *fields,
                          "--min-support", "30", "--quiet", "--format", "table")
    assert as_text.returncode == as_table.returncode == 0
    drop_time = lambda text: text.split("\n", 1)[1]  # noqa: E731  (the header line ends with the time taken)
    assert drop_time(as_text.stdout) == drop_time(as_table.stdout) and "  #  size" in as_table.stdout


def test_segments_list_and_assign(petnord_root, petnord_src, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('universe = "customers"\n[segments.oulu]\nwhere = {region = "oulu"}\n'
                       '[segments.premium]\nwhere = {lifestyle = "premium"}\n')
    assert cli.main(["segments", "apply", str(root / "petnord"), str(catalog), "--quiet",
                     "--no-propensity-models"]) == 0
    capsys.readouterr()
    sizes = dict(petnord_src.execute("SELECT 'oulu', count(*) FILTER (WHERE region = 'oulu') FROM customers UNION ALL "
                                     "SELECT 'premium', count(*) FILTER (WHERE lifestyle = 'premium') FROM customers"
                                     ).fetchall())
    code, out, _ = run(capsys, "segments", "list", "--local", root, "--format", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "universe", "size", "share", "priority", "description"]
    assert {r.split()[0]: int(r.split()[2].replace(",", "")) for r in lines[1:]} == sizes
    code, out, _ = run(capsys, "segments", "list", "--local", root)
    assert {s["name"]: s["size"] for s in json.loads(out)} == sizes

    member, = petnord_src.execute("SELECT min(customer_id) FROM customers WHERE region = 'oulu' "
                                  "AND lifestyle <> 'premium'").fetchone()
    code, out, _ = run(capsys, "assign", "--local", root, "--id", member, "--id", "NOBODY", "--format", "table")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows[0] == ["id", "segment", "member", "primary", "propensity", "segment_size", "share"]
    assert rows[1][:6] == [member, "oulu", "true", "true", "-", f"{sizes['oulu']:,}"]
    assert rows[2][:3] == ["NOBODY", "(id", "not"] and len(rows) == 3
    code, out, _ = run(capsys, "assign", "--local", root, "--id", member)
    (answer,) = json.loads(out)["assignments"]
    assert [m["segment"] for m in answer["segments"] if m["member"]] == ["oulu"]


def test_export_summary(petnord_root, petnord_src, tmp_path, capsys):
    n = petnord_src.execute("SELECT count(*) FROM customers WHERE churned").fetchone()[0]
    q = json.dumps({"from": "customers", "where": {"churned": True}})
    out_file = tmp_path / "ids.txt"
    code, out, err = run(capsys, "export", "--local", petnord_root, "--json", q, "--out", out_file,
                         "--ids-format", "jsonl")
    assert code == 0 and err == ""
    assert json.loads(out) == {"out": str(out_file), "format": "jsonl", "rows": n, "matching": n, "ranked": False,
                               "elapsed_s": json.loads(out)["elapsed_s"]}
    assert len(out_file.read_text().splitlines()) == n
    code, out, err = run(capsys, "export", "--local", petnord_root, "--json", q, "--out", out_file,
                         "--ids-format", "csv", "--format", "table")
    assert code == 0 and out.startswith(f"segsrv export: wrote {n:,} rows ({n:,} matching) as csv to {out_file} in ")
    # ids on stdout: the summary on stderr; --format csv is the earlier spelling of --ids-format
    code, out, err = run(capsys, "export", "--local", petnord_root, "--json", q, "--out", "-", "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "id" and len(out.splitlines()) == n + 1
    assert json.loads(err)["rows"] == n
    code, _, err = run(capsys, "export", "--local", petnord_root, "--json", q, "--out", "-", "--format", "csv",
                       "--ids-format", "jsonl")
    assert code == 1 and err == ("segsrv: error: --format csv (the ids' format) disagrees with --ids-format jsonl; "
                                 "give --ids-format alone\n")


def test_export_time_counts_the_ranking(petnord_root, tmp_path, capsys, monkeypatch):
    """The summary's time runs from the start: a ranked export spends it before the first id (the fit)."""
    from segsrv import service

    clock = [1000.0]
    monkeypatch.setattr(cli.time, "perf_counter", lambda: clock[0])
    call = service.SegmentationService.call

    def slow_call(self, query, **kwargs):
        clock[0] += 12.0  # the fit of the ranking model, on the fake clock
        return call(self, query, **kwargs)

    monkeypatch.setattr(service.SegmentationService, "call", slow_call)
    q = json.dumps({"from": "customers", "where": {"lifestyle": "premium"}, "top_k": 5, "target": "churned",
                    "value": True})
    code, out, err = run(capsys, "export", "--local", petnord_root, "--json", q, "--out", tmp_path / "top.csv")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ranked"] and summary["rows"] == 5 and summary["elapsed_s"] == 12.0


def test_demo_data_quiet_says_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "demo-data", "--customers", 200, "--out", tmp_path / "demo", "--quiet")
    assert code == 0 and err == "" and out == f"{tmp_path / 'demo' / 'spec.toml'}\n"
    code, out, err = run(capsys, "demo-data", "--customers", 200, "--out", tmp_path / "demo2")
    assert code == 0 and "[demo] wrote" in err


@pytest.mark.parametrize("command", [["query"], ["discover"], ["assign"], ["export"], ["diff"],
                                     ["segments", "list"]])
def test_help_shows_json_keys_and_an_example(command):
    done = segsrv_cli(*command, "--help")
    assert done.returncode == 0
    assert "JSON keys" in done.stdout and "Example:" in done.stdout and "--format" in done.stdout


def test_score_predict_evaluate_tables_carry_the_json_numbers(petnord_root, petnord_src, capsys):
    score = json.dumps({"from": "customers", "segment": {"region": "oulu"}, "target": "churned", "value": True,
                        "top_k": 4, "method": "factorized"})
    code, lines_json, summary = run(capsys, "query", "score", "--local", petnord_root, "--json", score)
    assert code == 0
    expected = [json.loads(line) for line in lines_json.splitlines()]
    code, out, err = run(capsys, "query", "score", "--local", petnord_root, "--json", score, "--format", "table")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["#", "id", "score"]
    assert [(r[1], float(r[2])) for r in rows[1:]] == [(e["id"], pytest.approx(e["score"], rel=1e-3)) for e in expected]
    n_oulu = petnord_src.execute("SELECT count(*) FROM customers WHERE region = 'oulu'").fetchone()[0]
    assert json.loads(summary)["n_members"] == n_oulu and f"for 4 of {n_oulu:,} members" in err

    predict = json.dumps({"from": "customers", "target": "churned", "evidence": {"region": "oulu"},
                          "method": "factorized"})
    code, out, _ = run(capsys, "query", "predict", "--local", petnord_root, "--json", predict)
    probabilities = {p["value"]: p["probability"] for p in json.loads(out)["probabilities"]}
    code, out, _ = run(capsys, "query", "predict", "--local", petnord_root, "--json", predict, "--format", "table")
    lines = out.splitlines()
    assert "evidence region=oulu" in lines[0] and lines[2].split()[:3] == ["value", "probability", "base"]
    assert {r.split()[0]: float(r.split()[1]) for r in lines[3:]} == {
        v: pytest.approx(p, rel=1e-3) for v, p in probabilities.items()}
    assert all("region=oulu x" in r for r in lines[3:])

    evaluate = json.dumps({"from": "customers", "target": "churned", "method": "factorized"})
    code, out, _ = run(capsys, "query", "evaluate", "--local", petnord_root, "--json", evaluate)
    answer = json.loads(out)
    code, out, _ = run(capsys, "query", "evaluate", "--local", petnord_root, "--json", evaluate, "--format", "table")
    assert f"trained on {answer['n_train']:,} rows, tested on {answer['n_test']:,}" in out
    assert f"accuracy {answer['accuracy']:.4g}" in out and f"calibration of {answer['calibration_of']}:" in out
