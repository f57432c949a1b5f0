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


# -- limits on names and globs (issue 14, item 4) ----------------------------------------------------


def test_pattern_lists_are_bounded_in_length_count_and_globs(snap):
    from segsrv.engine.fields import MAX_FIELD_PATTERNS, MAX_GLOBS, MAX_PATTERN_CHARS, select_fields
    from segsrv.errors import LimitExceededError

    u = snap.universe("customers")
    assert select_fields(u, ["r" + "?" * 5], set()) == ["region"]
    with pytest.raises(LimitExceededError, match=f"exceeds the maximum {MAX_PATTERN_CHARS}"):
        select_fields(u, ["*" * (MAX_PATTERN_CHARS + 1)], set(), key="fields")
    with pytest.raises(LimitExceededError, match=f"exceed the maximum {MAX_GLOBS} per list"):
        select_fields(u, ["r*"] * (MAX_GLOBS + 1), set())
    with pytest.raises(LimitExceededError, match=f"exceed the maximum {MAX_FIELD_PATTERNS}"):
        select_fields(u, ["region"] * (MAX_FIELD_PATTERNS + 1), set())
    assert select_fields(u, ["region"] * (MAX_FIELD_PATTERNS - MAX_GLOBS) + ["r*"] * MAX_GLOBS, set()) == ["region"]


def test_globs_match_in_bounded_time_and_leave_no_cache_behind(snap):
    import fnmatch
    import time

    from segsrv.engine.fields import MAX_GLOBS, MAX_PATTERN_CHARS, select_fields
    from segsrv.errors import UnknownFieldError
    from segsrv.snapshot.paths import match_path

    u = snap.universe("customers")
    cached = fnmatch._compile_pattern.cache_info().currsize  # what fnmatch keeps for each distinct pattern
    t0 = time.process_time()
    for i in range(MAX_GLOBS):
        worst = (f"*a{i}" * MAX_PATTERN_CHARS)[:MAX_PATTERN_CHARS]
        with pytest.raises(UnknownFieldError):
            select_fields(u, [worst], set())
    deep = ".".join(["**"] * 200)  # was exponential in the number of "**"
    assert match_path(deep.split("."), "orders.channel".split("."))
    assert not match_path((deep + ".x").split("."), "a.b.c.d.e.f.g.h".split("."))
    assert time.process_time() - t0 < 5.0
    assert fnmatch._compile_pattern.cache_info().currsize == cached


@pytest.mark.parametrize("pattern,path,expected", [
    ("**", "a.b", True), ("**.b", "b", True), ("a.**", "a", True), ("a.**.c", "a.c", True),
    ("a.**.c", "a.x.y.c", True), ("a.*.c", "a.x.y.c", False), ("*", "a.b", False), ("a.[bc]", "a.c", True),
    ("**.**.c", "c", True), ("a?c", "abc", True), ("a?c", "a.c", False),
])
def test_path_patterns(pattern, path, expected):
    from segsrv.snapshot.paths import match_path

    assert match_path(pattern.split("."), path.split(".")) is expected
