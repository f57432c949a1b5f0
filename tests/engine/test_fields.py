"""Which fields a request uses by default: every field but identifier-like ones (segsrv/engine/fields.py).

A snapshot of 400 customers with an e-mail address each (identifier-like: 400 values, one row each), an
order number per customer on a reverse link (identifier-like too) and ordinary fields. Relate, Profile and
Discover leave the identifier-like fields out of "every field" and use them when a request names them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segsrv.engine.discover import discover
from segsrv.engine.fields import IDENTIFIER_MEDIAN_ROWS, IDENTIFIER_MIN_VALUES, identifier_like_fields
from segsrv.engine.profile import profile
from segsrv.engine.relate import relate
from segsrv.ops.conditions import Term
from segsrv.ops.discover import DiscoverQuery
from segsrv.ops.profile import ProfileQuery
from segsrv.ops.relate import RelateQuery


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot

    d = tmp_path_factory.mktemp("idlike")
    rng = np.random.default_rng(5)
    n = 400
    region = rng.choice(["north", "south", "east"], n)
    vip = np.where(region == "north", rng.random(n) < 0.6, rng.random(n) < 0.1)
    pd.DataFrame({"id": np.arange(n), "email": [f"c{i}@example.com" for i in range(n)], "region": region,
                  "vip": vip, "plan": rng.choice(["a", "b"], n)}).to_csv(d / "customers.csv", index=False)
    orders = pd.DataFrame({"order_id": np.arange(2 * n), "customer_id": np.repeat(np.arange(n), 2),
                           "number": [f"N{i:05d}" for i in range(2 * n)],
                           "channel": rng.choice(["web", "app"], 2 * n)})
    orders.to_csv(d / "orders.csv", index=False)
    (d / "spec.toml").write_text('''name = "idlike"
[tables.customers]
file = "customers.csv"
key = "id"
categorical = ["email", "region", "vip", "plan"]
[tables.orders]
file = "orders.csv"
key = "order_id"
categorical = ["number", "channel"]
links = { customer = { column = "customer_id", table = "customers", reverse = "orders" } }
[universes.customers]
table = "customers"
include = ["*", "orders.number", "orders.channel"]
''')
    build_snapshot(d / "spec.toml", d / "root", progress=lambda m: None)
    return open_snapshot(d / "root")


def test_identifier_like_rule(snap):
    u = snap.universe("customers")
    assert identifier_like_fields(u) == ["email", "orders.number"]
    for name in u.fields:
        counts = np.asarray(u.feature_count[u.fields[name].feature_ids])
        expected = len(counts) >= IDENTIFIER_MIN_VALUES and np.median(counts) <= IDENTIFIER_MEDIAN_ROWS
        assert (name in identifier_like_fields(u)) == expected


def test_defaults_leave_them_out_and_names_bring_them_back(snap):
    every = relate(snap, RelateQuery(universe="customers", where=Term("vip", "true"), direction="all", limit=10_000))
    assert {h.field for h in every.hits} <= {"region", "plan", "orders.channel"}
    assert every.n_candidates == 3 + 2 + 2  # region, plan, orders.channel (vip is the condition's own field)
    named = relate(snap, RelateQuery(universe="customers", where=Term("vip", "true"), relate=["email", "region"],
                                     direction="all", limit=10_000))
    assert {h.field for h in named.hits} == {"email", "region"}
    globbed = relate(snap, RelateQuery(universe="customers", where=Term("vip", "true"), relate=["orders.*"],
                                       direction="all", limit=10_000))
    assert "orders.number" in {h.field for h in globbed.hits}

    prof = profile(snap, ProfileQuery(universe="customers", segment=Term("vip", "true")))
    assert {f.field for f in prof.fields} == {"region", "vip", "plan", "orders.channel"}
    prof = profile(snap, ProfileQuery(universe="customers", segment=Term("vip", "true"), fields=["email"]))
    assert [f.field for f in prof.fields] == ["email"]

    found = discover(snap, DiscoverQuery.from_json({"from": "customers", "min_support": 5}))
    assert found.candidates == 2 + 3 + 2 + 2  # vip, region, plan, orders.channel
    assert all(f not in ("email", "orders.number") for s in found.segments for f, _ in s.terms)
    assert any({f for f, _ in s.terms} == {"region", "vip"} for s in found.segments)  # the planted pair
