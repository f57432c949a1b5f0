"""Sharded snapshots (segsrv/snapshot/shards.py, shardbuild.py): partition, shared dictionary, reuse, manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xxhash

from segsrv.errors import BuildError, CorruptSnapshotError, SpecError
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.shards import SHARDS, dictionary_of, read_shard_manifest, shard_dir_name, shard_of_keys
from segsrv.snapshot.spec import load_spec, parse_spec
from support import SHARDED_SHOP_SPEC as SPEC, assert_sparse_csr, quiet, segsrv_cli, write_shop

N_SHARDS = 3


def open_shards(root: Path, name: str) -> list:
    manifest = read_shard_manifest(root / name)
    return [open_snapshot(root / name / e["dir"]) for e in manifest["shards"]]


def feature_counts(snapshot, universe: str) -> dict[tuple[str, str], int]:
    u = snapshot.universe(universe)
    return {u.feature_name(fid): int(u.feature_count[fid]) for fid in range(u.n_features)}


def assert_partition(whole, shards: list, universe: str) -> None:
    """The shards' ids of a universe are disjoint and together the unsharded build's."""
    ids = [s.universe(universe).row_ids for s in shards]
    joined = np.concatenate(ids)
    assert len(joined) == len(np.unique(joined)), f"{universe}: an id is in two shards"
    assert np.array_equal(np.sort(joined), whole.universe(universe).row_ids), universe


def assert_counts_add_up(whole, shards: list, universe: str) -> None:
    """Every feature's count over the shards sums to its unsharded count (0 for values the build dropped)."""
    total = feature_counts(whole, universe)
    summed: dict[tuple[str, str], int] = {}
    for s in shards:
        for feature, n in feature_counts(s, universe).items():
            summed[feature] = summed.get(feature, 0) + n
    assert set(total) <= set(summed), f"{universe}: shards lack features {set(total) - set(summed)}"
    assert {f: summed[f] for f in total} == total, universe
    assert all(summed[f] == 0 for f in set(summed) - set(total)), universe


# --- PetNord: customers are the entity, products replicated --------------------------------------------------


@pytest.fixture(scope="module")
def petnord_sharded(tmp_path_factory, petnord_spec):
    root = tmp_path_factory.mktemp("petnord_shards")
    build_shards(replace(petnord_spec, shard_entity="customers"), root, N_SHARDS, progress=quiet)
    return root, open_shards(root, "petnord")


@pytest.mark.parametrize("universe", ["customers", "orders", "order_lines", "impressions"])
def test_petnord_shards_partition_each_universe(petnord_sharded, petnord_snapshot, universe):
    _, shards = petnord_sharded
    assert_partition(petnord_snapshot, shards, universe)
    assert_counts_add_up(petnord_snapshot, shards, universe)
    for s in shards:  # each shard is a snapshot of the current format, its sparse CSR included
        assert s.manifest["format_version"] == 2
        assert_sparse_csr(s.universe(universe))


def as_id(value):
    """A source key as a snapshot's row_ids.bin holds it."""
    return value.encode("utf-8") if isinstance(value, str) else int(value)


def test_petnord_rows_follow_their_customer(petnord_sharded, petnord_src):
    _, shards = petnord_sharded
    customers = [as_id(c) for c in petnord_src.execute("SELECT customer_id FROM customers").df()["customer_id"]]
    # the documented rule, computed here without segsrv: xxh3_64 of the key's UTF-8 bytes, modulo N
    home = {c: xxhash.xxh3_64_intdigest(c) % N_SHARDS for c in customers}
    assert list(home.values()) == shard_of_keys(np.array(customers, dtype=object), N_SHARDS).tolist()
    for i, s in enumerate(shards):
        assert all(home[c] == i for c in s.universe("customers").row_ids.tolist())
    orders = petnord_src.execute("SELECT order_id, customer_id FROM orders").df()
    order_shard = {as_id(o): home[as_id(c)] for o, c in zip(orders["order_id"], orders["customer_id"])}
    lines = petnord_src.execute("SELECT line_id, order_id FROM order_lines").df()
    line_shard = {as_id(ln): order_shard[as_id(o)] for ln, o in zip(lines["line_id"], lines["order_id"])}
    for i, s in enumerate(shards):
        assert all(order_shard[o] == i for o in s.universe("orders").row_ids.tolist())
        assert all(line_shard[ln] == i for ln in s.universe("order_lines").row_ids.tolist())


def test_petnord_counts_match_brute_force(petnord_sharded, petnord_src):
    _, shards = petnord_sharded
    brute = petnord_src.execute("SELECT segment FROM customers").df()["segment"].value_counts()
    for value, n in brute.items():
        assert sum(s.universe("customers").field("segment").counts[
            s.universe("customers").field("segment").value_index(str(value))] for s in shards) == n
    # through a replicated table: orders having a line of each product category
    pairs = petnord_src.execute(
        "SELECT DISTINCT o.order_id, p.category FROM orders o JOIN order_lines l USING (order_id) "
        "JOIN products p ON p.sku = l.product_sku").df()
    brute = pairs["category"].value_counts()
    for value, n in brute.items():
        got = 0
        for s in shards:
            f = s.universe("orders").field("lines.product.category")
            got += f.counts[f.value_index(str(value))]
        assert got == n, value


def test_petnord_shards_share_one_dictionary(petnord_sharded):
    _, shards = petnord_sharded
    first = dictionary_of(shards[0].manifest)
    assert all(dictionary_of(s.manifest) == first for s in shards[1:])
    assert all(f.get("edges") for f in first["customers"] if f["kind"] == "numeric")


def test_shard_manifest_round_trips_and_corrupt_is_refused(petnord_sharded, tmp_path):
    root, shards = petnord_sharded
    manifest = read_shard_manifest(root / "petnord")
    assert manifest["entity"] == "customers" and manifest["shard_count"] == N_SHARDS
    assert [e["version"] for e in manifest["shards"]] == [s.version for s in shards]
    assert json.loads((root / "petnord" / SHARDS).read_text()) == manifest
    copy = tmp_path / "petnord"
    copy.mkdir()
    for e in manifest["shards"]:
        (copy / e["dir"]).symlink_to(root / "petnord" / e["dir"])
    bad_digest = json.loads(json.dumps(manifest))
    bad_digest["shards"][1]["manifest_sha256"] = "0" * 64
    bad_count = dict(manifest, shard_count=N_SHARDS + 1)
    for broken, why in [(bad_digest, "does not match"), (bad_count, "shard_count"), (None, "not valid JSON")]:
        (copy / SHARDS).write_text("{" if broken is None else json.dumps(broken))
        with pytest.raises(CorruptSnapshotError, match=why):
            read_shard_manifest(copy)


# --- a small synthetic shop: edits, rebuilds and bad input ---------------------------------------------------

@pytest.fixture()
def shop(tmp_path) -> Path:
    return write_shop(tmp_path)


def built(spec: Path, root: Path, count: int) -> tuple[dict, list[str]]:
    said: list[str] = []
    build_shards(spec, root, count, progress=said.append)
    return read_shard_manifest(root / "shop"), said


def test_shop_partition_counts_and_replication(shop, tmp_path):
    whole = open_snapshot(build_snapshot(shop, tmp_path / "whole", progress=quiet))
    manifest, _ = built(shop, tmp_path / "sharded", 4)
    shards = open_shards(tmp_path / "sharded", "shop")
    for universe in ("customers", "orders"):
        assert_partition(whole, shards, universe)
        assert_counts_add_up(whole, shards, universe)
    for s in shards:  # products reach no customer: every shard holds them all
        assert np.array_equal(s.universe("products").row_ids, whole.universe("products").row_ids)
        assert feature_counts(s, "products") == feature_counts(whole, "products")
    orders = pd.read_csv(shop.parent / "orders.csv")
    brute = orders["channel"].value_counts()
    for value, n in brute.items():
        assert sum(feature_counts(s, "orders")[("channel", value)] for s in shards) == n
    assert manifest["hash"] == "xxh3_64" and [e["dir"] for e in manifest["shards"]] == [shard_dir_name(i) for i in range(4)]


def test_rebuild_skips_unchanged_shards_and_rebuilds_the_changed_one(shop, tmp_path):
    root = tmp_path / "root"
    first, _ = built(shop, root, N_SHARDS)
    again, said = built(shop, root, N_SHARDS)
    assert [e["version"] for e in again["shards"]] == [e["version"] for e in first["shards"]]
    assert sum("unchanged, reused" in m for m in said) == N_SHARDS
    # one customer's orders move to another channel that stays in use: the dictionary does not change
    orders = pd.read_csv(shop.parent / "orders.csv")
    customer = orders["customer_id"].iloc[0]
    orders.loc[orders["customer_id"] == customer, "channel"] = "web"
    orders.to_csv(shop.parent / "orders.csv", index=False)
    changed = xxhash.xxh3_64_intdigest(customer.encode("utf-8")) % N_SHARDS
    after, said = built(shop, root, N_SHARDS)
    moved = [i for i in range(N_SHARDS) if after["shards"][i]["version"] != first["shards"][i]["version"]]
    assert moved == [changed]
    assert sum("unchanged, reused" in m for m in said) == N_SHARDS - 1
    s = open_snapshot(root / "shop" / shard_dir_name(changed))
    assert s.version == after["shards"][changed]["version"]


def test_more_shards_than_customers_gives_empty_shards(tmp_path):
    spec = write_shop(tmp_path, n_customers=3)
    manifest, _ = built(spec, tmp_path / "root", 8)
    shards = open_shards(tmp_path / "root", "shop")
    assert sum(s.universe("customers").n_rows for s in shards) == 3
    assert any(s.universe("customers").n_rows == 0 for s in shards)
    assert len({json.dumps(dictionary_of(s.manifest), sort_keys=True) for s in shards}) == 1


def test_integer_keys_hash_their_little_endian_int64_bytes():
    keys = np.array([0, 7, -3, 2**40], dtype=np.int64)
    expected = [xxhash.xxh3_64_intdigest(int(k).to_bytes(8, "little", signed=True)) % 5 for k in keys]
    assert shard_of_keys(keys, 5).tolist() == expected


def test_the_shard_of_a_key_is_pinned():
    """The rule is part of the format (a shard's rows must not move between runs, machines or versions of
    xxhash): these values are XXH3-64 (seed 0) of the canonical bytes, modulo N, written down once."""
    text = [b"CUST-00001", b"CUST-00002", b"CUST-02998", "kund-\u00e4".encode("utf-8"), b""]
    assert xxhash.xxh3_64_intdigest(b"CUST-00001") == 10091264429220785199
    assert shard_of_keys(text, 7).tolist() == [4, 3, 6, 1, 4]
    assert shard_of_keys(text, 1000).tolist() == [199, 299, 826, 156, 138]
    ints = np.array([0, 1, 42, -1, 2**62], dtype=np.int64)
    assert shard_of_keys(ints, 7).tolist() == [3, 0, 1, 4, 6]
    assert shard_of_keys(ints, 1000).tolist() == [897, 78, 720, 627, 829]


@pytest.mark.parametrize("count", [0, -2, True, 2.5])
def test_bad_shard_count(shop, tmp_path, count):
    with pytest.raises(SpecError, match="--shards: expected a shard count >= 1"):
        build_shards(shop, tmp_path / "root", count, progress=quiet)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("shards, message", [
    ('entity = "clients"', r"shards.entity: unknown table 'clients'"),
    ('table = "customers"', r"shards: unknown key 'table'"),
    ("entity = 3", r"shards.entity: expected"),
])
def test_bad_shards_section(shop, shards, message):
    text = SPEC.replace('entity = "customers"', shards)
    import tomllib
    with pytest.raises(SpecError, match=message):
        parse_spec(tomllib.loads(text), shop.parent)


def test_spec_without_shards_section_is_refused(shop, tmp_path):
    shop.write_text(SPEC.replace('[shards]\nentity = "customers"\n', ""))
    assert load_spec(shop).shard_entity is None
    with pytest.raises(SpecError, match=r"shards.entity: the spec has no \[shards\]"):
        build_shards(shop, tmp_path / "root", 2, progress=quiet)


def test_cli_build_shards(shop, tmp_path):
    done = segsrv_cli("build", str(shop), "--out", str(tmp_path / "root"), "--shards", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "root" / "shop" / SHARDS)
    assert "shard 2/2 (shard-001): built" in done.stderr
    assert read_shard_manifest(tmp_path / "root" / "shop")["shard_count"] == 2


def test_cli_refuses_single_build_flags_with_shards(shop, tmp_path):
    done = segsrv_cli("build", str(shop), "--out", str(tmp_path / "root"), "--shards", "2", "--version", "v1")
    assert done.returncode == 1
    assert "--version: not with --shards" in done.stderr
    assert not (tmp_path / "root" / "shop").exists()


def test_an_order_without_customer_goes_to_shard_0(shop, tmp_path):
    orders = pd.read_csv(shop.parent / "orders.csv")
    orders.loc[5, "customer_id"] = None
    orders.to_csv(shop.parent / "orders.csv", index=False)
    built(shop, tmp_path / "root", N_SHARDS)
    shards = open_shards(tmp_path / "root", "shop")
    holders = [i for i, s in enumerate(shards) if int(orders.loc[5, "order_id"]) in s.universe("orders").row_ids]
    assert holders == [0]


def test_an_order_of_an_unknown_customer_is_refused(shop, tmp_path):
    orders = pd.read_csv(shop.parent / "orders.csv")
    orders.loc[5, "customer_id"] = "nobody"
    orders.to_csv(shop.parent / "orders.csv", index=False)
    with pytest.raises(BuildError, match=r"table 'orders': 1 of its 120 rows are in no shard: their column "
                                         r"'customer_id' names no key of 'customers'"):
        build_shards(shop, tmp_path / "root", N_SHARDS, progress=quiet)
    assert not (tmp_path / "root" / "shop" / SHARDS).exists()


def test_a_partitioned_table_needs_a_key_column(shop, tmp_path):
    shop.write_text(SPEC.replace('key = "order_id"', 'key = "$row"'))
    with pytest.raises(SpecError, match=r"tables.orders.key: a sharded table needs a key column"):
        build_shards(shop, tmp_path / "root", 2, progress=quiet)
    shop.write_text(SPEC.replace('key = "customer_id"', 'key = "$row"'))
    with pytest.raises(SpecError, match=r"shards.entity: table 'customers' has no key column"):
        load_spec(shop)


def test_entity_as_a_sql_table(shop, tmp_path):
    """Orders (a file) are routed through customers, a sql table over another table: they load after it."""
    spec = SPEC.replace('[tables.customers]\nfile = "customers.csv"\n',
                        '[tables.raw_customers]\nfile = "customers.csv"\nkey = "customer_id"\n\n'
                        '[tables.customers]\nsql = "SELECT * FROM raw_customers"\n')
    shop.write_text(spec)
    whole = open_snapshot(build_snapshot(shop, tmp_path / "whole", progress=quiet))
    built(shop, tmp_path / "sharded", N_SHARDS)
    shards = open_shards(tmp_path / "sharded", "shop")
    for universe in ("customers", "orders"):
        assert_partition(whole, shards, universe)
        assert_counts_add_up(whole, shards, universe)
