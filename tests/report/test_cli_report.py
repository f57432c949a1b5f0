"""`segsrv report`: over a snapshot directory and over --addr against a real server, the same page data;
progress on stderr; errors that say which flag and why."""

from __future__ import annotations

import json

import pytest

from support import CHURN_MODEL
from segsrv import cli
from segsrv.server.app import create_server


@pytest.fixture(scope="module")
def served_report_root(report_root):
    # privacy floor off, as `--local` (local_service) has it: the two must give the same numbers
    server, port = create_server(report_root[0], port=0, max_workers=2, privacy_k=0)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.mark.parametrize("segments", ["catalog", "discover"])
def test_addr_equals_local(report_root, served_report_root, tmp_path, read_report, capsys, segments):
    root, _, _ = report_root
    common = ["--segments", segments, "--from", "customers", "--max-segments", "4", "--max-fields", "3",
              "--evaluate", json.dumps(CHURN_MODEL)]
    # declared models are read from the manifest in-process only, so the local run leaves them out too
    assert cli.main(["report", str(root / "petnord"), "--out", str(tmp_path / "local.html"),
                     "--no-declared-models", *common]) == 0
    local_err = capsys.readouterr().err
    assert cli.main(["report", "--addr", served_report_root, "--out", str(tmp_path / "remote.html"), *common]) == 0
    remote_err = capsys.readouterr().err
    local, remote = read_report(tmp_path / "local.html"), read_report(tmp_path / "remote.html")
    assert remote == local
    assert local["segments_source"] == segments
    assert len(local["segments"]) == (4 if segments == "discover" else 3)  # the catalog holds 3
    assert [m["source"] for m in local["models"]] == ["--evaluate"]
    for err in (local_err, remote_err):
        assert "[report] profile 1/" in err and f"[report] wrote {tmp_path}" in err


def test_declared_models_in_process(report_root, tmp_path, read_report, capsys):
    root, _, _ = report_root
    out = tmp_path / "r.html"
    assert cli.main(["report", str(root / "petnord"), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    data = read_report(out)
    assert [(m["name"], m["source"]) for m in data["models"]] == [("churn", "declared")]


@pytest.mark.parametrize("args, message", [
    (["--out", "x.html"], "report: give the snapshot as ROOT[/NAME] or a server as --addr HOST:PORT (one of them)"),
    (["--addr", "127.0.0.1:1", "--compare", "v1", "--out", "x.html"],
     "--compare VERSION: drift is computed from the snapshot's files"),
    (["ROOT", "--segments", "discover", "--discover", "[1]", "--out", "x.html"],
     "--discover: '[1]' is neither inline JSON (starting with '{') nor an existing file"),
    (["ROOT", "--evaluate", '{"target": ', "--out", "x.html"], "--evaluate: not valid JSON"),
])
def test_usage_errors(report_root, tmp_path, capsys, args, message):
    paths = {"ROOT": str(report_root[0] / "petnord"), "x.html": str(tmp_path / "x.html")}
    args = [paths.get(a, a) for a in args]
    assert cli.main(["report", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segsrv: error: ") and message in err
    assert not (tmp_path / "x.html").exists()
