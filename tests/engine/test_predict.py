"""Predict and ScoreSegment against an independent brute-force implementation.

The reference model below re-implements the documented method (docs/predict.md)
in plain Python over boolean masks built by the source-table oracle of
conftest.py (pandas joins over the PetNord JSON files); it never reads the
snapshot's bitsets or CSR. The only things taken from the snapshot are the
value order of the target field and feature ids (the documented tie-break of
the mutual-information order).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from segsrv import _kernels
from segsrv.engine.conditions import evaluate
from segsrv.ops.conditions import All, And, Not, Term
from segsrv.engine.conditions import bool_to_bitset
from segsrv.engine.predict import predict, score_segment
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from support import ref_fold
from segsrv.errors import (
    LimitExceededError,
    QueryError,
    UnknownFieldError,
    UnknownIdError,
    UnknownValueError,
)

U = "customers"


# ----------------------------------------------------------------------------
# reference implementation
# ----------------------------------------------------------------------------


def _mi(table, n):
    """MI (bits) of a 2 x K table of counts [[present by class], [absent by class]]."""
    col = [table[0][c] + table[1][c] for c in range(len(table[0]))]
    out = 0.0
    for r in range(2):
        row = sum(table[r])
        for c, k in enumerate(table[r]):
            if k > 0:
                out += (k / n) * math.log2(k * n / (row * col[c]))
    return out


def _phi(n, n1, n2, n12):
    den = n1 * (n - n1) * n2 * (n - n2)
    return 0.0 if den <= 0 else (n12 * n - n1 * n2) / math.sqrt(den)


def _g_test_p(ctx, mask, classes):
    """G-test p-value of "has e" vs the class within ctx (scipy's log-likelihood chi2_contingency)."""
    table = np.array([[int((ctx & mask & c).sum()) for c in classes], [int((ctx & ~mask & c).sum()) for c in classes]])
    table = table[:, table.sum(axis=0) > 0]  # classes absent from the context carry no degree of freedom
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0  # no variation: G = 0
    return float(chi2_contingency(table, correction=False, lambda_="log-likelihood").pvalue)


def ref_question(S, classes, p0, ev, a, min_support, max_corr, method, msf=0.005, max_p=0.001):
    """ev: list of (name, mask, order_key). -> (probabilities, base, factors per class, normalizer)."""
    K = len(classes)
    nS = int(S.sum())
    nSc = [int((S & c).sum()) for c in classes]
    base = [(nSc[c] + a * p0[c]) / (nS + a) for c in range(K)]
    factors = [[] for _ in range(K)]

    def lift(ctx, mask, name, note=""):
        n_x = int(ctx.sum())
        n_xe = int((ctx & mask).sum())
        q = n_xe / n_x
        for c in range(K):
            n_xc = int((ctx & classes[c]).sum())
            n_xec = int((ctx & mask & classes[c]).sum())
            factors[c].append(("lift", [name], ((n_xec + a * q) / (n_xc + a)) / q, n_xe))

    def one(name, support):
        for c in range(K):
            factors[c].append(("lift", [name], 1.0, support))

    if method == "factorized":
        for name, mask, _ in ev:
            if (S & mask).sum() == 0:
                one(name, 0)
            else:
                lift(S, mask, name)
    else:
        mi = []
        for name, mask, key in ev:
            table = [[int((S & mask & c).sum()) for c in classes], [int((S & ~mask & c).sum()) for c in classes]]
            mi.append(_mi(table, nS) if nS else 0.0)
        order = sorted(range(len(ev)), key=lambda i: (-mi[i], ev[i][2]))
        Sp = S.copy()
        conj, backed = [], []
        need = max(min_support, math.ceil(msf * nS))
        for i in order:
            if int((Sp & ev[i][1]).sum()) >= need:
                Sp = Sp & ev[i][1]
                conj.append(i)
            else:
                backed.append(i)
        if conj:
            nSp = int(Sp.sum())
            for c in range(K):
                p = (int((Sp & classes[c]).sum()) + a * base[c]) / (nSp + a)
                factors[c].append(("conjunction", [ev[i][0] for i in conj], p / base[c], nSp))
        used = []
        for i in backed:
            name, mask, _ = ev[i]
            n_se = int((S & mask).sum())
            if n_se == 0:
                one(name, 0)
                continue
            ctx = Sp if (Sp & mask).any() else S
            if _g_test_p(ctx, mask, classes) > max_p:
                one(name, int((ctx & mask).sum()))
                continue
            if any(abs(_phi(nS, n_se, int((S & ev[j][1]).sum()), int((S & mask & ev[j][1]).sum()))) >= max_corr
                   for j in used):
                one(name, n_se)
                continue
            lift(ctx, mask, name)
            used.append(i)
    u = []
    for c in range(K):
        x = base[c]
        for f in factors[c]:
            x *= f[2]
        u.append(x)
    norm = sum(u)
    return [x / norm for x in u], base, factors, norm


def ref_predict(bu, snap_u, target, seg, ev_names, a=1.0, min_support=30, max_corr=0.9, method="conjunction",
                train=None, msf=0.005, max_p=0.001):
    """-> {value: (probability, base, factors, normalizer)}; a: the prior strength (multi-valued targets:
    also {value: a})."""
    T = bu.fields[target]
    values = snap_u.fields[target].values
    masks = [T.masks.get(v, np.zeros(bu.n, bool)) for v in values]
    train = np.ones(bu.n, bool) if train is None else train
    multi = T.kind == "multi" or T.exists
    # evidence in feature-id order (the documented order of the factorized model's factors)
    ev = [((f, v), bu.fields[f].masks[v], snap_u.feature_id(f, v)) for f, v in ev_names]
    ev.sort(key=lambda e: e[2])
    out = {}
    if not multi:
        has = np.zeros(bu.n, bool)
        for m in masks:
            has |= m
        S = seg & train & has
        pop = train & has
        K = len(values)
        p0 = [((pop & m).sum() + 1) / (pop.sum() + K) for m in masks]
        probs, base, factors, norm = ref_question(S, masks, p0, ev, a, min_support, max_corr, method, msf, max_p)
        for c, v in enumerate(values):
            out[v] = (probs[c], base[c], factors[c], norm)
    else:
        S = seg & train
        for v, m in zip(values, masks):
            n1 = (train & m).sum()
            p0 = [(n1 + 1) / (train.sum() + 2), (train.sum() - n1 + 1) / (train.sum() + 2)]
            a_v = a[v] if isinstance(a, dict) else a
            probs, base, factors, norm = ref_question(S, [m, ~m], p0, ev, a_v, min_support, max_corr, method, msf,
                                                      max_p)
            out[v] = (probs[0], base[0], factors[0], norm)
    return out


_LEAKS: dict = {}


def leaking_fields(bu, target):
    """Fields with a feature whose row set equals a target value's (copies of the target)."""
    if target not in _LEAKS:
        tmasks = [m for m in bu.fields[target].masks.values() if m.any()]
        _LEAKS[target] = {f for f, bf in bu.fields.items() if f != target
                          and any(np.array_equal(m, t) for m in bf.masks.values() for t in tmasks)}
    return _LEAKS[target]


def row_evidence(bu, target, row, skip_fields=()):
    """The features of one row (oracle masks), except the target's field and fields copying it."""
    skip = set(skip_fields) | leaking_fields(bu, target)
    return [(f, v) for f, bf in bu.fields.items() if f != target and f not in skip
            for v, m in bf.masks.items() if m[row]]


def engine_prior(res, method):
    """The prior strength the engine reports for a factorized answer (cross-validated unless given):
    one number, or {value: a} for a multi-valued target; 1.0 (the default) for the other methods."""
    if method != "factorized":
        return 1.0
    regs = res.regularisation
    assert regs and all(r.prior_strength is not None and r.l2 is None for r in regs)
    return {r.value: r.prior_strength for r in regs} if res.multi_valued else regs[0].prior_strength


def assert_matches(res, ref, rtol=1e-9):
    assert {vp.value for vp in res.probabilities} == set(ref)
    for vp in res.probabilities:
        p, base, factors, norm = ref[vp.value]
        assert math.isclose(vp.probability, p, rel_tol=rtol, abs_tol=1e-15), (vp.value, vp.probability, p)
        assert math.isclose(vp.base_probability, base, rel_tol=rtol)
        assert math.isclose(vp.normalizer, norm, rel_tol=rtol)
        got = [(f.kind, f.evidence, f.factor, f.support) for f in vp.factors]
        assert len(got) == len(factors)
        for g, r in zip(got, factors):
            assert g[0] == r[0] and g[1] == r[1] and g[3] == r[3], (g, r)
            assert math.isclose(g[2], r[2], rel_tol=rtol), (g, r)


def check_invariants(res):
    for vp in res.probabilities:
        prod = vp.base_probability * math.prod(f.factor for f in vp.factors) / vp.normalizer
        assert math.isclose(prod, vp.probability, rel_tol=1e-12, abs_tol=1e-300)
        assert 0 < vp.probability <= 1
    ps = [vp.probability for vp in res.probabilities]
    assert ps == sorted(ps, reverse=True)
    if not res.multi_valued:
        assert math.isclose(sum(ps), 1.0, rel_tol=1e-12)


# ----------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------


SEGMENTS = {
    "all": (All(), {}),
    "premium": (Term("lifestyle", "premium"), {"lifestyle": "premium"}),
    "dogs_not_helsinki": (And((Term("segment", "dog_owner"), Not(Term("region", "helsinki")))),
                          {"segment": "dog_owner", "region": {"$ne": "helsinki"}}),
}


# ----------------------------------------------------------------------------
# against the reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["conjunction", "factorized"])
@pytest.mark.parametrize("target,seg_name", [
    ("churned", "all"), ("churned", "premium"), ("segment", "all"), ("segment", "premium"),
    ("region", "all"), ("region", "dogs_not_helsinki"), ("churned", "dogs_not_helsinki"),
    ("orders.lines.product.category", "premium"),
])
def test_predict_by_id_matches_reference(snap, su, bu, target, seg_name, method):
    seg, where = SEGMENTS[seg_name]
    seg_mask = bu.eval(where)
    for row in (0, 7, 1234, 2999):
        rid = bu.ids[row]
        res = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=rid, method=method))
        ev = row_evidence(bu, target, row)
        assert sorted(res.evidence) == sorted(ev)
        ref = ref_predict(bu, su, target, seg_mask, ev, a=engine_prior(res, method), method=method)
        assert_matches(res, ref)
        check_invariants(res)
        assert res.n_segment == int((seg_mask & (True if res.multi_valued else
                                     np.logical_or.reduce(list(bu.fields[target].masks.values())))).sum())


@pytest.mark.parametrize("params", [
    dict(prior_strength=5.0, min_support=10, max_correlation=0.5),
    dict(prior_strength=0.1, min_support=200, max_correlation=1.0),
    dict(prior_strength=2.0, min_support=1, max_correlation=0.95, min_support_fraction=0.0, max_p_value=1.0),
    dict(prior_strength=1.0, min_support=5, max_correlation=0.9, min_support_fraction=0.1, max_p_value=0.05),
])
def test_parameters_match_reference(snap, su, bu, params):
    for target in ("churned", "segment"):
        rid = bu.ids[42]
        res = predict(snap, PredictQuery(target=target, universe=U, row_id=rid, method="conjunction", **params))
        ev = row_evidence(bu, target, 42)
        ref = ref_predict(bu, su, target, np.ones(bu.n, bool), ev, a=params["prior_strength"],
                          min_support=params["min_support"], max_corr=params["max_correlation"],
                          msf=params.get("min_support_fraction", 0.005), max_p=params.get("max_p_value", 0.001))
        assert_matches(res, ref)
        check_invariants(res)


def test_explicit_evidence_and_override(snap, su, bu):
    ev = [("region", "oulu"), ("lifestyle", "budget"), ("orders.lines.product.category", "litter")]
    res = predict(snap, PredictQuery(target="churned", universe=U, evidence=ev, method="conjunction"))
    assert_matches(res, ref_predict(bu, su, "churned", np.ones(bu.n, bool), ev))
    check_invariants(res)
    # both: the explicit features replace the row's features of the same fields
    row = 5
    res = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[row], evidence=ev[:2],
                                     method="conjunction"))
    own = row_evidence(bu, "churned", row, skip_fields={"region", "lifestyle"})
    assert sorted(res.evidence) == sorted(own + ev[:2])
    assert_matches(res, ref_predict(bu, su, "churned", np.ones(bu.n, bool), own + ev[:2]))
    # evidence_fields restricts the row's features (globs allowed)
    res = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[row], method="conjunction",
                                     evidence_fields=["region", "orders.lines.product.*"]))
    ev2 = [(f, v) for f, v in row_evidence(bu, "churned", row)
           if f == "region" or f.startswith("orders.lines.product.")]
    assert sorted(res.evidence) == sorted(ev2)
    assert_matches(res, ref_predict(bu, su, "churned", np.ones(bu.n, bool), ev2))


@pytest.mark.parametrize("method", ["conjunction", "factorized"])
def test_no_evidence_is_the_base_rate(snap, bu, method):
    res = predict(snap, PredictQuery(target="region", universe=U, segment=Term("lifestyle", "premium"), method=method))
    for vp in res.probabilities:
        assert vp.factors == []
        assert math.isclose(vp.probability, vp.base_probability, rel_tol=1e-12)
    check_invariants(res)


def test_train_mask_restricts_counts(snap, su, bu):
    rng = np.random.default_rng(1)
    train = rng.random(bu.n) < 0.7
    bits = bool_to_bitset(train, su.n_words)
    for method in ("conjunction", "factorized"):
        res = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[3], method=method,
                                         train_mask=bits))
        ref = ref_predict(bu, su, "churned", np.ones(bu.n, bool), row_evidence(bu, "churned", 3),
                          a=engine_prior(res, method), method=method, train=train)
        assert_matches(res, ref)
        # flipping rows outside the mask cannot change anything: the same model on a copy of the mask
        res2 = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[3], method=method,
                                          train_mask=bits.copy()))
        assert [vp.probability for vp in res2.probabilities] == [vp.probability for vp in res.probabilities]


def test_correlated_evidence_is_not_counted_twice(snap, su):
    # wet-food and the pouch tag describe the same customers: with a high min_support nothing is
    # conditioned exactly and the second one must be skipped as redundant
    ev = [("orders.lines.product.category", "wet-food"), ("orders.lines.product.tags", "pouch")]
    res = predict(snap, PredictQuery(target="churned", universe=U, evidence=ev, min_support=10 ** 9, max_p_value=1.0,
                                     method="conjunction"))
    factors = res.probabilities[0].factors
    assert [f.kind for f in factors] == ["lift", "lift"]
    assert sum(1 for f in factors if f.factor == 1.0 and "redundant" in f.note) == 1
    check_invariants(res)


def test_conjunction_conditions_exactly(snap, su, bu):
    # with min_support 1 and two evidence features the probability is the smoothed rate in the conjunction
    ev = [("region", "oulu"), ("lifestyle", "budget")]
    res = predict(snap, PredictQuery(target="churned", universe=U, evidence=ev, min_support=1, prior_strength=1e-9,
                                     min_support_fraction=0.0, method="conjunction"))
    m = bu.fields["region"].masks["oulu"] & bu.fields["lifestyle"].masks["budget"]
    rate = (m & bu.fields["churned"].masks["true"]).sum() / m.sum()
    p = {vp.value: vp.probability for vp in res.probabilities}
    assert math.isclose(p["true"], rate, rel_tol=1e-6)
    assert res.probabilities[0].factors[0].kind == "conjunction"
    assert res.probabilities[0].factors[0].support == int(m.sum())


@pytest.mark.parametrize("method", ["conjunction", "logistic"])
def test_multi_valued_target_is_per_value(snap, su, bu, method):
    l2 = 1.0 if method == "logistic" else None  # (the cross-validated choice per value: tests/engine/test_logistic_cv.py)
    res = predict(snap, PredictQuery(target="orders.lines.product.category", universe=U, row_id=bu.ids[10],
                                     method=method, l2=l2))
    assert res.multi_valued
    assert len(res.probabilities) == len(su.fields["orders.lines.product.category"].values)
    check_invariants(res)
    for vp in res.probabilities:  # normalizer = u(t) + u(not t)
        assert vp.normalizer >= vp.base_probability * math.prod(f.factor for f in vp.factors)


# ----------------------------------------------------------------------------
# the logistic method against scikit-learn on oracle masks
# ----------------------------------------------------------------------------


def ref_logistic(bu, snap_u, target, seg, l2=1.0, train=None):
    """Fit scikit-learn's L2 logistic regression (C = 1 / l2, intercept unpenalised) on a one-hot matrix
    built from the oracle's masks of every evidence field (every field except the target and fields
    copying it) over the rows of S. -> {question value or None: (classes, model, feature names)}."""
    from sklearn.linear_model import LogisticRegression

    T = bu.fields[target]
    values = snap_u.fields[target].values
    masks = [T.masks.get(v, np.zeros(bu.n, bool)) for v in values]
    train = np.ones(bu.n, bool) if train is None else train
    skip = leaking_fields(bu, target) | {target}
    names = [(f, v) for f, bf in bu.fields.items() if f not in skip for v in bf.masks]
    X = np.column_stack([bu.fields[f].masks[v] for f, v in names]).astype(np.float64)
    multi = T.kind == "multi" or T.exists
    out = {}
    questions = [(v, [m, ~m]) for v, m in zip(values, masks)] if multi else [(None, masks)]
    for key, classes in questions:
        has = np.logical_or.reduce(classes)
        S = seg & train & has
        y = np.argmax(np.column_stack(classes), axis=1)
        model = LogisticRegression(C=1.0 / l2, tol=1e-8, max_iter=10000)
        model.fit(X[S], y[S])
        out[key] = (list(model.classes_), model, names, X)
    return out


@pytest.mark.parametrize("target,seg_name", [
    ("churned", "all"), ("churned", "premium"), ("segment", "all"), ("region", "dogs_not_helsinki"),
    ("orders.lines.product.category", "premium"),
])
def test_logistic_matches_sklearn(snap, su, bu, target, seg_name):
    seg, where = SEGMENTS[seg_name]
    seg_mask = bu.eval(where)
    ref = ref_logistic(bu, su, target, seg_mask)
    values = su.fields[target].values
    for row in (0, 7, 1234, 2999):
        res = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=bu.ids[row], method="logistic",
                                         l2=1.0))
        check_invariants(res)
        assert all(r.l2 == 1.0 and not r.cross_validated for r in res.regularisation)
        ev = row_evidence(bu, target, row)
        assert sorted(res.evidence) == sorted(ev)
        got = {vp.value: vp for vp in res.probabilities}
        for key, (cls, model, names, X) in ref.items():
            p = model.predict_proba(X[row:row + 1])[0]
            if key is None:  # single-valued: scikit-learn's classes are the values present in S
                tot = sum(got[values[c]].probability for c in cls)  # values absent from S get a small rest
                assert tot > 0.95
                for c, pc in zip(cls, p):
                    mine = got[values[c]].probability / tot
                    assert abs(mine - pc) < 5e-4, (values[c], mine, pc)
            else:  # multi-valued: class 0 = has the value
                assert abs(got[key].probability - p[cls.index(0)]) < 5e-4, (key, got[key].probability, p)
        # one intercept factor, then one factor per evidence in feature-id order
        for vp in res.probabilities:
            assert vp.factors[0].note == "intercept" and vp.factors[0].evidence == []
            assert [f.evidence[0] for f in vp.factors[1:]] == sorted(ev, key=lambda e: su.feature_id(*e))
    if target == "churned":  # binary: the factor of evidence e for "true" is exp(w_e / 2)
        cls, model, names, X = ref[None]
        w = dict(zip(names, model.coef_[0]))
        res = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=bu.ids[7], method="logistic",
                                         l2=1.0))
        vp = {v.value: v for v in res.probabilities}["true"]
        for f in vp.factors[1:]:
            assert abs(math.log(f.factor) - w[tuple(f.evidence[0])] / 2) < 2e-3, (f, w[tuple(f.evidence[0])])


def test_logistic_l2_and_train_mask(snap, su, bu):
    rng = np.random.default_rng(2)
    train = rng.random(bu.n) < 0.6
    bits = bool_to_bitset(train, su.n_words)
    ref = ref_logistic(bu, su, "churned", np.ones(bu.n, bool), l2=10.0, train=train)
    cls, model, names, X = ref[None]
    for row in (3, 11):
        res = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[row], method="logistic",
                                         l2=10.0, train_mask=bits))
        p = {vp.value: vp.probability for vp in res.probabilities}
        assert abs(p["true"] - model.predict_proba(X[row:row + 1])[0][1]) < 2e-4
        check_invariants(res)
    with pytest.raises(QueryError, match="l2"):
        predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[3], method="logistic", l2=0))


# ----------------------------------------------------------------------------
# ScoreSegment
# ----------------------------------------------------------------------------


def _check_scores_equal_predict(snap, su, res, members, target, value, seg, method, seed):
    """8 members drawn with SEED: each one's score (and id) = predict(METHOD)'s P(TARGET = VALUE) for it."""
    rng = np.random.default_rng(seed)
    for j in rng.choice(len(members), size=8, replace=False):
        rid = su.ids_for_rows([members[j]])[0]
        p = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=rid, method=method))
        pv = {vp.value: vp.probability for vp in p.probabilities}[value]
        assert math.isclose(res.scores[j], pv, rel_tol=1e-9, abs_tol=1e-15), (rid, res.scores[j], pv)
        assert res.ids[j] == rid


@pytest.mark.parametrize("target,value,seg", [
    ("churned", "true", All()),
    ("segment", "cat_owner", Term("lifestyle", "premium")),
    ("region", "oulu", Not(Term("segment", "dog_owner"))),
    ("orders.lines.product.category", "litter", All()),
])
def test_score_segment_equals_factorized_predict(snap, su, bu, target, value, seg):
    res = score_segment(snap, ScoreQuery(target=target, value=value, universe=U, segment=seg, method="factorized"))
    members = _kernels.bitset_to_ids(evaluate(snap, su, seg), su.n_rows).astype(np.int64)
    assert res.n_members == len(members)
    assert np.array_equal(res.rows, members)
    assert math.isclose(res.mean_score, float(np.mean(res.scores)), rel_tol=1e-12)
    _check_scores_equal_predict(snap, su, res, members, target, value, seg, "factorized", seed=0)


@pytest.mark.parametrize("target,value,seg", [
    ("churned", "true", All()),
    ("segment", "cat_owner", Term("lifestyle", "premium")),
    ("orders.lines.product.category", "litter", All()),
])
def test_score_segment_equals_logistic_predict(snap, su, bu, target, value, seg):
    res = score_segment(snap, ScoreQuery(target=target, value=value, universe=U, segment=seg))  # default: logistic
    members = _kernels.bitset_to_ids(evaluate(snap, su, seg), su.n_rows).astype(np.int64)
    assert res.n_members == len(members) and np.array_equal(res.rows, members)
    _check_scores_equal_predict(snap, su, res, members, target, value, seg, "logistic", seed=1)


def test_score_segment_top_k(snap, su):
    full = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U))
    top = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, top_k=25))
    assert len(top.rows) == 25 and top.n_members == full.n_members
    assert top.mean_score == full.mean_score
    order = np.lexsort((full.rows, -full.scores))[:25]
    assert np.array_equal(top.rows, full.rows[order])
    assert np.array_equal(top.scores, full.scores[order])
    assert np.all(np.diff(top.scores) <= 0)
    big = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, top_k=10 ** 6))
    assert len(big.rows) == full.n_members and np.all(np.diff(big.scores) <= 0)


def test_score_segment_train_mask(snap, su, bu):
    train = np.zeros(bu.n, bool)
    train[::2] = True
    bits = bool_to_bitset(train, su.n_words)
    res = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, train_mask=bits,
                                         method="factorized"))
    assert res.n_members == su.n_rows  # every member is scored, counts come from the mask
    row = 1  # not a training row
    ref = ref_predict(bu, su, "churned", np.ones(bu.n, bool), row_evidence(bu, "churned", row),
                      a=res.regularisation.prior_strength, method="factorized", train=train)
    assert math.isclose(res.scores[row], ref["true"][0], rel_tol=1e-9)


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


def test_unknown_target(snap):
    with pytest.raises(UnknownFieldError, match="churnd.*did you mean 'churned'"):
        predict(snap, PredictQuery(target="churnd", universe=U, evidence=[("region", "oulu")]))
    with pytest.raises(UnknownFieldError):
        score_segment(snap, ScoreQuery(target="churnd", value="true", universe=U))


def test_too_many_target_values(snap):
    with pytest.raises(LimitExceededError, match=r"24 values.*max_target_values=10"):
        predict(snap, PredictQuery(target="last_order_month", universe=U, max_target_values=10))
    assert predict(snap, PredictQuery(target="last_order_month", universe=U, method="conjunction")).probabilities  # 24 <= 64


def test_evidence_on_the_target(snap):
    with pytest.raises(QueryError, match="churned=true.*target") as exc:
        predict(snap, PredictQuery(target="churned", universe=U, evidence=[("churned", "true")]))
    assert exc.value.violations[0][0] == "evidence[0]"


def test_unknown_id(snap):
    with pytest.raises(UnknownIdError, match="CUST-99999"):
        predict(snap, PredictQuery(target="churned", universe=U, row_id="CUST-99999"))
    assert issubclass(UnknownIdError, QueryError)


def test_unknown_evidence(snap):
    with pytest.raises(UnknownFieldError, match="regoin"):
        predict(snap, PredictQuery(target="churned", universe=U, evidence=[("regoin", "oulu")]))
    with pytest.raises(UnknownValueError, match="oulu2"):
        predict(snap, PredictQuery(target="churned", universe=U, evidence=[("region", "oulu2")]))
    with pytest.raises(UnknownFieldError):
        predict(snap, PredictQuery(target="churned", universe=U, row_id="CUST-00001", evidence_fields=["nope"]))
    with pytest.raises(UnknownValueError):
        score_segment(snap, ScoreQuery(target="churned", value="maybe", universe=U))


@pytest.mark.parametrize("kwargs", [
    dict(prior_strength=0), dict(prior_strength=float("nan")), dict(min_support=0), dict(method="bayes"),
    dict(max_correlation=0), dict(max_target_values=1), dict(evidence=[("region",)]),
    dict(train_mask=np.zeros(3, dtype=np.uint64)),
])
def test_bad_parameters(snap, kwargs):
    with pytest.raises(QueryError):
        predict(snap, PredictQuery(target="churned", universe=U, **kwargs))


def test_bad_top_k(snap):
    with pytest.raises(QueryError, match="top_k"):
        score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, top_k=-1))


def test_fields_copying_the_target_are_not_evidence(snap, su, bu):
    # segment=aquarium_owner and orders.lines.product.pet_type=aquarium are the same customers
    assert "orders.lines.product.pet_type" in leaking_fields(bu, "segment")
    res = predict(snap, PredictQuery(target="segment", universe=U, row_id=bu.ids[0], l2=1.0))
    assert not any(f == "orders.lines.product.pet_type" for f, _ in res.evidence)
    # named explicitly, it is evidence like any other
    res = predict(snap, PredictQuery(target="segment", universe=U, row_id=bu.ids[0], l2=1.0,
                                     evidence_fields=["orders.lines.product.pet_type"]))
    assert res.evidence and all(f == "orders.lines.product.pet_type" for f, _ in res.evidence)


def test_one_default_method(snap, bu):
    """Predict, ScoreSegment and Evaluate default to the same method (logistic), in-process and in JSON."""
    from segsrv.ops.evaluate import EvaluateQuery
    from segsrv.ops.score import ScoreQuery

    assert PredictQuery(target="churned").method == "logistic"
    assert PredictQuery.from_json({"target": "churned"}).method == "logistic"
    assert ScoreQuery(target="churned", value="true").method == "logistic"
    assert EvaluateQuery(target="churned").method == "logistic"
    default = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[3], l2=1.0))
    explicit = predict(snap, PredictQuery(target="churned", universe=U, row_id=bu.ids[3], l2=1.0, method="logistic"))
    assert default.method == "logistic"
    assert [(vp.value, vp.probability) for vp in default.probabilities] == \
           [(vp.value, vp.probability) for vp in explicit.probabilities]


# ----------------------------------------------------------------------------
# the factorized model's prior strength, cross-validated (docs/predict.md)
# ----------------------------------------------------------------------------


def ref_prior_cv(bu, su, target, seg_mask, grid, k=5):
    """The prior strength a brute-force CV picks: the documented folds (row hash), lifts counted with numpy
    on the oracle masks of the other folds' rows of S, held-out -ln P(class) pooled; ties: the first
    (strongest) grid value. Single-valued target; p0 the smoothed class rates of the universe's rows."""
    values = su.fields[target].values
    masks = [bu.fields[target].masks.get(v, np.zeros(bu.n, bool)) for v in values]
    has = np.logical_or.reduce(masks)
    K = len(values)
    p0 = np.array([(m.sum() + 1) / (has.sum() + K) for m in masks])
    S = seg_mask & has
    y = np.argmax(np.column_stack(masks), axis=1)
    skip = leaking_fields(bu, target) | {target}
    E = np.column_stack([m for f, bf in bu.fields.items() if f not in skip for m in bf.masks.values()])
    folds = np.array([ref_fold(i, k) for i in bu.ids])
    loss = np.zeros(len(grid))
    for f in range(k):
        tr, te = S & (folds != f), S & (folds == f)
        if not te.any():
            continue
        n_S = tr.sum()
        n_Sc = np.array([(tr & m).sum() for m in masks], dtype=float)
        N = np.array([E[tr & m].sum(axis=0) for m in masks], dtype=float)
        n_Se = E[tr].sum(axis=0)
        seen = n_Se > 0
        for j, a in enumerate(grid):
            base = (n_Sc + a * p0) / (n_S + a)
            W = np.zeros((K, E.shape[1]))
            q = n_Se[seen] / n_S
            W[:, seen] = np.log(((N[:, seen] + a * q) / (n_Sc[:, None] + a)) / q)
            logits = np.log(base) + E[te].astype(float) @ W.T
            lse = logits.max(axis=1) + np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1))
            loss[j] += (lse - logits[np.arange(te.sum()), y[te]]).sum()
    return grid[int(np.argmin(loss))], loss


@pytest.mark.parametrize("target,seg_name", [("churned", "all"), ("segment", "premium"), ("region", "all")])
def test_factorized_prior_strength_is_cross_validated(snap, su, bu, target, seg_name):
    """Unless the caller gives prior_strength, the factorized method takes the grid value a brute-force CV
    over the documented folds picks, reports it (cross_validated), and uses it; a given one is used as is."""
    from segsrv.engine.predict import factorized

    seg, where = SEGMENTS[seg_name]
    want, loss = ref_prior_cv(bu, su, target, bu.eval(where), factorized.PRIOR_GRID)
    factorized.PRIOR_CACHE.clear()
    res = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=bu.ids[11], method="factorized"))
    [reg] = res.regularisation
    assert reg.cross_validated and reg.prior_strength == want and reg.l2 is None, (reg, loss)
    assert reg.to_json() == {"prior_strength": want, "cross_validated": True, "value": None}
    value = su.fields[target].values[0]
    sc = score_segment(snap, ScoreQuery(target=target, value=value, universe=U, segment=seg, method="factorized"))
    assert sc.regularisation.prior_strength == want and sc.regularisation.cross_validated
    given = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=bu.ids[11],
                                       method="factorized", prior_strength=7.0))
    assert [(r.prior_strength, r.cross_validated) for r in given.regularisation] == [(7.0, False)]
    ref = ref_predict(bu, su, target, bu.eval(where), row_evidence(bu, target, 11), a=7.0, method="factorized")
    assert_matches(given, ref)
