"""Evaluate a prediction on a deterministic holdout. See docs/predict.md.

Holdout: a row is held out when hash(seed, external id) / 2^64 < holdout_fraction,
so the split depends only on the ids (not on row order or snapshot version).
hash = splitmix64(key ^ splitmix64(seed)), key = the int id as uint64, or the
64-bit FNV-1a of a string id's UTF-8 bytes. The model's counts come from the
training rows only (segment AND NOT holdout).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .. import _kernels
from ..errors import QueryError
from ..snapshot.reader import Snapshot, Universe
from .conditions import bool_to_bitset, tail_mask
from . import cancel
from ..ops.evaluate import DEFAULT_MAX_TEST_ROWS_CONJUNCTION, N_CALIBRATION_BINS, CalibrationBin, EvaluateQuery, EvaluateResult
from ..ops.predict import PredictQuery
from .predict import bulk_weights
from .predict.conjunction import conjunction_question
from .predict.factorized import class_log_scores, softmax
from .predict.target import combine_factors, evidence_feature_mask, questions, resolve_target


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def id_keys(universe: Universe) -> np.ndarray:
    """uint64 key of every row's external id (int ids as is, string ids by FNV-1a 64)."""
    ids = np.asarray(universe.row_ids)
    if universe.key_kind == "int":
        return ids.astype(np.int64).view(np.uint64)
    width = ids.dtype.itemsize
    b = np.ascontiguousarray(ids).view(np.uint8).reshape(len(ids), width)
    h = np.full(len(ids), np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(width):  # ids never contain NUL: NUL is padding
            col = b[:, j].astype(np.uint64)
            live = col != 0
            h = np.where(live, (h ^ col) * prime, h)
    return h


def row_hash_unit(universe: Universe, seed: int) -> np.ndarray:
    """float64[n_rows] in [0, 1): H(seed, id_r) / 2^64 (top 53 bits), H = splitmix64(key ^ splitmix64(seed)).
    The holdout and the logistic method's cross-validation folds (with their own seed) both use it."""
    s = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    h = _splitmix64(id_keys(universe) ^ s)
    return (h >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def holdout_rows(universe: Universe, fraction: float, seed: int) -> np.ndarray:
    """bool[n_rows]: rows held out for testing."""
    return row_hash_unit(universe, seed) < fraction


def auc_score(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s))
    r = np.arange(1, len(s) + 1, dtype=np.float64)
    # average ranks over runs of ties
    bounds = np.flatnonzero(np.diff(ss)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    avg = np.repeat((r[starts] + r[ends - 1]) / 2.0, ends - starts)
    ranks[order] = avg
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def calibration_table(pred: np.ndarray, observed: np.ndarray, n_bins: int = N_CALIBRATION_BINS) -> list[CalibrationBin]:
    """Deciles of the predicted probability (equal-count bins of the sorted predictions)."""
    order = np.argsort(pred, kind="mergesort")
    out = []
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk) == 0:
            continue
        p = pred[chunk]
        out.append(CalibrationBin(float(p.min()), float(p.max()), float(p.mean()),
                                  float(observed[chunk].mean()), int(len(chunk))))
    return out


def row_cap(query: EvaluateQuery) -> int | None:
    """The most test rows scored: max_test_rows, by default none but for the conjunction method."""
    if query.max_test_rows is None and query.method == "conjunction":
        return DEFAULT_MAX_TEST_ROWS_CONJUNCTION
    return query.max_test_rows


def evaluate(snapshot: Snapshot, query: EvaluateQuery) -> EvaluateResult:
    t0 = time.perf_counter()
    query.validate()
    u = snapshot.universe(query.universe)
    hold = holdout_rows(u, float(query.holdout_fraction), query.seed)
    train_mask = bool_to_bitset(~hold, u.n_words)
    _kernels.bitset_and(train_mask, tail_mask(u.n_rows, u.n_words), train_mask)
    t = resolve_target(snapshot, u.name, query.target, query.segment, train_mask, query.max_target_values)
    refuse_multi_valued(t.info, t.multi)
    values = list(t.info.values)
    K = len(values)
    # test rows: segment members held out that have a value of the target
    test_bits = _kernels.bitset_and(t.segment, bool_to_bitset(hold, u.n_words))
    _kernels.bitset_and(test_bits, t.has_target, test_bits)
    test_rows = held_out_rows(u, test_bits, row_cap(query))
    refuse_no_test_rows(len(test_rows))
    true_index = true_values(t, test_rows)
    ev_mask = evidence_feature_mask(t, query.evidence_fields)
    classes, p0, _ = questions(t)[0]
    reg = None
    if query.method in ("factorized", "logistic"):
        log_base, W, reg, inter = bulk_weights(t, classes, p0, ev_mask, query, 0)
        probs, log_probs = bulk_probabilities(u, log_base, W, inter, test_rows)
    else:
        pq = PredictQuery(target=t.info.name, prior_strength=query.prior_strength, min_support=query.min_support,
                          min_support_fraction=query.min_support_fraction, max_p_value=query.max_p_value,
                          max_correlation=query.max_correlation, method="conjunction")
        probs = np.empty((len(test_rows), K))
        for j, r in enumerate(test_rows.tolist()):
            cancel.check()  # one full Predict per test row: stop when the caller is gone
            fids = u.row_features(r)
            fids = np.sort(fids[ev_mask[fids]])
            base, factors = conjunction_question(u, t.S, t.n_S, classes, p0, fids, pq)
            probs[j], _ = combine_factors(base, factors)
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)
    n_train_value = np.array([_kernels.popcount(_kernels.bitset_and(t.S, c)) for c in classes], dtype=np.int64)
    return evaluation(snapshot.name, snapshot.version, u.name, t.info.name, query.method, values, t.n_S, test_rows,
                      true_index, probs, log_probs, n_train_value, reg, t0)


def held_out_rows(u: Universe, test_bits: np.ndarray, cap: int | None) -> np.ndarray:
    """The test rows (int64, row order) of the bitset `test_bits`; above `cap`, the `cap` rows of the
    smallest id hash (deterministic)."""
    test_rows = _kernels.bitset_to_ids(test_bits, u.n_rows).astype(np.int64)
    if cap is not None and len(test_rows) > cap:  # keep the rows with the smallest hash: deterministic
        test_rows = np.sort(test_rows[np.argsort(keep_hash(u, test_rows), kind="mergesort")[:cap]])
    return test_rows


def keep_hash(u: Universe, rows: np.ndarray) -> np.ndarray:
    """The hash that picks the test rows kept under max_test_rows (the smallest ones)."""
    return _splitmix64(id_keys(u)[rows] ^ np.uint64(0x5EED))


def true_values(t, test_rows: np.ndarray) -> np.ndarray:
    """Index of each test row's target value (single-valued: at most one value per row; -1 none)."""
    u = t.universe
    true_index = np.full(len(test_rows), -1, dtype=np.int64)
    member = np.zeros(u.n_rows + 64, dtype=bool)
    for i, bits in enumerate(t.value_bits):
        ids = _kernels.bitset_to_ids(bits, u.n_rows)
        member[:] = False
        member[ids] = True
        true_index[member[test_rows]] = i
    return true_index


def bulk_probabilities(u: Universe, log_base: np.ndarray, W: np.ndarray, inter, test_rows: np.ndarray):
    """(probabilities [n, K], log-probabilities [n, K]) of the rows under a bulk model."""
    logits = class_log_scores(u, log_base, W, test_rows, inter)
    probs = softmax(logits)
    m = logits.max(axis=1, keepdims=True)
    return probs, logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))


def refuse_multi_valued(info, multi: bool) -> None:
    if multi:
        raise QueryError(
            f"target {info.name!r} is multi-valued (a row can have several values); Evaluate needs a "
            f"single-valued target",
            [("target", "multi-valued field")],
        )


def refuse_no_test_rows(n_test: int) -> None:
    if n_test == 0:
        raise QueryError("evaluate: no test rows (the segment has no held-out row with a target value)",
                         [("holdout_fraction", "empty test set")])


def evaluation(name: str, version: str, universe: str, target: str, method: str, values: list, n_train: int,
               test_rows: np.ndarray, true_index: np.ndarray, probs: np.ndarray, log_probs: np.ndarray,
               n_train_value: np.ndarray, reg, t0: float) -> EvaluateResult:
    """The answer of an Evaluate from its test rows' (in row order) true values and predicted probabilities."""
    K = len(values)
    baseline = int(np.argmax(n_train_value))
    p_true = probs[np.arange(len(test_rows)), true_index]
    pred = np.argmax(probs, axis=1)
    greater = (probs > p_true[:, None]).sum(axis=1)
    ties = (probs == p_true[:, None]).sum(axis=1) - 1
    mean_rank = float(np.mean(1 + greater + ties / 2.0))
    # from log-probabilities: finite even when a probability underflows to 0 in linear space
    log_loss = float(-np.mean(log_probs[np.arange(len(test_rows)), true_index]))
    auc = None
    positive = None
    if K == 2:
        positive = values[1]
        auc = auc_score(true_index == 1, probs[:, 1])
        calibration = calibration_table(probs[:, 1], (true_index == 1).astype(np.float64))
        calibration_of = f"P({target}={positive})"
    else:
        conf = probs[np.arange(len(test_rows)), pred]
        calibration = calibration_table(conf, (pred == true_index).astype(np.float64))
        calibration_of = "top-1 confidence (observed = accuracy)"
    return EvaluateResult(
        snapshot=name,
        version=version,
        universe=universe,
        target=target,
        method=method,
        values=values,
        n_train=n_train,
        n_test=len(test_rows),
        accuracy=float(np.mean(pred == true_index)),
        baseline_accuracy=float(np.mean(true_index == baseline)),
        baseline_value=values[baseline],
        log_loss=log_loss,
        auc=auc,
        positive_value=positive,
        mean_rank=mean_rank,
        geometric_mean_probability=math.exp(-log_loss),
        calibration=calibration,
        calibration_of=calibration_of,
        test_rows=test_rows,
        true_index=true_index,
        probabilities=probs,
        elapsed_ms=(time.perf_counter() - t0) * 1e3,
        regularisation=reg,
    )
