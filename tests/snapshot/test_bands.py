"""Quantile band edges across rebuilds (segsrv.snapshot.bands): kept within the tolerance, recomputed
beyond it with a message, pinned edges always kept; every count checked against pandas over the CSV with
the edges the build used."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segsrv.errors import SpecError
from segsrv.ops import CountQuery
from segsrv.ops.conditions import parse_where
from segsrv.service import local_service
from segsrv.snapshot.bands import DEFAULT_TOLERANCE
from segsrv.snapshot.builder import band_labels, build_snapshot
from segsrv.snapshot.spec import parse_spec
from support import write_small_shop

N = 20_000  # rank noise between two samples ~0.005: "similar data" stays well within the tolerance


def _fields(vdir) -> dict:
    manifest = json.loads((vdir / "manifest.json").read_text())
    return {f["name"]: f for f in manifest["universes"]["customers"]["fields"]}


def _brute_band_counts(data_dir, column: str, edges: list[float]) -> dict[str, int]:
    """Rows per band label: pandas over the source CSV, band i = [edges[i-1], edges[i])."""
    values = pd.read_csv(data_dir / "customers.csv")[column].dropna().to_numpy(dtype=float)
    band = np.searchsorted(np.asarray(edges), values, side="right")
    return dict(zip(band_labels(edges), np.bincount(band, minlength=len(edges) + 1).tolist()))


def _counts(root, column: str, labels: list[str]) -> dict[str, int]:
    service = local_service(root / "shop")
    return {label: service.count(CountQuery(where=parse_where({column: label}), universe="customers")).count
            for label in labels}


def _brute_ranks(data_dir, column: str, edges: list[float]) -> np.ndarray:
    values = np.sort(pd.read_csv(data_dir / "customers.csv")[column].to_numpy(dtype=float))
    return np.searchsorted(values, edges, side="left") / len(values)


def _quantile_edges(data_dir, column: str, q: int = 4) -> list[float]:
    """The discrete quantiles a fresh build cuts at (DuckDB's quantile_disc, rounded to 6 digits)."""
    import duckdb

    probs = [i / q for i in range(1, q)]
    got = duckdb.connect().execute(f"SELECT quantile_disc({column}::DOUBLE, {probs}) "
                                   f"FROM read_csv('{data_dir / 'customers.csv'}')").fetchone()[0]
    return sorted({float(f"{x:.6g}") for x in got})


def test_similar_data_keeps_the_labels_and_a_saved_query_still_answers(tmp_path):
    said = []
    write_small_shop(tmp_path / "v1", N, seed=1)
    first = build_snapshot(tmp_path / "v1" / "spec.toml", tmp_path / "root", progress=said.append)
    edges = _fields(first)["spend"]["edges"]
    saved_label = band_labels(edges)[2]  # a saved query: {"spend": "<the third quartile's label>"}

    write_small_shop(tmp_path / "v2", N + 600, seed=2)  # other customers, the same distribution
    fresh = _quantile_edges(tmp_path / "v2", "spend")
    assert fresh != edges  # the new data alone would cut elsewhere ...
    gaps = np.abs(_brute_ranks(tmp_path / "v2", "spend", edges) - _brute_ranks(tmp_path / "v2", "spend", fresh))
    assert gaps.max() <= DEFAULT_TOLERANCE  # ... but close enough: the rebuild keeps the old edges
    said.clear()
    second = build_snapshot(tmp_path / "v2" / "spec.toml", tmp_path / "root", progress=said.append)
    assert second != first
    spend = _fields(second)["spend"]
    assert spend["edges"] == edges and spend["values"] == band_labels(edges) and spend["quantiles"] == 4
    assert any(m.startswith("band edges of customers.spend: kept from version") for m in said)
    expected = _brute_band_counts(tmp_path / "v2", "spend", edges)
    assert _counts(tmp_path / "root", "spend", band_labels(edges)) == expected
    assert expected[saved_label] > 0


def test_very_different_data_recomputes_the_edges_and_says_so(tmp_path):
    write_small_shop(tmp_path / "v1", N, seed=1)
    first = build_snapshot(tmp_path / "v1" / "spec.toml", tmp_path / "root", progress=lambda m: None)
    old = _fields(first)["spend"]["edges"]
    write_small_shop(tmp_path / "v2", N, seed=2, spend_scale=3.0)  # everyone spends three times as much
    said = []
    second = build_snapshot(tmp_path / "v2" / "spec.toml", tmp_path / "root", progress=said.append)
    new = _fields(second)["spend"]["edges"]
    assert new == _quantile_edges(tmp_path / "v2", "spend") and new != old
    note = next(m for m in said if m.startswith("band edges of customers.spend: recomputed"))
    assert f"tolerance {DEFAULT_TOLERANCE:g}" in note and str(band_labels(new)) in note
    assert _counts(tmp_path / "root", "spend", band_labels(new)) == _brute_band_counts(tmp_path / "v2", "spend", new)
    # the tenure edges are pinned: kept although tenure's distribution changed as much as spend's did
    assert _fields(second)["tenure"]["edges"] == _fields(first)["tenure"]["edges"]


def test_pinned_edges_are_kept_whatever_the_data(tmp_path):
    write_small_shop(tmp_path / "v1", N, seed=1)
    first = build_snapshot(tmp_path / "v1" / "spec.toml", tmp_path / "root", progress=lambda m: None)
    pinned = _fields(first)["tenure"]["edges"]
    assert pinned == _quantile_edges(tmp_path / "v1", "tenure")  # the first build computes them
    data = tmp_path / "v2"
    write_small_shop(data, N, seed=2)
    df = pd.read_csv(data / "customers.csv")
    df["tenure"] = df["tenure"] * 4 + 100  # nothing like before: every value above the old edges
    df.to_csv(data / "customers.csv", index=False)
    said = []
    second = build_snapshot(data / "spec.toml", tmp_path / "root", progress=said.append)
    assert _fields(second)["tenure"]["edges"] == pinned
    assert any(m.startswith("band edges of customers.tenure: pinned, kept from version") for m in said)
    counts = _counts(tmp_path / "root", "tenure", band_labels(pinned))
    assert counts == _brute_band_counts(data, "tenure", pinned) and counts[band_labels(pinned)[-1]] == N
    # explicit edges are the spec's, always
    assert _fields(second)["age"]["edges"] == [30, 50] and "quantiles" not in _fields(second)["age"]


def test_a_changed_quantile_count_recomputes(tmp_path):
    spec = write_small_shop(tmp_path / "v1", N, seed=1)
    build_snapshot(spec, tmp_path / "root", progress=lambda m: None)
    spec.write_text(spec.read_text().replace("tenure = { quantiles = 4, pin = true }", "tenure = { quantiles = 5, pin = true }"))
    said = []
    vdir = build_snapshot(spec, tmp_path / "root", progress=said.append)
    assert _fields(vdir)["tenure"]["edges"] == _quantile_edges(tmp_path / "v1", "tenure", 5)
    assert any("tenure: recomputed (quantiles changed from 4 to 5" in m for m in said)


def test_tolerance_zero_recomputes_unless_identical(tmp_path):
    write_small_shop(tmp_path / "v1", N, seed=1)
    first = build_snapshot(tmp_path / "v1" / "spec.toml", tmp_path / "root", progress=lambda m: None)
    # identical data: the same edges, the same version, whatever the tolerance
    assert build_snapshot(tmp_path / "v1" / "spec.toml", tmp_path / "root", progress=lambda m: None,
                          band_tolerance=0) == first
    write_small_shop(tmp_path / "v2", N + 600, seed=2)
    second = build_snapshot(tmp_path / "v2" / "spec.toml", tmp_path / "root", progress=lambda m: None, band_tolerance=0)
    assert _fields(second)["spend"]["edges"] == _quantile_edges(tmp_path / "v2", "spend")


@pytest.mark.parametrize("tolerance", [-0.1, 1.5, True, "0.1"])
def test_bad_tolerance_is_refused(tmp_path, tolerance):
    spec = write_small_shop(tmp_path / "v1", 100, seed=1)
    with pytest.raises(SpecError, match=r"band tolerance \(--band-tolerance\): expected a share of rows 0..1"):
        build_snapshot(spec, tmp_path / "root", progress=lambda m: None, band_tolerance=tolerance)
    assert not (tmp_path / "root" / "shop").exists()


@pytest.mark.parametrize("banding, message", [
    ({"edges": [1, 2], "pin": True}, r"numeric.x.pin: pins quantile edges; explicit 'edges' are always kept"),
    ({"quantiles": 4, "pin": "yes"}, r"numeric.x.pin: expected true or false, got 'yes'"),
])
def test_bad_pin_is_refused(tmp_path, banding, message):
    raw = {"name": "s", "tables": {"t": {"file": "t.csv", "key": "k", "numeric": {"x": banding}}}, "universes": {"t": {}}}
    with pytest.raises(SpecError, match=message):
        parse_spec(raw, tmp_path)


def test_an_unreadable_current_version_is_reported_and_the_edges_computed_afresh(tmp_path):
    write_small_shop(tmp_path / "v1", 500, seed=1)
    root = tmp_path / "root"
    build_snapshot(tmp_path / "v1" / "spec.toml", root, progress=lambda m: None)
    (root / "shop" / "CURRENT").write_text("gone\n")  # names no version
    write_small_shop(tmp_path / "v2", 500, seed=2)
    said = []
    vdir = build_snapshot(tmp_path / "v2" / "spec.toml", root, progress=said.append)
    assert any(m.startswith("cannot read the band edges of the CURRENT version (FileNotFoundError: ")
               and m.endswith("computing every edge afresh") for m in said)
    assert _fields(vdir)["spend"]["edges"] == _quantile_edges(tmp_path / "v2", "spend")
    assert (root / "shop" / "CURRENT").read_text().strip() == vdir.name
