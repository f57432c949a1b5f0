"""Field paths: forward and reverse steps, max_hops, no table twice, segment-wise globs."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsrv.errors import SpecError
from segsrv.snapshot.paths import match_path as _match, enumerate_paths, explain_unknown_path, outgoing_steps, resolve_universe_fields
from segsrv.snapshot.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def shop(max_hops=4, universes=None):
    """customers <- orders <- lines -> products; lines.product has no reverse name."""
    raw = {
        "name": "shop",
        "build": {"max_hops": max_hops},
        "tables": {
            "customers": {"file": "c.csv", "key": "id", "categorical": ["region", "segment"],
                          "numeric": {"age": {"edges": [30]}}},
            "orders": {"file": "o.csv", "key": "id", "categorical": ["month"],
                       "links": {"customer": {"column": "cid", "table": "customers", "reverse": "orders"}}},
            "lines": {"file": "l.csv", "key": "id", "categorical": ["returned"], "numeric": {"qty": True},
                      "links": {"order": {"column": "oid", "table": "orders", "reverse": "lines"},
                                "product": {"column": "sku", "table": "products"}}},
            "products": {"file": "p.csv", "key": "sku", "categorical": ["category"], "multi": {"tags": " "}},
        },
        "universes": universes or {"customers": {}},
    }
    return parse_spec(raw, Path("/nonexistent"))


def test_outgoing_steps():
    spec = shop()
    steps = {s.name: s for s in outgoing_steps(spec, "orders")}
    assert set(steps) == {"customer", "lines"}
    assert (steps["customer"].direction, steps["customer"].target, steps["customer"].owner) == ("forward", "customers", "orders")
    assert (steps["lines"].direction, steps["lines"].target, steps["lines"].owner) == ("reverse", "lines", "lines")
    # a link without a reverse name cannot be walked backwards
    assert [s.name for s in outgoing_steps(spec, "products")] == []


def test_enumerate_paths_shop():
    spec = shop()
    paths = enumerate_paths(spec, "customers")
    assert set(paths) == {
        "region", "segment", "age", "orders.month", "orders.lines.returned", "orders.lines.qty",
        "orders.lines.product.category", "orders.lines.product.tags",
    }
    fp = paths["orders.lines.product.tags"]
    assert fp.semantics == "exists" and fp.kind == "multi" and fp.table == "products" and fp.column == "tags"
    assert [s.direction for s in fp.steps] == ["reverse", "reverse", "forward"]
    assert paths["age"].semantics == "own" and paths["age"].kind == "numeric"
    lines = enumerate_paths(spec, "lines")
    assert lines["order.customer.region"].semantics == "forward"
    assert "order.customer.orders.month" not in lines  # would visit orders twice
    assert "order.lines.returned" not in lines  # would visit lines twice


def test_never_visits_a_table_twice_petnord():
    spec = load_spec(REPO / "specs" / "petnord.toml")
    for root in spec.tables:
        for name, fp in enumerate_paths(spec, root).items():
            tables = [root] + [s.target for s in fp.steps]
            assert len(tables) == len(set(tables)), name
            assert len(fp.steps) <= spec.max_hops
            assert fp.steps == () or fp.steps[-1].target == fp.table
            for a, b in zip(fp.steps, fp.steps[1:]):
                assert a.target == b.source
    cust = enumerate_paths(spec, "customers")
    assert "orders.lines.product.category" in cust
    assert cust["orders.lines.product.category"].semantics == "exists"
    assert not any(n.startswith("orders.customer.") for n in cust)
    assert enumerate_paths(spec, "order_lines")["order.customer.region"].semantics == "forward"


@pytest.mark.parametrize("hops,present,absent", [
    (1, ["orders.month"], ["orders.lines.returned"]),
    (2, ["orders.lines.qty"], ["orders.lines.product.category"]),
    (3, ["orders.lines.product.category"], []),
])
def test_max_hops(hops, present, absent):
    paths = enumerate_paths(shop(max_hops=hops), "customers")
    for p in present:
        assert p in paths
    for p in absent:
        assert p not in paths
    assert max(len(fp.steps) for fp in paths.values()) == hops


def test_max_hops_unknown_path_message():
    spec = shop(max_hops=2, universes={"customers": {"include": ["orders.lines.product.category"]}})
    with pytest.raises(SpecError, match=r"unknown path 'orders\.lines\.product\.category': path .* is longer than "
                                        r"max_hops=2 or revisits a table"):
        resolve_universe_fields(spec, "customers")


@pytest.mark.parametrize("pattern,name,ok", [
    ("*", "region", True),
    ("*", "orders.month", False),           # * stays inside one segment
    ("orders.*", "orders.month", True),
    ("orders.*", "orders.lines.qty", False),
    ("**", "orders.lines.qty", True),
    ("**", "region", True),
    ("**.qty", "orders.lines.qty", True),
    ("**.qty", "qty", True),                 # ** may match zero segments
    ("orders.**", "orders.lines.product.tags", True),
    ("orders.**.tags", "orders.lines.product.tags", True),
    ("orders.**.tags", "orders.tags", True),
    ("orders.**.tags", "order.lines.tags", False),
    ("o*.l*.q*", "orders.lines.qty", True),
    ("o*.q*", "orders.lines.qty", False),
    ("re?ion", "region", True),
    ("[rs]e*", "segment", True),
    ("[rs]e*", "age", False),
    ("region", "Region", False),             # case-sensitive
    ("orders.month", "orders.month", True),
])
def test_segment_glob(pattern, name, ok):
    assert _match(pattern.split("."), name.split(".")) is ok


def names(spec, universe="customers"):
    return [fp.name for fp in resolve_universe_fields(spec, universe)]


def test_resolve_include_exclude():
    spec = shop(universes={"customers": {"include": ["orders.**", "*"], "exclude": ["**.tags", "age"]}})
    assert names(spec) == ["orders.lines.product.category", "orders.lines.qty", "orders.lines.returned",
                           "orders.month", "region", "segment"]  # sorted, whatever the include order
    spec = shop(universes={"customers": {}})
    assert names(spec) == ["age", "region", "segment"]  # include defaults to ["*"]
    spec = shop(universes={"customers": {"include": ["region", "region", "re*"]}})
    assert names(spec) == ["region"]
    spec = shop(universes={"customers": {"include": ["region"], "exclude": ["x*"]}})
    assert names(spec) == ["region"]  # an exclude glob may match nothing


@pytest.mark.parametrize("universe,pattern", [
    ({"include": ["orders.lines.product.colour"]},
     r"unknown path 'orders\.lines\.product\.colour': table 'products' has no feature column 'colour'; "
     r"declared columns: \['category', 'tags'\]"),
    ({"include": ["orders.line.qty"]},
     r"table 'orders' has no link 'line' \(did you mean 'lines'"),
    ({"include": ["orders.lines.product"]},
     r"'product' is a link of table 'lines', not a column; add the column, e.g\. 'orders\.lines\.product\.category'"),
    ({"include": ["regoin"]}, r"table 'customers' has no feature column 'regoin' \(did you mean 'region'\?\)"),
    ({"include": ["orders.*.nope"]}, r"^universes\.customers\.include: pattern 'orders\.\*\.nope' matches no field$"),
    ({"include": ["*"], "exclude": ["*"]}, r"^universes\.customers: no fields left after include/exclude$"),
    ({"include": []}, r"no fields left"),
    ({"include": ["*"], "exclude": ["orders.month"]},
     r"^universes\.customers\.exclude: 'orders\.month' is not an included field"),
])
def test_resolve_errors(universe, pattern):
    spec = shop(universes={"customers": universe})
    with pytest.raises(SpecError, match=pattern):
        resolve_universe_fields(spec, "customers")


def test_explain_revisit():
    spec = shop()
    assert "revisits a table" in explain_unknown_path(spec, "customers", "orders.customer.region")
    spec = shop(universes={"lines": {"include": ["product.lines.returned"]}})
    with pytest.raises(SpecError, match=r"table 'products' has no link 'lines'; links from 'products': \[\]"):
        resolve_universe_fields(spec, "lines")
