"""The logistic method's fit on distinct evidence patterns and its cross-validated l2 (docs/predict.md).

* the weighted fit over distinct patterns equals scikit-learn's fit over the full rows (hypothesis);
* the pattern grouping is exact, also when the hash collides everywhere;
* the l2 chosen by cross-validation equals a brute-force CV with scikit-learn on the same folds (the
  folds recomputed here from the documented row hash) and the same grid, on PetNord;
* the choice uses the training rows only (flipping the target of every held-out row changes nothing)
  and is deterministic; an l2 given by the caller is used as is, with no CV.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

from segsrv import _kernels
from segsrv.engine.conditions import bool_to_bitset, tail_mask
from segsrv.engine.evaluate import evaluate, holdout_rows
from segsrv.engine.predict import interactions as pairs_mod
from segsrv.engine.predict import logistic as L
from segsrv.engine.predict import predict, score_segment
from segsrv.engine.predict.target import base_probabilities, evidence_feature_mask, questions, resolve_target
from segsrv.ops.conditions import All
from segsrv.ops.evaluate import EvaluateQuery
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from support import ref_fold

U = "customers"
GRID = [10.0 ** e for e in np.linspace(4, -4, 10)]  # the documented grid, strongest first


def _sklearn(X, y, l2, tol=1e-12):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0 / l2, tol=tol, max_iter=100_000).fit(X, y)


def _clear():
    L.LOGISTIC_CACHE.clear()
    L.L2_CACHE.clear()


# ----------------------------------------------------------------------------
# the weighted fit over distinct patterns
# ----------------------------------------------------------------------------


@st.composite
def designs(draw):
    n = draw(st.integers(40, 160))
    F = draw(st.integers(1, 4))  # at most 16 patterns: rows repeat
    K = draw(st.sampled_from([2, 2, 3]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    dense = rng.random((n, F)) < rng.uniform(0.2, 0.7, size=F)
    logits = dense @ rng.normal(0, 1, size=(F, K)) + rng.normal(0, 0.5, size=K)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(K, p=row) for row in p])
    y[:K] = np.arange(K)  # every class present
    return dense, y, K, draw(st.sampled_from([0.5, 1.0, 3.0]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(designs())
def test_weighted_pattern_fit_equals_sklearn_on_rows(design):
    dense, y, K, l2 = design
    X = csr_matrix(dense.astype(np.float64))
    P, inv = L.distinct_patterns(X)
    assert P.shape[0] < X.shape[0]  # the fit really runs on fewer rows
    assert np.array_equal(P.toarray()[inv], dense.astype(np.float64))  # and the grouping is exact
    N = L.pattern_counts(inv, y, P.shape[0], K)
    assert N.sum() == len(y)
    b, W, _ = L.fit_counts(P, N, l2, gtol=1e-10, ftol=0.0)
    ref = _sklearn(dense.astype(np.float64), y, l2)
    if K == 2:
        assert np.allclose(W, ref.coef_, atol=1e-5, rtol=0), (W, ref.coef_)
        assert abs(b[0] - ref.intercept_[0]) < 1e-5
    else:  # multinomial intercepts are defined up to a common shift (both fits keep them centred)
        assert np.allclose(W, ref.coef_, atol=1e-5, rtol=0), (W, ref.coef_)
        assert np.allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-5, rtol=0)
    # fit_logistic (rows in, patterns inside) is the same fit
    b2, W2 = L.fit_logistic(X, y, K, l2)
    assert np.allclose(W2, ref.coef_, atol=1e-4, rtol=0)


def test_pattern_grouping_is_exact_when_every_hash_collides(monkeypatch):
    rng = np.random.default_rng(3)
    dense = (rng.random((300, 5)) < 0.4).astype(np.float64)
    y = (rng.random(300) < 0.5).astype(np.int64)
    X = csr_matrix(dense)
    monkeypatch.setattr(L, "_mix64", lambda x: np.zeros_like(np.asarray(x, dtype=np.uint64)))
    P, inv = L.distinct_patterns(X)
    assert np.array_equal(P.toarray()[inv], dense)
    b, W, _ = L.fit_counts(P, L.pattern_counts(inv, y, P.shape[0], 2), 1.0, gtol=1e-10, ftol=0.0)
    ref = _sklearn(dense, y, 1.0)
    assert np.allclose(W, ref.coef_, atol=1e-5, rtol=0) and abs(b[0] - ref.intercept_[0]) < 1e-5


def test_distinct_rows_are_left_as_they_are():
    X = csr_matrix(np.eye(50))
    P, inv = L.distinct_patterns(X)
    assert P is X and np.array_equal(inv, np.arange(50))


# ----------------------------------------------------------------------------
# the folds and the CV choice against a brute-force scikit-learn CV
# ----------------------------------------------------------------------------


def _leaks(bu, target):
    tmasks = [m for m in bu.fields[target].masks.values() if m.any()]
    return {f for f, bf in bu.fields.items() if f != target
            and any(np.array_equal(m, t) for m in bf.masks.values() for t in tmasks)}


def oracle_design(bu, target, fields=None, with_names=False):
    """One-hot matrix of the evidence fields (default: every field but the target and its copies; oracle
    masks), the class of each row (-1: no value); with_names: also each column's (field, value)."""
    skip = _leaks(bu, target) | {target}
    names = [(f, v) for f, bf in bu.fields.items() if (f in fields if fields else f not in skip) for v in bf.masks]
    X = np.column_stack([bu.fields[f].masks[v] for f, v in names]).astype(np.float64)
    y = np.full(bu.n, -1)
    for c, v in enumerate(bu.fields[target].masks):
        y[bu.fields[target].masks[v]] = c
    return (X, y, names) if with_names else (X, y)


def bruteforce_cv(X, y, folds, k=5, grid=GRID):
    """Mean held-out log-loss per grid value, pooled over every held-out row (scikit-learn fits)."""
    total = np.zeros(len(grid))
    n_test = 0
    for f in range(k):
        test, train = folds == f, folds != f
        if not test.any() or len(np.unique(y[train])) < len(np.unique(y)):
            continue
        n_test += int(test.sum())
        for j, l2 in enumerate(grid):
            m = _sklearn(X[train], y[train], l2, tol=1e-8)
            p = m.predict_proba(X[test])
            total[j] -= np.log(p[np.arange(test.sum()), np.searchsorted(m.classes_, y[test])]).sum()
    return total / n_test


def test_folds_are_the_documented_row_hash(su, bu):
    rows = np.arange(su.n_rows, dtype=np.int64)
    got = L.cv_folds(su, rows)
    ids = su.ids_for_rows(rows)
    assert [ref_fold(i) for i in ids] == got.tolist()
    assert set(got.tolist()) == set(range(5))


@pytest.mark.parametrize("fields", [None, ["region", "lifestyle", "orders.lines.product.brand"]])
def test_cv_choice_equals_bruteforce_sklearn_cv(snap, su, bu, fields, monkeypatch):
    monkeypatch.setattr(pairs_mod, "INTERACTION_FEATURES", 0)  # main effects (test_interactions: the pairs)
    target = "churned"
    X, y = oracle_design(bu, target, fields)
    has = y >= 0
    rows = np.flatnonzero(has)
    folds = np.array([ref_fold(bu.ids[r]) for r in rows])
    ref = bruteforce_cv(X[rows], y[rows], folds)
    _clear()
    res = predict(snap, PredictQuery(target=target, universe=U, row_id=bu.ids[7], method="logistic",
                                     evidence_fields=fields))
    [reg] = res.regularisation
    assert reg.cross_validated and reg.value is None
    assert np.allclose(L.L2_GRID, GRID, rtol=1e-12)
    best = int(np.argmin(ref))
    # the CV curve itself (the engine's CV over the same rows, in the oracle's design)
    P, inv = L.distinct_patterns(csr_matrix(X[rows]))
    K = len(np.unique(y[rows]))
    yk = np.searchsorted(np.unique(y[rows]), y[rows])
    l2, mean = L.choose_l2(P, inv, yk, folds, K, gtol=1e-9, max_iter=1000, patience=None, refine=False)
    assert np.allclose(mean, ref, rtol=1e-3, atol=1e-8), (mean, ref)
    assert L.L2_GRID.index(l2) == best or ref[L.L2_GRID.index(l2)] - ref[best] < 1e-6
    # the default walk (stops after 2 rises) walks the same curve
    l2w, walked = L.choose_l2(P, inv, yk, folds, K, gtol=1e-9, refine=False)
    done = ~np.isnan(walked)
    assert l2w == l2 and done[: best + 1].all() and np.allclose(walked[done], ref[done], rtol=1e-3, atol=1e-8)
    # then the refinement between the best grid value's neighbours: the engine's choice is at least as
    # good as the best grid value by the brute-force CV, and as a fine brute-force grid over the bracket
    lo, hi = GRID[min(best + 1, len(GRID) - 1)], GRID[max(best - 1, 0)]
    assert lo <= reg.l2 <= hi
    fine = [float(v) for v in np.logspace(math.log10(hi), math.log10(lo), 9)]
    at_choice, on_fine = bruteforce_cv(X[rows], y[rows], folds, grid=[reg.l2])[0], bruteforce_cv(X[rows], y[rows], folds, grid=fine)
    assert at_choice <= ref[best] + 1e-7, (reg.l2, at_choice, ref[best])
    assert at_choice <= on_fine.min() + 2e-4 * (ref[best] - on_fine.min()) + 1e-7, (reg.l2, at_choice, fine, on_fine)
    # the final model is the plain fit at the chosen l2 (a caller fixing it gets the same answer)
    fixed = predict(snap, PredictQuery(target=target, universe=U, row_id=bu.ids[7], method="logistic", l2=reg.l2,
                                       evidence_fields=fields))
    assert not fixed.regularisation[0].cross_validated
    assert [vp.probability for vp in fixed.probabilities] == [vp.probability for vp in res.probabilities]


def _flip_outside(classes, keep_bits):
    """Binary class bitsets with the class of every row outside keep_bits swapped."""
    c0, c1 = classes
    out = _kernels.bitset_andnot(c1, keep_bits)
    return [_kernels.bitset_or(_kernels.bitset_and(c0, keep_bits), out),
            _kernels.bitset_or(_kernels.bitset_and(c1, keep_bits), _kernels.bitset_andnot(c0, keep_bits))]


def test_cv_uses_training_rows_only_and_is_deterministic(snap, su):
    hold = holdout_rows(su, 0.3, 11)
    train = bool_to_bitset(~hold, su.n_words)
    _kernels.bitset_and(train, tail_mask(su.n_rows, su.n_words), train)
    t = resolve_target(snap, U, "churned", All(), train, 64)
    ev = evidence_feature_mask(t, None)
    classes, p0, _ = questions(t)[0]
    _, _, base = base_probabilities(t.S, t.n_S, classes, p0, 1.0)
    _clear()
    b1, W1, r1, i1 = L.logistic_weights(t, classes, ev, None, 0, base)
    assert r1.cross_validated
    _clear()
    b2, W2, r2, i2 = L.logistic_weights(t, classes, ev, None, 0, base)
    assert r2 == r1 and np.array_equal(W1, W2) and np.array_equal(b1, b2)  # deterministic
    assert np.array_equal(i1.pairs, i2.pairs) and np.array_equal(i1.weights, i2.weights)
    _clear()
    flipped = _flip_outside(classes, t.S)  # every held-out row gets the other class
    assert _kernels.popcount(_kernels.bitset_andnot(flipped[1], classes[1])) > 100  # held-out rows changed
    b3, W3, r3, i3 = L.logistic_weights(t, flipped, ev, None, 0, base)
    assert r3 == r1 and np.array_equal(W1, W3) and np.array_equal(b1, b3)
    assert np.array_equal(i1.pairs, i3.pairs) and np.array_equal(i1.weights, i3.weights)
    _clear()


def test_evaluate_and_score_report_the_penalty(snap, monkeypatch):
    _clear()
    e = evaluate(snap, EvaluateQuery(target="churned", universe=U))
    assert e.regularisation.cross_validated and L.L2_GRID[-1] <= e.regularisation.l2 <= L.L2_GRID[0]
    assert e.to_json()["regularisation"] == {"l2": e.regularisation.l2, "cross_validated": True, "value": None,
                                             "interaction_pairs": e.regularisation.interaction_pairs}
    fz = evaluate(snap, EvaluateQuery(target="churned", universe=U, method="factorized")).regularisation
    assert fz.l2 is None and fz.prior_strength is not None and fz.cross_validated  # its prior strength

    def no_cv(*a, **k):
        raise AssertionError("cross-validation ran although l2 was given")

    monkeypatch.setattr(L, "choose_l2", no_cv)
    _clear()
    e2 = evaluate(snap, EvaluateQuery(target="churned", universe=U, l2=2.5))
    assert (e2.regularisation.l2, e2.regularisation.cross_validated) == (2.5, False)
    s = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, l2=2.5, top_k=3))
    assert (s.regularisation.l2, s.regularisation.cross_validated) == (2.5, False)
    assert s.summary_json()["regularisation"]["l2"] == 2.5
    row_id = snap.universe(U).ids_for_rows(np.array([5]))[0]
    p = predict(snap, PredictQuery(target="orders.lines.product.category", universe=U, row_id=row_id,
                                   method="logistic", l2=4.0))
    assert [r.l2 for r in p.regularisation] == [4.0] * len(p.regularisation)
    assert {r.value for r in p.regularisation} == set(snap.universe(U).fields["orders.lines.product.category"].values)
    _clear()


def _nested_design(seed=0, n=1000, levels=40, other=30, scale=2.0):
    """One-hot rows of correlated fields: a (levels values), a // 4 (nested), c (other values) and a noisy
    copy of a (5% redrawn); the target's logit depends on a and c. Weak penalties need hundreds of
    L-BFGS iterations here."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, levels, n)
    c = rng.integers(0, other, n)
    d = np.where(rng.random(n) < 0.05, rng.integers(0, levels, n), a)
    X = np.hstack([np.eye(levels)[a], np.eye(levels // 4)[a // 4], np.eye(other)[c], np.eye(levels)[d]])
    logit = scale * (rng.normal(0, 1, levels)[a] + rng.normal(0, 0.5, other)[c]) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return X, y, rng.integers(0, 5, n)


def test_cv_fits_converge_where_the_old_cap_did_not(monkeypatch):
    """The old rule (at most 100 iterations per CV fit) left the fits at the weak penalties unconverged, so
    their held-out loss was not the converged one; now every fit converges: the walked curve equals a
    brute-force scikit-learn CV on the same folds, and the walk stops after 2 rises with the choice of the
    converged full grid."""
    X, y, folds = _nested_design()
    P, inv = L.distinct_patterns(csr_matrix(X))
    iters = []
    real = L.fit_counts

    def counting(*a, **k):
        out = real(*a, **k)
        iters.append(k.get("max_iter"))
        return out

    capped_l2, capped = L.choose_l2(P, inv, y, folds, 2, max_iter=100, patience=None, refine=False)  # the old rule
    monkeypatch.setattr(L, "fit_counts", counting)
    l2, walked = L.choose_l2(P, inv, y, folds, 2, refine=False)
    monkeypatch.undo()
    done = ~np.isnan(walked)
    assert len(iters) == 5 * int(done.sum()) and done.sum() < len(GRID)  # 5 folds per walked value, then stop
    assert all(m == L.LOGISTIC_MAX_ITER for m in iters)
    full_l2, full = L.choose_l2(P, inv, y, folds, 2, patience=None, refine=False)
    assert l2 == full_l2 and np.array_equal(walked[done], full[done])
    ref = bruteforce_cv(X, y, folds)
    assert np.allclose(walked[done], ref[done], rtol=2e-5, atol=0), (walked, ref)
    best = int(np.argmin(ref))
    assert L.L2_GRID.index(l2) == best
    # the capped curve is off where the cap bit (the weak penalties), by far more than the converged one
    assert np.max(np.abs(capped[done] - ref[done])) > 20 * np.max(np.abs(walked[done] - ref[done]))


def test_refinement_lowers_the_cv_loss_and_threads_change_nothing(monkeypatch):
    """The refined l2 has a CV loss (brute force, scikit-learn) no higher than the best grid value's, lies
    between that value's neighbours, and the choice is bit-identical with one thread or several."""
    X, y, folds = _nested_design(seed=3, n=800)
    P, inv = L.distinct_patterns(csr_matrix(X))
    grid_l2, curve = L.choose_l2(P, inv, y, folds, 2, refine=False)
    monkeypatch.setattr(L, "CV_THREADS", 1)
    one_l2, one_curve = L.choose_l2(P, inv, y, folds, 2)
    monkeypatch.setattr(L, "CV_THREADS", 2)
    two_l2, two_curve = L.choose_l2(P, inv, y, folds, 2)
    assert one_l2 == two_l2 and np.array_equal(one_curve, two_curve, equal_nan=True)
    assert np.array_equal(one_curve, curve, equal_nan=True)  # the walk is the same; only the choice is refined
    j = L.L2_GRID.index(grid_l2)
    assert L.L2_GRID[min(j + 1, len(GRID) - 1)] <= one_l2 <= L.L2_GRID[max(j - 1, 0)]
    ref_grid, ref_refined = bruteforce_cv(X, y, folds, grid=[grid_l2, one_l2])
    assert ref_refined <= ref_grid + 1e-9, (grid_l2, one_l2, ref_grid, ref_refined)


# ----------------------------------------------------------------------------
# pairwise interactions (segsrv.engine.predict.interactions), against scikit-learn
# ----------------------------------------------------------------------------

PAIR_FIELDS = ["region", "lifestyle", "orders.lines.product.brand"]  # PetNord: the pairs help here


def ref_pairs(X, y, l2, limit=40, min_rows=10):
    """The documented choice of pairs, by brute force: scikit-learn's main-effects fit at l2, the columns
    with the largest |w| sqrt(p (1 - p)) (at most `limit`), every pair of them seen together in >=
    min_rows rows and equal to neither column alone."""
    m = _sklearn(X, y, l2, tol=1e-10)
    p = X.mean(axis=0)
    effect = np.abs(m.coef_).max(axis=0) * np.sqrt(p * (1 - p))
    order = np.lexsort((np.arange(len(effect)), -effect))
    top = np.sort(order[effect[order] > 0][:limit])
    both = X[:, top].T @ X[:, top]
    return [(int(top[a]), int(top[b])) for a in range(len(top)) for b in range(a + 1, len(top))
            if min_rows <= both[a, b] < min(both[a, a], both[b, b])]


def with_pairs(X, pairs):
    return np.column_stack([X] + [X[:, a] * X[:, b] for a, b in pairs])


def bruteforce_gain_z(X, y, folds, l2, l2_pairs, k=5):
    """The held-out log-loss the pairs save per row (pairs chosen again on each fold's training rows),
    in standard errors, by scikit-learn fits."""
    d = []
    for f in range(k):
        test, train = folds == f, folds != f
        main = _sklearn(X[train], y[train], l2, tol=1e-10)
        pairs = ref_pairs(X[train], y[train], l2)
        full = _sklearn(with_pairs(X[train], pairs), y[train], l2_pairs, tol=1e-10)
        p_main = main.predict_proba(X[test])[np.arange(test.sum()), y[test]]
        p_full = full.predict_proba(with_pairs(X[test], pairs))[np.arange(test.sum()), y[test]]
        d.append(np.log(p_full) - np.log(p_main))
    d = np.concatenate(d)
    return d.mean() / (d.std() / math.sqrt(len(d)))


def test_interactions_are_the_documented_pairs_fitted_as_sklearn_would(snap, su, bu):
    X, y, names = oracle_design(bu, "churned", PAIR_FIELDS, with_names=True)
    rows = np.flatnonzero(y >= 0)
    X, y = X[rows], y[rows]
    folds = np.array([ref_fold(bu.ids[r]) for r in rows])
    t = resolve_target(snap, U, "churned", All(), None, 64)
    ev = evidence_feature_mask(t, PAIR_FIELDS)
    classes, p0, _ = questions(t)[0]
    _, _, base = base_probabilities(t.S, t.n_S, classes, p0, 1.0)
    _clear()
    intercept, W, reg, inter = L.logistic_weights(t, classes, ev, None, 0, base)
    assert reg.cross_validated and len(inter) > 0 and reg.interaction_pairs == len(inter)
    # the main effects' l2 (the CV shown equal to scikit-learn's above), then the pairs by brute force
    P, inv = L.distinct_patterns(csr_matrix(X))
    l2_main = L.choose_l2(P, inv, y, folds, 2)[0]
    fid = {n: su.feature_id(*n) for n in names}
    want = {tuple(sorted((fid[names[a]], fid[names[b]]))) for a, b in ref_pairs(X, y, l2_main)}
    assert {tuple(p) for p in inter.pairs.tolist()} == want
    # used because they lower the honest held-out loss by >= 2 standard errors (the engine's z, by brute force)
    z = bruteforce_gain_z(X, y, folds, l2_main, reg.l2)
    assert z >= 2.0
    assert math.isclose(L.pairs_gain_z(P, inv, y, folds, 2, l2_main, reg.l2, gtol=1e-9), z, rel_tol=2e-2)
    # the model is scikit-learn's fit of main effects and pair columns at the chosen l2: every row's
    # ScoreSegment probability, and by id Predict's, whose factors (pairs included) multiply to it
    col = {f: j for j, f in enumerate(fid[n] for n in names)}
    ref = _sklearn(with_pairs(X, [(col[a], col[b]) for a, b in inter.pairs.tolist()]), y, reg.l2, tol=1e-10)
    p_ref = ref.predict_proba(with_pairs(X, [(col[a], col[b]) for a, b in inter.pairs.tolist()]))[:, 1]
    sc = score_segment(snap, ScoreQuery(target="churned", universe=U, value="true", method="logistic",
                                        evidence_fields=PAIR_FIELDS, top_k=0))
    p_ours = np.empty(su.n_rows)
    p_ours[sc.rows] = sc.scores
    assert np.abs(p_ours[rows] - p_ref).max() < 1e-5
    checked = 0
    for r in rows[:40].tolist():
        res = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[r], method="logistic",
                                         evidence_fields=PAIR_FIELDS))
        vp = next(v for v in res.probabilities if v.value == "true")
        assert abs(vp.probability - p_ours[r]) < 1e-12
        pair_factors = [f for f in vp.factors if len(f.evidence) == 2]
        have = set(su.row_features(r).tolist())
        assert len(pair_factors) == sum(a in have and b in have for a, b in inter.pairs.tolist())
        product = vp.base_probability * np.prod([f.factor for f in vp.factors]) / vp.normalizer
        assert math.isclose(product, vp.probability, rel_tol=1e-9)
        checked += bool(pair_factors)
    assert checked > 0
    _clear()


def test_no_pairs_unless_they_clear_the_bar(snap, bu, monkeypatch):
    """With the bar out of reach the model is the main effects alone (no pair, the main CV's l2)."""
    q = PredictQuery(target="churned", universe=U, row_id=bu.ids[7], method="logistic",
                     evidence_fields=PAIR_FIELDS)
    _clear()
    with_bar = predict(snap, q)
    monkeypatch.setattr(pairs_mod, "INTERACTION_MIN_Z", math.inf)
    _clear()
    without = predict(snap, q)
    assert not any(len(f.evidence) == 2 for v in without.probabilities for f in v.factors)
    assert any(len(f.evidence) == 2 for v in with_bar.probabilities for f in v.factors)
    monkeypatch.setattr(pairs_mod, "INTERACTION_FEATURES", 0)
    _clear()
    assert [v.probability for v in predict(snap, q).probabilities] == [v.probability for v in without.probabilities]
    _clear()
