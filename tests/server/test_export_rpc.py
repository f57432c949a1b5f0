"""ExportMembers over gRPC (a real server on port 0 over PetNord).

Every stream is compared with the in-process engine (segsrv.engine.export, itself checked
against the brute-force oracle over the source tables in tests/engine/test_export.py) and with
Count; errors are checked for their status code, field violations and reason.
"""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from segsrv.ops.conditions import All, And, Not, Or, Range, SegmentRef, Term
from segsrv.engine.export import export_members
from segsrv.ops.export import ExportQuery
from segsrv.server.registry import SnapshotRegistry
from segsrv.server.servicer import SegmentationServiceServicer
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb
from support import drain_until_aborted, stream_deadline_codes
from support import FakeContext as _FakeContext

U = "customers"


def _term(field: str, value: str) -> cpb.Condition:
    return cpb.Condition(term=cpb.Term(field=field, value=value))


def _all(*items) -> cpb.Condition:
    return cpb.Condition(all_of=cpb.ConditionList(conditions=list(items)))


def _not(item) -> cpb.Condition:
    return cpb.Condition(negation=item)


# (proto condition or None, the same as an engine condition)
CONDITIONS = {
    "all": (None, None),
    "term": (_term("region", "oulu"), Term("region", "oulu")),
    "negation": (_all(_term("segment", "dog_owner"), _not(_term("region", "helsinki"))),
                 And((Term("segment", "dog_owner"), Not(Term("region", "helsinki"))))),
    "or_range": (cpb.Condition(any_of=cpb.ConditionList(conditions=[
        _term("lifestyle", "premium"),
        cpb.Condition(numeric_range=cpb.NumericRange(field="total_spent_eur", gte=100, lt=250.5))])),
        Or((Term("lifestyle", "premium"), Range("total_spent_eur", gte=100, lt=250.5)))),
    "empty": (_all(_term("churned", "true"), _term("churned", "false")),
              And((Term("churned", "true"), Term("churned", "false")))),
}


def _engine(snap, cond, **kw):
    """(result, ids, scores or None) of the in-process export."""
    res = export_members(snap, ExportQuery(universe=U, condition=cond if cond is not None else All(), **kw))
    ids = [i for ids, _ in res.chunks() for i in ids]
    scores = [s for _, sc in res.chunks() for s in sc.tolist()] if res.ranked else None
    return res, ids, scores


def _stream(stub, **kw) -> list[pb.ExportMembersResponse]:
    return list(stub.ExportMembers(pb.ExportMembersRequest(**kw), timeout=30))


def _error(call, rpc_details):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return rpc_details(err.value)


@pytest.mark.parametrize("name", list(CONDITIONS))
@pytest.mark.parametrize("chunk_size", [0, 7, 1000])
def test_stream_equals_engine(stub, petnord_snapshot, name, chunk_size):
    proto, cond = CONDITIONS[name]
    kw = dict(universe=U, chunk_size=chunk_size)
    if proto is not None:
        kw["condition"] = proto
    msgs = _stream(stub, **kw)
    res, ids, _ = _engine(petnord_snapshot, cond)
    # the total first, alone; then chunks of chunk_size ids (0: 10,000), no empty chunk
    head, chunks = msgs[0], msgs[1:]
    assert head.total_count == res.total and list(head.ids) == [] and list(head.scores) == []
    assert all(m.total_count == 0 and len(m.ids) > 0 and list(m.scores) == [] for m in chunks)
    size = chunk_size or 10_000
    assert [len(m.ids) for m in chunks] == [min(size, res.total - i) for i in range(0, res.total, size)]
    assert [i for m in chunks for i in m.ids] == ids
    count = stub.Count(pb.CountRequest(universe=U, condition=proto), timeout=30) if proto is not None else \
        stub.Count(pb.CountRequest(universe=U), timeout=30)
    assert head.total_count == count.count
    for m in msgs:
        assert m.info.snapshot_name == "petnord" and m.info.snapshot_version == petnord_snapshot.version
        assert m.info.server_time_ms > 0


def test_top_k_equals_engine(stub, petnord_snapshot):
    proto, cond = CONDITIONS["negation"]
    msgs = _stream(stub, universe=U, condition=proto, top_k=25, target_field="churned", target_value="true",
                   chunk_size=10)
    res, ids, scores = _engine(petnord_snapshot, cond, top_k=25, target="churned", value="true")
    assert msgs[0].total_count == res.total > 25
    assert [len(m.ids) for m in msgs[1:]] == [10, 10, 5]
    assert [i for m in msgs[1:] for i in m.ids] == ids
    got = [s for m in msgs[1:] for s in m.scores]
    assert got == scores and all(a >= b for a, b in zip(got, got[1:]))
    assert all(len(m.scores) == len(m.ids) for m in msgs[1:])


def test_target_without_top_k_ranks_every_member(stub, petnord_snapshot):
    proto, cond = CONDITIONS["term"]
    msgs = _stream(stub, universe=U, condition=proto, target_field="lifestyle", target_value="premium")
    res, ids, scores = _engine(petnord_snapshot, cond, target="lifestyle", value="premium")
    assert msgs[0].total_count == res.total == len(ids) == 332
    assert [i for m in msgs[1:] for i in m.ids] == ids
    assert np.all(np.diff([s for m in msgs[1:] for s in m.scores]) <= 0)


def test_empty_ranked_export_sends_only_the_total(stub):
    proto, _ = CONDITIONS["empty"]
    msgs = _stream(stub, universe=U, condition=proto, top_k=5, target_field="churned", target_value="true")
    assert len(msgs) == 1 and msgs[0].total_count == 0


def test_one_id_per_message(stub, petnord_snapshot):
    proto, cond = CONDITIONS["term"]
    msgs = _stream(stub, universe=U, condition=proto, chunk_size=1)
    assert len(msgs) == 333 and all(len(m.ids) == 1 for m in msgs[1:])
    assert [m.ids[0] for m in msgs[1:]] == _engine(petnord_snapshot, cond)[1]


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize("kw,code,fields,reason", [
    (dict(top_k=5), "INVALID_ARGUMENT", ["target_field"], "INVALID_REQUEST"),
    (dict(target_value="true"), "INVALID_ARGUMENT", ["target_field"], "INVALID_REQUEST"),
    (dict(target_field="churned", top_k=5), "INVALID_ARGUMENT", ["target_value"], "INVALID_REQUEST"),
    (dict(top_k=-1, target_field="churned", target_value="true"), "INVALID_ARGUMENT", ["top_k"], "INVALID_REQUEST"),
    (dict(top_k=5, target_field="churnd", target_value="true"), "INVALID_ARGUMENT", ["target_field"],
     "UNKNOWN_FIELD"),
    (dict(top_k=5, target_field="churned", target_value="maybe"), "INVALID_ARGUMENT", ["target_value"],
     "UNKNOWN_VALUE"),
    (dict(condition=_all(_term("region", "oulu"), _term("regoin", "oulu"))), "INVALID_ARGUMENT",
     ["condition.all_of.conditions[1].term.field"], "UNKNOWN_FIELD"),
    (dict(condition=_not(_term("region", "oslo"))), "INVALID_ARGUMENT", ["condition.negation.term.value"],
     "UNKNOWN_VALUE"),
    (dict(chunk_size=100_001), "RESOURCE_EXHAUSTED", ["chunk_size"], "LIMIT_EXCEEDED"),
    (dict(chunk_size=-1), "INVALID_ARGUMENT", ["chunk_size"], "INVALID_REQUEST"),
    (dict(condition=cpb.Condition(segment=cpb.SegmentReference(name="loyal"))), "NOT_FOUND",
     ["condition.segment.name"], "UNKNOWN_SEGMENT"),
    (dict(universe="custmers"), "INVALID_ARGUMENT", ["universe"], "UNKNOWN_UNIVERSE"),
    (dict(universe=""), "INVALID_ARGUMENT", ["universe"], "UNKNOWN_UNIVERSE"),  # PetNord has several
    (dict(snapshot=pb.SnapshotSelector(name="nope")), "NOT_FOUND", ["snapshot.name"], "SNAPSHOT_NOT_FOUND"),
])
def test_errors_end_the_call_before_the_first_message(stub, rpc_details, kw, code, fields, reason):
    kw = {"universe": U, **kw}
    received = []

    def call():
        for m in stub.ExportMembers(pb.ExportMembersRequest(**kw), timeout=30):
            received.append(m)

    got_code, message, violations, info = _error(call, rpc_details)
    assert got_code.name == code, message
    assert [f for f, _ in violations] == fields, violations
    assert info.reason == reason
    assert received == []


def test_client_deadline(served):
    codes = stream_deadline_codes(served.address, lambda stub: stub.ExportMembers(
        pb.ExportMembersRequest(universe=U, chunk_size=1), timeout=0.000001))
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


def test_client_cancel_mid_stream(stub):
    call = stub.ExportMembers(pb.ExportMembersRequest(universe=U, chunk_size=10), timeout=30)
    first = next(call)
    assert first.total_count == 3000
    assert len(next(call).ids) == 10
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("cancelled,code", [(False, grpc.StatusCode.DEADLINE_EXCEEDED),
                                            (True, grpc.StatusCode.CANCELLED)])
def test_stops_between_chunks(petnord_root, cancelled, code):
    servicer = SegmentationServiceServicer(SnapshotRegistry(petnord_root))
    ctx = _FakeContext(active=4, cancelled=cancelled)  # before and after selecting, then one per chunk
    req = pb.ExportMembersRequest(universe=U, chunk_size=10)
    got = drain_until_aborted(servicer.ExportMembers(req, ctx))
    assert [m.total_count for m in got] == [3000, 0, 0] and [len(m.ids) for m in got] == [0, 10, 10]
    assert ctx.status.code == code


# --- segment references, with a catalog -------------------------------------------------


def test_segment_reference_with_a_catalog(tmp_path, petnord_root, start_server, rpc_details):
    from segsrv.engine.catalog import apply_segments

    root = tmp_path / "root"
    shutil.copytree(petnord_root, root)
    apply_segments(root / "petnord", {
        "premium_dogs": {"where": {"lifestyle": "premium", "segment": "dog_owner"}, "universe": U,
                         "description": "premium dog owners", "priority": 2, "tags": ["pets"]},
        "churners": {"where": {"churned": True}, "universe": U, "description": "", "priority": 1, "tags": []},
    }, fit_propensities=False)
    from segsrv.snapshot.reader import open_snapshot

    snap = open_snapshot(root / "petnord")
    assert "premium_dogs" in snap.segments
    stub = start_server(root).stub
    ref = cpb.Condition(segment=cpb.SegmentReference(name="premium_dogs"))
    msgs = _stream(stub, universe=U, condition=ref, chunk_size=50)
    _, plain_ids, _ = _engine(snap, And((Term("lifestyle", "premium"), Term("segment", "dog_owner"))))
    assert msgs[0].total_count == len(plain_ids) > 0
    assert [i for m in msgs[1:] for i in m.ids] == plain_ids
    # combined with other conditions, and ranked
    both = _all(ref, _not(cpb.Condition(segment=cpb.SegmentReference(name="churners"))))
    msgs = _stream(stub, universe=U, condition=both, top_k=5, target_field="region", target_value="oulu")
    _, ids, scores = _engine(snap, And((SegmentRef("premium_dogs"), Not(SegmentRef("churners")))), top_k=5,
                             target="region", value="oulu")
    assert [i for m in msgs[1:] for i in m.ids] == ids and [s for m in msgs[1:] for s in m.scores] == scores
    code, _, violations, info = _error(
        lambda: _stream(stub, universe=U, condition=cpb.Condition(segment=cpb.SegmentReference(name="premium_dgos"))),
        rpc_details)
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "UNKNOWN_SEGMENT"
    assert violations[0][0] == "condition.segment.name" and "premium_dogs" in violations[0][1]
