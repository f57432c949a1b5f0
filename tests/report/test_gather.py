"""segsrv.report.gather: the report's numbers are the engine's (Discover, ListSegments, Profile, Evaluate and
diff called directly) and, for sizes, shares and value counts, a pandas brute force over PetNord's source
tables."""

from __future__ import annotations

import math

import pytest

from support import CATALOG_B, CHURN_MODEL
from segsrv.engine.diff import diff_versions, open_versions
from segsrv.errors import SegsrvError
from segsrv.ops import DiscoverQuery, EvaluateQuery, ProfileQuery, SegmentsQuery
from segsrv.report.gather import STACKED_FIELDS, ReportOptions, gather_report
from segsrv.service import local_service
from support import expect_profile


def _without_elapsed(answer: dict) -> dict:
    answer.pop("elapsed_ms")
    return answer


def _check_profile(seg: dict, service, options: ReportOptions, oracle) -> None:
    """The segment's profile against Profile called directly, and its counts against the brute force."""
    query = {"from": seg["universe"], "segment": seg["where"], "values_per_field": options.values_per_field}
    direct = _without_elapsed(service.call(ProfileQuery.from_json(query)).to_json())
    profile = seg["profile"]
    assert (profile["n_rows"], profile["n_segment"]) == (direct["n_rows"], direct["n_segment"])
    assert profile["n_segment"] == seg["size"]
    shown = [{k: v for k, v in f.items() if k != "kind"} for f in profile["fields"]]
    assert shown == direct["fields"][:options.max_fields]
    assert profile["n_fields"] == len(direct["fields"])
    by_field = {n["field"]: n for n in direct["numeric"]}
    assert sorted(n["field"] for n in profile["numeric"]) == sorted(by_field)
    for n in profile["numeric"]:
        seg_std, pop_std = by_field[n["field"]]["segment"]["std"], by_field[n["field"]]["population"]["std"]
        assert n["compactness"] == pytest.approx(seg_std / pop_std, rel=1e-12)
    for name in profile["stacked"]:
        f = next(f for f in profile["fields"] if f["field"] == name)
        assert f["kind"] != "multi" and sum(v["segment_share"] for v in f["over"] + f["under"]) <= 1 + 1e-9
    assert len(profile["stacked"]) <= STACKED_FIELDS
    # brute force: the segment's members and every shown value's count, from the source tables
    definition = seg["definition"]
    expect_profile({"n_rows": profile["n_rows"], "n_segment": profile["n_segment"], "fields": profile["fields"]},
                   {"from": seg["universe"], "segment": definition}, oracle)


def test_discovered_segments_equal_discover_and_profile(petnord_root, oracle):
    service = local_service(petnord_root)
    options = ReportOptions(universe="customers", max_segments=5, max_fields=4)
    data = gather_report(service, options)
    assert data["segments_source"] == "discover"  # PetNord as built has no catalog
    direct = service.call(DiscoverQuery.from_json({"from": "customers", "limit": 5})).to_json()
    assert [s["name"] for s in data["segments"]] == [s["name"] for s in direct["segments"]]
    assert data["discover_search"]["tested"] == direct["tested"]
    bu = oracle.universe("customers")
    for seg, found in zip(data["segments"], direct["segments"]):
        assert (seg["size"], seg["share"], seg["lift"]) == (found["support"], found["share"], found["lift"])
        members = int(bu.eval(seg["definition"]).sum())
        assert seg["size"] == members and seg["share"] == pytest.approx(members / bu.n, abs=1e-15)
        _check_profile(seg, service, options, oracle)
    assert data["models"] == [] and data["drift"] is None


def test_catalog_segments_model_and_drift(report_root, report_oracle):
    root, version_a, version_b = report_root
    service = local_service(root)
    options = ReportOptions(compare=version_a)
    data = gather_report(service, options, location=root / "petnord")
    assert (data["version"], data["segments_source"], data["universe"]) == (version_b, "catalog", "customers")
    listed = service.call(SegmentsQuery()).to_json()
    assert [(s["name"], s["size"], s["share"]) for s in data["segments"]] == \
        [(s["name"], s["size"], s["share"]) for s in listed]
    bu = report_oracle.universe("customers")
    for seg in data["segments"]:
        # sized from the catalog file's own condition, not the snapshot's normalised form of it
        assert seg["size"] == int(bu.eval(CATALOG_B[seg["name"]]["where"]).sum()) and seg["lift"] is None
        _check_profile(seg, service, options, report_oracle)
    # the declared model, evaluated as Evaluate answers its declaration
    (model,) = data["models"]
    assert (model["name"], model["source"], model["query"]) == ("churn", "declared", CHURN_MODEL)
    direct = _without_elapsed(service.call(EvaluateQuery.from_json(CHURN_MODEL)).to_json())
    assert model["evaluation"] == direct
    assert 0.5 < model["evaluation"]["auc"] < 1 and len(model["evaluation"]["calibration"]) > 1
    # drift: `segsrv diff`'s engine, both catalogs' segments
    drift = diff_versions(*open_versions(root / "petnord", version_a, version_b), top_features=5,
                          keep_ids=False).to_json()
    drift.pop("elapsed_ms")
    assert data["drift"] == drift
    sizes = {s["name"]: (s["size_a"], s["size_b"]) for s in data["drift"]["segments"]}
    assert sizes["long_tenure"][1] is None and sizes["oulu_dogs"][0] is None
    assert sizes["cat_people"] == (int(bu.eval({"segment": "cat_owner"}).sum()),
                                   int(bu.eval({"segment": ["cat_owner", "multi_pet"]}).sum()))


def test_evaluate_queries_and_limits(report_root):
    root, _, _ = report_root
    service = local_service(root)
    query = {"from": "customers", "target": "churned", "evidence_fields": ["region", "lifestyle"]}
    data = gather_report(service, ReportOptions(segments="discover", universe="customers", max_segments=2,
                                                max_fields=1, values_per_field=2, declared_models=False,
                                                evaluate=[query]))
    assert len(data["segments"]) == 2 and data["segments_source"] == "discover"
    for seg in data["segments"]:
        assert len(seg["profile"]["fields"]) == 1
        assert all(len(f["over"]) <= 2 and len(f["under"]) <= 2 for f in seg["profile"]["fields"])
    (model,) = data["models"]
    assert model["source"] == "--evaluate"
    assert model["evaluation"] == _without_elapsed(service.call(EvaluateQuery.from_json(query)).to_json())
    assert math.isfinite(model["evaluation"]["log_loss"])


@pytest.mark.parametrize("options, location, message", [
    (ReportOptions(compare="v1"), None, "--compare VERSION: drift is computed from the snapshot's files"),
    (ReportOptions(segments="catalog"), None, "--segments catalog: snapshot 'petnord' version"),
    (ReportOptions(segments="everything"), None, "--segments: expected one of auto, catalog, discover, "
                                                 "got 'everything'"),
    (ReportOptions(max_segments=0), None, "--max-segments: expected a whole number >= 1, got 0"),
    (ReportOptions(), None, "--from: snapshot 'petnord' has several universes ['customers', 'impressions', "
                            "'order_lines', 'orders']; name the one to discover segments in, e.g. --from customers"),
])
def test_bad_options_say_which_and_why(petnord_root, options, location, message):
    with pytest.raises(SegsrvError) as err:
        gather_report(local_service(petnord_root), options, location=location)
    assert message in str(err.value)
