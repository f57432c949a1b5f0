"""Fixtures shared by every test suite.

petnord_root / petnord_snapshot: the PetNord snapshot (specs/petnord.toml over
the data in /work/shared/data/petnord), built once per test session into a
temporary directory and opened read-only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
try:
    import segsrv  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO))

PETNORD_SPEC = REPO / "specs" / "petnord.toml"


@pytest.fixture(scope="session")
def petnord_spec_path() -> Path:
    return PETNORD_SPEC


@pytest.fixture(scope="session")
def petnord_root(tmp_path_factory) -> Path:
    """Root directory holding the built PetNord snapshot (ROOT/petnord/VERSION)."""
    from segsrv.snapshot.builder import build_snapshot

    root = tmp_path_factory.mktemp("petnord_snapshot")
    build_snapshot(PETNORD_SPEC, root, progress=lambda m: None)
    return root


@pytest.fixture(scope="session")
def petnord_snapshot(petnord_root):
    from segsrv.snapshot.reader import open_snapshot

    return open_snapshot(petnord_root)
