"""The factorised (naive-Bayes) model, and scoring rows in bulk with a per-class linear model.

``factorized_question`` explains one Predict question: every evidence's lift within S, no
conjunction and no correlation pruning. ``factorized_weights`` is the same model for every
evidence feature at once (per-class log-lift weights), which ScoreSegment and Evaluate apply
to many rows with ``class_log_scores`` (one CSR row-score pass) and ``softmax``; the logistic
model's weights are applied the same way.
"""

from __future__ import annotations

import numpy as np

from ... import _kernels
from ...snapshot.reader import Universe
from .target import (Target, add_lift, base_probabilities, class_feature_counts, g_test, lift_tables,
                     question_counts, smoothed_lift)
from ...ops.predict import PredictQuery


def factorized_question(u: Universe, S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
                        fids: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...]) for one question."""
    a = float(q.prior_strength)
    K = len(classes)
    names, n_Sc, base, N, n_Se, factors = question_counts(u, S, n_S, classes, p0, fids, a)
    p_S, lp_S = g_test(N, n_Sc)  # reported, never used to drop evidence (no significance rule here)
    for i in range(len(fids)):
        if n_Se[i] == 0:
            add_lift(factors, names[i], np.ones(K), 0, "not observed in the segment")
        else:
            add_lift(factors, names[i], smoothed_lift(N[:, i], n_Sc, int(n_Se[i]), n_S, a), n_Se[i], "",
                     lift_tables(n_S, n_Sc, n_Se[i], N[:, i]), (p_S[i], lp_S[i]))
    return base, factors


def factorized_weights(t: Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray,
                       a: float) -> tuple[np.ndarray, np.ndarray]:
    """(log base[K], W[K, n_features]): W[c, f] = log lift_f(c) within S for evidence features seen
    in S, 0 elsewhere. Counts of every evidence feature at once (one AND-count pass per class)."""
    u = t.universe
    K = len(classes)
    SC, n_Sc, base = base_probabilities(t.S, t.n_S, classes, p0, a)
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    N = class_feature_counts(u, SC, n_Sc, fids)
    n_Se = N.sum(axis=0)
    W = np.zeros((K, u.n_features), dtype=np.float64)
    seen = n_Se > 0
    if seen.any() and t.n_S > 0:
        qv = n_Se[seen] / t.n_S
        lift = ((N[:, seen] + a * qv[None, :]) / (n_Sc[:, None] + a)) / qv[None, :]
        W[:, fids[seen]] = np.log(lift)
    return np.log(base), W


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
