"""segsrv.ops profile / export / assign / segments / info: JSON -> query -> proto -> query, result ->
proto -> result -> JSON, and validation errors naming the right field."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from segsrv.errors import LimitExceededError, QueryError, Violation
from segsrv.ops import assign as A
from segsrv.ops import conditions as C
from segsrv.ops import export as E
from segsrv.ops import info as I
from segsrv.ops import profile as P
from segsrv.ops import segments as S
from segsrv.ops.base import MAX_CHUNK_SIZE, Selector
from segsrv.v1 import condition_pb2
from segsrv.v1 import segsrv_pb2 as pb


def fields_of(exc):
    return [v.field for v in exc.value.violations]


def same_json(a, b):
    a, b = dict(a), dict(b)
    a.pop("elapsed_ms", None), b.pop("elapsed_ms", None)
    assert a == b


# --- profile ------------------------------------------------------------------------


def test_profile_query_round_trip():
    q = P.ProfileQuery.from_json({"from": "customers", "segment": {"region": "north", "age": {"$gte": 30}},
                                  "fields": ["plan", "orders.*"], "values_per_field": 7})
    req = q.to_proto(Selector("demo", "v1"))
    assert req.snapshot.name == "demo" and req.values_per_field == 7 and list(req.fields) == ["plan", "orders.*"]
    paths = P.ProfileQuery.paths(req)
    assert P.ProfileQuery.from_proto(req, paths) == q
    assert paths.fields["region"] == ["segment.all_of.conditions[0].term.field"]
    assert paths.locate(Violation("fields", "unknown field 'orders.*'", "pattern", "orders.*")) == ["fields[1]"]


def test_profile_query_defaults_and_tree():
    q = P.ProfileQuery.from_json({"segment": C.Term("a", "x"), "fields": "plan"})
    assert q.fields == ["plan"] and q.values_per_field == 5 and q.universe is None
    back = P.ProfileQuery.from_proto(q.to_proto(), P.ProfileQuery.paths(q.to_proto()))
    assert back == q
    empty = pb.ProfileRequest()
    assert P.ProfileQuery.from_proto(empty, P.ProfileQuery.paths(empty)) == P.ProfileQuery()


@pytest.mark.parametrize("obj, field, exc", [
    ({"values_per_field": 0}, "values_per_field", QueryError),
    ({"values_per_field": True}, "values_per_field", QueryError),
    ({"values_per_field": 101}, "values_per_field", LimitExceededError),
    ({"fields": 3}, "fields", QueryError),
    ({"fields": ["a", ""]}, "fields", QueryError),
    ({"fields": ["x"] * 1025}, "fields", LimitExceededError),
    ({"from": ""}, "from", QueryError),
    ({"form": "x"}, "form", QueryError),
    ({"segment": {"$nope": 1}}, "segment.$nope", QueryError),
])
def test_profile_query_errors(obj, field, exc):
    with pytest.raises(exc) as e:
        P.ProfileQuery.from_json(obj)
    assert type(e.value) is exc and fields_of(e) == [field]


def test_profile_query_errors_messages_and_proto():
    with pytest.raises(QueryError, match=r"values_per_field: must be a positive integer, got 0"):
        P.ProfileQuery.from_json({"values_per_field": 0})
    with pytest.raises(LimitExceededError, match=r"values_per_field: 101 exceeds the maximum 100"):
        P.ProfileQuery.from_json({"values_per_field": 101})
    with pytest.raises(QueryError) as e:
        P.ProfileQuery.from_json({"fields": ["a", ""]})
    assert e.value.violations[0].kind == "pattern"
    with pytest.raises(QueryError) as e:
        P.ProfileQuery.from_proto(pb.ProfileRequest(values_per_field=-1), P.ProfileQuery.paths(pb.ProfileRequest()))
    assert fields_of(e) == ["values_per_field"]
    req = pb.ProfileRequest(fields=["a", ""])
    with pytest.raises(QueryError) as e:
        P.ProfileQuery.from_proto(req, P.ProfileQuery.paths(req))
    assert fields_of(e) == ["fields[1]"]


def profile_result(suppressed=False):
    v = lambda val, nsv, nv, n_s, n, p: P.ValueProfile(val, nsv, nv, nsv / n_s, nv / n, (nsv / n_s) / (nv / n), p)
    nan = math.nan
    return P.ProfileResult(
        "demo", "v1", "customers", 1000, 100,
        [P.FieldProfile("plan", [v("gold", 40, 100, 100, 1000, 1e-9)], [v("free", 0, 300, 100, 1000, 1e-5)]),
         P.FieldProfile("region", [], [])],
        [P.NumericProfile("age", P.NumericStats(100, 40.5, 3.25, 20.0, 30.0, 40.0, 50.0, 70.0),
                          P.NumericStats(0, nan, nan, nan, nan, nan, nan, nan))],
        12.3456, "scan", suppressed)


@pytest.mark.parametrize("suppressed", [False, True])
def test_profile_result_round_trip(suppressed):
    r = profile_result(suppressed)
    msg = r.to_proto(5.0)
    assert msg.info.server_time_ms == 5.0 and msg.suppressed == suppressed
    assert [v.value for v in msg.fields[0].values] == ["gold", "free"]
    back = P.ProfileResult.from_proto(msg)
    assert back.fields[0].over[0].population_count == 100 and back.fields[0].under[0].population_count == 300
    same_json(back.to_json(), r.to_json())
    j = r.to_json()
    assert j["numeric"][0]["population"]["mean"] is None and j["numeric"][0]["segment"]["count"] == 100
    assert ("suppressed" in j) == suppressed
    assert set(j) >= {"snapshot", "version", "from", "n_rows", "n_segment", "elapsed_ms", "fields", "numeric"}


# --- export -------------------------------------------------------------------------


def test_export_query_round_trip():
    q = E.ExportQuery.from_json({"from": "customers", "where": {"plan": ["gold", "silver"]}, "top_k": 10,
                                 "target": "churned", "value": True})
    assert q.value == "true"
    req = q.to_proto(Selector("demo"), chunk_size=500)
    assert (req.top_k, req.target_field, req.target_value, req.chunk_size) == (10, "churned", "true", 500)
    back = E.ExportQuery.from_proto(req, E.ExportQuery.paths(req), max_target_values=64)
    assert back.chunk_size == 500
    back.chunk_size = q.chunk_size
    assert back == q
    plain = E.ExportQuery.from_json({"where": {"a": "x"}})
    req = plain.to_proto()
    assert req.chunk_size == 0 and req.target_field == "" and req.top_k == 0
    assert E.ExportQuery.from_proto(req, E.ExportQuery.paths(req)) == plain  # 0 -> the server's 10,000


def test_export_paths():
    req = E.ExportQuery.from_json({"where": {"a": "x"}, "target": "churned", "value": "yes"}).to_proto()
    paths = E.ExportQuery.paths(req)
    E.ExportQuery.from_proto(req, paths)
    assert paths.locate(Violation("churned", "unknown value 'yes'", "value", "yes")) == ["target_value"]
    assert paths.locate(Violation("target", "unknown field")) == ["target_field"]
    assert paths.locate(Violation("a", "unknown value 'x'", "value", "x")) == ["condition.term.value"]
    assert paths.locate(("from", "unknown universe")) == ["universe"]


@pytest.mark.parametrize("obj, field, exc", [
    ({"top_k": -1}, "top_k", QueryError),
    ({"top_k": 5}, "target", QueryError),
    ({"value": "x"}, "target", QueryError),
    ({"target": "churned"}, "value", QueryError),
    ({"target": ""}, "target", QueryError),
    ({"from": 3}, "from", QueryError),
    ({"chunk_size": 3}, "chunk_size", QueryError),  # not a JSON key
])
def test_export_query_errors(obj, field, exc):
    with pytest.raises(exc) as e:
        E.ExportQuery.from_json(obj)
    assert fields_of(e) == [field]


def test_export_errors_messages_and_chunk_sizes():
    with pytest.raises(QueryError, match=r"top_k: must be a non-negative integer \(0 = every member\), got -1"):
        E.ExportQuery.from_json({"top_k": -1})
    with pytest.raises(QueryError) as e:
        E.ExportQuery(chunk_size=0).validate()
    assert fields_of(e) == ["chunk_size"]
    with pytest.raises(QueryError) as e:
        E.ExportQuery().to_proto(chunk_size=-1)
    assert fields_of(e) == ["chunk_size"]
    assert E.chunk_size_from_proto(0) == E.SERVER_DEFAULT_CHUNK_SIZE
    with pytest.raises(LimitExceededError) as e:
        E.chunk_size_from_proto(MAX_CHUNK_SIZE + 1)
    assert fields_of(e) == ["chunk_size"]
    req = pb.ExportMembersRequest(top_k=-2)
    with pytest.raises(QueryError) as e:
        E.ExportQuery.from_proto(req, E.ExportQuery.paths(req))
    assert fields_of(e) == ["top_k"]


def test_export_messages():
    result = SimpleNamespace(snapshot="demo", version="v1", total=3)
    head = E.total_to_proto(result, 1.5)
    assert head.total_count == 3 and not head.ids and head.info.snapshot_name == "demo"
    h = E.ExportHeader.from_proto(head)
    assert (h.snapshot, h.version, h.total) == ("demo", "v1", 3)
    msg = E.chunk_to_proto(result, ["a", "b"], np.array([0.5, 0.25]), 2.0)
    assert E.chunk_from_proto(msg, True) == (["a", "b"], [0.5, 0.25])
    msg = E.chunk_to_proto(result, ["a"], None, 2.0)
    assert list(msg.scores) == [] and E.chunk_from_proto(msg, False) == (["a"], None)


# --- assign -------------------------------------------------------------------------


def test_assign_query_round_trip():
    q = A.AssignQuery.from_json({"ids": ["c1", "c2"], "from": "customers", "include_propensities": True,
                                 "prior_strength": 2.0, "max_p_value": 0.01})
    req = q.to_proto()
    assert list(req.ids) == ["c1", "c2"] and req.prior_strength == 2.0 and req.HasField("max_p_value")
    assert A.AssignQuery.from_proto(req, A.AssignQuery.paths(req)) == q
    f = A.AssignQuery.from_json({"features": {"region": "north", "age": 42, "vip": True}})
    assert f.features == [("region", "north"), ("age", "42"), ("vip", "true")]
    req = f.to_proto()
    assert not req.HasField("prior_strength") and not req.HasField("max_p_value")  # as the client sends
    paths = A.AssignQuery.paths(req)
    assert A.AssignQuery.from_proto(req, paths) == f
    assert paths.locate(Violation("age", "unknown value '42'", "value", "42")) == ["features[1].value"]
    assert paths.locate(Violation("vip", "unknown field")) == ["features[2].field"]
    pairs = A.AssignQuery.from_json({"features": [("region", "north")], "from": ""})
    assert pairs.features == [("region", "north")] and pairs.universe is None


@pytest.mark.parametrize("obj, field, exc", [
    ({}, "ids", QueryError),
    ({"ids": ["a"], "features": {"x": "y"}}, "features", QueryError),
    ({"ids": "abc"}, "ids", QueryError),
    ({"ids": ["a"], "prior_strength": 0}, "prior_strength", QueryError),
    ({"ids": ["a"], "max_p_value": 0}, "max_p_value", QueryError),
    ({"ids": ["a"], "max_p_value": 1.5}, "max_p_value", QueryError),
    ({"ids": ["a"], "include_propensities": "yes"}, "include_propensities", QueryError),
    ({"features": [("x",)]}, "features[0]", QueryError),
    ({"features": {"x": [1]}}, "features[0].value", QueryError),
    ({"ids": ["a"] * (A.MAX_BATCH + 1)}, "ids", LimitExceededError),
    ({"ids": ["a"], "universes": "x"}, "universes", QueryError),
])
def test_assign_query_errors(obj, field, exc):
    with pytest.raises(exc) as e:
        A.AssignQuery.from_json(obj)
    assert fields_of(e) == [field]


def test_assign_proto_errors():
    with pytest.raises(QueryError, match="must be a finite number > 0, got 0"):
        A.AssignQuery(ids=["a"], prior_strength=0).validate()
    for req, field in ((pb.AssignRequest(), "ids"),
                       (pb.AssignRequest(ids=["a"], features=[condition_pb2.Term(field="x", value="y")]), "features"),
                       (pb.AssignRequest(features=[condition_pb2.Term(field="", value="y")]), "features[0].field")):
        with pytest.raises(QueryError) as e:
            A.AssignQuery.from_proto(req, A.AssignQuery.paths(req))
        assert fields_of(e) == [field]


def assign_result(propensities):
    gold = A.Membership("gold", True, 100, 0.1, 5)
    rest = [A.Membership("big", False, 600, 0.6, 0, 0.25)] if propensities else []
    return A.AssignResult("demo", "v1", "customers", 2,
                          [A.Assignment("c1", True, [gold, *rest], "gold"),
                           A.Assignment("zz", False, [], None),
                           A.Assignment(None, True, rest, None)], 3.5)


@pytest.mark.parametrize("propensities", [False, True])
def test_assign_result_round_trip(propensities):
    r = assign_result(propensities)
    msg = r.to_proto(1.0)
    assert msg.assignments[2].id == "" and msg.assignments[1].primary_segment == ""
    back = A.AssignResult.from_proto(msg)
    assert back.to_json() == r.to_json()
    j = r.to_json()
    assert j["assignments"][0]["segments"][0]["propensity"] is None
    assert j["assignments"][2]["id"] == "" and j["assignments"][1]["primary_segment"] is None
    if propensities:
        assert j["assignments"][0]["segments"][1]["propensity"] == 0.25
        assert back.n_segments == 2
    assert set(j) == {"snapshot", "version", "universe", "assignments"}


# --- segments -----------------------------------------------------------------------


def test_segments_query_round_trip():
    for obj in ({}, {"from": "customers"}, {"from": ""}):
        q = S.SegmentsQuery.from_json(obj)
        req = q.to_proto(Selector("demo", "v2"))
        assert S.SegmentsQuery.from_proto(req, S.SegmentsQuery.paths(req)) == q
    assert S.SegmentsQuery.from_json({"from": ""}).universe is None
    with pytest.raises(QueryError) as e:
        S.SegmentsQuery.from_json({"from": 3})
    assert fields_of(e) == ["from"]
    with pytest.raises(QueryError) as e:
        S.SegmentsQuery.from_json({"universe": "x"})
    assert fields_of(e) == ["universe"]


def test_segments_result_round_trip():
    snap = SimpleNamespace(name="demo", version="v1", segments={
        "vip": {"where": {"plan": "gold", "age": {"$gte": 40}}, "description": "best", "universe": "customers",
                "priority": 3, "tags": ["a", "b"]},
        "all": {"where": {}},
        "north": {"where": {"region": ["n", "ne"]}, "universe": "stores"},
    })
    sizes = {"vip": 10, "all": 1000, "north": 5}
    r = S.SegmentsResult.from_snapshot(snap, "customers", lambda name, u: (sizes[name], 1000), 2.0)
    assert [s.name for s in r.segments] == ["all", "vip"]
    j = r.to_json()
    assert j[1] == {"name": "vip", "description": "best", "universe": "customers",
                    "where": {"$and": [{"plan": "gold"}, {"age": {"$gte": 40.0}}]}, "priority": 3,
                    "tags": ["a", "b"], "size": 10, "share": 0.01}
    assert j[0]["universe"] is None and j[0]["where"] == {}
    back = S.SegmentsResult.from_proto(r.to_proto(4.0))
    assert back.to_json() == j and (back.snapshot, back.version, back.elapsed_ms) == ("demo", "v1", 4.0)
    every = S.SegmentsResult.from_snapshot(snap, None, lambda name, u: (sizes[name], 1000))
    assert [s.name for s in every.segments] == ["all", "north", "vip"]
    assert every.segments[1].where == C.AnyOf("region", ("n", "ne"))


# --- snapshot info ------------------------------------------------------------------


def fake_snapshot():
    f1 = SimpleNamespace(name="plan", kind="categorical", semantics="own", values=["free", "gold"],
                         counts=np.array([990, 3]), edges=None, numeric=None)
    f2 = SimpleNamespace(name="age", kind="numeric", semantics="forward", values=["<30", ">=30"],
                         counts=np.array([400, 600]), edges=[30.0], numeric=np.zeros(3))
    u = SimpleNamespace(name="customers", table="customers", key="id", n_rows=1000, n_features=4,
                        fields={"plan": f1, "age": f2})
    return SimpleNamespace(name="demo", version="v1", description="a demo"), [u]


def test_info_query_round_trip():
    for obj in ({}, {"from": "customers", "include_values": True}):
        q = I.InfoQuery.from_json(obj)
        req = q.to_proto(Selector("demo"))
        assert I.InfoQuery.from_proto(req, I.InfoQuery.paths(req)) == q
    for obj, field in (({"include_values": 1}, "include_values"), ({"from": 5}, "from"),
                       ({"values": True}, "values")):
        with pytest.raises(QueryError) as e:
            I.InfoQuery.from_json(obj)
        assert fields_of(e) == [field]


@pytest.mark.parametrize("include_values", [False, True])
def test_info_result_round_trip(include_values):
    snap, universes = fake_snapshot()
    r = I.InfoResult.from_snapshot(snap, universes, include_values, ["demo", "other"],
                                   lambda c: 0 if 0 < c < 5 else c, elapsed_ms=1.23456)
    j = r.to_json()
    fields = j["universes"]["customers"]["fields"]
    assert fields["age"] == {"kind": "numeric", "semantics": "forward", "n_values": 2, "has_raw_values": True,
                             **({"values": {"<30": 400, ">=30": 600}} if include_values else {}), "edges": [30.0]}
    assert ("values" in fields["plan"]) == include_values and "edges" not in fields["plan"]
    if include_values:
        assert fields["plan"]["values"] == {"free": 990, "gold": 0}  # the privacy floor
    assert j["served_snapshots"] == ["demo", "other"] and j["elapsed_ms"] == 1.235
    msg = r.to_proto(7.0)
    assert msg.info.snapshot_name == "demo" and msg.universes[0].fields[1].kind == pb.FIELD_KIND_NUMERIC
    back = I.InfoResult.from_proto(msg)
    same_json(back.to_json(), j)
    assert back.elapsed_ms == 7.0
    same_json(I.InfoResult.from_proto(msg, include_values).to_json(), j)
