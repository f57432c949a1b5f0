"""Server test fixtures: a real gRPC server over PetNord, a channel, the stub, error readers.

Helpers that are not fixtures live in tests/support.py (`import support`).
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from segsrv.server.app import create_server
from segsrv.v1 import segsrv_pb2_grpc


class Running:
    def __init__(self, server, port: int):
        self.server = server
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = segsrv_pb2_grpc.SegmentationServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0).wait()


@pytest.fixture
def start_server():
    """start_server(root, **create_server_kwargs) -> Running; stopped at the end of the test."""
    started: list[Running] = []

    def start(root, **kwargs) -> Running:
        kwargs.setdefault("privacy_k", 0)  # exactness tests compare small counts; the floor has its own tests
        server, port = create_server(root, port=0, **kwargs)
        server.start()
        r = Running(server, port)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


@pytest.fixture(scope="session")
def served(petnord_root):
    """One server over PetNord with the default limits, shared by the session."""
    # privacy floor off: these tests compare exact small counts (tests/server/test_privacy.py covers it)
    server, port = create_server(petnord_root, port=0, max_workers=4, privacy_k=0)
    server.start()
    r = Running(server, port)
    yield r
    r.close()


@pytest.fixture(scope="session")
def stub(served):
    return served.stub


@pytest.fixture(scope="session")
def rpc_details():
    """rpc_details(error) -> (code, message, [(field, description)], ErrorInfo or None)."""

    def read(err: grpc.RpcError):
        status = rpc_status.from_call(err)
        violations, info = [], None
        if status is not None:
            for d in status.details:
                if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    d.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
                elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
        return err.code(), err.details(), violations, info

    return read
