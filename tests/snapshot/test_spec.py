"""Parsing the TOML build spec: shapes, defaults and every SpecError."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import pytest

from segsrv.errors import SpecError
from segsrv.snapshot.spec import FILE_FORMATS, NumericSpec, infer_format, load_spec, parse_spec, suggest

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "shop",
    "tables": {
        "customers": {"file": "c.csv", "key": "id", "categorical": ["region"],
                      "numeric": {"age": {"edges": [18, 65]}}},
        "orders": {"file": "o.parquet", "key": "oid", "multi": {"tags": "|"},
                   "links": {"customer": {"column": "cid", "table": "customers", "reverse": "orders"}}},
    },
    "universes": {"customers": {"include": ["*", "orders.tags"]}},
}


def raw(**changes):
    """A deep copy of BASE with dotted-path changes; value None deletes the key."""
    out = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def test_base_parses(tmp_path):
    spec = parse_spec(raw(), tmp_path, "fp")
    assert spec.name == "shop" and spec.description == "" and spec.fingerprint == "fp"
    assert spec.dense_threshold == 0.005 and spec.max_hops == 4
    c, o = spec.tables["customers"], spec.tables["orders"]
    assert c.file == tmp_path / "c.csv" and c.format == "csv" and c.key == "id"
    assert o.format == "parquet"
    assert c.numeric["age"] == NumericSpec("age", edges=(18.0, 65.0))
    assert o.multi == {"tags": "|"}
    link = o.links["customer"]
    assert (link.name, link.column, link.table, link.reverse) == ("customer", "cid", "customers", "orders")
    assert c.feature_columns() == {"region": "categorical", "age": "numeric"}
    u = spec.universes["customers"]
    assert u.table == "customers" and u.include == ["*", "orders.tags"] and u.exclude == []


def test_defaults_and_options(tmp_path):
    r = raw(universes={"o": {"table": "orders"}}, build={"dense_threshold": 0.25, "max_hops": 2},
            description="d")
    r["tables"]["customers"]["numeric"] = {"a": True, "b": {}, "c": {"quantiles": 10}}
    r["tables"]["customers"]["file"] = "/abs/c.txt"
    r["tables"]["customers"]["format"] = "tsv"
    r["tables"]["customers"]["delimiter"] = "|"
    r["tables"]["orders"] = {"sql": "SELECT 1 AS oid", "key": "oid"}
    spec = parse_spec(r, tmp_path)
    c = spec.tables["customers"]
    assert c.file == Path("/abs/c.txt") and c.format == "tsv" and c.delimiter == "|"
    assert c.numeric["a"] == NumericSpec("a", quantiles=4) == NumericSpec("a", quantiles=4)
    assert c.numeric["b"].quantiles == 4 and c.numeric["c"].quantiles == 10
    assert spec.tables["orders"].sql == "SELECT 1 AS oid" and spec.tables["orders"].file is None
    assert spec.universes["o"].include == ["*"]
    assert (spec.dense_threshold, spec.max_hops, spec.description) == (0.25, 2, "d")


@pytest.mark.parametrize("name,fmt", [
    ("a.csv", "csv"), ("A.CSV.GZ", "csv"), ("a.tsv", "tsv"), ("a.tsv.gz", "tsv"), ("a.parquet", "parquet"),
    ("a.pq", "parquet"), ("a.json", "json"), ("a.json.gz", "json"), ("a.ndjson", "ndjson"),
    ("a.jsonl", "ndjson"), ("a.ndjson.gz", "ndjson"), ("a.jsonl.gz", "ndjson"), ("a.txt", None), ("a.gz", None),
])
def test_infer_format(name, fmt):
    assert infer_format(Path(name)) == fmt
    assert fmt is None or fmt in FILE_FORMATS


def test_load_petnord_spec():
    path = REPO / "specs" / "petnord.toml"
    spec = load_spec(path)
    assert spec.name == "petnord"
    assert spec.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.base_dir == path.resolve().parent
    assert spec.tables["customers"].file == path.resolve().parent / "../../shared/data/petnord/customers.json.gz"
    assert {t.format for t in spec.tables.values()} == {"json"}
    assert spec.tables["order_lines"].links["order"].reverse == "lines"
    assert spec.tables["customers"].numeric["total_orders"].quantiles == 4
    assert set(spec.universes) == {"customers", "orders", "order_lines", "impressions"}


def test_load_spec_errors(tmp_path):
    with pytest.raises(SpecError, match=r"spec file '.*missing\.toml' does not exist"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[tables.a\n')
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML: "):
        load_spec(bad)
    bad.write_bytes(b'name = "\xff"\n')
    with pytest.raises(SpecError, match=r"not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"cannot be read"):
        load_spec(tmp_path)  # a directory


ERRORS = [
    (dict(extra=1), r"^spec: unknown key 'extra'; allowed: \['build', 'description', 'models', 'name', 'shards', 'tables', 'universes'\]$"),
    (dict(nmae="x"), r"unknown key 'nmae' \(did you mean 'name'\?\)"),
    (dict(name=None), r"^spec\.name: expected a snapshot name .* got None$"),
    (dict(name="a b"), r"^spec\.name: .*got 'a b'$"),
    (dict(tables=None), r"^spec: no \[tables\.\*\] declared$"),
    (dict(tables={}), r"^spec: no \[tables\.\*\] declared$"),
    (dict(tables="x"), r"^tables: expected dict, got str 'x'$"),
    (dict(universes=None), r"^spec: no \[universes\.\*\] declared$"),
    (dict(build={"dense_threshold": 1.5}), r"^build\.dense_threshold: expected a fraction 0\.\.1, got 1\.5$"),
    (dict(build={"dense_threshold": -0.1}), r"build\.dense_threshold"),
    (dict(build={"dense_threshold": "a lot"}), r"^build\.dense_threshold: expected a fraction 0\.\.1, got 'a lot'$"),
    (dict(build={"dense_threshold": True}), r"build\.dense_threshold"),
    (dict(build={"max_hops": 0}), r"^build\.max_hops: expected an integer 1\.\.8, got 0$"),
    (dict(build={"max_hops": 9}), r"build\.max_hops"),
    (dict(build={"max_hops": 2.0}), r"build\.max_hops"),
    (dict(build={"max_hops": True}), r"build\.max_hops"),
    (dict(build={"threads": 2}), r"^build: unknown key 'threads'"),
    (dict(tables__customers__fiel="c.csv"), r"^tables\.customers: unknown key 'fiel' \(did you mean 'file'\?\)"),
    (dict(tables__customers__sql="SELECT 1"), r"^tables\.customers: give exactly one of 'file' or 'sql'$"),
    (dict(tables__customers__file=None), r"^tables\.customers: give exactly one of 'file' or 'sql'$"),
    (dict(tables__customers__key=None), r"^tables\.customers: missing 'key' \(the column that identifies a row\)$"),
    (dict(tables__customers__key=3), r"^tables\.customers\.key: expected str, got int 3$"),
    (dict(tables__customers__file="c.xlsx"), r"^tables\.customers\.file: cannot tell the format of 'c\.xlsx'.*set format"),
    (dict(tables__customers__format="excel"), r"^tables\.customers\.format: 'excel' is not one of"),
    (dict(tables__customers__categorical="region"), r"^tables\.customers\.categorical: expected list, got str"),
    (dict(tables__customers__categorical=["region", 3]), r"^tables\.customers\.categorical: expected str, got int 3"),
    (dict(tables__orders__multi={"tags": ""}), r"^tables\.orders\.multi\.tags: expected a non-empty delimiter string"),
    (dict(tables__orders__multi={"tags": 1}), r"tables\.orders\.multi\.tags"),
    (dict(tables__customers__numeric={"age": {"edges": [1], "quantiles": 3}}),
     r"^tables\.customers\.numeric\.age: give exactly one of 'edges' \(list of numbers\) or 'quantiles' \(int\)$"),
    (dict(tables__customers__numeric={"age": {}}) | {"tables__customers__numeric": {"age": {"bins": 3}}},
     r"tables\.customers\.numeric\.age: unknown key 'bins'"),
    (dict(tables__customers__numeric={"age": {"edges": [3, 3]}}), r"\.edges: must be strictly ascending, got \[3, 3\]$"),
    (dict(tables__customers__numeric={"age": {"edges": [5, 1]}}), r"must be strictly ascending"),
    (dict(tables__customers__numeric={"age": {"edges": []}}), r"\.edges: expected a non-empty list of numbers"),
    (dict(tables__customers__numeric={"age": {"edges": ["1"]}}), r"\.edges: expected a non-empty list of numbers"),
    (dict(tables__customers__numeric={"age": {"edges": [True]}}), r"\.edges: expected a non-empty list of numbers"),
    (dict(tables__customers__numeric={"age": {"quantiles": 1}}), r"\.quantiles: expected an integer 2\.\.100, got 1$"),
    (dict(tables__customers__numeric={"age": {"quantiles": 101}}), r"\.quantiles: expected an integer 2\.\.100"),
    (dict(tables__customers__numeric={"age": 4}), r"^tables\.customers\.numeric\.age: expected dict, got int 4$"),
    (dict(tables__customers__numeric={"region": True}),
     r"^tables\.customers: column 'region' is declared both categorical and numeric$"),
    (dict(tables__customers__categorical=["a.b"]), r"column name 'a\.b' contains a dot; rename it with a sql table"),
    (dict(tables__orders__categorical=["customer"]), r"'customer' is both a link name and a feature column"),
    (dict(tables__orders__links={"customer": {"column": "cid"}}), r"^tables\.orders\.links\.customer: missing 'table'$"),
    (dict(tables__orders__links={"customer": {"table": "customers"}}), r"links\.customer: missing 'column'$"),
    (dict(tables__orders__links={"customer": {"column": "cid", "table": "customers", "reverese": "x"}}),
     r"links\.customer: unknown key 'reverese' \(did you mean 'reverse'\?\)"),
    (dict(tables__orders__links={"a.b": {"column": "cid", "table": "customers"}}),
     r"link name 'a\.b' must be an identifier \(no dots\)"),
    (dict(tables__orders__links={"customer": {"column": "cid", "table": "customers", "reverse": "my.orders"}}),
     r"^tables\.orders\.links\.customer\.reverse: reverse name 'my\.orders' must be an identifier"),
    (dict(tables__orders__links={"customer": {"column": "cid", "table": "custmers"}}),
     r"^tables\.orders\.links\.customer\.table: unknown table 'custmers' \(did you mean 'customers'\?\)$"),
    (dict(tables__orders__links={"customer": {"column": "cid", "table": "customers", "reverse": "region"}}),
     r"reverse: 'region' clashes with a link or column of table 'customers'"),
    (dict(tables__orders__links={
        "customer": {"column": "cid", "table": "customers", "reverse": "orders"},
        "buyer": {"column": "bid", "table": "customers", "reverse": "orders"}}),
     r"links\.buyer\.reverse: 'orders' is already the reverse name of orders\.customer on table 'customers'"),
    (dict(tables__orders__links={"customer": {"column": "cid", "table": "customers", "reverse": 5}}),
     r"links\.customer\.reverse: expected str, got int 5"),
    (dict(universes={"customers": "all"}), r"^universes\.customers: expected dict, got str 'all'$"),
    (dict(universes={"people": {}}), r"^universes\.people\.table: unknown table 'people'"),
    (dict(universes={"c": {"table": "custmer"}}), r"unknown table 'custmer' \(did you mean 'customers'\?\)"),
    (dict(universes={"c": {"table": "customers", "inclde": ["*"]}}), r"^universes\.c: unknown key 'inclde'"),
    (dict(universes={"c": {"table": "customers", "include": "*"}}), r"^universes\.c\.include: expected list"),
    (dict(universes={"c": {"table": "customers", "include": [1]}}), r"^universes\.c\.include: expected str"),
    (dict(universes={"c.d": {"table": "customers"}}), r"^universes\.c\.d: universe name must be an identifier$"),
    (dict(tables={"a b": {"file": "x.csv", "key": "k"}}), r"^tables\.a b: table name must be an identifier$"),
]


@pytest.mark.parametrize("changes,pattern", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_spec_errors(changes, pattern, tmp_path):
    with pytest.raises(SpecError) as info:
        parse_spec(raw(**changes), tmp_path)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_toml_level_errors(tmp_path):
    """The same checks through load_spec on real TOML text."""
    p = tmp_path / "s.toml"
    p.write_text('name = "s"\n[tables.t]\nfile = "t.csv"\nkey = "id"\nlinks = { u = { column = "x", table = "v" } }\n'
                 '[universes.t]\n')
    with pytest.raises(SpecError, match=r"tables\.t\.links\.u\.table: unknown table 'v'"):
        load_spec(p)
    p.write_text('name = "s"\n[tabels.t]\n')
    with pytest.raises(SpecError, match=r"unknown key 'tabels' \(did you mean 'tables'"):
        load_spec(p)


def test_suggest():
    assert suggest("regoin", ["region", "segment"]) == " (did you mean 'region'?)"
    assert suggest("zzz", ["region"]) == ""
