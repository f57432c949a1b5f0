"""Relate reproduces mlxtend's association_rules metrics (C = antecedent, F = consequent).

A tiny snapshot is built from the five shopping baskets of mlxtend's documentation
(one table, a multi-valued `items` column, a universe over it); for every rule
A -> {b} that apriori + association_rules find, relate with where = "all items of
A" must report b with the same support, confidence (p), lift, leverage, conviction,
zhangs_metric, jaccard, certainty and kulczynski.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

pytest.importorskip("mlxtend")
from mlxtend.frequent_patterns import apriori, association_rules  # noqa: E402
from mlxtend.preprocessing import TransactionEncoder  # noqa: E402

from segsrv.ops.conditions import parse_where  # noqa: E402
from segsrv.service import run_json  # noqa: E402
from segsrv.engine.relate import relate  # noqa: E402
from segsrv.ops.relate import MAX_LIMIT, RelateQuery  # noqa: E402
from segsrv.snapshot.builder import build_snapshot  # noqa: E402
from segsrv.snapshot.reader import open_snapshot  # noqa: E402

DATASET = [
    ["Milk", "Onion", "Nutmeg", "Kidney Beans", "Eggs", "Yogurt"],
    ["Dill", "Onion", "Nutmeg", "Kidney Beans", "Eggs", "Yogurt"],
    ["Milk", "Apple", "Kidney Beans", "Eggs"],
    ["Milk", "Unicorn", "Corn", "Kidney Beans", "Yogurt"],
    ["Corn", "Onion", "Onion", "Kidney Beans", "Ice cream", "Eggs"],
]
METRICS = {  # mlxtend column -> relate statistic
    "support": "support_ratio",
    "confidence": "p",
    "lift": "lift",
    "leverage": "leverage",
    "conviction": "conviction",
    "zhangs_metric": "zhang",
    "jaccard": "jaccard",
    "certainty": "certainty",
    "kulczynski": "kulczynski",
}
SPEC = """
name = "baskets"
[build]
dense_threshold = {threshold}
[tables.baskets]
file = "baskets.csv"
key = "basket_id"
multi = {{ items = "|" }}
[universes.baskets]
table = "baskets"
include = ["*"]
"""


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["dense", "sparse"])
def baskets(request, tmp_path_factory):
    """The baskets snapshot; `sparse` stores every feature but the ubiquitous one as a sorted id array."""
    d = tmp_path_factory.mktemp(f"baskets_{request.param}")
    lines = ["basket_id,items"] + [f'{i + 1},"{"|".join(items)}"' for i, items in enumerate(DATASET)]
    (d / "baskets.csv").write_text("\n".join(lines) + "\n")
    (d / "baskets.toml").write_text(SPEC.format(threshold=request.param))
    build_snapshot(d / "baskets.toml", d / "snap", progress=lambda m: None)
    return open_snapshot(d / "snap")


@pytest.fixture(scope="module")
def rules():
    te = TransactionEncoder()
    onehot = pd.DataFrame(te.fit(DATASET).transform(DATASET), columns=te.columns_)
    frequent = apriori(onehot, min_support=0.2, use_colnames=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = association_rules(frequent, num_itemsets=len(onehot), metric="lift", min_threshold=0.0)
    return out[out["consequents"].map(len) == 1].reset_index(drop=True)


def where_all_of(items) -> dict:
    items = sorted(items)
    return {"items": items[0]} if len(items) == 1 else {"$and": [{"items": i} for i in items]}


def same(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_snapshot_features(baskets):
    u = baskets.universe("baskets")
    assert u.n_rows == 5
    info = u.fields["items"]
    assert sorted(info.values) == sorted({i for b in DATASET for i in b})
    assert dict(zip(info.values, info.counts.tolist()))["Onion"] == 3  # a duplicate item counts once per basket
    assert dict(zip(info.values, info.counts.tolist()))["Kidney Beans"] == 5
    n_sparse = int((u.feature_slot < 0).sum())
    assert n_sparse == (0 if u.dense_threshold == 0.0 else len(info.values) - 1)


def test_every_rule_matches_mlxtend(baskets, rules):
    assert len(rules) > 300
    checked = 0
    for antecedent, group in rules.groupby(rules["antecedents"].map(lambda s: tuple(sorted(s)))):
        result = relate(baskets, RelateQuery(
            where=parse_where(where_all_of(antecedent)), relate=["items"], direction="all", min_support=0,
            limit=MAX_LIMIT, exclude_condition_fields=False,
        ))
        assert result.n_condition == round(group["antecedent support"].iloc[0] * 5)
        hits = {h.value: h for h in result.hits}
        for _, rule in group.iterrows():
            (consequent,) = rule["consequents"]
            if rule["consequent support"] == 1.0:
                # a feature every row has is not tested (0 < n_F < n), so it is never a hit
                assert consequent not in hits
                continue
            hit = hits[consequent]
            assert hit.support == round(rule["support"] * 5)
            assert same(hit.p_base, rule["consequent support"])
            for column, stat in METRICS.items():
                assert same(hit.stats[stat], float(rule[column])), (antecedent, consequent, column,
                                                                   hit.stats[stat], rule[column])
            checked += 1
    assert checked > 250


def test_documented_rules(baskets):
    """The rules of mlxtend's association_rules documentation (min_support 0.6)."""
    out = run_json("relate", baskets, {
        "from": "baskets", "where": {"items": "Onion"}, "relate": ["items"], "direction": "all",
        "select": ["$value", "$support", "$support_ratio", "$p", "$lift", "$leverage", "$conviction"],
    })
    row = {r["$value"]: r for r in out["hits"]}["Eggs"]
    # (Onion) -> (Eggs): support 0.6, confidence 1.0, lift 1.25, leverage 0.12, conviction inf
    assert row["$support"] == 3 and same(row["$support_ratio"], 0.6) and row["$p"] == 1.0
    assert same(row["$lift"], 1.25) and same(row["$leverage"], 0.12) and row["$conviction"] == "inf"
    out = run_json("relate", baskets, {
        "from": "baskets", "where": {"items": "Eggs"}, "relate": ["items"], "direction": "all",
        "select": ["$value", "$p", "$lift", "$leverage", "$conviction"],
    })
    row = {r["$value"]: r for r in out["hits"]}["Onion"]
    # (Eggs) -> (Onion): confidence 0.75, lift 1.25, leverage 0.12, conviction 1.6
    assert same(row["$p"], 0.75) and same(row["$lift"], 1.25) and same(row["$leverage"], 0.12)
    assert same(row["$conviction"], 1.6)
