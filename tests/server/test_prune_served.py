"""`segsrv prune` beside a running server: the served (CURRENT) version survives, and the server keeps
answering, with counts equal to pandas over the source CSV, while older versions it watched are removed."""

from __future__ import annotations

import time

import pandas as pd

from segsrv.client import SegsrvClient
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.location import list_versions
from segsrv.snapshot.prune import prune_versions
from support import quiet, write_small_shop


def _wait_for_version(client: SegsrvClient, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.count({"from": "customers"})["version"] != version:
        assert time.monotonic() < deadline, f"the server did not pick up version {version}"
        time.sleep(0.1)


def test_prune_keeps_the_served_version_and_the_server_answering(tmp_path, start_server):
    root = tmp_path / "root"
    old = build_snapshot(write_small_shop(tmp_path / "d1", 500, seed=1), root, progress=quiet)
    server = start_server(root, reload_interval=0.1, keep_versions=2)  # holds the old version open too
    served = tmp_path / "d2"
    current = build_snapshot(write_small_shop(served, 700, seed=2), root, progress=quiet)
    df = pd.read_csv(served / "customers.csv")
    with SegsrvClient(server.address, timeout=30) as client:
        _wait_for_version(client, current.name)
        result = prune_versions(root / "shop", 1, progress=quiet)
        assert [r.version for r in result.removed] == [old.name]
        assert list_versions(root / "shop") == [current.name]
        for _ in range(3):  # the next calls, after the server's next reload poll too
            answer = client.count({"from": "customers", "where": {"region": "north", "plan": "pro"}})
            assert answer["version"] == current.name
            assert answer["count"] == int(((df.region == "north") & (df.plan == "pro")).sum())
            time.sleep(0.2)
    # the retired version the server keeps (--keep-versions) still answers from its memory maps
    old_df = pd.read_csv(tmp_path / "d1" / "customers.csv")
    with SegsrvClient(server.address, timeout=30, snapshot="shop", version=old.name) as pinned:
        answer = pinned.count({"from": "customers", "where": {"region": "south"}})
        assert answer["version"] == old.name and answer["count"] == int((old_df.region == "south").sum())
