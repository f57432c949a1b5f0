"""Fixtures of the Ray tests: one local Ray instance for the tests of tests/ray, a 4-shard PetNord build.

Ray is the optional extra (`pip install segsrv[ray]`; scripts/setup.sh --dev installs it): without it these
tests are skipped. The instance is small (2 CPUs: this machine's, shared) and stopped at the end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from segsrv.snapshot.shardbuild import build_shards
from support import quiet

ray = pytest.importorskip("ray")

SHARD_COUNT = 4
RAY_START_ATTEMPTS = 3


@pytest.fixture(scope="package")
def ray_instance():
    for attempt in range(RAY_START_ATTEMPTS):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:  # Ray waits a fixed 30 s for its raylet to register: a loaded machine may miss it
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS - 1:
                raise
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="package")
def shard_count() -> int:
    return SHARD_COUNT


@pytest.fixture(scope="package")
def petnord_sharded4(tmp_path_factory, petnord_spec):
    """PetNord built locally (in this process) with 4 shards: ROOT/petnord."""
    root = tmp_path_factory.mktemp("petnord_4_shards")
    build_shards(replace(petnord_spec, shard_entity="customers"), root, SHARD_COUNT, progress=quiet)
    return root / "petnord"
