"""Discover over gRPC: a real server over PetNord (create_server, in-process).

The answer must equal the in-process engine's (whose numbers tests/engine/test_discover.py checks against
the brute-force search); the Python client and `segsrv discover --addr` print what `--local` prints; errors
come back with their status codes and field violations; the caller's deadline stops the search; the
privacy floor raises min_support.
"""

from __future__ import annotations

import json

import grpc
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.engine import cancel
from segsrv.engine.discover import discover
from segsrv.ops.discover import DiscoverQuery
from segsrv.server.servicer import SegmentationServiceServicer
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb
from support import Aborted, FakeContext
from support import segsrv_cli as _cli
from support import strip_elapsed as _strip

FIELDS = ["segment", "pet_size", "region", "lifestyle", "health_focus", "orders.lines.product.category"]


def _target() -> cpb.Condition:
    return cpb.Condition(term=cpb.Term(field="churned", value="true"))


@pytest.mark.parametrize("kwargs", [
    dict(fields=FIELDS, min_support=30, k=3),
    dict(fields=FIELDS, min_support=30, target=_target(), max_length=2, direction=pb.DISCOVER_DIRECTION_HIGH),
    dict(fields=FIELDS, min_support=30, field_weights=[pb.FieldWeight(field="region", weight=4)],
         max_overlap=0.4, adjust_for_activity=False, describe=0),
])
def test_discover_equals_engine(stub, petnord_snapshot, kwargs):
    req = pb.DiscoverRequest(universe="customers", **kwargs)
    resp = stub.Discover(req, timeout=60)
    want = discover(petnord_snapshot, DiscoverQuery.from_proto(req, DiscoverQuery.paths(req)))
    assert resp.info.snapshot_name == "petnord" and resp.info.server_time_ms > 0
    assert (resp.universe, resp.row_count, resp.candidates, resp.tested, resp.target_count) == \
        (want.universe, want.n_rows, want.candidates, want.tested, want.target_count)
    assert len(resp.segments) == len(want.segments) > 0
    for got, w in zip(resp.segments, want.segments):
        assert [(t.field, t.value) for t in got.terms] == list(w.terms)
        assert (got.support, got.share, got.lift, got.split_lift, got.p_value, got.q_value, got.score) == \
            (w.support, w.share, w.lift, w.split_lift, w.p_value, w.q_value, w.score)
        assert (got.name, got.description, got.direction, got.target_support) == \
            (w.name, w.description, w.direction, w.target_support)
        # the condition is ready to use: Count of it is the support
        count = stub.Count(pb.CountRequest(universe="customers", condition=got.condition), timeout=10)
        assert count.count == got.support
    if "k" in kwargs:
        assert [p.segment for p in resp.segmentation.personas] == [p.segment for p in want.segmentation.personas]
        assert resp.segmentation.covered + resp.segmentation.other == resp.row_count


def test_client_and_cli_equal_local(served, petnord_root):
    q = {"from": "customers", "fields": FIELDS, "min_support": 30, "target": "churned=true", "k": 2}
    with SegsrvClient(served.address, timeout=60) as client:
        remote = client.discover(q)
    local = json.loads(_cli("discover", "--local", str(petnord_root), "--json", json.dumps(q), "--format", "json",
                            "--quiet").stdout)
    cli_remote = json.loads(_cli("discover", "--addr", served.address, "--json", json.dumps(q), "--format", "json",
                                 "--quiet").stdout)
    assert _strip(remote) == _strip(cli_remote)
    assert (remote["min_support"], remote["min_lift"]) == (local["min_support"], local["min_lift"]) == (30, 1.2)
    assert [s["name"] for s in remote["segments"]] == [s["name"] for s in local["segments"]]
    assert remote["segments"] == local["segments"] and remote["segmentation"] == local["segmentation"]
    # flags instead of JSON give the same answer
    flags = json.loads(_cli("discover", "--local", str(petnord_root), "--from", "customers", "--fields", *FIELDS,
                            "--min-support", "30", "--target", "churned=true", "--k", "2", "--format", "json",
                            "--quiet").stdout)
    assert flags["segments"] == local["segments"]


@pytest.mark.parametrize("kwargs,code,field", [
    (dict(max_length=9), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_length"),
    (dict(max_candidates=100_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_candidates"),
    (dict(min_support=1, max_length=2), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_candidates"),
    (dict(fields=["nope"]), grpc.StatusCode.INVALID_ARGUMENT, "fields"),
    (dict(field_weights=[pb.FieldWeight(field="region", weight=0)]), grpc.StatusCode.INVALID_ARGUMENT,
     "field_weights[0].weight"),
    (dict(direction=7), grpc.StatusCode.INVALID_ARGUMENT, "direction"),
    (dict(universe="nope"), grpc.StatusCode.INVALID_ARGUMENT, "universe"),
])
def test_errors(petnord_root, start_server, rpc_details, kwargs, code, field):
    running = start_server(petnord_root, max_discover_candidates=150)
    kwargs.setdefault("universe", "customers")
    with pytest.raises(grpc.RpcError) as err:
        running.stub.Discover(pb.DiscoverRequest(**kwargs), timeout=30)
    got_code, message, violations, _info = rpc_details(err.value)
    assert got_code == code, message
    assert any(field in f for f, _ in violations), violations


def test_deadline_stops_the_search(petnord_root, monkeypatch):
    """The search checks the caller between its steps: a call whose deadline passed mid-search ends with
    DEADLINE_EXCEEDED at the next check, not after the whole search."""
    from segsrv.server.registry import SnapshotRegistry

    servicer = SegmentationServiceServicer(SnapshotRegistry(petnord_root), privacy_k=0)
    calls = []
    real = cancel.check

    def counting():
        calls.append(1)
        real()

    monkeypatch.setattr("segsrv.engine.discover.cancel.check", counting)
    ctx = FakeContext(active=4)
    with pytest.raises(Aborted):
        servicer.Discover(pb.DiscoverRequest(universe="customers", min_support=20), ctx)
    assert ctx.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    stopped_after = len(calls)
    full = []
    monkeypatch.setattr("segsrv.engine.discover.cancel.check", lambda: full.append(1))
    discover(servicer.registry.resolve(), DiscoverQuery(universe="customers", min_support=20))
    assert stopped_after < len(full)


def test_privacy_floor_raises_min_support(petnord_root, start_server):
    running = start_server(petnord_root, privacy_k=40)
    resp = running.stub.Discover(pb.DiscoverRequest(universe="customers", fields=FIELDS, min_support=5,
                                                    target=_target()), timeout=60)
    assert resp.segments and all(s.support >= 40 for s in resp.segments)
    for s in resp.segments:
        assert s.target_support == 0 or s.target_support >= 40
        assert s.support - s.target_support == 0 or s.support - s.target_support >= 40
        assert all(r.support >= 40 for r in s.related)
    # the client validates what it can before sending, as the server would
    with SegsrvClient(running.address, timeout=60) as client:
        with pytest.raises(Exception, match="max_length"):
            client.discover({"from": "customers", "max_length": 7})
        with pytest.raises(SegsrvRpcError) as err:
            client.discover({"from": "customers", "fields": ["nope"]})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
