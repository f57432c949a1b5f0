"""segsrv diff (segsrv.engine.diff): every figure equals a brute-force comparison.

Two versions of PetNord are built from modified copies of the source tables:

* A: every customer but CUST-02901..03000 (their orders, lines, impressions go too);
* B: every customer but CUST-00001..00100; customers 101..400 moved to the next
  region, 401..600 flipped churned, 601..700 lost their orders, 701..1000 gained
  12 months of tenure; product category "grooming" renamed "care".

Each data version gets a segment catalog with ``apply_segments`` (published as
versions A and B). The oracle below reads the two table
copies back with pandas and works with Python sets of customer ids: segment
membership by evaluating the JSON definitions itself, feature membership by
joining the tables along each field path. Nothing in it reads the snapshots.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from segsrv.engine.diff import align_ids, diff_versions, in_sorted, open_versions
from segsrv.ops.diff import diff_json, id_list, render_report, write_id_lists
from segsrv.errors import NoCatalogError
from segsrv.errors import QueryError, SnapshotNotFoundError, UnknownFieldError, UnknownSegmentError
from segsrv.snapshot import format as fmt
from segsrv.engine.catalog import apply_segments
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "petnord.toml"
DATA = (REPO / ".." / "shared" / "data" / "petnord").resolve()
TABLES = ("customers", "products", "orders", "order_lines", "impressions")
REGIONS = ["espoo", "helsinki", "jyvaskyla", "oulu", "tampere", "turku"]

C = "customers"
CATALOG_A = {
    "helsinki_churners": {"universe": C, "where": {"region": "helsinki", "churned": True},
                          "description": "churned customers in Helsinki"},
    "dog_dry_food": {"universe": C, "where": {"segment": "dog_owner", "orders.lines.product.category": "dry-food"}},
    "long_tenure": {"universe": C, "where": {"tenure_months": {"$gte": 24}}},
    "loyal_or_premium": {"universe": C, "where": {"$or": [{"lifestyle": "premium"}, {"brand_loyalty": "loyal"}]}},
    "staying_long": {"universe": C, "where": {"$segment": "long_tenure", "churned": {"$ne": True}}},
    "groomers": {"universe": C, "where": {"orders.lines.product.category": "grooming"}},
    "redefined": {"universe": C, "where": {"region": "turku"}},
    "only_in_a": {"universe": C, "where": {"region": "oulu"}},
    "jan_orders": {"universe": "orders", "where": {"month": "2026-01"}},
}
CATALOG_B = {k: v for k, v in CATALOG_A.items() if k not in ("only_in_a", "groomers")}  # no "grooming" in B
CATALOG_B["redefined"] = {"universe": C, "where": {"region": ["turku", "espoo"]}}
CATALOG_B["only_in_b"] = {"universe": C, "where": {"lifestyle": "budget", "churned": False}}

# fields the oracle computes: own categorical columns and categorical fields through reverse links
OWN = ["segment", "region", "lifestyle", "pet_size", "brand_loyalty", "churned", "health_focus", "treat_affinity",
       "last_order_month"]
EXISTS = {  # field -> (path of tables, column)
    "orders.lines.product.category": ("lines", "category"),
    "orders.lines.product.pet_type": ("lines", "pet_type"),
    "orders.lines.returned": ("lines", "returned"),
    "impressions.surface": ("impressions", "surface"),
    "impressions.product.category": ("impressions_product", "category"),
}
FIELDS = OWN + list(EXISTS)


# ----------------------------------------------------------------------------
# the two versions
# ----------------------------------------------------------------------------


def cust_no(cid: str) -> int:
    return int(cid.split("-")[1])


def load_tables() -> dict[str, list[dict]]:
    out = {}
    for t in TABLES:
        with gzip.open(DATA / f"{t}.json.gz", "rt", encoding="utf-8") as fh:
            out[t] = json.load(fh)
    return out


def keep_customers(t: dict, keep) -> dict:
    """Only customers with keep(number); their orders, lines and impressions."""
    t = dict(t)
    t["customers"] = [c for c in t["customers"] if keep(cust_no(c["customer_id"]))]
    ids = {c["customer_id"] for c in t["customers"]}
    t["orders"] = [o for o in t["orders"] if o["customer_id"] in ids]
    oids = {o["order_id"] for o in t["orders"]}
    t["order_lines"] = [line for line in t["order_lines"] if line["order_id"] in oids]
    t["impressions"] = [i for i in t["impressions"] if i["customer_id"] in ids]
    return t


def variant_a(t: dict) -> dict:
    return keep_customers(t, lambda n: n <= 2900)


def variant_b(t: dict) -> dict:
    t = keep_customers(t, lambda n: n > 100)
    customers = []
    for c in t["customers"]:
        c, n = dict(c), cust_no(c["customer_id"])
        if 101 <= n <= 400:
            c["region"] = REGIONS[(REGIONS.index(c["region"]) + 1) % len(REGIONS)]
        elif 401 <= n <= 600:
            c["churned"] = not c["churned"]
        elif 701 <= n <= 1000:
            c["tenure_months"] = c["tenure_months"] + 12
        customers.append(c)
    t["customers"] = customers
    dropped = {o["order_id"] for o in t["orders"] if 601 <= cust_no(o["customer_id"]) <= 700}
    t["orders"] = [o for o in t["orders"] if o["order_id"] not in dropped]
    t["order_lines"] = [line for line in t["order_lines"] if line["order_id"] not in dropped]
    t["products"] = [dict(p, category="care") if p["category"] == "grooming" else p for p in t["products"]]
    return t


def write_copy(tables: dict, directory: Path) -> Path:
    """The tables as .json in DIRECTORY and a copy of the PetNord spec reading them."""
    directory.mkdir(parents=True)
    for name, rows in tables.items():
        (directory / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    spec = SPEC.read_text().replace("../../shared/data/petnord/", "").replace(".json.gz", ".json")
    assert spec.count('file = "') == len(TABLES) and 'file = "../' not in spec
    path = directory / "petnord.toml"
    path.write_text(spec)
    return path


def write_catalog(vdir: Path, catalog: dict) -> None:
    """Put a catalog into a version's manifest by hand (its checksums cover only the data files):
    for states `segsrv segments apply` refuses to produce (a segment that fails to evaluate)."""
    manifest = json.loads((vdir / fmt.MANIFEST).read_text())
    manifest["segments"] = catalog
    fmt.write_atomic(vdir / fmt.MANIFEST, fmt.dumps_manifest(manifest))


def build_versions(base: Path) -> SimpleNamespace:
    tables = load_tables()
    root = base / "root"
    dirs = {}
    for version, variant, catalog in (("A", variant_a, CATALOG_A), ("B", variant_b, CATALOG_B)):
        spec = write_copy(variant(tables), base / f"data-{version}")
        build_snapshot(spec, root, version=f"{version}-data", progress=lambda m: None, threads=1)
        vdir, changed = apply_segments(root / "petnord", catalog, version=version, fit_propensities=False)
        assert changed and vdir == root / "petnord" / version
        dirs[version] = spec.parent
    return SimpleNamespace(root=root, name_dir=root / "petnord", data=dirs)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    return build_versions(tmp_path_factory.mktemp("diff"))


@pytest.fixture(scope="module")
def snaps(versions):
    return open_versions(versions.name_dir, "A", "B")


@pytest.fixture(scope="module")
def brute(versions):
    return {v: Brute(d) for v, d in versions.data.items()}


# ----------------------------------------------------------------------------
# the oracle: pandas joins and Python sets, over the table copies
# ----------------------------------------------------------------------------


def text(v) -> str | None:
    if v is None or isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v)


class Brute:
    def __init__(self, data_dir: Path):
        def read(name):
            return pd.DataFrame(json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8")))

        self.t = {name: read(name) for name in TABLES}
        cust = self.t["customers"]
        self.ids = {C: set(cust["customer_id"]), "orders": set(self.t["orders"]["order_id"])}
        self._features: dict[tuple[str, str], dict[str, set]] = {}

    def features(self, universe: str, field: str) -> dict[str, set]:
        """value -> ids of the universe's rows with field=value."""
        key = (universe, field)
        if key in self._features:
            return self._features[key]
        t = self.t
        if universe == "orders":
            if field == "month":
                pairs = t["orders"][["order_id", "month"]].to_numpy()
            elif field == "customer.region":
                pairs = t["orders"].merge(t["customers"], on="customer_id")[["order_id", "region"]].to_numpy()
            else:
                raise KeyError(field)
        elif field in OWN:
            pairs = t["customers"][["customer_id", field]].to_numpy()
        else:
            path, column = EXISTS[field]
            if path == "lines":
                m = t["order_lines"].merge(t["orders"], on="order_id").merge(
                    t["products"], left_on="product_sku", right_on="sku")
            elif path == "impressions":
                m = t["impressions"]
            else:
                m = t["impressions"].merge(t["products"], left_on="product_sku", right_on="sku")
            pairs = m[["customer_id", column]].to_numpy()
        out: dict[str, set] = {}
        for i, v in pairs:
            tv = text(v)
            if tv is not None:
                out.setdefault(tv, set()).add(i)
        self._features[key] = out
        return out

    def eval(self, universe: str, where, catalog: dict) -> set:
        every = self.ids[universe]
        out = set(every)
        for key, val in (where or {}).items():
            if key == "$and":
                m = set(every)
                for item in val:
                    m &= self.eval(universe, item, catalog)
            elif key == "$or":
                m = set()
                for item in val:
                    m |= self.eval(universe, item, catalog)
            elif key == "$not":
                m = every - self.eval(universe, val, catalog)
            elif key == "$segment":
                m = self.eval(universe, catalog[val]["where"], catalog)
            elif isinstance(val, list):
                m = set().union(*(self.features(universe, key).get(text(v), set()) for v in val))
            elif isinstance(val, dict) and set(val) == {"$ne"}:
                m = every - self.features(universe, key).get(text(val["$ne"]), set())
            elif isinstance(val, dict):
                assert universe == C and set(val) == {"$gte"}
                cust = self.t["customers"]
                m = set(cust.loc[cust[key] >= val["$gte"], "customer_id"])
            else:
                m = self.features(universe, key).get(text(val), set())
            out &= m
        return out

    def members(self, name: str, catalog: dict) -> set:
        seg = catalog[name]
        return self.eval(seg["universe"], seg["where"], catalog)


def brute_lifts(bru: Brute, universe: str, members: set, fields) -> dict[tuple[str, str], tuple]:
    """(field, value) -> (support, P(f|s), P(f), lift) for every feature of the fields."""
    n, n_s = len(bru.ids[universe]), len(members)
    out = {}
    for f in fields:
        for value, rows in bru.features(universe, f).items():
            n_f, n_sf = len(rows), len(rows & members)
            p, base = n_sf / n_s, n_f / n
            out[(f, value)] = (n_sf, p, base, p / base)
    return out


def close(a, b, tol=1e-12):
    if a is None or b is None:
        return a is b
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def move_key(sa, sb) -> float:
    la, lb = sa[3], sb[3]
    if la == 0 and lb == 0:
        return 0.0
    if la == 0 or lb == 0:
        return math.inf
    return abs(math.log(lb / la))


def ranks_before(x, y) -> bool:
    """(key, support) x may come before y: a larger key, or an equal key (to rounding) and no smaller support."""
    if x[0] == y[0] or math.isclose(x[0], y[0], rel_tol=1e-9, abs_tol=1e-9):
        return x[1] >= y[1]
    return x[0] > y[0]


# ----------------------------------------------------------------------------
# membership: sizes, joined, left, stayed, Jaccard
# ----------------------------------------------------------------------------


def test_membership_equals_bruteforce(snaps, brute):
    snap_a, snap_b = snaps
    res = diff_versions(snap_a, snap_b)
    by_name = {d.name: d for d in res.segments}
    assert sorted(by_name) == sorted(set(CATALOG_A) | set(CATALOG_B))
    checked = 0
    for name, d in by_name.items():
        if d.status != "both" or d.error_b or d.error_a:
            continue
        u = CATALOG_B[name]["universe"]
        ma, mb = brute["A"].members(name, CATALOG_A), brute["B"].members(name, CATALOG_B)
        na, nb = len(brute["A"].ids[u]), len(brute["B"].ids[u])
        assert (d.universe_a, d.universe_b) == (u, u)
        assert (d.size_a, d.size_b, d.n_rows_a, d.n_rows_b) == (len(ma), len(mb), na, nb), name
        assert close(d.share_a, len(ma) / na) and close(d.share_b, len(mb) / nb)
        assert d.joined == len(mb - ma) and d.left == len(ma - mb) and d.stayed == len(ma & mb), name
        assert close(d.jaccard, len(ma & mb) / len(ma | mb)), name
        assert d.joined_new == len((mb - ma) - brute["A"].ids[u]), name
        assert d.left_gone == len((ma - mb) - brute["B"].ids[u]), name
        assert set(id_list(d.joined_ids)) == mb - ma and set(id_list(d.left_ids)) == ma - mb, name
        assert list(d.joined_new_mask) == [i not in brute["A"].ids[u] for i in id_list(d.joined_ids)]
        assert list(d.left_gone_mask) == [i not in brute["B"].ids[u] for i in id_list(d.left_ids)]
        checked += 1
    assert checked == 7  # every segment of both catalogs that evaluates in both versions
    # the planted drift is visible
    lt = by_name["long_tenure"]
    assert lt.joined > 50 and lt.left == lt.left_gone > 0  # 701..1000 gained a year; only gone ids left
    assert by_name["helsinki_churners"].left > 0 and by_name["helsinki_churners"].joined > 0
    jan = by_name["jan_orders"]  # orders are matched by order id: only new orders join, only dropped ones leave
    assert jan.universe == "orders" and jan.left == jan.left_gone > 0 and jan.joined == jan.joined_new > 0
    # universes: ids in both versions, by external id
    cu = res.universes[C]
    ids_a, ids_b = brute["A"].ids[C], brute["B"].ids[C]
    assert (cu.n_rows_a, cu.n_rows_b, cu.common, cu.only_a, cu.only_b) == (
        len(ids_a), len(ids_b), len(ids_a & ids_b), len(ids_a - ids_b), len(ids_b - ids_a))
    assert (cu.only_a, cu.only_b) == (100, 100)
    ou = res.universes["orders"]
    assert ou.common == len(brute["A"].ids["orders"] & brute["B"].ids["orders"])


def test_added_removed_changed_and_failing_segments(snaps, brute, versions, tmp_path):
    res = diff_versions(*snaps)
    by_name = {d.name: d for d in res.segments}
    a = by_name["only_in_a"]
    assert a.status == "removed" and a.universe_b is None
    assert a.size_a == len(brute["A"].members("only_in_a", CATALOG_A)) and a.size_b is None
    assert a.joined is None and a.jaccard is None and a.moved == []
    b = by_name["only_in_b"]
    assert b.status == "added" and b.size_b == len(brute["B"].members("only_in_b", CATALOG_B)) and b.size_a is None
    assert by_name["redefined"].definition_changed and not by_name["long_tenure"].definition_changed
    assert by_name["groomers"].status == "removed"  # apply refused it in B: "grooming" is no category there
    # a reference segment counts with its definition in each version
    assert by_name["staying_long"].size_b == len(brute["B"].members("staying_long", CATALOG_B))
    # a segment that does not evaluate in a version (put into B's manifest by hand) carries the reason
    copy = tmp_path / "root" / "petnord"
    for v in ("A", "B"):
        shutil.copytree(versions.name_dir / v, copy / v)
    (copy / "CURRENT").write_text("B\n")
    write_catalog(copy / "B", {**open_snapshot(copy / "B").segments, "groomers": CATALOG_A["groomers"]})
    res = diff_versions(*open_versions(copy, "A", "B"), segments=["groomers", "long_tenure"])
    g, lt = res.segments
    assert g.status == "both" and g.error_a is None and g.size_b is None and g.joined is None and g.moved == []
    assert g.error_b == ("field 'orders.lines.product.category' has no value 'grooming'; values: ['accessories', "
                         "'aquarium', 'care', 'dental-treats', 'dry-food', 'health', 'litter', 'toys', 'treats', "
                         "'wet-food']")
    assert g.size_a == len(brute["A"].members("groomers", CATALOG_A)) > 0
    assert lt.size_b == by_name["long_tenure"].size_b and lt.error_b is None  # the others are unaffected
    assert diff_json(res)["segments"][0]["error_b"] == g.error_b
    assert f"  error in B: {g.error_b}\n  size     {g.size_a:,} (" in render_report(res)


# ----------------------------------------------------------------------------
# lifts: values, the support floor, the ranking
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_support", [0, 10, 40])
def test_lifts_equal_bruteforce(snaps, brute, min_support):
    top = 8
    res = diff_versions(*snaps, fields=FIELDS, top_features=top, min_support=min_support)
    compared = 0
    for d in res.segments:
        if d.status != "both" or d.error_a or d.error_b or d.universe != C:
            continue
        ma, mb = brute["A"].members(d.name, CATALOG_A), brute["B"].members(d.name, CATALOG_B)
        la, lb = brute_lifts(brute["A"], C, ma, FIELDS), brute_lifts(brute["B"], C, mb, FIELDS)
        # fields named explicitly are compared even when the definition uses them (as in relate)
        both = [k for k in la if k in lb and (la[k][0] >= min_support or lb[k][0] >= min_support)]
        assert d.n_features_compared == len(both), d.name
        assert len(d.moved) == min(top, len(both))
        keys = []
        for m in d.moved:
            k = (m.field, m.value)
            sa, sb = la[k], lb[k]
            assert (m.support_a, m.support_b) == (sa[0], sb[0]), (d.name, k)
            for got, want in ((m.p_a, sa[1]), (m.p_b, sb[1]), (m.base_a, sa[2]), (m.base_b, sb[2]),
                              (m.lift_a, sa[3]), (m.lift_b, sb[3]), (m.delta, sb[3] - sa[3])):
                assert close(got, want), (d.name, k, got, want)
            key = move_key(sa, sb)
            want_lr = (math.log(sb[3] / sa[3]) if sa[3] and sb[3] else
                       0.0 if not sa[3] and not sb[3] else math.inf if sb[3] else -math.inf)
            assert close(m.log_ratio, want_lr)
            keys.append((key, max(sa[0], sb[0])))
        # ranked by |log lift ratio|, then by support; nothing left out ranks higher
        for first, second in zip(keys, keys[1:]):
            assert ranks_before(first, second), (d.name, first, second)
        reported = {(m.field, m.value) for m in d.moved}
        for k in both:
            if k not in reported:
                assert ranks_before(keys[-1], (move_key(la[k], lb[k]), max(la[k][0], lb[k][0]))), (d.name, k)
        # new / missing: (field, value) in one version only, support floor there, ranked by |log lift|
        for moves, present, absent, side in ((d.new_features, lb, la, "b"), (d.missing_features, la, lb, "a")):
            want = {k for k in present if k not in absent and present[k][0] >= max(min_support, 1)}
            got = [(m.field, m.value) for m in moves]
            assert len(got) == min(top, len(want)) and set(got) <= want, (d.name, side)
            for m in moves:
                s = present[(m.field, m.value)]
                assert getattr(m, f"support_{side}") == s[0] and close(getattr(m, f"lift_{side}"), s[3])
                assert m.delta is None and m.log_ratio is None
                assert getattr(m, "support_" + ("a" if side == "b" else "b")) is None
            ks = [(abs(math.log(present[k][3])), present[k][0]) for k in got]
            for first, second in zip(ks, ks[1:]):
                assert ranks_before(first, second)
            for k in want - set(got):
                assert ranks_before(ks[-1], (abs(math.log(present[k][3])), present[k][0]))
        compared += 1
    assert compared == 6


def test_renamed_category_is_new_and_missing(snaps, brute):
    res = diff_versions(*snaps, segments=["dog_dry_food", "loyal_or_premium"], fields=["orders.lines.product.category"],
                        min_support=1, top_features=50)
    for d in res.segments:
        new = {(m.field, m.value) for m in d.new_features}
        gone = {(m.field, m.value) for m in d.missing_features}
        if d.name == "loyal_or_premium":
            assert ("orders.lines.product.category", "care") in new
            assert ("orders.lines.product.category", "grooming") in gone
        assert not new & gone
    assert [d.name for d in res.segments] == ["dog_dry_food", "loyal_or_premium"]


def test_definition_fields_left_out_unless_asked(snaps):
    res = diff_versions(*snaps, top_features=10_000, min_support=1)
    by_name = {d.name: d for d in res.segments}
    for name, banned in (("helsinki_churners", {"region", "churned"}),
                         ("dog_dry_food", {"segment", "orders.lines.product.category"}),
                         ("staying_long", {"tenure_months", "churned"}),  # through $segment long_tenure
                         ("redefined", {"region"})):
        fields = {m.field for m in by_name[name].moved + by_name[name].new_features + by_name[name].missing_features}
        assert fields and not fields & banned, name
    res = diff_versions(*snaps, segments=["helsinki_churners"], top_features=10_000, min_support=1,
                        include_condition_fields=True)
    assert {"region", "churned"} <= {m.field for m in res.segments[0].moved}
    # a glob does not bring them back, an exact name does
    res = diff_versions(*snaps, segments=["helsinki_churners"], fields=["reg*", "churned"], top_features=100,
                        min_support=1)
    assert {m.field for m in res.segments[0].moved} == {"churned"}


def test_every_field_agrees_with_bruteforce_where_the_oracle_reaches(snaps, brute):
    """Without a field list: every reported feature the oracle can compute has its exact figures."""
    res = diff_versions(*snaps, top_features=25, min_support=5)
    n = 0
    for d in res.segments:
        if d.status != "both" or d.error_a or d.error_b or d.universe != C:
            continue
        ma, mb = brute["A"].members(d.name, CATALOG_A), brute["B"].members(d.name, CATALOG_B)
        for m in d.moved:
            if m.field in FIELDS:
                sa = brute_lifts(brute["A"], C, ma, [m.field])[(m.field, m.value)]
                sb = brute_lifts(brute["B"], C, mb, [m.field])[(m.field, m.value)]
                assert (m.support_a, m.support_b) == (sa[0], sb[0]) and close(m.lift_a, sa[3]) and close(m.lift_b, sb[3])
                n += 1
    assert n > 10


def test_orders_universe_lifts(snaps, brute):
    res = diff_versions(*snaps, segments=["jan_orders"], fields=["customer.region"], min_support=1)
    d = res.segments[0]
    ma, mb = brute["A"].members("jan_orders", CATALOG_A), brute["B"].members("jan_orders", CATALOG_B)
    la = brute_lifts(brute["A"], "orders", ma, ["customer.region"])
    lb = brute_lifts(brute["B"], "orders", mb, ["customer.region"])
    assert d.n_features_compared == 6 and len(d.moved) == 6
    for m in d.moved:
        k = (m.field, m.value)
        assert m.support_a == la[k][0] and m.support_b == lb[k][0]
        assert close(m.lift_a, la[k][3]) and close(m.lift_b, lb[k][3])


# ----------------------------------------------------------------------------
# options, errors, output
# ----------------------------------------------------------------------------


def test_options_and_errors(snaps, versions, tmp_path):
    snap_a, snap_b = snaps
    res = diff_versions(snap_a, snap_b, segments=["long_tenure", "groomers", "long_tenure"], top_features=0)
    assert [d.name for d in res.segments] == ["long_tenure", "groomers"]
    assert res.segments[0].moved == [] and res.segments[0].n_features_compared > 0
    assert set(res.universes) == {C}
    with pytest.raises(UnknownSegmentError, match=r"no segment 'long_tenur'.*did you mean 'long_tenure'"):
        diff_versions(snap_a, snap_b, segments=["long_tenur"])
    with pytest.raises(UnknownFieldError, match="matches no field"):
        diff_versions(snap_a, snap_b, fields=["nope.*"])
    for kwargs in ({"top_features": -1}, {"min_support": -2}, {"min_support": 1.5}, {"top_features": True}):
        with pytest.raises(QueryError):
            diff_versions(snap_a, snap_b, **kwargs)
    # a version without a catalog (as built): the message says how to add one
    a, b = open_versions(versions.name_dir, "A-data", "B")
    with pytest.raises(NoCatalogError, match=r"version 'A-data' of snapshot 'petnord' has no segment catalog; "
                                             r"add one with `segsrv segments apply`"):
        diff_versions(a, b)


def test_open_versions(versions):
    a, b = open_versions(versions.root, "A", "CURRENT")  # ROOT holding one snapshot; CURRENT = B
    assert (a.version, b.version) == ("A", "B")
    a, b = open_versions(versions.name_dir / "A", "B", "A")  # a version directory names its snapshot
    assert (a.version, b.version) == ("B", "A")
    with pytest.raises(SnapshotNotFoundError, match=re.escape(
            "no version 'C'; versions: ['A', 'A-data', 'B', 'B-data'] (CURRENT is 'B')")):
        open_versions(versions.name_dir, "A", "C")
    with pytest.raises(SnapshotNotFoundError, match="no version '../petnord/A'"):
        open_versions(versions.name_dir, "../petnord/A", "B")
    with pytest.raises(SnapshotNotFoundError, match="does not exist"):
        open_versions(versions.root / "nope", "A", "B")


def test_json_report_and_id_lists(snaps, tmp_path):
    res = diff_versions(*snaps, top_features=3)
    obj = json.loads(json.dumps(diff_json(res)))  # plain JSON
    assert obj["version_a"] == "A" and obj["version_b"] == "B" and obj["min_support"] == 10
    segs = {s["name"]: s for s in obj["segments"]}
    assert segs["only_in_a"]["status"] == "removed" and segs["only_in_b"]["status"] == "added"
    lt = segs["long_tenure"]
    d = next(d for d in res.segments if d.name == "long_tenure")
    assert (lt["size_a"], lt["size_b"], lt["joined"], lt["left"], lt["jaccard"]) == (
        d.size_a, d.size_b, d.joined, d.left, d.jaccard)
    assert len(lt["moved"]) == 3 and set(lt["moved"][0]) >= {"field", "value", "lift_a", "lift_b", "support_a",
                                                             "support_b", "delta", "log_ratio"}
    text = render_report(res)
    assert text.startswith("petnord: version A (A) -> B (B)\n")
    assert "universe customers: 2,900 -> 2,900 rows (2,800 ids in both, 100 only in A, 100 only in B)" in text
    assert f"segment long_tenure (customers)\n  size     {d.size_a:,} (" in text
    assert "segment only_in_a (customers)  [removed]" in text and "[definition changed]" in text
    assert "lift moved most" in text
    paths = write_id_lists(res, tmp_path / "ids")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{d.name}.csv" for d in res.segments if d.joined_ids is not None)
    rows = pd.read_csv(tmp_path / "ids" / "long_tenure.csv", keep_default_na=False)
    assert list(rows.columns) == ["id", "change", "note"]
    assert (rows["change"] == "joined").sum() == d.joined and (rows["change"] == "left").sum() == d.left
    assert (rows["note"] == "new").sum() == d.joined_new and (rows["note"] == "gone").sum() == d.left_gone


# ----------------------------------------------------------------------------
# id matching helpers
# ----------------------------------------------------------------------------


def test_id_alignment():
    a = np.array([b"C-1", b"C-10", b"C-2"], dtype="S4")
    b = np.array([b"C-10", b"C-100", b"C-2"], dtype="S5")
    x, y = align_ids(a, b)
    assert x.dtype == y.dtype == np.dtype("S5")
    assert list(in_sorted(x, y)) == [False, True, True]
    # a longer id never matches its truncation
    x, y = align_ids(np.array([b"C-100"]), np.array([b"C-10"]))
    assert list(in_sorted(x, y)) == [False]
    # int keys in one version, text in the other: compared as decimal text
    x, y = align_ids(np.array([2, 10, 33], dtype=np.int64), np.array([b"10", b"2", b"4"]))
    assert list(x) == [b"10", b"2", b"33"] and list(in_sorted(x, y)) == [True, True, False]
    x, y = align_ids(np.array([1, 5, 9]), np.array([5, 9, 11]))
    assert list(in_sorted(x, y)) == [False, True, True] and list(in_sorted(y[:0], x)) == []
    assert list(in_sorted(x, y[:0])) == [False] * 3
