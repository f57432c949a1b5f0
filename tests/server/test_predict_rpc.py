"""Predict, ScoreSegment and Evaluate over gRPC (a real server on port 0 over PetNord).

Every answer is compared with the in-process engine on the same snapshot, field by field.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from segsrv.ops.conditions import Term
from segsrv.engine.evaluate import evaluate
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.engine.predict import predict, score_segment
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from segsrv.ops.predict import explained, method_from_proto, row_id_from_text
from segsrv.server.registry import SnapshotRegistry
from segsrv.server.servicer import SegmentationServiceServicer
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb
from support import drain_until_aborted, stream_deadline_codes
from support import FakeContext as _FakeContext


def _term(field: str, value: str) -> cpb.Condition:
    return cpb.Condition(term=cpb.Term(field=field, value=value))


def _check_predict(resp: pb.PredictResponse, res) -> None:
    assert resp.info.snapshot_name == res.snapshot and resp.info.snapshot_version == res.version
    assert (resp.target_field, resp.segment_count, resp.universe, resp.multi_valued) == \
        (res.target, res.n_segment, res.universe, res.multi_valued)
    assert method_from_proto(resp.method, None) == res.method
    assert [(t.field, t.value) for t in resp.evidence] == [tuple(e) for e in res.evidence]
    assert [p.value for p in resp.probabilities] == [vp.value for vp in res.probabilities]
    for got, vp in zip(resp.probabilities, res.probabilities):
        e = got.explanation
        assert (got.probability, e.base_probability, e.normalizer) == (vp.probability, vp.base_probability,
                                                                       vp.normalizer)
        listed, folded = explained(vp.factors)  # by effect; the factors of exactly 1 folded
        assert len(e.factors) == len(listed) and len(e.factors) + e.no_effect_count == len(vp.factors)
        for gf, f in zip(e.factors, listed):
            assert [(t.field, t.value) for t in gf.evidence] == [tuple(x) for x in f.evidence]
            assert (gf.factor, gf.support, gf.note) == (f.factor, f.support, f.note)
            assert pb.FactorKind.Name(gf.kind) == f"FACTOR_KIND_{f.kind.upper()}"
            assert gf.HasField("p_value") == (f.p_value is not None)
            assert (gf.p_value, gf.log10_p_value) == ((f.p_value, f.log10_p_value) if f.p_value is not None else (0, 0))
        assert [(t.field, t.value) for t in e.no_effect_evidence] == [tuple(f.evidence[0]) for f in folded]


PREDICTS = [
    # a customer's own features within a segment
    (dict(universe="customers", segment=_term("lifestyle", "premium"), target_field="churned", id="CUST-00007"),
     dict(universe="customers", segment=Term("lifestyle", "premium"), target="churned", row_id="CUST-00007")),
    # explicit evidence replacing the row's region, factorized, explicit knobs
    (dict(universe="customers", target_field="segment", id="CUST-00042",
          evidence=[cpb.Term(field="region", value="oulu")], evidence_fields=["region", "lifestyle", "orders.*"],
          prior_strength=2.0, min_support=10, method=pb.PREDICT_METHOD_FACTORIZED),
     dict(universe="customers", target="segment", row_id="CUST-00042", evidence=[("region", "oulu")],
          evidence_fields=["region", "lifestyle", "orders.*"], prior_strength=2.0, min_support=10,
          method="factorized")),
    # a multi-valued target, evidence only
    (dict(universe="customers", target_field="orders.lines.product.category",
          evidence=[cpb.Term(field="segment", value="dog_owner"), cpb.Term(field="region", value="oulu")]),
     dict(universe="customers", target="orders.lines.product.category",
          evidence=[("segment", "dog_owner"), ("region", "oulu")])),
]


@pytest.mark.parametrize("request_kwargs,query_kwargs", PREDICTS, ids=["id-in-segment", "evidence-factorized", "multi"])
def test_predict_equals_engine(stub, petnord_snapshot, request_kwargs, query_kwargs):
    # 120 s: the multi-valued default fits 10 cross-validated models on its first call (docs/predict.md)
    resp = stub.Predict(pb.PredictRequest(**request_kwargs), timeout=120)
    res = predict(petnord_snapshot, PredictQuery(**query_kwargs))
    assert len(resp.probabilities) >= 2
    assert any(p.explanation.factors for p in resp.probabilities)
    _check_predict(resp, res)


def _collect(stream):
    msgs = list(stream)
    for m in msgs:
        assert m.info.snapshot_name == "petnord" and m.info.server_time_ms >= 0
    msgs = [m for m in msgs if m.WhichOneof("payload") != "progress"]  # a model fitted first (test_fit_progress.py)
    kinds = [m.WhichOneof("payload") for m in msgs]
    assert kinds[-1] == "summary" and set(kinds[:-1]) <= {"chunk"}
    chunks = [list(m.chunk.scores) for m in msgs[:-1]]
    return chunks, msgs[-1].summary


def test_score_segment_stream_equals_engine(stub, petnord_snapshot):
    req = pb.ScoreSegmentRequest(universe="customers", segment=_term("lifestyle", "premium"), target_field="churned",
                                 target_value="true", chunk_size=7)
    chunks, summary = _collect(stub.ScoreSegment(req, timeout=30))
    res = score_segment(petnord_snapshot, ScoreQuery(target="churned", value="true", universe="customers",
                                                     segment=Term("lifestyle", "premium")))
    assert res.n_members > 100
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1) and 1 <= len(chunks[-1]) <= 7
    flat = [m for c in chunks for m in c]
    assert [m.id for m in flat] == [str(i) for i in res.ids]
    assert np.array_equal(np.array([m.score for m in flat]), res.scores)
    assert (summary.member_count, summary.returned_count, summary.mean_score) == \
        (res.n_members, len(res.rows), res.mean_score)
    assert (summary.universe, summary.target_field, summary.target_value) == ("customers", "churned", "true")


def test_score_segment_top_k(stub, petnord_snapshot):
    req = pb.ScoreSegmentRequest(universe="customers", target_field="segment", target_value="cat_owner", top_k=20,
                                 chunk_size=7, evidence_fields=["orders.*"], prior_strength=3.0)
    chunks, summary = _collect(stub.ScoreSegment(req, timeout=30))
    res = score_segment(petnord_snapshot, ScoreQuery(target="segment", value="cat_owner", universe="customers",
                                                     top_k=20, evidence_fields=["orders.*"], prior_strength=3.0))
    assert [len(c) for c in chunks] == [7, 7, 6]
    flat = [m for c in chunks for m in c]
    assert [m.id for m in flat] == [str(i) for i in res.ids]
    assert [m.score for m in flat] == res.scores.tolist()
    assert all(a.score >= b.score for a, b in zip(flat, flat[1:]))
    assert (summary.member_count, summary.returned_count, summary.mean_score) == (3000, 20, res.mean_score)


def test_score_segment_empty_segment_sends_only_the_summary(stub):
    req = pb.ScoreSegmentRequest(universe="customers", target_field="churned", target_value="true",
                                 segment=cpb.Condition(numeric_range=cpb.NumericRange(field="tenure_months", gte=1e9)))
    chunks, summary = _collect(stub.ScoreSegment(req, timeout=30))
    assert chunks == [] and (summary.member_count, summary.returned_count) == (0, 0)


@pytest.mark.parametrize("target", ["churned", "segment"])
def test_evaluate_equals_engine(stub, petnord_snapshot, target):
    resp = stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field=target, holdout_fraction=0.25, seed=3,
                                            method=pb.PREDICT_METHOD_FACTORIZED), timeout=30)
    res = evaluate(petnord_snapshot, EvaluateQuery(target=target, universe="customers", holdout_fraction=0.25, seed=3,
                                                   method="factorized"))
    assert (resp.test_count, resp.train_count) == (res.n_test, res.n_train)
    for name in ("accuracy", "baseline_accuracy", "log_loss", "mean_rank", "geometric_mean_probability",
                 "baseline_value", "calibration_of"):
        assert getattr(resp, name) == getattr(res, name), name
    assert (resp.universe, resp.target_field, list(resp.values)) == ("customers", target, res.values)
    assert method_from_proto(resp.method, None) == res.method
    if target == "churned":  # binary: auc and the positive value are set
        assert resp.HasField("auc") and resp.auc == res.auc and resp.positive_value == res.positive_value
    else:
        assert res.auc is None and not resp.HasField("auc") and not resp.HasField("positive_value")
    assert [(b.predicted_low, b.predicted_high, b.mean_predicted, b.observed_rate, b.count) for b in resp.calibration] \
        == [(b.predicted_low, b.predicted_high, b.mean_predicted, b.observed_rate, b.count) for b in res.calibration]


def test_evaluate_defaults_equal_engine_defaults(stub, petnord_snapshot):
    resp = stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field="churned"), timeout=60)
    res = evaluate(petnord_snapshot, EvaluateQuery(target="churned", universe="customers"))
    assert (resp.test_count, resp.accuracy, resp.log_loss) == (res.n_test, res.accuracy, res.log_loss)
    assert method_from_proto(resp.method, None) == res.method


# --- errors -------------------------------------------------------------------


def _error(call, rpc_details):
    with pytest.raises(grpc.RpcError) as err:
        out = call()
        if not isinstance(out, (pb.PredictResponse, pb.EvaluateResponse)):  # a ScoreSegment stream
            list(out)
    return rpc_details(err.value)


def test_unknown_target_is_invalid_argument(stub, rpc_details):
    for call in (lambda: stub.Predict(pb.PredictRequest(universe="customers", target_field="churnd"), timeout=10),
                 lambda: stub.ScoreSegment(pb.ScoreSegmentRequest(universe="customers", target_field="churnd",
                                                                  target_value="true"), timeout=10),
                 lambda: stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field="churnd"), timeout=10)):
        code, message, violations, info = _error(call, rpc_details)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "churnd" in message and "churned" in message  # the suggestion
        assert [f for f, _ in violations] == ["target_field"]
        assert info.reason == "UNKNOWN_FIELD"


def test_unknown_id_is_not_found(stub, rpc_details):
    code, message, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", id="CUST-99999"), timeout=10), rpc_details)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "CUST-99999" in message
    assert [f for f, _ in violations] == ["id"]


def test_evidence_errors_point_at_the_evidence(stub, rpc_details):
    ev = [cpb.Term(field="region", value="oulu"), cpb.Term(field="lifestyle", value="premium"),
          cpb.Term(field="churned", value="true")]
    code, message, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", evidence=ev), timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "target" in message and [f for f, _ in violations] == ["evidence[2]"]

    ev = [cpb.Term(field="region", value="oulu"), cpb.Term(field="lifestyle", value="luxury")]
    code, _, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", evidence=ev), timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["evidence[1].value"]

    ev = [cpb.Term(field="regoin", value="oulu")]
    code, _, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", evidence=ev), timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["evidence[0].field"]

    code, _, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", id="CUST-00001", evidence_fields=["region", "regoin"]),
        timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["evidence_fields[1]"]


def test_score_segment_errors_before_the_first_message(stub, rpc_details):
    code, _, violations, _ = _error(lambda: stub.ScoreSegment(pb.ScoreSegmentRequest(
        universe="customers", target_field="churned", target_value="maybe"), timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["target_value"]

    code, _, violations, info = _error(lambda: stub.ScoreSegment(pb.ScoreSegmentRequest(
        universe="customers", target_field="churned", target_value="true", chunk_size=100_001), timeout=10),
        rpc_details)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and [f for f, _ in violations] == ["chunk_size"]
    assert info.reason == "LIMIT_EXCEEDED"

    code, _, violations, _ = _error(lambda: stub.ScoreSegment(pb.ScoreSegmentRequest(
        universe="customers", target_field="churned", target_value="true", top_k=-1), timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["top_k"]


def test_too_many_target_values_is_resource_exhausted(start_server, petnord_root, rpc_details):
    stub = start_server(petnord_root, max_target_values=10).stub  # last_order_month has 24 values
    for call in (lambda: stub.Predict(pb.PredictRequest(universe="customers", target_field="last_order_month"),
                                      timeout=10),
                 lambda: stub.ScoreSegment(pb.ScoreSegmentRequest(universe="customers", target_field="last_order_month",
                                                                  target_value="2026-02"), timeout=10),
                 lambda: stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field="last_order_month"),
                                       timeout=10)):
        code, message, violations, info = _error(call, rpc_details)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_target_values=10" in message
        assert [f for f, _ in violations] == ["target_field"] and info.reason == "LIMIT_EXCEEDED"
    # within the limit, the same server answers
    assert stub.Predict(pb.PredictRequest(universe="customers", target_field="churned"), timeout=10).probabilities


def test_score_segment_client_deadline(served):
    # a fresh connection per attempt; a microsecond deadline must end the stream with DEADLINE_EXCEEDED
    codes = stream_deadline_codes(served.address, lambda stub: stub.ScoreSegment(pb.ScoreSegmentRequest(
        universe="customers", target_field="churned", target_value="true", chunk_size=1), timeout=0.000001))
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize("cancelled,code", [(False, grpc.StatusCode.DEADLINE_EXCEEDED),
                                            (True, grpc.StatusCode.CANCELLED)])
def test_score_segment_stops_between_chunks(petnord_root, cancelled, code):
    servicer = SegmentationServiceServicer(SnapshotRegistry(petnord_root))
    ctx = _FakeContext(active=4, cancelled=cancelled)  # 1 check before scoring, then one per chunk
    # factorized: no fit, so the only checks are the ones between steps and chunks (a logistic fit also
    # checks once per pass over the rows: tests/engine/test_cancel.py)
    req = pb.ScoreSegmentRequest(universe="customers", target_field="churned", target_value="true", chunk_size=10,
                                 method=pb.PREDICT_METHOD_FACTORIZED)
    got = drain_until_aborted(servicer.ScoreSegment(req, ctx))
    assert [m.WhichOneof("payload") for m in got] == ["chunk"] * 3
    assert ctx.status.code == code


def test_predict_int_id_conversion():
    assert row_id_from_text("42", "int", "people", "person_id") == 42
    from segsrv.errors import UnknownIdError
    with pytest.raises(UnknownIdError) as info:
        row_id_from_text("x42", "int", "people", "person_id")
    assert info.value.violations[0][0] == "id" and "x42" in info.value.message
    assert row_id_from_text("CUST-00001", "bytes", "customers", "customer_id") == "CUST-00001"


# --- a raw number on a numeric field is evidence of its band (as in `where` and Assign) ------------------

# tenure_months has the bands <6, 6-12, 12-24, 24-36, >=36 (edges 6, 12, 24, 36); an edge opens its band
NUMERIC_EVIDENCE = [(3, "<6"), (-2, "<6"), (6, "6-12"), (11.5, "6-12"), (12, "12-24"), (1e9, ">=36")]


def _without_time(resp: pb.PredictResponse) -> pb.PredictResponse:
    out = pb.PredictResponse()
    out.CopyFrom(resp)
    out.info.server_time_ms = 0
    return out


@pytest.mark.parametrize("number,band", NUMERIC_EVIDENCE)
def test_numeric_evidence_is_its_band_json_and_grpc(stub, petnord_snapshot, number, band):
    from segsrv.service import run_json
    from support import strip_elapsed

    base = {"from": "customers", "target": "churned", "id": "CUST-00007", "segment": {"lifestyle": "premium"}}
    by_number = strip_elapsed(run_json("predict", petnord_snapshot, {**base, "evidence": {"tenure_months": number}}))
    by_band = strip_elapsed(run_json("predict", petnord_snapshot, {**base, "evidence": {"tenure_months": band}}))
    assert by_number == by_band and ["tenure_months", band] in by_number["evidence"]
    # the list form and the proto's Terms (the number as text) too
    listed = strip_elapsed(run_json("predict", petnord_snapshot, {**base, "evidence": [["tenure_months", number]]}))
    assert listed == by_band
    text = "1000000000" if number == 1e9 else str(number)
    kw = dict(universe="customers", target_field="churned", id="CUST-00007", segment=_term("lifestyle", "premium"))
    got = stub.Predict(pb.PredictRequest(**kw, evidence=[cpb.Term(field="tenure_months", value=text)]), timeout=30)
    want = stub.Predict(pb.PredictRequest(**kw, evidence=[cpb.Term(field="tenure_months", value=band)]), timeout=30)
    assert _without_time(got) == _without_time(want)
    assert ("tenure_months", band) in [(t.field, t.value) for t in got.evidence]


def test_numeric_evidence_is_its_band_cli(served, petnord_root):
    from support import cli_remote_and_local, strip_elapsed

    base = {"from": "customers", "target": "churned", "evidence": {"tenure_months": 3, "region": "oulu"}}
    remote, local = cli_remote_and_local("predict", served.address, petnord_root, base)
    band_r, band_l = cli_remote_and_local("predict", served.address, petnord_root,
                                          {**base, "evidence": {"tenure_months": "<6", "region": "oulu"}})
    answers = [strip_elapsed(a) for a in (remote, local, band_r, band_l)]
    assert all(a == answers[0] for a in answers)
    assert ["tenure_months", "<6"] in answers[0]["evidence"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "three"])
def test_numeric_evidence_errors_as_in_assign(stub, rpc_details, petnord_snapshot, value):
    """Not a finite number and not a band label: the unknown-value error Assign gives for the same feature."""
    from segsrv.engine.assign import assign
    from segsrv.errors import UnknownValueError
    from segsrv.ops.assign import AssignQuery

    with pytest.raises(UnknownValueError) as in_assign:
        assign(petnord_snapshot, AssignQuery(universe="customers", features=[("tenure_months", value)]))
    with pytest.raises(UnknownValueError) as in_predict:
        predict(petnord_snapshot, PredictQuery(target="churned", universe="customers",
                                               evidence=[("tenure_months", value)]))
    assert in_predict.value.message == in_assign.value.message and "has no value" in in_predict.value.message
    code, message, violations, _ = _error(lambda: stub.Predict(pb.PredictRequest(
        universe="customers", target_field="churned", evidence=[cpb.Term(field="tenure_months", value=value)]),
        timeout=10), rpc_details)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["evidence[0].value"]
    assert in_assign.value.message in message
