"""segsrv.ops.discover: declared parameters, the JSON form, the proto mapping, the catalog it saves."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv.engine.catalog import normalize_catalog
from segsrv.errors import LimitExceededError, QueryError
from segsrv.ops.conditions import All, And, RequestPaths, Term
from segsrv.ops.discover import (
    DiscoveredSegment, DiscoverQuery, DiscoverResult, Persona, SegmentFeature, Segmentation, name_token,
    parse_target, parse_weight, render_text, unique_names,
)
from segsrv.v1 import segsrv_pb2 as pb


def test_defaults():
    q = DiscoverQuery.from_json({})
    assert (q.universe, q.within, q.fields, q.max_length, q.min_support, q.min_lift, q.limit, q.target, q.direction,
            q.k, q.max_overlap, q.max_excess_overlap, q.max_q_value, q.describe, q.adjust_for_activity) == (
        None, All(), None, 3, None, None, 20, None, "both", 0, 0.5, None, 0.05, 3, True)
    assert q.effective_max_excess_overlap == 0.3
    assert DiscoverQuery.from_json({"target": "churned=true"}).effective_max_excess_overlap == 0.5
    # the proto's zero values mean the same defaults
    p = DiscoverQuery.from_proto(pb.DiscoverRequest(), RequestPaths())
    assert p == q


QUERIES = st.fixed_dictionaries({}, optional={
    "from": st.sampled_from(["customers", "orders"]),
    "fields": st.lists(st.sampled_from(["region", "orders.*", "segment"]), min_size=1, max_size=3, unique=True),
    "max_length": st.integers(2, 5), "min_support": st.integers(1, 10_000), "min_lift": st.floats(1, 10),
    "limit": st.integers(10, 1000), "k": st.integers(0, 10), "direction": st.sampled_from(["both", "high", "low"]),
    "field_weights": st.dictionaries(st.sampled_from(["region", "orders.**"]), st.floats(0.01, 100), max_size=2),
    "max_overlap": st.floats(0.01, 1), "max_excess_overlap": st.floats(0.01, 1), "max_q_value": st.floats(0.001, 1),
    "describe": st.integers(0, 20), "max_candidates": st.integers(1, 5000), "adjust_for_activity": st.booleans(),
    "target": st.sampled_from(["churned=true", {"region": "north"}]),
    "within": st.sampled_from([{"segment": "dog_owner"}, {"tenure_months": {"$gte": 12}}]),
})


@settings(max_examples=200, deadline=None)
@given(QUERIES)
def test_json_and_proto_round_trips(obj):
    q = DiscoverQuery.from_json(obj)
    assert DiscoverQuery.from_json(q.to_json()) == q
    req = q.to_proto()
    back = DiscoverQuery.from_proto(pb.DiscoverRequest.FromString(req.SerializeToString()),
                                    DiscoverQuery.paths(req))
    for name in ("max_overlap", "max_excess_overlap", "max_q_value", "min_lift"):
        a, b = getattr(back, name), getattr(q, name)
        assert (a is None and b is None) or math.isclose(a, b)
        setattr(back, name, b)
    back.field_weights = dict(q.field_weights)
    assert back == q


@pytest.mark.parametrize("obj,error,field", [
    ({"max_length": 1}, QueryError, "max_length"),  # a segment without a target has two or more features
    ({"max_length": 6}, LimitExceededError, "max_length"),
    ({"limit": 0}, QueryError, "limit"),
    ({"k": 21, "limit": 30}, LimitExceededError, "k"),
    ({"k": 8, "limit": 5}, QueryError, "k"),
    ({"direction": "up"}, QueryError, "direction"),
    ({"min_lift": 0.5}, QueryError, "min_lift"),
    ({"max_overlap": 0}, QueryError, "max_overlap"),
    ({"max_excess_overlap": 1.5}, QueryError, "max_excess_overlap"),
    ({"field_weights": {"region": 0}}, QueryError, "field_weights"),
    ({"field_weights": ["region"]}, QueryError, "field_weights"),
    ({"target": "churned"}, QueryError, "target"),
    ({"target": {}}, QueryError, "target"),
    ({"fields": [""]}, QueryError, "fields"),
    ({"adjust_for_activity": "yes"}, QueryError, "adjust_for_activity"),
    ({"colour": "red"}, QueryError, "colour"),
])
def test_bad_queries_name_their_field(obj, error, field):
    with pytest.raises(error) as err:
        DiscoverQuery.from_json(obj)
    assert field in str(err.value)
    assert any(field in v[0] or field in v[1] for v in err.value.violations), err.value.violations


def test_proto_refusals():
    with pytest.raises(QueryError, match="field_weights\\[0\\].weight"):
        DiscoverQuery.from_proto(pb.DiscoverRequest(field_weights=[pb.FieldWeight(field="a", weight=-1)]),
                                 RequestPaths())
    with pytest.raises(QueryError, match="max_length"):
        DiscoverQuery.from_proto(pb.DiscoverRequest(max_length=-2), RequestPaths())


def test_cli_helpers():
    assert parse_target("churned = true") == Term("churned", "true")
    assert parse_weight("orders.**=2.5") == ("orders.**", 2.5)
    for bad in ("orders", "a=-1", "a=x", "=2"):
        with pytest.raises(QueryError):
            parse_weight(bad)
    assert name_token("<12") == "lt12" and name_token("a b/c") == "a-b-c" and name_token(">=38") == "ge38"
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a_2", "b", "a_3"]
    assert len(unique_names(["x" * 300])[0]) == 100


def _result(target=None) -> DiscoverResult:
    segs = [
        DiscoveredSegment([("region", "north"), ("segment", "dog_owner")], 120, 0.04, 2.5, 2.5, 1e-9, 1e-7, 50.0,
                          "region is north, segment is dog_owner", "region-north_and_segment-dog_owner",
                          [SegmentFeature("pet_size", "large", 80, 1.7)], adjusted_lift=2.1),
        DiscoveredSegment([("orders.lines.product.category", "treats"), ("orders.lines.product.category", "toys")],
                          300, 0.1, 1.6, 1.6, 1e-5, 1e-4, 40.0, "bought treats and toys", "treats_and_toys",
                          adjusted_lift=math.nan),
    ]
    return DiscoverResult("petnord", "v1", "customers", 3000, 46, 900, segs, 12.5, min_support=30, min_lift=1.25,
                          target=target, segmentation=Segmentation([Persona(1, 300, 300), Persona(0, 100, 90)],
                                                                   390, 0.13, 30, 2610))


def test_result_proto_round_trip_and_json():
    res = _result()
    back = DiscoverResult.from_proto(pb.DiscoverResponse.FromString(res.to_proto(12.5).SerializeToString()))
    assert [s.name for s in back.segments] == [s.name for s in res.segments]
    assert back.segments[0].related == res.segments[0].related and back.segmentation == res.segmentation
    assert math.isnan(back.segments[1].adjusted_lift) and back.segments[0].adjusted_lift == 2.1
    out = res.to_json()
    assert out["segments"][0]["where"] == {"$and": [{"region": "north"}, {"segment": "dog_owner"}]}
    # two values of one field: the where form keeps both terms
    assert out["segments"][1]["where"] == {"$and": [{"orders.lines.product.category": "treats"},
                                                    {"orders.lines.product.category": "toys"}]}
    assert out["segmentation"]["personas"][0] == {"segment": 1, "name": "treats_and_toys", "primary": 300,
                                                  "gain": 300}
    text = render_text(res)
    assert "region-north_and_segment-dog_owner" in text and "2 personas cover 390 rows" in text


def test_catalog_is_what_segments_apply_takes():
    res = _result()
    catalog = tomllib.loads(res.to_catalog())
    assert catalog["universe"] == "customers"
    entries = normalize_catalog(catalog["segments"])
    assert set(entries) == {"region-north_and_segment-dog_owner", "treats_and_toys"}
    # priorities follow the primary-segment rule: the higher lift first
    assert entries["region-north_and_segment-dog_owner"]["priority"] > entries["treats_and_toys"]["priority"]
    assert entries["treats_and_toys"]["where"] == {"$and": [{"orders.lines.product.category": "treats"},
                                                            {"orders.lines.product.category": "toys"}]}
    assert "discovered" in entries["treats_and_toys"]["tags"]
    personas = tomllib.loads(res.to_catalog(personas_only=True))["segments"]
    assert set(personas) == {"treats_and_toys", "region-north_and_segment-dog_owner"}
    And  # noqa: B018 (imported for the where forms above)
