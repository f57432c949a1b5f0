"""The CLI commands around snapshots: build (progress on stderr), info, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segsrv import cli
from segsrv.snapshot import format as fmt

REPO = Path(__file__).resolve().parents[2]


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "segsrv", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_build_subprocess_progress_on_stderr(tiny, tmp_path):
    root = tmp_path / "root"
    proc = run("build", tiny, "--out", root, "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1
    vdir = Path(out[0])
    assert vdir.parent == root / "tiny" and (vdir / fmt.MANIFEST).exists()
    assert (root / "tiny" / "CURRENT").read_text() == vdir.name + "\n"
    err = proc.stderr.splitlines()
    assert err and all(line.startswith("[build] ") for line in err), proc.stderr
    text = proc.stderr
    for piece in ("loaded customers: 5 rows", "loaded orders: 6 rows", "keys, links and numeric columns checked",
                  "universe customers:", f"published tiny/{vdir.name}"):
        assert piece in text
    # --quiet: no progress; the same content gives the same version
    proc = run("build", tiny, "--out", tmp_path / "root2", "--quiet")
    assert proc.returncode == 0 and proc.stderr == ""
    assert Path(proc.stdout.strip()).name == vdir.name


def test_build_version_flag(tiny, tmp_path, capsys):
    root = tmp_path / "root"
    assert cli.main(["build", str(tiny), "--out", str(root), "--version", "2024-06-01", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(root / "tiny" / "2024-06-01")
    with open(tiny.parent / "orders.csv", "a") as fh:
        fh.write("16,2,web,a,3\n")
    assert cli.main(["build", str(tiny), "--out", str(root), "--version", "2024-06-01", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "segsrv: error: version '2024-06-01' of 'tiny' exists with different content; " \
                  "choose another --version\n"


def test_build_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["build"])
    assert info.value.code == 2


def test_info(tiny_root, capsys):
    assert cli.main(["info", str(tiny_root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "tiny" and info["description"] == "tiny test shop"
    cu = info["universes"]["customers"]
    assert (cu["table"], cu["key"], cu["n_rows"]) == ("customers", "cust_id", 5)
    assert cu["n_dense"] + cu["n_sparse"] == cu["n_features"]
    assert cu["fields"]["region"] == {"kind": "categorical", "semantics": "own", "n_values": 3}
    assert cu["fields"]["age"]["edges"] == [30.0, 50.0]
    assert cu["fields"]["orders.tags"]["semantics"] == "exists"
    assert info["universes"]["orders"]["fields"]["customer.region"]["semantics"] == "forward"
    assert cli.main(["info", str(tiny_root), "--universe", "orders", "--values"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info["universes"]) == ["orders"]
    assert info["universes"]["orders"]["fields"]["channel"]["values"] == {"app": 1, "shop": 1, "web": 4}
    assert info["universes"]["orders"]["fields"]["tags"]["values"] == {"a": 3, "b": 3, "c": 2}
    assert info["universes"]["orders"]["fields"]["total"]["values"] == {"<10": 3, ">=10": 3}


def test_info_errors(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segsrv: error: ") and err.count("\n") == 1 and "does not exist" in err


def test_verify_ok(tiny_root, capsys):
    assert cli.main(["verify", str(tiny_root / "tiny")]) == 0
    out = capsys.readouterr().out
    v = (tiny_root / "tiny" / "CURRENT").read_text().strip()
    assert out.startswith(f"ok: tiny/{v}: ") and "checksums match" in out
    n_files = len(json.loads((tiny_root / "tiny" / v / fmt.MANIFEST).read_text())["files"])
    assert f"{n_files} files" in out


def test_verify_corrupt_copy(tiny_copy, capsys):
    v = tiny_copy / "tiny" / (tiny_copy / "tiny" / "CURRENT").read_text().strip()
    path = v / "universes" / "orders" / "csr_indptr.bin"
    raw = bytearray(path.read_bytes())
    raw[fmt.HEADER_BYTES + 8] ^= 0x80  # indptr[1]: only the checksum can tell
    path.write_bytes(bytes(raw))
    # every command that opens a snapshot checks every byte first, not only `verify`
    for command in (["info", str(tiny_copy)], ["verify", str(tiny_copy)],
                    ["query", "count", "--local", str(tiny_copy), "--json", '{"where": {}}']):
        assert cli.main(command) == 1, command
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("segsrv: error: ") and captured.err.count("\n") == 1
        assert "csr_indptr.bin: checksum mismatch" in captured.err


def test_verify_subprocess(tiny_copy):
    proc = run("verify", tiny_copy, "--version", (tiny_copy / "tiny" / "CURRENT").read_text().strip())
    assert proc.returncode == 0 and proc.stdout.startswith("ok: tiny/")
    proc = run("verify", tiny_copy, "--version", "nope")
    assert proc.returncode == 1 and proc.stderr.startswith("segsrv: error: ") and "'nope'" in proc.stderr


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, like a full disk
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_build_that_cannot_write_says_what_failed_and_leaves_nothing(tiny_root, tiny, tmp_path):
    """A full disk (here: a file size limit, which fails writes the same way) is one clear line, not a
    traceback; the root keeps exactly what it had."""
    from support import root_state

    root = tmp_path / "root"
    import shutil

    shutil.copytree(tiny_root, root)
    before = root_state(root)
    (tiny.parent / "customers.csv").write_text((tiny.parent / "customers.csv").read_text() + "6,Fay,west,50\n")
    proc = subprocess.run([sys.executable, "-m", "segsrv", "build", str(tiny), "--out", str(root)],
                          capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=_file_size_limit(2048))
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("segsrv: error:")]
    assert "Traceback" not in proc.stderr and len(error) == 1, proc.stderr
    assert "cannot write the snapshot under" in error[0] and "File too large" in error[0]
    assert "nothing was published and the partial build was removed" in error[0]
    assert root_state(root) == before


def test_build_on_a_full_disk(tiny, tmp_path, monkeypatch):
    import errno

    from segsrv.errors import BuildError
    from segsrv.snapshot.builder import build_snapshot

    real = fmt.write_array
    calls = []

    def full_disk(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, array)

    monkeypatch.setattr(fmt, "write_array", full_disk)
    with pytest.raises(BuildError, match="No space left on device") as info:
        build_snapshot(tiny, tmp_path / "root", progress=lambda m: None)
    assert str(calls[2]) in str(info.value)
    assert not (tmp_path / "root" / "tiny").exists()
