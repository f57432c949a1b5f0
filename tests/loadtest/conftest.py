"""Load-test harness fixtures: a PetNord server in this process and what it says about itself.

The harness lives in clients/loadtest (imported as clients.loadtest from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))



@pytest.fixture(scope="session")
def loadtest_server(petnord_root):
    """A PetNord server on 127.0.0.1 (port picked), shared by the load-test tests; yields its address."""
    from segsrv.server.app import create_server

    server, port = create_server(petnord_root, host="127.0.0.1", port=0, privacy_k=0)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.fixture(scope="session")
def petnord_info(loadtest_server):
    """GetSnapshotInfo of every universe, with values (the response proto)."""
    from clients.loadtest.gen import fetch_info

    return fetch_info(loadtest_server)


@pytest.fixture(scope="session")
def petnord_catalog(petnord_info):
    from clients.loadtest.gen import catalog_from_response

    return catalog_from_response(petnord_info, "customers")
