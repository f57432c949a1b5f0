"""The logistic method: L2-regularised logistic regression within S, explained in product form.

``fit_logistic`` minimises scikit-learn's objective (C = 1 / l2) on the one-hot evidence features of
the rows of S (``design_matrix``). The fit runs on the distinct evidence patterns of those rows with
their per-class counts as weights (``distinct_patterns``, ``fit_counts``): the same objective, term
for term, by L-BFGS in diagonally preconditioned coordinates. Unless the caller fixes ``l2``, it is
chosen by K-fold cross-validation over the training rows of S (``choose_l2``: folds by the holdout's
row hash with their own seed; grid ``L2_GRID`` walked from the strongest penalty with every fit
converged, pooled held-out log-loss, the walk ending once that loss rose twice in a row; then a bounded
Brent search between the best grid value's neighbours, to 0.05 decade).
``logistic_weights`` turns the
fit into per-class intercepts and weights (cached per S, evidence features and l2; the CV choice
cached too), which ``logistic_question`` explains as base, an intercept factor and one exp(weight)
factor per evidence, and ScoreSegment and Evaluate apply in bulk.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...snapshot.reader import Universe
from .. import cancel
from ..relate import count_features
from . import interactions as pairs_mod
from .interactions import Interactions, candidate_pairs, pair_design, strongest_columns
from .interactions import none as pairs_none
from .models import content_key, stored_model
from .target import Target, base_probabilities, class_of_rows
from ...ops.predict import Factor, PredictQuery, Regularisation

LOGISTIC_CACHE: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray, Interactions]]" = OrderedDict()
LOGISTIC_CACHE_SIZE = 16
L2_CACHE: "OrderedDict[tuple, float]" = OrderedDict()  # the cross-validated l2 per (S, evidence, question)
L2_CACHE_SIZE = 64
LOGISTIC_LOCK = threading.Lock()  # the server calls the engine from several threads
FITS = [0]  # fits this process ran (fit_count): a request on a declared model never adds one
LOGISTIC_MAX_ITER = 1000
LOGISTIC_GTOL_SMALL = 1e-7
LOGISTIC_GTOL_LARGE = 1e-4
LOGISTIC_SMALL_NNZ = 2_000_000
# cross-validation of l2: scikit-learn's LogisticRegressionCV grid (Cs=10: C = logspace(-4, 4, 10), l2 = 1 / C),
# walked from the strongest penalty to the weakest (each fold's fit starts from its previous one)
L2_GRID = tuple(float(x) for x in np.logspace(4, -4, 10))
CV_FOLDS = 5
CV_MAX_ITER = LOGISTIC_MAX_ITER  # each fit along a fold's path converges as the final fit does (warm-started)
CV_PATIENCE = 2  # the grid walk stops once the pooled held-out loss has risen for this many values in a row
CV_SEED = 0x6C325F6376  # "l2_cv": the folds' seed of the row hash (the holdout's hash, another seed)
L2_REFINE_XATOL = 0.05  # decades: the refined l2 is within about 12% of the CV loss's minimiser
CV_THREADS = 0  # threads fitting the folds (0: one per CPU, at most one per fold, for designs of
CV_PARALLEL_MIN_NNZ = 1_000_000  # at least this many non-zeros; smaller ones are fitted fold after fold)
L2_FALLBACK = 1.0  # when no fold can be fitted (a class with too few training rows)
PATTERN_MAX_SHARE = 0.8  # fit on distinct patterns when they are at most this share of the rows


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


def evidence_design(u: Universe, rows: np.ndarray, fids: np.ndarray):
    """`design_matrix` of the rows over the evidence features `fids` (column j: feature fids[j], ascending)."""
    col_of = np.full(u.n_features, -1, dtype=np.int64)
    col_of[fids] = np.arange(len(fids))
    return design_matrix(u, rows, col_of, len(fids))


_M64 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _M64[0]
        z = (z ^ (z >> np.uint64(30))) * _M64[1]
        z = (z ^ (z >> np.uint64(27))) * _M64[2]
        return z ^ (z >> np.uint64(31))


def distinct_patterns(X, max_share: float = PATTERN_MAX_SHARE):
    """The distinct rows of a CSR matrix with sorted column indices -> (P, inverse): P holds each
    distinct row once (in order of first occurrence), row i of X is row inverse[i] of P. Rows are
    grouped by a 64-bit hash of their columns and every row is then compared with its group's first
    row, column by column (a row that differs gets its own pattern), so the grouping is exact. When
    the hash already finds more than `max_share` of the rows distinct, X itself is returned
    (inverse = identity): the weighted fit would save little."""
    n = X.shape[0]
    indptr = np.asarray(X.indptr, dtype=np.int64)
    lens = np.diff(indptr)
    h = row_hashes(X)
    uniq, first, inv = np.unique(h, return_index=True, return_inverse=True)
    if len(uniq) > max_share * n:
        return X, np.arange(n, dtype=np.int64)
    rep = first[inv]
    differs = lens != lens[rep]
    same_len = ~differs
    r = np.flatnonzero(same_len & (rep != np.arange(n)))
    if len(r):
        ln = lens[r]
        offs = np.arange(int(ln.sum()), dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
        a = X.indices[np.repeat(indptr[r], ln) + offs]
        b = X.indices[np.repeat(indptr[rep[r]], ln) + offs]
        bad = np.flatnonzero(a != b)
        if len(bad):
            differs[r[np.unique(np.repeat(np.arange(len(r)), ln)[bad])]] = True
    key = inv.astype(np.int64)
    if differs.any():  # hash collisions: those rows get patterns of their own
        key[differs] = len(uniq) + np.arange(int(differs.sum()))
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # patterns in order of first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return X[first[order]], rank[inv].astype(np.int64)


def row_hashes(X) -> np.ndarray:
    """uint64 hash of each row's columns (CSR with sorted column indices): what `distinct_patterns` groups by."""
    indptr = np.asarray(X.indptr, dtype=np.int64)
    lens = np.diff(indptr)
    v = _mix64(np.asarray(X.indices).astype(np.uint64))
    with np.errstate(over="ignore"):
        cs = np.zeros(len(v) + 1, dtype=np.uint64)
        np.cumsum(v, out=cs[1:])
        return _mix64((cs[indptr[1:]] - cs[indptr[:-1]]) ^ lens.astype(np.uint64))


def pattern_counts(inverse: np.ndarray, y: np.ndarray, n_patterns: int, K: int,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """float64[n_patterns, K]: rows (all, or those selected by the bool `rows`) of each pattern and class."""
    code = inverse * K + y
    if rows is not None:
        code = code[rows]
    return np.bincount(code, minlength=n_patterns * K).reshape(n_patterns, K).astype(np.float64)


_BLAS: list = []  # threadpoolctl's controller, made once (it scans the loaded libraries)


def one_blas_thread():
    """Context: OpenBLAS / MKL limited to one thread. The fits' BLAS calls are L-BFGS's level-1 steps
    on vectors of a few thousand entries; with a team of threads each step cost ~0.1 ms instead of
    ~0.01 ms (measured, PetNord CV), and far more when the machine is busy. Entered by each fitting
    thread itself: with OpenMP loaded (our kernels), OpenBLAS's thread count is a per-thread setting
    (measured: a limit set in one thread did not reach another). Where it is process-wide instead,
    overlapping fits may leave BLAS at one thread after them, which costs segsrv nothing."""
    from threadpoolctl import ThreadpoolController

    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _gtol(nnz: int) -> float:
    return LOGISTIC_GTOL_SMALL if nnz <= LOGISTIC_SMALL_NNZ else LOGISTIC_GTOL_LARGE


def fit_counts(P, N: np.ndarray, l2: float, gtol: float | None = None, theta0: np.ndarray | None = None,
               max_iter: int = LOGISTIC_MAX_ITER, ftol: float = 1e-12):
    """Minimise sum_p sum_c N[p, c] (-ln P(c | x_p)) + l2/2 ||W||^2 (intercepts unpenalised): the objective
    over the rows, each distinct pattern x_p counted with its rows of each class (N: float[n_patterns, K]).

    K == 2: one weight vector w for class 1 against class 0 (logit b + x.w); K > 2: multinomial (softmax
    over K weight vectors). L-BFGS in coordinates scaled by the inverse square root of the Hessian's
    diagonal at the start (the same minimiser); it stops when the projected gradient of the mean
    objective (over rows, in the original coordinates) is <= gtol (default: `_gtol` of P's non-zeros,
    weighted), or when an iteration lowers it by less than ftol (relative), or after max_iter. -> (intercepts, weights, theta) with shapes (1,), (1, F)
    or (K,), (K, F); theta is the flat solution (a warm start for `theta0`)."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    n_p, F = P.shape
    K = N.shape[1]
    n_pat = N.sum(axis=1)
    n = float(n_pat.sum())
    PT = P.T  # CSC view: P.T @ r runs without a transposed copy
    if gtol is None:
        gtol = _gtol(int(np.diff(P.indptr) @ n_pat))
    scale = 1.0 / max(n, 1.0)
    colcount = np.asarray(PT @ n_pat, dtype=np.float64)
    last: dict = {}

    def stop(intermediate_result):
        v = intermediate_result.x
        if last.get("v") is not None and np.array_equal(v, last["v"]) and np.max(np.abs(last["g"])) <= gtol:
            raise StopIteration

    if K == 2:
        n1 = N[:, 1]
        rate = (n1.sum() + 0.5) / (n + 1.0)
        q = max(rate * (1.0 - rate), 1e-12)
        d = np.empty(F + 1)
        d[:F] = np.sqrt(max(n, 1.0) / (q * colcount + l2))
        d[F] = 1.0 / math.sqrt(q)

        def fg(v):
            cancel.check()  # one pass over the patterns per evaluation: stop when the caller is gone
            theta = v * d
            w, b = theta[:F], theta[F]
            z = P @ w + b
            loss = float(n_pat @ np.logaddexp(0.0, z) - n1 @ z) + 0.5 * l2 * float(w @ w)
            r = n_pat * expit(z) - n1
            g = np.empty(F + 1)
            g[:F] = PT @ r + l2 * w
            g[F] = r.sum()
            g *= scale
            last["v"], last["g"] = v.copy(), g
            return loss * scale, g * d

        if theta0 is None:
            theta0 = np.zeros(F + 1)
            theta0[F] = math.log(rate / (1.0 - rate))
        with one_blas_thread():
            res = minimize(fg, theta0 / d, jac=True, method="L-BFGS-B", callback=stop,
                           options=dict(maxiter=max_iter, ftol=ftol, gtol=0.0, maxcor=20))
        theta = res.x * d
        return theta[F:F + 1].copy(), theta[None, :F].copy(), theta
    counts = N.sum(axis=0)
    rates = (counts + 0.5) / (n + 0.5 * K)
    qc = np.maximum(rates * (1.0 - rates), 1e-12)
    d = np.empty(K * F + K)
    d[: K * F] = np.sqrt(max(n, 1.0) / (qc[:, None] * colcount[None, :] + l2)).ravel()
    d[K * F:] = 1.0 / np.sqrt(qc)

    def fg(v):
        cancel.check()
        theta = v * d
        W = theta[: K * F].reshape(K, F)
        b = theta[K * F:]
        Z = (P @ W.T) + b[None, :]
        lse = logsumexp(Z, axis=1)
        loss = float(n_pat @ lse - (Z * N).sum()) + 0.5 * l2 * float((W * W).sum())
        R = n_pat[:, None] * np.exp(Z - lse[:, None]) - N
        g = np.empty_like(theta)
        g[: K * F] = (np.asarray(PT @ R).T + l2 * W).ravel()
        g[K * F:] = R.sum(axis=0)
        g *= scale
        last["v"], last["g"] = v.copy(), g
        return loss * scale, g * d

    if theta0 is None:
        theta0 = np.zeros(K * F + K)
        lb = np.log(rates)
        theta0[K * F:] = lb - lb.mean()
    with one_blas_thread():
        res = minimize(fg, theta0 / d, jac=True, method="L-BFGS-B", callback=stop,
                       options=dict(maxiter=max_iter, ftol=ftol, gtol=0.0, maxcor=20))
    theta = res.x * d
    return theta[K * F:].copy(), theta[: K * F].reshape(K, F).copy(), theta


def fit_logistic(X, y: np.ndarray, K: int, l2: float, max_iter: int = LOGISTIC_MAX_ITER):
    """The fit over rows (X: CSR of one-hot rows, y: class index 0..K-1), run on X's distinct patterns
    weighted by their class counts. -> (intercepts, weights) as `fit_counts`."""
    P, inv = distinct_patterns(X)
    b, w, _ = fit_counts(P, pattern_counts(inv, np.asarray(y, dtype=np.int64), P.shape[0], K), float(l2),
                         gtol=_gtol(X.nnz), max_iter=max_iter)
    return b, w


def _log_loss_sum(P, N: np.ndarray, b: np.ndarray, W: np.ndarray) -> float:
    """sum_p sum_c N[p, c] (-ln P(c | x_p)) under a fit of `fit_counts`."""
    from scipy.special import logsumexp

    if N.shape[1] == 2:
        z = P @ W[0] + b[0]
        return float(N[:, 0] @ np.logaddexp(0.0, z) + N[:, 1] @ np.logaddexp(0.0, -z))
    Z = (P @ W.T) + b[None, :]
    return float((N * (logsumexp(Z, axis=1)[:, None] - Z)).sum())


def cv_folds(u: Universe, rows: np.ndarray, k: int = CV_FOLDS) -> np.ndarray:
    """int64 fold (0..k-1) of each row: floor(k * H(CV_SEED, id) / 2^64), the holdout's row hash."""
    from ..evaluate import row_hash_unit  # (engine.evaluate imports this package)

    return np.minimum((row_hash_unit(u, CV_SEED)[rows] * k).astype(np.int64), k - 1)


def _cv_threads(n_folds: int, nnz: int) -> int:
    if CV_THREADS:
        return max(1, min(n_folds, CV_THREADS))
    if nnz < CV_PARALLEL_MIN_NNZ:  # small fits: thread hand-offs and the GIL cost more than they save
        return 1
    return max(1, min(n_folds, os.cpu_count() or 1))


def fold_table(inverse: np.ndarray, y: np.ndarray, folds: np.ndarray, n_patterns: int, K: int,
               k: int = CV_FOLDS) -> np.ndarray:
    """float64[k, n_patterns, K]: rows of each fold, pattern and class (the whole counts are its sum over
    folds; over shards, the sum of the shards' tables: folds go by the id's hash)."""
    code = (np.asarray(folds, dtype=np.int64) * n_patterns + inverse) * K + y
    return np.bincount(code, minlength=k * n_patterns * K).reshape(k, n_patterns, K).astype(np.float64)


def usable_folds(n_p: int, inverse: np.ndarray, y: np.ndarray, folds: np.ndarray, K: int,
                 k: int = CV_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(held-out counts, training counts) per pattern and class of each fold (in fold order) with held-out
    rows and every class among its training rows."""
    return usable_table_folds(fold_table(inverse, y, folds, n_p, K, k))


def usable_table_folds(T: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """`usable_folds` of a fold table (`fold_table`): the counts are whole numbers, so the training counts
    (all rows minus the fold's) are exact."""
    N = T.sum(axis=0)
    out = []
    for f in range(T.shape[0]):
        if not T[f].any():
            continue
        Ntr = N - T[f]
        if (Ntr.sum(axis=0) == 0).any():
            continue
        out.append((T[f], Ntr))
    return out


def choose_l2(P, inverse: np.ndarray, y: np.ndarray, folds: np.ndarray, K: int,
              grid=L2_GRID, k: int = CV_FOLDS, gtol: float | None = None, max_iter: int = CV_MAX_ITER,
              patience: int = CV_PATIENCE, refine: bool = True, with_loss: bool = False):
    """`choose_l2_table` over the rows (pattern `inverse`, class `y`, `folds`)."""
    return choose_l2_table(P, fold_table(inverse, y, folds, P.shape[0], K, k), K, grid, gtol, max_iter, patience,
                           refine, with_loss)


def choose_l2_table(P, T: np.ndarray, K: int, grid=L2_GRID, gtol: float | None = None,
                    max_iter: int = CV_MAX_ITER, patience: int = CV_PATIENCE, refine: bool = True,
                    with_loss: bool = False):
    """K-fold cross-validation of l2 over the rows counted by the fold table T (`fold_table`). The folds
    whose training rows hold every class are fitted on the other folds, and the held-out rows'
    -ln P(y) is pooled over the folds (sum over every held-out row / their number): the CV loss of l2.

    1. The grid, from the strongest penalty: each fold's fit starts from its fit at the previous value;
       every fit converges by the final fit's rule (at most `max_iter` iterations). The walk stops once
       the CV loss has risen `patience` grid values in a row (None: the whole grid).
    2. `refine`: the CV loss is minimised over log10(l2) between the best grid value's neighbours by
       scipy's bounded Brent search (``minimize_scalar``, ``xatol`` L2_REFINE_XATOL decades), each fold's
       fit starting from its fit at the nearest l2 evaluated so far. Its point wins over the best grid
       value only when its CV loss is lower.

    Ties: the stronger penalty (the first minimum). Large designs' folds are fitted on several threads (`CV_THREADS`,
    `CV_PARALLEL_MIN_NNZ`: the fits release the GIL in their sparse products), each deterministic,
    summed in fold order: the same choice, bit for bit, with any number of threads.
    -> (l2, CV loss per grid value, NaN past the stop); no usable fold: (L2_FALLBACK, None).
    with_loss: also the CV loss at the chosen l2 and each usable fold's solution there (None, None
    without a usable fold)."""
    usable = usable_table_folds(T)
    n_test = int(sum(Nte.sum() for Nte, _ in usable))
    if n_test == 0:
        return (L2_FALLBACK, None, None, None) if with_loss else (L2_FALLBACK, None)
    fitted: dict[float, list] = {}  # l2 -> each fold's solution (the warm starts)
    ctx = contextvars.copy_context()  # the caller's cancellation check, in the pool's threads too

    def cv_loss(l2: float, pool) -> float:
        near = min(fitted, key=lambda v: abs(math.log(v) - math.log(l2))) if fitted else None
        starts = fitted[near] if near is not None else [None] * len(usable)

        def one(i: int):
            Nte, Ntr = usable[i]
            b, W, theta = fit_counts(P, Ntr, float(l2), gtol=gtol, theta0=starts[i], max_iter=max_iter)
            return _log_loss_sum(P, Nte, b, W), theta

        if pool is None:
            out = [one(i) for i in range(len(usable))]
        else:
            out = list(pool.map(lambda i: ctx.copy().run(one, i), range(len(usable))))
        fitted[float(l2)] = [theta for _, theta in out]
        return sum(loss for loss, _ in out) / n_test

    threads = _cv_threads(len(usable), int(P.nnz))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="segsrv-cv") if threads > 1 else None
    try:
        mean = np.full(len(grid), np.nan)
        rises = 0
        for j, l2 in enumerate(grid):
            mean[j] = cv_loss(float(l2), pool)
            rises = rises + 1 if j and mean[j] > mean[j - 1] else 0
            if patience is not None and rises >= patience:
                break
        j = int(np.nanargmin(mean))  # the first minimum: grid order is strongest first
        best_l2, best = float(grid[j]), float(mean[j])
        if refine and len(grid) > 1:
            from scipy.optimize import minimize_scalar

            lo = math.log10(grid[min(j + 1, len(grid) - 1)])  # the weaker neighbour (the grid descends)
            hi = math.log10(grid[max(j - 1, 0)])
            seen: dict[float, float] = {}

            def f(x: float) -> float:
                seen[x] = cv_loss(10.0 ** x, pool)
                return seen[x]

            minimize_scalar(f, bounds=(lo, hi), method="bounded", options=dict(xatol=L2_REFINE_XATOL))
            x = min(seen, key=lambda v: (seen[v], -v))  # ties: the stronger penalty
            if seen[x] < best:
                best_l2, best = float(10.0 ** x), seen[x]
    finally:
        if pool is not None:
            pool.shutdown()
    return (best_l2, mean, best, fitted[best_l2]) if with_loss else (best_l2, mean)


def fit_rows(u: Universe, rows: np.ndarray, y: np.ndarray, K: int, fids: np.ndarray, l2: float | None,
             interactions: bool = True):
    """The fit over `rows` of the universe (class y[i] in 0..K-1 of row rows[i], every class present) on the
    evidence features `fids`: the design matrix from the rows index, its distinct patterns, l2 chosen by
    `choose_l2` over `cv_folds` when None, then the fit at that l2 from the default start (the model a
    caller fixing l2 gets: main effects only, scikit-learn's model).

    With l2 chosen by cross-validation and `interactions`, the pairs of the strongest features
    (segsrv.engine.predict.interactions) are tried too: a first look (`pairs_gain_z` at the main
    effects' l2 > 0), then their design (main effects and pair columns) gets its own l2 by `choose_l2`
    over the same folds, and it is the model when its CV loss is lower than the main effects' own and
    `pairs_gain_z` at that l2 is >= INTERACTION_MIN_Z. -> (intercepts, weights over fids, l2 used, Interactions: pairs as
    feature ids and their weights, shapes as `fit_counts`: (1, n) binary, (K, n) multinomial)."""
    X = evidence_design(u, rows, fids)
    P, inv = distinct_patterns(X)
    # one fold when l2 is given: only the table's sum is used
    folds = cv_folds(u, rows) if l2 is None else np.zeros(len(rows), np.int64)
    T = fold_table(inv, y, folds, P.shape[0], K, CV_FOLDS if l2 is None else 1)
    return fit_patterns(P, T, K, fids, l2, _gtol(X.nnz), interactions)


def fit_patterns(P, T: np.ndarray, K: int, fids: np.ndarray, l2: float | None, gtol: float,
                 interactions: bool = True):
    """`fit_rows` on the design's patterns P (CSR over the columns fids) with their rows per cross-validation
    fold and class T[k, n_patterns, K] (`fold_table`; only its sum over folds is used when l2 is given);
    gtol: `_gtol` of the rows' design. The objective and every fold's are sums over the patterns' counts, so
    a sharded snapshot merges its shards' tables and fits here (segsrv.engine.sharded.predict)."""
    T = np.ascontiguousarray(T)  # (the same memory order, the same BLAS sums: bit for bit)
    N = T.sum(axis=0)
    if l2 is not None:
        b, w, _ = fit_counts(P, N, float(l2), gtol=gtol)
        return b, w, float(l2), pairs_none(w.shape[0])
    l2, _, loss, fold_thetas = choose_l2_table(P, T, K, gtol=gtol, with_loss=True)
    b, w, _ = fit_counts(P, N, float(l2), gtol=gtol)
    if interactions and loss is not None:
        n_pat = N.sum(axis=1)
        pairs = candidate_pairs(P, n_pat, strongest_columns(P, n_pat, w, pairs_mod.INTERACTION_FEATURES))
        # a cheap look first (the pairs at the main effects' l2, each fold's fit warm-started): pairs that do
        # not help at all there are not cross-validated (their CV costs as much as the main effects')
        if len(pairs) and pairs_gain_z_table(P, T, K, float(l2), float(l2), gtol, fold_thetas) > 0.0:
            Z = pair_design(P, pairs)
            P2 = _hstack(P, Z)
            l2_pairs, _, loss_pairs, _ = choose_l2_table(P2, T, K, gtol=gtol, with_loss=True)
            if (loss_pairs is not None and loss_pairs < loss
                    and pairs_gain_z_table(P, T, K, float(l2), float(l2_pairs), gtol, fold_thetas)
                    >= pairs_mod.INTERACTION_MIN_Z):
                b, w2, _ = fit_counts(P2, N, float(l2_pairs), gtol=gtol)
                F = len(fids)
                support = np.rint(np.asarray(Z.T @ n_pat)).astype(np.int64)
                return b, w2[:, :F].copy(), float(l2_pairs), Interactions(fids[pairs], w2[:, F:].copy(), support)
    return b, w, float(l2), pairs_none(w.shape[0])


def _class_losses(P, b: np.ndarray, W: np.ndarray) -> np.ndarray:
    """float64[n_patterns, K]: -ln P(c | x_p) under a fit of `fit_counts` (K = 2: its one logit)."""
    from scipy.special import logsumexp

    if W.shape[0] == 1:
        z = P @ W[0] + b[0]
        return np.column_stack([np.logaddexp(0.0, z), np.logaddexp(0.0, -z)])
    Z = (P @ W.T) + b[None, :]
    return logsumexp(Z, axis=1)[:, None] - Z


def pairs_gain_z(P, inverse: np.ndarray, y: np.ndarray, folds: np.ndarray, K: int, l2: float, l2_pairs: float,
                 gtol: float | None = None, main_thetas: list | None = None) -> float:
    """How many standard errors the interaction model lowers the held-out log-loss by, per row, against the
    main effects, both cross-validated over `folds` and the pairs chosen again within each fold's training
    rows (so the held-out rows never choose their own pairs): the mean over held-out rows of
    d = -ln P_main(y) + ln P_pairs(y), divided by its standard error (sd(d) / sqrt(rows)). 0 without a
    usable fold. main_thetas: the main effects' solution on each usable fold at l2 (`choose_l2`'s), to
    reuse; each fold's pair model starts from it (pair weights 0)."""
    return pairs_gain_z_table(P, fold_table(inverse, y, folds, P.shape[0], K), K, l2, l2_pairs, gtol, main_thetas)


def pairs_gain_z_table(P, T: np.ndarray, K: int, l2: float, l2_pairs: float, gtol: float | None = None,
                       main_thetas: list | None = None) -> float:
    """`pairs_gain_z` over the rows counted by the fold table T (`fold_table`)."""
    F = P.shape[1]
    s1 = s2 = n = 0.0
    for i, (Nte, Ntr) in enumerate(usable_table_folds(T)):
        theta = main_thetas[i] if main_thetas is not None else None
        if theta is None:
            b, W, theta = fit_counts(P, Ntr, l2, gtol=gtol)
        else:
            b, W = _unpack(theta, F, K)
        n_tr = Ntr.sum(axis=1)
        pairs = candidate_pairs(P, n_tr, strongest_columns(P, n_tr, W, pairs_mod.INTERACTION_FEATURES))
        d = np.zeros((P.shape[0], K))
        if len(pairs):
            P2 = _hstack(P, pair_design(P, pairs))
            b2, W2, _ = fit_counts(P2, Ntr, l2_pairs, gtol=gtol, theta0=_padded(theta, F, K, len(pairs)))
            d = _class_losses(P, b, W) - _class_losses(P2, b2, W2)
        s1 += float((Nte * d).sum())
        s2 += float((Nte * d * d).sum())
        n += float(Nte.sum())
    if n < 2:
        return 0.0
    mean = s1 / n
    sd = math.sqrt(max(s2 / n - mean * mean, 0.0))
    return math.inf if sd == 0.0 and mean > 0 else (mean / (sd / math.sqrt(n)) if sd > 0 else 0.0)


def _unpack(theta: np.ndarray, F: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(intercepts, weights) of `fit_counts`'s flat solution."""
    if K == 2:
        return theta[F:F + 1].copy(), theta[None, :F].copy()
    return theta[K * F:].copy(), theta[: K * F].reshape(K, F).copy()


def _padded(theta: np.ndarray, F: int, K: int, n_new: int) -> np.ndarray:
    """The flat solution over F columns as one over F + n_new (the new columns' weights 0)."""
    b, W = _unpack(theta, F, K)
    W2 = np.hstack([W, np.zeros((W.shape[0], n_new))])
    return np.concatenate([W2.ravel(), b])


def _hstack(A, B):
    from scipy.sparse import hstack

    return hstack([A, B], format="csr")


def _model_keys(t: Target, ev_mask: np.ndarray, question: int, K: int, base: np.ndarray,
                l2: float | None) -> tuple[tuple, tuple]:
    """(the process caches' key, the content key of a stored model) of one model."""
    u = t.universe
    digest = _digest(t.S, ev_mask, base)
    # the universe's directory names its immutable version (id(u) alone can be reused after a reload)
    skey = (id(u), str(getattr(u, "dir", "")), u.name, u.n_rows, u.n_features, t.info.name, question, K, digest)
    return skey, content_key(t, question, K, digest, l2)


def pending_fit(t: Target, ev_mask: np.ndarray, l2: float | None, question: int, K: int,
                base: np.ndarray) -> tuple[bool, float | None] | None:
    """What `logistic_weights` would fit for these arguments, without fitting: None when the model is
    stored in the snapshot or cached in this process; else (whether l2 is still to be cross-validated,
    the l2 the fit would use when known)."""
    skey, key = _model_keys(t, ev_mask, question, K, base, l2)
    if stored_model(t, key) is not None:
        return None
    with LOGISTIC_LOCK:
        known = l2 if l2 is not None else L2_CACHE.get(skey)
        if known is not None and skey + (float(known),) in LOGISTIC_CACHE:
            return None
    return known is None, known


def logistic_weights(t: Target, classes: list[np.ndarray], ev_mask: np.ndarray, l2: float | None,
                     question: int, base: np.ndarray, with_key: bool = False):
    """(intercept logits[K], W[K, n_features], the penalty used, Interactions) of the logistic model within
    S: a row's class logit is intercept[c] + sum of W[c, f] over its evidence features + the weights of
    the interaction pairs it has both features of (weights [K, n_pairs]), P = softmax. Binary
    questions split the fitted logit symmetrically (class 1 gets +(b + x.w)/2, class 0 the negative),
    so each class's factors explain it. When S holds fewer than two classes there is nothing to fit:
    the intercepts are log base(c) and every weight 0. `l2` None: chosen by `choose_l2` over the rows
    of S. Fitted once per (universe, target, S, evidence features, l2), cached; the CV choice too.
    A model stored in the snapshot under the same content key (segsrv.engine.predict.models: declared
    in the build spec, fitted by `segsrv build`) is taken as it is: no fit. with_key: also return
    that content key (what `segsrv build` stores a model under)."""
    u = t.universe
    K = len(classes)
    value = t.info.values[question] if t.multi else None
    skey, key = _model_keys(t, ev_mask, question, K, base, l2)
    cv = l2 is None
    stored = stored_model(t, key)
    if stored is not None:
        answer = (stored[0], stored[1], Regularisation(stored[2], cv, value, len(stored[3])), stored[3])
        return (*answer, key) if with_key else answer
    with LOGISTIC_LOCK:
        if cv and skey in L2_CACHE:
            L2_CACHE.move_to_end(skey)
            l2 = L2_CACHE[skey]
        hit = LOGISTIC_CACHE.get(skey + (float(l2),)) if l2 is not None else None
        if hit is not None:
            LOGISTIC_CACHE.move_to_end(skey + (float(l2),))
            answer = (hit[0], hit[1], Regularisation(float(l2), cv, value, len(hit[2])), hit[2])
            return (*answer, key) if with_key else answer
        FITS[0] += 1
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    rows, y = class_of_rows(t.S, classes, u.n_rows)
    present = np.unique(y[y >= 0]) if len(rows) else np.zeros(0, np.int64)
    intercept, W, inter, l2 = class_weights(
        K, u.n_features, fids, base, present, l2,
        lambda Kp, l2_fit: fit_rows(u, rows, np.searchsorted(present, y), Kp, fids, l2_fit))
    out = (intercept, W, inter)
    with LOGISTIC_LOCK:
        LOGISTIC_CACHE[skey + (float(l2),)] = out
        while len(LOGISTIC_CACHE) > LOGISTIC_CACHE_SIZE:
            LOGISTIC_CACHE.popitem(last=False)
        if cv:
            L2_CACHE[skey] = float(l2)
            while len(L2_CACHE) > L2_CACHE_SIZE:
                L2_CACHE.popitem(last=False)
    answer = (intercept, W, Regularisation(float(l2), cv, value, len(inter)), inter)
    return (*answer, key) if with_key else answer


def class_weights(K: int, n_features: int, fids: np.ndarray, base: np.ndarray, present: np.ndarray,
                  l2: float | None, fit):
    """(intercept logits[K], W[K, n_features], Interactions, the l2 used) of `logistic_weights` from a fit over
    the classes `present` in S: fit(Kp, l2) -> `fit_rows`'s answer over those Kp classes (not called with
    fewer than two: nothing to fit, the intercepts are log base)."""
    W = np.zeros((K, n_features))
    intercept = np.log(np.asarray(base, dtype=np.float64))
    inter = pairs_none(K)
    if len(present) >= 2:  # fit over the classes present in S (as scikit-learn does)
        Kp = len(present)
        b, w, l2, fitted_pairs = fit(Kp, l2)
        Wp = np.zeros((K, len(fitted_pairs)))
        if Kp == 2:
            c0, c1 = int(present[0]), int(present[1])
            intercept[c0], intercept[c1] = -b[0] / 2.0, b[0] / 2.0
            W[c0, fids] = -w[0] / 2.0
            W[c1, fids] = w[0] / 2.0
            Wp[c0], Wp[c1] = -fitted_pairs.weights[0] / 2.0, fitted_pairs.weights[0] / 2.0
        else:
            intercept[present] = b
            W[np.ix_(present, fids)] = w
            Wp[present] = fitted_pairs.weights
        inter = Interactions(fitted_pairs.pairs, Wp, fitted_pairs.support)
        absent = np.setdiff1d(np.arange(K), present)
        if len(absent):  # constant logit: a row without evidence gets about its smoothed base
            bp = np.asarray(base, dtype=np.float64)
            lse = float(np.log(np.exp(intercept[present] - intercept[present].max()).sum()) + intercept[present].max())
            intercept[absent] = np.log(bp[absent] / max(1.0 - bp[absent].sum(), 1e-300)) + lse
    elif l2 is None:
        l2 = L2_FALLBACK  # nothing to fit, nothing to choose
    return intercept, W, inter, l2


def fit_count() -> int:
    """Logistic models fitted by this process so far (stored and cached ones are not fits)."""
    with LOGISTIC_LOCK:
        return FITS[0]


def logistic_question(t: Target, qi: int, classes: list[np.ndarray], p0: np.ndarray, fids: np.ndarray,
                       ev_mask: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...], the penalty used): base(c) as in the other methods; an "intercept" factor
    exp(intercept_c) / base(c); one factor exp(W[c, e]) per evidence (feature-id order); then one factor
    exp(weight) per interaction pair of the model whose two features are both evidence (pair order). A
    weight is fitted over every row of S, not a ratio of counts: its table for the privacy floor is the
    evidence's (or pair's) support and the rest of S (n_S, 0, n_{S,e}, 0)."""
    u = t.universe
    a = float(q.prior_strength)
    _, _, base = base_probabilities(t.S, t.n_S, classes, p0, a)
    intercept, W, reg, inter = logistic_weights(t, classes, ev_mask, None if q.l2 is None else float(q.l2), qi,
                                                base)
    n_Se = count_features(u, t.S, t.n_S, fids)[0] if len(fids) and t.n_S else np.zeros(len(fids), np.int64)
    return base, logistic_factors(u, fids, ev_mask, n_Se, t.n_S, intercept, W, inter, base), reg


def logistic_factors(u: Universe, fids: np.ndarray, ev_mask: np.ndarray, n_Se: np.ndarray, n_S: int,
                     intercept: np.ndarray, W: np.ndarray, inter: Interactions, base: np.ndarray) -> list[list[Factor]]:
    """The factors of `logistic_question` from the model and the evidence's rows in S (n_Se)."""
    K = len(base)
    names = [u.feature_name(int(f)) for f in fids]
    factors: list[list[Factor]] = [[] for _ in range(K)]
    for c in range(K):
        factors[c].append(Factor([], float(math.exp(intercept[c]) / base[c]), int(n_S), "lift", "intercept"))
        for i, f in enumerate(fids.tolist()):
            if not ev_mask[f]:
                note = "not a feature of the model (outside the evidence fields)"
            elif n_Se[i] == 0:
                note = "not observed in the segment"
            else:
                note = "logistic weight"
            factors[c].append(Factor([names[i]], float(math.exp(W[c, f])), int(n_Se[i]), "lift", note,
                                     (int(n_S), 0, int(n_Se[i]), 0)))
    if len(inter):
        have = np.isin(inter.pairs, fids).all(axis=1)
        for k in np.flatnonzero(have).tolist():
            fa, fb = (int(x) for x in inter.pairs[k])
            n_ab = int(inter.support[k])
            pair = [u.feature_name(fa), u.feature_name(fb)]
            for c in range(K):
                factors[c].append(Factor(pair, float(math.exp(inter.weights[c, k])), n_ab, "lift",
                                         "logistic interaction weight (both together)", (int(n_S), 0, n_ab, 0)))
    return factors
