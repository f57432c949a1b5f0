"""docs/report.md: every `segsrv report` example and the Python example run as written, against the
PetNord snapshot (`snapshots` links to it; `segsrv build` is the session fixture's build)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from segsrv import cli
from segsrv.server.app import create_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "report.md"
TEXT = DOC.read_text()
COMMANDS = [line for block in re.findall(r"```bash\n(.*?)```", TEXT, re.S) for line in block.splitlines()
            if line.startswith("segsrv report")]
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, re.S)


@pytest.fixture
def docs_dir(tmp_path, petnord_root, monkeypatch):
    (tmp_path / "snapshots").symlink_to(petnord_root)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs_as_written(command, docs_dir, read_report, capsys):
    argv = shlex.split(command)[1:]
    server = None
    if "--addr" in argv:
        server, port = create_server(docs_dir / "snapshots", port=0, max_workers=2)
        server.start()
        argv[argv.index("--addr") + 1] = f"127.0.0.1:{port}"
    try:
        assert cli.main(argv) == 0, capsys.readouterr().err
    finally:
        if server is not None:
            server.stop(0).wait()
    data = read_report(docs_dir / argv[argv.index("--out") + 1])
    assert data["snapshot"] == "petnord" and data["segments"]


def test_python_example_runs_as_written(docs_dir, read_report):
    (code,) = PYTHON
    exec(compile(code, str(DOC), "exec"), {})
    data = read_report(docs_dir / "report.html")
    assert len(data["segments"]) == 5


def test_every_flag_is_documented(capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    flags = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    assert len(flags) > 10
    assert all(f"`{flag}" in TEXT for flag in flags), sorted(f for f in flags if f"`{f}" not in TEXT)
