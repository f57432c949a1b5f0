"""The privacy floor (k = 10): no answer states a count of 1..9 rows."""

from __future__ import annotations

import itertools
import os
import shutil

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from segsrv.engine.catalog import apply_segments
from segsrv.ops.conditions import parse_where
from segsrv.engine.count import count
from segsrv.engine.relate import relate
from segsrv.ops.relate import RelateQuery
from segsrv.server.app import create_server
from segsrv.snapshot.reader import open_snapshot
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc as pb_grpc

K = 10
U = "customers"


def small(n: int) -> bool:
    return 0 < n < K


@pytest.fixture(scope="module")
def snap_and_terms(petnord_root, tmp_path_factory):
    """A PetNord copy with a catalog holding one small and one large segment, and conditions whose
    counts are small (1..9), zero and large, found by exhaustive search over pairs of terms."""
    root = tmp_path_factory.mktemp("privacy") / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    fields = ["region", "pet_size", "lifestyle", "tenure_months", "health_focus"]
    pairs = [(f, v) for f in fields for v in u.fields[f].values]
    small_where = None
    for (f1, v1), (f2, v2) in itertools.combinations(pairs, 2):
        if f1 == f2:
            continue
        where = {f1: v1, f2: v2}
        for f3, v3 in pairs:
            if f3 in where:
                continue
            w3 = dict(where, **{f3: v3})
            if small(count(snap, U, parse_where(w3)).count):
                small_where = w3
                break
        if small_where:
            break
    assert small_where is not None
    apply_segments(root / "petnord", {
        "tiny": {"where": small_where, "universe": U},
        "churners": {"where": {"churned": True}, "universe": U},
    })
    return root, small_where


@pytest.fixture(scope="module")
def stub(snap_and_terms):
    root, _ = snap_and_terms
    server, port = create_server(root, host="127.0.0.1", port=0, privacy_k=K)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.SegmentationServiceStub(channel)
    channel.close()
    server.stop(0)


def cond(where: dict) -> cpb.Condition:
    return cpb.Condition(all_of=cpb.ConditionList(conditions=[
        cpb.Condition(term=cpb.Term(field=f, value=str(v))) for f, v in where.items()]))


def assert_floor_refusal(err):
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    status = rpc_status.from_call(err)
    reasons = []
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reasons.append(info.reason)
    assert reasons == ["PRIVACY_FLOOR"]
    assert f"fewer than {K} rows" in err.details()


def test_count(stub, snap_and_terms):
    _, small_where = snap_and_terms
    r = stub.Count(pb.CountRequest(universe=U, condition=cond(small_where)), timeout=30)
    assert r.count == 0 and r.suppressed
    r = stub.Count(pb.CountRequest(universe=U, condition=cond({"region": "helsinki"})), timeout=30)
    assert r.count == 927 and not r.suppressed
    r = stub.Count(pb.CountRequest(universe=U, condition=cpb.Condition(segment=cpb.SegmentReference(name="tiny"))),
                   timeout=30)
    assert r.count == 0 and r.suppressed
    # zero is not hidden: "nobody" is not a group of fewer than k people
    both = {"region": "helsinki", "pet_size": "large"}
    r = stub.Count(pb.CountRequest(universe=U, condition=cpb.Condition(all_of=cpb.ConditionList(conditions=[
        cond(both), cpb.Condition(negation=cond(both))]))), timeout=30)
    assert r.count == 0 and not r.suppressed


def test_relate(stub, snap_and_terms):
    root, small_where = snap_and_terms
    r = stub.Relate(pb.RelateRequest(universe=U, condition=cond(small_where), limit=1000,
                                     direction=pb.RELATE_DIRECTION_ALL), timeout=30)
    assert r.suppressed and r.condition_count == 0 and not r.hits
    req = pb.RelateRequest(universe=U, condition=cond({"churned": "true"}), limit=1000, min_support=1,
                           direction=pb.RELATE_DIRECTION_ALL, fields=["**"])
    r = stub.Relate(req, timeout=60)
    assert not r.suppressed and r.hits
    for h in r.hits:
        assert not small(h.support) and not small(h.feature_count) and not small(h.feature_count - h.support)
    # exactly the engine's hits minus the floored ones
    snap = open_snapshot(root / "petnord")
    full = relate(snap, RelateQuery(where=parse_where({"churned": "true"}), universe=U, relate=["**"], limit=1000,
                                    min_support=1, direction="all"))
    expected = [(h.field, h.value) for h in full.hits
                if not (small(int(h.stats["support"])) or small(int(h.stats["n_feature"]))
                        or small(int(h.stats["n_feature"]) - int(h.stats["support"])))]
    assert [(h.field, h.value) for h in r.hits] == expected[: len(r.hits)]
    assert r.suppressed_hit_count == len([h for h in full.hits if int(h.stats["support"]) >= K]) - len(expected)


def test_predict_score_evaluate_export_refuse_small_segments(stub, snap_and_terms):
    _, small_where = snap_and_terms
    seg = cond(small_where)
    calls = [
        lambda: stub.Predict(pb.PredictRequest(universe=U, segment=seg, target_field="churned"), timeout=30),
        lambda: list(stub.ScoreSegment(pb.ScoreSegmentRequest(universe=U, segment=seg, target_field="churned",
                                                              target_value="true",
                                                              method=pb.PREDICT_METHOD_FACTORIZED), timeout=30)),
        lambda: stub.Evaluate(pb.EvaluateRequest(universe=U, segment=seg, target_field="churned",
                                                 method=pb.PREDICT_METHOD_FACTORIZED), timeout=30),
        lambda: list(stub.ExportMembers(pb.ExportMembersRequest(universe=U, condition=seg), timeout=30)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert_floor_refusal(err.value)
    # large segments still answer
    big = cond({"region": "helsinki"})
    stub.Predict(pb.PredictRequest(universe=U, segment=big, target_field="churned"), timeout=30)
    msgs = list(stub.ExportMembers(pb.ExportMembersRequest(universe=U, condition=big), timeout=30))
    assert msgs[0].total_count == 927


def test_predict_explanations_hide_small_supports(stub, snap_and_terms):
    root, _ = snap_and_terms
    u = open_snapshot(root / "petnord").universe(U)
    counts = np.asarray(u.feature_count)
    rare = [u.feature_name(int(f)) for f in np.flatnonzero((counts > 0) & (counts < K))
            if u.feature_name(int(f))[0] != "segment"][:3]
    assert rare, "PetNord has features held by fewer than 10 customers"
    hidden = 0
    for rid in ("CUST-00001", "CUST-00017", "CUST-02999"):
        r = stub.Predict(pb.PredictRequest(universe=U, id=rid, target_field="segment",
                                           evidence=[cpb.Term(field=f, value=v) for f, v in rare],
                                           method=pb.PREDICT_METHOD_FACTORIZED), timeout=30)
        for tp in r.probabilities:
            prod = tp.explanation.base_probability / tp.explanation.normalizer
            for f in tp.explanation.factors:
                assert not small(f.support)
                hidden += f.support == 0 and "privacy floor" in f.note
                prod *= f.factor
            assert prod == pytest.approx(tp.probability, rel=1e-9)  # still explained
    assert hidden > 0


def test_segment_sizes_and_value_counts(stub):
    segs = {s.name: s for s in stub.ListSegments(pb.ListSegmentsRequest(), timeout=30).segments}
    assert segs["tiny"].size == 0 and segs["tiny"].share == 0.0
    assert segs["churners"].size == 1092
    a = stub.Assign(pb.AssignRequest(ids=["CUST-00001"], include_propensities=True), timeout=30).assignments[0]
    sizes = {m.segment: m.segment_size for m in a.segments}
    assert sizes["tiny"] == 0 and sizes["churners"] == 1092
    info = stub.GetSnapshotInfo(pb.GetSnapshotInfoRequest(include_values=True), timeout=30)
    counts = [v.count for uinfo in info.universes for f in uinfo.fields for v in f.values]
    assert counts and not any(small(c) for c in counts)


def test_floor_off_with_k_0(snap_and_terms):
    root, small_where = snap_and_terms
    server, port = create_server(root, host="127.0.0.1", port=0, privacy_k=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = pb_grpc.SegmentationServiceStub(ch).Count(pb.CountRequest(universe=U, condition=cond(small_where)),
                                                          timeout=30)
            assert small(r.count) and not r.suppressed
    finally:
        server.stop(0)


def test_profile(stub, snap_and_terms):
    _, small_where = snap_and_terms
    r = stub.Profile(pb.ProfileRequest(universe=U, segment=cond(small_where)), timeout=30)
    assert r.suppressed and r.segment_count == 0 and not r.fields and not r.numeric_fields
    r = stub.Profile(pb.ProfileRequest(universe=U, segment=cond({"churned": "true"}), values_per_field=100),
                     timeout=60)
    assert not r.suppressed and r.segment_count == 1092 and r.fields
    values = [v for f in r.fields for v in f.values]
    assert values and not any(small(v.segment_count) for v in values)
    assert not any(small(round(v.population_share * r.row_count)) for v in values)
    for nf in r.numeric_fields:  # single customers' values are not shown
        assert np.isnan(nf.segment.min) and np.isnan(nf.segment.max) and np.isnan(nf.population.max)
        assert nf.segment.count == 0 or not np.isnan(nf.segment.median)


def test_python_client_shows_suppression(stub, snap_and_terms):
    from segsrv.client import SegsrvClient

    _, small_where = snap_and_terms
    root, _ = snap_and_terms
    server, port = create_server(root, host="127.0.0.1", port=0, privacy_k=K)
    server.start()
    try:
        with SegsrvClient(f"127.0.0.1:{port}", timeout=30) as client:
            c = client.count({"from": U, "where": small_where})
            assert c["count"] == 0 and c["suppressed"] is True
            assert "suppressed" not in client.count({"from": U, "where": {"region": "oulu"}})
            r = client.relate({"from": U, "where": small_where})
            assert r["suppressed"] is True and r["hits"] == []
    finally:
        server.stop(0)
