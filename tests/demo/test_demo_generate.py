"""Tests of the synthetic demo shop generator (segsrv.demo.generate)."""

from __future__ import annotations

import hashlib
import pathlib
import sys
import tomllib

import duckdb
import pyarrow.parquet as pq
import pytest

try:
    import segsrv  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from segsrv.demo.generate import SCHEMAS, generate_demo  # noqa: E402
from segsrv.demo.patterns import PATTERNS, churn_auc, measure  # noqa: E402

N = 5_000
SEED = 7
TABLES = ["customers", "products", "orders", "order_lines", "events"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("demo_a")
    spec = generate_demo(out, N, seed=SEED)
    assert spec == out / "spec.toml"
    return out


@pytest.fixture(scope="module")
def spec(demo) -> dict:
    with open(demo / "spec.toml", "rb") as fh:
        return tomllib.load(fh)


def _digests(d: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _rows(d: pathlib.Path) -> dict[str, int]:
    return {t: pq.read_metadata(d / f"{t}.parquet").num_rows for t in TABLES}


# ---------------------------------------------------------------------------
# determinism and API
# ---------------------------------------------------------------------------


def test_deterministic_bytes(demo, tmp_path):
    lines: list[str] = []
    again = tmp_path / "nested" / "demo_b"  # out_dir is created if needed
    spec = generate_demo(str(again), N, seed=SEED, progress=lines.append)
    assert spec == again / "spec.toml"
    a, b = _digests(demo), _digests(again)
    assert sorted(a) == sorted(f"{t}.parquet" for t in TABLES) + ["spec.toml"]
    assert a == b
    # progress lines are short human-readable strings mentioning every table
    assert all(isinstance(s, str) and 0 < len(s) < 200 for s in lines)
    for t in TABLES:
        assert any(s.startswith(f"{t}: ") and "rows written" in s for s in lines), t


def test_seed_changes_data(demo, tmp_path):
    generate_demo(tmp_path, N, seed=SEED + 1)
    a, b = _digests(demo), _digests(tmp_path)
    assert a["customers.parquet"] != b["customers.parquet"]
    assert a["order_lines.parquet"] != b["order_lines.parquet"]


def test_no_timestamps_in_parquet_metadata(demo):
    for t in TABLES:
        md = pq.read_metadata(demo / f"{t}.parquet")
        assert set((md.metadata or {}).keys()) <= {b"ARROW:schema"}
        assert md.row_group(0).column(0).compression in ("ZSTD", "SNAPPY")


def test_tiny_sizes(tmp_path):
    for n in (1, 3):
        generate_demo(tmp_path / str(n), n)
        assert _rows(tmp_path / str(n))["customers"] == n
    with pytest.raises(ValueError):
        generate_demo(tmp_path / "zero", 0)


# ---------------------------------------------------------------------------
# schemas, keys, referential integrity
# ---------------------------------------------------------------------------


def test_schemas(demo):
    for t in TABLES:
        schema = pq.read_schema(demo / f"{t}.parquet")
        assert schema.remove_metadata() == SCHEMAS[t].remove_metadata(), t


def test_keys_unique_and_links_resolve(demo, spec):
    con = duckdb.connect()
    tables = spec["tables"]
    for name, t in tables.items():
        f = (demo / t["file"]).as_posix()
        n, n_distinct, n_null = con.execute(
            f"SELECT count(*), count(DISTINCT {t['key']}), count(*) - count({t['key']}) FROM '{f}'"
        ).fetchone()
        assert n > 0 and n == n_distinct and n_null == 0, name
        for link_name, link in t.get("links", {}).items():
            target = tables[link["table"]]
            tf = (demo / target["file"]).as_posix()
            missing = con.execute(
                f"SELECT count(*) FROM '{f}' s ANTI JOIN '{tf}' t "
                f"ON s.{link['column']} = t.{target['key']} WHERE s.{link['column']} IS NOT NULL"
            ).fetchone()[0]
            assert missing == 0, (name, link_name)


def test_value_domains(demo):
    con = duckdb.connect()
    d = demo.as_posix()

    def distinct(table, col):
        return {r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM '{d}/{table}.parquet'").fetchall()}

    assert distinct("customers", "lifetime_value_band") == {"low", "mid", "high", "vip"}
    assert distinct("customers", "signup_channel") == {"web", "app", "store", "referral"}
    assert distinct("customers", "pet_type") == {"dog", "cat", "dog+cat", "small_animal", "fish", "none"}
    regions = distinct("customers", "region")
    assert 6 <= len(regions) <= 8 and all(r == r.lower() for r in regions)
    assert distinct("orders", "channel") == {"web", "app", "store"}
    months = distinct("orders", "order_month")
    assert all(len(m) == 7 and m[4] == "-" for m in months)
    cats = distinct("products", "category")
    assert 20 <= len(cats) <= 30 and {"dog-dryfood", "dog-dentaltreat", "cat-litter"} <= cats
    assert all("-" in c for c in cats)
    assert distinct("products", "brand_tier") == {"value", "standard", "premium"}
    assert 25 <= len(distinct("products", "brand")) <= 35
    tags = con.execute(
        f"SELECT DISTINCT unnest(string_split(tag, '|')) FROM '{d}/products.parquet' WHERE tag <> ''"
    ).fetchall()
    assert "grain-free" in {r[0] for r in tags} and all(r[0] for r in tags)
    assert distinct("events", "event_type") == {"view", "search", "filter", "add_to_cart"}
    # nullability rules of events
    bad = con.execute(
        f"""SELECT count(*) FROM '{d}/events.parquet' WHERE
            (event_type IN ('search', 'filter')) <> (product_id IS NULL)
            OR (event_type = 'filter') <> (filter IS NOT NULL)
            OR (event_type = 'search') <> (search_term IS NOT NULL)"""
    ).fetchone()[0]
    assert bad == 0
    # order_lines.customer_id is the order's customer; totals add up
    bad = con.execute(
        f"""SELECT count(*) FROM '{d}/order_lines.parquet' l JOIN '{d}/orders.parquet' o USING (order_id)
            WHERE l.customer_id <> o.customer_id"""
    ).fetchone()[0]
    assert bad == 0
    bad = con.execute(
        f"""SELECT count(*) FROM (
              SELECT o.order_id, o.total, sum(l.qty * l.unit_price) s
              FROM '{d}/orders.parquet' o JOIN '{d}/order_lines.parquet' l USING (order_id)
              GROUP BY ALL) WHERE abs(total - s) > 0.011"""
    ).fetchone()[0]
    assert bad == 0
    lo, hi = con.execute(f"SELECT min(qty), max(qty) FROM '{d}/order_lines.parquet'").fetchone()
    assert lo >= 1 and hi <= 12


# ---------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------


def test_row_count_scaling(demo, tmp_path):
    small = _rows(demo)
    generate_demo(tmp_path, 2 * N, seed=SEED)
    big = _rows(tmp_path)
    assert small["customers"] == N and big["customers"] == 2 * N
    for r in (small, big):
        n = r["customers"]
        assert 8.5 <= r["order_lines"] / n <= 11.5
        assert 4.0 <= r["events"] / n <= 6.0
        assert 2.7 <= r["order_lines"] / r["orders"] <= 3.3
        assert 500 <= r["products"] <= 5_100
    for t in ("orders", "order_lines", "events"):
        assert 1.85 <= big[t] / small[t] <= 2.15, t
    assert big["products"] >= small["products"]


# ---------------------------------------------------------------------------
# spec.toml
# ---------------------------------------------------------------------------


def _declared(t: dict) -> set[str]:
    cols = set(t.get("categorical", [])) | set(t.get("numeric", {})) | set(t.get("multi", {}))
    return cols


def _resolve(spec: dict, table: str, path: str) -> list[str]:
    """Resolve a universe include path to the (table, column) names it designates."""
    tables = spec["tables"]
    steps = path.split(".")
    cur = table
    for step in steps[:-1]:
        links = tables[cur].get("links", {})
        if step in links:
            cur = links[step]["table"]
            continue
        reverse = [
            name for name, t in tables.items()
            for link in t.get("links", {}).values()
            if link["table"] == cur and link.get("reverse") == step
        ]
        assert len(reverse) == 1, f"{path}: step {step!r} does not resolve from {cur}"
        cur = reverse[0]
    last = steps[-1]
    cols = sorted(_declared(tables[cur])) if last == "*" else [last]
    for c in cols:
        assert c in _declared(tables[cur]), f"{path}: {c} not a declared column of {cur}"
    return [f"{cur}.{c}" for c in cols]


def test_spec_toml(demo, spec):
    assert spec["name"] == "demo"
    assert spec["description"] == f"segsrv synthetic demo shop, {N} customers, seed {SEED}"
    assert set(spec["tables"]) == set(TABLES)
    for name, t in spec["tables"].items():
        f = demo / t["file"]
        assert f.exists() and not pathlib.Path(t["file"]).is_absolute()
        cols = set(pq.read_schema(f).names)
        assert t["key"] in cols
        for c in _declared(t):
            assert c in cols, (name, c)
        assert t["key"] not in _declared(t)
        for d in t.get("multi", {}).values():
            assert d == "|"
        for spec_num in t.get("numeric", {}).values():
            assert ("edges" in spec_num) != ("quantiles" in spec_num)
            if "edges" in spec_num:
                assert spec_num["edges"] == sorted(spec_num["edges"])
        for link in t.get("links", {}).values():
            assert link["column"] in cols and link["table"] in spec["tables"]
            assert link["reverse"]
    # reverse names are unique per target table
    seen = set()
    for t in spec["tables"].values():
        for link in t.get("links", {}).values():
            key = (link["table"], link["reverse"])
            assert key not in seen
            seen.add(key)
    assert spec["tables"]["products"]["multi"] == {"tag": "|"}
    assert set(spec["universes"]) >= {"customers", "order_lines"}
    for uname, u in spec["universes"].items():
        assert u["table"] in spec["tables"]
        assert "*" in u["include"]
        for path in u["include"]:
            assert _resolve(spec, u["table"], path), (uname, path)
    # no high-cardinality text columns in any universe
    for u in spec["universes"].values():
        # product names are included on purpose only as customers' purchase features (sparse, ~5k at 1M)
        allowed = {"orders.lines.product.name"}
        assert not any((p.endswith(".name") or p.endswith("_id")) and p not in allowed for p in u["include"])


def test_seed_query_fields_exist(spec):
    # fields referenced by the documented seed query over the order_lines universe
    for path in ("product.category", "product.tag", "customer.region", "customer.lifetime_value_band"):
        _resolve(spec, "order_lines", path)


# ---------------------------------------------------------------------------
# planted patterns
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lifts(demo) -> dict[str, float]:
    return measure(demo)


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p.name for p in PATTERNS])
def test_planted_pattern(lifts, pattern):
    lo, hi = pattern.test_range
    assert lo <= lifts[pattern.name] <= hi, f"{pattern.name}: {lifts[pattern.name]:.3f} not in {pattern.test_range}"


def test_seed_query_region_and_bands(demo):
    """The documented seed query: north and vip/high show the largest lifts."""
    q = f"""
    WITH l AS (
      SELECT c.region, c.lifetime_value_band AS band,
             (p.category = 'dog-dryfood' AND list_contains(string_split(p.tag, '|'), 'grain-free'))::INT AS gf
      FROM '{demo.as_posix()}/order_lines.parquet' l
      JOIN '{demo.as_posix()}/products.parquet' p USING (product_id)
      JOIN '{demo.as_posix()}/customers.parquet' c USING (customer_id))
    SELECT {{col}} FROM l GROUP BY {{col}} ORDER BY avg(gf) DESC"""
    con = duckdb.connect()
    regions = [r[0] for r in con.execute(q.format(col="region")).fetchall()]
    bands = [r[0] for r in con.execute(q.format(col="band")).fetchall()]
    assert regions[0] == "north"
    assert set(bands[:2]) == {"high", "vip"}


def test_churn_is_predictable_but_not_trivial(demo):
    auc = churn_auc(demo)
    assert 0.73 <= auc <= 0.87, auc
    con = duckdb.connect()
    rate = con.execute(f"SELECT avg(churned::INT) FROM '{demo.as_posix()}/customers.parquet'").fetchone()[0]
    assert 0.15 <= rate <= 0.35
