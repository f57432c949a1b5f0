"""End to end: a real server over PetNord answers exactly what the in-process engine answers."""

from __future__ import annotations

import math
import os
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from segsrv.ops.conditions import parse_where
from segsrv.engine.count import count
from segsrv.engine.relate import relate
from segsrv.ops.relate import STAT_NAMES, RelateQuery
from segsrv.server.registry import SnapshotRegistry
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb

SERVICE = "segsrv.v1.SegmentationService"


def term(field, value):
    return c.Condition(term=c.Term(field=field, value=value))


def all_of(*conds):
    return c.Condition(all_of=c.ConditionList(conditions=list(conds)))


def any_of(*conds):
    return c.Condition(any_of=c.ConditionList(conditions=list(conds)))


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# (proto request, the same query for the engine)
RELATE_CASES = {
    "defaults": (
        pb.RelateRequest(universe="customers", condition=term("churned", "true")),
        RelateQuery(universe="customers", where=parse_where({"churned": "true"})),
    ),
    "and-valueset-globs-pvalue-all": (
        pb.RelateRequest(
            universe="customers",
            condition=all_of(term("churned", "true"),
                             c.Condition(value_set=c.ValueSet(field="region", values=["oulu", "turku"]))),
            fields=["orders.lines.product.*", "segment"], order_by=pb.RELATE_ORDER_P_VALUE,
            direction=pb.RELATE_DIRECTION_ALL, limit=50, min_support=5,
        ),
        RelateQuery(universe="customers", where=parse_where({"churned": "true", "region": ["oulu", "turku"]}),
                    relate=["orders.lines.product.*", "segment"], order_by="p_value", direction="all",
                    limit=50, min_support=5),
    ),
    "range-under-histogram": (
        pb.RelateRequest(
            universe="orders", condition=c.Condition(numeric_range=c.NumericRange(field="total_eur", gte=50.0)),
            order_by=pb.RELATE_ORDER_LIFT, direction=pb.RELATE_DIRECTION_UNDER, plan=pb.RELATE_PLAN_HISTOGRAM,
            prior_strength=3.0, max_p_value=0.5, limit=200,
        ),
        RelateQuery(universe="orders", where=parse_where({"total_eur": {"$gte": 50}}), order_by="lift",
                    direction="under", plan="histogram", prior_strength=3.0, max_p_value=0.5, limit=200),
    ),
    "not-or-scan-include-condition-fields": (
        pb.RelateRequest(
            universe="customers",
            condition=any_of(c.Condition(negation=term("lifestyle", "budget")), term("pet_size", "large")),
            include_condition_fields=True, plan=pb.RELATE_PLAN_SCAN, min_lift=1.05,
            order_by=pb.RELATE_ORDER_CONVICTION, limit=10_000,
        ),
        RelateQuery(universe="customers",
                    where=parse_where({"$or": [{"$not": {"lifestyle": "budget"}}, {"pet_size": "large"}]}),
                    exclude_condition_fields=False, plan="scan", min_lift=1.05, order_by="conviction",
                    limit=10_000),
    ),
    "every-row": (
        pb.RelateRequest(universe="customers", fields=["region", "segment"], direction=pb.RELATE_DIRECTION_ALL,
                         order_by=pb.RELATE_ORDER_SUPPORT),
        RelateQuery(universe="customers", relate=["region", "segment"], direction="all", order_by="support"),
    ),
    "empty-condition": (
        pb.RelateRequest(universe="orders", condition=c.Condition(numeric_range=c.NumericRange(field="total_eur", lt=-1))),
        RelateQuery(universe="orders", where=parse_where({"total_eur": {"$lt": -1}})),
    ),
}

STAT_FIELDS = {name: name for name in STAT_NAMES if name != "n_feature"} | {"n_feature": "feature_count"}


@pytest.mark.parametrize("case", list(RELATE_CASES))
def test_relate_equals_engine(case, stub, petnord_snapshot):
    request, query = RELATE_CASES[case]
    got = stub.Relate(request, timeout=30)
    want = relate(petnord_snapshot, query)
    assert got.info.snapshot_name == petnord_snapshot.name == "petnord"
    assert got.info.snapshot_version == petnord_snapshot.version
    assert got.info.server_time_ms > 0
    assert (got.universe, got.row_count, got.condition_count, got.candidate_count, got.matching_count) == (
        want.universe, want.n_rows, want.n_condition, want.n_candidates, want.n_matching)
    assert pb.RelatePlan.Name(got.plan) == ("RELATE_PLAN_UNSPECIFIED" if want.plan == "none"
                                            else "RELATE_PLAN_" + want.plan.upper())
    assert len(got.hits) == len(want.hits)
    for g, w in zip(got.hits, want.hits):
        assert (g.field, g.value) == (w.field, w.value)
        for stat, attr in STAT_FIELDS.items():
            assert same_number(float(getattr(g, attr)), float(w.stats[stat])), (stat, g.field, g.value)
    if case == "empty-condition":
        assert got.condition_count == 0 and not got.hits
    else:
        assert got.hits


def test_relate_keeps_infinity(stub, petnord_snapshot):
    # the condition's own field: P(region=oulu | region=oulu) = 1, so conviction is +inf
    got = stub.Relate(pb.RelateRequest(universe="customers", condition=term("region", "oulu"), fields=["region"],
                                       include_condition_fields=True, direction=pb.RELATE_DIRECTION_ALL,
                                       min_support=0), timeout=30)
    oulu = next(h for h in got.hits if h.value == "oulu")
    assert oulu.p == 1.0 and math.isinf(oulu.conviction) and oulu.conviction > 0
    want = relate(petnord_snapshot, RelateQuery(universe="customers", where=parse_where({"region": "oulu"}),
                                                relate=["region"], exclude_condition_fields=False, direction="all",
                                                min_support=0))
    assert len(got.hits) == len(want.hits) == 6
    for g, w in zip(got.hits, want.hits):
        for stat, attr in STAT_FIELDS.items():
            assert same_number(float(getattr(g, attr)), float(w.stats[stat])), (stat, g.value)


@pytest.mark.parametrize("universe,where", [
    ("customers", {"churned": "true"}),
    ("customers", {"$or": [{"region": "oulu"}, {"$not": {"segment": "dog_owner"}}]}),
    ("orders", {"total_eur": {"$gt": 20, "$lte": 100}, "customer.region": ["espoo", "turku"]}),
    ("order_lines", {}),
])
def test_count_equals_engine(universe, where, stub, petnord_snapshot):
    from segsrv.ops.conditions import to_proto as condition_to_proto

    tree = parse_where(where)
    request = pb.CountRequest(universe=universe)
    if where:
        request.condition.CopyFrom(condition_to_proto(tree))
    got = stub.Count(request, timeout=30)
    want = count(petnord_snapshot, universe, tree)
    assert (got.universe, got.count, got.row_count) == (want.universe, want.count, want.n_rows)
    assert got.info.snapshot_name == "petnord" and got.info.snapshot_version == petnord_snapshot.version
    assert got.info.server_time_ms > 0


def test_count_unset_condition_is_every_row(stub, petnord_snapshot):
    got = stub.Count(pb.CountRequest(universe="impressions"), timeout=30)
    assert got.count == got.row_count == petnord_snapshot.universes["impressions"].n_rows
    got = stub.Count(pb.CountRequest(universe="impressions", condition=c.Condition(all_rows=c.AllRows())), timeout=30)
    assert got.count == got.row_count


@pytest.mark.parametrize("include_values", [False, True])
def test_snapshot_info_equals_snapshot(include_values, stub, petnord_snapshot):
    got = stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(include_values=include_values), timeout=30)
    snap = petnord_snapshot
    assert got.info.snapshot_name == snap.name and got.info.snapshot_version == snap.version
    assert got.info.server_time_ms > 0
    assert got.description == snap.description
    assert list(got.served_snapshots) == ["petnord"]
    assert [u.name for u in got.universes] == list(snap.universes)
    kinds = {"categorical": pb.FIELD_KIND_CATEGORICAL, "multi": pb.FIELD_KIND_MULTI, "numeric": pb.FIELD_KIND_NUMERIC}
    sems = {"own": pb.FIELD_SEMANTICS_OWN, "forward": pb.FIELD_SEMANTICS_FORWARD, "exists": pb.FIELD_SEMANTICS_EXISTS}
    for gu in got.universes:
        u = snap.universes[gu.name]
        assert (gu.table, gu.key, gu.row_count, gu.feature_count) == (u.table, u.key, u.n_rows, u.n_features)
        assert [f.name for f in gu.fields] == list(u.fields)
        for gf in gu.fields:
            f = u.fields[gf.name]
            assert gf.kind == kinds[f.kind] and gf.semantics == sems[f.semantics]
            assert gf.value_count == len(f.values)
            assert list(gf.band_edges) == list(f.edges or [])
            assert gf.has_raw_values == (f.numeric is not None)
            if include_values:
                assert [(v.value, v.count) for v in gf.values] == list(zip(f.values, (int(x) for x in f.counts)))
            else:
                assert not gf.values
    numeric = [gf for gu in got.universes for gf in gu.fields if gf.kind == pb.FIELD_KIND_NUMERIC]
    assert any(gf.has_raw_values for gf in numeric) and all(gf.band_edges for gf in numeric)


def test_snapshot_info_one_universe(stub):
    got = stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(universe="orders"), timeout=30)
    assert [u.name for u in got.universes] == ["orders"]


def test_list_segments_empty_catalog(stub, petnord_snapshot):
    got = stub.ListSegments(pb.ListSegmentsRequest(), timeout=30)
    assert got.info.snapshot_name == "petnord" and got.info.snapshot_version == petnord_snapshot.version
    assert list(got.segments) == []


def test_health_serving(served):
    h = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", SERVICE):
        assert h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_health_not_serving_until_a_snapshot_is_loaded(tmp_path, petnord_root, start_server):
    registry = SnapshotRegistry(tmp_path)
    r = start_server(tmp_path, registry=registry)
    h = health_pb2_grpc.HealthStub(r.channel)

    def status(service=""):
        return h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    assert status() == status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Count(pb.CountRequest(universe="customers"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    os.symlink(petnord_root / "petnord", tmp_path / "petnord")
    assert registry.refresh() == ["petnord"]
    assert status() == status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert r.stub.Count(pb.CountRequest(universe="customers"), timeout=10).row_count == 3000


def test_two_snapshots_need_a_name(tmp_path, petnord_root, start_server, rpc_details):
    shutil.copytree(petnord_root / "petnord", tmp_path / "petnord")
    other = tmp_path / "petnord2"
    shutil.copytree(petnord_root / "petnord", other)
    # a second name: the manifest's name is what requests use
    import json

    version = (other / "CURRENT").read_text().strip()
    mpath = other / version / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["name"] = "petnord2"
    mpath.write_text(json.dumps(manifest))
    r = start_server(tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Count(pb.CountRequest(universe="customers"), timeout=10)
    code, _, violations, _ = rpc_details(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "snapshot.name"
    got = r.stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name="petnord2"), universe="customers"))
    assert got.info.snapshot_name == "petnord2" and got.row_count == 3000
    info = r.stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(snapshot=pb.SnapshotSelector(name="petnord")))
    assert list(info.served_snapshots) == ["petnord", "petnord2"]


def test_pinned_served_version_is_accepted(stub, petnord_snapshot):
    sel = pb.SnapshotSelector(name="petnord", version=petnord_snapshot.version)
    assert stub.Count(pb.CountRequest(snapshot=sel, universe="customers")).info.snapshot_version == \
        petnord_snapshot.version


def test_reflection_lists_the_services(served):
    refl = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    answers = list(refl.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto  # grpcurl can describe it
