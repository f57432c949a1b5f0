"""Shared fixtures of the snapshot tests.

* ``petnord``: the PetNord snapshot (``petnord_snapshot`` of tests/conftest.py,
  built once per session; ``petnord_root``, ``petnord_spec`` and ``petnord_src``
  come from there too);
* ``tiny``: a small CSV dataset + spec (writer function) and ``tiny_root``, it
  built once per session, for reader / CLI tests that damage copies;
* ``snapshot_state``: a picture of a snapshot root (entries, CURRENT, files)
  to prove a failed build left it untouched.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from segsrv.snapshot.builder import build_snapshot
from support import TINY_TABLES, quiet, root_state


@pytest.fixture(scope="session")
def petnord(petnord_snapshot):
    return petnord_snapshot


# --- a tiny dataset -----------------------------------------------------------

TINY_SPEC = """\
name = "tiny"
description = "tiny test shop"

""" + TINY_TABLES + """\
multi = { tags = "|" }
numeric = { total = { edges = [10] } }
links = { customer = { column = "cust_id", table = "customers", reverse = "orders" } }

[build]
dense_threshold = 0.3

[universes.customers]
include = ["*", "orders.channel", "orders.tags"]

[universes.orders]
include = ["*", "customer.*"]
"""

TINY_CUSTOMERS = """\
cust_id,name,region,age
1,Ann,north,25
2,Bob,south,41
3,Cid,north,
4,Dee,east,67
5,Eve,south,33
"""

TINY_ORDERS = """\
order_id,cust_id,channel,tags,total
10,1,web,a|b,5.5
11,1,shop,b,12
12,2,web,,20
13,4,web,c|a,7
14,5,app,a,30
15,5,web,b|c,9
"""


def write_tiny(directory: Path, spec: str = TINY_SPEC, customers: str = TINY_CUSTOMERS,
               orders: str = TINY_ORDERS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "customers.csv").write_text(customers)
    (directory / "orders.csv").write_text(orders)
    path = directory / "spec.toml"
    path.write_text(textwrap.dedent(spec))
    return path


@pytest.fixture
def tiny(tmp_path):
    """Write the tiny dataset into tmp_path/data and return the spec path."""
    return write_tiny(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    spec = write_tiny(base / "data")
    root = base / "root"
    build_snapshot(spec, root, progress=quiet)
    before = root_state(root)
    yield root
    assert root_state(root) == before, "a test modified the published tiny snapshot"


@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    """A private copy of the tiny snapshot root (safe to damage)."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture
def snapshot_state():
    return root_state


class _Tiny:
    spec = TINY_SPEC
    customers = TINY_CUSTOMERS
    orders = TINY_ORDERS
    write = staticmethod(write_tiny)


@pytest.fixture
def tiny_data():
    """The tiny dataset's texts and its writer: tiny_data.write(dir, spec=..., customers=..., orders=...)."""
    return _Tiny
