"""The seed-000 query, verbatim, through the Python client against a real server on the demo shop."""

from __future__ import annotations

import json

import pytest

from segsrv.client import SegsrvClient
from segsrv.demo.generate import generate_demo
from segsrv.service import run_json
from segsrv.server.app import create_server
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from support import DEMO_SEED_QUERY

SEED_QUERY = DEMO_SEED_QUERY


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    spec = generate_demo(tmp_path_factory.mktemp("demo-data"), n_customers=3000, seed=3)
    root = tmp_path_factory.mktemp("demo-snap")
    build_snapshot(spec, root, progress=lambda m: None)
    server, port = create_server(root, port=0, privacy_k=0)
    server.start()
    yield root, f"127.0.0.1:{port}"
    server.stop(0)


def test_seed_query_through_client_equals_in_process(demo_server):
    root, addr = demo_server
    local = run_json("relate", open_snapshot(root), json.loads(json.dumps(SEED_QUERY)))
    with SegsrvClient(addr) as client:
        remote = client.relate(json.loads(json.dumps(SEED_QUERY)))
    local.pop("elapsed_ms")
    remote.pop("elapsed_ms")
    assert remote == local
    assert remote["hits"], "the planted grain-free pattern over-indexes"
    regions = [h["customer.region"] for h in remote["hits"] if h["customer.region"]]
    assert regions[0] == "north"
