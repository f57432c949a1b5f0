"""Every JSON `where` form -> tree -> proto Condition -> back (segsrv.ops.conditions), and the client's
requests built from them. No server needed: the client and the server share one converter."""

from __future__ import annotations


import pytest

from segsrv.client import SegsrvClient
from segsrv.ops.conditions import from_proto as condition_from_proto
from segsrv.ops.conditions import to_condition
from segsrv.ops.conditions import to_proto as condition_to_proto
from segsrv.ops.conditions import where_json as where_from_condition
from segsrv.ops.relate import RelateQuery, RelateResult
from segsrv.ops.conditions import All, And, AnyOf, Not, Or, Range, SegmentRef, Term, parse_where
from segsrv.errors import LimitExceededError, QueryError
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb

def where_to_proto(where):
    return condition_to_proto(to_condition(where))


def where_from_proto(msg):
    return where_from_condition(condition_from_proto(msg))


WHERE_FORMS = [
    {"region": "north"},
    {"region": "north", "pet.species": "dog"},
    {"region": ["north", "west"]},
    {"region": {"$in": ["north", "west"]}},
    {"region": {"$in": "north"}},
    {"region": {"$ne": "north"}},
    {"age": {"$gte": 30, "$lt": 40}},
    {"age": {"$gt": 30.5, "$lte": 40}},
    {"age": {"$lt": 18}},
    {"age": "35-45"},
    {"age": 30},
    {"churned": True},
    {"score": 2.5},
    {"$and": [{"region": "north"}, {"churned": False}]},
    {"$or": [{"region": "north"}, {"$not": {"churned": True}}]},
    {"$not": {"region": ["north", "west"]}},
    {"$segment": "loyal-dog-owners"},
    {"$and": [{"$segment": "a"}, {"$or": [{"x": "1"}, {"y": {"$gte": 1}}]}], "z": "2"},
    {},
    {"$all": True},
    None,
]


@pytest.mark.parametrize("where", WHERE_FORMS, ids=lambda w: repr(w)[:60])
def test_round_trip(where):
    cond = parse_where(where)
    msg = where_to_proto(where)
    assert isinstance(msg, cpb.Condition)
    # the wire form round-trips and every node has its kind set
    wire = cpb.Condition.FromString(msg.SerializeToString())
    assert wire == msg
    assert condition_from_proto(wire) == cond
    # back to JSON and parsed again: the same tree
    assert parse_where(where_from_proto(wire)) == cond
    assert parse_where(where_from_condition(cond)) == cond
    # engine dataclasses and proto Conditions are accepted as they are
    assert to_condition(cond) == cond
    assert to_condition(msg) == cond


def test_proto_structure():
    m = where_to_proto({"region": "north"})
    assert m.WhichOneof("kind") == "term" and (m.term.field, m.term.value) == ("region", "north")

    m = where_to_proto({"region": {"$in": ["north", "west"]}})
    assert m.WhichOneof("kind") == "value_set"
    assert m.value_set.field == "region" and list(m.value_set.values) == ["north", "west"]

    m = where_to_proto({"age": {"$gte": 30, "$lt": 40}})
    r = m.numeric_range
    assert m.WhichOneof("kind") == "numeric_range" and r.field == "age"
    assert r.HasField("gte") and r.gte == 30.0 and r.HasField("lt") and r.lt == 40.0
    assert not r.HasField("gt") and not r.HasField("lte")

    m = where_to_proto({"age": {"$gt": 0}})  # a zero bound is set, not "open"
    assert m.numeric_range.HasField("gt") and m.numeric_range.gt == 0.0

    m = where_to_proto({"region": {"$ne": "north"}})
    assert m.WhichOneof("kind") == "negation" and m.negation.term.value == "north"

    m = where_to_proto({"a": "x", "b": "y"})
    assert m.WhichOneof("kind") == "all_of"
    assert [(c.term.field, c.term.value) for c in m.all_of.conditions] == [("a", "x"), ("b", "y")]

    m = where_to_proto({"$or": [{"a": "x"}, {"$not": {"b": "y"}}]})
    assert m.WhichOneof("kind") == "any_of"
    assert [c.WhichOneof("kind") for c in m.any_of.conditions] == ["term", "negation"]

    m = where_to_proto({"$segment": "vip"})
    assert m.WhichOneof("kind") == "segment" and m.segment.name == "vip"

    for every in ({}, {"$all": True}, None):
        assert where_to_proto(every).WhichOneof("kind") == "all_rows"

    # values are text, as the engine writes them
    assert where_to_proto({"churned": True}).term.value == "true"
    assert where_to_proto({"age": 30.0}).term.value == "30"
    assert list(where_to_proto({"n": [1, 2.5]}).value_set.values) == ["1", "2.5"]


def test_dataclasses_and_unset_proto():
    tree = And((Term("a", "x"), Or((AnyOf("b", ("1", "2")), Not(Range("c", gte=1.0)))), SegmentRef("s"), All()))
    assert condition_from_proto(condition_to_proto(tree)) == tree
    assert condition_from_proto(cpb.Condition()) == All()  # unset: every row


@pytest.mark.parametrize("bad", [
    {"a": {"$foo": 1}},
    {"a": []},
    {"a": {}},
    {"$and": []},
    {"$or": "x"},
    {"$segment": ""},
    {"$all": False},
    {"$nope": 1},
    {"a": {"$gte": "x"}},
    {"a": {"$gte": 1, "$gt": 2}},
    {"a": {"x": 1}},
    "region=north",
])
def test_malformed_where_raises_the_local_error(bad):
    with pytest.raises(QueryError) as local:
        parse_where(bad)
    with pytest.raises(QueryError) as remote:
        where_to_proto(bad)
    assert type(remote.value) is type(local.value)
    assert remote.value.message == local.value.message
    assert remote.value.violations == local.value.violations
    # and through the client's request builder (before any RPC)
    client = SegsrvClient("127.0.0.1:1")
    try:
        with pytest.raises(QueryError) as via_client:
            client.relate_request({"where": bad})
        assert via_client.value.message == local.value.message
        with pytest.raises(QueryError):
            client.count_request({"where": bad})
    finally:
        client.close()


def test_bad_proto_conditions():
    with pytest.raises(QueryError):
        condition_from_proto(cpb.Condition(value_set=cpb.ValueSet(field="a")))
    with pytest.raises(QueryError):
        condition_from_proto(cpb.Condition(all_of=cpb.ConditionList()))
    with pytest.raises(QueryError):
        condition_from_proto(cpb.Condition(term=cpb.Term(value="x")))


def test_limits_checked_client_side():
    deep = {"a": "x"}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(LimitExceededError):
        where_to_proto(deep)
    with pytest.raises(LimitExceededError):
        where_to_proto({"a": [str(i) for i in range(2000)]})


def test_relate_request_fields():
    with SegsrvClient("127.0.0.1:1", snapshot="petnord", version="v1") as client:
        req, select = client.relate_request({
            "from": "customers", "where": {"region": "north"}, "relate": "pet.*", "select": ["$lift"],
            "limit": 7, "order_by": "p_value", "direction": "all", "min_support": 3, "min_lift": 1.5,
            "max_p_value": 0.05, "prior_strength": 4, "include_condition_fields": True, "plan": "histogram",
        })
        assert select == ["$lift"]
        assert (req.snapshot.name, req.snapshot.version, req.universe) == ("petnord", "v1", "customers")
        assert req.condition.term.field == "region"
        assert list(req.fields) == ["pet.*"]
        assert req.order_by == pb.RELATE_ORDER_P_VALUE and req.direction == pb.RELATE_DIRECTION_ALL
        assert req.plan == pb.RELATE_PLAN_HISTOGRAM
        assert req.limit == 7 and req.min_support == 3 and req.min_lift == 1.5 and req.max_p_value == 0.05
        assert req.prior_strength == 4.0 and req.include_condition_fields is True

        # defaults: the engine's (sent explicitly), filters unset
        req, select = client.relate_request({})
        q = RelateQuery.from_json({})
        assert req.universe == "" and req.condition.WhichOneof("kind") == "all_rows"
        assert req.limit == (q.limit or 0) and req.min_support == q.min_support  # unset: the server's default
        assert req.prior_strength == q.prior_strength and req.include_condition_fields is False
        assert req.order_by == pb.RELATE_ORDER_UNSPECIFIED and req.direction == pb.RELATE_DIRECTION_OVER  # lift_low
        assert not req.HasField("min_lift") and not req.HasField("max_p_value")

        # keyword arguments, and where given as a dataclass or a proto
        req, _ = client.relate_request(where=Term("a", "x"), from_="orders", limit=3)
        assert req.universe == "orders" and req.limit == 3 and req.condition.term.value == "x"
        req, _ = client.relate_request({"where": cpb.Condition(term=cpb.Term(field="a", value="y"))})
        assert req.condition.term.value == "y"

        # validation is the engine's, before any RPC
        for bad in ({"limit": 0}, {"order_by": "lifft"}, {"select": ["$lifft"]}, {"nope": 1},
                    {"include_condition_fields": "yes"}, {"relate": [""]}):
            with pytest.raises(QueryError):
                client.relate_request(bad)


def test_relate_response_rendering():
    inf, nan = float("inf"), float("nan")
    hit = pb.RelateHit(field="region", value="north", support=5, support_ratio=0.05, p=1.0, p_base=0.2,
                       p_not=0.0, lift=5.0, lift_smoothed=2.0, lift_low=3.0, lift_high=5.0, p_value=1e-5,
                       q_value=2e-5, leverage=0.04, conviction=inf, jaccard=0.5, certainty=1.0,
                       kulczynski=0.75, zhang=1.0, mutual_information=0.1, feature_count=20)
    resp = pb.RelateResponse(info=pb.ResponseInfo(snapshot_name="s", snapshot_version="v", server_time_ms=1.23456),
                             universe="customers", row_count=100, condition_count=5, candidate_count=9,
                             matching_count=1, plan=pb.RELATE_PLAN_SCAN, hits=[hit])
    res = RelateResult.from_proto(resp)
    assert (res.snapshot, res.version, res.universe, res.plan) == ("s", "v", "customers", "scan")
    h = res.hits[0]
    assert h.stats["support"] == 5 and isinstance(h.stats["support"], int)
    assert h.stats["n_feature"] == 20 and h.stats["conviction"] == inf
    out = res.to_json(["$conviction", "$support", "region", "pet.species"])
    assert out["hits"] == [{"$field": "region", "$value": "north", "$conviction": "inf", "$support": 5,
                            "region": "north", "pet.species": None}]
    assert out["elapsed_ms"] == 1.235
    resp.hits[0].lift = nan
    resp.plan = pb.RELATE_PLAN_UNSPECIFIED
    out = RelateResult.from_proto(resp).to_json(["$lift"])
    assert out["hits"] == [{"$field": "region", "$value": "north", "$lift": None}] and out["plan"] == "none"


@pytest.mark.parametrize("where", WHERE_FORMS, ids=lambda w: repr(w)[:60])
def test_round_trip_through_the_wire(where):
    wire = cpb.Condition.FromString(where_to_proto(where).SerializeToString())
    assert condition_from_proto(wire) == parse_where(where)
