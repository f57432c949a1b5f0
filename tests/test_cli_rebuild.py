"""`segsrv build` over an existing snapshot from the command line: the catalog carried over, its flags,
and the errors (exit status and message)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support import segsrv_cli, write_small_shop

CATALOG = """universe = "customers"
[segments.north_pro]
where = { region = "north", plan = "pro" }
[segments.big_spenders]
where = { spend = { "$gte" = 100 } }
"""


def _segments(version_dir: str) -> list[str]:
    return sorted(json.loads((Path(version_dir) / "manifest.json").read_text())["segments"])


def test_rebuild_flags(tmp_path):
    root = str(tmp_path / "root")
    assert segsrv_cli("build", str(write_small_shop(tmp_path / "v1", 800, seed=1)), "--out", root, "--quiet").returncode == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    assert segsrv_cli("segments", "apply", f"{root}/shop", str(tmp_path / "catalog.toml"), "--quiet").returncode == 0
    current = (tmp_path / "root" / "shop" / "CURRENT").read_text().strip()

    spec = str(write_small_shop(tmp_path / "v2", 800, seed=2, plans=("basic", "plus")))
    failed = segsrv_cli("build", spec, "--out", root)
    assert failed.returncode == 1 and failed.stdout == ""
    assert (f"segsrv: error: the segment catalog of shop/{current} does not carry over to the new data; nothing "
            f"was published, CURRENT still names {current}.") in failed.stderr
    assert "  segments.north_pro: field 'plan' has no value 'pro'" in failed.stderr
    assert (tmp_path / "root" / "shop" / "CURRENT").read_text().strip() == current

    dropped = segsrv_cli("build", spec, "--out", root, "--drop-unresolved-segments", "--no-propensity-models")
    assert dropped.returncode == 0, dropped.stderr
    assert "[build] warning: segment 'north_pro' dropped" in dropped.stderr
    assert _segments(dropped.stdout.strip()) == ["big_spenders"]
    assert "catalog_models" not in json.loads((Path(dropped.stdout.strip()) / "manifest.json").read_text())

    alone = segsrv_cli("build", str(write_small_shop(tmp_path / "v3", 900, seed=3)), "--out", root, "--no-catalog",
                       "--quiet")
    assert alone.returncode == 0 and alone.stderr == "" and _segments(alone.stdout.strip()) == []

    bad = segsrv_cli("build", spec, "--out", root, "--band-tolerance", "1.5")
    assert bad.returncode == 1
    assert bad.stderr == "segsrv: error: band tolerance (--band-tolerance): expected a share of rows 0..1, got 1.5\n"


def test_every_build_and_prune_option_is_documented():
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    for command, doc in (("build", "docs/spec.md"), ("prune", "docs/server.md")):
        text = (repo / doc).read_text()
        usage = segsrv_cli(command, "--help")
        options = sorted(set(re.findall(r"(--[a-z][a-z-]+)", usage.stdout)) - {"--help"})
        assert usage.returncode == 0 and options
        missing = [o for o in options if f"`{o}" not in text or o not in readme]
        assert missing == [], f"{command}: options not documented in {doc} and README.md: {missing}"
