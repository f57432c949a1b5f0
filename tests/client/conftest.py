"""Shared fixtures of the client tests: a real server on port 0 over PetNord, and a client of it."""

from __future__ import annotations

import pytest

from segsrv.client import SegsrvClient
from segsrv.server import app


@pytest.fixture(scope="module")
def server_addr(petnord_root):
    server, port = app.create_server(str(petnord_root), host="127.0.0.1", port=0, privacy_k=0)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture(scope="module")
def client(server_addr):
    with SegsrvClient(server_addr, timeout=30) as c:
        yield c

