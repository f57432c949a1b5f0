"""The report JSON follows its schema; the validator catches broken ones; ghz output converts."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from clients.loadtest.ghz import method_loads, parse_go_time, samples_from_ghz
from clients.loadtest.report import (SCHEMA, ReportError, build_report, comparison, comparison_table, load_report,
                                     summary_table, validate_report, write_report)
from clients.loadtest.stats import Samples


def _report(tool="segsrv-loadtest") -> dict:
    s = Samples(["relate", "count", "assign"])
    rng = np.random.default_rng(1)
    for i in range(600):
        m = i % 3
        s.add(m, i / 200, float(rng.exponential(0.005)), 12 if m == 2 else 0, 0.0001)
    return build_report(s, tool=tool, target="127.0.0.1:1", duration_s=3.0, scenario={"name": "t"},
                        snapshot={"snapshot": "petnord", "universe": "customers"},
                        config={"mode": "open", "rate": 200.0, "processes": 1, "connections": 1},
                        generator={"cpu_s": [0.5], "wall_s": [3.1], "late_sends": 0})


def test_report_schema_and_counts():
    rep = _report()
    validate_report(rep)
    assert rep["schema"] == SCHEMA
    assert set(rep["methods"]) == {"relate", "count", "assign"}
    o = rep["overall"]
    assert o["requests"] == 600 and o["ok"] == 400 and o["errors"] == 200
    assert o["errors_by_code"] == {"UNIMPLEMENTED": 200}
    assert rep["methods"]["assign"]["errors_by_code"] == {"UNIMPLEMENTED": 200}
    assert rep["methods"]["relate"]["errors_by_code"] == {}
    assert o["throughput_rps"] == 200.0 and o["ok_rps"] == pytest.approx(133.333, abs=1e-3)
    assert set(o["latency_ms"]) == {"min", "mean", "p50", "p90", "p99", "p99.9", "max"}
    assert rep["generator"]["cpu_us_per_request"] == pytest.approx(0.5 / 600 * 1e6, rel=1e-3)
    assert rep["generator"]["send_lag_ms"]["p50"] == pytest.approx(0.1)
    ts = rep["timeseries"]
    assert len(ts["t"]) == 3 and set(ts["throughput_rps"]) == {"overall", "relate", "count", "assign"}
    json.dumps(rep, allow_nan=False)  # plain JSON


BREAKS = [
    (lambda r: r.update(schema="v0"), "schema"),
    (lambda r: r.pop("overall"), "missing 'overall'"),
    (lambda r: r["overall"].update(ok=1), "ok \\+ errors != requests"),
    (lambda r: r["methods"]["relate"]["latency_ms"].pop("p99.9"), "missing 'p99.9'"),
    (lambda r: r["methods"]["relate"]["latency_ms"].update(p50=1e9), "not ascending"),
    (lambda r: r["methods"]["assign"]["errors_by_code"].update(UNIMPLEMENTED=1), "does not add up"),
    (lambda r: r["methods"]["assign"]["errors_by_code"].update(TEAPOT=1), "unknown code 'TEAPOT'"),
    (lambda r: r["methods"].pop("count"), "not the sum over methods"),
    (lambda r: r["timeseries"]["throughput_rps"]["relate"].pop(), "length differs"),
    (lambda r: r.update(duration_s=0), "duration_s"),
    (lambda r: r["overall"].update(throughput_rps=float("nan")), "throughput_rps"),
]


@pytest.mark.parametrize("breaker,message", BREAKS, ids=[m for _, m in BREAKS])
def test_validator_catches_broken_reports(breaker, message):
    rep = copy.deepcopy(_report())
    breaker(rep)
    with pytest.raises(ReportError, match=message):
        validate_report(rep)


def test_write_load_and_tables(tmp_path):
    rep = _report()
    path = write_report(rep, tmp_path / "r" / "report.json")
    assert load_report(path) == json.loads(path.read_text())
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ReportError, match="not JSON"):
        load_report(tmp_path / "bad.json")
    table = summary_table(rep)
    for word in ("relate", "count", "assign", "overall", "p99.9", "UNIMPLEMENTED 200"):
        assert word in table
    cmp = comparison({"segsrv-loadtest": rep, "ghz": _report("ghz")})
    assert cmp["tools"] == ["segsrv-loadtest", "ghz"] and set(cmp["methods"]) == {"relate", "count", "assign", "overall"}
    assert cmp["methods"]["overall"]["ghz"]["requests"] == 600
    assert "ghz" in comparison_table(cmp)


def test_plot_writes_a_png(tmp_path):
    from clients.loadtest.plot import plot_report

    path = plot_report(_report(), tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_ghz_output_converts_to_samples():
    t = "2026-01-02T03:04:05.{:09d}Z"
    raw = {
        "relate": {"details": [
            {"timestamp": t.format(500_000_000), "latency": 2_000_000, "error": "", "status": "OK"},
            {"timestamp": t.format(900_000_000), "latency": 4_000_000, "error": "", "status": "OK"},
        ]},
        "assign": {"details": [
            {"timestamp": t.format(600_000_000), "latency": 1_000_000,
             "error": "rpc error: code = Unimplemented desc = x", "status": "Unimplemented"},
        ]},
    }
    s = samples_from_ghz(raw, ["relate", "assign"])
    assert s.seen == 3
    assert s.counts == {(0, 0): 2, (1, 12): 1}
    assert min(s.t_send) == 0.0  # the earliest send is the origin
    assert sorted(round(x * 1e3, 6) for x in s.latency) == [1.0, 2.0, 4.0]
    assert parse_go_time("2026-01-02T03:04:05Z") + 0.25 == parse_go_time("2026-01-02T03:04:05.25Z")
    assert parse_go_time("2026-01-02T05:04:05.5+02:00") == parse_go_time("2026-01-02T03:04:05.5Z")


def test_ghz_load_split_follows_the_weights():
    shares = {"relate": 0.4, "count": 0.3, "predict": 0.2, "assign": 0.1}
    closed = method_loads(shares, mode="closed", rate=0, concurrency=20, connections=4)
    assert {m: v["concurrency"] for m, v in closed.items()} == {"relate": 8, "count": 6, "predict": 4, "assign": 2}
    assert all(v["rps"] == 0 and 1 <= v["connections"] <= v["concurrency"] for v in closed.values())
    assert sum(v["concurrency"] for v in closed.values()) == 20
    # with our mean latencies: callers in proportion to share x latency (Little's law), at least 1 each
    little = method_loads(shares, mode="closed", rate=0, concurrency=8, connections=1,
                          mean_latency_ms={"relate": 200, "count": 30, "predict": 100, "assign": 30})
    assert {m: v["concurrency"] for m, v in little.items()} == {"relate": 5, "count": 1, "predict": 1, "assign": 1}
    opened = method_loads(shares, mode="open", rate=100, concurrency=16, connections=1)
    assert {m: v["rps"] for m, v in opened.items()} == {"relate": 40, "count": 30, "predict": 20, "assign": 10}


def test_relative_paths_name_no_machine(tmp_path):
    from clients.loadtest.report import REPO, relative_paths

    doc = {"scenario": {"path": f"{REPO}/clients/loadtest/scenarios/default.toml"},
           "work": [f"{tmp_path}/ghz/work", "copy of " + f"{REPO}/bench/.data/x"], "n": 3, "other": "/elsewhere/x"}
    assert relative_paths(doc, tmp_path) == {"scenario": {"path": "clients/loadtest/scenarios/default.toml"},
                                             "work": ["ghz/work", "copy of bench/.data/x"], "n": 3,
                                             "other": "/elsewhere/x"}
