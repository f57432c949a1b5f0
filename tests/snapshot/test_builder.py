"""The builder: PetNord checked against brute force over the source tables, a
small custom dataset in every input format checked exactly, determinism and
publishing."""

from __future__ import annotations

import bisect
import gzip
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.errors import BuildError
from segsrv.snapshot import format as fmt
from segsrv.snapshot.builder import band_labels, build_snapshot
from segsrv.snapshot.reader import open_snapshot
from support import assert_field_matches, assert_sparse_csr, quiet, rows_of_feature


# --- helpers over an opened universe -----------------------------------------


def csr_pairs(u) -> np.ndarray:
    indptr = np.asarray(u.csr_indptr)
    indices = np.asarray(u.csr_indices, dtype=np.int64)
    rows = np.repeat(np.arange(u.n_rows, dtype=np.int64), np.diff(indptr))
    return rows * max(u.n_features, 1) + indices


def bitset_pairs(u) -> np.ndarray:
    parts = []
    for fid in range(u.n_features):
        rows = rows_of_feature(u, fid)
        parts.append(rows * max(u.n_features, 1) + fid)
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def assert_consistent(u) -> None:
    """CSR == bitsets/sparse lists; counts agree; ids sorted; CSR rows ascending."""
    indptr = np.asarray(u.csr_indptr)
    indices = np.asarray(u.csr_indices, dtype=np.int64)
    assert indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
    for r in range(u.n_rows) if u.n_rows <= 5000 else np.random.default_rng(0).integers(0, u.n_rows, 5000):
        row = indices[indptr[r]: indptr[r + 1]]
        assert np.all(np.diff(row) > 0), f"CSR row {r} not strictly ascending"
    pairs = csr_pairs(u)
    assert np.array_equal(np.sort(pairs), bitset_pairs(u))
    counts = np.bincount(indices, minlength=u.n_features)
    assert np.array_equal(counts, np.asarray(u.feature_count))
    for f in u.fields.values():
        assert np.array_equal(f.counts, counts[f.feature_offset: f.feature_offset + len(f.values)])
    for fid in u.sparse_features:
        ids = np.asarray(u.sparse_feature_ids(fid))
        assert np.all(np.diff(ids.astype(np.int64)) > 0)
    rid = np.asarray(u.row_ids)
    assert len(rid) == u.n_rows
    assert np.all(rid[1:] > rid[:-1]), "row_ids must be strictly ascending"
    assert_sparse_csr(u)


def assert_density_rule(u) -> None:
    """dense iff count >= dense_threshold * n_rows (exactly) and count >= 1."""
    t = Fraction(repr(float(u.dense_threshold)))
    for fid in range(u.n_features):
        count = int(u.feature_count[fid])
        want_dense = count >= 1 and Fraction(count) >= t * u.n_rows
        assert u.is_dense(fid) == want_dense, (fid, count, u.n_rows, u.dense_threshold)
    assert len(u.dense_features) == u.dense.shape[0]


# --- PetNord ----------------------------------------------------------------


def test_petnord_row_counts_and_ids(petnord, petnord_src, petnord_spec):
    assert set(petnord.universes) == {"customers", "orders", "order_lines", "impressions"}
    for name, u in petnord.universes.items():
        t = petnord_spec.tables[u.table]
        n = petnord_src.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0]
        assert u.n_rows == n
        assert u.key == t.key and u.key_kind == "bytes"
        src_ids = [k for (k,) in petnord_src.execute(f"SELECT {t.key} FROM {t.name}").fetchall()]
        assert sorted(src_ids) == u.ids_for_rows(np.arange(u.n_rows))
        rows = u.rows_for_ids(src_ids)
        assert (rows >= 0).all()
        assert u.ids_for_rows(rows) == src_ids
        assert np.array_equal(u.rows_for_ids(u.ids_for_rows(np.arange(u.n_rows))), np.arange(u.n_rows))
    assert petnord.universes["customers"].n_rows == 3000
    assert petnord.universes["order_lines"].n_rows == 38013


def test_petnord_unknown_ids(petnord):
    u = petnord.universes["customers"]
    assert u.ids_for_rows([0]) == ["CUST-00001"]
    unknown = ["nope", "", "CUST-0000", "CUST-000011", "CUST-00001 ", "CUST-00001\x00", "cust-00001", 17]
    assert u.rows_for_ids(unknown).tolist() == [-1] * len(unknown)
    assert u.rows_for_ids(["CUST-00002", "zzz", "CUST-00001"]).tolist() == [1, -1, 0]
    assert u.rows_for_ids([]).tolist() == []
    # one id at a time (Assign's per-request lookup has a path of its own): the same rows
    last = u.ids_for_rows([u.n_rows - 1])[0]
    for one in [*unknown, "CUST-00001", "CUST-00002", last, last + "0", "\uffff" * 40]:
        assert u.rows_for_ids([one]).tolist() == u.rows_for_ids([one, "nope"]).tolist()[:1], one
    assert u.rows_for_ids(np.array(["CUST-00003"])).tolist() == [2]


@pytest.mark.parametrize("universe", ["customers", "orders", "order_lines", "impressions"])
def test_petnord_csr_equals_bitsets(petnord, universe):
    u = petnord.universes[universe]
    assert_consistent(u)
    assert_density_rule(u)


def test_petnord_own_categorical(petnord, petnord_src):
    u = petnord.universes["customers"]
    for col in ("segment", "pet_size", "region", "last_order_month"):
        pairs = petnord_src.execute(
            f"SELECT customer_id, {col} FROM customers WHERE {col} IS NOT NULL").fetchall()
        assert u.field(col).semantics == "own"
        assert_field_matches(u, col, pairs)
    # booleans become 'false'/'true'
    pairs = [(k, str(v).lower()) for k, v in petnord_src.execute("SELECT customer_id, churned FROM customers").fetchall()]
    assert u.field("churned").values == ["false", "true"]
    assert_field_matches(u, "churned", pairs)
    assert u.field("segment").values == sorted(
        ["dog_owner", "cat_owner", "multi_pet", "small_animal_owner", "aquarium_owner"])


def test_petnord_forward_two_hops(petnord, petnord_src):
    u = petnord.universes["order_lines"]
    f = u.field("order.customer.region")
    assert f.semantics == "forward" and f.kind == "categorical"
    pairs = petnord_src.execute(
        "SELECT l.line_id, c.region FROM order_lines l JOIN orders o ON o.order_id = l.order_id "
        "JOIN customers c ON c.customer_id = o.customer_id WHERE c.region IS NOT NULL").fetchall()
    assert_field_matches(u, "order.customer.region", pairs)
    assert sum(f.counts) == u.n_rows  # every line reaches exactly one region


def test_petnord_reverse_exists(petnord, petnord_src):
    u = petnord.universes["customers"]
    f = u.field("orders.lines.product.category")
    assert f.semantics == "exists"
    pairs = petnord_src.execute(
        "SELECT DISTINCT o.customer_id, p.category FROM orders o "
        "JOIN order_lines l ON l.order_id = o.order_id JOIN products p ON p.sku = l.product_sku "
        "WHERE p.category IS NOT NULL").fetchall()
    assert_field_matches(u, "orders.lines.product.category", pairs)
    assert sum(f.counts) > u.n_rows  # exists: several values per customer


def _tags(text):
    return {t.strip() for t in text.split(" ") if t.strip()} if text is not None else set()


def test_petnord_multi_valued(petnord, petnord_src):
    tags = dict(petnord_src.execute("SELECT sku, tags FROM products").fetchall())
    # forward multi: order_lines.product.tags
    u = petnord.universes["order_lines"]
    lines = petnord_src.execute("SELECT line_id, product_sku FROM order_lines").fetchall()
    assert u.field("product.tags").kind == "multi"
    assert_field_matches(u, "product.tags", [(lid, t) for lid, sku in lines for t in _tags(tags[sku])])
    # exists multi through three hops: customers.orders.lines.product.tags
    u = petnord.universes["customers"]
    rows = petnord_src.execute(
        "SELECT o.customer_id, l.product_sku FROM orders o JOIN order_lines l ON l.order_id = o.order_id").fetchall()
    assert_field_matches(u, "orders.lines.product.tags", {(c, t) for c, sku in rows for t in _tags(tags[sku])})
    # own multi with a space delimiter
    u = petnord.universes["orders"]
    rows = petnord_src.execute("SELECT order_id, line_categories FROM orders").fetchall()
    assert_field_matches(u, "line_categories", [(o, t) for o, s in rows for t in _tags(s)])


def _band_pairs(rows, edges):
    labels = band_labels(list(edges))
    return [(k, labels[bisect.bisect_right(edges, float(x))]) for k, x in rows if x is not None]


def test_petnord_numeric_bands(petnord, petnord_src):
    u = petnord.universes["customers"]
    f = u.field("tenure_months")
    assert f.kind == "numeric" and f.edges == [6.0, 12.0, 24.0, 36.0]
    assert f.values == ["<6", "6-12", "12-24", "24-36", ">=36"]
    rows = petnord_src.execute("SELECT customer_id, tenure_months FROM customers").fetchall()
    assert_field_matches(u, "tenure_months", _band_pairs(rows, f.edges))

    # quantile bands: the edges are values of the column, and the 4 bands are about equal
    f = u.field("total_spent_eur")
    rows = petnord_src.execute("SELECT customer_id, total_spent_eur FROM customers").fetchall()
    xs = {float(x) for _, x in rows if x is not None}
    assert len(f.edges) == 3 and f.edges == sorted(f.edges)
    assert all(e in xs for e in f.edges)
    assert_field_matches(u, "total_spent_eur", _band_pairs(rows, f.edges))
    assert all(abs(int(c) - 750) <= 30 for c in f.counts)

    # forward numeric through a link, with missing values (weight_kg)
    u = petnord.universes["order_lines"]
    f = u.field("product.price_eur")
    assert f.semantics == "forward" and f.values == ["<5", "5-10", "10-20", "20-50", ">=50"]
    rows = petnord_src.execute(
        "SELECT l.line_id, p.price_eur FROM order_lines l JOIN products p ON p.sku = l.product_sku").fetchall()
    assert_field_matches(u, "product.price_eur", _band_pairs(rows, f.edges))


def test_petnord_raw_numeric(petnord, petnord_src):
    u = petnord.universes["customers"]
    rows = petnord_src.execute("SELECT customer_id, tenure_months, total_spent_eur FROM customers").fetchall()
    r = u.rows_for_ids([k for k, _, _ in rows])
    assert np.array_equal(u.field("tenure_months").numeric[r], np.array([x for _, x, _ in rows], float))
    assert np.array_equal(u.field("total_spent_eur").numeric[r], np.array([x for _, _, x in rows], float))

    u = petnord.universes["order_lines"]
    rows = petnord_src.execute(
        "SELECT l.line_id, p.weight_kg FROM order_lines l JOIN products p ON p.sku = l.product_sku").fetchall()
    r = u.rows_for_ids([k for k, _ in rows])
    want = np.array([np.nan if x is None else x for _, x in rows], float)
    got = np.asarray(u.field("product.weight_kg").numeric)[r]
    assert np.isnan(want).any(), "the fixture should exercise missing values"
    assert np.array_equal(got, want, equal_nan=True)
    assert u.field("product.weight_kg").numeric.dtype == np.float64
    # exists fields have no raw column
    assert petnord.universes["customers"].field("orders.lines.product.category").numeric is None


def test_petnord_sparse_csr_is_the_transpose_of_sparse_ids(petnord, petnord_rare_snapshot):
    """Built where a universe holds enough sparse ids (PetNord with build.dense_threshold 0.3: every
    universe), the transpose of sparse_ids.bin; both files empty where it holds too few (the default build:
    every universe of PetNord holds fewer than one per 8 rows)."""
    for snap, built in ((petnord, False), (petnord_rare_snapshot, True)):
        assert snap.manifest["format_version"] == fmt.FORMAT_VERSION == 2
        for u in snap.universes.values():
            assert fmt.sparse_csr_pays(len(u.sparse_ids), u.n_rows) is built, u.name
            assert_sparse_csr(u)
    u = petnord_rare_snapshot.universes["customers"]
    assert len(u.sparse_features) and len(u.sparse_csr_indices) == len(u.sparse_ids) > 0
    # a row's sparse features are its CSR row's sparse-stored ones
    for r in range(0, u.n_rows, 97):
        row = u.row_features(r)
        assert u.sparse_csr_indices[u.sparse_csr_indptr[r]:u.sparse_csr_indptr[r + 1]].tolist() == \
            row[np.asarray(u.feature_slot)[row] < 0].tolist()


def test_petnord_manifest_lists_every_file(petnord):
    vdir = petnord.path
    files = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()}
    assert files - {fmt.MANIFEST} == set(petnord.manifest["files"])
    for rel, info in petnord.manifest["files"].items():
        assert (vdir / rel).stat().st_size == info["bytes"]
        assert fmt.file_sha256(vdir / rel) == info["sha256"]
    assert (vdir.parent / fmt.CURRENT).read_text() == petnord.version + "\n"
    assert not [p for p in vdir.parent.iterdir() if p.name.startswith(".")]


# --- a custom dataset in every input format ------------------------------------

CUSTOM_SPEC = """\
name = "custom"
description = "every input format"

[build]
dense_threshold = 0.4

[tables.customers]                 # CSV, integer keys in non-lexicographic order
file = "customers.csv"
key = "cust_id"
categorical = ["region"]
numeric = { age = { edges = [30, 50] }, balance = { edges = [-10, 0, 100] }, score = { quantiles = 2 } }

[tables.products]                  # Parquet, string keys, multi-valued with ';'
file = "products.parquet"
key = "sku"
categorical = ["category"]
multi = { tags = ";" }
numeric = { price = { edges = [10] } }

[tables.orders]                    # JSON array; cust is a string, customers.cust_id an integer
file = "orders.json"
key = "order_id"
categorical = ["month"]
links = { customer = { column = "cust", table = "customers", reverse = "orders" } }

[tables.lines]                     # NDJSON (.jsonl), string keys
file = "lines.jsonl"
key = "line_id"
numeric = { qty = { edges = [2] } }
[tables.lines.links]
order = { column = "order_id", table = "orders", reverse = "lines" }
product = { column = "sku", table = "products" }

[tables.stores]                    # TSV
file = "stores.tsv"
key = "store_id"
categorical = ["city"]

[tables.visits]                    # gzipped CSV with ';' delimiter
file = "visits.csv.gz"
delimiter = ";"
key = "visit_id"
categorical = ["channel"]
[tables.visits.links]
customer = { column = "cust_id", table = "customers", reverse = "visits" }
store = { column = "store_id", table = "stores" }

[tables.events]                    # gzipped NDJSON
file = "events.ndjson.gz"
key = "event_id"
categorical = ["kind"]
links = { customer = { column = "cust_id", table = "customers", reverse = "events" } }

[tables.big]                       # SQL over the other tables
sql = "SELECT cust_id, region, age FROM customers WHERE age >= 40"
key = "cust_id"
categorical = ["region"]

[universes.customers]
include = ["*", "orders.lines.product.*", "visits.**.city", "**.kind", "orders.lines.qty"]
exclude = ["orders.lines.product.price", "score"]

[universes.lines]
include = ["*", "product.*", "order.**"]
exclude = ["order.customer.visits.**", "order.customer.events.*"]

[universes.products]
include = ["*"]

[universes.orders]

[universes.big]
table = "big"
"""

CUSTOMERS = [  # cust_id, name, region, age, balance, score
    (100, "Ann", "north", 25, -20, 10),
    (7, "Bob", "south", 41, -5, 20),
    (25, "Cid", "north", None, 0, 30),
    (3, "Dee", "east", 67, 150, 40),
    (10, "Eve", "south", 33, 50, 50),
]
PRODUCTS = [  # sku, category, tags, price
    ("B", "food", "dry; premium", 4.5),
    ("a10", "toy", "squeaky", 12.0),
    ("a9", "food", ";;dry", 30.0),
    ("b", None, None, 8.0),
]
ORDERS = [  # order_id, cust (string), month
    {"order_id": 1, "cust": "100", "month": "2024-01"},
    {"order_id": 2, "cust": "100", "month": "2024-02"},
    {"order_id": 3, "cust": "7", "month": "2024-01"},
    {"order_id": 4, "cust": "3", "month": "2024-03"},
    {"order_id": 5, "cust": "10", "month": "2024-02"},
    {"order_id": 6, "month": "2024-03"},  # no customer: a null link is allowed
]
LINES = [  # line_id, order_id, sku, qty
    ("L1", 1, "B", 1), ("L2", 1, "a9", 3), ("L3", 2, "b", 1), ("L4", 3, "a10", 2),
    ("L5", 4, "B", 5), ("L6", 4, "a10", 1), ("L7", 5, "a9", None),
]
STORES = [(1, "Oulu"), (2, "Turku"), (3, "Oulu")]
VISITS = [("v1", 100, 1, "web"), ("v2", 100, 2, "app"), ("v3", 3, 3, "web"), ("v4", 25, 1, "web")]
EVENTS = [(1, 7, "click"), (2, 7, "view"), (3, 10, "click"), (4, 100, "click")]


def write_custom(d: Path, spec: str = CUSTOM_SPEC) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = ["cust_id,name,region,age,balance,score"]
    lines += [",".join("" if v is None else str(v) for v in row) for row in CUSTOMERS]
    (d / "customers.csv").write_text("\n".join(lines) + "\n")
    pq.write_table(
        pa.table({
            "sku": [p[0] for p in PRODUCTS], "category": [p[1] for p in PRODUCTS],
            "tags": [p[2] for p in PRODUCTS], "price": [p[3] for p in PRODUCTS],
        }),
        d / "products.parquet",
    )
    (d / "orders.json").write_text(json.dumps(ORDERS, indent=1))
    (d / "lines.jsonl").write_text("".join(
        json.dumps({"line_id": a, "order_id": b, "sku": c, "qty": q}) + "\n" for a, b, c, q in LINES))
    (d / "stores.tsv").write_text("store_id\tcity\n" + "".join(f"{a}\t{b}\n" for a, b in STORES))
    with gzip.open(d / "visits.csv.gz", "wt") as fh:
        fh.write("visit_id;cust_id;store_id;channel\n" + "".join(";".join(map(str, v)) + "\n" for v in VISITS))
    with gzip.open(d / "events.ndjson.gz", "wt") as fh:
        for a, b, c in EVENTS:
            fh.write(json.dumps({"event_id": a, "cust_id": b, "kind": c}) + "\n")
    spec_path = d / "custom.toml"
    spec_path.write_text(spec)
    return spec_path


# A brute-force model of the dataset: table -> (key, rows as dicts)
def _model():
    return {
        "customers": ("cust_id", [dict(zip(["cust_id", "name", "region", "age", "balance", "score"], r)) for r in CUSTOMERS]),
        "products": ("sku", [dict(zip(["sku", "category", "tags", "price"], r)) for r in PRODUCTS]),
        "orders": ("order_id", [{"cust": None, **o} for o in ORDERS]),
        "lines": ("line_id", [dict(zip(["line_id", "order_id", "sku", "qty"], r)) for r in LINES]),
        "stores": ("store_id", [dict(zip(["store_id", "city"], r)) for r in STORES]),
        "visits": ("visit_id", [dict(zip(["visit_id", "cust_id", "store_id", "channel"], r)) for r in VISITS]),
        "events": ("event_id", [dict(zip(["event_id", "cust_id", "kind"], r)) for r in EVENTS]),
        "big": ("cust_id", [dict(zip(["cust_id", "region", "age"], (r[0], r[2], r[3])))
                            for r in CUSTOMERS if r[3] is not None and r[3] >= 40]),
    }


# (table, step) -> (direction, column, target); reverse steps point back at the owner
_STEPS = {
    ("orders", "customer"): ("fwd", "cust", "customers"),
    ("customers", "orders"): ("rev", "cust", "orders"),
    ("lines", "order"): ("fwd", "order_id", "orders"),
    ("orders", "lines"): ("rev", "order_id", "lines"),
    ("lines", "product"): ("fwd", "sku", "products"),
    ("visits", "customer"): ("fwd", "cust_id", "customers"),
    ("customers", "visits"): ("rev", "cust_id", "visits"),
    ("visits", "store"): ("fwd", "store_id", "stores"),
    ("events", "customer"): ("fwd", "cust_id", "customers"),
    ("customers", "events"): ("rev", "cust_id", "events"),
}
_KIND = {  # (table, column) -> ("cat",) | ("multi", delim) | ("num", edges)
    ("customers", "region"): ("cat",), ("customers", "age"): ("num", [30, 50]),
    ("customers", "balance"): ("num", [-10, 0, 100]), ("customers", "score"): ("num", [30]),
    ("products", "category"): ("cat",), ("products", "tags"): ("multi", ";"),
    ("products", "price"): ("num", [10]), ("orders", "month"): ("cat",), ("lines", "qty"): ("num", [2]),
    ("stores", "city"): ("cat",), ("visits", "channel"): ("cat",), ("events", "kind"): ("cat",),
    ("big", "region"): ("cat",),
}


def _expected_pairs(model, table: str, field: str) -> set:
    *steps, column = field.split(".")
    key, rows = model[table]
    out = set()
    for row in rows:
        frontier, t = [row], table
        for step in steps:
            direction, col, target = _STEPS[(t, step)]
            tkey, trows = model[target]
            if direction == "fwd":
                frontier = [r for x in frontier for r in trows
                            if x[col] is not None and str(r[tkey]) == str(x[col])]
            else:
                frontier = [r for x in frontier for r in trows
                            if r[col] is not None and str(r[col]) == str(x[model[t][0]])]
            t = target
        kind = _KIND[(t, column)]
        for leaf in frontier:
            v = leaf[column]
            if v is None:
                continue
            if kind[0] == "cat":
                out.add((row[key], str(v)))
            elif kind[0] == "multi":
                out.update((row[key], p.strip()) for p in v.split(kind[1]) if p.strip())
            else:
                out.add((row[key], band_labels([float(e) for e in kind[1]])[bisect.bisect_right(kind[1], v)]))
    return out


def _actual_pairs(u, field: str) -> set:
    f = u.field(field)
    out = set()
    indptr, indices = np.asarray(u.csr_indptr), np.asarray(u.csr_indices)
    ids = u.ids_for_rows(np.arange(u.n_rows))
    for r in range(u.n_rows):
        for fid in indices[indptr[r]: indptr[r + 1]]:
            if f.feature_offset <= fid < f.feature_offset + len(f.values):
                out.add((ids[r], f.values[fid - f.feature_offset]))
    return out


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    d = tmp_path_factory.mktemp("custom")
    spec = write_custom(d / "data")
    root = d / "root"
    vdir = build_snapshot(spec, root, progress=quiet)
    return open_snapshot(root), spec, vdir


def test_custom_link_type_differs(custom):
    _, spec, _ = custom
    d = spec.parent
    t_orders = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_json_auto('{d / 'orders.json'}')").fetchall()}
    t_cust = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_csv('{d / 'customers.csv'}')").fetchall()}
    assert t_orders["cust"] == "VARCHAR" and t_cust["cust_id"] in ("BIGINT", "INTEGER")  # the premise
    snap = custom[0]
    assert snap.universes["orders"].n_rows == 6
    assert _actual_pairs(snap.universes["lines"], "order.customer.region") == {
        ("L1", "north"), ("L2", "north"), ("L3", "north"), ("L4", "south"),
        ("L5", "east"), ("L6", "east"), ("L7", "south")}


def test_custom_fields_resolved(custom):
    snap = custom[0]
    assert sorted(snap.universes) == ["big", "customers", "lines", "orders", "products"]
    assert list(snap.universes["customers"].fields) == [
        "age", "balance", "events.kind", "orders.lines.product.category", "orders.lines.product.tags",
        "orders.lines.qty", "region", "visits.store.city"]
    assert list(snap.universes["lines"].fields) == [
        "order.customer.age", "order.customer.balance", "order.customer.region", "order.customer.score",
        "order.month", "product.category", "product.price", "product.tags", "qty"]
    assert list(snap.universes["products"].fields) == ["category", "price", "tags"]
    assert list(snap.universes["orders"].fields) == ["month"]
    assert list(snap.universes["big"].fields) == ["region"]
    sem = {n: f.semantics for n, f in snap.universes["customers"].fields.items()}
    assert sem == {"age": "own", "balance": "own", "region": "own", "events.kind": "exists",
                   "orders.lines.product.category": "exists", "orders.lines.product.tags": "exists",
                   "orders.lines.qty": "exists", "visits.store.city": "exists"}
    assert {f.semantics for n, f in snap.universes["lines"].fields.items() if "." in n} == {"forward"}


def test_custom_row_ids(custom):
    snap = custom[0]
    cu = snap.universes["customers"]
    assert cu.key_kind == "int" and cu.row_ids.dtype == np.int64
    assert cu.ids_for_rows(range(5)) == [3, 7, 10, 25, 100]  # numeric, not lexicographic
    assert cu.rows_for_ids([100, "7", 3, 4, "x", 2**70]).tolist() == [4, 1, 0, -1, -1, -1]
    assert cu.rows_for_ids([7.0, 7.5, "7.5", None]).tolist() == [1, -1, -1, -1]  # never truncated
    assert cu.rows_for_ids(np.array([10, 11], dtype=np.int32)).tolist() == [2, -1]
    pu = snap.universes["products"]
    assert pu.key_kind == "bytes"
    assert pu.ids_for_rows(range(4)) == ["B", "a10", "a9", "b"]  # bytewise
    assert pu.rows_for_ids(["a9", "a", "a100", "b"]).tolist() == [2, -1, -1, 3]
    assert snap.universes["lines"].ids_for_rows(range(7)) == [f"L{i}" for i in range(1, 8)]
    assert snap.universes["big"].ids_for_rows(range(2)) == [3, 7]


def _id_candidates(u):
    """Ids for a universe's lookups: its own, as text / floats / numpy scalars, cut and lengthened, with NULs,
    and others (numbers past int64, booleans, None, ...)."""
    known = u.ids_for_rows(range(u.n_rows))
    own = st.sampled_from(known)
    return st.one_of(
        own, own.map(str), own.map(lambda i: str(i) + "\0"), own.map(lambda i: str(i)[:-1]),
        own.map(lambda i: str(i) + "0"), own.map(lambda i: "\0" + str(i)),
        own.filter(lambda i: isinstance(i, int)).map(float), own.filter(lambda i: isinstance(i, int)).map(np.int32),
        own.filter(lambda i: isinstance(i, int)).map(np.uint64),
        st.integers(-(2**64), 2**64), st.sampled_from([-(2**63), 2**63 - 1, 2**63, True, False, None, 7.5, "7.5",
                                                          "", " 7", float("nan"), float("inf"), np.int64(-(2**63))]),
        st.text(max_size=6), st.floats())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("universe", ["customers", "products", "lines", "big"])
def test_row_for_id_equals_rows_for_ids(custom, universe, data):
    """One id's row without arrays (the per-request Assign's lookup) is the batch lookup's: int keys by int_key,
    never truncated; text keys never cut or matched through NULs."""
    u = custom[0].universes[universe]
    ident = data.draw(_id_candidates(u))
    assert u.row_for_id(ident) == u.rows_for_ids([ident])[0], repr(ident)


@pytest.mark.parametrize("universe", ["customers", "lines", "products", "orders", "big"])
def test_custom_every_field_exact(custom, universe):
    snap = custom[0]
    u = snap.universes[universe]
    model = _model()
    assert u.n_rows == len(model[u.table][1])
    for name, f in u.fields.items():
        expected = _expected_pairs(model, u.table, name)
        assert _actual_pairs(u, name) == expected, name
        counts = {v: sum(1 for _, w in expected if w == v) for v in f.values}
        assert f.counts.tolist() == [counts[v] for v in f.values], name
        if f.kind != "numeric":
            assert f.values == sorted({v for _, v in expected}), name
    assert_consistent(u)
    assert_density_rule(u)


def test_custom_literal_values(custom):
    snap = custom[0]
    cu = snap.universes["customers"]
    assert cu.field("age").values == ["<30", "30-50", ">=50"]
    assert cu.field("balance").values == ["<-10", "[-10, 0)", "0-100", ">=100"]
    assert cu.field("orders.lines.product.tags").values == ["dry", "premium", "squeaky"]
    assert cu.field("orders.lines.qty").values == ["<2", ">=2"]
    pairs = _actual_pairs(cu, "orders.lines.product.tags")
    assert {t for c, t in pairs if c == 100} == {"dry", "premium"}  # ";;dry" -> dry; "dry; premium" trimmed
    assert {t for c, t in pairs if c == 7} == {"squeaky"}
    assert {c for c, t in _actual_pairs(cu, "orders.lines.qty") if t == ">=2"} == {100, 7, 3}
    assert _actual_pairs(cu, "visits.store.city") == {(100, "Oulu"), (100, "Turku"), (3, "Oulu"), (25, "Oulu")}
    assert _actual_pairs(cu, "events.kind") == {(7, "click"), (7, "view"), (10, "click"), (100, "click")}
    # quantile edges (quantiles = 2 over 10..50): the median
    lu = snap.universes["lines"]
    assert lu.field("order.customer.score").edges == [30.0]
    assert lu.field("order.customer.score").values == ["<30", ">=30"]
    assert snap.universes["products"].field("category").values == ["food", "toy"]


def test_custom_raw_numeric(custom):
    snap = custom[0]
    cu = snap.universes["customers"]  # rows: 3, 7, 10, 25, 100
    assert np.array_equal(cu.field("age").numeric, [67, 41, 33, np.nan, 25], equal_nan=True)
    assert np.array_equal(cu.field("balance").numeric, [150, -5, 50, 0, -20])
    assert cu.field("orders.lines.qty").numeric is None
    lu = snap.universes["lines"]  # L1..L7 -> orders 1,1,2,3,4,4,5 -> customers 100,100,100,7,3,3,10
    assert np.array_equal(lu.field("order.customer.age").numeric, [25, 25, 25, 41, 67, 67, 33])
    assert np.array_equal(lu.field("qty").numeric, [1, 3, 1, 2, 5, 1, np.nan], equal_nan=True)
    assert np.array_equal(lu.field("product.price").numeric, [4.5, 30, 8, 12, 4.5, 12, 30])


def test_custom_dense_sparse_choice(custom, tmp_path):
    snap = custom[0]
    cu = snap.universes["customers"]  # 5 rows, threshold 0.4 -> dense from 2 rows
    region = cu.field("region")
    assert dict(zip(region.values, region.counts.tolist())) == {"east": 1, "north": 2, "south": 2}
    assert [cu.is_dense(region.feature_offset + i) for i in range(3)] == [False, True, True]
    # threshold 0 -> every non-empty feature dense; threshold 1 -> only features of every row
    for threshold, check in ((0.0, lambda c, n: c >= 1), (1.0, lambda c, n: c == n)):
        spec = write_custom(tmp_path / f"t{threshold}",
                            CUSTOM_SPEC.replace("dense_threshold = 0.4", f"dense_threshold = {threshold}"))
        s = open_snapshot(build_snapshot(spec, tmp_path / f"root{threshold}", progress=quiet))
        for u in s.universes.values():
            for fid in range(u.n_features):
                assert u.is_dense(fid) == check(int(u.feature_count[fid]), u.n_rows)
            assert_consistent(u)


def test_density_boundary_is_exact(tmp_path):
    """0.07 * 100 is 7.000000000000001 in floating point; a feature on exactly 7% of rows is dense."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "t.csv").write_text("id,c\n" + "".join(f"{i},{'a' if i < 7 else 'b'}\n" for i in range(100)))
    (d / "s.toml").write_text('name = "b"\n[build]\ndense_threshold = 0.07\n'
                              '[tables.t]\nfile = "t.csv"\nkey = "id"\ncategorical = ["c"]\n[universes.t]\n')
    u = open_snapshot(build_snapshot(d / "s.toml", tmp_path / "root", progress=quiet)).universes["t"]
    assert u.field("c").counts.tolist() == [7, 93]
    assert u.is_dense(0)


# --- determinism and publishing ---------------------------------------------


def _files(vdir: Path) -> dict[str, bytes]:
    return {p.relative_to(vdir).as_posix(): p.read_bytes() for p in sorted(vdir.rglob("*")) if p.is_file()}


def test_custom_deterministic(tmp_path):
    spec = write_custom(tmp_path / "data")
    v1 = build_snapshot(spec, tmp_path / "a", progress=quiet)
    v2 = build_snapshot(spec, tmp_path / "b", progress=quiet, threads=1)
    assert v1.name == v2.name and len(v1.name) == 16
    assert _files(v1) == _files(v2)
    # the same input copied elsewhere (other absolute paths) gives the same version
    shutil.copytree(tmp_path / "data", tmp_path / "data2")
    v3 = build_snapshot(tmp_path / "data2" / "custom.toml", tmp_path / "c", progress=quiet)
    assert v3.name == v1.name and _files(v3) == _files(v1)


def test_petnord_deterministic(petnord_root, tmp_path):
    v1 = petnord_root / "petnord" / (petnord_root / "petnord" / "CURRENT").read_text().strip()
    v2 = build_snapshot(Path(__file__).resolve().parents[2] / "specs" / "petnord.toml", tmp_path / "again", progress=quiet, threads=1)
    assert v2.name == v1.name
    a, b = _files(v1), _files(v2)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_rebuild_same_root_is_idempotent(tmp_path):
    spec = write_custom(tmp_path / "data")
    root = tmp_path / "root"
    v1 = build_snapshot(spec, root, progress=quiet)
    before = _files(v1)
    mtimes = {p: p.stat().st_mtime_ns for p in v1.rglob("*")}
    msgs = []
    v2 = build_snapshot(spec, root, progress=msgs.append)
    assert v2 == v1
    assert _files(v1) == before
    assert {p: p.stat().st_mtime_ns for p in v1.rglob("*")} == mtimes  # not rewritten
    assert any("already published" in m for m in msgs)
    assert sorted(p.name for p in (root / "custom").iterdir()) == sorted([v1.name, "CURRENT"])
    assert (root / "custom" / "CURRENT").read_text() == v1.name + "\n"
    assert open_snapshot(root).version == v1.name


def test_explicit_versions_and_current(tmp_path):
    spec = write_custom(tmp_path / "data")
    root = tmp_path / "root"
    v1 = build_snapshot(spec, root, version="v1", progress=quiet)
    assert v1 == root / "custom" / "v1"
    assert (root / "custom" / "CURRENT").read_text() == "v1\n"
    assert open_snapshot(root).manifest["version"] == "v1"
    # same content, same explicit version: fine
    assert build_snapshot(spec, root, version="v1", progress=quiet) == v1
    # different content under an existing version name: refused, nothing changes
    before = _files(v1)
    with open(tmp_path / "data" / "customers.csv", "a") as fh:
        fh.write("11,Fay,west,50,1,60\n")
    with pytest.raises(BuildError, match=r"version 'v1' of 'custom' exists with different content"):
        build_snapshot(spec, root, version="v1", progress=quiet)
    assert _files(v1) == before
    assert (root / "custom" / "CURRENT").read_text() == "v1\n"
    assert sorted(p.name for p in (root / "custom").iterdir()) == ["CURRENT", "v1"]
    # a new version name: published, CURRENT moves, the old version stays
    v2 = build_snapshot(spec, root, version="v2", progress=quiet)
    assert (root / "custom" / "CURRENT").read_text() == "v2\n"
    assert _files(v1) == before
    assert open_snapshot(root).universes["customers"].n_rows == 6
    assert open_snapshot(root, version="v1").universes["customers"].n_rows == 5
    assert v2.name == "v2"


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", ".."])
def test_bad_version_name(tmp_path, bad):
    from segsrv.errors import SpecError

    spec = write_custom(tmp_path / "data")
    with pytest.raises(SpecError, match="not a valid directory name"):
        build_snapshot(spec, tmp_path / "root", version=bad, progress=quiet)
    assert not (tmp_path / "root" / "custom").exists()


def test_progress_messages(tmp_path):
    spec = write_custom(tmp_path / "data")
    msgs = []
    vdir = build_snapshot(spec, tmp_path / "root", progress=msgs.append)
    text = "\n".join(msgs)
    assert "loaded customers: 5 rows" in text
    assert "keys, links and numeric columns checked" in text
    assert f"published custom/{vdir.name}" in text
    assert os.listdir(tmp_path / "root") == ["custom"]


def test_float_link_column_matches_integer_key(tmp_path):
    """A link column stored as DOUBLE (pandas writes integer columns with gaps as float64)
    matches integer keys by value; a non-integral value is still reported."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "t.csv").write_text("id,c\n1,a\n2,b\n3,a\n")
    pq.write_table(pa.table({"oid": [1, 2, 3], "tid": pa.array([1.0, None, 3.0], pa.float64())}), d / "o.parquet")
    spec = ('name = "f"\n[tables.t]\nfile = "t.csv"\nkey = "id"\ncategorical = ["c"]\n'
            '[tables.o]\nfile = "o.parquet"\nkey = "oid"\nlinks = { t = { column = "tid", table = "t" } }\n'
            '[universes.o]\ninclude = ["t.c"]\n')
    (d / "s.toml").write_text(spec)
    u = open_snapshot(build_snapshot(d / "s.toml", tmp_path / "root", progress=quiet)).universes["o"]
    assert _actual_pairs(u, "t.c") == {(1, "a"), (3, "a")}
    pq.write_table(pa.table({"oid": [1, 2], "tid": pa.array([1.0, 2.5], pa.float64())}), d / "o.parquet")
    with pytest.raises(BuildError, match=r"column 'tid' .*1 values with no matching key in 't', e\.g\. oid=2 -> 2\.5"):
        build_snapshot(d / "s.toml", tmp_path / "root2", progress=quiet)


def test_input_row_order_does_not_matter(tmp_path, tiny_data):
    """Shuffled input rows give the same bytes (rows are numbered by key, features are sets)."""
    a = tiny_data.write(tmp_path / "a")
    head, *rows = tiny_data.orders.strip().splitlines()
    chead, *crows = tiny_data.customers.strip().splitlines()
    b = tiny_data.write(tmp_path / "b", orders="\n".join([head, *reversed(rows)]) + "\n",
                        customers="\n".join([chead, *crows[2:], *crows[:2]]) + "\n")
    va = build_snapshot(a, tmp_path / "ra", progress=quiet)
    vb = build_snapshot(b, tmp_path / "rb", progress=quiet)
    assert va.name == vb.name and _files(va) == _files(vb)
    # the spec text is part of the input: editing even a comment gives a new version
    b.write_text(b.read_text() + "# a comment\n")
    vc = build_snapshot(b, tmp_path / "rc", progress=quiet)
    assert vc.name != va.name
    assert {k: v for k, v in _files(vc).items() if k != "manifest.json"} == \
           {k: v for k, v in _files(va).items() if k != "manifest.json"}
