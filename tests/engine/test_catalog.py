"""The segment catalog: validation, publishing by hard links, segment references everywhere."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from segsrv.engine.catalog import apply_segments, load_catalog_file
from segsrv.ops.conditions import SegmentRef, parse_where
from segsrv.engine.count import count
from segsrv.errors import SpecError, UnknownSegmentError
from segsrv.snapshot.reader import open_snapshot

U = "customers"

CATALOG_TOML = """
universe = "customers"

[segments.helsinki_large]
description = "large pets in helsinki"
where = { region = "helsinki", pet_size = "large" }
priority = 5
tags = ["city", "pets"]

[segments.churners]
where = { churned = true }

[segments.kept_helsinki_large]
description = "helsinki_large that did not churn"
where = '{"$segment": "helsinki_large", "$not": {"$segment": "churners"}}'
priority = 7

[segments.long_tenure]
where = { tenure_months = { "$gte" = 24 } }
priority = 1
"""


def inline_refs(where, catalog):
    """Expand {"$segment": name} in a JSON where form (for the brute-force oracle)."""
    if isinstance(where, dict):
        out = {}
        parts = []
        for k, v in where.items():
            if k == "$segment":
                parts.append(inline_refs(catalog[v]["where"], catalog))
            elif k in ("$and", "$or"):
                out[k] = [inline_refs(x, catalog) for x in v]
            elif k == "$not":
                out[k] = inline_refs(v, catalog)
            else:
                out[k] = v
        if parts:
            return {"$and": [out, *parts]} if out else ({"$and": parts} if len(parts) > 1 else parts[0])
        return out
    return where


@pytest.fixture(scope="module")
def catalog_root(petnord_root, tmp_path_factory):
    """A copy of the PetNord root (hard links) that the catalog tests may publish into."""
    root = tmp_path_factory.mktemp("catalog") / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    return root


@pytest.fixture(scope="module")
def applied(catalog_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog_file") / "segments.toml"
    path.write_text(CATALOG_TOML)
    base = open_snapshot(catalog_root / "petnord")
    vdir, changed = apply_segments(catalog_root / "petnord", path, fit_propensities=False)
    assert changed
    return base, open_snapshot(catalog_root / "petnord"), vdir


def test_apply_publishes_a_new_version_sharing_every_data_file(applied, catalog_root):
    base, snap, vdir = applied
    assert snap.version != base.version and snap.version == vdir.name
    assert (catalog_root / "petnord" / "CURRENT").read_text().strip() == snap.version
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["data_version"] == base.version
    assert manifest["files"] == json.loads((base.path / "manifest.json").read_text())["files"]
    for rel in manifest["files"]:
        a, b = os.stat(base.path / rel), os.stat(vdir / rel)
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev), f"{rel} was copied, not linked"
    # the published version is a complete, verifiable snapshot
    open_snapshot(vdir, verify="full")
    assert sorted(snap.segments) == ["churners", "helsinki_large", "kept_helsinki_large", "long_tenure"]
    seg = snap.segments["helsinki_large"]
    assert seg == {"where": {"region": "helsinki", "pet_size": "large"}, "universe": U,
                   "description": "large pets in helsinki", "priority": 5, "tags": ["city", "pets"]}


def test_segment_sizes_match_brute_force(applied, oracle):
    _, snap, _ = applied
    bu = oracle.universe(U)
    for name, entry in snap.segments.items():
        expected = int(bu.eval(inline_refs(entry["where"], snap.segments)).sum())
        assert count(snap, U, SegmentRef(name)).count == expected, name
        # references inside bigger conditions, as every RPC accepts them
        both = parse_where({"$segment": name, "region": "helsinki"})
        assert count(snap, U, both).count == int(
            (bu.eval(inline_refs(entry["where"], snap.segments)) & bu.eval({"region": "helsinki"})).sum())


def test_reapplying_the_same_catalog_publishes_nothing(applied, catalog_root, tmp_path):
    _, snap, _ = applied
    path = tmp_path / "same.toml"
    path.write_text(CATALOG_TOML)
    # (as applied: without propensity models; a plain apply would add them, test_catalog_models.py)
    vdir, changed = apply_segments(catalog_root / "petnord", path, fit_propensities=False)
    assert not changed and vdir.name == snap.version
    versions = sorted(p.name for p in (catalog_root / "petnord").iterdir() if p.is_dir())
    assert len(versions) == 2


@pytest.mark.parametrize("catalog,needles", [
    ({"a": {"where": {"regio": "helsinki"}, "universe": U}}, ["segments.a", "'regio'", "did you mean 'region'"]),
    ({"a": {"where": {"region": "helsinkii"}, "universe": U}}, ["segments.a", "'helsinkii'"]),
    ({"a": {"where": {"$segment": "nope"}, "universe": U}}, ["segments.a", "'nope'"]),
    ({"a": {"where": {"$segment": "b"}, "universe": U}, "b": {"where": {"$segment": "a"}, "universe": U}},
     ["cycle", "a -> b -> a"]),
    ({"a": {"where": {"region": "helsinki"}}}, ["segments.a.universe", "4 universes"]),
    ({"a": {"where": {"region": "helsinki"}, "universe": "shops"}}, ["unknown universe 'shops'"]),
    ({"a": {"where": {}, "universe": U}}, ["segments.a.where", "non-empty"]),
    ({"a": {"where": {"region": "x"}, "universe": U, "colour": 1}}, ["unknown keys ['colour']"]),
    ({"a": {"where": {"region": "helsinki"}, "universe": U, "priority": "high"}}, ["segments.a.priority"]),
    ({"../x": {"where": {"region": "helsinki"}, "universe": U}}, ["segments.../x", "segment name"]),
    ({"a": {"where": {"$bogus": 1}, "universe": U}}, ["unknown operator"]),
])
def test_bad_catalogs_are_rejected_with_the_segment_named(catalog_root, catalog, needles):
    before = sorted(p.name for p in (catalog_root / "petnord").iterdir())
    current = (catalog_root / "petnord" / "CURRENT").read_text()
    with pytest.raises(SpecError) as err:
        apply_segments(catalog_root / "petnord", catalog)
    for needle in needles:
        assert needle in err.value.message, (needle, err.value.message)
    # nothing published, nothing left behind
    assert sorted(p.name for p in (catalog_root / "petnord").iterdir()) == before
    assert (catalog_root / "petnord" / "CURRENT").read_text() == current


def test_every_problem_is_reported_at_once(catalog_root):
    with pytest.raises(SpecError) as err:
        apply_segments(catalog_root / "petnord", {
            "a": {"where": {"regio": "x"}, "universe": U},
            "b": {"where": {"$segment": "zzz"}, "universe": U},
        })
    assert "2 problems" in err.value.message
    assert {p for p, _ in err.value.violations} == {"segments.a", "segments.b"}


def test_catalog_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[segments.a\nwhere = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_catalog_file(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_catalog_file(tmp_path / "missing.toml")
    extra = tmp_path / "extra.toml"
    extra.write_text('name = "x"\n[segments.a]\nwhere = { region = "oulu" }\n')
    with pytest.raises(SpecError, match="unexpected|found"):
        load_catalog_file(extra)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"universe": U, "segments": {"a": {"where": {"region": "oulu"}}}}))
    assert load_catalog_file(js)["a"]["universe"] == U


def test_unknown_segment_in_a_query(applied):
    _, snap, _ = applied
    with pytest.raises(UnknownSegmentError, match="did you mean 'churners'"):
        count(snap, U, parse_where({"$segment": "churner"}))


def test_replacing_the_catalog_drops_old_segments(applied, catalog_root):
    _, snap, _ = applied
    vdir, changed = apply_segments(catalog_root / "petnord", {"oulu": {"where": {"region": "oulu"}, "universe": U}},
                                   fit_propensities=False)
    assert changed
    new = open_snapshot(catalog_root / "petnord")
    assert list(new.segments) == ["oulu"]
    # the previous version is untouched and still opens with its own catalog
    old = open_snapshot(catalog_root / "petnord", version=snap.version)
    assert "churners" in old.segments
    base_bits = np.asarray(old.universe(U).dense)
    assert np.array_equal(base_bits, np.asarray(new.universe(U).dense))
    # restore the module's catalog for the other tests
    apply_segments(catalog_root / "petnord", {k: dict(v) for k, v in snap.segments.items()}, fit_propensities=False)
    assert open_snapshot(catalog_root / "petnord").version == snap.version
