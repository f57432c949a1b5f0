"""Predict over a sharded snapshot (segsrv/engine/sharded/predict.py) equals the unsharded snapshot's answer:
counts bit for bit, probabilities and factors to 1e-12 (measured: bit for bit), every method."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.engine.predict import logistic
from segsrv.engine.sharded import open_sharded
from segsrv.errors import UnknownIdError
from segsrv.ops import PredictQuery
from segsrv.service import local_service
from support import answer_or_error, assert_same_predict, compare_over_shards, sharded_services, shop_services

# small queries: few evidence fields, l2 given where cross-validation is not the point (2 shared cores)
PREDICTS = [
    {"from": "customers", "target": "churned", "id": "CUST-00007"},
    {"from": "customers", "target": "churned", "id": "CUST-00042", "segment": {"region": "oulu"},
     "min_support": 3},
    {"from": "customers", "target": "lifestyle", "segment": {"segment": "dog_owner"},
     "evidence": [["pet_size", "large"], ["region", "helsinki"]], "prior_strength": 5},
    {"from": "customers", "target": "orders.lines.product.category", "id": "CUST-00011",
     "evidence_fields": ["region", "lifestyle", "pet_size", "churned"]},
    {"from": "customers", "target": "region", "id": "CUST-00100", "max_p_value": 1.0},
    {"from": "orders", "target": "customer.churned", "id": "ORD-00015", "evidence_fields": ["month", "line_categories"]},
    {"from": "order_lines", "target": "returned", "evidence": [["product.category", "litter"]],
     "segment": {"order.customer.region": "oulu"}},
    # a handful of rows: refused under a privacy floor of 10
    {"from": "customers", "target": "churned", "id": "CUST-00007",
     "segment": {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}},
]
METHODS = {"conjunction": {}, "factorized": {"prior_strength": 10}, "logistic": {"l2": 1.0}}


def both(sharded, whole, obj):
    """(the sharded answer, the unsharded one), or their errors' (class, message)."""
    return [answer_or_error(service, PredictQuery.from_json, obj) for service in (sharded, whole)]


def assert_bit_for_bit(got, want) -> None:
    assert assert_same_predict(got, want) == 0.0  # the same arithmetic on the same sums
    assert got.snapshot == "petnord" and got.version.startswith("shards-")


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("method", list(METHODS))
def test_predict_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, method, privacy_k):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k)
    queries = [{**METHODS[method], **obj, "method": method} for obj in PREDICTS]
    assert compare_over_shards(sharded, whole, queries, PredictQuery.from_json, assert_bit_for_bit) == \
        (1 if privacy_k else 0)


def test_prior_strength_and_l2_cross_validated(petnord_sharded, petnord_snapshot):
    """The factorized prior strength and the logistic l2 chosen by cross-validation (folds by the id's hash,
    held-out losses pooled over shards; the logistic fit with its interaction pairs on merged patterns)."""
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    for obj in [{"from": "customers", "target": "churned", "id": "CUST-00007", "method": "factorized"},
                {"from": "customers", "target": "lifestyle", "id": "CUST-00031", "method": "factorized",
                 "evidence_fields": ["region", "churned", "orders.line_categories"]},
                {"from": "customers", "target": "churned", "id": "CUST-00007", "method": "logistic",
                 "evidence_fields": ["region", "lifestyle", "pet_size", "tenure_months"]}]:
        got, want = both(sharded, whole, obj)
        assert got.regularisation[0].cross_validated
        assert assert_same_predict(got, want) == 0.0, obj


def test_logistic_fit_on_rows_when_patterns_are_many(petnord_sharded, petnord_snapshot, monkeypatch):
    """Patterns above PATTERN_MAX_SHARE of the rows: the unsharded fit runs on the rows themselves, and so
    does the merged one (the rows in id order)."""
    from segsrv.engine.sharded import patterns

    monkeypatch.setattr(logistic.distinct_patterns, "__defaults__", (0.001,))  # (the unsharded fit's cut-off)
    monkeypatch.setattr(patterns, "PATTERN_MAX_SHARE", 0.001)
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    obj = {"from": "customers", "target": "lifestyle", "id": "CUST-00005", "method": "logistic", "l2": 0.5,
           "evidence_fields": ["region", "churned"]}
    got, want = both(sharded, whole, obj)
    assert assert_same_predict(got, want) == 0.0


def test_unknown_id_is_the_same_error(petnord_sharded, petnord_snapshot):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    for obj in [{"from": "customers", "target": "churned", "id": "CUST-99999"},
                {"from": "orders", "target": "customer.churned", "id": "nope"},
                {"from": "customers", "target": "nope"},
                {"from": "customers", "target": "churned", "evidence": [["region", "nowhere"]]},
                {"from": "customers", "target": "churned", "evidence_fields": ["nope"]}]:
        got, want = both(sharded, whole, obj)
        assert isinstance(got, tuple) and got == want, obj
    with pytest.raises(UnknownIdError, match="has no row with customer_id 'CUST-99999'"):
        sharded.call(PredictQuery.from_json({"from": "customers", "target": "churned", "id": "CUST-99999"}))


def test_an_id_routes_to_the_one_shard_holding_it(petnord_sharded):
    sharded = open_sharded(petnord_sharded)
    for universe in ("customers", "orders", "order_lines"):
        for i, shard in enumerate(sharded.shards):
            u = shard.universe(universe)
            for row_id in u.ids_for_rows(np.arange(0, u.n_rows, max(1, u.n_rows // 7))):
                assert sharded.shard_of(universe, row_id) == i, (universe, row_id)


def test_counts_match_brute_force(petnord_sharded, oracle):
    """n_S and each value's count in S, against pandas over the source tables."""
    service = local_service(petnord_sharded)
    bu = oracle.universe("customers")
    for segment in [{}, {"region": "oulu"}, {"lifestyle": "premium", "churned": False}]:
        got = service.call(PredictQuery.from_json({"from": "customers", "target": "lifestyle", "segment": segment,
                                                   "evidence": [["pet_size", "large"]]}))
        seg = bu.eval(segment)
        has_value = np.zeros(bu.n, bool)
        for mask in bu.fields["lifestyle"].masks.values():
            has_value |= mask
        assert got.n_segment == int((seg & has_value).sum())
        assert {p.value: p.count for p in got.probabilities} == \
            {v: int((seg & m).sum()) for v, m in bu.fields["lifestyle"].masks.items()}


@pytest.mark.parametrize("n_customers, n_shards", [(40, 4), (3, 8)])
def test_shop_with_empty_shards(tmp_path, n_customers, n_shards):
    sharded, whole = shop_services(tmp_path, n_customers, n_shards)
    customer = pd.read_csv(tmp_path / "customers.csv")["customer_id"].iloc[-1]
    for method, extra in METHODS.items():
        for obj in [{"from": "customers", "target": "segment", "id": customer},
                    {"from": "customers", "target": "orders.product.category", "evidence_fields": ["segment"],
                     "id": customer},
                    {"from": "orders", "target": "channel", "evidence": [["product.category", "food"]]},
                    {"from": "products", "target": "category", "evidence": [["orders.channel", "web"]]}]:
            got, want = both(sharded, whole, {**extra, **obj, "method": method})
            if isinstance(want, tuple):
                assert got == want
            elif same_values(sharded, whole, obj["from"], obj["target"]):
                # bit for bit: evidence values no row has are left out of the logistic fit over shards
                assert assert_same_predict(got, want) == 0.0
            else:  # the shards' dictionary holds a value no row has (docs/scale.md): a class of 0 rows more
                counts = {p.value: p.count for p in got.probabilities}
                assert got.n_segment == want.n_segment
                assert {p.value: p.count for p in want.probabilities}.items() <= counts.items()
                assert not any(counts[v] for v in set(counts) - {p.value for p in want.probabilities})


def same_values(sharded, whole, universe: str, target: str) -> bool:
    schema = sharded.snapshots.snapshot.schema.universe(universe)
    return schema.fields[target].values == whole.snapshots.snapshot.universe(universe).fields[target].values


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_segments_and_rows(petnord_sharded, petnord_snapshot, where_strategy, data):
    """Random segments (condition trees), rows and methods: the same answer or the same error."""
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    row = data.draw(st.integers(0, petnord_snapshot.universe("customers").n_rows - 1), label="row")
    obj = {"from": "customers", "segment": data.draw(where_strategy("customers"), label="segment"),
           "target": data.draw(st.sampled_from(["churned", "lifestyle", "orders.line_categories"]), label="target"),
           "id": petnord_snapshot.universe("customers").ids_for_rows([row])[0],
           "evidence_fields": ["region", "pet_size", "segment", "tenure_months"]}
    method = data.draw(st.sampled_from(list(METHODS)), label="method")
    obj.update(METHODS[method], method=method)
    compare_over_shards(sharded, whole, [obj], PredictQuery.from_json, assert_bit_for_bit)


def test_shard_calls_pickle(petnord_sharded, petnord_snapshot, monkeypatch):
    """Every per-shard call's function, arguments and answer go through pickle (as to a Ray shard replica)
    and the answers stay the same: Predict (each method), ScoreSegment, Evaluate."""
    from segsrv.engine.sharded import ShardedSnapshot
    from segsrv.ops import EvaluateQuery, ScoreQuery

    in_process = ShardedSnapshot.map_each  # (`map` runs through it)

    def through_pickle(self, fn, shard_args):
        fn, shard_args = pickle.loads(pickle.dumps((fn, shard_args)))
        return pickle.loads(pickle.dumps(in_process(self, fn, shard_args)))

    monkeypatch.setattr(ShardedSnapshot, "map_each", through_pickle)
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, 0)
    queries = [{**extra, **PREDICTS[0], "method": method, "evidence_fields": ["region", "pet_size"]}
               for method, extra in METHODS.items()]
    assert compare_over_shards(sharded, whole, queries, PredictQuery.from_json, assert_bit_for_bit) == 0
    score = {"from": "customers", "target": "lifestyle", "value": "premium", "top_k": 9, "l2": 1.0,
             "evidence_fields": ["region", "churned"]}
    got, want = (answer_or_error(s, ScoreQuery.from_json, score) for s in (sharded, whole))
    assert (got.ids, got.scores.tolist(), got.n_members) == (want.ids, want.scores.tolist(), want.n_members)
    evaluation = {"from": "customers", "target": "churned", "evidence_fields": ["region"], "method": "factorized"}
    got, want = (answer_or_error(s, EvaluateQuery.from_json, evaluation) for s in (sharded, whole))
    assert (got.auc, got.log_loss, got.n_test) == (want.auc, want.log_loss, want.n_test)
