"""The error model: exception -> gRPC status (server/errors.py) and -> ErrorInfo reason (segsrv.errors)."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from segsrv import errors as E
from segsrv.errors import REASONS, DeadlineExpired, RequestCancelled, Violation, reason_for
from segsrv.server.errors import build_status, status_code_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


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
    assert reason_for(E.NoCatalogError("x")) == "NO_CATALOG"
    assert reason_for(KeyError("x")) == "INTERNAL"


def test_every_error_class_has_a_reason():
    classes = [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, (E.SegsrvError,))
               and c is not E.SegsrvError]
    assert set(classes) | {DeadlineExpired, RequestCancelled} == set(REASONS)


def test_reasons_table_is_documented():
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `?(\w+)`?", DOCS.read_text(), re.M))
    assert {reason: cls.__name__ for cls, reason in REASONS.items()} == {r: c for r, c in rows.items()
                                                                         if r != "INTERNAL"}


def test_status_details_carry_the_reason_and_placed_violations():
    exc = E.UnknownValueError("field 'x' has no value 'b'", [Violation("x", "unknown value 'b'", "value", "b")])
    status, _ = build_status(exc, lambda v: [f"at.{v.field}.{v.item}"])
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for d in status.details:
        d.Unpack(info) if d.Is(info.DESCRIPTOR) else d.Unpack(bad)
    assert (info.reason, info.domain) == ("UNKNOWN_VALUE", "segsrv.dev")
    assert [(v.field, v.description) for v in bad.field_violations] == [("at.x.b", "field 'x' has no value 'b'")]
