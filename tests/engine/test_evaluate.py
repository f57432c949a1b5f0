"""Evaluate: the holdout, the per-row predictions and the metrics.

Metrics are compared with scikit-learn on the returned per-row predictions;
the predictions themselves with Predict run row by row with the training mask
(Predict is checked against a brute-force reference in test_predict.py); the
holdout hash with a scalar pure-Python re-implementation of its definition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from segsrv.ops.conditions import All, Term
from segsrv.engine.conditions import bool_to_bitset
from segsrv.engine.evaluate import evaluate, holdout_rows
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.engine.predict import predict
from support import M64, fnv1a, splitmix64
from segsrv.ops.predict import PredictQuery
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError

U = "customers"


def ref_held_out(id_text: str, fraction: float, seed: int) -> bool:
    h = fnv1a(id_text)
    return (splitmix64(h ^ splitmix64(seed & M64)) >> 11) * 2.0 ** -53 < fraction


@pytest.fixture(scope="module")
def churn_eval(snap):
    return evaluate(snap, EvaluateQuery(target="churned", universe=U, holdout_fraction=0.2, seed=0,
                                        method="factorized"))


@pytest.fixture(scope="module")
def churn_eval_logistic(snap):
    return evaluate(snap, EvaluateQuery(target="churned", universe=U, holdout_fraction=0.2, seed=0))


def test_holdout_is_the_documented_hash(su):
    ids = su.ids_for_rows(np.arange(su.n_rows))
    for fraction, seed in ((0.2, 0), (0.5, 7), (0.05, 123456789)):
        got = holdout_rows(su, fraction, seed)
        want = np.array([ref_held_out(i, fraction, seed) for i in ids])
        assert np.array_equal(got, want)
        assert abs(got.mean() - fraction) < 0.03
    assert not np.array_equal(holdout_rows(su, 0.2, 0), holdout_rows(su, 0.2, 1))


def test_metrics_equal_sklearn(churn_eval, su, oracle):
    e = churn_eval
    bu = oracle.universe(U)
    hold = np.array([ref_held_out(i, 0.2, 0) for i in bu.ids])
    assert np.array_equal(e.test_rows, np.flatnonzero(hold))
    assert e.n_test == hold.sum() and e.n_train == (~hold).sum()
    y = np.array([e.values[i] for i in e.true_index])
    truth = np.where(bu.fields["churned"].masks["true"], "true", "false")
    assert np.array_equal(y, truth[hold])
    P = e.probabilities
    assert np.allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    pred = np.array(e.values)[np.argmax(P, axis=1)]
    assert math.isclose(e.accuracy, accuracy_score(y, pred), rel_tol=1e-12)
    assert math.isclose(e.log_loss, log_loss(y, P, labels=e.values), rel_tol=1e-9)
    assert e.positive_value == "true"
    assert math.isclose(e.auc, roc_auc_score(y == "true", P[:, 1]), rel_tol=1e-12)
    assert math.isclose(e.geometric_mean_probability, math.exp(-e.log_loss), rel_tol=1e-12)
    majority = "true" if truth[~hold].tolist().count("true") > truth[~hold].tolist().count("false") else "false"
    assert e.baseline_value == majority
    assert math.isclose(e.baseline_accuracy, float(np.mean(y == majority)), rel_tol=1e-12)
    p_true = P[np.arange(len(y)), e.true_index]
    ranks = [1 + sum(p > pt for p in row) + (sum(p == pt for p in row) - 1) / 2 for row, pt in zip(P, p_true)]
    assert math.isclose(e.mean_rank, float(np.mean(ranks)), rel_tol=1e-12)
    assert sum(b.count for b in e.calibration) == e.n_test and len(e.calibration) == 10
    for b in e.calibration:
        assert b.predicted_low <= b.mean_predicted <= b.predicted_high and 0 <= b.observed_rate <= 1
    lows = [b.predicted_low for b in e.calibration]
    assert lows == sorted(lows)
    assert e.accuracy > e.baseline_accuracy  # the model learns something


def _check_equals_predict_with_training_rows_only(e, snap, su, method, check=None):
    """10 test rows of E: their probabilities = predict(METHOD) trained on the training rows only;
    CHECK(rid, probabilities) runs on each of them too."""
    hold = holdout_rows(su, 0.2, 0)
    train = bool_to_bitset(~hold, su.n_words)
    rng = np.random.default_rng(0)
    for j in rng.choice(e.n_test, size=10, replace=False):
        rid = su.ids_for_rows([e.test_rows[j]])[0]
        p = predict(snap, PredictQuery(target="churned", universe=U, row_id=rid, method=method, train_mask=train))
        got = {vp.value: vp.probability for vp in p.probabilities}
        for k, v in enumerate(e.values):
            assert math.isclose(e.probabilities[j, k], got[v], rel_tol=1e-9, abs_tol=1e-15)
        if check is not None:
            check(rid, got)


def test_predictions_equal_predict_with_training_rows_only(churn_eval, snap, su):
    def held_out_rows_count(rid, got):
        # counting the held-out rows too gives another model: the holdout really is excluded
        p_all = predict(snap, PredictQuery(target="churned", universe=U, row_id=rid, method="factorized"))
        assert any(not math.isclose(vp.probability, got[vp.value], rel_tol=1e-12) for vp in p_all.probabilities)

    _check_equals_predict_with_training_rows_only(churn_eval, snap, su, "factorized", held_out_rows_count)


def test_logistic_is_the_default_and_equals_predict(churn_eval_logistic, churn_eval, snap, su):
    e = churn_eval_logistic
    assert e.method == "logistic"
    assert np.array_equal(e.test_rows, churn_eval.test_rows)
    y = np.array([e.values[i] for i in e.true_index])
    assert math.isclose(e.log_loss, log_loss(y, e.probabilities, labels=e.values), rel_tol=1e-9)
    assert math.isclose(e.auc, roc_auc_score(y == "true", e.probabilities[:, 1]), rel_tol=1e-12)
    assert e.accuracy > e.baseline_accuracy
    _check_equals_predict_with_training_rows_only(e, snap, su, "logistic")


def test_conjunction_method_and_segment(snap, su):
    seg = Term("lifestyle", "premium")
    e = evaluate(snap, EvaluateQuery(target="segment", universe=U, segment=seg, method="conjunction",
                                     max_test_rows=15, seed=3, holdout_fraction=0.3))
    assert e.n_test == 15 and e.auc is None and e.positive_value is None
    hold = holdout_rows(su, 0.3, 3)
    train = bool_to_bitset(~hold, su.n_words)
    assert hold[e.test_rows].all()
    for j, r in enumerate(e.test_rows.tolist()):
        rid = su.ids_for_rows([r])[0]
        p = predict(snap, PredictQuery(target="segment", universe=U, segment=seg, row_id=rid, train_mask=train,
                                       method="conjunction"))
        got = {vp.value: vp.probability for vp in p.probabilities}
        assert np.allclose(e.probabilities[j], [got[v] for v in e.values], rtol=1e-9, atol=1e-15)
    y = np.array(e.values)[e.true_index]
    assert math.isclose(e.log_loss, log_loss(y, e.probabilities, labels=e.values), rel_tol=1e-9)
    assert math.isclose(e.accuracy, accuracy_score(y, np.array(e.values)[e.probabilities.argmax(1)]), rel_tol=1e-12)
    # the capped test set is deterministic
    e2 = evaluate(snap, EvaluateQuery(target="segment", universe=U, segment=seg, method="conjunction",
                                      max_test_rows=15, seed=3, holdout_fraction=0.3))
    assert np.array_equal(e.test_rows, e2.test_rows) and np.array_equal(e.probabilities, e2.probabilities)


def test_multiclass_factorized(snap):
    e = evaluate(snap, EvaluateQuery(target="region", universe=U, seed=5, method="factorized"))
    y = np.array(e.values)[e.true_index]
    assert math.isclose(e.log_loss, log_loss(y, e.probabilities, labels=e.values), rel_tol=1e-9)
    assert e.auc is None and 1 <= e.mean_rank <= len(e.values)
    assert "top-1" in e.calibration_of


def test_bad_input(snap):
    with pytest.raises(UnknownFieldError, match="did you mean 'churned'"):
        evaluate(snap, EvaluateQuery(target="churnd", universe=U))
    with pytest.raises(LimitExceededError, match="max_target_values=5"):
        evaluate(snap, EvaluateQuery(target="region", universe=U, max_target_values=5))
    with pytest.raises(QueryError, match="multi-valued"):
        evaluate(snap, EvaluateQuery(target="orders.lines.product.category", universe=U))
    for kwargs in (dict(holdout_fraction=0), dict(holdout_fraction=1.0), dict(seed="x"), dict(method="svm"),
                   dict(max_test_rows=0), dict(prior_strength=-1)):
        with pytest.raises(QueryError):
            evaluate(snap, EvaluateQuery(target="churned", universe=U, **kwargs))
    with pytest.raises(QueryError, match="no test rows"):
        evaluate(snap, EvaluateQuery(target="churned", universe=U, segment=Term("lifestyle", "premium"),
                                     holdout_fraction=1e-9))
    assert evaluate(snap, EvaluateQuery(target="churned", universe=U, segment=All())).n_test > 0
