"""The demo shop end to end: generate, build, and answer the seed-000 query verbatim.

Every figure is checked against DuckDB over the generated Parquet tables.
"""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

from segsrv.demo.generate import generate_demo
from segsrv.service import run_json
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from support import DEMO_SEED_QUERY

SEED_QUERY = DEMO_SEED_QUERY


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo-data")
    spec = generate_demo(data, n_customers=3000, seed=11)
    root = tmp_path_factory.mktemp("demo-snap")
    build_snapshot(spec, root, progress=lambda m: None)
    con = duckdb.connect()
    for table in ("customers", "products", "orders", "order_lines", "events"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{data / (table + '.parquet')}')")
    return open_snapshot(root), root, con


def test_row_counts_match_tables(demo):
    snap, _, con = demo
    for universe, table in (("customers", "customers"), ("order_lines", "order_lines")):
        n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert snap.universes[universe].n_rows == n


def _seed_lifts(con) -> dict[tuple[str, str], tuple[int, float]]:
    """Brute force: lift of every customer region / value band among grain-free dog dry-food lines."""
    con.execute(
        """CREATE OR REPLACE TEMP VIEW lines AS
           SELECT l.line_id, c.region, c.lifetime_value_band,
                  (p.category = 'dog-dryfood' AND list_contains(string_split(p.tag, '|'), 'grain-free')) AS cond
           FROM order_lines l JOIN products p USING (product_id) JOIN customers c USING (customer_id)"""
    )
    n, n_c = con.execute("SELECT count(*), count(*) FILTER (WHERE cond) FROM lines").fetchone()
    out = {}
    for field, col in (("customer.region", "region"), ("customer.lifetime_value_band", "lifetime_value_band")):
        for value, n_f, n_cf in con.execute(
            f"SELECT {col}, count(*), count(*) FILTER (WHERE cond) FROM lines GROUP BY {col}"
        ).fetchall():
            out[(field, value)] = (n_cf, (n_cf / n_c) / (n_f / n))
    return out


def test_seed_query_verbatim_matches_brute_force(demo):
    snap, _, con = demo
    answer = run_json("relate", snap, json.loads(json.dumps(SEED_QUERY)))
    expected = _seed_lifts(con)
    assert answer["hits"], "the planted pattern must over-index"
    over = {k: v for k, v in expected.items() if v[1] > 1 and v[0] >= 1}
    assert len(answer["hits"]) == len(over)
    lifts = [h["$lift"] for h in answer["hits"]]
    regions = [h["customer.region"] for h in answer["hits"] if h["customer.region"] is not None]
    # the planted region leads the regions (docs/demo.md)
    assert regions[0] == "north"
    for hit in answer["hits"]:
        if hit["customer.region"] is not None:
            support, lift = expected[("customer.region", hit["customer.region"])]
            assert hit["$support"] == support
            assert hit["$lift"] == pytest.approx(lift, rel=1e-12)
    assert sorted(v[1] for v in over.values())[::-1][: len(lifts)] == pytest.approx(sorted(lifts)[::-1], rel=1e-12)


def test_reverse_link_behaviour_count(demo):
    snap, _, con = demo
    expected = con.execute(
        """SELECT count(DISTINCT o.customer_id) FROM orders o JOIN order_lines l USING (order_id)
           JOIN products p USING (product_id) WHERE p.category = 'dog-dryfood'"""
    ).fetchone()[0]
    got = run_json("count", snap, {"from": "customers", "where": {"orders.lines.product.category": "dog-dryfood"}})
    assert got["count"] == expected
    both = con.execute(
        """SELECT count(*) FROM (
             SELECT o.customer_id FROM orders o JOIN order_lines l USING (order_id) JOIN products p USING (product_id)
             GROUP BY o.customer_id
             HAVING bool_or(p.category = 'dog-dryfood') AND bool_or(p.category = 'dog-dentaltreat'))"""
    ).fetchone()[0]
    got = run_json("count", snap, {"from": "customers", "where": {"$and": [
        {"orders.lines.product.category": "dog-dryfood"}, {"orders.lines.product.category": "dog-dentaltreat"}]}})
    assert got["count"] == both


def test_cli_runs_seed_query(demo):
    _, root, _ = demo
    proc = subprocess.run(
        [sys.executable, "-m", "segsrv", "query", "relate", "--local", str(root), "--json", json.dumps(SEED_QUERY)],
        capture_output=True, text=True, check=True,
    )
    answer = json.loads(proc.stdout)
    assert answer["from"] == "order_lines"
    assert [h for h in answer["hits"] if h["customer.region"] == "north"][0]["$lift"] > 1.5
