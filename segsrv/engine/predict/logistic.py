"""The logistic method: L2-regularised logistic regression within S, explained in product form.

``fit_logistic`` minimises scikit-learn's objective (C = 1 / l2) by L-BFGS on the one-hot
evidence features of the rows of S (``design_matrix``); ``logistic_weights`` turns the fit into
per-class intercepts and weights (cached per S, evidence features and l2), which
``logistic_question`` explains as base, an intercept factor and one exp(weight) factor per
evidence, and ScoreSegment and Evaluate apply in bulk.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import numpy as np

from ... import _kernels
from ...snapshot.reader import Universe
from .. import cancel
from ..relate import count_features
from .target import Target, base_probabilities
from ...ops.predict import Factor, PredictQuery

LOGISTIC_CACHE: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
LOGISTIC_CACHE_SIZE = 16
LOGISTIC_LOCK = threading.Lock()  # the server calls the engine from several threads
LOGISTIC_MAX_ITER = 1000
LOGISTIC_GTOL_SMALL = 1e-7
LOGISTIC_GTOL_LARGE = 1e-4
LOGISTIC_SMALL_NNZ = 2_000_000


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return h.hexdigest()


def design_matrix(u: Universe, rows: np.ndarray, col_of: np.ndarray, n_cols: int):
    """scipy CSR [len(rows), n_cols] of the rows' features mapped by col_of (feature -> column, -1 = drop)."""
    from scipy.sparse import csr_matrix

    owner, feats = u.rows_features(rows)
    cols = col_of[feats]
    keep = cols >= 0
    kept_per_row = np.bincount(owner[keep], minlength=len(rows))
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(kept_per_row, out=new_ptr[1:])
    idx = cols[keep].astype(np.int32)
    return csr_matrix((np.ones(len(idx)), idx, new_ptr), shape=(len(rows), n_cols))


def fit_logistic(X, y: np.ndarray, K: int, l2: float, max_iter: int = LOGISTIC_MAX_ITER):
    """Minimise sum_i -ln P(y_i | x_i) + l2/2 ||W||^2 (intercepts unpenalised) by L-BFGS.

    K == 2: one weight vector w for class 1 against class 0 (logit b + x.w); K > 2: multinomial
    (softmax over K weight vectors). -> (intercepts, weights) with shapes (1,), (1, F) or (K,), (K, F)."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    n, F = X.shape
    XT = X.T.tocsr()
    # stopping: projected gradient of the mean objective <= gtol (tight on small problems; scikit-learn's
    # default tol 1e-4 on large ones, where every iteration is a pass over millions of non-zeros)
    gtol = LOGISTIC_GTOL_SMALL if X.nnz <= LOGISTIC_SMALL_NNZ else LOGISTIC_GTOL_LARGE
    scale = 1.0 / max(n, 1)  # the mean loss: same minimiser, better conditioned for L-BFGS
    if K == 2:
        yb = (y == 1).astype(np.float64)
        rate = (yb.sum() + 0.5) / (n + 1.0)

        def fg(theta):
            cancel.check()  # one pass over the rows per evaluation: stop when the caller is gone
            w, b = theta[:F], theta[F]
            z = X @ w + b
            loss = np.logaddexp(0.0, z).sum() - float(z @ yb) + 0.5 * l2 * float(w @ w)
            r = expit(z) - yb
            g = np.empty(F + 1)
            g[:F] = XT @ r + l2 * w
            g[F] = r.sum()
            return loss * scale, g * scale

        theta0 = np.zeros(F + 1)
        theta0[F] = math.log(rate / (1.0 - rate))
        res = minimize(fg, theta0, jac=True, method="L-BFGS-B",
                       options=dict(maxiter=max_iter, ftol=1e-12, gtol=gtol, maxcor=20))
        return res.x[F:F + 1].copy(), res.x[None, :F].copy()
    Y = np.zeros((n, K))
    Y[np.arange(n), y] = 1.0
    counts = Y.sum(axis=0)

    def fg(theta):
        cancel.check()
        W = theta[: K * F].reshape(K, F)
        b = theta[K * F:]
        Z = (X @ W.T) + b[None, :]
        lse = logsumexp(Z, axis=1)
        loss = float(lse.sum() - (Z * Y).sum()) + 0.5 * l2 * float((W * W).sum())
        R = np.exp(Z - lse[:, None]) - Y
        g = np.empty_like(theta)
        g[: K * F] = ((XT @ R).T + l2 * W).ravel()
        g[K * F:] = R.sum(axis=0)
        return loss * scale, g * scale

    theta0 = np.zeros(K * F + K)
    lb = np.log((counts + 0.5) / (n + 0.5 * K))
    theta0[K * F:] = lb - lb.mean()
    res = minimize(fg, theta0, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=max_iter, ftol=1e-12, gtol=gtol, maxcor=20))
    return res.x[K * F:].copy(), res.x[: K * F].reshape(K, F).copy()


def logistic_weights(t: Target, classes: list[np.ndarray], ev_mask: np.ndarray, l2: float,
                     question: int, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept logits[K], W[K, n_features]) of the logistic model within S: a row's class logit is
    intercept[c] + sum of W[c, f] over its evidence features, P = softmax. Binary questions split the
    fitted logit symmetrically (class 1 gets +(b + x.w)/2, class 0 the negative), so each class's
    factors explain it. When S holds fewer than two classes there is nothing to fit: the intercepts are
    log base(c) and every weight 0. Fitted once per (universe, target, S, evidence features, l2), cached."""
    u = t.universe
    K = len(classes)
    # the universe's directory names its immutable version (id(u) alone can be reused after a reload)
    key = (id(u), str(getattr(u, "dir", "")), u.name, u.n_rows, u.n_features, t.info.name, question, K,
           _digest(t.S, ev_mask, base), float(l2))
    with LOGISTIC_LOCK:
        hit = LOGISTIC_CACHE.get(key)
        if hit is not None:
            LOGISTIC_CACHE.move_to_end(key)
            return hit
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    col_of = np.full(u.n_features, -1, dtype=np.int64)
    col_of[fids] = np.arange(len(fids))
    rows = _kernels.bitset_to_ids(t.S, u.n_rows).astype(np.int64)
    y = np.full(len(rows), -1, dtype=np.int64)
    for c, bits in enumerate(classes):
        member = _kernels.bitset_and(t.S, bits)
        ids = _kernels.bitset_to_ids(member, u.n_rows).astype(np.int64)
        y[np.searchsorted(rows, ids)] = c
    W = np.zeros((K, u.n_features))
    intercept = np.log(np.asarray(base, dtype=np.float64))
    present = np.unique(y[y >= 0]) if len(rows) else np.zeros(0, np.int64)
    if len(present) >= 2:  # fit over the classes present in S (as scikit-learn does)
        X = design_matrix(u, rows, col_of, len(fids))
        yp = np.searchsorted(present, y)
        b, w = fit_logistic(X, yp, len(present), float(l2))
        if len(present) == 2:
            c0, c1 = int(present[0]), int(present[1])
            intercept[c0], intercept[c1] = -b[0] / 2.0, b[0] / 2.0
            W[c0, fids] = -w[0] / 2.0
            W[c1, fids] = w[0] / 2.0
        else:
            intercept[present] = b
            W[np.ix_(present, fids)] = w
        absent = np.setdiff1d(np.arange(K), present)
        if len(absent):  # constant logit: a row without evidence gets about its smoothed base
            bp = np.asarray(base, dtype=np.float64)
            lse = float(np.log(np.exp(intercept[present] - intercept[present].max()).sum()) + intercept[present].max())
            intercept[absent] = np.log(bp[absent] / max(1.0 - bp[absent].sum(), 1e-300)) + lse
    out = (intercept, W)
    with LOGISTIC_LOCK:
        LOGISTIC_CACHE[key] = out
        while len(LOGISTIC_CACHE) > LOGISTIC_CACHE_SIZE:
            LOGISTIC_CACHE.popitem(last=False)
    return out


def logistic_question(t: Target, qi: int, classes: list[np.ndarray], p0: np.ndarray, fids: np.ndarray,
                       ev_mask: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...]): base(c) as in the other methods; an "intercept" factor
    exp(intercept_c) / base(c); one factor exp(W[c, e]) per evidence (feature-id order). A weight is
    fitted over every row of S, not a ratio of counts: its table for the privacy floor is the
    evidence's support and the rest of S (n_S, 0, n_{S,e}, 0)."""
    u = t.universe
    a = float(q.prior_strength)
    K = len(classes)
    _, _, base = base_probabilities(t.S, t.n_S, classes, p0, a)
    intercept, W = logistic_weights(t, classes, ev_mask, float(q.l2), qi, base)
    names = [u.feature_name(int(f)) for f in fids]
    n_Se = count_features(u, t.S, t.n_S, fids)[0] if len(fids) and t.n_S else np.zeros(len(fids), np.int64)
    factors: list[list[Factor]] = [[] for _ in range(K)]
    for c in range(K):
        factors[c].append(Factor([], float(math.exp(intercept[c]) / base[c]), int(t.n_S), "lift", "intercept"))
        for i, f in enumerate(fids.tolist()):
            if not ev_mask[f]:
                note = "not a feature of the model (outside the evidence fields)"
            elif n_Se[i] == 0:
                note = "not observed in the segment"
            else:
                note = "logistic weight"
            factors[c].append(Factor([names[i]], float(math.exp(W[c, f])), int(n_Se[i]), "lift", note,
                                     (int(t.n_S), 0, int(n_Se[i]), 0)))
    return base, factors
