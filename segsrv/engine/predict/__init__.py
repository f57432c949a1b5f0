"""Predict within a segment, and ScoreSegment (batch scoring). See docs/predict.md.

A target field T splits the counted rows into classes:

* single-valued T (categorical or numeric bands, own or forward semantics): one
  class per value; S is restricted to rows that have a value of T and the
  probabilities of the values sum to 1;
* multi-valued T (``multi`` columns, or "exists" semantics through a reverse
  link): every value t is its own binary question with classes [t, not t];
  probabilities are P(row has t) and are not normalised across values.

The model of one question, over classes c (all counts exact, within
S = segment AND train_mask [AND has a value of T]), prior strength a > 0:

    P0(c)        = (n_{U,c} + 1) / (n_U + K)                  population prior (train rows)
    base(c)      = (n_{S,c} + a P0(c)) / (n_S + a)            base probability in S
    conjunction  : evidence in decreasing mutual information with T within S joins
                   S' = S AND e1 AND e2 ... while |S' AND e| >= min_support
    P(c | S')    = (n_{S',c} + a base(c)) / (n_{S'} + a);  factor = P(c|S') / base(c)
    lift_e(c)    = ((n_{X,e,c} + a q) / (n_{X,c} + a)) / q,  q = n_{X,e} / n_X
                   for each backed-off e, X = S' (or S when no row of S' has e);
                   skipped (factor 1) when e is unseen in S or |phi(e, e_prev)| >=
                   max_correlation within S for an already-used lift e_prev
    u(c)         = base(c) * conjunction factor * prod lift_e(c)
    P(c)         = u(c) / sum_c u(c)

``method="logistic"`` fits an L2-regularised logistic regression (scikit-learn's objective with
C = 1 / l2; l2 chosen by 5-fold cross-validation over the rows of S unless given) on the one-hot
evidence features of the rows of S and explains it in the same product
form (base, an intercept factor, one exp(weight) factor per evidence, the normaliser); it is the
default of ScoreSegment and Evaluate (cached per S).

``method="factorized"`` is the naive-Bayes floor: no conjunction and no
correlation pruning, every evidence's lift within S. It is the model that
ScoreSegment and Evaluate apply in bulk: per-class log-lift weights for all
features at once and one CSR row-score pass per class.

The requests and results are segsrv.ops.predict and segsrv.ops.score. Modules: ``target`` (the target, the counted
rows, the evidence and the counts and tests the models share), one module per model
(``conjunction``, ``factorized``, ``logistic``); this one holds the entry points ``predict``
and ``score_segment``.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ... import _kernels
from ...snapshot.reader import Snapshot
from .. import privacy
from .conjunction import conjunction_question
from .factorized import choose_prior_strength, class_log_scores, factorized_question, factorized_weights, softmax
from .logistic import CV_FOLDS, L2_GRID, logistic_question, logistic_weights, pending_fit
from .target import (Target, base_probabilities, combine_factors, evidence_feature_mask, evidence_fids, questions,
                     resolve_target)
from ...ops.predict import DEFAULT_PRIOR_STRENGTH, PredictQuery, PredictResult, Regularisation, ValueProbability, sent
from ...ops.score import ScoreQuery, ScoreResult

__all__ = ["predict", "score_segment", "bulk_weights", "pending_fits"]


def predict(snapshot: Snapshot, query: PredictQuery, privacy_k: int = 0) -> PredictResult:
    """`privacy_k` > 1: factors resting on a count below the floor are made 1 before the probabilities
    are computed, and the conjunction grows only while its counts stay clear (segsrv/engine/privacy.py;
    the service then checks the answer's own counts)."""
    t0 = time.perf_counter()
    query.validate()
    t = resolve_target(snapshot, query.universe, query.target, query.segment, query.train_mask,
                       query.max_target_values)
    u = t.universe
    fids = evidence_fids(t, query)
    out: list[ValueProbability] = []
    regularisation: list[Regularisation] = []
    ev_mask = evidence_feature_mask(t, query.evidence_fields) if query.method != "conjunction" else None
    for qi, (classes, p0, vidx) in enumerate(questions(t)):
        if query.method == "logistic":
            base, factors, reg = logistic_question(t, qi, classes, p0, fids, ev_mask, query)
            regularisation.append(reg)
        elif query.method == "conjunction":
            base, factors = conjunction_question(u, t.S, t.n_S, classes, p0, fids, query, privacy_k)
        else:
            a, reg = factorized_prior(t, classes, p0, ev_mask, query, qi)
            regularisation.append(reg)
            base, factors = factorized_question(u, t.S, t.n_S, classes, p0, fids,
                                                dataclasses.replace(query, prior_strength=a))
        factors = privacy.floor_factors(factors, privacy_k)
        probs, norm = combine_factors(base, factors)
        for c, vi in enumerate(vidx):
            count = int(_kernels.popcount(_kernels.bitset_and(t.S, t.value_bits[vi])))
            out.append(ValueProbability(t.info.values[vi], float(probs[c]), float(base[c]), factors[c], norm,
                                        count))
    return predict_result(snapshot.name, snapshot.version, u, t.info, t.multi, query.method, t.n_S, fids, out,
                          regularisation, t0)


def predict_result(name: str, version: str, u, info, multi: bool, method: str, n_S: int, fids: np.ndarray,
                   out: list[ValueProbability], regularisation: list[Regularisation], t0: float) -> PredictResult:
    """The answer of a Predict from its values' probabilities (most probable first, ties in value order)."""
    order = sorted(range(len(out)), key=lambda j: (-out[j].probability, j))
    return PredictResult(
        snapshot=name,
        version=version,
        universe=u.name,
        target=info.name,
        multi_valued=multi,
        method=method,
        n_segment=n_S,
        evidence=[u.feature_name(int(f)) for f in fids],
        probabilities=[out[j] for j in order],
        elapsed_ms=(time.perf_counter() - t0) * 1e3,
        regularisation=regularisation,
    )


def factorized_prior(t: Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray, query,
                     question: int) -> tuple[float, Regularisation]:
    """The factorized model's prior strength for `query` (one of Predict / ScoreSegment / Evaluate): the
    caller's when given, else chosen by cross-validation (factorized.choose_prior_strength); and its report."""
    return prior_choice(query, t.info.values[question] if t.multi else None,
                        lambda: choose_prior_strength(t, classes, p0, ev_mask, question))


def prior_choice(query, value: str | None, choose) -> tuple[float, Regularisation]:
    """(the prior strength, its report): the query's when given, else choose()'s (cross-validated)."""
    if sent(query, "prior_strength", DEFAULT_PRIOR_STRENGTH):
        return float(query.prior_strength), Regularisation(None, False, value, prior_strength=float(query.prior_strength))
    a = choose()
    return a, Regularisation(None, True, value, prior_strength=a)


def bulk_weights(t: Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray, query,
                 question: int):
    """(log base[K], W[K, n_features], the model's Regularisation, the logistic model's Interactions or
    None) of `query`'s bulk method ("logistic" or "factorized"; a ScoreSegment or Evaluate query) for one
    question, for `class_log_scores`: l2 (logistic) or the prior strength (factorized) chosen by
    cross-validation unless the query gives it."""
    if query.method == "logistic":
        _, _, base = base_probabilities(t.S, t.n_S, classes, p0, float(query.prior_strength))
        return logistic_weights(t, classes, ev_mask, None if query.l2 is None else float(query.l2), question, base)
    a, reg = factorized_prior(t, classes, p0, ev_mask, query, question)
    return (*factorized_weights(t, classes, p0, ev_mask, a), reg, None)


def _score_question(t: Target, value: str):
    """(classes, p0, question index, class index of `value`) of a ScoreSegment query's one question."""
    vi = t.info.value_index(str(value))
    all_questions = questions(t)
    if t.multi:
        classes, p0, _ = all_questions[vi]
        return classes, p0, vi, 0
    classes, p0, _ = all_questions[0]
    return classes, p0, 0, vi


def pending_fits(snapshot: Snapshot, query: ScoreQuery) -> list[str]:
    """What answering `query` (a ScoreSegment, or the ranking of an export) would fit before it scores,
    without fitting anything: one sentence per logistic model that is neither stored in the snapshot
    (a declared model, segsrv.engine.predict.models) nor cached in this process; [] when nothing is
    (the factorized method never fits; `logistic.pending_fit` looks up the same keys as
    `logistic_weights`). Errors of the query (unknown target, value, field) are raised here, as the call would."""
    query.validate()
    if query.method != "logistic":
        return []
    t = resolve_target(snapshot, query.universe, query.target, query.segment, query.train_mask,
                       query.max_target_values)
    classes, p0, question, _ = _score_question(t, query.value)
    _, n_Sc, base = base_probabilities(t.S, t.n_S, classes, p0, float(query.prior_strength))
    if int((n_Sc > 0).sum()) < 2:
        return []  # fewer than two classes within S: nothing to fit (logistic_weights takes log base)
    K = len(classes)
    ev_mask = evidence_feature_mask(t, query.evidence_fields)
    pending = pending_fit(t, ev_mask, None if query.l2 is None else float(query.l2), question, K, base)
    if pending is None:
        return []
    return [pending_sentence(t.info, t.multi, question, K, t.n_S, int(ev_mask.sum()), *pending)]


def pending_sentence(info, multi: bool, question: int, K: int, n_S: int, n_evidence: int, cv: bool,
                     known: float | None) -> str:
    """What `pending_fits` says of one logistic model to fit."""
    what = f"{info.name}={info.values[question]}" if multi else f"{info.name} ({K} classes)"
    penalty = (f"l2 chosen by {CV_FOLDS}-fold cross-validation over a grid of {len(L2_GRID)} values and a "
               f"refining search, then the fit" if cv
               else f"l2 {known:g}")
    return (f"fitting the logistic model of {what} within {n_S:,} rows over {n_evidence:,} evidence "
            f"features ({penalty}) before scoring: it is not cached in this process and not declared in the "
            f"snapshot (docs/spec.md, [models]); later identical calls reuse it")


def top_scores(rows: np.ndarray, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (rows, scores): score descending, then row (rows ascending as given; over shards, ids,
    whose order is the row order); k = 0: all of them as given (row order)."""
    if k and k < len(rows):
        # the K-th best score; of the rows tied with it, the first in row order (argpartition alone would
        # pick among them arbitrarily, and a sharded snapshot's merge could not reproduce its pick)
        kth = probs[np.argpartition(-probs, k - 1)[k - 1]]
        above = np.flatnonzero(probs > kth)
        part = np.concatenate([above, np.flatnonzero(probs == kth)[: k - len(above)]])
        part = part[np.lexsort((rows[part], -probs[part]))]
        return rows[part], probs[part]
    if k:
        order = np.lexsort((rows, -probs))
        return rows[order], probs[order]
    return rows, probs


def score_segment(snapshot: Snapshot, query: ScoreQuery) -> ScoreResult:
    t0 = time.perf_counter()
    query.validate()
    k = query.top_k
    t = resolve_target(snapshot, query.universe, query.target, query.segment, query.train_mask,
                       query.max_target_values)
    u = t.universe
    vi = t.info.value_index(str(query.value))
    classes, p0, question, ci = _score_question(t, query.value)
    ev_mask = evidence_feature_mask(t, query.evidence_fields)
    log_base, W, reg, inter = bulk_weights(t, classes, p0, ev_mask, query, question)
    members = _kernels.bitset_to_ids(t.segment, u.n_rows)
    probs = softmax(class_log_scores(u, log_base, W, members, inter))[:, ci] if len(members) else np.zeros(0)
    mean = float(probs.mean()) if len(probs) else math.nan
    rows, probs = top_scores(members.astype(np.int64), probs, k)
    return ScoreResult(snapshot.name, snapshot.version, u.name, t.info.name, t.info.values[vi], rows, probs,
                       len(members), mean, (time.perf_counter() - t0) * 1e3, u, regularisation=reg)
