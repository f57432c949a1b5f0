"""Evaluate over a sharded snapshot (segsrv/engine/sharded/evaluate.py) equals the unsharded answer: the same
holdout (by the id's hash), model, test rows in row order and statistics (bit for bit); the AUC also against
scikit-learn over the source tables' labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from segsrv.engine.evaluate import holdout_rows
from segsrv.service import local_service
from support import (
    answer_or_error, assert_same_evaluation, compare_over_shards, evaluate_query, sharded_services, shop_services,
)

EVALUATES = [
    {"from": "customers", "target": "churned", "evidence_fields": ["region", "lifestyle", "pet_size"], "l2": 1.0},
    {"from": "customers", "target": "lifestyle", "segment": {"region": {"$ne": "oulu"}}, "method": "factorized",
     "prior_strength": 10, "holdout_fraction": 0.3, "seed": 7},
    {"from": "customers", "target": "churned", "method": "factorized", "evidence_fields": ["orders.line_categories"],
     "max_test_rows": 120},  # the prior strength cross-validated; the test rows capped
    {"from": "orders", "target": "customer.churned", "evidence_fields": ["month", "line_categories"], "l2": 0.5},
    # a handful of rows: no test row (refused under a privacy floor of 10)
    {"from": "customers", "target": "churned", "l2": 1.0,
     "segment": {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}},
    {"from": "customers", "target": "orders.lines.product.category"},  # multi-valued: refused alike
]


def call(service, obj):
    return answer_or_error(service, evaluate_query, obj)


@pytest.mark.parametrize("privacy_k", [0, 10])
def test_evaluate_over_shards_equals_unsharded(petnord_sharded, petnord_snapshot, privacy_k):
    sharded, whole = sharded_services(petnord_sharded, petnord_snapshot, privacy_k)
    assert compare_over_shards(sharded, whole, EVALUATES, evaluate_query, assert_same_evaluation) == 2


def test_auc_against_sklearn(petnord_sharded, source):
    """The AUC from the source tables' labels of the held-out customers and our scores."""
    query = {"from": "customers", "target": "churned", "evidence_fields": ["region", "lifestyle", "tenure_months"],
             "l2": 1.0}
    service = local_service(petnord_sharded)
    got = call(service, query)
    customers = source.tables["customers"].sort_values("customer_id")
    # the held-out ids, by the same hash (segsrv.engine.evaluate.row_hash_unit of the id) on a whole-table view
    held = customers[holdout_rows(IdView(customers["customer_id"].tolist()), 0.2, 0)]
    assert got.n_test == len(held) and got.n_train == len(customers) - len(held)
    labels = held["churned"].astype(bool).to_numpy()
    assert got.auc == pytest.approx(roc_auc_score(labels, got.probabilities[:, 1]), abs=1e-12)


class IdView:
    """The part of a Universe that the holdout hash reads: its ids (text keys)."""

    def __init__(self, ids: list[str]):
        width = max(len(i.encode()) for i in ids)
        self.row_ids = np.array([i.encode() for i in ids], dtype=f"S{width}")
        self.key_kind = "bytes"
        self.n_rows = len(ids)


def test_conjunction_is_refused_over_shards(petnord_sharded):
    got = call(local_service(petnord_sharded), {"from": "customers", "target": "churned", "method": "conjunction"})
    assert got[0] == "QueryError" and "not answered over shards" in got[1]


@pytest.mark.parametrize("n_customers, n_shards", [(40, 4), (3, 8)])
def test_shop_with_empty_shards(tmp_path, n_customers, n_shards):
    sharded, whole = shop_services(tmp_path, n_customers, n_shards)
    segment = pd.read_csv(tmp_path / "customers.csv")["segment"].iloc[0]
    for obj in [{"from": "customers", "target": "segment", "l2": 1.0, "holdout_fraction": 0.5},
                {"from": "orders", "target": "channel", "method": "factorized", "prior_strength": 3},
                {"from": "orders", "target": "channel", "segment": {"customer.segment": segment}, "l2": 1.0}]:
        got, want = call(sharded, obj), call(whole, obj)
        if isinstance(want, tuple):
            assert got == want
            continue
        assert (got.n_train, got.n_test, got.values) == (want.n_train, want.n_test, want.values) or \
            set(want.values) < set(got.values)  # (values no row has: in the shards' dictionary only)
        if got.values == want.values:
            assert np.array_equal(got.true_index, want.true_index)
            assert np.array_equal(got.probabilities, want.probabilities)  # (evidence no row has: left out)
            assert got.log_loss == pytest.approx(want.log_loss, rel=1e-12) and not math.isnan(got.log_loss)
