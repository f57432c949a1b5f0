"""Error paths over a real channel: status codes, google.rpc.BadRequest violations, limits, deadlines."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

import segsrv.server.servicer as servicer_mod
import segsrv.service as service_mod
from segsrv.ops.relate import RelateResult
from segsrv.server.app import BindError, create_server
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def term(field, value):
    return c.Condition(term=c.Term(field=field, value=value))


def nested(depth: int) -> c.Condition:
    cond = term("churned", "true")
    for _ in range(depth):
        cond = c.Condition(negation=cond)
    return cond


def call(stub, method, request, timeout=30):
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=timeout)
    return err.value


def test_unknown_field_in_condition_names_the_request_path(stub, rpc_details):
    cond = c.Condition(all_of=c.ConditionList(conditions=[term("churned", "true"), term("regoin", "oulu")]))
    code, message, violations, info = rpc_details(call(stub, "Relate", pb.RelateRequest(universe="customers",
                                                                                        condition=cond)))
    assert code == INVALID and info.reason == "UNKNOWN_FIELD" and info.domain == "segsrv.dev"
    assert "did you mean 'region'" in message
    assert violations == [("condition.all_of.conditions[1].term.field", message)]


def test_unknown_field_in_count_and_relate_fields(stub, rpc_details):
    code, message, violations, _ = rpc_details(call(stub, "Count", pb.CountRequest(
        universe="customers", condition=c.Condition(value_set=c.ValueSet(field="segmnt", values=["x"])))))
    assert code == INVALID and violations == [("condition.value_set.field", message)] and "'segment'" in message
    code, message, violations, _ = rpc_details(call(stub, "Relate", pb.RelateRequest(
        universe="customers", fields=["region", "lifestyel"])))
    assert code == INVALID and violations == [("fields[1]", message)] and "did you mean 'lifestyle'" in message


def test_unknown_value(stub, rpc_details):
    cond = c.Condition(any_of=c.ConditionList(conditions=[
        term("region", "oulu"), c.Condition(value_set=c.ValueSet(field="churned", values=["true", "maybe"]))]))
    code, message, violations, info = rpc_details(call(stub, "Count", pb.CountRequest(universe="customers",
                                                                                      condition=cond)))
    assert code == INVALID and info.reason == "UNKNOWN_VALUE"
    assert "'maybe'" in message and "['false', 'true']" in message
    assert violations == [("condition.any_of.conditions[1].value_set.values[1]", message)]


@pytest.mark.parametrize("cond,path", [
    (c.Condition(all_of=c.ConditionList()), "condition.all_of.conditions"),
    (c.Condition(any_of=c.ConditionList(conditions=[term("region", "oulu"), c.Condition()])),
     "condition.any_of.conditions[1]"),
    (c.Condition(value_set=c.ValueSet(field="region")), "condition.value_set.values"),
    (c.Condition(term=c.Term(value="oulu")), "condition.term.field"),
    (c.Condition(negation=c.Condition()), "condition.negation"),
    (c.Condition(segment=c.SegmentReference()), "condition.segment.name"),
    (c.Condition(numeric_range=c.NumericRange(field="total_orders", gte=1, gt=2)), "condition.numeric_range"),
    (c.Condition(numeric_range=c.NumericRange(field="total_orders", lt=float("nan"))), "condition.numeric_range.lt"),
    (c.Condition(numeric_range=c.NumericRange(field="region", gte=1)), "condition.numeric_range"),
])
def test_malformed_condition(cond, path, stub, rpc_details):
    code, message, violations, _ = rpc_details(call(stub, "Relate", pb.RelateRequest(universe="customers",
                                                                                     condition=cond)))
    assert code == INVALID
    assert [v[0] for v in violations] == [path], message


@pytest.mark.parametrize("request_,field,text", [
    (pb.RelateRequest(universe="customers", limit=20_000), "limit", "10000"),
    (pb.RelateRequest(universe="customers", condition=nested(33)), "condition" + ".negation" * 33, "32"),
])
def test_over_limit_is_invalid_argument_with_the_limit(request_, field, text, stub, rpc_details):
    code, message, violations, info = rpc_details(call(stub, "Relate", request_))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.reason == "LIMIT_EXCEEDED" and text in message
    assert [v[0] for v in violations] == [field]


def test_depth_32_is_allowed_and_too_many_terms_is_not(stub, rpc_details):
    assert stub.Count(pb.CountRequest(universe="customers", condition=nested(32)), timeout=30).row_count == 3000
    many = c.Condition(value_set=c.ValueSet(field="region", values=["oulu"] * 1025))
    code, message, violations, info = rpc_details(call(stub, "Count", pb.CountRequest(universe="customers",
                                                                                      condition=many)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.reason == "LIMIT_EXCEEDED" and "1024" in message
    assert violations == [("condition", message)]


@pytest.mark.parametrize("request_,field", [
    (pb.RelateRequest(universe="customers", limit=-1), "limit"),
    (pb.RelateRequest(universe="customers", order_by=99), "order_by"),
    (pb.RelateRequest(universe="customers", max_p_value=2.0), "max_p_value"),
    (pb.RelateRequest(universe="customers", prior_strength=-1.0), "prior_strength"),
    (pb.RelateRequest(universe="customers", min_support=-3), "min_support"),
])
def test_bad_scalar_fields(request_, field, stub, rpc_details):
    code, _, violations, _ = rpc_details(call(stub, "Relate", request_))
    assert code == INVALID and [v[0] for v in violations] == [field]


def test_unknown_universe(stub, rpc_details):
    for method, request in (("Relate", pb.RelateRequest(universe="custmers")),
                            ("Count", pb.CountRequest(universe="custmers")),
                            ("GetSnapshotInfo", pb.GetSnapshotInfoRequest(universe="custmers")),
                            ("ListSegments", pb.ListSegmentsRequest(universe="custmers"))):
        code, message, violations, info = rpc_details(call(stub, method, request))
        assert code == INVALID and info.reason == "UNKNOWN_UNIVERSE", method
        assert "did you mean 'customers'" in message and violations == [("universe", message)]
    code, message, violations, _ = rpc_details(call(stub, "Count", pb.CountRequest()))  # several universes
    assert code == INVALID and violations[0][0] == "universe"


def test_unknown_snapshot_is_not_found(stub, rpc_details):
    code, message, violations, _ = rpc_details(call(stub, "Count", pb.CountRequest(
        snapshot=pb.SnapshotSelector(name="petnrd"), universe="customers")))
    assert code == grpc.StatusCode.NOT_FOUND and "did you mean 'petnord'" in message and "served: ['petnord']" in message
    assert [v[0] for v in violations] == ["snapshot.name"]


def test_unknown_segment_is_not_found(stub, rpc_details):
    code, message, violations, _ = rpc_details(call(stub, "Relate", pb.RelateRequest(
        universe="customers", condition=c.Condition(segment=c.SegmentReference(name="vip")))))
    assert code == grpc.StatusCode.NOT_FOUND and "'vip'" in message
    assert violations == [("condition.segment.name", message)]


def test_pinned_wrong_version_is_failed_precondition(stub, rpc_details, petnord_snapshot):
    code, message, violations, _ = rpc_details(call(stub, "Relate", pb.RelateRequest(
        snapshot=pb.SnapshotSelector(name="petnord", version="v0"), universe="customers")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == f"version v0 of petnord is not served; serving {petnord_snapshot.version}"
    assert [v[0] for v in violations] == ["snapshot.version"]


def test_internal_error_hides_the_traceback(stub, rpc_details, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(service_mod, "count", boom)
    code, message, violations, info = rpc_details(call(stub, "Count", pb.CountRequest(universe="customers")))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message and "Traceback" not in message
    request_id = info.metadata["request_id"]
    assert request_id in message and not violations
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_tiny_deadline(stub, monkeypatch):
    real_count = service_mod.count

    def slowish_count(*args, **kwargs):  # a tiny deadline can race a sub-millisecond answer
        time.sleep(0.05)
        return real_count(*args, **kwargs)

    monkeypatch.setattr(service_mod, "count", slowish_count)
    err = call(stub, "Count", pb.CountRequest(universe="customers"), timeout=1e-3)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_deadline_stops_the_handler_between_steps(stub, monkeypatch):
    real_relate = service_mod.relate
    converted = []
    done = threading.Event()

    def slow_relate(*args, **kwargs):
        time.sleep(0.6)
        return real_relate(*args, **kwargs)

    real_convert = RelateResult.to_proto

    def recording_convert(*args, **kwargs):
        converted.append(1)
        return real_convert(*args, **kwargs)

    real_check = servicer_mod.check_active

    def check(context):
        try:
            real_check(context)
        except Exception:
            done.set()
            raise

    monkeypatch.setattr(service_mod, "relate", slow_relate)
    monkeypatch.setattr(RelateResult, "to_proto", recording_convert)
    monkeypatch.setattr(servicer_mod, "check_active", check)
    t0 = time.perf_counter()
    err = call(stub, "Relate", pb.RelateRequest(universe="customers"), timeout=0.2)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.perf_counter() - t0 < 0.55
    assert done.wait(5), "the handler did not notice the deadline"
    assert not converted  # it stopped before building the response


def test_server_limits(petnord_root, start_server, monkeypatch, rpc_details):
    r = start_server(petnord_root, max_workers=4, max_concurrent_rpcs=1, max_receive_message_bytes=16 * 1024,
                     max_result_hits=50)
    # a request larger than the receive limit
    big = pb.RelateRequest(universe="customers", fields=["x" * 20_000])
    assert call(r.stub, "Relate", big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the server's own cap on hits
    code, message, violations, _ = rpc_details(call(r.stub, "Relate", pb.RelateRequest(universe="customers",
                                                                                       limit=51)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum 50" in message and [v[0] for v in violations] == ["limit"]
    assert len(r.stub.Relate(pb.RelateRequest(universe="customers", limit=50, direction=pb.RELATE_DIRECTION_ALL),
                             timeout=30).hits) == 50

    # concurrency: one slow call in flight, the next is rejected
    entered, release = threading.Event(), threading.Event()
    real_relate = service_mod.relate

    def slow_relate(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real_relate(*args, **kwargs)

    monkeypatch.setattr(service_mod, "relate", slow_relate)
    first = r.stub.Relate.future(pb.RelateRequest(universe="customers", condition=term("churned", "true")),
                                 timeout=30)
    assert entered.wait(10)
    try:
        err = call(r.stub, "Count", pb.CountRequest(universe="customers"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    assert first.result().hits


def test_busy_port_fails_clearly(served, petnord_root):
    with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{served.port}: the port is in use"):
        create_server(petnord_root, port=served.port)


def test_bad_server_arguments(petnord_root, tmp_path):
    with pytest.raises(ValueError, match="max_result_hits"):
        create_server(petnord_root, max_result_hits=20_000)
    from segsrv.errors import SnapshotNotFoundError

    with pytest.raises(SnapshotNotFoundError, match="not a directory"):
        create_server(tmp_path / "missing")
