"""Conditions: parse_where forms and errors, and evaluation against the source tables.

Every evaluation is compared, as a set of external ids, with an independent
evaluation over the PetNord source tables: the pandas oracle of conftest.py
(random trees via hypothesis) and hand-written DuckDB SQL (named cases).
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.engine.conditions import evaluate, evaluate_to_read, validate_fields
from segsrv.engine.count import count_matching
from segsrv.ops.conditions import All, And, AnyOf, Not, Or, Range, SegmentRef, Term, check_limits, parse_where
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError, UnknownValueError

UNIVERSES = ("customers", "orders", "order_lines")


def engine_ids(snapshot, universe_name, where, ref) -> set:
    u = snapshot.universe(universe_name)
    return ref.bits_to_ids(u, evaluate(snapshot, u, parse_where(where)))


# ----------------------------------------------------------------------------
# parse_where: every JSON form
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, tree",
    [
        (None, All()),
        ({}, All()),
        ({"$all": True}, All()),
        ({"region": "oulu"}, Term("region", "oulu")),
        ({"region": "oulu", "segment": "cat_owner"}, And((Term("region", "oulu"), Term("segment", "cat_owner")))),
        ({"region": ["oulu", "espoo"]}, AnyOf("region", ("oulu", "espoo"))),
        ({"region": {"$in": ["oulu", "espoo"]}}, AnyOf("region", ("oulu", "espoo"))),
        ({"region": {"$in": "oulu"}}, AnyOf("region", ("oulu",))),
        ({"region": {"$ne": "oulu"}}, Not(Term("region", "oulu"))),
        ({"tenure_months": {"$gte": 6, "$lt": 12}}, Range("tenure_months", gte=6.0, lt=12.0)),
        ({"tenure_months": {"$gt": 6.5, "$lte": 12}}, Range("tenure_months", gt=6.5, lte=12.0)),
        ({"tenure_months": {"$lt": 3}}, Range("tenure_months", lt=3.0)),
        ({"$and": [{"region": "oulu"}, {"churned": True}]}, And((Term("region", "oulu"), Term("churned", "true")))),
        ({"$or": [{"region": "oulu"}, {"churned": False}]}, Or((Term("region", "oulu"), Term("churned", "false")))),
        ({"$not": {"region": "oulu"}}, Not(Term("region", "oulu"))),
        ({"$not": {}}, Not(All())),
        ({"$segment": "vip"}, SegmentRef("vip")),
        ({"tenure_months": 18}, Term("tenure_months", "18")),
        ({"tenure_months": 18.0}, Term("tenure_months", "18")),
        ({"total_spent_eur": 639.23}, Term("total_spent_eur", "639.23")),
        (
            {"$or": [{"$and": [{"a": "1"}, {"$not": {"b": ["x", "y"]}}]}, {"c": {"$gte": 1}}], "d": "z"},
            And((Or((And((Term("a", "1"), Not(AnyOf("b", ("x", "y"))))), Range("c", gte=1.0))), Term("d", "z"))),
        ),
    ],
)
def test_parse_where_forms(where, tree):
    assert parse_where(where) == tree


@pytest.mark.parametrize(
    "where, needle",
    [
        ({"$foo": 1}, "$foo"),
        ({"$nto": {"region": "oulu"}}, "$not"),  # suggestion for a misspelt operator
        ({"region": {"$foo": 1}}, "$foo"),
        ({"region": {"$gte": 1, "$in": [1]}}, "region"),
        ({"region": []}, "empty list"),
        ({"region": {"$in": []}}, "empty list"),
        ({"region": {}}, "region"),
        ({"tenure_months": {"$gte": "ten"}}, "'ten'"),
        ({"tenure_months": {"$gte": True}}, "True"),
        ({"tenure_months": {"$lt": float("nan")}}, "nan"),
        ({"tenure_months": {"$lt": float("inf")}}, "inf"),
        ({"tenure_months": {"$lt": None}}, "None"),
        ({"tenure_months": {"$gte": 1, "$gt": 2}}, "bound"),
        ({"$and": []}, "$and"),
        ({"$or": {"region": "oulu"}}, "$or"),
        ({"$segment": ""}, "$segment"),
        ({"$all": False}, "$all"),
        ({"region": None}, "None"),
        ({"region": {"$ne": ["a"]}}, "['a']"),
        ({"region": [{"x": 1}]}, "{'x': 1}"),
        (["region", "oulu"], "expected an object"),
        ("region", "expected an object"),
    ],
)
def test_parse_where_errors(where, needle):
    with pytest.raises(QueryError) as exc:
        parse_where(where)
    assert needle in str(exc.value)
    assert exc.value.violations


def test_unknown_field_error_suggests(petnord_snapshot):
    u = petnord_snapshot.universe("customers")
    with pytest.raises(UnknownFieldError) as exc:
        evaluate(petnord_snapshot, u, parse_where({"regoin": "oulu"}))
    msg = str(exc.value)
    assert "'regoin'" in msg and "did you mean" in msg and "'region'" in msg
    # the same through the cheap pre-check, and for a two-hop path
    with pytest.raises(UnknownFieldError, match="regoin"):
        validate_fields(u, parse_where({"$not": {"regoin": "oulu"}}))
    ol = petnord_snapshot.universe("order_lines")
    with pytest.raises(UnknownFieldError) as exc:
        evaluate(petnord_snapshot, ol, parse_where({"order.customer.regon": "oulu"}))
    assert "'order.customer.region'" in str(exc.value)


def test_unknown_value_error_names_values(petnord_snapshot):
    u = petnord_snapshot.universe("customers")
    with pytest.raises(UnknownValueError) as exc:
        evaluate(petnord_snapshot, u, parse_where({"region": "helsinkki"}))
    msg = str(exc.value)
    assert "'helsinkki'" in msg and "'region'" in msg
    assert "did you mean 'helsinki'" in msg
    for value in ("espoo", "helsinki", "jyvaskyla", "oulu", "tampere", "turku"):
        assert f"'{value}'" in msg  # the known values are listed
    # inside a list, a $ne and a NOT
    for where in ({"region": ["oulu", "nowhere"]}, {"region": {"$ne": "nowhere"}}, {"$not": {"region": "nowhere"}}):
        with pytest.raises(UnknownValueError, match="nowhere"):
            evaluate(petnord_snapshot, u, parse_where(where))
    # a band label that does not exist on a numeric field without raw values
    with pytest.raises(UnknownValueError, match="12-25"):
        evaluate(petnord_snapshot, u, parse_where({"tenure_months": "12-25"}))


def test_range_on_non_numeric_field(petnord_snapshot):
    u = petnord_snapshot.universe("customers")
    with pytest.raises(QueryError, match="region"):
        evaluate(petnord_snapshot, u, parse_where({"region": {"$gte": 1}}))


def test_unknown_segment(petnord_snapshot):
    u = petnord_snapshot.universe("customers")
    with pytest.raises(QueryError, match="no segment 'vip'"):
        evaluate(petnord_snapshot, u, parse_where({"$segment": "vip"}))


def test_limits():
    deep = {"region": "oulu"}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(LimitExceededError):
        check_limits(parse_where(deep))
    wide = {"$or": [{"region": str(i)} for i in range(1100)]}
    with pytest.raises(LimitExceededError):
        check_limits(parse_where(wide))
    check_limits(parse_where({"$or": [{"region": str(i)} for i in range(100)]}))


# ----------------------------------------------------------------------------
# the oracle agrees with the snapshot's feature dictionary
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("universe_name", UNIVERSES)
def test_every_feature_matches_source(petnord_snapshot, oracle, universe_name):
    """Each field's values and per-value row counts equal the source tables' (every term)."""
    u = petnord_snapshot.universe(universe_name)
    bu = oracle.universe(universe_name)
    assert u.n_rows == bu.n
    assert u.ids_for_rows(np.arange(u.n_rows)) == list(bu.ids)
    for name, info in u.fields.items():
        bf = bu.fields[name]
        assert sorted(info.values) == sorted(bf.masks), name
        assert info.semantics == ("exists" if bf.exists else ("own" if "." not in name else "forward")), name
        for value, count in zip(info.values, info.counts):
            assert int(count) == int(bf.masks[value].sum()), (name, value)
            assert int(u.feature_count[u.feature_id(name, value)]) == int(count)
        if info.numeric is not None:
            assert bf.raw is not None
            np.testing.assert_array_equal(np.asarray(info.numeric), bf.raw)
        else:
            assert bf.raw is None, name


@pytest.mark.parametrize("universe_name", UNIVERSES)
def test_every_term_and_its_negation(petnord_snapshot, oracle, ref, universe_name):
    u = petnord_snapshot.universe(universe_name)
    bu = oracle.universe(universe_name)
    # rows are numbered by ascending external id, so row masks compare directly with the oracle's
    assert u.ids_for_rows(np.arange(u.n_rows)) == list(bu.ids)

    def rows(where):
        bits = evaluate(petnord_snapshot, u, parse_where(where))
        mask = np.unpackbits(bits.view(np.uint8), bitorder="little").astype(bool)
        assert not mask[u.n_rows:].any()
        return mask[: u.n_rows]

    for name, info in u.fields.items():
        for value in info.values:
            want = bu.feature_mask(name, value)
            assert np.array_equal(rows({name: value}), want), (name, value)
            # NOT x=a: every other row, including rows where x is missing
            assert np.array_equal(rows({name: {"$ne": value}}), ~want), (name, value)
        if len(info.values) >= 2:
            v1, v2 = info.values[0], info.values[-1]
            want = bu.feature_mask(name, v1) | bu.feature_mask(name, v2)
            assert np.array_equal(rows({name: [v1, v2]}), want), name


# ----------------------------------------------------------------------------
# named cases against hand-written DuckDB SQL over the raw files
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duck(source, petnord_spec_path):
    import tomllib

    raw = tomllib.loads(petnord_spec_path.read_text())
    con = duckdb.connect(":memory:")
    for name, t in raw["tables"].items():
        path = (petnord_spec_path.parent / t["file"]).resolve()
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_json_auto('{path}')")
    yield con
    con.close()


SQL_CASES = [
    # reverse links, "exists": customers with at least one order line of a dry-food product
    (
        "customers",
        {"orders.lines.product.category": "dry-food"},
        """SELECT DISTINCT o.customer_id FROM orders o JOIN order_lines l ON l.order_id = o.order_id
           JOIN products p ON p.sku = l.product_sku WHERE p.category = 'dry-food'""",
    ),
    # its negation includes customers with no order at all
    (
        "customers",
        {"$not": {"orders.lines.product.category": "dry-food"}},
        """SELECT customer_id FROM customers WHERE customer_id NOT IN (
             SELECT o.customer_id FROM orders o JOIN order_lines l ON l.order_id = o.order_id
             JOIN products p ON p.sku = l.product_sku WHERE p.category = 'dry-food')""",
    ),
    # multi-valued tags through three reverse/forward hops, any-of
    (
        "customers",
        {"orders.lines.product.tags": ["dental", "chew"]},
        """SELECT DISTINCT o.customer_id FROM orders o JOIN order_lines l ON l.order_id = o.order_id
           JOIN products p ON p.sku = l.product_sku
           WHERE list_has_any(string_split(p.tags, ' '), ['dental', 'chew'])""",
    ),
    # exists AND exists is not "one line with both"
    (
        "customers",
        {"orders.lines.product.pet_type": "cat", "orders.lines.product.category": "dental-treats"},
        """SELECT customer_id FROM customers c WHERE
             EXISTS (SELECT 1 FROM orders o JOIN order_lines l ON l.order_id = o.order_id
                     JOIN products p ON p.sku = l.product_sku WHERE o.customer_id = c.customer_id AND p.pet_type = 'cat')
         AND EXISTS (SELECT 1 FROM orders o JOIN order_lines l ON l.order_id = o.order_id
                     JOIN products p ON p.sku = l.product_sku
                     WHERE o.customer_id = c.customer_id AND p.category = 'dental-treats')""",
    ),
    (
        "customers",
        {"impressions.search_query": "food", "orders.line_categories": {"$ne": "dog_dryfood"}},
        """SELECT customer_id FROM customers c
           WHERE EXISTS (SELECT 1 FROM impressions i WHERE i.customer_id = c.customer_id AND i.search_query = 'food')
             AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
                             AND list_contains(string_split(o.line_categories, ' '), 'dog_dryfood'))""",
    ),
    # NOT over a column with missing values: missing pet_size satisfies NOT pet_size=small
    (
        "customers",
        {"pet_size": {"$ne": "small"}},
        "SELECT customer_id FROM customers WHERE pet_size IS DISTINCT FROM 'small'",
    ),
    ("customers", {"pet_size": ["small", "large"]}, "SELECT customer_id FROM customers WHERE pet_size IN ('small', 'large')"),
    ("customers", {"churned": True, "region": "oulu"}, "SELECT customer_id FROM customers WHERE churned AND region = 'oulu'"),
    # numeric ranges on raw values, equality on a raw value, and bands [e_{i-1}, e_i)
    (
        "customers",
        {"total_spent_eur": {"$gte": 100, "$lt": 250.5}},
        "SELECT customer_id FROM customers WHERE total_spent_eur >= 100 AND total_spent_eur < 250.5",
    ),
    ("customers", {"tenure_months": {"$gt": 12, "$lte": 24}}, "SELECT customer_id FROM customers WHERE tenure_months > 12 AND tenure_months <= 24"),
    ("customers", {"tenure_months": 18}, "SELECT customer_id FROM customers WHERE tenure_months = 18"),
    ("customers", {"tenure_months": [6, 12]}, "SELECT customer_id FROM customers WHERE tenure_months IN (6, 12)"),
    ("customers", {"tenure_months": "12-24"}, "SELECT customer_id FROM customers WHERE tenure_months >= 12 AND tenure_months < 24"),
    ("customers", {"tenure_months": "<6"}, "SELECT customer_id FROM customers WHERE tenure_months < 6"),
    ("customers", {"tenure_months": "24-36"}, "SELECT customer_id FROM customers WHERE tenure_months >= 24 AND tenure_months < 36"),
    ("customers", {"total_orders": ">=6"}, "SELECT customer_id FROM customers WHERE total_orders >= 6"),
    # two forward hops
    (
        "order_lines",
        {"order.customer.region": "oulu"},
        """SELECT l.line_id FROM order_lines l JOIN orders o ON o.order_id = l.order_id
           JOIN customers c ON c.customer_id = o.customer_id WHERE c.region = 'oulu'""",
    ),
    (
        "order_lines",
        {"order.customer.tenure_months": {"$gte": 24}, "product.pet_type": "dog"},
        """SELECT l.line_id FROM order_lines l JOIN orders o ON o.order_id = l.order_id
           JOIN customers c ON c.customer_id = o.customer_id JOIN products p ON p.sku = l.product_sku
           WHERE c.tenure_months >= 24 AND p.pet_type = 'dog'""",
    ),
    ("order_lines", {"product.tags": "natural"}, """SELECT l.line_id FROM order_lines l JOIN products p ON p.sku = l.product_sku
           WHERE list_contains(string_split(p.tags, ' '), 'natural')"""),
    # forward numeric with missing values: NOT keeps the lines whose product has no weight
    (
        "order_lines",
        {"$not": {"product.weight_kg": {"$lt": 1}}},
        """SELECT l.line_id FROM order_lines l JOIN products p ON p.sku = l.product_sku
           WHERE p.weight_kg IS NULL OR NOT p.weight_kg < 1""",
    ),
    ("order_lines", {"product.price_eur": "10-20"}, """SELECT l.line_id FROM order_lines l JOIN products p ON p.sku = l.product_sku
           WHERE p.price_eur >= 10 AND p.price_eur < 20"""),
    ("order_lines", {"qty": ">=3", "returned": False}, "SELECT line_id FROM order_lines WHERE qty >= 3 AND NOT returned"),
    ("orders", {"lines.returned": True}, "SELECT DISTINCT order_id FROM order_lines WHERE returned"),
    (
        "orders",
        {"$or": [{"customer.segment": "dog_owner", "line_categories": "dog_dryfood"}, {"total_eur": {"$gt": 200}}]},
        """SELECT o.order_id FROM orders o JOIN customers c ON c.customer_id = o.customer_id
           WHERE (c.segment = 'dog_owner' AND list_contains(string_split(o.line_categories, ' '), 'dog_dryfood'))
              OR o.total_eur > 200""",
    ),
]


@pytest.mark.parametrize("universe_name, where, sql", SQL_CASES, ids=[str(c[1])[:60] for c in SQL_CASES])
def test_condition_equals_sql(petnord_snapshot, duck, ref, universe_name, where, sql):
    want = {row[0] for row in duck.execute(sql).fetchall()}
    got = engine_ids(petnord_snapshot, universe_name, where, ref)
    assert got == want
    assert want, "the case should select someone"


def test_not_includes_missing_rows(petnord_snapshot, duck, ref):
    """NOT pet_size=small covers the customers without a pet_size (a sanity check of the case above)."""
    missing = {r[0] for r in duck.execute("SELECT customer_id FROM customers WHERE pet_size IS NULL").fetchall()}
    assert missing
    assert missing <= engine_ids(petnord_snapshot, "customers", {"$not": {"pet_size": "small"}}, ref)
    assert not missing & engine_ids(petnord_snapshot, "customers", {"pet_size": ["small", "medium", "large"]}, ref)
    no_orders = {r[0] for r in duck.execute(
        "SELECT customer_id FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM orders)").fetchall()}
    got = engine_ids(petnord_snapshot, "customers", {"$not": {"orders.lines.product.category": "dry-food"}}, ref)
    assert no_orders <= got


def test_all_and_empty(petnord_snapshot, oracle, ref):
    bu = oracle.universe("orders")
    everyone = set(bu.ids.tolist())
    assert engine_ids(petnord_snapshot, "orders", {}, ref) == everyone
    assert engine_ids(petnord_snapshot, "orders", {"$all": True}, ref) == everyone
    assert engine_ids(petnord_snapshot, "orders", {"$not": {}}, ref) == set()
    assert engine_ids(petnord_snapshot, "orders", {"total_eur": {"$gt": 1e12}}, ref) == set()
    # bands without rows exist as features and select nobody
    assert engine_ids(petnord_snapshot, "customers", {"tenure_months": ">=36"}, ref) == set()
    assert engine_ids(petnord_snapshot, "customers", {"total_orders": "<1"}, ref) == set()


# ----------------------------------------------------------------------------
# random condition trees (hypothesis) against the pandas oracle
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("universe_name", UNIVERSES)
@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_conditions_equal_bruteforce(petnord_snapshot, oracle, ref, where_strategy, universe_name, data):
    bu = oracle.universe(universe_name)
    where = data.draw(where_strategy(universe_name), label="where")
    got = engine_ids(petnord_snapshot, universe_name, where, ref)
    assert got == bu.id_set(bu.eval(where))


@pytest.mark.parametrize("universe_name", UNIVERSES)
@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_counts_equal_bruteforce(petnord_snapshot, oracle, where_strategy, universe_name, data):
    """count_matching (stored feature counts, a conjunction's feature counted against the AND of the rest)
    equals the oracle's count for random trees."""
    bu = oracle.universe(universe_name)
    where = data.draw(where_strategy(universe_name), label="where")
    u = petnord_snapshot.universe(universe_name)
    assert count_matching(petnord_snapshot, u, parse_where(where)) == int(bu.eval(where).sum())


def _features_by_storage(u) -> tuple[list, list]:
    """(dense, sparse) features of u as (field, value) pairs."""
    dense, sparse = [], []
    for fid in range(u.n_features):
        (dense if u.is_dense(fid) else sparse).append(u.feature_name(fid))
    return dense, sparse


@pytest.mark.parametrize("universe_name", UNIVERSES)
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_conjunction_counts_equal_bruteforce(petnord_snapshot, oracle, universe_name, data):
    """Conjunctions of 1-4 features, dense and sparse mixed (the counted feature is the sparsest one, read
    as a dense row or as sparse ids), nested $and, with a negation or a value list among the parts."""
    u = petnord_snapshot.universe(universe_name)
    bu = oracle.universe(universe_name)
    dense, sparse = _features_by_storage(u)
    assert dense and sparse, "the fixture must hold both storages"
    feature = st.sampled_from(dense) | st.sampled_from(sparse)
    parts = data.draw(st.lists(feature, min_size=1, max_size=4), label="features")
    items = [{f: v} for f, v in parts]
    if data.draw(st.booleans(), label="negated part"):
        f, v = data.draw(feature, label="negated")
        items.append({"$not": {f: v}})
    if len(items) > 2 and data.draw(st.booleans(), label="nested"):
        items = [{"$and": items[:2]}] + items[2:]
    where = {"$and": items}
    got = count_matching(petnord_snapshot, u, parse_where(where))
    assert got == int(bu.eval(where).sum())
    assert got == int(np.bitwise_count(evaluate(petnord_snapshot, u, parse_where(where))).sum())


def test_evaluate_owns_its_answer_and_never_writes_the_snapshot(petnord_snapshot):
    """Features are read in place: what evaluate returns is the caller's to write (a tree that is one
    dense feature is copied), and folding never writes a row of the snapshot."""
    u = petnord_snapshot.universe("customers")
    dense, _ = _features_by_storage(u)
    (f1, v1), (f2, v2) = dense[0], dense[1]
    before = np.array(u.dense)
    for where in ({f1: v1}, {f1: [v1]}, {"$and": [{f1: v1}, {f2: v2}]}, {"$or": [{f1: v1}, {f2: v2}]},
                  {"$and": [{f1: v1}]}, {"$not": {f1: v1}}):
        bits = evaluate(petnord_snapshot, u, parse_where(where))
        assert bits.flags.writeable and bits.flags.owndata, where
        bits[:] = ~bits
    assert np.array_equal(np.asarray(u.dense), before)



@pytest.mark.parametrize("universe_name", UNIVERSES)
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_evaluate_to_read_equals_evaluate(petnord_snapshot, where_strategy, universe_name, data):
    """Relate's bitset to read = evaluate's (random trees, and each storage's single feature, a dense one
    being the snapshot's row itself)."""
    u = petnord_snapshot.universe(universe_name)
    dense, sparse = _features_by_storage(u)
    f, v = data.draw(st.sampled_from(dense) | st.sampled_from(sparse), label="feature")
    for where in (data.draw(where_strategy(universe_name), label="where"), {f: v}):
        cond = parse_where(where)
        assert np.array_equal(evaluate_to_read(petnord_snapshot, u, cond), evaluate(petnord_snapshot, u, cond))
    f, v = dense[0]
    assert not evaluate_to_read(petnord_snapshot, u, parse_where({f: v})).flags.writeable

def test_numeric_term_is_raw_equality_or_band(petnord_snapshot, oracle, ref):
    """A numeric field's term is its band when the text is a band label, else equality on the raw value."""
    bu = oracle.universe("order_lines")
    x = bu.fields["product.price_eur"].raw
    value = float(x[~np.isnan(x)][0])
    got = engine_ids(petnord_snapshot, "order_lines", {"product.price_eur": value}, ref)
    assert got == set(bu.ids[x == value].tolist()) and got
    assert not math.isnan(value)


def test_count_json(petnord_snapshot, oracle):
    from segsrv.service import run_json

    bu = oracle.universe("customers")
    for where in ({}, {"region": "oulu"}, {"orders.lines.product.category": "dry-food", "churned": True}):
        out = run_json("count", petnord_snapshot, {"from": "customers", "where": where})
        assert out["count"] == int(bu.eval(where).sum()) and out["n_rows"] == bu.n == 3000


# ----------------------------------------------------------------------------
# a numeric column reached through a reverse link: bands with "exists", no raw values
# ----------------------------------------------------------------------------

TINY_SPEC = """
name = "tiny"
[tables.people]
file = "people.csv"
key = "person_id"
categorical = ["city"]
numeric = { age = { edges = [30, 50] } }
[tables.purchases]
file = "purchases.csv"
key = "purchase_id"
categorical = ["kind"]
numeric = { amount = { edges = [10, 100] } }
links = { person = { column = "person_id", table = "people", reverse = "purchases" } }
[universes.people]
table = "people"
include = ["*", "purchases.*"]
[universes.purchases]
table = "purchases"
include = ["*", "person.*"]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot

    d = tmp_path_factory.mktemp("tiny")
    (d / "people.csv").write_text("person_id,city,age\n1,oulu,25\n2,espoo,\n3,oulu,50\n4,turku,70\n")
    (d / "purchases.csv").write_text(
        "purchase_id,person_id,kind,amount\n"
        "10,1,food,5\n11,1,toy,100\n12,3,food,10\n13,3,food,99.5\n14,4,toy,\n"
    )
    (d / "tiny.toml").write_text(TINY_SPEC)
    build_snapshot(d / "tiny.toml", d / "snap", progress=lambda m: None)
    return open_snapshot(d / "snap")


@pytest.mark.parametrize(
    "universe_name, where, want",
    [
        ("people", {"purchases.amount": "<10"}, {1}),
        ("people", {"purchases.amount": "10-100"}, {3}),
        ("people", {"purchases.amount": ">=100"}, {1}),
        ("people", {"purchases.amount": ["<10", ">=100"]}, {1}),
        ("people", {"$not": {"purchases.amount": "10-100"}}, {1, 2, 4}),  # 2 has no purchase, 4 no amount
        ("people", {"purchases.kind": "food", "purchases.amount": ">=100"}, {1}),  # exists, per field
        ("people", {"age": {"$gte": 50}}, {3, 4}),
        ("people", {"age": "30-50"}, set()),
        ("people", {"age": ">=50"}, {3, 4}),
        ("people", {"$not": {"age": {"$lt": 100}}}, {2}),  # missing age
        ("people", {"age": 25}, {1}),
        ("purchases", {"person.city": "oulu"}, {10, 11, 12, 13}),
        ("purchases", {"person.age": {"$gt": 40}}, {12, 13, 14}),
        ("purchases", {"amount": {"$gte": 10, "$lte": 99.5}}, {12, 13}),
        ("purchases", {"amount": 99.5}, {13}),
        ("purchases", {"amount": {"$ne": 5}}, {11, 12, 13, 14}),
    ],
)
def test_tiny_snapshot(tiny, ref, universe_name, where, want):
    u = tiny.universe(universe_name)
    assert u.key_kind == "int"
    assert ref.bits_to_ids(u, evaluate(tiny, u, parse_where(where))) == want


def test_range_on_exists_numeric_field_is_refused(tiny):
    u = tiny.universe("people")
    assert u.fields["purchases.amount"].numeric is None and u.fields["purchases.amount"].semantics == "exists"
    with pytest.raises(QueryError, match="bands") as exc:
        evaluate(tiny, u, parse_where({"purchases.amount": {"$gte": 10}}))
    assert "purchases.amount" in str(exc.value)
    with pytest.raises(UnknownValueError, match="'12'"):
        evaluate(tiny, u, parse_where({"purchases.amount": 12}))
