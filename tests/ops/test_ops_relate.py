"""segsrv.ops.relate: the Relate contract (JSON form, proto mapping, validation)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv import errors as E
from segsrv.ops.base import Selector
from segsrv.ops.conditions import All, RequestPaths, Term
from segsrv.ops.relate import DIRECTIONS, ORDER_KEYS, PLANS, RelateHit, RelateQuery, RelateResult
from segsrv.v1 import segsrv_pb2 as pb


def test_relate_request_defaults_and_enums():
    q = RelateQuery.from_proto(pb.RelateRequest(), RequestPaths())
    assert (q.where, q.universe, q.relate, q.order_by, q.direction, q.effective_limit, q.min_support, q.min_lift,
            q.max_p_value, q.prior_strength, q.exclude_condition_fields, q.plan) == (
        All(), None, None, None, "over", 100, 1, None, None, 10.0, True, "auto")
    assert q.limit is None  # unset: the server's default (min(100, its maximum))
    q = RelateQuery.from_proto(pb.RelateRequest(
        universe="u", fields=["a.*"], order_by=pb.RELATE_ORDER_MUTUAL_INFORMATION, direction=pb.RELATE_DIRECTION_UNDER,
        limit=7, min_support=0, min_lift=0.5, max_p_value=0.01, prior_strength=0.0, include_condition_fields=True,
        plan=pb.RELATE_PLAN_HISTOGRAM), RequestPaths())
    assert (q.universe, q.relate, q.order_by, q.direction, q.limit, q.min_support, q.min_lift, q.max_p_value,
            q.prior_strength, q.exclude_condition_fields, q.plan) == (
        "u", ["a.*"], "mutual_information", "under", 7, 0, 0.5, 0.01, 0.0, False, "histogram")
    for name in pb.RelateOrder.keys()[1:]:
        q = RelateQuery.from_proto(pb.RelateRequest(order_by=pb.RelateOrder.Value(name)), RequestPaths())
        q.validate()  # every enum value names an engine order
    with pytest.raises(E.QueryError) as err:
        RelateQuery.from_proto(pb.RelateRequest(order_by=99), RequestPaths())
    assert err.value.violations[0].field == "order_by"


def test_relate_response_keeps_nan_and_inf():
    stats = {name: float("nan") for name in ("support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed",
                                            "lift_low", "lift_high", "p_value", "q_value", "leverage", "jaccard",
                                            "certainty", "kulczynski", "zhang", "mutual_information")}
    stats.update(support=3, n_feature=9, conviction=math.inf, zhang=-math.inf)
    result = RelateResult("s", "v1", "u", 10, 5, 2, 1, "none", [RelateHit(0, "f", "x", stats)], 1.0)
    msg = pb.RelateResponse.FromString(result.to_proto(2.5).SerializeToString())
    h = msg.hits[0]
    assert math.isnan(h.lift) and math.isnan(h.q_value) and h.conviction == math.inf and h.zhang == -math.inf
    assert (h.support, h.feature_count, msg.plan, msg.condition_count) == (3, 9, pb.RELATE_PLAN_UNSPECIFIED, 5)
    assert (msg.info.snapshot_name, msg.info.snapshot_version, msg.info.server_time_ms) == ("s", "v1", 2.5)
    back = RelateResult.from_proto(msg)
    assert back.plan == "none" and back.hits[0].feature_id is None and back.hits[0].stats["support"] == 3
    # every hit names its field and value, first, whether `select` lists them or not
    assert back.to_json(["$conviction", "f", "$field"])["hits"] == [
        {"$field": "f", "$value": "x", "$conviction": "inf", "f": "x"}]
    assert list(back.to_json(["$conviction", "$value"])["hits"][0]) == ["$field", "$value", "$conviction"]


@pytest.mark.parametrize("obj,field", [
    ({"limit": 0}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"order_by": "lyft"}, "order_by"),
    ({"direction": "sideways"}, "direction"),
    ({"plan": "guess"}, "plan"),
    ({"min_support": -1}, "min_support"),
    ({"min_lift": float("nan")}, "min_lift"),
    ({"max_p_value": 2}, "max_p_value"),
    ({"prior_strength": -1}, "prior_strength"),
    ({"include_condition_fields": 1}, "include_condition_fields"),
    ({"q_values": "yes"}, "q_values"),
    ({"relate": 5}, "relate"),
    ({"relate": ["ok", ""]}, "relate"),
    ({"from": 3}, "from"),
    ({"select": ["$lyft"]}, "select"),
    ({"select": "lift"}, "select"),
    ({"where": {"a": {"$gt": "x"}}}, "where.a.$gt"),
    ({"colour": "red"}, "colour"),
])
def test_bad_json_names_the_key(obj, field):
    with pytest.raises(E.QueryError) as err:
        RelateQuery.from_json(obj)
    assert err.value.violations[0].field == field


def test_limit_past_the_maximum_is_a_limit():
    with pytest.raises(E.LimitExceededError):
        RelateQuery.from_json({"limit": 10_001})


@settings(max_examples=150, deadline=None)
@given(
    universe=st.one_of(st.none(), st.sampled_from(["customers", "order_lines"])),
    relate=st.one_of(st.none(), st.lists(st.sampled_from(["a", "b.*", "**"]), min_size=1, max_size=3)),
    order_by=st.sampled_from(ORDER_KEYS), direction=st.sampled_from(DIRECTIONS), plan=st.sampled_from(PLANS),
    limit=st.one_of(st.none(), st.integers(1, 10_000)), min_support=st.integers(0, 10**6),
    min_lift=st.one_of(st.none(), st.floats(-10, 10)), max_p_value=st.one_of(st.none(), st.floats(0, 1)),
    prior_strength=st.floats(0, 100), include=st.booleans(), q_values=st.booleans(),
)
def test_json_proto_round_trip(universe, relate, order_by, direction, plan, limit, min_support, min_lift,
                               max_p_value, prior_strength, include, q_values):
    obj = {"where": {"region": "oulu"}, "order_by": order_by, "direction": direction, "plan": plan,
           "min_support": min_support, "prior_strength": prior_strength, "include_condition_fields": include,
           "q_values": q_values}
    for key, val in (("from", universe), ("relate", relate), ("limit", limit), ("min_lift", min_lift),
                     ("max_p_value", max_p_value)):
        if val is not None:
            obj[key] = val
    q = RelateQuery.from_json(obj)
    req = pb.RelateRequest.FromString(q.to_proto(Selector("shop", "v1")).SerializeToString())
    assert (req.snapshot.name, req.snapshot.version) == ("shop", "v1")
    back = RelateQuery.from_proto(req, RelateQuery.paths(req))
    back.select = q.select
    assert back == q
    assert back.where == Term("region", "oulu")


def test_q_values_are_asked_for():
    """Q-values need every candidate's p-value: computed when `q_values` is set, `$q_value` selected or the
    order is by q-value; not by default."""
    assert not RelateQuery.from_json({}).wants_q_values
    assert "$q_value" not in RelateQuery.from_json({}).select
    assert RelateQuery.from_json({"q_values": True}).wants_q_values
    selected = RelateQuery.from_json({"select": ["$field", "$q_value"]})
    assert selected.q_values and selected.to_proto().q_values
    ordered = RelateQuery.from_json({"order_by": "q_value"})
    assert ordered.wants_q_values and not ordered.q_values


_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0), st.just(0.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.text(max_size=12), st.text(max_size=12),
                          st.lists(_FLOATS, min_size=17, max_size=17), st.integers(0, 2**62), st.integers(0, 2**62)),
                max_size=12),
       st.data())
def test_relate_hits_columns_read_and_encode_as_the_hit_objects(rows, data):
    """RelateHits (the engine's columns) reads as the RelateHit objects of the same hits (the statistics dict
    in the engine's order, ints for the counts), answers the same RelateResponse (NaN, infinities and -0.0
    kept, bit for bit), and `take` keeps the chosen hits in the chosen order."""
    import numpy as np

    from segsrv._kernels import TABLE_STATISTICS
    from segsrv.ops.relate import HIT_FLOAT_STATS, STAT_DICT_ORDER, RelateHits

    assert STAT_DICT_ORDER == (*TABLE_STATISTICS, "support", "n_feature", "p_value", "q_value")
    hits = RelateHits(np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], [r[2] for r in rows],
                      np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), len(HIT_FLOAT_STATS)),
                      np.array([r[4] for r in rows], dtype=np.int64), np.array([r[5] for r in rows], dtype=np.int64))
    objects = [RelateHit(fid, f, v, {**{name: x for name, x in zip(HIT_FLOAT_STATS, floats)}, "support": s,
                                     "n_feature": nf})
               for fid, f, v, floats, s, nf in rows]
    assert len(hits) == len(objects)
    for got, want in zip(hits, objects):
        assert (got.feature_id, got.field, got.value) == (want.feature_id, want.field, want.value)
        assert list(got.stats) == list(STAT_DICT_ORDER)
        assert type(got.stats["support"]) is int and type(got.stats["n_feature"]) is int
        assert np.array_equal(np.array([got.stats[k] for k in STAT_DICT_ORDER], dtype=np.float64).view(np.uint64),
                              np.array([want.stats[k] for k in STAT_DICT_ORDER], dtype=np.float64).view(np.uint64))
    result = RelateResult("s", "v", "u", 10, 5, 7, len(rows), "scan", hits, 1.0)
    as_objects = RelateResult("s", "v", "u", 10, 5, 7, len(rows), "scan", objects, 1.0)
    assert result.to_proto(1.0).SerializeToString() == as_objects.to_proto(1.0).SerializeToString()
    keep = np.array(data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=len(rows))) if rows else [],
                    dtype=np.int64)
    taken = hits.take(keep)
    assert [h.field for h in taken] == [objects[i].field for i in keep.tolist()]
    assert RelateResult("s", "v", "u", 10, 5, 7, len(keep), "scan", taken, 1.0).to_proto(1.0).SerializeToString() == \
        RelateResult("s", "v", "u", 10, 5, 7, len(keep), "scan", [objects[i] for i in keep.tolist()],
                     1.0).to_proto(1.0).SerializeToString()
