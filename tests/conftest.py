"""Fixtures shared by every test suite.

PetNord (specs/petnord.toml over the data in /work/shared/data/petnord) is built ONCE per test
session, here, and every suite uses it:

* ``petnord_spec_path`` / ``petnord_spec``: the spec (its data files checked to exist);
* ``petnord_root``: the built snapshot root (ROOT/petnord/VERSION), checked at the end of the
  session to be unmodified (tests that corrupt or publish must work on copies);
* ``petnord_snapshot``: it, opened read-only;
* ``petnord_src``: a DuckDB connection holding the PetNord source tables, for brute-force
  expectations independent of segsrv;
* ``source`` / ``oracle``: the pandas brute-force oracle over the source tables (tests/support.py);
* ``petnord_expected``: clients/fixtures/petnord_expected.json (known answers computed by DuckDB
  from the source tables; tests/clients/test_fixture.py keeps it current).

Helpers shared by several suites are in tests/support.py (``import support``; this file puts
tests/ on sys.path for every import mode).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
try:
    import segsrv  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support import Oracle, Source, quiet, tree_digest  # noqa: E402

PETNORD_SPEC = REPO / "specs" / "petnord.toml"
PETNORD_EXPECTED = REPO / "clients" / "fixtures" / "petnord_expected.json"


@pytest.fixture(scope="session")
def petnord_spec_path() -> Path:
    return PETNORD_SPEC


@pytest.fixture(scope="session")
def petnord_spec():
    from segsrv.snapshot.spec import load_spec

    if not PETNORD_SPEC.exists():
        pytest.fail("specs/petnord.toml missing")
    spec = load_spec(PETNORD_SPEC)
    missing = [t.file for t in spec.tables.values() if t.file is not None and not t.file.exists()]
    if missing:
        pytest.fail(f"PetNord data missing (../shared/data/petnord must sit beside the repository): {missing}")
    return spec


@pytest.fixture(scope="session")
def petnord_root(tmp_path_factory, petnord_spec) -> Path:
    """Root directory holding the built PetNord snapshot (ROOT/petnord/VERSION); built once per session."""
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot

    root = tmp_path_factory.mktemp("petnord_snapshot")
    vdir = build_snapshot(PETNORD_SPEC, root, progress=quiet)
    before = tree_digest(vdir)
    yield root
    # the published snapshot must never be modified by any test
    assert tree_digest(vdir) == before, "a test modified the published PetNord snapshot"
    open_snapshot(root, verify="full")


@pytest.fixture(scope="session")
def petnord_rare_root(tmp_path_factory, petnord_spec) -> Path:
    """PetNord built with build.dense_threshold 0.3 (every value below 30% of the rows stored as sparse ids),
    so that each universe holds enough sparse ids for a sparse CSR (segsrv.snapshot.format.sparse_csr_pays;
    the default build's universes hold too few, and have none): the rows method's tests count through it."""
    import dataclasses

    from segsrv.snapshot.builder import build_snapshot

    root = tmp_path_factory.mktemp("petnord_rare")
    build_snapshot(dataclasses.replace(petnord_spec, dense_threshold=0.3), root, progress=quiet)
    return root


@pytest.fixture(scope="session")
def petnord_rare_snapshot(petnord_rare_root):
    from segsrv.snapshot.reader import open_snapshot

    return open_snapshot(petnord_rare_root)


@pytest.fixture(scope="session")
def petnord_snapshot(petnord_root):
    from segsrv.snapshot.reader import open_snapshot

    return open_snapshot(petnord_root)


@pytest.fixture(scope="session")
def petnord_src(petnord_spec):
    import duckdb

    con = duckdb.connect(":memory:")
    for t in petnord_spec.tables.values():
        con.execute(f"CREATE TABLE {t.name} AS SELECT * FROM read_json_auto('{t.file}')")
    yield con
    con.close()


@pytest.fixture(scope="session")
def source(petnord_spec_path) -> Source:
    return Source(petnord_spec_path)


@pytest.fixture(scope="session")
def oracle(source, petnord_snapshot) -> Oracle:
    return Oracle(source, petnord_snapshot)


@pytest.fixture(scope="session")
def petnord_expected() -> dict:
    return json.loads(PETNORD_EXPECTED.read_text())
