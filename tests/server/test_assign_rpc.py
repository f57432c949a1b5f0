"""Assign, ListSegments and segment references over gRPC; a catalog change reaches a running server."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.engine.assign import assign
from segsrv.ops.assign import AssignQuery
from segsrv.engine.catalog import apply_segments
from segsrv.server.app import create_server
from segsrv.snapshot.reader import open_snapshot

U = "customers"
CATALOG = {
    "helsinki_large": {"where": {"region": "helsinki", "pet_size": "large"}, "priority": 5, "universe": U,
                       "description": "large pets in helsinki", "tags": ["city"]},
    "churners": {"where": {"churned": True}, "universe": U},
    "kept": {"where": {"$segment": "helsinki_large", "$not": {"$segment": "churners"}}, "priority": 7, "universe": U},
}


@pytest.fixture(scope="module")
def customers():
    """The PetNord customers table, straight from the source file (brute-force counts)."""
    import pandas as pd

    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "petnord" / "customers.json.gz"
    return pd.read_json(path)


@pytest.fixture(scope="module")
def root(petnord_root, tmp_path_factory):
    r = tmp_path_factory.mktemp("assign_rpc") / "snapshots"
    shutil.copytree(petnord_root, r, copy_function=os.link)
    apply_segments(r / "petnord", CATALOG)
    return r


@pytest.fixture(scope="module")
def served(root):
    server, port = create_server(root, host="127.0.0.1", port=0, reload_interval=0.2, privacy_k=0)
    server.start()
    with SegsrvClient(f"127.0.0.1:{port}", timeout=30) as client:
        yield client, root
    server.stop(0)


def test_assign_batch_matches_engine(served):
    client, root = served
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    ids = list(u.ids_for_rows(np.arange(0, 3000, 7))) + ["NOPE"]
    answer = client.assign(ids, include_propensities=True)
    expected = assign(snap, AssignQuery(universe=U, ids=ids, include_propensities=True))
    assert answer["version"] == snap.version and answer["universe"] == U
    assert len(answer["assignments"]) == len(ids)
    for got, exp in zip(answer["assignments"], expected.assignments):
        assert got["id"] == str(exp.id) and got["found"] == exp.found
        assert got["primary_segment"] == exp.primary_segment
        assert [(m["segment"], m["member"], m["segment_size"], m["priority"]) for m in got["segments"]] == [
            (m.segment, m.member, m.segment_size, m.priority) for m in exp.segments]
        for gm, em in zip(got["segments"], exp.segments):
            assert (gm["propensity"] is None) == (em.propensity is None)
            if em.propensity is not None:
                assert gm["propensity"] == pytest.approx(em.propensity, rel=1e-12, abs=1e-300)
    assert answer["assignments"][-1] == {"id": "NOPE", "found": False, "primary_segment": None, "segments": []}


def test_assign_batch_of_10000_ids(served):
    client, root = served
    u = open_snapshot(root / "petnord").universe(U)
    ids = list(u.ids_for_rows(np.random.default_rng(3).integers(0, u.n_rows, 10_000)))
    answer = client.assign(ids)
    assert len(answer["assignments"]) == 10_000 and all(a["found"] for a in answer["assignments"])


def test_assign_feature_list(served):
    client, _ = served
    a = client.assign(features={"region": "helsinki", "pet_size": "large", "churned": "false"})["assignments"][0]
    assert a["id"] == "" and a["found"] and a["primary_segment"] == "kept"
    assert [m["segment"] for m in a["segments"] if m["member"]] == ["kept", "helsinki_large"]


def test_propensities_come_from_the_stored_models(served):
    """`segments apply` stored every segment's logistic model: Assign over gRPC fits none, and the
    factorized method asked by name gives the engine's factorized numbers."""
    from segsrv.engine.assign import fit_count

    client, root = served
    snap = open_snapshot(root / "petnord")
    ids = list(snap.universe(U).ids_for_rows([3, 4]))
    before = fit_count()
    first = client.assign(ids, include_propensities=True)
    assert fit_count() == before and first == client.assign(ids, include_propensities=True)
    got = client.assign(ids, include_propensities=True, propensity_method="factorized")
    want = assign(snap, AssignQuery(universe=U, ids=ids, include_propensities=True, propensity_method="factorized"))
    for ga, wa in zip(got["assignments"], want.assignments):
        assert [(m["segment"], m["propensity"]) for m in ga["segments"]] == [
            (m.segment, pytest.approx(m.propensity, rel=1e-12) if m.propensity is not None else None)
            for m in wa.segments]


@pytest.mark.parametrize("kwargs,code,field", [
    (dict(features={"regio": "x"}), grpc.StatusCode.INVALID_ARGUMENT, "features[0].field"),
    (dict(features={"region": "mars"}), grpc.StatusCode.INVALID_ARGUMENT, "features[0].value"),
    (dict(), grpc.StatusCode.INVALID_ARGUMENT, "ids"),
    (dict(ids=["x"] * 100_001), grpc.StatusCode.RESOURCE_EXHAUSTED, "ids"),
    (dict(ids=["x"], universe="shops"), grpc.StatusCode.INVALID_ARGUMENT, None),
    # the propensity options are checked by the server (conjunction is a PredictMethod, not a propensity method)
    (dict(ids=["CUST-00001"], include_propensities=True, propensity_method="conjunction"),
     grpc.StatusCode.INVALID_ARGUMENT, "propensity_method"),
    (dict(ids=["CUST-00001"], include_propensities=True, propensity_l2=-1.0), grpc.StatusCode.INVALID_ARGUMENT,
     "propensity_l2"),
    (dict(ids=["CUST-00001"], propensity_l2=float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "propensity_l2"),
])
def test_assign_errors(served, kwargs, code, field):
    client, _ = served
    ids = kwargs.pop("ids", None)
    with pytest.raises(SegsrvRpcError) as err:
        client.assign(ids, **kwargs)
    assert err.value.code == code
    if field:
        assert field in [f for f, _ in err.value.violations], err.value.violations


def test_count_and_relate_accept_segment_references(served, customers):
    client, _ = served
    c = customers
    n = client.count({"from": U, "where": {"$segment": "kept"}})["count"]
    assert n == int(((c.region == "helsinki") & (c.pet_size == "large") & ~c.churned.astype(bool)).sum())
    rel = client.relate({"from": U, "where": {"$segment": "churners"}, "relate": ["region"], "direction": "all"})
    assert rel["n_condition"] == int(c.churned.astype(bool).sum())
    with pytest.raises(SegsrvRpcError) as err:
        client.count({"from": U, "where": {"$segment": "churner"}})
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "did you mean 'churners'" in err.value.message


def test_list_segments(served, customers):
    client, _ = served
    c = customers
    segs = {s["name"]: s for s in client.list_segments()}
    assert set(segs) >= {"helsinki_large", "churners", "kept"}
    hl = segs["helsinki_large"]
    assert hl["size"] == int(((c.region == "helsinki") & (c.pet_size == "large")).sum())
    assert hl["share"] == pytest.approx(hl["size"] / len(c))
    assert (hl["priority"], hl["tags"], hl["description"], hl["universe"]) == (5, ["city"], "large pets in helsinki", U)


def test_catalog_change_reaches_the_running_server(served):
    """Apply a new catalog while the server runs: it serves the new version without a restart,
    and the new version's data files are the same inodes (nothing copied)."""
    client, root = served
    before = client.assign(["CUST-00001"])["version"]
    new_catalog = dict(CATALOG, oulu={"where": {"region": "oulu"}, "universe": U, "priority": 9})
    vdir, changed = apply_segments(root / "petnord", new_catalog)
    assert changed
    old_dir = root / "petnord" / before
    for rel in ("universes/customers/dense.bin", "universes/customers/csr_indices.bin"):
        if (old_dir / rel).exists():
            assert os.stat(old_dir / rel).st_ino == os.stat(vdir / rel).st_ino
    deadline = time.time() + 30
    while time.time() < deadline:
        names = {s["name"] for s in client.list_segments()}
        if "oulu" in names:
            break
        time.sleep(0.2)
    assert "oulu" in names
    answer = client.assign(features={"region": "oulu"})
    assert answer["version"] == vdir.name and answer["assignments"][0]["primary_segment"] == "oulu"
    # put the module's catalog back (same data + catalog -> the same version name as before)
    apply_segments(root / "petnord", CATALOG)
    deadline = time.time() + 30
    while client.assign(["CUST-00001"])["version"] != before and time.time() < deadline:
        time.sleep(0.2)
    assert client.assign(["CUST-00001"])["version"] == before


def _fitted(snapshot) -> int:
    """Segments whose default propensity models the process has fitted for this open version."""
    from segsrv.engine import assign as A

    cats = A._CACHE.get(snapshot, {})
    return sum(len(c.segments) for c in cats.values() if c._stacked)


def test_versions_are_warmed_before_they_are_served(root, tmp_path, caplog):
    """At start (before the server exists) and on every reload (before the swap) the catalog is
    compiled and every segment's default propensity model fitted; warm=False leaves that to the
    first Assign."""
    import logging

    from segsrv.engine.assign import warm_catalog

    r = tmp_path / "snapshots"
    shutil.copytree(root, r, copy_function=os.link)
    caplog.set_level(logging.INFO, logger="segsrv.server")
    server, port = create_server(r, port=0, reload_interval=0.1, privacy_k=0)
    registry = server.segsrv_registry
    assert _fitted(registry.resolve("petnord", "")) == len(CATALOG)
    assert any("warmed snapshot petnord" in m for m in caplog.messages)
    server.start()
    try:
        caplog.clear()
        new_catalog = dict(CATALOG, oulu={"where": {"region": "oulu"}, "universe": U})
        vdir, _ = apply_segments(r / "petnord", new_catalog)
        deadline = time.time() + 30
        while registry.resolve("petnord", "").version != vdir.name and time.time() < deadline:
            time.sleep(0.05)
        snap = registry.resolve("petnord", "")
        assert snap.version == vdir.name
        assert _fitted(snap) == len(new_catalog)  # fitted before anyone could ask
        msgs = caplog.messages
        warmed = next(i for i, m in enumerate(msgs) if f"warmed snapshot petnord version {vdir.name}" in m)
        swapped = next(i for i, m in enumerate(msgs) if f"swapped snapshot petnord to version {vdir.name}" in m)
        assert warmed < swapped
    finally:
        server.stop(0)
    cold, _ = create_server(r, port=0, privacy_k=0, warm=False)
    try:
        assert _fitted(cold.segsrv_registry.resolve("petnord", "")) == 0
        assert warm_catalog(cold.segsrv_registry.resolve("petnord", "")) == {U: len(new_catalog)}
    finally:
        cold.stop(0)


def test_a_failing_warm_up_still_serves_the_version(root, tmp_path, caplog, monkeypatch):
    import logging

    from segsrv.server import app

    def broken(snapshot, **options):
        raise RuntimeError("warm-up bug")

    monkeypatch.setattr(app, "warm_version", broken)
    with caplog.at_level(logging.WARNING, logger="segsrv.server"):
        server, port = create_server(root, port=0, privacy_k=0)
    server.start()
    try:
        assert any("warming snapshot petnord" in m and "warm-up bug" in m for m in caplog.messages)
        with SegsrvClient(f"127.0.0.1:{port}", timeout=30) as client:
            answer = client.assign(["CUST-00001"], include_propensities=True)
        assert answer["assignments"][0]["found"]
    finally:
        server.stop(0)
