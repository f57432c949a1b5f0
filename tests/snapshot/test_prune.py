"""`segsrv prune ROOT/NAME --keep N` (segsrv.snapshot.prune): the newest N versions and CURRENT stay, the
others go, each atomically; staging directories are never touched; bad N and unknown names are errors."""

from __future__ import annotations

import os
import re

import pytest

from segsrv.engine.catalog import apply_segments
from segsrv.errors import SegsrvError, SnapshotNotFoundError
from segsrv.snapshot import prune as P
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.location import list_versions
from segsrv.snapshot.prune import prune_versions, published_order
from segsrv.snapshot.publish import point_current
from segsrv.snapshot.reader import open_snapshot
from support import quiet, segsrv_cli, write_small_shop


@pytest.fixture
def four_versions(tmp_path):
    """ROOT/shop with versions published at t = 1000, 2000, 3000, 4000 s (oldest first), CURRENT the
    oldest, and a staging directory of a build in progress: (snapshot dir, versions oldest first)."""
    root = tmp_path / "root"
    versions = []
    for i in range(4):
        vdir = build_snapshot(write_small_shop(tmp_path / f"d{i}", 200 + i, seed=i), root, progress=quiet)
        os.utime(vdir / "manifest.json", (1000 * (i + 1), 1000 * (i + 1)))
        versions.append(vdir.name)
    shop = root / "shop"
    point_current(shop, versions[0])
    (shop / ".build-1-0123abcd").mkdir()  # a build writing right now
    return shop, versions


def test_keeps_the_newest_n_and_current(four_versions):
    shop, (v1, v2, v3, v4) = four_versions
    said = []
    result = prune_versions(shop, 2, progress=said.append)
    assert [r.version for r in result.removed] == [v2]  # v1 is CURRENT: it stays, however old
    assert sorted(result.kept) == sorted([v4, v3, v1]) and result.current == v1
    assert sorted(list_versions(shop)) == sorted([v1, v3, v4])
    assert sorted(p.name for p in shop.iterdir() if p.name.startswith(".")) == [".build-1-0123abcd"]
    assert said == [f"removed shop/{v2} (published 1970-01-01 00:33:20 UTC; {result.removed[0].freed_bytes / 1e6:,.1f} MB freed)"]
    assert result.removed[0].freed_bytes > 0
    assert open_snapshot(shop, verify="full").version == v1
    assert prune_versions(shop, 2, progress=quiet).removed == []  # nothing more to do


def test_keep_one_leaves_current_and_the_newest(four_versions):
    shop, (v1, v2, v3, v4) = four_versions
    result = prune_versions(shop, 1, progress=quiet)
    assert [r.version for r in result.removed] == [v2, v3]  # oldest first
    assert sorted(list_versions(shop)) == sorted([v1, v4])


def test_dry_run_removes_nothing(four_versions):
    shop, (v1, v2, v3, v4) = four_versions
    said = []
    result = prune_versions(shop, 1, dry_run=True, progress=said.append)
    assert result.dry_run and [r.version for r in result.removed] == [v2, v3]
    assert sorted(list_versions(shop)) == sorted([v1, v2, v3, v4])
    assert said[0] == f"would remove shop/{v2} (published 1970-01-01 00:33:20 UTC)"


def test_published_order_is_newest_first(four_versions):
    shop, versions = four_versions
    assert [name for name, _ in published_order(shop)] == versions[::-1]


def test_a_version_made_current_meanwhile_is_put_back(four_versions, monkeypatch):
    shop, (v1, v2, v3, v4) = four_versions
    withdraw = P.withdraw_version

    def then_made_current(snapshot_dir, version):  # a concurrent identical rebuild points CURRENT at it
        hidden = withdraw(snapshot_dir, version)
        point_current(snapshot_dir, version)
        return hidden

    monkeypatch.setattr(P, "withdraw_version", then_made_current)
    said = []
    result = prune_versions(shop, 2, progress=said.append)  # v2 is the one beyond the newest 2 and not CURRENT
    assert result.removed == [] and v2 in result.kept
    assert said == [f"kept shop/{v2}: it became CURRENT meanwhile"]
    assert sorted(list_versions(shop)) == sorted([v1, v2, v3, v4])
    assert open_snapshot(shop, verify="full").version == v2


def test_the_data_of_a_catalog_version_survives_its_base(tmp_path):
    root = tmp_path / "root"
    base = build_snapshot(write_small_shop(tmp_path / "d", 300, seed=1), root, progress=quiet)
    os.utime(base / "manifest.json", (1000, 1000))
    manifest_bytes = (base / "manifest.json").stat().st_size
    vdir, _ = apply_segments(root / "shop", {"north": {"where": {"region": "north"}}}, progress=quiet,
                             fit_propensities=False)
    result = prune_versions(root / "shop", 1, progress=quiet)
    assert [r.version for r in result.removed] == [base.name]
    assert result.removed[0].freed_bytes == manifest_bytes  # its data files are the catalog version's too
    assert list_versions(root / "shop") == [vdir.name]
    assert open_snapshot(root / "shop", verify="full").segments == {"north": {
        "where": {"region": "north"}, "universe": "customers", "description": "", "priority": 0, "tags": []}}


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_bad_keep_is_refused(four_versions, keep):
    shop, versions = four_versions
    with pytest.raises(SegsrvError, match=re.escape(f"--keep: expected the number of newest versions to keep, "
                                                    f"at least 1, got {keep!r}")):
        prune_versions(shop, keep)
    assert len(list_versions(shop)) == len(versions)


def test_unknown_name_and_a_version_directory_are_refused(four_versions):
    shop, versions = four_versions
    with pytest.raises(SnapshotNotFoundError, match=r"no snapshot 'shp' in .*root \(did you mean 'shop'\?\); "
                                                    r"snapshots there: \['shop'\]"):
        prune_versions(shop.parent / "shp", 1)
    with pytest.raises(SegsrvError, match=r"is a version directory; prune takes the snapshot, .*/shop$"):
        prune_versions(shop / versions[2], 1)
    assert len(list_versions(shop)) == len(versions)


def test_cli(four_versions):
    shop, (v1, v2, v3, v4) = four_versions
    dry = segsrv_cli("prune", str(shop), "--keep", "2", "--dry-run")
    assert dry.returncode == 0 and dry.stdout == f"shop: would remove 1 version(s), kept 3 (CURRENT {v1})\n"
    assert f"[prune] would remove shop/{v2}" in dry.stderr and v2 in list_versions(shop)
    done = segsrv_cli("prune", str(shop), "--keep", "2", "--quiet")
    assert done.returncode == 0 and done.stdout == f"shop: removed 1 version(s), kept 3 (CURRENT {v1})\n"
    assert done.stderr == "" and v2 not in list_versions(shop)
    bad = segsrv_cli("prune", str(shop), "--keep", "0")
    assert bad.returncode == 1
    assert bad.stderr == "segsrv: error: --keep: expected the number of newest versions to keep, at least 1, got 0\n"
    assert segsrv_cli("prune", str(shop), "--keep", "two").returncode == 2
