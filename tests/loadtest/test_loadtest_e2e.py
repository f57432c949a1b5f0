"""End to end: short load tests against a PetNord server running in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.loadtest.cli import main as cli_main
from clients.loadtest.report import validate_report
from clients.loadtest.runner import LoadConfig, prepare, run_load
from clients.loadtest.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "clients" / "loadtest"
SMOKE = LOADTEST / "scenarios" / "smoke.toml"


def _run_cli(*args, timeout=90):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(LOADTEST / "run.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_closed_loop_inline_has_no_errors_and_consistent_counts(loadtest_server, petnord_catalog):
    from clients.loadtest.report import build_report

    sc = load_scenario(SMOKE)
    cfg = LoadConfig(addr=loadtest_server, mode="closed", concurrency=4, duration_s=2.0, connections=2)
    plan = prepare(cfg, sc, petnord_catalog)
    assert [j.concurrency for j in plan.jobs] == [4]
    res = run_load(plan)
    rep = build_report(res.samples, tool="segsrv-loadtest", target=loadtest_server, duration_s=2.0,
                       scenario=sc.to_json(), snapshot=petnord_catalog.to_json(), config={"mode": "closed"},
                       generator=res.meta)
    validate_report(rep)
    o = rep["overall"]
    assert o["errors"] == 0, {m: s["errors_by_code"] for m, s in rep["methods"].items()}
    assert set(rep["methods"]) == {"relate", "count", "predict"}
    assert o["requests"] == sum(s["requests"] for s in rep["methods"].values()) == res.samples.seen
    assert o["requests"] >= 20
    for m, share in sc.shares.items():
        assert rep["methods"][m]["requests"] > 0
        assert abs(rep["methods"][m]["requests"] / o["requests"] - share) < 0.15
    # completions inside the window: every request but the last in flight per caller
    done = sum(rep["timeseries"]["throughput_rps"]["overall"])
    assert o["requests"] - 4 <= done <= o["requests"]
    assert res.meta["wall_s"][0] >= 2.0


def test_open_loop_threads_backend_keeps_the_schedule(loadtest_server, petnord_catalog):
    sc = load_scenario(SMOKE)
    cfg = LoadConfig(addr=loadtest_server, mode="open", rate=40, duration_s=1.0, backend="threads", warmup_s=0.5)
    res = run_load(prepare(cfg, sc, petnord_catalog))
    s = res.samples
    assert s.seen == 40 and all(code == 0 for code in s.code)  # 60 scheduled, the 20 of the warm-up dropped
    assert 0 <= min(s.t_send) and max(s.t_send) < 1.0
    assert all(lag >= 0 for lag in s.lag)  # never sent ahead of the schedule


def test_open_loop_two_processes_via_the_cli(loadtest_server, tmp_path):
    out = tmp_path / "out"
    r = _run_cli("--addr", loadtest_server, "--scenario", SMOKE, "--weights", "assign=1", "--duration", 1,
                 "--rate", 60, "--processes", 2, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    assert rep["config"]["mode"] == "open" and rep["config"]["processes"] == 2
    # a fixed timeline: exactly rate x duration requests were scheduled, each answered
    assert rep["overall"]["requests"] == 60
    assert set(rep["methods"]) == {"relate", "count", "predict", "assign"}
    for m in ("relate", "count", "predict"):
        assert rep["methods"][m]["errors"] == 0, rep["methods"][m]["errors_by_code"]
    # Assign: UNIMPLEMENTED until it lands, then OK
    assert set(rep["methods"]["assign"]["errors_by_code"]) <= {"UNIMPLEMENTED"}
    for f in ("report.png", "summary.txt", "snapshot-info.json", "requests/relate.json", "requests/assign.json"):
        assert (out / f).exists(), f
    ok = subprocess.run([sys.executable, str(LOADTEST / "validate.py"), str(out / "report.json"),
                         "--methods", "relate,count,predict"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_errors_are_counted_by_code_and_fail_the_run(loadtest_server, tmp_path):
    scen = tmp_path / "bad-ids.toml"
    scen.write_text('[ids]\npattern = "NOPE-{n}"\n[methods.count]\nweight = 1\n'
                    '[methods.predict]\nweight = 1\nid_fraction = 1.0\n')
    out = tmp_path / "out"
    rc = cli_main(["--addr", loadtest_server, "--scenario", str(scen), "--duration", "1", "--concurrency", "2",
                   "--out", str(out), "--quiet", "--no-plot", "--fail-on-errors"])
    assert rc == 3
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"]["count"]["errors"] == 0
    p = rep["methods"]["predict"]
    assert p["requests"] > 0 and p["errors_by_code"] == {"NOT_FOUND": p["requests"]}
    bad = subprocess.run([sys.executable, str(LOADTEST / "validate.py"), str(out / "report.json"), "--max-errors", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--duration", "3601"], "--duration: 3601 is above the limit 3600"),
    (["--rate", "50000"], "--rate: 50000 is above the limit 20000"),
    (["--concurrency", "5000"], "--concurrency: 5000 is above the limit 1024"),
    (["--processes", "64"], "--processes: 64 is above the limit 16"),
    (["--connections", "65"], "--connections: 65 is above the limit 64"),
    (["--duration", "0"], "--duration: must be above 0"),
    (["--addr", "10.1.2.3:50051"], "not a loopback address"),
    (["--addr", "nohostport"], "expected HOST:PORT"),
    (["--weights", "relate=0,count=0,predict=0,assign=0"], "every method has weight 0"),
    (["--scenario", "/nonexistent.toml"], "cannot read scenario"),
])
def test_bounds_are_refused(args, message, tmp_path, capsys):
    assert cli_main(["--out", str(tmp_path), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_override_limits_lifts_the_bounds_without_changing_the_target(tmp_path, capsys):
    from clients.loadtest.cli import check_args, parser

    a = parser().parse_args(["--out", str(tmp_path), "--duration", "7200", "--override-limits"])
    check_args(a)
    assert a.addr == "127.0.0.1:50051" and a.concurrency == 16


@pytest.mark.skipif(not (LOADTEST / "bin" / "ghz").exists(), reason="ghz not installed (clients/loadtest/install_ghz.sh)")
def test_ghz_with_the_same_scenario(loadtest_server, tmp_path):
    out = tmp_path / "out"
    rc = cli_main(["--addr", loadtest_server, "--scenario", str(SMOKE), "--duration", "1", "--concurrency", "3",
                   "--out", str(out), "--quiet", "--no-plot", "--ghz"])
    assert rc == 0
    ours = json.loads((out / "report.json").read_text())
    ghz = json.loads((out / "ghz" / "report.json").read_text())
    validate_report(ghz)
    assert ghz["tool"] == "ghz" and set(ghz["methods"]) == set(ours["methods"]) == {"relate", "count", "predict"}
    assert ghz["overall"]["errors"] == 0 and ghz["overall"]["requests"] > 0
    cmp = json.loads((out / "comparison.json").read_text())
    assert cmp["tools"] == ["segsrv-loadtest", "ghz"]
    # ghz sent the very requests of our pools
    data = json.loads((out / "ghz" / "work" / "data-count.json").read_text())
    assert data == json.loads((out / "requests" / "count.json").read_text())


def test_ci_smoke_script(loadtest_server, tmp_path):
    env = dict(os.environ, SEGSRV_ADDR=loadtest_server, LOADTEST_DURATION="1", LOADTEST_PLOT="0", LOADTEST_OUT=str(tmp_path / "smoke"))
    r = subprocess.run(["bash", str(LOADTEST / "ci_smoke.sh")], capture_output=True, text=True, env=env, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validate:" in r.stdout and (tmp_path / "smoke" / "report.json").exists()
    env.pop("SEGSRV_ADDR")
    r = subprocess.run(["bash", str(LOADTEST / "ci_smoke.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode != 0 and "SEGSRV_ADDR" in r.stderr
