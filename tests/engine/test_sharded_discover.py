"""Discover over a sharded snapshot (segsrv/engine/sharded/discover.py) equals the unsharded snapshot's Discover:
the same segments in the same order, the same terms, counts bit for bit, statistics to 1e-12, the same
segmentation, privacy floor and limits. (``petnord_sharded``: tests/engine/conftest.py.)"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.engine.discover import histogram_quantiles
from segsrv.engine.sharded import discover as sharded_module
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError
from segsrv.ops import DiscoverQuery
from segsrv.service import OneSnapshot, SegmentationService, local_service
from support import (
    CUSTOMER_CONDITIONS, assert_same_answer, assert_same_discover, comparable, repo_env, sharded_services,
    shop_services,
)

FIELDS = ["segment", "pet_size", "region", "lifestyle", "health_focus", "treat_affinity", "brand_loyalty",
          "orders.lines.product.category", "orders.lines.product.dietary", "impressions.surface"]
SMALL = {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}  # a handful of rows

DISCOVERS = {
    "defaults": {"from": "customers"},
    "target_and_personas": {"from": "customers", "target": "churned=true", "k": 3},
    "orders": {"from": "orders"},
    "order_lines_target_high": {"from": "order_lines", "target": {"returned": True}, "direction": "high",
                                "max_length": 2},
    "within_weights": {"from": "customers", "within": {"pet_size": "large"}, "field_weights": {"orders.**": 3.0},
                       "max_overlap": 0.3, "limit": 8, "min_support": 12},
    "fields_depth4_personas": {"from": "customers", "fields": FIELDS, "max_length": 4, "min_support": 60, "k": 4,
                               "describe": 6},
    "globs_plain": {"from": "customers", "fields": ["orders.**", "region"], "adjust_for_activity": False,
                    "min_lift": 1.5, "max_length": 2},
    "no_redundancy_rules": {"from": "customers", "fields": FIELDS, "max_overlap": 1.0, "max_excess_overlap": 1.0,
                            "limit": 60, "max_q_value": 1.0, "min_support": 40},
    "target_low_within": {"from": "customers", "within": CUSTOMER_CONDITIONS["negation"], "target": "churned=true",
                          "direction": "low", "min_lift": 1.1, "fields": FIELDS, "max_length": 3},
    "small_within": {"from": "customers", "within": SMALL},  # suppressed under a floor of 10
}


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("name", list(DISCOVERS))
def test_discover_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k, name):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k=privacy_k)
    got = assert_same_discover(sharded, whole, DISCOVERS[name])
    assert got.suppressed == (privacy_k > 0 and name == "small_within")
    if name not in ("small_within",):
        assert got.segments, name  # every other request finds segments: the comparison is not vacuous
    if name in ("target_and_personas", "fields_depth4_personas"):
        assert got.segmentation is not None or privacy_k  # the floor may drop a segmentation
    if privacy_k:
        assert got.min_support >= privacy_k


@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_discover_requests_equal_unsharded(petnord_sharded, petnord_snapshot, where_strategy, data):
    """Random requests: fields, depth, support, lift, a random `within` and target condition, direction,
    personas, activity adjustment, privacy floor. Equal answers, or the same error."""
    obj = {"from": "customers", "fields": data.draw(st.lists(st.sampled_from(FIELDS), min_size=2, max_size=10,
                                                             unique=True), label="fields"),
           "max_length": data.draw(st.integers(2, 4), label="max_length"),
           "min_support": data.draw(st.sampled_from([15, 40, 100]), label="min_support"),
           "min_lift": data.draw(st.sampled_from([1.0, 1.1, 1.25, 2.0]), label="min_lift"),
           "k": data.draw(st.integers(0, 4), label="k"),
           "adjust_for_activity": data.draw(st.booleans(), label="adjust")}
    if data.draw(st.booleans(), label="with within"):
        obj["within"] = data.draw(where_strategy("customers"), label="within")
    if data.draw(st.booleans(), label="with target"):
        obj["target"] = data.draw(where_strategy("customers").filter(bool), label="target")
        obj["direction"] = data.draw(st.sampled_from(["both", "high", "low"]), label="direction")
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot,
                              privacy_k=data.draw(st.sampled_from([0, 10]), label="privacy_k"))
    assert_same_discover(sharded, whole, obj)


def test_each_batch_of_counts_is_one_map(petnord_sharded, monkeypatch):
    """A search maps once per batch of counts, every shard answering counts only (no bitset travels)."""
    calls: list[tuple[str, int]] = []
    real = sharded_module.discover_part

    def spy(shard, universe, within, target, cand, edges, method, args):
        request = (universe, within, target, cand, edges, method, args)
        assert repr(pickle.loads(pickle.dumps(request))) == repr(request)  # what a Ray router would send
        answer = real(shard, universe, within, target, cand, edges, method, args)
        for value in answer if isinstance(answer, tuple) else (answer,):
            assert value is None or isinstance(value, int) or value.dtype == np.int64, (method, value)
        calls.append((method, id(shard)))
        return answer

    monkeypatch.setattr(sharded_module, "discover_part", spy)
    service = local_service(petnord_sharded)
    service.call(DiscoverQuery.from_json({"from": "customers", "target": "churned=true", "k": 3}))
    shards = [id(s) for s in service.snapshots.snapshot.shards]
    rounds = [calls[i:i + len(shards)] for i in range(0, len(calls), len(shards))]
    for batch in rounds:  # a round: every shard in order, all asked the same
        assert [shard for _, shard in batch] == shards and len({method for method, _ in batch}) == 1, batch
    methods = [batch[0][0] for batch in rounds]
    assert methods[:3] == ["rows", "start", "strata"]
    for method in ("extend", "overlap_counts", "related", "outside", "layered"):
        assert method in methods, method
    assert len(rounds) < 40  # a few dozen rounds, not one per conjunction


def test_limits_and_errors_are_the_unsharded_ones(petnord_sharded, petnord_snapshot):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, max_discover_candidates=100)
    for obj, error in [({"from": "customers", "min_support": 1}, LimitExceededError),  # > 100 candidates
                       ({"from": "customers", "max_candidates": 500}, LimitExceededError),  # > the server's
                       ({"from": "customers", "fields": ["nope"]}, UnknownFieldError),
                       ({"from": "customers", "within": {"nope": 1}}, UnknownFieldError),
                       ({"from": "customers", "target": "churned=maybe"}, QueryError)]:  # no row has it
        assert assert_same_discover(sharded, whole, obj) is None, obj
        with pytest.raises(error):
            sharded.call(DiscoverQuery.from_json(obj))
    # under the limit: the same answer
    assert assert_same_discover(sharded, whole, {"from": "customers", "fields": FIELDS, "max_candidates": 60,
                                                 "min_support": 40}).segments


def test_discovered_segments_match_brute_force(petnord_sharded, oracle):
    """Independently of segsrv: each listed segment's size, lift over independence and split lift, and with a
    target its target rows, from the oracle's pandas masks over the source tables."""
    service = local_service(petnord_sharded)
    bu = oracle.universe("customers")
    churned = bu.eval({"churned": True})
    lengths = set()
    for obj in ({"from": "customers", "fields": FIELDS, "min_support": 40},
                {"from": "customers", "fields": FIELDS, "min_support": 40, "target": "churned=true"}):
        result = service.call(DiscoverQuery.from_json(obj))
        assert result.segments
        n = bu.n
        assert result.n_rows == n
        for seg in result.segments:
            lengths.add(len(seg.terms))
            masks = [bu.fields[f].masks[v] for f, v in seg.terms]
            members = np.logical_and.reduce(masks)
            assert seg.support == int(members.sum()), seg.terms
            if "target" in obj:
                assert seg.target_support == int((members & churned).sum()), seg.terms
                assert math.isclose(seg.lift, (seg.target_support / seg.support) / (churned.sum() / n), rel_tol=1e-12)
                continue
            expected = np.prod([m.sum() / n for m in masks]) * n
            assert math.isclose(seg.lift, seg.support / expected, rel_tol=1e-9), seg.terms
            splits = [(a, b) for r in range(1, len(masks)) for a in _subsets(len(masks), r)
                      for b in [tuple(i for i in range(len(masks)) if i not in a)]]
            split_lift = min(seg.support * n / (np.logical_and.reduce([masks[i] for i in a]).sum()
                                                * np.logical_and.reduce([masks[i] for i in b]).sum())
                             for a, b in splits)
            assert math.isclose(seg.split_lift, split_lift, rel_tol=1e-9), seg.terms
    assert {1, 2, 3} <= lengths  # single features (with the target), pairs and triples


def _subsets(n: int, r: int):
    from itertools import combinations

    return combinations(range(n), r)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
def test_histogram_quantiles_are_numpys_quantiles(values):
    """The activity strata's edges from a histogram (summed over shards) are np.quantile's of the values."""
    quantiles = np.arange(1, 10) / 10
    got = histogram_quantiles(np.bincount(values, minlength=41), quantiles)
    want = np.quantile(np.asarray(values, dtype=np.float64), quantiles)
    assert got.tobytes() == want.tobytes(), (values, got, want)


# --- a synthetic shop: shards with no customers, a replicated universe ---------------------------------------


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("n_customers, n_shards", [(400, 4), (3, 8)])
def test_shop_with_empty_shards_and_a_replicated_universe(tmp_path, n_customers, n_shards, privacy_k):
    sharded, whole = shop_services(tmp_path, n_customers, n_shards, privacy_k)
    if n_customers < n_shards:
        assert any(s.universe("customers").n_rows == 0 for s in sharded.snapshots.snapshot.shards)
    found = 0
    for obj in [{"from": "customers"}, {"from": "customers", "k": 3, "min_lift": 1.0, "max_q_value": 1.0},
                {"from": "customers", "target": {"segment": "loyal"}, "max_q_value": 1.0, "min_lift": 1.0},
                {"from": "orders", "max_q_value": 1.0, "min_lift": 1.0},
                {"from": "products", "max_q_value": 1.0, "min_lift": 1.0}]:
        got = assert_same_discover(sharded, whole, obj)
        found += len(got.segments) if got is not None else 0
    assert found or n_customers < 10


def test_cli_discover_local_on_a_sharded_snapshot(petnord_sharded, petnord_snapshot, tmp_path):
    """`segsrv discover --local ROOT/NAME` answers over the shards; --save writes the catalog file."""
    catalog = tmp_path / "segments.toml"
    done = subprocess.run([sys.executable, "-m", "segsrv", "discover", "--local", str(petnord_sharded),
                           "--from", "customers", "--target", "churned=true", "--k", "3", "--format", "json", "--quiet",
                           "--save", str(catalog)], capture_output=True, text=True, env=repo_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = SegmentationService(OneSnapshot(petnord_snapshot)).call(
        DiscoverQuery.from_json({"from": "customers", "target": "churned=true", "k": 3}))
    assert got.pop("version").startswith("shards-") and isinstance(got.pop("elapsed_ms"), float)
    assert_same_answer(got, comparable(want))
    assert sorted(tomllib.loads(catalog.read_text())["segments"]) == sorted(seg.name for seg in want.segments)


def test_candidate_positions_do_not_depend_on_the_storage(petnord_snapshot):
    """FeatureSet.of(..., in_order=True) counts in the order given, whichever features a snapshot stores dense
    (a shard decides from its own counts): its pairs, cross counts and bitsets are the kernels' order's,
    permuted."""
    from segsrv.engine.cooccurrence import FeatureSet

    u = petnord_snapshot.universe("customers")
    fids = np.arange(u.n_features, dtype=np.int64)[::-1]  # dense and sparse mixed
    ordered, kernels = FeatureSet.of(u, fids, in_order=True), FeatureSet.of(u, fids)
    assert 0 < kernels.n_dense < len(fids)
    assert np.array_equal(ordered.fids, fids)
    at = np.argsort(kernels.fids)[np.searchsorted(np.sort(kernels.fids), fids)]  # each given feature's kernel position
    assert np.array_equal(kernels.fids[at], fids)
    assert np.array_equal(ordered.pairs(), kernels.pairs()[np.ix_(at, at)])
    left = ordered.stack(np.arange(5))
    assert np.array_equal(ordered.cross(left), kernels.cross(left)[:, at])
    for i in range(len(fids)):
        assert np.array_equal(left[i] if i < 5 else ordered.stack([i])[0], np.asarray(kernels.bits(int(at[i]))))
