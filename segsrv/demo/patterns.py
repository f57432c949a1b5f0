"""The planted behavioural patterns of the demo shop and the SQL that measures them.

Each pattern is a DuckDB query over the Parquet files written by
:func:`segsrv.demo.generate.generate_demo`; ``{d}`` in the SQL is the data
directory.  Every query returns one row with one column, ``lift`` (a ratio of
rates; 1.0 means "no pattern").  docs/demo.md lists the same queries with the
values measured at 100,000 customers; tests/demo/test_demo_generate.py checks
that each measured lift falls inside ``test_range`` at a small scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Pattern", "PATTERNS", "measure", "churn_auc"]


@dataclass(frozen=True)
class Pattern:
    name: str
    description: str
    intended: float  # designed lift (approximate; the generator is stochastic)
    test_range: tuple[float, float]  # accepted range at test scale (~5,000 customers)
    sql: str


def _grain_free_line_lift(customer_flag: str) -> str:
    """SQL: P(flag | grain-free dog-dryfood order line) / P(flag | any order line); `customer_flag` is a
    boolean expression over the line's customer `c`."""
    return f"""
WITH l AS (
  SELECT {customer_flag} AS flag,
         (p.category = 'dog-dryfood' AND list_contains(string_split(p.tag, '|'), 'grain-free'))::INT AS gf
  FROM '{{d}}/order_lines.parquet' l
  JOIN '{{d}}/products.parquet' p USING (product_id)
  JOIN '{{d}}/customers.parquet' c USING (customer_id)
)
SELECT avg(flag::INT) FILTER (WHERE gf = 1) / avg(flag::INT) AS lift FROM l
"""


PATTERNS: list[Pattern] = [
    Pattern(
        "dryfood_dental",
        "Customers who buy dog-dryfood also buy dog-dentaltreat: "
        "P(dentaltreat buyer | dryfood buyer) / P(dentaltreat buyer)",
        2.6,
        (2.3, 3.0),
        """
WITH cc AS (
  SELECT DISTINCT l.customer_id, p.category
  FROM '{d}/order_lines.parquet' l JOIN '{d}/products.parquet' p USING (product_id)
  WHERE p.category IN ('dog-dryfood', 'dog-dentaltreat')
),
dry AS (SELECT customer_id FROM cc WHERE category = 'dog-dryfood'),
den AS (SELECT customer_id FROM cc WHERE category = 'dog-dentaltreat')
SELECT ((SELECT count(*) FROM dry JOIN den USING (customer_id)) / (SELECT count(*) FROM dry))
     / ((SELECT count(*) FROM den) / (SELECT count(*) FROM '{d}/customers.parquet')) AS lift
""",
    ),
    Pattern(
        "grainfree_filter_premium",
        "Customers who used the grain-free filter buy premium brands: premium share of their "
        "order lines / premium share of all order lines",
        2.2,
        (1.95, 2.45),
        """
WITH f AS (SELECT DISTINCT customer_id FROM '{d}/events.parquet' WHERE filter = 'grain-free'),
l AS (
  SELECT l.customer_id IN (SELECT customer_id FROM f) AS filtered,
         (p.brand_tier = 'premium')::INT AS premium
  FROM '{d}/order_lines.parquet' l JOIN '{d}/products.parquet' p USING (product_id)
)
SELECT avg(premium) FILTER (WHERE filtered) / avg(premium) AS lift FROM l
""",
    ),
    Pattern(
        "gf_dryfood_north",
        "Grain-free dog-dryfood order lines are concentrated in region 'north': "
        "P(north | grain-free dog-dryfood line) / P(north | any line) "
        "(the $lift of customer.region = north in the seed query over the order_lines universe)",
        2.3,
        (1.5, 3.3),
        _grain_free_line_lift("c.region = 'north'"),
    ),
    Pattern(
        "gf_dryfood_vip",
        "Grain-free dog-dryfood order lines are concentrated in the vip band: "
        "P(vip | grain-free dog-dryfood line) / P(vip | any line)",
        1.6,
        (1.2, 2.4),
        _grain_free_line_lift("c.lifetime_value_band = 'vip'"),
    ),
    Pattern(
        "gf_dryfood_highvip",
        "Grain-free dog-dryfood order lines are concentrated in the high and vip bands: "
        "P(high or vip | grain-free dog-dryfood line) / P(high or vip | any line)",
        1.4,
        (1.15, 1.65),
        _grain_free_line_lift("c.lifetime_value_band IN ('high', 'vip')"),
    ),
    Pattern(
        "islands_churn",
        "Region 'islands' churns about twice as much: churn rate in islands / churn rate elsewhere",
        2.0,
        (1.6, 2.6),
        """
SELECT avg(churned::INT) FILTER (WHERE region = 'islands')
     / avg(churned::INT) FILTER (WHERE region <> 'islands') AS lift
FROM '{d}/customers.parquet'
""",
    ),
    Pattern(
        "newsletter_churn",
        "Newsletter subscribers churn less: churn rate with newsletter / churn rate without",
        0.57,
        (0.42, 0.7),
        """
SELECT avg(churned::INT) FILTER (WHERE newsletter)
     / avg(churned::INT) FILTER (WHERE NOT newsletter) AS lift
FROM '{d}/customers.parquet'
""",
    ),
    Pattern(
        "subscription_churn",
        "Customers with at least one subscription order churn less: "
        "churn rate of subscription users / churn rate of other customers",
        0.43,
        (0.28, 0.6),
        """
WITH s AS (SELECT DISTINCT customer_id FROM '{d}/orders.parquet' WHERE subscription)
SELECT avg(churned::INT) FILTER (WHERE customer_id IN (SELECT customer_id FROM s))
     / avg(churned::INT) FILTER (WHERE customer_id NOT IN (SELECT customer_id FROM s)) AS lift
FROM '{d}/customers.parquet'
""",
    ),
    Pattern(
        "returns_churn",
        "Customers who return a lot (>= 20% of their order lines returned, among customers with "
        "at least one line) churn more: churn rate of heavy returners / churn rate of all buyers",
        1.65,
        (1.2, 2.2),
        """
WITH r AS (
  SELECT customer_id, avg(returned::INT) AS rr
  FROM '{d}/order_lines.parquet' GROUP BY customer_id
)
SELECT avg(c.churned::INT) FILTER (WHERE r.rr >= 0.2) / avg(c.churned::INT) AS lift
FROM '{d}/customers.parquet' c JOIN r USING (customer_id)
""",
    ),
    Pattern(
        "recency_churn",
        "Churned customers stopped ordering: churn rate of buyers with no order in the last "
        "3 months (2024-10..2024-12) / churn rate of all buyers",
        1.53,
        (1.35, 1.7),
        """
WITH o AS (
  SELECT customer_id, max(order_month) >= '2024-10' AS recent
  FROM '{d}/orders.parquet' GROUP BY customer_id
)
SELECT avg(c.churned::INT) FILTER (WHERE NOT o.recent) / avg(c.churned::INT) AS lift
FROM '{d}/customers.parquet' c JOIN o USING (customer_id)
""",
    ),
    Pattern(
        "app_signup_app_orders",
        "Customers who signed up in the app order in the app: "
        "P(order channel = app | signup_channel = app) / P(order channel = app)",
        2.0,
        (1.85, 2.2),
        """
SELECT avg((o.channel = 'app')::INT) FILTER (WHERE c.signup_channel = 'app')
     / avg((o.channel = 'app')::INT) AS lift
FROM '{d}/orders.parquet' o JOIN '{d}/customers.parquet' c USING (customer_id)
""",
    ),
]


def measure(data_dir: str | os.PathLike) -> dict[str, float]:
    """Run every pattern's SQL over ``data_dir`` and return {pattern name: lift}."""
    import duckdb

    d = os.fspath(data_dir).replace("'", "''")
    con = duckdb.connect()
    try:
        return {p.name: float(con.execute(p.sql.format(d=d)).fetchone()[0]) for p in PATTERNS}
    finally:
        con.close()


# Per-customer feature matrix used for the churn-AUC check: one-hot indicators of the
# customer's own attributes plus presence indicators over their orders, order lines and
# events -- the same information the "customers" universe of spec.toml exposes.
CHURN_FEATURES_SQL = """
WITH c AS (SELECT * FROM '{d}/customers.parquet'),
o AS (
  SELECT customer_id,
         count(*) AS n_orders,
         bool_or(subscription) AS any_sub,
         max(order_month) AS last_month,
         bool_or(channel = 'app') AS ch_app, bool_or(channel = 'store') AS ch_store
  FROM '{d}/orders.parquet' GROUP BY customer_id
),
l AS (
  SELECT l.customer_id, bool_or(l.returned) AS any_ret, avg(l.returned::INT) AS ret_rate,
         bool_or(p.brand_tier = 'premium') AS any_prem,
         bool_or(p.category = 'dog-dryfood') AS dogdry, bool_or(p.category = 'cat-litter') AS litter
  FROM '{d}/order_lines.parquet' l JOIN '{d}/products.parquet' p USING (product_id)
  GROUP BY l.customer_id
),
e AS (
  SELECT customer_id, count(*) AS n_events, bool_or(filter = 'price<20') AS f_price
  FROM '{d}/events.parquet' GROUP BY customer_id
)
SELECT c.churned::INT AS y,
       c.region, c.lifetime_value_band AS band, c.signup_channel, c.pet_type,
       c.newsletter::INT AS newsletter,
       least(floor(c.tenure_months / 6), 12)::INT AS tenure_bin,
       least(floor(c.age / 10), 7)::INT AS age_bin,
       least(coalesce(o.n_orders, 0), 10)::INT AS orders_bin,
       coalesce(o.any_sub, false)::INT AS any_sub,
       coalesce(o.last_month, 'none') AS last_month,
       coalesce(o.ch_app, false)::INT AS ch_app, coalesce(o.ch_store, false)::INT AS ch_store,
       coalesce(l.any_ret, false)::INT AS any_ret,
       least(floor(coalesce(l.ret_rate, 0) * 10), 5)::INT AS ret_bin,
       coalesce(l.any_prem, false)::INT AS any_prem,
       coalesce(l.dogdry, false)::INT AS dogdry, coalesce(l.litter, false)::INT AS litter,
       least(coalesce(e.n_events, 0), 12)::INT AS events_bin,
       coalesce(e.f_price, false)::INT AS f_price
FROM c LEFT JOIN o USING (customer_id) LEFT JOIN l USING (customer_id) LEFT JOIN e USING (customer_id)
ORDER BY c.customer_id
"""


def churn_auc(data_dir: str | os.PathLike, train_frac: float = 0.7, seed: int = 0) -> float:
    """Hold-out ROC AUC of an L2 logistic regression predicting ``churned`` from one-hot
    customer features (numpy only, Newton iterations).  Designed to land around 0.75-0.85."""
    import duckdb
    import numpy as np

    d = os.fspath(data_dir).replace("'", "''")
    con = duckdb.connect()
    try:
        tbl = con.execute(CHURN_FEATURES_SQL.format(d=d)).fetchnumpy()
    finally:
        con.close()
    y = np.asarray(tbl["y"], dtype=np.float64)
    cols = []
    for name in list(tbl)[1:]:
        v = np.asarray(tbl[name], dtype=object)
        levels = sorted(set(v.tolist()), key=str)
        for lev in levels[1:]:  # drop first level (reference)
            cols.append((v == lev).astype(np.float64))
    x = np.column_stack([np.ones(len(y))] + cols)
    rng = np.random.default_rng(seed)
    train = rng.random(len(y)) < train_frac
    xt, yt = x[train], y[train]
    w = np.zeros(x.shape[1])
    lam = 1.0
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-(xt @ w)))
        g = xt.T @ (p - yt) + lam * w
        h = (xt * (p * (1 - p))[:, None]).T @ xt + lam * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    s = x[~train] @ w
    yv = y[~train]
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos = yv.sum()
    n_neg = len(yv) - n_pos
    return float((ranks[yv == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
