"""Unit tests of segsrv.server.convert and the errors table (no server, no snapshot)."""

from __future__ import annotations

import math

import grpc
import pytest

from segsrv import errors as E
from segsrv.engine.conditions import All, And, AnyOf, Not, Or, Range, SegmentRef, Term, parse_where
from segsrv.engine.relate import RelateHit, RelateResult
from segsrv.server import convert
from segsrv.server.convert import RequestPaths, condition_from_proto, condition_to_proto
from segsrv.server.errors import DeadlineExpired, RequestCancelled, build_status, reason_for, status_code_for
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb

TREES = [
    All(),
    Term("region", "oulu"),
    AnyOf("region", ("oulu", "turku")),
    Range("total_eur", gte=1.5, lt=10.0),
    Range("total_eur", gt=0.0),
    And((Term("a", "1"), Or((Term("b", "x"), Not(Term("c", "y")))))),
    SegmentRef("vip"),
    Not(And((SegmentRef("vip"), AnyOf("d", ("p", "q"))))),
]


@pytest.mark.parametrize("tree", TREES, ids=repr)
def test_condition_round_trip(tree):
    msg = condition_to_proto(tree)
    assert condition_from_proto(c.Condition.FromString(msg.SerializeToString())) == tree


def test_unset_condition_means_every_row():
    assert condition_from_proto(None) == All()
    assert condition_from_proto(c.Condition()) == All()
    assert condition_from_proto(c.Condition(all_rows=c.AllRows())) == All()


def test_paths_are_recorded():
    msg = condition_to_proto(parse_where({"$and": [{"region": "oulu"}, {"$or": [{"x": ["a", "b"]},
                                                                                {"n": {"$gte": 1}}]}]}))
    paths = RequestPaths("segment")
    condition_from_proto(msg, paths)
    assert paths.fields["region"] == ["segment.all_of.conditions[0].term.field"]
    assert paths.values[("x", "b")] == ["segment.all_of.conditions[1].any_of.conditions[0].value_set.values[1]"]
    assert paths.ranges["n"] == ["segment.all_of.conditions[1].any_of.conditions[1].numeric_range"]
    assert paths.locate("region", "unknown field") == ["segment.all_of.conditions[0].term.field"]
    assert paths.locate("x", "unknown value 'b'") == [
        "segment.all_of.conditions[1].any_of.conditions[0].value_set.values[1]"]
    assert paths.locate("from", "...") == ["universe"]
    assert paths.locate("where", "...") == ["segment"]
    assert paths.locate("limit", "...") == ["limit"]


@pytest.mark.parametrize("msg,path", [
    (c.Condition(all_of=c.ConditionList()), "condition.all_of.conditions"),
    (c.Condition(any_of=c.ConditionList(conditions=[c.Condition()])), "condition.any_of.conditions[0]"),
    (c.Condition(value_set=c.ValueSet(field="f")), "condition.value_set.values"),
    (c.Condition(numeric_range=c.NumericRange(field="f", lte=1, lt=2)), "condition.numeric_range"),
    (c.Condition(numeric_range=c.NumericRange(field="", lt=2)), "condition.numeric_range.field"),
])
def test_malformed_conditions(msg, path):
    with pytest.raises(E.QueryError) as err:
        condition_from_proto(msg)
    assert [v[0] for v in err.value.violations] == [path]


def test_relate_request_defaults_and_enums():
    q = convert.relate_query_from_proto(pb.RelateRequest(), RequestPaths())
    assert (q.where, q.universe, q.relate, q.order_by, q.direction, q.limit, q.min_support, q.min_lift,
            q.max_p_value, q.prior_strength, q.exclude_condition_fields, q.plan) == (
        All(), None, None, "lift_smoothed", "over", 100, 1, None, None, 10.0, True, "auto")
    q = convert.relate_query_from_proto(pb.RelateRequest(
        universe="u", fields=["a.*"], order_by=pb.RELATE_ORDER_MUTUAL_INFORMATION, direction=pb.RELATE_DIRECTION_UNDER,
        limit=7, min_support=0, min_lift=0.5, max_p_value=0.01, prior_strength=0.0, include_condition_fields=True,
        plan=pb.RELATE_PLAN_HISTOGRAM), RequestPaths())
    assert (q.universe, q.relate, q.order_by, q.direction, q.limit, q.min_support, q.min_lift, q.max_p_value,
            q.prior_strength, q.exclude_condition_fields, q.plan) == (
        "u", ["a.*"], "mutual_information", "under", 7, 0, 0.5, 0.01, 0.0, False, "histogram")
    for name in pb.RelateOrder.keys()[1:]:
        q = convert.relate_query_from_proto(pb.RelateRequest(order_by=pb.RelateOrder.Value(name)), RequestPaths())
        q.validate()  # every enum value names an engine order


def test_relate_response_keeps_nan_and_inf():
    stats = {name: float("nan") for name in ("support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed",
                                            "lift_low", "lift_high", "p_value", "q_value", "leverage", "jaccard",
                                            "certainty", "kulczynski", "zhang", "mutual_information")}
    stats.update(support=3, n_feature=9, conviction=math.inf, zhang=-math.inf)
    result = RelateResult("s", "v1", "u", 10, 5, 2, 1, "none", [RelateHit(0, "f", "x", stats)], 1.0)
    msg = convert.relate_response_to_proto(result, pb.ResponseInfo(snapshot_name="s"))
    msg = pb.RelateResponse.FromString(msg.SerializeToString())
    h = msg.hits[0]
    assert math.isnan(h.lift) and math.isnan(h.q_value) and h.conviction == math.inf and h.zhang == -math.inf
    assert (h.support, h.feature_count, msg.plan, msg.condition_count) == (3, 9, pb.RELATE_PLAN_UNSPECIFIED, 5)


@pytest.mark.parametrize("exc,code", [
    (E.QueryError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (E.UnknownFieldError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (E.UnknownValueError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (E.UnknownUniverseError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (E.LimitExceededError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (E.UnknownSegmentError("x"), grpc.StatusCode.NOT_FOUND),
    (E.SnapshotNotFoundError("x"), grpc.StatusCode.NOT_FOUND),
    (E.VersionNotServedError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (E.NoSnapshotServedError("x"), grpc.StatusCode.UNAVAILABLE),
    (E.NotBuiltYetError("x"), grpc.StatusCode.UNIMPLEMENTED),
    (DeadlineExpired("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (RequestCancelled("x"), grpc.StatusCode.CANCELLED),
    (E.CorruptSnapshotError("x"), grpc.StatusCode.INTERNAL),
    (KeyError("x"), grpc.StatusCode.INTERNAL),
])
def test_status_table(exc, code):
    assert status_code_for(exc) == code
    status, request_id = build_status(exc)
    assert status.code == code.value[0]
    assert (request_id is not None) == (code == grpc.StatusCode.INTERNAL)


def test_reasons():
    assert reason_for(E.UnknownFieldError("x")) == "UNKNOWN_FIELD"
    assert reason_for(E.LimitExceededError("x")) == "LIMIT_EXCEEDED"
    assert reason_for(E.QueryError("x")) == "INVALID_REQUEST"
