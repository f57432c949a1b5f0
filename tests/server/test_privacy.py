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
        "all_but_tiny": {"where": {"$not": {"$segment": "tiny"}}, "universe": U},
        "churners": {"where": {"churned": True}, "universe": U},
    }, fit_propensities=False)  # the propensities asked here are the factorized ones
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
                if table_ok(full.n_rows, full.n_condition, int(h.stats["n_feature"]), int(h.stats["support"]))]
    assert [(h.field, h.value) for h in r.hits] == expected[: len(r.hits)]
    assert r.suppressed_hit_count == len([h for h in full.hits if int(h.stats["support"]) >= K]) - len(expected)


def assert_segment_refused(stub, seg: cpb.Condition):
    """Predict, ScoreSegment, Evaluate and ExportMembers on `seg` are the floor's refusal."""
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


def test_predict_score_evaluate_export_refuse_small_segments(stub, snap_and_terms):
    _, small_where = snap_and_terms
    assert_segment_refused(stub, cond(small_where))
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
                prod *= f.factor
            # the factors the floor made 1 are folded with the other evidence without effect (every rare
            # feature is observed in S, so only the floor makes its factorized lift 1)
            hidden += sum((t.field, t.value) in rare for t in tp.explanation.no_effect_evidence)
            assert prod == pytest.approx(tp.probability, rel=1e-9)  # still explained
    assert hidden > 0


def test_segment_sizes_and_value_counts(stub):
    segs = {s.name: s for s in stub.ListSegments(pb.ListSegmentsRequest(), timeout=30).segments}
    assert segs["tiny"].size == 0 and segs["tiny"].share == 0.0
    assert segs["churners"].size == 1092
    a = stub.Assign(pb.AssignRequest(ids=["CUST-00001"], include_propensities=True,
                                     propensity_method=pb.PREDICT_METHOD_FACTORIZED), timeout=30).assignments[0]
    sizes = {m.segment: m.segment_size for m in a.segments}
    assert "tiny" not in sizes and sizes["churners"] == 1092  # a small segment is left out of Assign
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


# -- the floor as a property of every answer: no stated number, and no difference of two stated numbers,
# -- is a count of 1..K-1 rows (segsrv/engine/privacy.py)


def table_ok(n: int, a: int, b: int, ab: int) -> bool:
    """No cell or margin of the 2x2 table over n rows (a rows in A, b in B, ab in both) is small."""
    return not any(small(int(c)) for c in (ab, a - ab, b - ab, n - a - b + ab, a, n - a, b, n - b))


NOT_TINY = cpb.Condition(negation=cpb.Condition(segment=cpb.SegmentReference(name="tiny")))
TINY = cpb.Condition(segment=cpb.SegmentReference(name="tiny"))


@pytest.fixture(scope="module")
def padded(snap_and_terms):
    """(condition, region R, m): `region = R OR tiny`, with m (1..K-1) tiny rows outside R: a condition
    whose rows almost all share one value."""
    root, _ = snap_and_terms
    snap = open_snapshot(root / "petnord")
    for r in snap.universe(U).fields["region"].values:
        m = count(snap, U, parse_where({"$and": [{"$segment": "tiny"}, {"$not": {"region": r}}]})).count
        if m > 0:
            condition = cpb.Condition(any_of=cpb.ConditionList(conditions=[
                cpb.Condition(term=cpb.Term(field="region", value=r)), TINY]))
            return condition, r, m
    pytest.fail("no region leaves a tiny row outside")


def test_a_count_whose_complement_is_small_is_suppressed(stub):
    """Count(NOT T) = n - |T|: row_count - count would state |T|."""
    r = stub.Count(pb.CountRequest(universe=U, condition=NOT_TINY), timeout=30)
    assert r.count == 0 and r.suppressed
    r = stub.Relate(pb.RelateRequest(universe=U, condition=NOT_TINY, limit=10), timeout=30)
    assert r.suppressed and r.condition_count == 0 and not r.hits
    r = stub.Profile(pb.ProfileRequest(universe=U, segment=NOT_TINY), timeout=30)
    assert r.suppressed and r.segment_count == 0 and not r.fields
    sizes = {s.name: s.size for s in stub.ListSegments(pb.ListSegmentsRequest(), timeout=30).segments}
    assert sizes["all_but_tiny"] == 0 and sizes["tiny"] == 0
    assert_segment_refused(stub, NOT_TINY)


def test_relate_hits_state_no_small_cell(stub, padded):
    """A hit states n, |C|, its feature count f and support s: C - s, f - s and n - C - f + s are counts
    too. `region = R OR tiny` holds R but for m rows: C - s(R) = m."""
    condition, r, m = padded
    resp = stub.Relate(pb.RelateRequest(universe=U, condition=condition, limit=1000, min_support=1,
                                        direction=pb.RELATE_DIRECTION_ALL, include_condition_fields=True,
                                        fields=["region", "pet_size", "lifestyle", "churned"]), timeout=30)
    assert not resp.suppressed and resp.hits
    for h in resp.hits:
        assert table_ok(resp.row_count, resp.condition_count, h.feature_count, h.support), (h.field, h.value)
    assert ("region", r) not in {(h.field, h.value) for h in resp.hits}
    assert resp.suppressed_hit_count >= 1


def test_profile_states_no_small_cell_nor_remainder(stub, padded):
    """Per value: n, |S|, n_v, s_v and their differences; per single-valued field: |S| minus the listed
    counts (what the left-out values hold)."""
    condition, r, m = padded
    resp = stub.Profile(pb.ProfileRequest(universe=U, segment=condition, values_per_field=100,
                                          fields=["region", "pet_size", "churned", "tenure_months"]), timeout=60)
    assert not resp.suppressed
    n, S = resp.row_count, resp.segment_count
    for f in resp.fields:
        listed_s = listed_n = 0
        for v in f.values:
            n_v = round(v.population_share * n)
            assert table_ok(n, S, n_v, v.segment_count), (f.field, v.value)
            listed_s += v.segment_count
            listed_n += n_v
        assert not small(S - listed_s) and not small(n - listed_n), f.field
    for nf in resp.numeric_fields:
        assert table_ok(n, S, nf.population.count, nf.segment.count), nf.field
    assert r not in {v.value for f in resp.fields if f.field == "region" for v in f.values}


def test_predict_base_probabilities_state_no_small_count(stub, padded):
    """base(c) = (n_{S,c} + a P0(c)) / (n_S + a): with a near-zero prior, base * n_S is the count of
    the value in the segment."""
    condition, r, m = padded
    # single-valued target: the other regions hold m rows of the segment between them -> refused
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(universe=U, segment=condition, target_field="region", prior_strength=1e-9),
                     timeout=30)
    assert_floor_refusal(err.value)
    # multi-valued target (every value its own question): values with a small count are left out, marked
    resp = stub.Predict(pb.PredictRequest(universe=U, target_field="orders.line_categories", prior_strength=1e-9,
                                          method=pb.PREDICT_METHOD_FACTORIZED), timeout=60)
    assert resp.multi_valued and resp.probabilities
    for tp in resp.probabilities:
        c = round(tp.explanation.base_probability * resp.segment_count)
        assert not small(c) and not small(resp.segment_count - c), tp.value
    assert "bird_health" not in {tp.value for tp in resp.probabilities}  # 7 customers
    assert resp.suppressed_value_count >= 1


def test_predict_factors_state_no_small_count(stub, snap_and_terms):
    """A lift factor within S with a near-zero prior is n_{S,e,c} / (n_{S,c} q): factor * support * base
    is the count of rows with the evidence and the value. Factors resting on small counts are 1."""
    root, _ = snap_and_terms
    u = open_snapshot(root / "petnord").universe(U)
    counts = np.asarray(u.feature_count)
    rare = [u.feature_name(int(f)) for f in np.flatnonzero((counts > 0) & (counts < 3 * K))
            if u.feature_name(int(f))[0] not in ("churned",)][:6]
    rare += [("region", "helsinki"), ("pet_size", "large")]
    neutral = 0
    for rid in ("CUST-00001", "CUST-00017"):
        resp = stub.Predict(pb.PredictRequest(universe=U, id=rid, target_field="churned", prior_strength=1e-9,
                                              evidence=[cpb.Term(field=f, value=v) for f, v in rare],
                                              method=pb.PREDICT_METHOD_FACTORIZED), timeout=30)
        n_S = resp.segment_count
        for tp in resp.probabilities:
            e = tp.explanation
            n_Sc = round(e.base_probability * n_S)
            product = e.base_probability / e.normalizer
            # factors the floor made 1 are folded (no_effect_evidence): the rare features are all observed
            # in S, so only the floor makes their factorized lifts 1
            neutral += sum((t.field, t.value) in rare for t in e.no_effect_evidence)
            for f in e.factors:
                product *= f.factor
                if f.factor == 1.0:
                    continue
                assert f.support >= K, (tp.value, list(f.evidence), f.support, f.note)
                n_Sec = round(f.factor * f.support * e.base_probability)
                assert table_ok(n_S, n_Sc, f.support, n_Sec), (tp.value, list(f.evidence))
            assert product == pytest.approx(tp.probability, rel=1e-9)
    assert neutral > 0


def test_assign_never_states_members_of_a_small_segment(stub, snap_and_terms):
    """Assign over every id would list a small segment's members one by one (its export is refused)."""
    root, _ = snap_and_terms
    ids = [i.decode() for i in open_snapshot(root / "petnord").universe(U).row_ids]
    resp = stub.Assign(pb.AssignRequest(universe=U, ids=ids), timeout=60)
    named = {m.segment for a in resp.assignments for m in a.segments}
    assert "churners" in named and not named & {"tiny", "all_but_tiny"}
    assert not {a.primary_segment for a in resp.assignments} & {"tiny", "all_but_tiny"}
    assert resp.suppressed_segment_count == 2
    a = stub.Assign(pb.AssignRequest(universe=U, ids=ids[:1], include_propensities=True,
                                     propensity_method=pb.PREDICT_METHOD_FACTORIZED), timeout=30).assignments[0]
    assert {m.segment for m in a.segments} == {"churners"}


def test_assign_propensities_ignore_features_with_small_counts(stub, snap_and_terms):
    """With a near-zero prior, one feature e's propensity is n_{T,e} / n_e: times Count(e) a count. A feature
    whose table with the segment has a small cell does not enter the model; others still do, exactly."""
    root, _ = snap_and_terms
    snap = open_snapshot(root / "petnord")
    n, n_t = 3000, 1092

    def propensity(field, value):
        resp = stub.Assign(pb.AssignRequest(universe=U, features=[cpb.Term(field=field, value=value)],
                                            include_propensities=True, prior_strength=1e-9, max_p_value=1.0,
                                            propensity_method=pb.PREDICT_METHOD_FACTORIZED),
                           timeout=30)
        return {m.segment: m.propensity for m in resp.assignments[0].segments}["churners"]

    rare = ("last_order_month", "2024-05")  # one customer
    assert count(snap, U, parse_where({rare[0]: rare[1]})).count == 1
    assert propensity(*rare) == pytest.approx(n_t / n, rel=1e-6)  # the base rate: e is not in the model
    both = count(snap, U, parse_where({"region": "helsinki", "churned": True})).count
    assert propensity("region", "helsinki") == pytest.approx(both / 927, rel=1e-6)  # unchanged


def test_evaluate_states_no_small_count(stub):
    """accuracy * test_count, baseline_accuracy * test_count and each calibration bin's count and
    observed_rate * count are counts of test rows."""
    answered = 0
    for holdout in (0.2, 0.5, 0.006):
        req = pb.EvaluateRequest(universe=U, target_field="churned", method=pb.PREDICT_METHOD_FACTORIZED,
                                 holdout_fraction=holdout)
        try:
            r = stub.Evaluate(req, timeout=60)
        except grpc.RpcError as err:
            assert_floor_refusal(err)
            continue
        answered += 1
        t = r.test_count
        for rate in (r.accuracy, r.baseline_accuracy):
            c = round(rate * t)
            assert not small(c) and not small(t - c)
        assert sum(b.count for b in r.calibration) == t
        for b in r.calibration:
            o = round(b.observed_rate * b.count)
            assert b.count >= K and not small(o) and not small(b.count - o), (holdout, b)
    assert answered >= 1
    # a test set of ~18 rows: deciles of 1 or 2 rows
    req = pb.EvaluateRequest(universe=U, target_field="segment", method=pb.PREDICT_METHOD_FACTORIZED,
                             holdout_fraction=0.006)
    try:
        r = stub.Evaluate(req, timeout=60)
    except grpc.RpcError as err:
        assert_floor_refusal(err)
    else:
        assert all(b.count >= K for b in r.calibration)


def test_evaluate_on_a_small_segment_is_the_floor_refusal(stub, snap_and_terms):
    """Not "no test rows" (INVALID_ARGUMENT): the floor answers first, whatever else would fail."""
    _, small_where = snap_and_terms
    with pytest.raises(grpc.RpcError) as err:
        stub.Evaluate(pb.EvaluateRequest(universe=U, segment=cond(small_where), target_field="churned",
                                         holdout_fraction=1e-9), timeout=30)
    assert_floor_refusal(err.value)
    # a large segment without test rows still says so
    with pytest.raises(grpc.RpcError) as err:
        stub.Evaluate(pb.EvaluateRequest(universe=U, segment=cond({"region": "helsinki"}), target_field="churned",
                                         holdout_fraction=1e-9), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no test rows" in err.value.details()


def test_snapshot_info_value_counts_leave_no_small_rest(snap_and_terms):
    """A single-valued field's counts partition the rows: n minus the counts stated is what the values
    reported as 0 hold. For a floor k where zeroing only the small counts leaves a small rest (found
    from the snapshot), the server zeroes more."""
    root, _ = snap_and_terms
    u = open_snapshot(root / "petnord").universe(U)
    single = {name: [int(c) for c in f.counts] for name, f in u.fields.items()
              if f.kind != "multi" and f.semantics != "exists"}

    def small_rest(k):
        for counts in single.values():
            rest = u.n_rows - sum(c for c in counts if not (0 < c < k or 0 < u.n_rows - c < k))
            if 0 < rest < k:
                return True
        return False

    k = next(k for k in range(2, 200) if small_rest(k))
    server, port = create_server(root, host="127.0.0.1", port=0, privacy_k=k)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            info = pb_grpc.SegmentationServiceStub(ch).GetSnapshotInfo(
                pb.GetSnapshotInfoRequest(universe=U, include_values=True), timeout=30)
    finally:
        server.stop(0)
    n = info.universes[0].row_count
    for f in info.universes[0].fields:
        stated = [v.count for v in f.values]
        assert not any(0 < c < k or 0 < n - c < k for c in stated if c), f.name
        if f.name in single:
            assert not 0 < n - sum(stated) < k, (f.name, k)


def test_relate_floor_per_hit_check_equals_table_small():
    """table_small and floor_relate's per-hit check (tables_small, one condition against many features) =
    their definition, a cell or margin of 1..k-1 rows, on every table of small n around the k boundaries,
    with numpy counts as Relate's hits hold them; with the floor off, nothing is small."""
    from segsrv.engine.privacy import table_small, tables_small

    for k in (0, 1, 2, 3, 10):
        for n in range(0, 2 * k + 3):
            for c in range(n + 1):
                tables = [(b, ab) for b in range(n + 1) for ab in range(max(0, c + b - n), min(c, b) + 1)]
                want = [k > 1 and any(0 < x < k for x in (ab, c - ab, b - ab, n - c - b + ab, c, n - c, b, n - b))
                        for b, ab in tables]
                assert [table_small(n, c, np.int64(b), ab, k) for b, ab in tables] == want
                bs, abs_ = (np.array(col, dtype=np.int64) for col in zip(*tables))
                assert tables_small(n, c, bs.tolist(), abs_.tolist(), k) == want
                assert tables_small(np.int64(n), np.int64(c), bs, abs_, k) == want
