"""Huge request strings in errors: the client receives a normal status with a shortened echo.

Issue 14: an unknown field name of 5,000 characters made the error trailers exceed the client's
metadata limit (8 KiB soft, 16 KiB hard), so the client saw RESOURCE_EXHAUSTED "received metadata
size exceeds ..." instead of INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.errors import QueryError
from segsrv.server.errors import build_status
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc


def _client_calls(name: str):
    """(what, call through SegsrvClient, expected code, the violation's field)."""
    return [
        ("unknown field", lambda c: c.count({"from": "customers", "where": {name: "a"}}),
         grpc.StatusCode.INVALID_ARGUMENT, "condition.term.field"),
        ("unknown value (2-byte characters)",
         lambda c: c.count({"from": "customers", "where": {"region": "é" * len(name)}}),
         grpc.StatusCode.INVALID_ARGUMENT, "condition.term.value"),
        ("unknown universe", lambda c: c.relate({"from": name}), grpc.StatusCode.INVALID_ARGUMENT, "universe"),
        ("unknown id", lambda c: c.predict({"from": "customers", "target": "churned", "id": name}),
         grpc.StatusCode.NOT_FOUND, None),
        ("unknown segment", lambda c: c.count({"from": "customers", "where": {"$segment": name}}),
         grpc.StatusCode.NOT_FOUND, "condition.segment.name"),
        ("stream, unknown field", lambda c: list(c.export({"from": "customers", "where": {name: "a"}}).members()),
         grpc.StatusCode.INVALID_ARGUMENT, "condition.term.field"),
    ]


@pytest.mark.parametrize("length", [5_000, 100_000])
def test_huge_names_come_back_as_normal_errors_with_a_short_echo(served, length):
    name = "x" * (length - 6) + "-tail!"
    with SegsrvClient(served.address, timeout=10) as client:
        for what, call, code, field in _client_calls(name):
            with pytest.raises(SegsrvRpcError) as info:
                call(client)
            err = info.value
            assert err.code == code, (what, err.code, err.message[:300])
            assert err.status is not None and len(err.message.encode()) < 1024, what
            assert "more characters" in err.message and err.message.count("x") < 100, (what, err.message)
            if field is not None:
                assert [f for f, _ in err.violations] == [field], (what, err.violations)
    # the raw stub: snapshot.name and the status details intact
    stub = segsrv_pb2_grpc.SegmentationServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Count(pb.CountRequest(universe="customers", snapshot=pb.SnapshotSelector(name=name)), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(info.value.trailing_metadata())
    assert len(trailers["grpc-status-details-bin"]) < 4096 and "x-request-id" in trailers


def test_many_long_violations_fit_and_say_how_many_were_left_out():
    from segsrv.server.errors import MAX_STATUS_BYTES

    exc = QueryError("bad request", [(f"fields[{i}]", "é" * 1000) for i in range(100)])
    status, _ = build_status(exc)
    assert status.ByteSize() <= MAX_STATUS_BYTES and len(status.message.encode()) <= 768
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    status.details[0].Unpack(bad)
    status.details[1].Unpack(info)
    kept = len(bad.field_violations)
    assert 1 <= kept < 100 and int(info.metadata["omitted_violations"]) == 100 - kept
    assert all(len(v.description.encode()) <= 384 for v in bad.field_violations)
