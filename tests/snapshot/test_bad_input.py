"""Bad input is reported, not guessed, and a failed build leaves nothing behind.

Each case starts from the tiny dataset (conftest) with a good version already
published, breaks one thing and checks: the exception class, the message
(table, column, offending rows, suggestion), and that the snapshot root is
byte-for-byte what it was (no .build-* directory, no new version, CURRENT
unchanged). The same cases run through the CLI (exit 1, one line
`segsrv: error: ...`) and into a fresh root (no NAME directory left).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from segsrv import cli
from segsrv.errors import BuildError, SpecError
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from support import quiet

REPO = Path(__file__).resolve().parents[2]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


# name -> (mutation of the data dir, exception class, regexes the message must match)
CASES = {
    "missing_file": (
        lambda d: _edit(d / "spec.toml", 'file = "orders.csv"', 'file = "ordres.csv"'),
        BuildError, [r"^table 'orders': file '.*ordres\.csv' does not exist$"],
    ),
    "missing_column": (
        lambda d: _edit(d / "spec.toml", 'categorical = ["region"]', 'categorical = ["regoin"]'),
        BuildError, [r"table 'customers'", r"column 'regoin' \(categorical\) not found",
                     r"did you mean 'region'\?", r"columns \['cust_id', 'name', 'region', 'age'\]"],
    ),
    "missing_link_column": (
        lambda d: _edit(d / "spec.toml", 'column = "cust_id"', 'column = "custid"'),
        BuildError, [r"table 'orders'", r"column 'custid' \(links\.customer\.column\) not found",
                     r"did you mean 'cust_id'\?"],
    ),
    "dangling_link": (
        lambda d: _append(d / "orders.csv", "16,99,web,a,1\n17,98,web,a,1\n18,99,app,,2\n"),
        BuildError, [r"table 'orders'", r"column 'cust_id'", r"link 'customer' -> customers\.cust_id",
                     r"3 values with no matching key in 'customers'",
                     r"e\.g\. order_id=16 -> 99, order_id=17 -> 98, order_id=18 -> 99$"],
    ),
    "duplicate_keys": (
        lambda d: _append(d / "customers.csv", "2,Bo2,south,40\n4,Dee2,east,1\n4,Dee3,east,2\n"),
        BuildError, [r"table 'customers'", r"key column 'cust_id' has 2 duplicate values",
                     r"e\.g\. 4 \(3 rows\), 2 \(2 rows\)$"],
    ),
    "null_keys": (
        lambda d: _append(d / "customers.csv", ",Zed,north,30\n,Zoe,south,31\n"),
        BuildError, [r"^table 'customers': key column 'cust_id' is empty in 2 rows$"],
    ),
    "unparsable_numbers": (
        lambda d: (_edit(d / "customers.csv", "3,Cid,north,", "3,Cid,north,old"),
                   _edit(d / "customers.csv", "5,Eve,south,33", "5,Eve,south,n/a")),
        BuildError, [r"table 'customers'", r"numeric column 'age' has 2 unparsable values",
                     r"cust_id=3: 'old', cust_id=5: 'n/a' \(values that mark a missing number go in the table's "
                     r"null_values\)$"],
    ),
    "unknown_column_in_path": (
        lambda d: _edit(d / "spec.toml", '"orders.channel"', '"orders.chanel"'),
        SpecError, [r"universes\.customers\.include", r"unknown path 'orders\.chanel'",
                    r"table 'orders' has no feature column 'chanel'", r"did you mean 'channel'\?"],
    ),
    "unknown_link_in_path": (
        lambda d: _edit(d / "spec.toml", '"orders.tags"', '"ordrs.tags"'),
        SpecError, [r"universes\.customers\.include", r"unknown path 'ordrs\.tags'",
                    r"table 'customers' has no link 'ordrs'", r"did you mean 'orders'\?",
                    r"links from 'customers': \['orders'\]"],
    ),
    "path_ends_at_link": (
        lambda d: _edit(d / "spec.toml", '"customer.*"', '"customer"'),
        SpecError, [r"universes\.orders\.include", r"'customer' is a link of table 'orders', not a column",
                    r"e\.g\. 'customer\.region'"],
    ),
    "glob_matches_nothing": (
        lambda d: _edit(d / "spec.toml", '"orders.tags"', '"orders.x*"'),
        SpecError, [r"^universes\.customers\.include: pattern 'orders\.x\*' matches no field$"],
    ),
    "exclude_not_included": (
        lambda d: _edit(d / "spec.toml", 'include = ["*", "customer.*"]',
                        'include = ["*", "customer.*"]\nexclude = ["customer.regoin"]'),
        SpecError, [r"universes\.orders\.exclude: 'customer\.regoin' is not an included field",
                    r"did you mean 'customer\.region'"],
    ),
    "bad_toml": (
        lambda d: _append(d / "spec.toml", "\n[build\n"),
        SpecError, [r"spec\.toml: not valid TOML"],
    ),
    "unknown_top_key": (
        lambda d: _edit(d / "spec.toml", "description =", "descripton ="),
        SpecError, [r"^spec: unknown key 'descripton' \(did you mean 'description'\?\)"],
    ),
    "unknown_table_key": (
        lambda d: _edit(d / "spec.toml", 'key = "order_id"', 'key = "order_id"\ncategorcal = ["x"]'),
        SpecError, [r"^tables\.orders: unknown key 'categorcal' \(did you mean 'categorical'\?\)"],
    ),
    "link_to_undeclared_table": (
        lambda d: _edit(d / "spec.toml", 'table = "customers"', 'table = "custmers"'),
        SpecError, [r"^tables\.orders\.links\.customer\.table: unknown table 'custmers' "
                    r"\(did you mean 'customers'\?\)$"],
    ),
    "sql_fails": (
        lambda d: _append(d / "spec.toml", '\n[tables.bad]\nsql = "SELECT nope FROM customers"\nkey = "nope"\n'),
        BuildError, [r"^table 'bad': sql failed: "],
    ),
    "unreadable_file": (
        lambda d: ((d / "orders.parquet").write_bytes(b"PAR1 not really a parquet file"),
                   _edit(d / "spec.toml", 'file = "orders.csv"', 'file = "orders.parquet"')),
        BuildError, [r"^table 'orders': cannot read '.*orders\.parquet'"],
    ),
}


def _check_message(exc: Exception, patterns) -> None:
    msg = str(exc)
    # one line, or DuckDB's own details (a CSV error's possible fixes) indented under it
    assert all(line.startswith("  ") for line in msg.splitlines()[1:]), f"detail lines must be indented: {msg!r}"
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not in {msg!r}"


@pytest.fixture
def published(tiny, tmp_path):
    """(data dir, root) with a good version of the tiny snapshot already published."""
    root = tmp_path / "root"
    vdir = build_snapshot(tiny, root, progress=quiet)
    return tiny.parent, root, vdir


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_leaves_nothing(case, published, snapshot_state):
    mutate, cls, patterns = CASES[case]
    data, root, vdir = published
    before = snapshot_state(root)
    mutate(data)
    with pytest.raises(cls) as info:
        build_snapshot(data / "spec.toml", root, progress=quiet)
    assert type(info.value) is cls
    _check_message(info.value, patterns)
    assert snapshot_state(root) == before
    assert not list(root.rglob(".build-*"))
    # the good version is still current and intact
    snap = open_snapshot(root, verify="full")
    assert snap.path == vdir


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fresh_root(case, tiny, tmp_path):
    mutate, cls, patterns = CASES[case]
    mutate(tiny.parent)
    root = tmp_path / "fresh"
    with pytest.raises(cls) as info:
        build_snapshot(tiny, root, progress=quiet)
    _check_message(info.value, patterns)
    assert not (root / "tiny").exists()
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize("case", ["missing_column", "dangling_link", "duplicate_keys", "unknown_link_in_path",
                                  "bad_toml", "link_to_undeclared_table"])
def test_bad_input_cli(case, published, snapshot_state, capsys):
    mutate, _, patterns = CASES[case]
    data, root, _ = published
    before = snapshot_state(root)
    mutate(data)
    rc = cli.main(["build", str(data / "spec.toml"), "--out", str(root), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("segsrv: error: "), err
    _check_message(Exception(lines[0][len("segsrv: error: "):]), patterns)
    assert snapshot_state(root) == before


def test_bad_input_cli_subprocess(published, snapshot_state):
    data, root, _ = published
    before = snapshot_state(root)
    CASES["dangling_link"][0](data)
    proc = subprocess.run(
        [sys.executable, "-m", "segsrv", "build", str(data / "spec.toml"), "--out", str(root)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("[build]")]
    assert len(errors) == 1 and errors[0].startswith("segsrv: error: table 'orders': column 'cust_id'"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot_state(root) == before


def test_missing_spec_file(tmp_path, capsys):
    with pytest.raises(SpecError, match=r"spec file '.*nope\.toml' does not exist"):
        build_snapshot(tmp_path / "nope.toml", tmp_path / "root", progress=quiet)
    assert not (tmp_path / "root").exists()
    assert cli.main(["build", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "root")]) == 1
    assert capsys.readouterr().err.startswith("segsrv: error: spec file ")


def test_interrupted_build_leaves_nothing(published, snapshot_state):
    """Any exception (here from the progress callback, mid-build) cleans up the temporary directory."""
    data, root, _ = published
    before = snapshot_state(root)
    _append(data / "customers.csv", "6,Fay,west,50\n")  # new content -> would be a new version

    def boom(msg):
        if msg.startswith("universe"):
            assert list((root / "tiny").glob(".build-*")), "the build writes into .build-*"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_snapshot(data / "spec.toml", root, progress=boom)
    assert snapshot_state(root) == before


def test_successful_build_after_failure(published, snapshot_state):
    data, root, vdir = published
    _append(data / "customers.csv", "1,Dup,north,1\n")
    with pytest.raises(BuildError):
        build_snapshot(data / "spec.toml", root, progress=quiet)
    _edit(data / "customers.csv", "1,Dup,north,1\n", "6,Fay,west,50\n")
    v2 = build_snapshot(data / "spec.toml", root, progress=quiet)
    assert v2 != vdir and vdir.exists()
    assert (root / "tiny" / "CURRENT").read_text().strip() == v2.name
    assert open_snapshot(root).universes["customers"].n_rows == 6
