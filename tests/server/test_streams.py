"""Streams that stop reading: they starve no unary call nor health, are bounded, and are cancelled."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc

# A client that stops reading: a private connection with a tiny receive window (no BDP growth), so
# the server's send blocks after ~1 KB instead of ~2 MB of kernel and HTTP/2 buffers.
STALLING = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


def _stalled_export(address: str):
    """An ExportMembers stream (one id per message) that read its first message and stopped."""
    channel = grpc.insecure_channel(address, options=STALLING)
    stream = segsrv_pb2_grpc.SegmentationServiceStub(channel).ExportMembers(
        pb.ExportMembersRequest(universe="customers", chunk_size=1), timeout=60)
    assert next(stream).total_count == 3000
    return channel, stream


def _drain(stream) -> tuple[int, str]:
    """Read the rest of a stream: (ids read, final code name)."""
    n = 0
    try:
        for message in stream:
            n += len(message.ids)
        return n, "OK"
    except grpc.RpcError as exc:
        return n, exc.code().name


def _unary_calls_answer(address: str, seconds: float) -> None:
    """For `seconds`, on a fresh connection, health and Count answer well within 2 s each."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert stub.Count(pb.CountRequest(universe="customers"), timeout=2).row_count == 3000
            time.sleep(0.1)


def test_clients_that_stop_reading_starve_neither_unary_calls_nor_health(petnord_root, start_server):
    # the defaults: 4 handler threads, 4 stream slots (issue 14: four such streams took the server down)
    r = start_server(petnord_root, access_log=False)
    stalled = [_stalled_export(r.address) for _ in range(4)]
    try:
        time.sleep(0.5)  # every stream's sends are blocked by now
        _unary_calls_answer(r.address, 2.0)
        # a fifth stream is refused at once, and says why
        t0 = time.monotonic()
        refused = _drain(segsrv_pb2_grpc.SegmentationServiceStub(r.channel).ExportMembers(
            pb.ExportMembersRequest(universe="customers"), timeout=5))
        assert refused == (0, "RESOURCE_EXHAUSTED") and time.monotonic() - t0 < 2
        try:
            next(segsrv_pb2_grpc.SegmentationServiceStub(r.channel).ScoreSegment(
                pb.ScoreSegmentRequest(universe="customers", target_field="churned", target_value="true"),
                timeout=5))
            raise AssertionError("a stream beyond the limit was served")
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-streams" in exc.details() and "retry" in exc.details()
    finally:
        for channel, stream in stalled:
            stream.cancel()
            channel.close()


def test_a_stalled_stream_is_cancelled_after_the_write_timeout(petnord_root, start_server):
    r = start_server(petnord_root, access_log=False, max_concurrent_streams=1, stream_write_timeout=1.0)
    channel, stream = _stalled_export(r.address)
    try:
        t0 = time.monotonic()
        _unary_calls_answer(r.address, 0.3)
        stub = segsrv_pb2_grpc.SegmentationServiceStub(r.channel)
        assert _drain(stub.ExportMembers(pb.ExportMembersRequest(universe="customers"), timeout=5)) == \
            (0, "RESOURCE_EXHAUSTED")  # the one slot is taken
        # within the timeout plus a watchdog tick the stalled stream is cancelled and its slot is free
        while True:
            n, code = _drain(stub.ExportMembers(pb.ExportMembersRequest(universe="customers"), timeout=5))
            if code == "OK":
                break
            assert code == "RESOURCE_EXHAUSTED" and time.monotonic() - t0 < 5, (n, code)
            time.sleep(0.1)
        assert n == 3000 and time.monotonic() - t0 >= 1.0
        # the stalled client, reading again, gets what was buffered and then CANCELLED, not every id
        n, code = _drain(stream)
        assert code == "CANCELLED" and n < 3000
    finally:
        stream.cancel()
        channel.close()
