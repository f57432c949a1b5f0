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
    # 120 s: the first default Predict on a 10-valued target fits 10 models with a cross-validated
    # l2 and the interaction bar (~50 s on a quiet 2-core machine, docs/predict.md Known limits)
    with SegsrvClient(server_addr, timeout=120) as c:
        yield c

