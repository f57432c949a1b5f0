"""`segsrv build` over a snapshot with a catalog (segsrv.engine.rebuild): the catalog is carried over to
the new data with its propensity models fitted at build time, so the first Assign fits nothing; a segment
that no longer resolves fails the build (or is dropped with a flag); --no-catalog opts out. Sizes and
memberships are checked against pandas over the source CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segsrv.engine import assign as A
from segsrv.engine import catalog_models as CM
from segsrv.engine.assign import assign
from segsrv.engine.catalog import apply_segments
from segsrv.engine.rebuild import build_version
from segsrv.errors import SpecError
from segsrv.ops import SegmentsQuery
from segsrv.ops.assign import AssignQuery
from segsrv.service import local_service
from segsrv.snapshot.builder import band_labels
from segsrv.snapshot.location import list_versions
from segsrv.snapshot.reader import open_snapshot
from support import quiet, write_small_shop

N = 2_000
CATALOG = {
    "north_pro": {"where": {"region": "north", "plan": "pro"}, "universe": "customers", "priority": 2},
    "big_spenders": {"where": {"spend": {"$gte": 100}}, "universe": "customers"},
    "pro_or_big": {"where": {"$or": [{"$segment": "north_pro"}, {"$segment": "big_spenders"}]},
                   "universe": "customers"},
}


def _brute_members(data_dir) -> dict[str, set]:
    df = pd.read_csv(data_dir / "customers.csv")
    north_pro = set(df.customer_id[(df.region == "north") & (df.plan == "pro")])
    big = set(df.customer_id[df.spend >= 100])
    return {"north_pro": north_pro, "big_spenders": big, "pro_or_big": north_pro | big}


def _manifest(vdir) -> dict:
    return json.loads((vdir / "manifest.json").read_text())


@pytest.fixture
def with_catalog(tmp_path):
    """A shop built from seed 1 with CATALOG applied: (root, the applied version)."""
    root = tmp_path / "root"
    build_version(write_small_shop(tmp_path / "v1", N, seed=1), root, progress=quiet)
    vdir, changed = apply_segments(root / "shop", CATALOG, progress=quiet)
    assert changed
    return root, vdir


def test_rebuild_carries_the_catalog_with_models_fitted_at_build_time(with_catalog, tmp_path):
    root, before = with_catalog
    data = tmp_path / "v2"
    spec = write_small_shop(data, N + 150, seed=2)
    said = []
    CM._FITTED.clear()  # this process's earlier fits would be reused, not fitted
    fits = A.fit_count()
    vdir = build_version(spec, root, progress=said.append)
    assert A.fit_count() - fits == len(CATALOG)  # fitted by the build ...
    assert (root / "shop" / "CURRENT").read_text().strip() == vdir.name != before.name
    manifest = _manifest(vdir)
    assert manifest["segments"] == _manifest(before)["segments"]
    assert sorted(manifest["catalog_models"]["customers"]) == sorted(CATALOG)
    assert manifest["data_version"] != _manifest(before)["data_version"]
    assert any(m.startswith(f"carrying the catalog of version {before.name} (3 segments)") for m in said)
    assert sum(m.startswith("propensity model customers/") and "fitted" in m for m in said) == len(CATALOG)

    expected = _brute_members(data)
    listed = local_service(root / "shop").list_segments(SegmentsQuery())
    assert {s.name: s.size for s in listed.segments} == {name: len(ids) for name, ids in expected.items()}

    snap = open_snapshot(root / "shop")
    ids = list(range(0, N + 150, 37))
    fits = A.fit_count()
    answer = assign(snap, AssignQuery(ids=ids, include_propensities=True))
    assert A.fit_count() == fits  # ... so the first Assign after the rebuild fits nothing
    for customer, got in zip(ids, answer.assignments):
        members = {m.segment for m in got.segments if m.member}
        assert members == {name for name, s in expected.items() if customer in s}
        assert all(0 < m.propensity < 1 for m in got.segments if not m.member)


def test_an_identical_rebuild_publishes_and_fits_nothing(with_catalog, tmp_path):
    root, before = with_catalog
    versions = list_versions(root / "shop")
    fits = A.fit_count()
    assert build_version(tmp_path / "v1" / "spec.toml", root, progress=quiet) == before
    assert A.fit_count() == fits and list_versions(root / "shop") == versions


def test_a_segment_that_no_longer_resolves_fails_the_build_naming_it(with_catalog, tmp_path):
    root, before = with_catalog
    versions = list_versions(root / "shop")
    spec = write_small_shop(tmp_path / "v2", N, seed=2, plans=("basic", "plus"))  # no "pro" plan any more
    with pytest.raises(SpecError) as err:
        build_version(spec, root, progress=quiet)
    msg = err.value.message
    assert f"the segment catalog of shop/{before.name} does not carry over to the new data" in msg
    assert f"CURRENT still names {before.name}" in msg
    assert "segments.north_pro: field 'plan' has no value 'pro'" in msg
    assert "--drop-unresolved-segments" in msg and "--no-catalog" in msg
    # the segment that refers to it cannot be evaluated either
    assert [v.field for v in err.value.violations] == ["segments.north_pro", "segments.pro_or_big"]
    # nothing published: no new version, no staging or withdrawn directory, CURRENT unchanged
    assert sorted(p.name for p in (root / "shop").iterdir()) == sorted(versions + ["CURRENT"])
    assert (root / "shop" / "CURRENT").read_text().strip() == before.name


def test_drop_unresolved_segments_drops_them_and_their_dependents_with_a_warning(with_catalog, tmp_path):
    root, before = with_catalog
    data = tmp_path / "v2"
    spec = write_small_shop(data, N, seed=2, plans=("basic", "plus"))
    said = []
    vdir = build_version(spec, root, progress=said.append, drop_unresolved=True)
    assert sorted(_manifest(vdir)["segments"]) == ["big_spenders"]
    warnings = [m for m in said if m.startswith("warning: segment ")]
    assert len(warnings) == 2
    assert any("'north_pro' dropped" in m and "no value 'pro'" in m for m in warnings)
    assert any("'pro_or_big' dropped" in m and "it refers to 'north_pro', dropped" in m for m in warnings)
    listed = local_service(root / "shop").list_segments(SegmentsQuery())
    assert [(s.name, s.size) for s in listed.segments] == [("big_spenders", len(_brute_members(data)["big_spenders"]))]


def test_no_catalog_builds_the_data_alone(with_catalog, tmp_path):
    root, _ = with_catalog
    fits = A.fit_count()
    vdir = build_version(write_small_shop(tmp_path / "v2", N, seed=2), root, progress=quiet, carry_catalog=False)
    assert _manifest(vdir)["segments"] == {} and "catalog_models" not in _manifest(vdir)
    assert (root / "shop" / "CURRENT").read_text().strip() == vdir.name and A.fit_count() == fits


def test_a_band_label_segment_survives_a_rebuild_of_similar_data(tmp_path):
    root = tmp_path / "root"
    build_version(write_small_shop(tmp_path / "v1", 20_000, seed=1), root, progress=quiet)
    edges = open_snapshot(root / "shop").universe("customers").fields["spend"].edges
    top = band_labels(edges)[-1]
    apply_segments(root / "shop", {"top_spend": {"where": {"spend": top}, "universe": "customers"}},
                   progress=quiet, fit_propensities=False)
    data = tmp_path / "v2"
    build_version(write_small_shop(data, 20_600, seed=2), root, progress=quiet, fit_propensities=False)
    values = pd.read_csv(data / "customers.csv").spend.to_numpy()
    listed = local_service(root / "shop").list_segments(SegmentsQuery())
    assert [(s.name, s.size) for s in listed.segments] == [("top_spend", int(np.sum(values >= edges[-1])))]
