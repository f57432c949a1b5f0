"""The factorised (naive-Bayes) model, and scoring rows in bulk with a per-class linear model.

``factorized_question`` explains one Predict question: every evidence's lift within S, no
conjunction and no correlation pruning. ``factorized_weights`` is the same model for every
evidence feature at once (per-class log-lift weights), which ScoreSegment and Evaluate apply
to many rows with ``class_log_scores`` (one CSR row-score pass) and ``softmax``; the logistic
model's weights are applied the same way.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

import numpy as np

from ... import _kernels
from ...snapshot.reader import Universe
from .target import (Target, add_lift, base_probabilities, class_of_rows, class_feature_counts, g_test, lift_tables,
                     question_counts, smoothed_lift)
from ...ops.predict import PredictQuery


def factorized_question(u: Universe, S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
                        fids: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...]) for one question."""
    a = float(q.prior_strength)
    names, n_Sc, base, N, n_Se, factors = question_counts(u, S, n_S, classes, p0, fids, a)
    factorized_factors(factors, names, n_S, n_Sc, N, n_Se, a)
    return base, factors


def factorized_factors(factors, names, n_S: int, n_Sc: np.ndarray, N: np.ndarray, n_Se: np.ndarray, a: float) -> None:
    """Append every evidence's lift within S (N[K, m] its rows per class, n_Se its rows) to `factors`."""
    K = len(n_Sc)
    p_S, lp_S = g_test(N, n_Sc)  # reported, never used to drop evidence (no significance rule here)
    for i in range(len(names)):
        if n_Se[i] == 0:
            add_lift(factors, names[i], np.ones(K), 0, "not observed in the segment")
        else:
            add_lift(factors, names[i], smoothed_lift(N[:, i], n_Sc, int(n_Se[i]), n_S, a), n_Se[i], "",
                     lift_tables(n_S, n_Sc, n_Se[i], N[:, i]), (p_S[i], lp_S[i]))


def factorized_weights(t: Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray,
                       a: float) -> tuple[np.ndarray, np.ndarray]:
    """(log base[K], W[K, n_features]): W[c, f] = log lift_f(c) within S for evidence features seen
    in S, 0 elsewhere. Counts of every evidence feature at once (one AND-count pass per class)."""
    u = t.universe
    SC, n_Sc, base = base_probabilities(t.S, t.n_S, classes, p0, a)
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    N = class_feature_counts(u, SC, n_Sc, fids)
    return lift_weights(u.n_features, fids, N, n_Sc, t.n_S, base, a)


def lift_weights(n_features: int, fids: np.ndarray, N: np.ndarray, n_Sc: np.ndarray, n_S: int, base: np.ndarray,
                 a: float) -> tuple[np.ndarray, np.ndarray]:
    """(log base[K], W[K, n_features]) of `factorized_weights` from the counts: N[K, len(fids)] the rows of
    S in each class with each evidence feature fids, n_Sc the class sizes in S."""
    K = len(n_Sc)
    n_Se = N.sum(axis=0)
    W = np.zeros((K, n_features), dtype=np.float64)
    seen = n_Se > 0
    if seen.any() and n_S > 0:
        qv = n_Se[seen] / n_S
        lift = ((N[:, seen] + a * qv[None, :]) / (n_Sc[:, None] + a)) / qv[None, :]
        W[:, fids[seen]] = np.log(lift)
    return np.log(base), W


# the prior strength's cross-validation grid (pseudo-rows of the base rate per lift), strongest first
PRIOR_GRID = (100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1)
PRIOR_CACHE: "OrderedDict[tuple, float]" = OrderedDict()  # the chosen strength per (S, evidence, question)
PRIOR_CACHE_SIZE = 64
_PRIOR_LOCK = threading.Lock()


def choose_prior_strength(t: Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray,
                          question: int, grid=PRIOR_GRID) -> float:
    """The factorized model's prior strength chosen by K-fold cross-validation over the rows of S (the
    logistic method's folds, `logistic.cv_folds`): for each fold, the lifts counted on the other folds'
    rows of S score the fold's rows (`class_log_scores`), and the held-out -ln P(class) is pooled over
    every held-out row; the grid value with the smallest pooled loss wins (ties: the stronger prior).
    Only counts: 5 x len(grid) AND-count passes. Cached per (universe version, S, evidence, question).
    A segment with fewer than two rows: the grid's 1.0 (nothing to hold out)."""
    from .logistic import _digest, cv_folds  # (logistic imports this module's siblings, not this one)

    u = t.universe
    key = (id(u), str(getattr(u, "dir", "")), u.name, t.info.name, int(question), _digest(t.S, ev_mask, p0))
    with _PRIOR_LOCK:
        if key in PRIOR_CACHE:
            PRIOR_CACHE.move_to_end(key)
            return PRIOR_CACHE[key]
    rows, y = class_of_rows(t.S, classes, u.n_rows)
    best = 1.0
    if len(rows) >= 2:
        folds = cv_folds(u, rows)
        loss = np.zeros(len(grid))
        for f in np.unique(folds).tolist():
            test = rows[(folds == f) & (y >= 0)]
            if len(test) == 0 or len(test) == len(rows):
                continue
            held = _kernels.ids_to_bitset(test.astype(np.uint32), u.n_words)
            train_S = _kernels.bitset_andnot(t.S, held)
            t_f = dataclasses.replace(t, S=train_S, n_S=int(_kernels.popcount(train_S)))
            y_test = y[np.searchsorted(rows, test)]
            for j, a in enumerate(grid):
                log_base, W = factorized_weights(t_f, classes, p0, ev_mask, float(a))
                loss[j] += held_out_loss(u, log_base, W, test, y_test)
        best = prior_of_losses(loss, grid)
    with _PRIOR_LOCK:
        PRIOR_CACHE[key] = best
        while len(PRIOR_CACHE) > PRIOR_CACHE_SIZE:
            PRIOR_CACHE.popitem(last=False)
    return best


def held_out_loss(u: Universe, log_base: np.ndarray, W: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """sum over the rows `test` of -ln P(their class y_test) under the per-class linear model (log_base, W)."""
    logits = class_log_scores(u, log_base, W, test)
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float((lse - logits[np.arange(len(test)), y_test]).sum())


def prior_of_losses(loss: np.ndarray, grid=PRIOR_GRID) -> float:
    """The grid's prior strength of the smallest pooled held-out loss (the first minimum: the stronger
    prior); 1.0 when no fold was scored."""
    return float(grid[int(np.argmin(loss))]) if loss.any() else 1.0


def class_log_scores(u: Universe, log_base: np.ndarray, W: np.ndarray, rows: np.ndarray,
                     interactions=None) -> np.ndarray:
    """[len(rows), K] log of the unnormalised class scores (CSR kernels, GIL released); `interactions`
    (the logistic method's pairs, segsrv.engine.predict.interactions): their weights added too."""
    r = np.ascontiguousarray(rows, dtype=np.uint32)
    # one pass over the rows scores every class: W.T is the kernel's [features, classes] matrix
    out = _kernels.csr_row_scores(u.csr_indptr, u.csr_indices, np.ascontiguousarray(W.T), r)
    if interactions is not None and len(interactions):
        from .interactions import pair_scores  # (interactions imports no sibling: no cycle)

        out += pair_scores(u, interactions, r)
    out += np.asarray(log_base, dtype=np.float64)[None, :]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=1, keepdims=True)
