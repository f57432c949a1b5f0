"""Count and Relate over a sharded snapshot (segsrv/engine/sharded/) equal the unsharded snapshot's answers.
(``petnord_sharded``, PetNord built with 1, 2 and 7 shards, is in tests/engine/conftest.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import pandas as pd
import pytest

from segsrv.errors import CorruptSnapshotError, SegsrvError
from segsrv.ops import CountQuery, RelateQuery
from segsrv.service import OneSnapshot, SegmentationService, local_service
from segsrv.snapshot.shards import SHARDS
from support import CUSTOMER_CONDITIONS, answers, assert_same_relate, repo_env, shop_services

COUNTS = [("customers", where) for where in CUSTOMER_CONDITIONS.values()] + [
    ("orders", {}),
    ("orders", {"month": "2026-01"}),
    ("orders", {"line_categories": ["cat_dryfood", "cat_treats"], "customer.churned": True}),
    ("orders", {"$not": {"customer.region": "oulu"}}),
    ("order_lines", {"returned": True}),
    ("order_lines", {"product.category": "dry-food", "order.customer.lifestyle": {"$ne": "premium"}}),
    ("order_lines", {"qty": {"$gte": 2}}),
    ("impressions", {"surface": "for_you", "clicked": True}),
    # a handful of rows: below a privacy floor of 10
    ("customers", {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}),
    ("orders", {"month": "2026-01", "customer.region": "oulu", "customer.churned": True,
                "customer.lifestyle": "premium"}),
]

RELATES = [
    {"from": "customers", "where": {"churned": True}},
    {"from": "customers", "where": {"region": "oulu"}, "order_by": "lift", "min_support": 5},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["exists_link"], "order_by": "p_value", "direction": "all",
     "limit": 40},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["not_tree"], "order_by": "support", "direction": "under",
     "q_values": True, "limit": 200},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["range"], "order_by": "lift_smoothed",
     "select": ["$field", "$value", "$lift", "$lift_low", "$lift_high", "$p_value", "$q_value", "$support",
                "$n_feature", "$mutual_information", "$leverage", "$zhang", "$jaccard"], "max_p_value": 0.2},
    {"from": "customers", "where": {"lifestyle": "premium"}, "order_by": "zhang", "direction": "under",
     "min_lift": 0.1, "limit": 7},
    {"from": "orders", "where": {"customer.churned": True}, "relate": ["line_categories", "month", "total_eur"],
     "order_by": "q_value", "direction": "all"},
    {"from": "order_lines", "where": {"returned": True}, "include_condition_fields": True, "order_by": "n_feature"},
    {"from": "impressions", "where": {"clicked": True}, "relate": ["product.*", "surface"], "plan": "histogram"},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["empty"]},
    {"from": "customers", "where": COUNTS[-2][1]},  # a handful of rows: suppressed under a floor of 10
]




@pytest.mark.parametrize("privacy_k", [0, 10])
def test_count_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k):
    sharded = SegmentationService(local_service(petnord_sharded).snapshots, privacy_k=privacy_k)
    whole = SegmentationService(OneSnapshot(petnord_snapshot), privacy_k=privacy_k)
    suppressed = 0
    for universe, where in COUNTS:
        got = answers(sharded, CountQuery, {"from": universe, "where": where})
        want = answers(whole, CountQuery, {"from": universe, "where": where})
        assert (got.universe, got.n_rows, got.count, got.suppressed) == \
            (want.universe, want.n_rows, want.count, want.suppressed), (universe, where)
        assert got.snapshot == "petnord" and got.version.startswith("shards-")
        suppressed += got.suppressed
    assert suppressed == (2 if privacy_k else 0)  # the floor is exercised: the two small conditions


def test_count_matches_brute_force(petnord_sharded, petnord_src):
    """One independent check: DuckDB over the source tables."""
    service = local_service(petnord_sharded)
    want = petnord_src.execute("SELECT count(*) FROM order_lines l JOIN orders o USING (order_id) "
                               "JOIN customers c USING (customer_id) WHERE c.churned").fetchone()[0]
    assert answers(service, CountQuery, {"from": "order_lines", "where": {"order.customer.churned": True}}).count == want


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("request_index", range(len(RELATES)))
def test_relate_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k, request_index):
    obj = RELATES[request_index]
    sharded = SegmentationService(local_service(petnord_sharded).snapshots, privacy_k=privacy_k)
    whole = SegmentationService(OneSnapshot(petnord_snapshot), privacy_k=privacy_k)
    got, want = answers(sharded, RelateQuery, obj), answers(whole, RelateQuery, obj)
    assert_same_relate(got, want)
    small = obj["where"] in (CUSTOMER_CONDITIONS["empty"], COUNTS[-2][1])
    assert got.hits or small
    assert got.suppressed == (privacy_k > 0 and obj["where"] == COUNTS[-2][1])


def test_tampered_shard_version_is_refused(petnord_sharded, tmp_path):
    copy = tmp_path / "petnord"
    shutil.copytree(petnord_sharded, copy)
    manifest = json.loads((copy / SHARDS).read_text())
    last = copy / manifest["shards"][-1]["dir"]
    # a shard whose CURRENT names another version than SHARDS: a build in progress or a changed shard
    shutil.copytree(last / manifest["shards"][-1]["version"], last / "other")
    (last / "CURRENT").write_text("other\n")
    with pytest.raises(CorruptSnapshotError, match="CURRENT names version 'other' but .*SHARDS names"):
        local_service(copy)
    # SHARDS naming a version whose manifest is not the one it recorded
    (last / "CURRENT").write_text(manifest["shards"][-1]["version"] + "\n")
    manifest["shards"][-1]["manifest_sha256"] = "0" * 64
    (copy / SHARDS).write_text(json.dumps(manifest))
    with pytest.raises(CorruptSnapshotError, match="does not match its manifest_sha256"):
        local_service(copy)
    # a shard whose dictionary differs (a value renamed), its digest in SHARDS updated to match
    vmanifest = last / manifest["shards"][-1]["version"] / "manifest.json"
    shard_manifest = json.loads(vmanifest.read_text())
    field = shard_manifest["universes"]["customers"]["fields"][0]
    field["values"][0] = field["values"][0] + "-renamed"
    vmanifest.write_text(json.dumps(shard_manifest, sort_keys=True))
    manifest["shards"][-1]["manifest_sha256"] = hashlib.sha256(vmanifest.read_bytes()).hexdigest()
    (copy / SHARDS).write_text(json.dumps(manifest))
    with pytest.raises(CorruptSnapshotError, match="its feature dictionary is not the one .*SHARDS records"):
        local_service(copy)


def test_version_is_refused_with_a_sharded_snapshot(petnord_sharded):
    with pytest.raises(SegsrvError, match="--version: not with a sharded snapshot"):
        local_service(petnord_sharded, version="v1")


def test_cli_query_count_and_relate_local(petnord_sharded, petnord_snapshot):
    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "segsrv", "query", *args], capture_output=True, text=True,
                              env=repo_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    whole = SegmentationService(OneSnapshot(petnord_snapshot))
    churned = {"from": "customers", "where": {"churned": True}}
    assert cli("count", "--local", str(petnord_sharded), "--json", json.dumps(churned))["count"] == \
        answers(whole, CountQuery, churned).count
    query = dict(churned, limit=5)
    hits = cli("relate", "--local", str(petnord_sharded), "--json", json.dumps(query))["hits"]
    assert [(h["$field"], h["$value"]) for h in hits] == \
        [(h.field, h.value) for h in answers(whole, RelateQuery, query).hits]


# --- a synthetic shop: shards with no customers, a replicated universe ---------------------------------------


@pytest.mark.parametrize("n_customers, n_shards", [(40, 4), (3, 8)])
def test_shop_with_empty_shards_and_a_replicated_universe(tmp_path, n_customers, n_shards):
    sharded, whole = shop_services(tmp_path, n_customers, n_shards)
    if n_customers < n_shards:
        assert any(s.universe("customers").n_rows == 0 for s in sharded.snapshots.snapshot.shards)
    segment = pd.read_csv(tmp_path / "customers.csv")["segment"].iloc[0]  # a value every build has
    for universe, where in [("customers", {}), ("customers", {"segment": segment}), ("orders", {"channel": "web"}),
                            ("orders", {"customer.segment": {"$ne": segment}}), ("products", {}),
                            ("products", {"category": "food"}), ("customers", {"orders.product.category": "toys"})]:
        got = answers(sharded, CountQuery, {"from": universe, "where": where})
        want = answers(whole, CountQuery, {"from": universe, "where": where})
        assert (got.n_rows, got.count) == (want.n_rows, want.count), (universe, where)
    for obj in [{"from": "customers", "where": {"segment": segment}, "direction": "all"},
                {"from": "orders", "where": {"channel": "app"}, "order_by": "p_value", "q_values": True},
                {"from": "products", "where": {"category": "toys"}, "direction": "all"}]:
        assert_same_relate(answers(sharded, RelateQuery, obj), answers(whole, RelateQuery, obj))
