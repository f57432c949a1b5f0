"""Every method over the demo shop (``segsrv demo-data``: segsrv/demo/) sharded by customer into 1, 2 and 7 shards
equals the unsharded snapshot's answer, for random conditions (hypothesis) with the privacy floor at 0 and 10:
Count, Relate, Profile, Predict (each method, by id too), ScoreSegment, Evaluate, Export (unranked and
ranked), Assign and ListSegments (a catalog applied to both), Info and Discover (a random `within`).

The demo shop has two universes (customers; order lines, partitioned through their order and customer) and
every field kind: categorical, multi-valued (product tags), numeric with explicit and with quantile edges,
own, forward (an order line's product, order, customer) and exists fields (a customer's orders, their lines'
products, events). It is built once per module: 2,000 customers, unsharded and in 1, 2 and 7 shards.
"""

from __future__ import annotations

from dataclasses import replace

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from segsrv.demo.generate import generate_demo
from segsrv.engine.catalog import apply_segments
from segsrv.engine.sharded import apply_sharded_segments, open_sharded
from segsrv.ops import (
    AssignQuery, CountQuery, ExportQuery, InfoQuery, PredictQuery, ProfileQuery, RelateQuery, ScoreQuery,
    SegmentsQuery,
)
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.spec import load_spec
from support import (
    answers, assert_same_assign, assert_same_discover, assert_same_evaluation, assert_same_info,
    assert_same_predict, assert_same_profile, assert_same_relate, assert_same_scores, build_where_strategy,
    compare_over_shards, evaluate_query, exported, quiet, sharded_services,
)

N_CUSTOMERS = 2000
SEED = 5
UNIVERSES = ["customers", "order_lines"]
SMALL = {"region": "islands", "pet_type": "fish"}  # a handful of rows (7)
CATALOG = {
    "churners": {"universe": "customers", "where": {"churned": True}},
    "north_dogs": {"universe": "customers", "where": {"region": "north", "pet_type": ["dog", "dog+cat"]},
                   "priority": 2},
    "vip_app": {"universe": "customers", "where": {"lifetime_value_band": "vip", "orders.channel": "app"}},
    "long_tenure": {"universe": "customers", "where": {"tenure_months": {"$gte": 36}}},
    "grain_free": {"universe": "customers", "where": {"orders.lines.product.tag": "grain-free"}, "priority": 1},
    "tiny": {"universe": "customers", "where": SMALL, "priority": 5},  # below a privacy floor of 10
    "returns": {"universe": "order_lines", "where": {"returned": True}},
    "premium_bulk": {"universe": "order_lines", "where": {"product.brand_tier": "premium", "qty": {"$gte": 2}}},
}
# targets of a single value per row, and (customers) one of several values per row through orders
TARGETS = {"customers": ["churned", "region", "pet_type", "lifetime_value_band", "orders.channel"],
           "order_lines": ["returned", "product.brand_tier", "customer.region", "order.channel"]}
# few evidence fields: the logistic fits stay quick on 2 shared cores
EVIDENCE_FIELDS = {"customers": ["region", "signup_channel", "tenure_months", "orders.subscription"],
                   "order_lines": ["qty", "product.category", "customer.lifetime_value_band"]}
METHODS = {"conjunction": {}, "factorized": {"prior_strength": 10}, "logistic": {"l2": 1.0}}
BULK_METHODS = {k: v for k, v in METHODS.items() if k != "conjunction"}  # ScoreSegment's and Evaluate's
DISCOVER_FIELDS = {"customers": ["region", "pet_type", "lifetime_value_band", "signup_channel", "churned", "age",
                                 "orders.channel", "orders.lines.product.category", "orders.lines.product.tag",
                                 "events.filter"],
                   "order_lines": ["returned", "qty", "product.category", "product.tag", "product.price",
                                   "customer.region", "customer.pet_type", "order.channel"]}
# propensities fitted on demand with a fixed l2, or factorized (the catalog is applied without its
# cross-validated models, whose fits would take minutes here: tests/engine/test_sharded_assign.py has them)
PROPENSITIES = [{"include_propensities": False}, {"include_propensities": True, "propensity_l2": 1.0},
                {"include_propensities": True, "propensity_method": "factorized"}]

RANDOM = settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo-data"), n_customers=N_CUSTOMERS, seed=SEED)


@pytest.fixture(scope="module")
def demo_whole(demo_spec, tmp_path_factory):
    """The unsharded demo snapshot with CATALOG applied."""
    root = tmp_path_factory.mktemp("demo-whole")
    build_snapshot(demo_spec, root, progress=quiet)
    apply_segments(root / "demo", CATALOG, progress=quiet, fit_propensities=False)
    return open_snapshot(root / "demo")


@pytest.fixture(scope="module", params=[1, 2, 7], ids=lambda n: f"{n}_shards")
def demo_sharded(request, demo_spec, tmp_path_factory):
    """The demo shop sharded by customer (the spec has no [shards] section: named on the loaded spec), CATALOG
    applied to every shard."""
    root = tmp_path_factory.mktemp(f"demo-{request.param}-shards")
    build_shards(replace(load_spec(demo_spec), shard_entity="customers"), root, request.param, progress=quiet)
    apply_sharded_segments(root / "demo", CATALOG, progress=quiet, fit_propensities=False)
    return root / "demo"


@pytest.fixture(scope="module")
def services(demo_sharded, demo_whole):
    """privacy_k -> (the sharded build's service, the unsharded one's)."""
    return {k: sharded_services(demo_sharded, demo_whole, k) for k in (0, 10)}


@pytest.fixture(scope="module")
def where(demo_whole):
    """universe -> a strategy of random `where` trees over its fields (raw bounds from the snapshot's raw values)."""
    strategies = {name: build_where_strategy(demo_whole.universe(name)) for name in UNIVERSES}
    return strategies.__getitem__


def draw_request(data, where, services):
    """(the universe, a random condition over it, the services at a random privacy floor)."""
    universe = data.draw(st.sampled_from(UNIVERSES), label="universe")
    condition = data.draw(where(universe), label="condition")
    return universe, condition, services[data.draw(st.sampled_from([0, 10]), label="privacy_k")]


def values_of(snapshot, universe: str, field: str) -> list[str]:
    return snapshot.universe(universe).fields[field].values


def some_ids(data, snapshot, universe: str, label: str) -> list:
    u = snapshot.universe(universe)
    rows = data.draw(st.lists(st.integers(0, u.n_rows - 1), min_size=1, max_size=6), label=label)
    return u.ids_for_rows(np.asarray(rows))


def compare(pair, objs, make_query, assert_same) -> None:
    """compare_over_shards, telling hypothesis's statistics how many requests were refused alike (an error,
    the privacy floor's among them) rather than answered."""
    refused = compare_over_shards(*pair, objs, make_query, assert_same)
    event("refused alike" if refused else "answered alike")


# --- Count, Relate, Profile ---------------------------------------------------------------------------------


def assert_same_count(got, want) -> None:
    assert (got.universe, got.n_rows, got.count, got.suppressed) == \
        (want.universe, want.n_rows, want.count, want.suppressed)
    assert got.version.startswith("shards-")


@RANDOM
@given(data=st.data())
def test_count(services, where, data):
    universe, condition, pair = draw_request(data, where, services)
    compare(pair, [{"from": universe, "where": condition}], CountQuery.from_json, assert_same_count)


def test_count_matches_duckdb(services, demo_spec):
    """One independent check: DuckDB over the generated Parquet tables."""
    con = duckdb.connect()
    for table in ("customers", "order_lines", "products"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{demo_spec.parent / (table + '.parquet')}')")
    want = con.execute("SELECT count(*) FROM order_lines l JOIN customers c USING (customer_id) JOIN products p "
                       "USING (product_id) WHERE c.region = 'north' AND p.brand_tier = 'premium'").fetchone()[0]
    got = answers(services[0][0], CountQuery, {"from": "order_lines", "where": {"customer.region": "north",
                                                                                "product.brand_tier": "premium"}})
    assert got.count == want > 0


@RANDOM
@given(data=st.data())
def test_relate(services, where, demo_whole, data):
    universe, condition, pair = draw_request(data, where, services)
    obj = {"from": universe, "where": condition,
           "order_by": data.draw(st.sampled_from(["lift", "p_value", "support", "q_value", "zhang"]), label="order_by"),
           "direction": data.draw(st.sampled_from(["over", "under", "all"]), label="direction"),
           "min_support": data.draw(st.sampled_from([0, 5, 30]), label="min_support"),
           "q_values": data.draw(st.booleans(), label="q_values"),
           "limit": data.draw(st.sampled_from([10, 100, 1000]), label="limit")}
    if data.draw(st.booleans(), label="some fields"):
        obj["relate"] = data.draw(st.lists(st.sampled_from(sorted(demo_whole.universe(universe).fields)), min_size=1,
                                           max_size=5, unique=True), label="relate")
    compare(pair, [obj], RelateQuery.from_json, assert_same_relate)


@RANDOM
@given(data=st.data())
def test_profile(services, where, demo_whole, data):
    universe, condition, pair = draw_request(data, where, services)
    obj = {"from": universe, "segment": condition, "values_per_field": data.draw(st.integers(1, 6), label="values")}
    if data.draw(st.booleans(), label="some fields"):
        obj["fields"] = data.draw(st.lists(st.sampled_from(sorted(demo_whole.universe(universe).fields)), min_size=1,
                                           max_size=6, unique=True), label="fields")
    compare(pair, [obj], ProfileQuery.from_json, assert_same_profile)


# --- Predict, ScoreSegment, Evaluate ------------------------------------------------------------------------


def assert_same_prediction(got, want) -> None:
    assert assert_same_predict(got, want) <= 1e-12 and got.version.startswith("shards-")


@RANDOM
@given(data=st.data())
def test_predict(services, where, demo_whole, data):
    """Every method; a segment; the evidence of a row by its id, or given features, or the segment alone."""
    universe, condition, pair = draw_request(data, where, services)
    method = data.draw(st.sampled_from(list(METHODS)), label="method")
    obj = {"from": universe, "segment": condition, "method": method, **METHODS[method],
           "target": data.draw(st.sampled_from(TARGETS[universe]), label="target"),
           "evidence_fields": EVIDENCE_FIELDS[universe]}
    evidence = data.draw(st.sampled_from(["id", "features", "segment"]), label="evidence")
    if evidence == "id":
        obj["id"] = some_ids(data, demo_whole, universe, "row")[0]
    elif evidence == "features":
        field = data.draw(st.sampled_from(EVIDENCE_FIELDS[universe]), label="field")
        obj["evidence"] = [[field, data.draw(st.sampled_from(values_of(demo_whole, universe, field)), label="value")]]
    compare(pair, [obj], PredictQuery.from_json, assert_same_prediction)


@RANDOM
@given(data=st.data())
def test_score_segment(services, where, demo_whole, data):
    universe, condition, pair = draw_request(data, where, services)
    target = data.draw(st.sampled_from(TARGETS[universe]), label="target")
    method = data.draw(st.sampled_from(list(BULK_METHODS)), label="method")
    obj = {"from": universe, "segment": condition, "target": target, "method": method, **BULK_METHODS[method],
           "value": data.draw(st.sampled_from(values_of(demo_whole, universe, target)), label="value"),
           "top_k": data.draw(st.sampled_from([0, 1, 25, 400]), label="top_k"),
           "evidence_fields": EVIDENCE_FIELDS[universe]}
    compare(pair, [obj], ScoreQuery.from_json, assert_same_scores)


@RANDOM
@given(data=st.data())
def test_evaluate(services, where, data):
    universe, condition, pair = draw_request(data, where, services)
    method = data.draw(st.sampled_from(list(BULK_METHODS)), label="method")
    obj = {"from": universe, "segment": condition, "method": method, **BULK_METHODS[method],
           "target": data.draw(st.sampled_from(TARGETS[universe]), label="target"),  # multi-valued: refused alike
           "evidence_fields": EVIDENCE_FIELDS[universe],
           "holdout_fraction": data.draw(st.sampled_from([0.2, 0.5]), label="holdout"),
           "seed": data.draw(st.integers(0, 3), label="seed")}
    compare(pair, [obj], evaluate_query, assert_same_evaluation)


# --- Export -------------------------------------------------------------------------------------------------


def export_query(chunk_size: int):
    def make(obj: dict) -> ExportQuery:
        query = ExportQuery.from_json(obj)
        query.chunk_size = chunk_size
        if query.ranked:  # (no cross-validated fit: the logistic ranking is ScoreSegment's test)
            query.method, query.evidence_fields = "factorized", EVIDENCE_FIELDS[query.universe]
        return query

    return make


def assert_same_members(got, want) -> None:
    """Unranked: the same total and ids as sets (the shards list theirs shard after shard), chunks full but the
    last."""
    assert (got.universe, got.n_rows, got.total, got.returned) == (want.universe, want.n_rows, want.total, want.returned)
    chunks = exported(got)
    assert all(len(c) == len(chunks[0]) for c in chunks[:-1])
    ids = [i for c in chunks for i in c]
    assert len(ids) == len(set(ids)) == want.total
    assert set(ids) == {i for c in exported(want) for i in c}


def assert_same_ranking(got, want) -> None:
    """Ranked: the same ids in the same chunks and order, scores to 1e-12."""
    assert (got.universe, got.n_rows, got.total, got.returned, got.n_chunks, got.target, got.value) == \
        (want.universe, want.n_rows, want.total, want.returned, want.n_chunks, want.target, want.value)
    got_chunks, want_chunks = list(got.chunks()), list(want.chunks())
    assert [ids for ids, _ in got_chunks] == [ids for ids, _ in want_chunks]
    for (_, gs), (_, ws) in zip(got_chunks, want_chunks):
        np.testing.assert_allclose(gs, ws, rtol=1e-12, atol=1e-15)


@RANDOM
@given(data=st.data())
def test_export(services, where, demo_whole, data):
    universe, condition, pair = draw_request(data, where, services)
    obj = {"from": universe, "where": condition}
    chunk_size = data.draw(st.sampled_from([97, 10_000]), label="chunk_size")
    if data.draw(st.booleans(), label="ranked"):
        target = data.draw(st.sampled_from(TARGETS[universe]), label="target")
        obj.update(target=target, top_k=data.draw(st.sampled_from([0, 5, 300]), label="top_k"),
                   value=data.draw(st.sampled_from(values_of(demo_whole, universe, target)), label="value"))
        compare(pair, [obj], export_query(chunk_size), assert_same_ranking)
    else:
        compare(pair, [obj], export_query(chunk_size), assert_same_members)


# --- Assign, ListSegments, Info -----------------------------------------------------------------------------


@RANDOM
@given(data=st.data())
def test_assign(services, demo_whole, data):
    """Ids (some unknown, routed to no shard) or features, with and without propensities."""
    universe = data.draw(st.sampled_from(UNIVERSES), label="universe")
    obj = {"from": universe, **data.draw(st.sampled_from(PROPENSITIES), label="propensities")}
    if data.draw(st.booleans(), label="by ids"):
        obj["ids"] = some_ids(data, demo_whole, universe, "rows") + data.draw(
            st.lists(st.sampled_from(["no-such-id", "", "CUST-x"]), max_size=2), label="unknown")
    else:
        fields = data.draw(st.lists(st.sampled_from(sorted(demo_whole.universe(universe).fields)), min_size=1,
                                    max_size=4, unique=True), label="fields")
        obj["features"] = [[f, data.draw(st.sampled_from(values_of(demo_whole, universe, f)), label=f)] for f in fields]
    pair = services[data.draw(st.sampled_from([0, 10]), label="privacy_k")]
    compare(pair, [obj], AssignQuery.from_json, assert_same_assign)


@pytest.mark.parametrize("privacy_k", [0, 10])
def test_list_segments(services, privacy_k):
    sharded, whole = services[privacy_k]
    for universe in (None, "customers", "order_lines"):
        got, want = sharded.call(SegmentsQuery(universe)), whole.call(SegmentsQuery(universe))
        assert got.to_json() == want.to_json()
    sizes = {s.name: s.size for s in sharded.call(SegmentsQuery()).segments}
    assert (sizes["tiny"] == 0) == (privacy_k == 10) and sizes["returns"] > 0


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("obj", [{}, {"include_values": True}, {"from": "order_lines", "include_values": True}],
                         ids=["plain", "values", "order_lines"])
def test_info(services, privacy_k, obj):
    sharded, whole = services[privacy_k]
    assert_same_info(answers(sharded, InfoQuery, obj), answers(whole, InfoQuery, obj))


def test_the_build_is_sharded_as_asked(demo_sharded, demo_whole):
    """Not vacuous: every shard holds customers and order lines, and the tiny segment is below the floor."""
    sharded = open_sharded(demo_sharded)
    for universe in UNIVERSES:
        rows = [s.universe(universe).n_rows for s in sharded.shards]
        assert min(rows) > 0 and sum(rows) == demo_whole.universe(universe).n_rows
    _, whole = sharded_services(demo_sharded, demo_whole, 0)
    assert 0 < answers(whole, CountQuery, {"from": "customers", "where": SMALL}).count < 10


def test_logistic_fits_leave_out_values_no_row_has(demo_sharded, demo_whole, services):
    """The shared dictionary holds values no row reaches (products no one ordered), which the unsharded build
    leaves out. Every logistic fit over shards leaves them out of its design too (kept as all-zero columns
    they changed the solver's rounding: propensities differed by up to 1e-5): bit for bit."""
    merged, whole_u = open_sharded(demo_sharded).universe("customers"), demo_whole.universe("customers")
    assert len(merged.feature_count) > whole_u.n_features  # such values exist
    kept = merged.unsharded_features()
    assert [merged.schema.feature_name(int(f)) for f in np.flatnonzero(kept)] == \
        [whole_u.feature_name(f) for f in range(whole_u.n_features)]
    sharded, whole = services[0]
    for obj in [{"from": "customers", "features": [["region", "north"], ["age", "<25"]], "include_propensities": True,
                 "propensity_l2": 1.0},
                {"from": "customers", "ids": whole_u.ids_for_rows(np.arange(0, 2000, 97)), "include_propensities": True,
                 "propensity_l2": 0.5}]:
        assert_same_assign(*(s.call(AssignQuery.from_json(obj)) for s in (sharded, whole)), tolerance=0.0)
    # Predict with every field as evidence (the logistic fit's patterns merged over shards)
    obj = {"from": "customers", "target": "churned", "method": "logistic", "l2": 1.0,
           "id": whole_u.ids_for_rows([7])[0]}
    assert assert_same_predict(*(s.call(PredictQuery.from_json(obj)) for s in (sharded, whole))) == 0.0


# --- Discover -----------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_discover(services, where, data):
    """A random `within`, fields, depth, support, lift, personas, activity adjustment and (sometimes) target."""
    universe, within, pair = draw_request(data, where, services)
    obj = {"from": universe, "within": within,
           "fields": data.draw(st.lists(st.sampled_from(DISCOVER_FIELDS[universe]), min_size=2, max_size=8,
                                        unique=True), label="fields"),
           "max_length": data.draw(st.integers(2, 3), label="max_length"),
           "min_support": data.draw(st.sampled_from([5, 15, 60]), label="min_support"),
           "max_q_value": data.draw(st.sampled_from([0.05, 1.0]), label="max_q_value"),
           "min_lift": data.draw(st.sampled_from([1.0, 1.2, 2.0]), label="min_lift"),
           "k": data.draw(st.integers(0, 3), label="k"),
           "adjust_for_activity": data.draw(st.booleans(), label="adjust")}
    if data.draw(st.booleans(), label="with target"):
        obj["target"] = data.draw(where(universe).filter(bool), label="target")
        obj["direction"] = data.draw(st.sampled_from(["both", "high", "low"]), label="direction")
    got = assert_same_discover(*pair, obj)
    event("refused alike" if got is None else "segments found alike" if got.segments else "no segment alike")


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("obj", [{"from": "customers", "target": "churned=true", "k": 3},
                                 {"from": "order_lines", "max_length": 3, "k": 2},
                                 {"from": "customers", "within": SMALL}],  # suppressed under a floor of 10
                         ids=["customers_target_personas", "order_lines", "small_within"])
def test_discover_defaults(services, privacy_k, obj):
    got = assert_same_discover(*services[privacy_k], obj)
    assert got.suppressed == (privacy_k > 0 and obj.get("within") == SMALL)
    assert got.segments or got.suppressed or "within" in obj


def test_stored_propensity_model_is_the_unsharded_one(demo_spec, tmp_path):
    """`segments apply` fits a segment's default membership model (l2 cross-validated) over 2 shards and stores
    it: bit for bit the unsharded snapshot's model, and so are the propensities Assign answers with it. (With
    the values no row has as all-zero columns, cross-validation chose l2 3.598 instead of 3.597.)"""
    catalog = {"grain_free": CATALOG["grain_free"]}
    build_snapshot(demo_spec, tmp_path / "whole", progress=quiet)
    apply_segments(tmp_path / "whole" / "demo", catalog, progress=quiet)
    build_shards(replace(load_spec(demo_spec), shard_entity="customers"), tmp_path / "sharded", 2, progress=quiet)
    apply_sharded_segments(tmp_path / "sharded" / "demo", catalog, progress=quiet)
    whole, sharded = open_snapshot(tmp_path / "whole" / "demo"), open_sharded(tmp_path / "sharded" / "demo")
    mine, theirs = sharded.schema.catalog_models["customers"]["grain_free"], whole.catalog_models["customers"]["grain_free"]
    assert (mine["l2"], mine["pairs"], mine["members"]) == (theirs["l2"], theirs["pairs"], theirs["members"])
    # [bias, a weight per feature of the dictionary, pair weights]: the shared dictionary's extra values weigh 0
    coef = sharded.schema.universe("customers").stored_models[tuple(mine["key"])][0]
    want = whole.universe("customers").stored_models[tuple(theirs["key"])][0]
    kept = sharded.universe("customers").unsharded_features()
    weights = coef[:, 1: 1 + len(kept)]
    assert not weights[:, ~kept].any()
    assert np.array_equal(np.hstack([coef[:, :1], weights[:, kept], coef[:, 1 + len(kept):]]), want)
    ids = whole.universe("customers").ids_for_rows(np.arange(0, N_CUSTOMERS, 37))
    obj = {"from": "customers", "ids": ids, "include_propensities": True}
    got, want = (s.call(AssignQuery.from_json(obj)) for s in sharded_services(tmp_path / "sharded" / "demo", whole))
    assert_same_assign(got, want, tolerance=0.0)
    assert any(m.propensity is not None for a in got.assignments for m in a.segments)
