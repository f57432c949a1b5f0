"""Relate: every statistic equals a brute-force computation over the source tables.

Counts come from the pandas oracle of conftest.py (source tables joined along
each field path); the statistics from scalar textbook formulas (conftest
ref_stats) with scipy's hypergeometric tails; q-values from a direct
Benjamini-Hochberg. Nothing here reads counts from the snapshot.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.engine.conditions import evaluate
from segsrv.ops.conditions import parse_where
from segsrv.service import run_json
from segsrv import _kernels
from segsrv.engine import relate as relate_engine
from segsrv.snapshot import format as fmt
from segsrv.engine.relate import (candidate_features, count_features, feature_layout, first_by, histogram_cost,
                                  partition_fields, relate, sparse_costs, sparse_method)
from segsrv.snapshot.reader import open_snapshot
from segsrv.ops.relate import MAX_LIMIT, ORDER_KEYS, STAT_NAMES, RelateQuery
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError, UnknownUniverseError
from support import as_bits, as_format_version_1, assert_same_answer, oracle_masks, strip_elapsed

ALL_ORDER_KEYS = (
    "lift_low", "lift_high", "lift_smoothed", "lift", "support", "p_value", "q_value", "mutual_information", "p", "leverage",
    "conviction", "jaccard", "certainty", "kulczynski", "zhang", "support_ratio", "p_base", "p_not", "n_feature",
)
# keys where "best" is the smallest value: always p/q-values; for direction "under" also the
# measures that fall below their independence value when F is under-represented in C
ASCENDING_ALWAYS = {"p_value", "q_value"}
ASCENDING_UNDER = {"lift", "lift_low", "lift_high", "lift_smoothed", "leverage", "zhang", "certainty", "conviction", "p", "kulczynski", "jaccard"}
HYPO = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------
# the brute-force relate
# ----------------------------------------------------------------------------


def requested_fields(bu, relate_list, skip, ref) -> list[str]:
    if not relate_list:
        return [f for f in bu.fields if f not in skip]
    out: dict[str, None] = {}
    for pat in relate_list:
        if pat in bu.fields:
            out[pat] = None  # a field named explicitly is related even when the condition uses it
        else:
            for f in ref.glob_fields(list(bu.fields), pat):
                if f not in skip:
                    out[f] = None
    return list(out)


def brute_relate(bu, where, ref, *, relate_list=None, exclude=True, direction="over", a=10.0,
                 min_support=1, min_lift=None, max_p_value=None):
    """{(field, value): stats} for every requested feature, the tested set and the kept set."""
    cond = bu.eval(where)
    n, n_c = bu.n, int(cond.sum())
    skip = ref.condition_fields(where) if exclude else set()
    fields = requested_fields(bu, relate_list, skip, ref)
    feats = bu.features(fields)
    out = {}
    counts = []
    for f, v in feats:
        m = bu.feature_mask(f, v)
        counts.append((int(m.sum()), int((m & cond).sum())))
    tails = ref.tails(n, n_c, [c[0] for c in counts], [c[1] for c in counts]) if n_c > 0 else []
    for i, (key, (n_f, n_cf)) in enumerate(zip(feats, counts)):
        if n_c > 0:
            out[key] = ref.stats(n, n_c, n_f, n_cf, a, direction, tails[i])
        else:
            out[key] = {"support": n_cf, "n_feature": n_f}
    tested = [k for k in feats if 0 < out[k]["n_feature"] < n]
    q = ref.bh([out[k]["p_value"] for k in tested]) if n_c > 0 else []
    for k, qv in zip(tested, q):
        out[k]["q_value"] = qv
    keep = []
    if n_c > 0:
        for k in tested:
            s = out[k]
            if s["support"] < min_support:
                continue
            if direction == "over" and not s["lift"] > 1 or direction == "under" and not s["lift"] < 1:
                continue
            if min_lift is not None and not s["lift"] >= min_lift:
                continue
            if max_p_value is not None and not s["p_value"] <= max_p_value:
                continue
            keep.append(k)
    return SimpleResult(n, n_c, fields, feats, out, tested, keep)


class SimpleResult:
    def __init__(self, n, n_c, fields, feats, stats, tested, keep):
        self.n, self.n_c, self.fields, self.feats = n, n_c, fields, feats
        self.stats, self.tested, self.keep = stats, tested, keep


def default_order(direction: str) -> str:
    """The order of a query without order_by: mutual information, descending, whatever the direction."""
    return "mutual_information"


def is_ascending(order_by, direction):
    return order_by in ASCENDING_ALWAYS or (direction == "under" and order_by in ASCENDING_UNDER)


def check_against(result, exp, ref, *, order_by, direction, limit, q_values=False):
    """The engine's result equals the brute force: counts, the kept set, its top `limit`, every statistic
    (the q-values when asked for, or implied by the order; NaN otherwise)."""
    q_values = q_values or order_by == "q_value"
    assert result.n_rows == exp.n
    assert result.n_condition == exp.n_c
    assert result.n_candidates == len(exp.feats)
    assert result.n_matching == len(exp.keep)
    assert len(result.hits) == min(limit, len(exp.keep))
    got_keys = [(h.field, h.value) for h in result.hits]
    assert len(set(got_keys)) == len(got_keys)
    assert set(got_keys) <= set(exp.keep)
    for h in result.hits:
        want = exp.stats[(h.field, h.value)]
        for name in STAT_NAMES:
            if name == "q_value" and not q_values:
                assert math.isnan(h.stats[name]), (h.field, h.value, "a q-value nobody asked for")
                continue
            assert ref.close(h.stats[name], want[name]), (h.field, h.value, name, h.stats[name], want[name])
    # ordering: best first by the order key (NaN last), ties by feature id
    asc = is_ascending(order_by, direction)

    def rank_key(value):
        value = float(value)
        if math.isnan(value):
            return math.inf
        return value if asc else -value

    keys = [rank_key(h.stats[order_by]) for h in result.hits]
    for (k1, h1), (k2, h2) in zip(zip(keys, result.hits), zip(keys[1:], result.hits[1:])):
        assert k1 <= k2, (order_by, h1.field, h1.value, h2.field, h2.value)
        if k1 == k2:
            assert h1.feature_id < h2.feature_id
    # the hits are the top `limit`: nothing left out ranks strictly better than the last hit
    if result.hits and len(exp.keep) > limit:
        last = keys[-1]
        # a last hit with no key (NaN: inf) leaves out only keyless ones (inf - 1e-9 inf would be NaN)
        bound = last if math.isinf(last) else last - 1e-9 * max(1.0, abs(last))
        for k in set(exp.keep) - set(got_keys):
            assert rank_key(exp.stats[k][order_by]) >= bound, (k, order_by)


def run_both_plans(snapshot, query: RelateQuery):
    results = {}
    for plan in ("scan", "histogram", "auto"):
        q = RelateQuery(**{**query.__dict__, "plan": plan})
        results[plan] = relate(snapshot, q)
    scan, hist = results["scan"], results["histogram"]

    def same(r1, r2):  # identical hits and statistics (NaN equals NaN)
        assert (r1.n_condition, r1.n_candidates, r1.n_matching) == (r2.n_condition, r2.n_candidates, r2.n_matching)
        assert [h.feature_id for h in r1.hits] == [h.feature_id for h in r2.hits]
        for h1, h2 in zip(r1.hits, r2.hits):
            assert h1.stats.keys() == h2.stats.keys()
            for name, x in h1.stats.items():
                y = h2.stats[name]
                assert x == y or (math.isnan(x) and math.isnan(y)), (h1.field, h1.value, name, x, y)

    same(scan, hist)
    same(scan, results["auto"])
    if scan.n_condition and scan.n_candidates:
        assert scan.plan == "scan" and hist.plan == "histogram"
        # "auto" takes the plan of the smaller estimate, in the scan's unit (the words and ids it reads)
        u = snapshot.universe(query.universe)
        layout = feature_layout(u, candidate_features(u, query), derive_partitions=True)
        cheaper = "histogram" if histogram_cost(u, scan.n_condition) < layout.scan_cost else "scan"
        assert results["auto"].plan == cheaper
    return scan


# ----------------------------------------------------------------------------
# random conditions and parameters (hypothesis)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("universe_name", ["customers", "order_lines", "orders"])
@HYPO
@given(data=st.data())
def test_random_relate_equals_bruteforce(petnord_snapshot, oracle, ref, where_strategy, universe_name, data):
    u = petnord_snapshot.universe(universe_name)
    bu = oracle.universe(universe_name)
    where = data.draw(where_strategy(universe_name), label="where")
    fields = sorted(u.fields)
    relate_list = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True)),
                            label="relate")
    params = dict(
        direction=data.draw(st.sampled_from(["over", "under", "all"]), label="direction"),
        order_by=data.draw(st.sampled_from(ALL_ORDER_KEYS), label="order_by"),
        limit=data.draw(st.sampled_from([1, 5, 20, MAX_LIMIT]), label="limit"),
        min_support=data.draw(st.sampled_from([0, 1, 3, 50]), label="min_support"),
        min_lift=data.draw(st.sampled_from([None, None, 0.5, 1.1, 2.0]), label="min_lift"),
        max_p_value=data.draw(st.sampled_from([None, None, 0.05, 1e-6, 1.0]), label="max_p_value"),
        prior_strength=data.draw(st.sampled_from([10.0, 0.0, 1.0, 37.5]), label="prior_strength"),
        exclude_condition_fields=data.draw(st.booleans(), label="exclude"),
        q_values=data.draw(st.booleans(), label="q_values"),
    )
    query = RelateQuery(where=parse_where(where), universe=universe_name, relate=relate_list, **params)
    result = run_both_plans(petnord_snapshot, query)
    exp = brute_relate(bu, where, ref, relate_list=relate_list, exclude=params["exclude_condition_fields"],
                       direction=params["direction"], a=params["prior_strength"], min_support=params["min_support"],
                       min_lift=params["min_lift"], max_p_value=params["max_p_value"])
    check_against(result, exp, ref, order_by=params["order_by"], direction=params["direction"], limit=params["limit"],
                  q_values=params["q_values"])

    # both counting plans give the brute-force n_CF of every feature of the universe
    bits = evaluate(petnord_snapshot, u, parse_where(where))
    n_c = int(bu.eval(where).sum())
    fids = np.arange(u.n_features, dtype=np.int64)
    if n_c:
        cond = bu.eval(where)
        want = np.array([int((bu.feature_mask(*u.feature_name(int(i))) & cond).sum()) for i in fids])
        for plan in ("scan", "histogram"):
            got, used = count_features(u, bits, n_c, fids, plan)
            assert used == plan
            np.testing.assert_array_equal(got, want)
        # the partitioning fields' costliest values derived from the rest, not read; their fields in any order
        shuffled = np.random.default_rng(n_c).permutation(fids)
        for ids in (fids, shuffled):
            layout = feature_layout(u, ids, derive_partitions=True)
            got, _ = count_features(u, bits, n_c, ids, "scan", layout)
            np.testing.assert_array_equal(got, want[ids])


@pytest.mark.parametrize("universe_name", ["customers", "order_lines", "orders"])
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_relate_all_statistics_of_every_tested_feature(petnord_snapshot, oracle, ref, where_strategy,
                                                             universe_name, data):
    """direction=all, no filters, no limit: every tested feature is a hit with the brute-force statistics
    and the q-values are Benjamini-Hochberg over exactly those features."""
    bu = oracle.universe(universe_name)
    where = data.draw(where_strategy(universe_name), label="where")
    query = RelateQuery(where=parse_where(where), universe=universe_name, direction="all", min_support=0,
                        limit=MAX_LIMIT, order_by="p_value", q_values=True)
    result = run_both_plans(petnord_snapshot, query)
    exp = brute_relate(bu, where, ref, direction="all", min_support=0)
    check_against(result, exp, ref, order_by="p_value", direction="all", limit=MAX_LIMIT, q_values=True)
    if exp.n_c:
        assert {(h.field, h.value) for h in result.hits} == set(exp.tested)


# ----------------------------------------------------------------------------
# named cases
# ----------------------------------------------------------------------------

DOG_DRY = {"product.category": "dry-food", "product.pet_type": "dog"}


def test_order_keys_documented():
    assert set(ORDER_KEYS) == set(ALL_ORDER_KEYS)


@pytest.mark.parametrize("direction", ["over", "under", "all"])
@pytest.mark.parametrize("order_by", ALL_ORDER_KEYS)
def test_ordering_by_each_key(petnord_snapshot, oracle, ref, order_by, direction):
    bu = oracle.universe("order_lines")
    where = {"$or": [DOG_DRY, {"order.customer.segment": "cat_owner", "returned": True}]}
    query = RelateQuery(where=parse_where(where), universe="order_lines", order_by=order_by, direction=direction,
                        limit=15, min_support=0)
    result = relate(petnord_snapshot, query)
    exp = brute_relate(bu, where, ref, direction=direction, min_support=0)
    assert len(result.hits) == 15
    check_against(result, exp, ref, order_by=order_by, direction=direction, limit=15)


def test_filters(petnord_snapshot, oracle, ref):
    bu = oracle.universe("customers")
    where = {"orders.lines.product.category": "dry-food", "segment": ["dog_owner", "multi_pet"]}
    for kwargs in (
        dict(min_support=200),
        dict(min_lift=1.5),
        dict(max_p_value=1e-10),
        dict(min_support=20, min_lift=1.2, max_p_value=0.01, direction="all"),
        dict(direction="under", max_p_value=0.001),
        dict(direction="under", min_lift=0.5),
    ):
        query = RelateQuery(where=parse_where(where), universe="customers", limit=MAX_LIMIT, **kwargs)
        result = run_both_plans(petnord_snapshot, query)
        exp = brute_relate(bu, where, ref, **{k: v for k, v in kwargs.items()})
        assert exp.keep, kwargs
        check_against(result, exp, ref, order_by=default_order(kwargs.get("direction", "over")),
                      direction=kwargs.get("direction", "over"),
                      limit=MAX_LIMIT)
        for h in result.hits:
            assert h.support >= kwargs.get("min_support", 1)
            if "min_lift" in kwargs:
                assert h.lift >= kwargs["min_lift"]
            if "max_p_value" in kwargs:
                assert h.p_value <= kwargs["max_p_value"]
            if kwargs.get("direction", "over") == "over":
                assert h.lift > 1
            elif kwargs["direction"] == "under":
                assert h.lift < 1


def test_limit(petnord_snapshot, oracle, ref):
    where = {"region": "oulu"}
    full = relate(petnord_snapshot, RelateQuery(where=parse_where(where), universe="customers", limit=MAX_LIMIT,
                                                direction="all"))
    assert full.n_matching == len(full.hits) > 10
    for limit in (1, 3, 10):
        r = relate(petnord_snapshot, RelateQuery(where=parse_where(where), universe="customers", limit=limit,
                                                 direction="all"))
        assert [h.feature_id for h in r.hits] == [h.feature_id for h in full.hits[:limit]]
        assert r.n_matching == full.n_matching


def test_globs(petnord_snapshot, oracle, ref):
    u = petnord_snapshot.universe("order_lines")
    bu = oracle.universe("order_lines")
    where = {"product.category": "dry-food", "order.customer.region": "oulu"}
    for pattern in ("order.customer.*", "**", "product.*", "order.**", "*", "*.pet_type"):
        query = RelateQuery(where=parse_where(where), universe="order_lines", relate=[pattern], limit=MAX_LIMIT,
                            direction="all", min_support=0)
        result = run_both_plans(petnord_snapshot, query)
        matched = [f for f in ref.glob_fields(list(u.fields), pattern) if f not in ref.condition_fields(where)]
        assert matched, pattern
        assert result.n_candidates == sum(len(u.fields[f].values) for f in matched)
        assert {h.field for h in result.hits} <= set(matched)
        assert "order.customer.region" not in {h.field for h in result.hits}  # a condition field
        exp = brute_relate(bu, where, ref, relate_list=[pattern], direction="all", min_support=0)
        check_against(result, exp, ref, order_by=default_order("all"), direction="all", limit=MAX_LIMIT)
    only_customer = ref.glob_fields(list(u.fields), "order.customer.*")
    assert only_customer and all(f.startswith("order.customer.") and f.count(".") == 2 for f in only_customer)
    assert len(ref.glob_fields(list(u.fields), "**")) == len(u.fields)


def test_relate_errors(petnord_snapshot):
    where = parse_where({"region": "oulu"})
    with pytest.raises(UnknownFieldError, match="segmnet"):
        relate(petnord_snapshot, RelateQuery(where=where, universe="customers", relate=["segmnet"]))
    with pytest.raises(UnknownFieldError, match="matches no field"):
        relate(petnord_snapshot, RelateQuery(where=where, universe="customers", relate=["nothing.*"]))
    for bad in (dict(order_by="lfit"), dict(direction="sideways"), dict(plan="magic"), dict(limit=0),
                dict(min_support=-1), dict(max_p_value=2.0), dict(prior_strength=-1)):
        with pytest.raises(QueryError):
            relate(petnord_snapshot, RelateQuery(where=where, universe="customers", **bad))
    with pytest.raises(LimitExceededError):
        relate(petnord_snapshot, RelateQuery(where=where, universe="customers", limit=MAX_LIMIT + 1))
    # malformed numbers are refused with a QueryError naming the parameter (not a numpy TypeError,
    # nor NaN statistics / a silently empty answer)
    for key, value in (("min_lift", "2"), ("min_lift", float("nan")), ("max_p_value", "0.1"),
                       ("max_p_value", float("nan")), ("prior_strength", float("nan")),
                       ("prior_strength", float("inf")), ("prior_strength", True), ("min_support", 1.5),
                       ("limit", "10"), ("include_condition_fields", "no")):
        with pytest.raises(QueryError, match=key):
            run_json("relate", petnord_snapshot, {"from": "customers", "where": {"region": "oulu"}, key: value})
    with pytest.raises(UnknownUniverseError, match="custmers"):
        run_json("relate", petnord_snapshot, {"from": "custmers", "where": {}})
    with pytest.raises(UnknownUniverseError, match="from"):
        run_json("relate", petnord_snapshot, {"where": {}})
    with pytest.raises(QueryError, match="lfit"):
        RelateQuery.from_json({"from": "customers", "where": {}, "order_by": "lfit"})
    with pytest.raises(QueryError, match="wehre"):
        RelateQuery.from_json({"from": "customers", "wehre": {}})
    with pytest.raises(QueryError, match=r"\$lfit"):
        RelateQuery.from_json({"from": "customers", "select": ["$lfit"]})


def test_condition_fields_excluded_by_default(petnord_snapshot, oracle, ref):
    u = petnord_snapshot.universe("customers")
    bu = oracle.universe("customers")
    where = {"region": "oulu", "$not": {"segment": "cat_owner"}, "tenure_months": {"$gte": 12}}
    cond_fields = {"region", "segment", "tenure_months"}
    result = relate(petnord_snapshot, RelateQuery(where=parse_where(where), universe="customers", limit=MAX_LIMIT,
                                                  direction="all", min_support=0))
    assert result.n_candidates == u.n_features - sum(len(u.fields[f].values) for f in cond_fields)
    assert not {h.field for h in result.hits} & cond_fields
    exp = brute_relate(bu, where, ref, direction="all", min_support=0)
    check_against(result, exp, ref, order_by=default_order("all"), direction="all", limit=MAX_LIMIT)
    # include them on request (RelateQuery and the JSON form)
    incl = relate(petnord_snapshot, RelateQuery(where=parse_where(where), universe="customers", limit=MAX_LIMIT,
                                                direction="all", min_support=0, exclude_condition_fields=False))
    assert incl.n_candidates == u.n_features
    assert ("region", "oulu") in {(h.field, h.value) for h in incl.hits}
    exp = brute_relate(bu, where, ref, exclude=False, direction="all", min_support=0)
    check_against(incl, exp, ref, order_by=default_order("all"), direction="all", limit=MAX_LIMIT)
    js = run_json("relate", petnord_snapshot, {"from": "customers", "where": where, "include_condition_fields": True,
                                            "direction": "all", "min_support": 0, "limit": MAX_LIMIT})
    assert js["n_candidates"] == u.n_features
    # a field named explicitly in `relate` is related even though the condition uses it
    named = relate(petnord_snapshot, RelateQuery(where=parse_where(where), universe="customers", relate=["region"],
                                                 direction="all", min_support=0))
    assert named.n_candidates == len(u.fields["region"].values)


def test_condition_all_and_empty(petnord_snapshot, oracle, ref):
    u = petnord_snapshot.universe("orders")
    # C = everyone: every lift is exactly 1, nothing over- or under-indexes
    r = relate(petnord_snapshot, RelateQuery(where=parse_where({}), universe="orders"))
    assert r.n_condition == u.n_rows and r.hits == [] and r.n_matching == 0
    r = relate(petnord_snapshot, RelateQuery(where=parse_where({}), universe="orders", direction="all",
                                             limit=MAX_LIMIT, min_support=0))
    bu = oracle.universe("orders")
    exp = brute_relate(bu, {}, ref, direction="all", min_support=0)
    check_against(r, exp, ref, order_by=default_order("all"), direction="all", limit=MAX_LIMIT)
    assert all(h.lift == 1.0 and h.p == h.p_base for h in r.hits)
    # C = nobody
    for direction in ("over", "under", "all"):
        r = relate(petnord_snapshot, RelateQuery(where=parse_where({"$not": {}}), universe="orders",
                                                 direction=direction, min_support=0))
        assert r.n_condition == 0 and r.hits == [] and r.n_matching == 0 and r.plan == "none"


def test_relate_large_universe_impressions(petnord_snapshot, oracle, ref):
    """125,935 rows (2,000 words per bitset): forward hops, both plans, every statistic."""
    bu = oracle.universe("impressions")
    for where in ({"customer.segment": "dog_owner", "surface": "search"},
                  {"$or": [{"product.category": "dental-treats"}, {"position": {"$lte": 2}}], "clicked": True}):
        for direction in ("over", "under"):
            query = RelateQuery(where=parse_where(where), universe="impressions", direction=direction,
                                min_support=0, limit=MAX_LIMIT)
            result = run_both_plans(petnord_snapshot, query)
            exp = brute_relate(bu, where, ref, direction=direction, min_support=0)
            assert exp.keep
            check_against(result, exp, ref, order_by=default_order(direction), direction=direction, limit=MAX_LIMIT)


# ----------------------------------------------------------------------------
# the seed-000 query and the published PetNord figure
# ----------------------------------------------------------------------------

SEED_QUERY = {
    "from": "order_lines",
    "where": {"product.category": "dry-food", "product.pet_type": "dog"},
    "relate": ["order.customer.region", "order.customer.segment"],
    "select": ["$lift", "$p", "$support", "order.customer.region"],
    "limit": 10,
}


def test_seed_query_json(petnord_snapshot, oracle, ref):
    out = run_json("relate", petnord_snapshot, SEED_QUERY)
    bu = oracle.universe("order_lines")
    exp = brute_relate(bu, SEED_QUERY["where"], ref, relate_list=SEED_QUERY["relate"])
    assert out["from"] == "order_lines" and out["n_rows"] == 38013
    assert out["n_condition"] == exp.n_c > 0
    assert out["n_matching"] == len(exp.keep) > 0
    # expected rows: over-indexed (lift > 1) features ordered by mutual information (the default)
    ranked = sorted(exp.keep, key=lambda k: -exp.stats[k]["mutual_information"])[: SEED_QUERY["limit"]]
    assert len(out["hits"]) == len(ranked)
    for row, (field, value) in zip(out["hits"], ranked):
        # every hit names its feature, then the select's columns
        assert list(row) == ["$field", "$value", "$lift", "$p", "$support", "order.customer.region"]
        assert (row["$field"], row["$value"]) == (field, value)
        s = exp.stats[(field, value)]
        assert row["$support"] == s["support"]
        assert ref.close(row["$lift"], s["lift"]) and ref.close(row["$p"], s["p"])
        assert row["order.customer.region"] == (value if field == "order.customer.region" else None)
    # the same answer through RelateQuery with both plans
    query = RelateQuery.from_json(SEED_QUERY)
    select = query.select
    assert select == SEED_QUERY["select"]
    result = run_both_plans(petnord_snapshot, query)
    check_against(result, exp, ref, order_by=default_order("over"), direction="over", limit=10)


def test_published_figure_dryfood_dentaltreats(petnord_snapshot, source, ref):
    """Orders with dog dry-food also contain dog dental treats at lift 2.68 (2,952 of 4,206 vs 3,196 of 12,215)."""
    orders = source.tables["orders"]
    cats = orders["line_categories"].str.split(" ")
    has_dry = cats.map(lambda c: "dog_dryfood" in c)
    has_dental = cats.map(lambda c: "dog_dentaltreats" in c)
    n, n_c, n_f, n_cf = len(orders), int(has_dry.sum()), int(has_dental.sum()), int((has_dry & has_dental).sum())
    assert (n, n_c, n_f, n_cf) == (12215, 4206, 3196, 2952)
    out = run_json("relate", petnord_snapshot, {
        "from": "orders", "where": {"line_categories": "dog_dryfood"}, "relate": ["line_categories"],
        "select": ["$value", "$support", "$n_feature", "$lift", "$p", "$p_base"], "limit": 50,
    })
    assert out["n_rows"] == n and out["n_condition"] == n_c
    row = next(r for r in out["hits"] if r["$value"] == "dog_dentaltreats")
    assert row["$support"] == n_cf and row["$n_feature"] == n_f
    assert ref.close(row["$lift"], (n_cf / n_c) / (n_f / n))
    assert round(row["$lift"], 2) == 2.68
    # the exact tree + all statistics
    r = relate(petnord_snapshot, RelateQuery(where=parse_where({"line_categories": "dog_dryfood"}), universe="orders",
                                             relate=["line_categories"], limit=50))
    hit = next(h for h in r.hits if h.value == "dog_dentaltreats")
    want = ref.stats(n, n_c, n_f, n_cf)
    for name in want:
        assert ref.close(hit.stats[name], want[name]), name


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
def test_first_by_equals_full_lexsort(data):
    """Relate's top `limit` (past 256 candidates, bounded by a strided sample's limit-th key) = the first
    `limit` of the full sort by key then feature id, with many ties, infinities, signed zeros, ordered keys."""
    m = data.draw(st.integers(0, 1200))
    pool = data.draw(st.lists(st.sampled_from([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, 3e-300, 7.25]), min_size=1,
                              max_size=5))
    key = np.array([data.draw(st.sampled_from(pool)) for _ in range(m)], dtype=np.float64)
    if data.draw(st.booleans()):
        key = key + np.arange(m) % data.draw(st.integers(1, 40))
    if data.draw(st.booleans()):  # ordered keys: the strided sample misses the smallest
        key = np.sort(key)[:: data.draw(st.sampled_from([1, -1]))].copy()
    ties = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(3 * m)[:m].astype(np.int64)
    limit = data.draw(st.one_of(st.integers(1, 60), st.integers(1, MAX_LIMIT)))
    assert np.array_equal(first_by(key, ties, limit), np.lexsort((ties, key))[:limit])


@pytest.mark.parametrize("universe_name", ["customers", "order_lines", "orders"])
def test_partition_fields_are_the_fields_every_row_holds_exactly_one_value_of(petnord_snapshot, oracle, universe_name):
    """partition_fields = the fields whose values' row masks (the oracle's, from the source tables) give every
    row exactly one value; a derived layout leaves exactly one value of each, when all its values are asked
    for once, and none of a field asked for in part or twice."""
    u, bu = petnord_snapshot.universe(universe_name), oracle.universe(universe_name)
    want = []
    for name in u.fields:
        masks = [bu.feature_mask(name, v) for v in u.fields[name].values]
        if masks and (np.sum(masks, axis=0) == 1).all():
            want.append(name)
    assert [f.name for f in partition_fields(u)] == want
    fids = np.arange(u.n_features, dtype=np.int64)
    layout = feature_layout(u, fids, derive_partitions=True)
    several = [f for f in partition_fields(u) if len(f.values) > 1]
    assert sorted(u.feature_name(int(fids[p]))[0] for p in layout.derived) == sorted(f.name for f in several)
    read = np.concatenate([layout.dense, layout.sparse, layout.derived])
    assert sorted(read.tolist()) == list(range(len(fids)))  # every position read or derived, once
    if several:
        part = several[0].feature_ids
        assert len(feature_layout(u, part[1:], derive_partitions=True).derived) == 0
        assert len(feature_layout(u, np.concatenate([part, part]), derive_partitions=True).derived) == 0
        assert len(feature_layout(u, part).derived) == 0  # only when asked for


@pytest.mark.parametrize("universe_name", ["customers", "order_lines", "orders"])
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_default_order_kernel_equals_the_vector_form(petnord_snapshot, where_strategy, universe_name, data):
    """The default request (mutual information, no p-value filter, no q-values) is ranked by one kernel pass
    (top_by_mutual_information); max_p_value = 1 keeps every candidate but takes the vector form: the same
    hits, statistics and count of matching candidates, bit for bit, for every direction, lift floor, support
    floor and limit."""
    where = parse_where(data.draw(where_strategy(universe_name), label="where"))
    params = dict(direction=data.draw(st.sampled_from(["over", "under", "all"]), label="direction"),
                  min_lift=data.draw(st.sampled_from([None, 0.5, 1.0, 2.0]), label="min_lift"),
                  min_support=data.draw(st.sampled_from([0, 1, 5]), label="min_support"),
                  limit=data.draw(st.sampled_from([1, 3, 20, MAX_LIMIT]), label="limit"))
    fast = relate(petnord_snapshot, RelateQuery(where=where, universe=universe_name, **params))
    vector = relate(petnord_snapshot, RelateQuery(where=where, universe=universe_name, max_p_value=1.0, **params))
    assert (fast.n_condition, fast.n_matching) == (vector.n_condition, vector.n_matching)
    assert [h.feature_id for h in fast.hits] == [h.feature_id for h in vector.hits]
    for a, b in zip(fast.hits, vector.hits):
        assert a.stats.keys() == b.stats.keys()
        assert all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.stats.values(), b.stats.values()))


# ----------------------------------------------------------------------------
# the sparse features' two methods: probing their ids, histogramming the condition's rows (or its complement's)
# ----------------------------------------------------------------------------

def assert_every_method_counts(u, masks, cond: np.ndarray) -> None:
    """count_features' scan by each sparse method, with and without derived partitions, on every feature and on
    a shuffled part of them, equals the naive numpy count masks & cond."""
    bits, n_c = as_bits(cond), int(cond.sum())
    want = (masks & cond).sum(axis=1)
    fids = np.arange(u.n_features, dtype=np.int64)
    rng = np.random.default_rng(n_c)
    part = rng.permutation(np.union1d(rng.permutation(fids)[: u.n_features // 3], u.sparse_features[::2]))
    for ids in (fids, part):
        for layout in (feature_layout(u, ids), feature_layout(u, ids, derive_partitions=True)):
            assert len(layout.sparse), "the test wants sparse features"
            for sparse in ("probe", "rows", "auto"):
                got, plan = count_features(u, bits, n_c, ids, "scan", layout, sparse=sparse)
                assert plan == "scan"
                np.testing.assert_array_equal(got, want[ids], err_msg=f"sparse={sparse}, n_c={n_c}")


@pytest.mark.parametrize("universe_name", ["customers", "orders"])
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sparse_methods_equal_naive_counts_of_random_conditions(petnord_rare_snapshot, oracle, universe_name, data):
    """Random row sets, below and above half the rows (the rows method lists the complement above half)."""
    u = petnord_rare_snapshot.universe(universe_name)
    masks = oracle_masks(u, oracle.universe(universe_name))
    density = data.draw(st.one_of(st.floats(0.0, 0.5), st.floats(0.5, 1.0), st.sampled_from([0.0, 1.0])),
                        label="density")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    cond = rng.random(u.n_rows) < density
    assert_every_method_counts(u, masks, cond)


def test_sparse_rows_method_complement_path(petnord_rare_snapshot, oracle, monkeypatch):
    """Above half the rows the histogram is of the rows outside the condition (count = n_F - theirs): every
    row, every row but one, half and one more, exactly half (listed directly), one row."""
    u = petnord_rare_snapshot.universe("customers")
    masks = oracle_masks(u, oracle.universe("customers"))
    listed = []
    to_ids = _kernels.bitset_to_ids
    monkeypatch.setattr(_kernels, "bitset_to_ids", lambda bits, n=None: listed.append(to_ids(bits, n)) or listed[-1])
    n = u.n_rows
    for size, lists in ((n, 0), (n - 1, 1), (n // 2 + 1, n - n // 2 - 1), (n // 2, n // 2), (1, 1)):
        cond = np.zeros(n, dtype=bool)
        cond[np.random.default_rng(size).permutation(n)[:size]] = True
        listed.clear()
        assert_every_method_counts(u, masks, cond)
        assert {len(rows) for rows in listed} == {lists}, size  # what "rows" listed: the smaller side
        outside = np.flatnonzero(~cond) if 2 * size > n else np.flatnonzero(cond)
        assert np.array_equal(listed[0], outside)


def test_sparse_method_choice_and_errors(petnord_rare_snapshot, tmp_path, petnord_rare_root, petnord_snapshot,
                                          monkeypatch):
    u = petnord_rare_snapshot.universe("order_lines")
    fids = np.arange(u.n_features, dtype=np.int64)
    layout = feature_layout(u, fids)
    assert layout.sparse_ids == int(np.asarray(u.feature_count)[fids[layout.sparse]].sum()) > 0
    # the cheaper estimate, probing unless the rows method is ROWS_MARGIN times cheaper; the rows method's
    # estimate is the same for a condition and its complement; the forced methods are what they say
    for n_c in (1, 2, u.n_rows // 2, u.n_rows - 2, u.n_rows - 1):
        probe, rows = sparse_costs(u, layout, n_c)
        assert probe == relate_engine.PROBE_ID_NS * layout.sparse_ids
        assert rows == sparse_costs(u, layout, u.n_rows - n_c)[1]
        assert sparse_method(u, layout, n_c) == ("rows" if rows * relate_engine.ROWS_MARGIN < probe else "probe")
        assert sparse_method(u, layout, n_c, "probe") == "probe" and sparse_method(u, layout, n_c, "rows") == "rows"
    # as if probing cost more, a one-row condition is listed, and as if it cost less, half the rows are probed
    monkeypatch.setattr(relate_engine, "PROBE_ID_NS", 0.001)
    assert sparse_method(u, layout, u.n_rows // 2) == "probe"
    monkeypatch.setattr(relate_engine, "PROBE_ID_NS", 1e6)
    assert sparse_method(u, layout, 1) == "rows"
    # "auto" counts by the method it picks: that one-row condition through the sparse CSR (its compact form)
    histogrammed = []
    histogram = _kernels.compact_csr_histogram
    monkeypatch.setattr(_kernels, "compact_csr_histogram", lambda base, within, indices, rows, *a, **k: (
        histogrammed.append((within, rows)) or histogram(base, within, indices, rows, *a, **k)))
    bits = np.zeros(u.n_words, dtype=np.uint64)
    bits[0] = 1
    count_features(u, bits, 1, fids, "scan", layout)
    assert len(histogrammed) == 1 and len(histogrammed[0][0]) == u.n_rows + 1
    assert histogrammed[0][1].tolist() == [0]
    monkeypatch.setattr(_kernels, "compact_csr_histogram", histogram)
    # no sparse feature asked for: probing costs nothing
    dense_only = feature_layout(u, u.dense_features.astype(np.int64))
    assert sparse_method(u, dense_only, 1) == "probe"
    bits = np.zeros(u.n_words, dtype=np.uint64)
    for bad in ("ids", "", None, "Rows"):
        with pytest.raises(ValueError, match="sparse must be one of"):
            count_features(u, bits, 0, fids, sparse=bad)
    # a snapshot of format version 1 has no sparse CSR, nor a universe with too few sparse ids for one (the
    # default PetNord's order lines: 1,150 ids in 38,013 rows): "auto" probes (however dear), "rows" is refused
    u1 = version_1(petnord_rare_root, tmp_path).universe("order_lines")
    few = petnord_snapshot.universe("order_lines")
    assert not fmt.sparse_csr_pays(len(few.sparse_ids), few.n_rows) and len(few.sparse_ids)
    for v in (u1, few):
        f = np.arange(v.n_features, dtype=np.int64)
        assert v.sparse_csr_indptr is None and sparse_method(v, feature_layout(v, f), 1) == "probe"
        with pytest.raises(ValueError, match="no sparse CSR"):
            count_features(v, np.zeros(v.n_words, dtype=np.uint64), 1, f, "scan", sparse="rows")


def version_1(root_v2, tmp_path):
    """A snapshot root of PetNord as format version 1 wrote it (no sparse CSR), opened."""
    root = tmp_path / "v1"
    shutil.copytree(root_v2, root)
    vdir = next(p for p in (root / "petnord").iterdir() if p.is_dir() and not p.name.startswith("."))
    as_format_version_1(vdir)
    return open_snapshot(root)


VERSION_1_QUERIES = [
    ("relate", {"from": "customers", "where": {"region": "helsinki"}, "limit": 20, "plan": "scan"}),
    ("relate", {"from": "customers", "where": {"$not": {"region": "helsinki"}}, "limit": 20}),  # above half
    ("relate", {"from": "customers", "where": {"lifestyle": "premium", "churned": "true"}, "limit": 200,
                "direction": "all", "plan": "scan"}),
    ("relate", {"from": "orders", "where": {"customer.segment": "multi_pet"}, "limit": 20, "plan": "scan"}),
    ("relate", {"from": "order_lines", "where": {"order.customer.region": "oulu"}, "limit": 20}),
    ("relate", {"from": "order_lines", "where": {"$not": {"order.customer.region": "oulu"}}, "limit": 20}),
    ("profile", {"from": "customers", "segment": {"region": "helsinki"}}),
    ("profile", {"from": "customers", "segment": {"$not": {"region": "helsinki"}}}),
    ("profile", {"from": "order_lines", "segment": {"order.customer.segment": "aquarium_owner"}}),
]


@pytest.mark.parametrize("kind,query", VERSION_1_QUERIES)
def test_a_version_1_snapshot_answers_as_version_2(petnord_rare_snapshot, petnord_rare_root, tmp_path_factory,
                                                   monkeypatch, kind, query):
    """Without the sparse CSR (format version 1) the engine probes; with it (as if probing cost a lot, so that
    the rows method counts wherever the scan plan counts sparse features) the answers are the same."""
    if "v1" not in _V1:
        _V1["v1"] = version_1(petnord_rare_root, tmp_path_factory.mktemp("petnord_v1"))
    v1 = _V1["v1"]
    assert v1.manifest["format_version"] == 1 and petnord_rare_snapshot.manifest["format_version"] == 2
    want = strip_elapsed(run_json(kind, v1, query))
    methods = []
    pick = relate_engine.sparse_method
    monkeypatch.setattr(relate_engine, "PROBE_ID_NS", 1e6)
    monkeypatch.setattr(relate_engine, "sparse_method", lambda *a, **k: methods.append(pick(*a, **k)) or methods[-1])
    got = strip_elapsed(run_json(kind, petnord_rare_snapshot, query))
    assert methods and set(methods) == {"rows"}
    assert_same_answer(got, want)


_V1: dict = {}
