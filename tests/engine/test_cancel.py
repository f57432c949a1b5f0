"""Cooperative cancellation: long engine work stops at the next check once the caller is gone."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from segsrv.engine import cancel
from segsrv.engine.evaluate import evaluate
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.engine.predict import predict
from segsrv.engine.predict.logistic import LOGISTIC_CACHE as _LOGISTIC_CACHE
from segsrv.ops.predict import PredictQuery

U = "customers"


class Gone(Exception):
    pass


def _raise_on(n: int, calls: list):
    """A cancel check that records each call in CALLS and raises Gone on the N-th."""

    def check():
        calls.append(1)
        if len(calls) >= n:
            raise Gone()

    return check


def test_check_is_a_no_op_outside_a_call():
    cancel.check()  # nothing installed: nothing happens


def test_logistic_fit_stops_at_the_next_pass(petnord_snapshot):
    _LOGISTIC_CACHE.clear()
    calls = []
    with cancel.checking(_raise_on(3, calls)), pytest.raises(Gone):
        predict(petnord_snapshot, PredictQuery(target="segment", universe=U, row_id="CUST-00001", method="logistic",
                                               l2=0.37))  # an l2 no other test fits: not cached
    assert len(calls) == 3
    cancel.check()  # the check is uninstalled again


def test_conjunction_evaluate_stops(petnord_snapshot):
    calls = []
    with cancel.checking(_raise_on(5, calls)), pytest.raises(Gone):
        evaluate(petnord_snapshot, EvaluateQuery(target="churned", universe=U, method="conjunction"))
    assert len(calls) == 5


def test_grpc_deadline_stops_the_fit(petnord_root, monkeypatch):
    """Evaluate (logistic, a 5-class target) with a short deadline: DEADLINE_EXCEEDED, and the server's
    fit stops at its next pass instead of running on for nobody."""
    from segsrv.server.app import create_server
    from segsrv.v1 import segsrv_pb2 as pb
    from segsrv.v1 import segsrv_pb2_grpc as pb_grpc

    from segsrv.snapshot.reader import open_snapshot

    last_check = {"t": 0.0, "n": 0}
    real_check = cancel.check
    # the whole fit, in-process: how long it takes and how often it checks (the deadline below is a
    # fraction of it, so the test holds however fast the machine or the fit is)
    _LOGISTIC_CACHE.clear()
    full = {"n": 0}
    t_full = time.monotonic()
    with cancel.checking(lambda: full.__setitem__("n", full["n"] + 1)):
        evaluate(open_snapshot(petnord_root), EvaluateQuery(target="segment", universe=U))
    t_full = time.monotonic() - t_full
    assert full["n"] > 10
    _LOGISTIC_CACHE.clear()

    def spy():
        last_check["t"], last_check["n"] = time.monotonic(), last_check["n"] + 1
        real_check()

    monkeypatch.setattr(cancel, "check", spy)
    server, port = create_server(petnord_root, host="127.0.0.1", port=0, privacy_k=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SegmentationServiceStub(ch)
            req = pb.EvaluateRequest(universe=U, target_field="segment", method=pb.PREDICT_METHOD_LOGISTIC)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Evaluate(req, timeout=max(0.05, t_full / 5))
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the server notices at its next check and stops: no more checks soon after
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                n = last_check["n"]
                time.sleep(1.0)
                if last_check["n"] == n:
                    break
            assert last_check["n"] > 0, "the fit never checked for cancellation"
            assert last_check["n"] == n, "the fit kept running after the deadline"
            assert time.monotonic() - t0 < 30
            # the server is fine afterwards
            assert stub.Count(pb.CountRequest(universe=U), timeout=10).count == 3000
        # and it stopped early: the same Evaluate run to the end checks many more times
        assert last_check["n"] < full["n"] / 2, (last_check["n"], full["n"], t_full)
    finally:
        server.stop(0)
