"""The segment catalog over shards (segsrv/engine/sharded/catalog.py): `segments apply` on a sharded ROOT/NAME,
Assign (ids routed to their shard) and ListSegments equal the unsharded snapshot's answers, the catalog's
propensity models are the unsharded ones bit for bit, a failed apply changes nothing, and a sharded rebuild
carries the catalog over."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segsrv.engine.predict.logistic as logistic
import segsrv.engine.sharded.catalog as sharded_catalog
import segsrv.engine.sharded.patterns as sharded_patterns
from segsrv.engine.assign import compiled_catalog
from segsrv.engine.catalog import apply_segments
from segsrv.engine.rebuild import build_sharded_version
from segsrv.engine.sharded import ShardedSnapshot, apply_sharded_segments, assign_part, open_sharded
from segsrv.errors import SegsrvError, SpecError
from segsrv.ops import AssignQuery, SegmentsQuery
from segsrv.service import OneSnapshot, SegmentationService, local_service
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.shards import SHARDS, read_shard_manifest
from support import CATALOG_A, assert_same_assign, quiet, segsrv_cli, sharded_services, write_shop

# CATALOG_A and a segment of a handful of customers (below a privacy floor of 10)
CATALOG = dict(CATALOG_A, tiny={"universe": "customers", "where": {
    "tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}, "priority": 5})
FITTED = 2  # the shard count whose apply fits and stores the default models (the others: on demand, fixed l2)
PROPENSITIES = [{"include_propensities": False}, {"include_propensities": True, "propensity_l2": 1.0},
                {"include_propensities": True, "propensity_method": "factorized"}]
DEFAULT = {"include_propensities": True}


@pytest.fixture(scope="module")
def whole(tmp_path_factory, petnord_root):
    """The unsharded PetNord snapshot with CATALOG applied (its models fitted and stored)."""
    root = tmp_path_factory.mktemp("petnord_catalog")
    shutil.copytree(petnord_root / "petnord", root / "petnord")
    apply_segments(root / "petnord", CATALOG, progress=quiet)
    return open_snapshot(root / "petnord")


@pytest.fixture(scope="module", params=[1, FITTED, 7], ids=lambda n: f"{n}_shards")
def sharded(request, tmp_path_factory, petnord_spec):
    """PetNord in 1, 2 and 7 shards with CATALOG applied (models stored with 2 shards)."""
    root = tmp_path_factory.mktemp(f"petnord_catalog_{request.param}_shards")
    build_shards(replace(petnord_spec, shard_entity="customers"), root, request.param, progress=quiet)
    apply_sharded_segments(root / "petnord", CATALOG, progress=quiet, fit_propensities=request.param == FITTED)
    return root / "petnord"


def customer_ids(snapshot, step: int = 11) -> list[str]:
    return [i.decode() for i in np.asarray(snapshot.universe("customers").row_ids)[::step]]


def assign_both(sharded_path, whole_snapshot, privacy_k: int, obj: dict):
    mine, theirs = sharded_services(sharded_path, whole_snapshot, privacy_k)
    return mine.call(AssignQuery.from_json(obj)), theirs.call(AssignQuery.from_json(obj))


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("propensities", range(len(PROPENSITIES) + 1))
def test_assign_by_ids_equals_unsharded(sharded, whole, privacy_k, propensities):
    params = (PROPENSITIES + [DEFAULT])[propensities]
    if params is DEFAULT and open_sharded(sharded).shard_count != FITTED:
        pytest.skip("default models are stored (not fitted on demand) with 2 shards")
    ids = customer_ids(whole) + ["CUST-99999", "nope", "", customer_ids(whole)[0]]  # unknown ids, a repeated id
    routed = set(open_sharded(sharded).route_ids("customers", ids).tolist())
    assert routed == set(range(open_sharded(sharded).shard_count))  # ids in every shard
    got, want = assign_both(sharded, whole, privacy_k, dict(params, ids=ids))
    assert_same_assign(got, want)
    assert got.snapshot == "petnord" and got.version.startswith("shards-")
    assert sum(not a.found for a in got.assignments) == 3
    assert got.suppressed_segments == (1 if privacy_k else 0)  # `tiny` under the floor
    # one id: the per-request path
    got, want = assign_both(sharded, whole, privacy_k, dict(params, ids=ids[5:6]))
    assert_same_assign(got, want)


@pytest.mark.parametrize("privacy_k", [0, 10])
def test_assign_features_equals_unsharded(sharded, whole, privacy_k):
    features = [["segment", "cat_owner"], ["region", "oulu"], ["tenure_months", "30"], ["lifestyle", "premium"]]
    for params in PROPENSITIES + ([DEFAULT] if open_sharded(sharded).shard_count == FITTED else []):
        got, want = assign_both(sharded, whole, privacy_k, dict(params, features=features))
        assert_same_assign(got, want)
        assert got.assignments[0].segments


@pytest.mark.parametrize("privacy_k", [0, 10])
def test_list_segments_equals_unsharded(sharded, whole, privacy_k):
    mine, theirs = sharded_services(sharded, whole, privacy_k)
    for universe in (None, "customers"):
        got, want = mine.call(SegmentsQuery(universe)), theirs.call(SegmentsQuery(universe))
        assert got.to_json() == want.to_json()
    sizes = {s.name: s.size for s in got.segments}
    assert (sizes["tiny"] == 0) == (privacy_k == 10) and sizes["churners"] > 0


def test_stored_models_are_the_unsharded_models(sharded, whole):
    """Every shard stores the same merged models, bit for bit the unsharded snapshot's (under merged keys)."""
    snap = open_sharded(sharded)
    if snap.shard_count != FITTED:
        assert all(not s.catalog_models for s in snap.shards)  # applied without models
        return
    sections = [s.manifest["catalog_models"] for s in snap.shards]
    assert all(section == sections[0] for section in sections)
    u, mine = whole.universe("customers"), snap.schema.universe("customers")
    for name, entry in sections[0]["customers"].items():
        theirs = whole.catalog_models["customers"][name]
        assert entry["key"][1].startswith("shards-") and entry["key"][3] == u.n_rows
        assert (entry["l2"], entry["pairs"], entry["members"]) == (theirs["l2"], theirs["pairs"], theirs["members"])
        coef = mine.stored_models[tuple(entry["key"])][0]
        assert np.array_equal(coef, u.stored_models[tuple(theirs["key"])][0])
        assert all((s.path / entry["file"]).read_bytes() == (snap.shards[0].path / entry["file"]).read_bytes()
                   for s in snap.shards)


def test_membership_fit_on_merged_patterns_is_the_unsharded_fit(sharded, whole, monkeypatch):
    """PetNord's customers have a pattern per row, so the fits above take the fallback to rows; here both sides
    fit on patterns whatever their share (the unsharded cut-off moved to 1): the merged patterns' fit is the
    unsharded fit bit for bit, and the shards send patterns and counts, never their rows."""
    monkeypatch.setattr(logistic.distinct_patterns, "__defaults__", (1.0,))
    monkeypatch.setattr(sharded_patterns, "PATTERN_MAX_SHARE", 1.0)
    rows_sent = []
    monkeypatch.setattr(sharded_patterns, "pattern_rows_part", lambda *args: rows_sent.append(args))
    theirs = compiled_catalog(whole, whole.universe("customers"))
    mine = sharded_catalog.MergedCatalog(open_sharded(sharded), open_sharded(sharded).universe("customers"))
    for i, segment in enumerate(mine.segments):
        for l2 in ([1.0, None] if segment.name == "churners" else [1.0]):  # (a cross-validated fit takes seconds)
            got, want = mine.membership_fit(i, l2), theirs.membership_fit(i, l2)
            assert got[0] == want[0] and np.array_equal(got[1], want[1]) and got[2:4] == want[2:4], (segment.name, l2)
            assert np.array_equal(got[4].pairs, want[4].pairs) and np.array_equal(got[4].weights, want[4].weights)
    assert not rows_sent


def test_membership_matches_pandas(sharded, petnord_src):
    """An independent check: the members among some ids, from the source table."""
    df = petnord_src.execute("SELECT customer_id, churned, tenure_months, segment FROM customers").df()
    ids = df["customer_id"].iloc[::7].tolist()
    got = local_service(sharded).call(AssignQuery.from_json({"ids": ids}))
    members = {a.id: {m.segment for m in a.segments if m.member} for a in got.assignments}
    by_id = df.set_index("customer_id")
    for segment, rule in [("churners", lambda r: bool(r.churned)), ("long_tenure", lambda r: r.tenure_months >= 24),
                          ("cat_people", lambda r: r.segment == "cat_owner")]:
        want = {i for i in ids if rule(by_id.loc[i])}
        assert {i for i in ids if segment in members[i]} == want, segment
        assert want and len(want) < len(ids)


def test_route_ids_names_the_one_shard_holding_each_id(sharded, whole):
    snap = open_sharded(sharded)
    ids = customer_ids(whole, step=1)
    route = snap.route_ids("customers", ids)
    for shard in range(snap.shard_count):
        rows = snap.shards[shard].universe("customers").rows_for_ids(ids)
        assert np.array_equal(rows >= 0, route == shard)
    assert set(snap.route_ids("orders", [1, 2]).tolist()) == ({0} if snap.shard_count == 1 else {-1})


# --- a synthetic shop: empty shards, an orders universe (ids not routed by their own key) ---------------------

SHOP_CATALOG = {
    "loyal": {"universe": "customers", "where": {"segment": "loyal"}},
    "toys": {"universe": "customers", "where": {"orders.product.category": "toys"}, "priority": 2},
    "web": {"universe": "orders", "where": {"channel": "web"}},
    "food_app": {"universe": "orders", "where": {"product.category": "food", "channel": "app"}},
}


def shop_pair(tmp_path, n_customers: int, n_shards: int, catalog=SHOP_CATALOG):
    spec = write_shop(tmp_path, n_customers=n_customers)
    build_snapshot(spec, tmp_path / "whole", progress=quiet)
    apply_segments(tmp_path / "whole" / "shop", catalog, progress=quiet)
    build_shards(spec, tmp_path / "sharded", n_shards, progress=quiet)
    apply_sharded_segments(tmp_path / "sharded" / "shop", catalog, progress=quiet)
    return spec, tmp_path / "sharded" / "shop", open_snapshot(tmp_path / "whole" / "shop")


def assert_shop_answers_equal(sharded_path, whole_snapshot, n_customers: int) -> None:
    for privacy_k in (0, 10):
        for params in PROPENSITIES + [DEFAULT]:
            for universe, ids in [("customers", [f"c{i}" for i in range(n_customers + 2)]),
                                  ("orders", list(range(0, 3 * n_customers + 3, 2)))]:
                got, want = assign_both(sharded_path, whole_snapshot, privacy_k, dict(params, ids=ids, **{"from": universe}))
                assert_same_assign(got, want)
        mine, theirs = sharded_services(sharded_path, whole_snapshot, privacy_k)
        assert mine.call(SegmentsQuery()).to_json() == theirs.call(SegmentsQuery()).to_json()


@pytest.mark.parametrize("n_customers, n_shards", [(40, 4), (3, 8)])
def test_shop_with_empty_shards(tmp_path, n_customers, n_shards):
    _, sharded_path, whole_snapshot = shop_pair(tmp_path, n_customers, n_shards)
    if n_customers < n_shards:
        assert any(s.universe("customers").n_rows == 0 for s in open_sharded(sharded_path).shards)
    assert_shop_answers_equal(sharded_path, whole_snapshot, n_customers)


def test_shop_models_are_fitted_from_patterns_bit_for_bit(tmp_path, monkeypatch):
    """The shop's rows share evidence patterns (at most PATTERN_MAX_SHARE of the rows, in every segment's
    fit): the stored models come from the shards' pattern counts alone, no round asks for rows, and they
    are bit for bit the unsharded snapshot's."""
    rows_asked = []
    rows_part = sharded_patterns.pattern_rows_part

    def counted(shard, rows_of, args, *rest):
        rows_asked.append(args[-1])
        return rows_part(shard, rows_of, args, *rest)

    monkeypatch.setattr(sharded_patterns, "pattern_rows_part", counted)
    _, sharded_path, whole_snapshot = shop_pair(tmp_path, 400, 3)
    assert rows_asked == []
    snap = open_sharded(sharded_path)
    for universe, section in whole_snapshot.catalog_models.items():
        theirs, mine = whole_snapshot.universe(universe), snap.schema.universe(universe)
        assert theirs.n_features == mine.n_features  # (the same dictionary: bit for bit is the bar)
        for name, entry in section.items():
            merged = snap.schema.catalog_models[universe][name]
            assert (merged["l2"], merged["pairs"]) == (entry["l2"], entry["pairs"])
            assert np.array_equal(mine.stored_models[tuple(merged["key"])][0],
                                  theirs.stored_models[tuple(entry["key"])][0]), name
    assert_shop_answers_equal(sharded_path, whole_snapshot, 400)


def test_assign_of_ids_in_several_shards_is_one_round(tmp_path, monkeypatch):
    """Every shard holding some of the ids is asked in one round (``map_each``), with its own ids only."""
    _, sharded_path, whole_snapshot = shop_pair(tmp_path, 40, 4)
    service = local_service(sharded_path)
    ids = [f"c{i}" for i in range(40)]
    query = AssignQuery.from_json({"ids": ids, "include_propensities": True, "from": "customers"})
    service.call(query)  # the merged catalog and universe found once
    rounds = []
    map_each = ShardedSnapshot.map_each

    def counting(self, fn, shard_args):
        rounds.append((fn, {shard: args for shard, args in shard_args.items()}))
        return map_each(self, fn, shard_args)

    monkeypatch.setattr(ShardedSnapshot, "map_each", counting)
    got = service.call(query)
    assert [fn for fn, _ in rounds] == [assign_part]
    asked = rounds[0][1]
    assert len(asked) > 1 and sorted(i for args in asked.values() for i in args[1]) == sorted(ids)
    route = open_sharded(sharded_path).route_ids("customers", ids)
    assert all(set(route[[ids.index(i) for i in args[1]]]) == {shard} for shard, args in asked.items())
    want = SegmentationService(OneSnapshot(whole_snapshot)).call(query)
    assert_same_assign(got, want)


def test_assign_errors_as_unsharded(tmp_path):
    _, sharded_path, whole_snapshot = shop_pair(tmp_path, 40, 4)
    for obj in [{"ids": ["c1"]}, {"ids": ["c1"], "from": "visits"}, {"features": [["nope", "x"]], "from": "customers"},
                {"features": [["segment", "vip"]], "from": "customers"}]:
        errors = []
        for service in sharded_services(sharded_path, whole_snapshot, 0):
            with pytest.raises(SegsrvError) as caught:
                service.call(AssignQuery.from_json(obj))
            errors.append((type(caught.value), caught.value.message, caught.value.violations))
        assert errors[0] == errors[1], obj


def tree(path) -> dict:
    """Every file under `path` with its bytes: what a failed apply must leave as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_failed_apply_changes_nothing(tmp_path, monkeypatch):
    _, sharded_path, _ = shop_pair(tmp_path, 40, 4)
    ids = {"ids": [f"c{i}" for i in range(40)], "include_propensities": True, "from": "customers"}
    before, answer = tree(sharded_path), local_service(sharded_path).call(AssignQuery.from_json(ids)).to_json()

    def unchanged():
        assert tree(sharded_path) == before
        after = local_service(sharded_path).call(AssignQuery.from_json(ids)).to_json()
        assert {**after, "elapsed_ms": 0} == {**answer, "elapsed_ms": 0}

    # the same catalog again: nothing to publish
    assert apply_sharded_segments(sharded_path, SHOP_CATALOG, progress=quiet) == (sharded_path / SHARDS, False)
    unchanged()
    # an invalid segment: refused before anything is written
    with pytest.raises(SpecError, match="segments.vip: field 'segment' has no value 'vip'"):
        apply_sharded_segments(sharded_path, dict(SHOP_CATALOG, vip={"universe": "customers", "where": {"segment": "vip"}}))
    unchanged()
    changed = dict(SHOP_CATALOG, loyal={"universe": "customers", "where": {"segment": ["loyal", "new"]}})
    # the last shard cannot be written: the versions already published are withdrawn
    publish = sharded_catalog.publish_catalog_version

    def failing_publish(vdir, *args):
        if vdir.parent.name == "shard-003":
            raise OSError(28, "No space left on device")
        return publish(vdir, *args)

    monkeypatch.setattr(sharded_catalog, "publish_catalog_version", failing_publish)
    with pytest.raises(SpecError, match="cannot publish the catalog into the shards of .*No space left on device.*; "
                                        "SHARDS and every shard's CURRENT are unchanged"):
        apply_sharded_segments(sharded_path, changed, progress=quiet)
    unchanged()
    monkeypatch.undo()
    # SHARDS cannot be written after the shards' CURRENTs moved: they are put back
    def failing_write(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded_catalog, "write_shard_manifest", failing_write)
    with pytest.raises(SpecError, match="cannot point the shards .* SHARDS and every shard's CURRENT are unchanged"):
        apply_sharded_segments(sharded_path, changed, progress=quiet)
    unchanged()
    monkeypatch.undo()
    apply_sharded_segments(sharded_path, changed, progress=quiet)
    assert open_sharded(sharded_path).segments["loyal"]["where"] == {"segment": ["loyal", "new"]}


def test_sharded_rebuild_carries_the_catalog_over(tmp_path):
    spec, sharded_path, _ = shop_pair(tmp_path, 40, 4)
    versions = [e["version"] for e in read_shard_manifest(sharded_path)["shards"]]
    said = []
    build_sharded_version(spec, tmp_path / "sharded", 4, progress=said.append)
    assert [e["version"] for e in read_shard_manifest(sharded_path)["shards"]] == versions  # nothing changed
    assert any("catalog unchanged" in m for m in said)
    # one customer's segment changes: only its shard is built again; every shard gets the catalog (its
    # models are refitted: they rest on every shard's rows)
    customers = pd.read_csv(tmp_path / "customers.csv")
    customers.loc[0, "segment"] = next(s for s in ("new", "loyal", "lapsed") if s != customers.loc[0, "segment"])
    customers.to_csv(tmp_path / "customers.csv", index=False)
    said.clear()
    build_sharded_version(spec, tmp_path / "sharded", 4, progress=said.append)
    assert sum(": built version" in m for m in said) == 1 and sum("unchanged, reused" in m for m in said) == 3
    snap = open_sharded(sharded_path)
    assert all(s.segments == snap.segments and s.catalog_models for s in snap.shards) and len(snap.segments) == 4
    assert_shop_answers_equal(sharded_path, open_snapshot(_whole_with(spec, tmp_path)), 40)
    # a segment that no longer resolves: the build fails, SHARDS unchanged; dropped on request
    customers["segment"] = customers["segment"].replace("lapsed", "new")
    customers.to_csv(tmp_path / "customers.csv", index=False)
    apply_sharded_segments(sharded_path, dict(SHOP_CATALOG, lapsed={"universe": "customers",
                                                                   "where": {"segment": "lapsed"}}), progress=quiet)
    manifest = (sharded_path / SHARDS).read_bytes()
    with pytest.raises(SpecError, match="does not carry over to the new shards; SHARDS not written"):
        build_sharded_version(spec, tmp_path / "sharded", 4, progress=quiet)
    assert (sharded_path / SHARDS).read_bytes() == manifest
    said.clear()
    build_sharded_version(spec, tmp_path / "sharded", 4, progress=said.append, drop_unresolved=True)
    assert any("segment 'lapsed' dropped" in m for m in said)
    assert set(open_sharded(sharded_path).segments) == set(SHOP_CATALOG)
    # --no-catalog: no shard keeps it (the reused ones get a version without it)
    build_sharded_version(spec, tmp_path / "sharded", 4, progress=quiet, carry_catalog=False)
    assert all(not s.segments for s in open_sharded(sharded_path).shards)


def _whole_with(spec, tmp_path):
    root = tmp_path / "whole_again"
    build_snapshot(spec, root, progress=quiet)
    apply_segments(root / "shop", SHOP_CATALOG, progress=quiet)
    return root / "shop"


def test_cli_segments_apply_list_and_assign(tmp_path):
    spec = write_shop(tmp_path, n_customers=40)
    build_shards(spec, tmp_path / "sharded", 3, progress=quiet)
    build_snapshot(spec, tmp_path / "whole", progress=quiet)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('universe = "customers"\n[segments.loyal]\nwhere = {segment = "loyal"}\n'
                       '[segments.web_buyers]\nwhere = {"orders.channel" = "web"}\npriority = 3\n')
    root = str(tmp_path / "sharded" / "shop")
    done = segsrv_cli("segments", "apply", root, str(catalog))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "sharded" / "shop" / SHARDS)
    assert "shard 3/3 (shard-002): published version" in done.stderr
    shards = (tmp_path / "sharded" / "shop" / SHARDS).read_bytes()
    done = segsrv_cli("build", str(spec), "--out", str(tmp_path / "sharded"), "--shards", "3")  # carries it over
    assert done.returncode == 0, done.stderr
    assert "catalog unchanged" in done.stderr and (tmp_path / "sharded" / "shop" / SHARDS).read_bytes() == shards
    apply_segments(tmp_path / "whole" / "shop", catalog, progress=quiet)
    whole = SegmentationService(OneSnapshot(open_snapshot(tmp_path / "whole" / "shop")))

    def cli_json(*args):
        out = segsrv_cli(*args, "--local", root, "--format", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert cli_json("segments", "list") == whole.call(SegmentsQuery()).to_json()
    got = cli_json("assign", "--id", "c1", "--id", "c7", "--id", "zz", "--propensities")
    want = whole.call(AssignQuery.from_json({"ids": ["c1", "c7", "zz"], "include_propensities": True})).to_json()
    for g, w in zip(got["assignments"], want["assignments"]):
        assert [(m["segment"], m["member"], m["segment_size"]) for m in g["segments"]] == \
            [(m["segment"], m["member"], m["segment_size"]) for m in w["segments"]]
        for a, b in zip(g["segments"], w["segments"]):
            assert (a["propensity"] is None) == (b["propensity"] is None)
            assert a["propensity"] is None or a["propensity"] == pytest.approx(b["propensity"], rel=1e-12)
    assert got["assignments"][2]["found"] is False
    assert any(m["propensity"] for a in got["assignments"] for m in a["segments"])


# --- random catalogs over the shop (hypothesis) ---------------------------------------------------------------

SHOP_TERMS = {"customers": [("segment", ["new", "loyal", "lapsed"]), ("orders.channel", ["web", "app", "store"]),
                            ("orders.product.category", ["food", "toys", "care"])],
              "orders": [("channel", ["web", "app", "store"]), ("customer.segment", ["new", "loyal", "lapsed"]),
                         ("product.category", ["food", "toys", "care"])]}


@st.composite
def shop_catalogs(draw):
    """A catalog of 1-4 segments over the shop's customers or orders: conjunctions of one to two terms
    (a value, a value list or a negation), sometimes referring to an earlier segment of the universe."""
    catalog: dict = {}
    for k in range(draw(st.integers(1, 4))):
        universe = draw(st.sampled_from(sorted(SHOP_TERMS)))
        where = {}
        for field, values in draw(st.lists(st.sampled_from(SHOP_TERMS[universe]), min_size=1, max_size=2,
                                           unique_by=lambda t: t[0])):
            chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
            where[field] = chosen[0] if len(chosen) == 1 else ({"$ne": chosen[0]} if draw(st.booleans()) else chosen)
        earlier = [n for n, e in catalog.items() if e["universe"] == universe]
        if earlier and draw(st.booleans()):
            where = {"$segment": draw(st.sampled_from(earlier)), **where}
        catalog[f"s{k}"] = {"universe": universe, "where": where, "priority": draw(st.integers(0, 2))}
    return catalog


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(catalog=shop_catalogs(), n_shards=st.integers(1, 6))
def test_random_catalogs_over_shards_equal_unsharded(tmp_path_factory, catalog, n_shards):
    tmp_path = tmp_path_factory.mktemp("random_catalog")
    _, sharded_path, whole_snapshot = shop_pair(tmp_path, 40, n_shards, catalog)
    assert_shop_answers_equal(sharded_path, whole_snapshot, 40)
