"""The logistic method's l2 over JSON and gRPC: given by the caller it is used as is (no cross-validation
runs) and reported; not given, it is chosen by cross-validation and reported (docs/predict.md)."""

from __future__ import annotations

import pytest

from segsrv.client import SegsrvClient
from segsrv.engine.predict import logistic as L
from segsrv.errors import QueryError
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.ops.predict import PredictQuery, Regularisation
from segsrv.ops.score import ScoreQuery
from segsrv.v1 import segsrv_pb2 as pb


@pytest.fixture
def no_cv(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("cross-validation ran although l2 was given")

    monkeypatch.setattr(L, "choose_l2", refuse)
    L.LOGISTIC_CACHE.clear()
    L.L2_CACHE.clear()
    yield
    L.LOGISTIC_CACHE.clear()
    L.L2_CACHE.clear()


@pytest.mark.parametrize("cls,extra", [(PredictQuery, {"id": "CUST-00007", "method": "logistic"}),
                                       (ScoreQuery, {"value": "true"}), (EvaluateQuery, {})])
def test_l2_json_and_proto_round_trip(cls, extra):
    q = cls.from_json({"from": "customers", "target": "churned", "l2": 3, **extra})
    assert q.l2 == 3.0 and "l2" in q.given
    req = q.to_proto()
    assert req.HasField("l2") and req.l2 == 3.0
    back = cls.from_proto(req, cls.paths(req))
    assert back.l2 == 3.0 and "l2" in back.given
    q0 = cls.from_json({"from": "customers", "target": "churned", **extra})
    assert q0.l2 is None and not q0.to_proto().HasField("l2")
    assert cls.from_proto(q0.to_proto(), cls.paths(q0.to_proto())).l2 is None
    for bad in (0, -1, "x", 1e-9, 1e9, 1e-300):  # beyond 1e-8 .. 1e8 the fit's scaling over- or underflows
        with pytest.raises(QueryError, match="l2"):
            cls.from_json({"from": "customers", "target": "churned", "l2": bad, **extra})


def test_l2_given_over_grpc_is_used_without_cv(stub, no_cv):
    resp = stub.Predict(pb.PredictRequest(universe="customers", target_field="churned", id="CUST-00007",
                                          method=pb.PREDICT_METHOD_LOGISTIC, l2=3.0))
    assert [(r.l2, r.cross_validated, r.target_value) for r in resp.regularisation] == [(3.0, False, "")]
    ev = stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field="churned", l2=3.0))
    assert (ev.regularisation.l2, ev.regularisation.cross_validated) == (3.0, False)
    summary = [m for m in stub.ScoreSegment(pb.ScoreSegmentRequest(
        universe="customers", target_field="churned", target_value="true", top_k=2, l2=3.0))
        if m.WhichOneof("payload") == "summary"][0].summary
    assert (summary.regularisation.l2, summary.regularisation.cross_validated) == (3.0, False)
    # the default method is logistic: l2 given without a method is used as is
    resp = stub.Predict(pb.PredictRequest(universe="customers", target_field="churned", id="CUST-00007", l2=3.0))
    assert [(r.l2, r.cross_validated) for r in resp.regularisation] == [(3.0, False)]
    # the conjunction method has no penalty to report
    resp = stub.Predict(pb.PredictRequest(universe="customers", target_field="churned", id="CUST-00007",
                                          method=pb.PREDICT_METHOD_CONJUNCTION))
    assert len(resp.regularisation) == 0


def test_l2_given_over_the_python_client_is_used_without_cv(served, no_cv):
    with SegsrvClient(served.address) as client:
        ans = client.predict({"from": "customers", "target": "churned", "id": "CUST-00007", "method": "logistic",
                              "l2": 0.25})
        assert ans["regularisation"] == [{"l2": 0.25, "cross_validated": False, "value": None, "interaction_pairs": 0}]
        ev = client.evaluate({"from": "customers", "target": "churned", "l2": 0.25})
        assert ev["regularisation"] == {"l2": 0.25, "cross_validated": False, "value": None, "interaction_pairs": 0}


def test_l2_not_given_is_cross_validated_and_reported(stub):
    L.LOGISTIC_CACHE.clear()
    L.L2_CACHE.clear()
    resp = stub.Predict(pb.PredictRequest(universe="customers", target_field="churned", id="CUST-00007",
                                          method=pb.PREDICT_METHOD_LOGISTIC))
    [r] = resp.regularisation
    assert r.cross_validated and L.L2_GRID[-1] <= r.l2 <= L.L2_GRID[0]
    assert Regularisation.from_proto(r) == Regularisation(r.l2, True, None)
    ev = stub.Evaluate(pb.EvaluateRequest(universe="customers", target_field="churned"))
    assert ev.regularisation.cross_validated and L.L2_GRID[-1] <= ev.regularisation.l2 <= L.L2_GRID[0]
