"""Profile, Info and Export (without a target) over a sharded snapshot (segsrv/engine/sharded/) equal the
unsharded snapshot's answers, and a brute force over the source tables (pandas).

``petnord_sharded`` (PetNord in 1, 2 and 7 shards) is in tests/engine/conftest.py.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from segsrv.engine.sharded import ShardedExportResult, open_sharded
from segsrv.errors import PrivacyFloorError
from segsrv.ops import CountQuery, ExportQuery, InfoQuery, ProfileQuery
from segsrv.server.registry import SnapshotRegistry
from segsrv.server.servicer import SegmentationServiceServicer
from segsrv.service import OneShardedSnapshot, OneSnapshot, SegmentationService, local_service
from segsrv.v1 import segsrv_pb2 as pb
from support import (
    CUSTOMER_CONDITIONS, FakeContext, answers, assert_same_info, assert_same_profile, expect_profile,
    expect_profile_numeric, exported, segsrv_cli, sharded_services, shop_services,
)

SMALL = {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}  # below 10 rows

PROFILES = [
    {"from": "customers", "segment": {"churned": True}},
    {"from": "customers"},  # every row: the segment's statistics are the population's
    {"from": "customers", "segment": CUSTOMER_CONDITIONS["empty"]},
    {"from": "customers", "segment": CUSTOMER_CONDITIONS["range"], "values_per_field": 2},
    {"from": "customers", "segment": CUSTOMER_CONDITIONS["exists_link"], "fields": ["orders.**", "region"]},
    {"from": "customers", "segment": CUSTOMER_CONDITIONS["not_tree"], "values_per_field": 20},
    {"from": "customers", "segment": SMALL},  # suppressed under a floor of 10
    {"from": "orders", "segment": {"customer.churned": True}, "fields": ["customer.*", "total_eur", "month"]},
    {"from": "order_lines", "segment": {"returned": True}, "values_per_field": 3},
    {"from": "impressions", "segment": {"clicked": True}, "fields": ["product.*", "surface"]},
]


# --- Profile ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("request_index", range(len(PROFILES)))
def test_profile_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k, request_index):
    obj = PROFILES[request_index]
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k)
    got, want = answers(sharded, ProfileQuery, obj), answers(whole, ProfileQuery, obj)
    assert_same_profile(got, want)
    assert got.snapshot == "petnord" and got.version.startswith("shards-")
    assert got.suppressed == (privacy_k > 0 and obj.get("segment") == SMALL)
    assert got.fields or got.suppressed or obj.get("segment") in (None, CUSTOMER_CONDITIONS["empty"])
    # again: the population statistics now come from the build's cache
    assert_same_profile(answers(sharded, ProfileQuery, obj), want)


@pytest.mark.parametrize("request_index", [0, 3, 7, 8])
def test_profile_over_shards_matches_brute_force(petnord_sharded, oracle, request_index):
    """Independent of segsrv: the oracle's pandas joins over the PetNord source tables."""
    obj = PROFILES[request_index]
    answer = answers(local_service(petnord_sharded), ProfileQuery, obj).to_json()
    assert answer["numeric"] and any(f["over"] for f in answer["fields"])
    expect_profile(answer, obj, oracle)
    expect_profile_numeric(answer, obj, oracle)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=hst.data())
def test_random_segments_profile_as_unsharded(petnord_sharded, petnord_snapshot, where_strategy, data):
    where = data.draw(where_strategy("customers"))
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    obj = {"from": "customers", "segment": where, "values_per_field": 3}
    assert_same_profile(answers(sharded, ProfileQuery, obj), answers(whole, ProfileQuery, obj))


# --- Info ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("obj", [{}, {"include_values": True}, {"from": "orders", "include_values": True},
                                 {"from": "impressions"}], ids=["plain", "values", "orders", "impressions"])
def test_info_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k, obj):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k)
    assert_same_info(answers(sharded, InfoQuery, obj), answers(whole, InfoQuery, obj))


def test_info_over_shards_matches_brute_force(petnord_sharded, source, oracle):
    info = answers(local_service(petnord_sharded), InfoQuery, {"include_values": True})
    for u in info.universes:
        assert u.n_rows == len(source.tables[source.universe_tables[u.name]]), u.name
    bu = oracle.universe("customers")
    (customers,) = [u for u in info.universes if u.name == "customers"]
    for f in customers.fields:
        for value, mask in bu.fields[f.name].masks.items():
            assert f.values[value] == int(mask.sum()), (f.name, value)


# --- Export -------------------------------------------------------------------------------------------------

EXPORTS = [("customers", {}), ("customers", {"churned": True}), ("customers", CUSTOMER_CONDITIONS["exists_link"]),
           ("customers", CUSTOMER_CONDITIONS["empty"]), ("orders", {"customer.region": "oulu"}),
           ("order_lines", {"returned": True}), ("impressions", {"surface": "for_you", "clicked": True})]


def shard_order_ids(sharded, universe: str, where: dict) -> list[str]:
    """The export's documented order, from the shards' row ids: shard order, then each shard's row order."""
    out = []
    for shard in sharded.shards:
        u = shard.universe(universe)
        whole = SegmentationService(OneSnapshot(shard))
        rows = answers(whole, ExportQuery, {"from": universe, "where": where})
        out += [i for ids in exported(rows) for i in ids]
        assert u.n_rows >= rows.total
    return out


@pytest.mark.parametrize("chunk_size", [97, 1000, 10_000])
@pytest.mark.parametrize("universe, where", EXPORTS, ids=[f"{u}-{i}" for i, (u, _) in enumerate(EXPORTS)])
def test_export_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, universe, where, chunk_size):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    query = {"from": universe, "where": where}
    asked = ExportQuery.from_json(query)
    asked.chunk_size = chunk_size
    got = sharded.call(asked)
    want = answers(whole, ExportQuery, query)
    assert isinstance(got, ShardedExportResult) and not got.ranked
    assert (got.universe, got.n_rows, got.total, got.returned) == (want.universe, want.n_rows, want.total, want.total)
    chunks = exported(got)
    assert len(chunks) == got.n_chunks == -(-want.total // chunk_size)
    assert all(len(c) == chunk_size for c in chunks[:-1])
    ids = [i for c in chunks for i in c]
    assert len(ids) == len(set(ids)) == want.total
    assert set(ids) == {i for c in exported(want) for i in c}
    assert ids == shard_order_ids(open_sharded(petnord_sharded), universe, where)


@pytest.mark.parametrize("universe, where", EXPORTS[1:3] + EXPORTS[4:5])
def test_export_over_shards_matches_brute_force(petnord_sharded, oracle, universe, where):
    bu = oracle.universe(universe)
    got = answers(local_service(petnord_sharded), ExportQuery, {"from": universe, "where": where})
    ids = [i for c in exported(got) for i in c]
    assert sorted(ids) == sorted(str(i) for i in bu.ids[bu.eval(where)])


def test_export_privacy_floor(petnord_sharded, petnord_snapshot):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 10)
    small = {"from": "customers", "where": SMALL}
    for service in (sharded, whole):
        with pytest.raises(PrivacyFloorError):
            answers(service, ExportQuery, small)


def ranked_export(obj: dict, chunk_size: int) -> ExportQuery:
    query = ExportQuery.from_json(obj)
    query.method, query.chunk_size = "factorized", chunk_size  # (no fit: the logistic ranking is ScoreSegment's test)
    return query


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("obj, chunk_size", [
    ({"from": "customers", "where": {"region": "oulu"}, "target": "churned", "value": True, "top_k": 5}, 2),
    ({"from": "customers", "where": {"churned": False}, "target": "lifestyle", "value": "premium"}, 50),
], ids=["top_k", "every_member"])
def test_ranked_export_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k, obj, chunk_size):
    """An export with a target: the same ids in the same order (best first, ties in id order), the same
    scores and chunks, as unsharded."""
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k)
    got, want = sharded.call(ranked_export(obj, chunk_size)), whole.call(ranked_export(obj, chunk_size))
    assert got.ranked and want.ranked
    assert (got.universe, got.n_rows, got.total, got.returned, got.n_chunks, got.target, got.value) == \
        (want.universe, want.n_rows, want.total, want.returned, want.n_chunks, want.target, want.value)
    assert got.n_chunks > 1
    got_chunks, want_chunks = list(got.chunks()), list(want.chunks())
    assert [ids for ids, _ in got_chunks] == [ids for ids, _ in want_chunks]
    for (_, gs), (_, ws) in zip(got_chunks, want_chunks):
        np.testing.assert_allclose(gs, ws, rtol=1e-12, atol=1e-15)


def test_export_members_stream_over_shards(petnord_sharded, petnord_root):
    """The gRPC servicer streams a sharded export as it streams an unsharded one: the total, then chunks."""
    def stream(source):
        req = pb.ExportMembersRequest(universe="orders", chunk_size=500,
                                      condition=ExportQuery.from_json({"where": {"month": "2026-01"}}).to_proto()
                                      .condition)
        return list(SegmentationServiceServicer(source).ExportMembers(req, FakeContext(active=10_000)))

    got, want = stream(OneShardedSnapshot(open_sharded(petnord_sharded))), stream(SnapshotRegistry(petnord_root))
    assert got[0].total_count == want[0].total_count > 500 and not got[0].ids
    assert got[0].info.snapshot_version.startswith("shards-")
    assert [len(m.ids) for m in got] == [len(m.ids) for m in want]
    assert sorted(i for m in got for i in m.ids) == sorted(i for m in want for i in m.ids)


# --- the CLI ------------------------------------------------------------------------------------------------


def cli(*args: str) -> str:
    done = segsrv_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_profile_info_export_over_shards(petnord_sharded, petnord_snapshot, tmp_path):
    whole = SegmentationService(OneSnapshot(petnord_snapshot))
    query = {"from": "customers", "segment": {"churned": True}, "fields": ["region", "tenure_months"]}
    answer = json.loads(cli("query", "profile", "--local", str(petnord_sharded), "--format", "json",
                            "--json", json.dumps(query)))
    want = answers(whole, ProfileQuery, query).to_json()
    for key in ("elapsed_ms", "version"):
        answer.pop(key), want.pop(key)
    assert answer["fields"] == want["fields"] and answer["n_segment"] == want["n_segment"]
    assert answer["numeric"][0]["segment"]["median"] == want["numeric"][0]["segment"]["median"]

    info = json.loads(cli("info", str(petnord_sharded), "--values", "--universe", "orders"))
    plain = json.loads(cli("info", str(petnord_snapshot.path), "--values", "--universe", "orders"))
    assert info["version"].startswith("shards-") and info["shards"] == open_sharded(petnord_sharded).shard_count
    assert info["universes"]["orders"]["n_rows"] == plain["universes"]["orders"]["n_rows"]
    for name, field in plain["universes"]["orders"]["fields"].items():
        got = info["universes"]["orders"]["fields"][name]["values"]
        assert {v: got[v] for v in field["values"]} == field["values"], name

    out = tmp_path / "churned.csv"
    cli("export", "--local", str(petnord_sharded), "--out", str(out), "--quiet", "--chunk-size", "100",
               "--json", json.dumps({"from": "customers", "where": {"churned": True}}))
    with open(out, newline="") as f:
        ids = [row[0] for row in csv.reader(f)][1:]
    want_ids = [i for ids_, _ in answers(whole, ExportQuery, {"from": "customers", "where": {"churned": True}}).chunks()
                for i in ids_]
    assert sorted(ids) == sorted(want_ids)


def test_cli_info_refuses_version_with_a_sharded_snapshot(petnord_sharded):
    done = segsrv_cli("info", str(petnord_sharded), "--version", "v1")
    assert done.returncode != 0 and "--version: not with a sharded snapshot" in done.stderr


# --- a synthetic shop: shards with no customers, a replicated universe ---------------------------------------


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("n_customers, n_shards", [(40, 4), (3, 8)])
def test_shop_profile_info_export_with_empty_shards(tmp_path, n_customers, n_shards, privacy_k):
    sharded, whole = shop_services(tmp_path, n_customers, n_shards, privacy_k)
    if n_customers < n_shards:
        assert any(s.universe("customers").n_rows == 0 for s in sharded.snapshots.snapshot.shards)
    segment = pd.read_csv(tmp_path / "customers.csv")["segment"].iloc[0]  # a value every build has
    # every row of one shard in the segment, not every row overall: that shard's values come in a second round
    first = next(s for s in sharded.snapshots.snapshot.shards if s.universe("customers").n_rows)
    ages = sorted(set(first.universe("customers").fields["age"].numeric.tolist()))
    whole_shard = {"$or": [{"age": {"$gte": a, "$lte": a}} for a in ages]}
    in_segment = answers(SegmentationService(whole.snapshots), CountQuery,
                         {"from": "customers", "where": whole_shard}).count
    assert first.universe("customers").n_rows <= in_segment < n_customers
    for obj in [{"from": "customers"}, {"from": "customers", "segment": {"segment": segment}},
                {"from": "customers", "segment": whole_shard},
                {"from": "customers", "segment": {"age": {"$gte": 40}}},
                {"from": "orders", "segment": {"channel": "web"}}, {"from": "products"},
                {"from": "products", "segment": {"category": "food"}}]:
        assert_same_profile(answers(sharded, ProfileQuery, obj), answers(whole, ProfileQuery, obj))
    for obj in [{}, {"include_values": True}, {"from": "products", "include_values": True}]:
        assert_same_info(answers(sharded, InfoQuery, obj), answers(whole, InfoQuery, obj))
    for universe, where in [("customers", {}), ("orders", {"channel": "app"}), ("products", {})]:
        obj = {"from": universe, "where": where}
        try:
            want = answers(whole, ExportQuery, obj)
        except PrivacyFloorError:
            with pytest.raises(PrivacyFloorError):
                answers(sharded, ExportQuery, obj)
            continue
        got = answers(sharded, ExportQuery, obj)
        ids = [i for c in exported(got) for i in c]
        assert got.total == want.total and sorted(ids) == sorted(i for c in exported(want) for i in c)
    # products are replicated: every shard holds them, the answers count them once
    info = answers(sharded, InfoQuery, {"from": "products"})
    assert info.universes[0].n_rows == 6
