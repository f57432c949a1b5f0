"""Assign's default propensities have the pairwise interactions of Predict's logistic method.

A small table where membership depends on a pair (``s`` is "in" mostly when ``a`` and ``b`` agree):
no main effect can say it, the pairs can. `segments apply` keeps them (the same held-out bar as
Predict's), stores them, and Assign scores with them, by id and for a new customer's feature list,
equal to scikit-learn's fit on the main effects and the stored pair columns, and under the privacy
floor a pair with a small cell loses its weight like a feature.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from segsrv.engine import assign as A
from segsrv.engine import catalog_models as CM
from segsrv.engine.assign import assign, compiled_catalog
from segsrv.engine.catalog import apply_segments
from segsrv.engine.predict import logistic as L
from segsrv.ops.assign import AssignQuery
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from support import assert_single_ids_equal_batch, quiet, row_features

U = "people"
CATALOG = {"agree": {"where": {"s": "in"}, "universe": U}}


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    d = tmp_path_factory.mktemp("catalog_pairs")
    rng = np.random.default_rng(7)
    n = 3000
    a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
    member = rng.random(n) < np.where(a == b, 0.8, 0.1)
    pd.DataFrame({"id": np.arange(n), "a": [f"a{x}" for x in a], "b": [f"b{x}" for x in b],
                  "c": [f"c{x}" for x in rng.integers(0, 3, n)], "d": [f"d{x}" for x in rng.integers(0, 5, n)],
                  "s": np.where(member, "in", "out")}).to_csv(d / "people.csv", index=False)
    (d / "spec.toml").write_text('name = "pairs"\n[tables.people]\nfile = "people.csv"\nkey = "id"\n'
                                 'categorical = ["a", "b", "c", "d", "s"]\n[universes.people]\ntable = "people"\ninclude = ["*"]\n')
    root = d / "root"
    build_snapshot(d / "spec.toml", root, progress=quiet)
    said: list[str] = []
    CM._FITTED.clear()
    vdir, changed = apply_segments(root / "pairs", CATALOG, progress=said.append)
    assert changed
    return root, vdir, said


def _design(u):
    """Dense one-hot rows of every feature; the evidence mask (every field but s); membership."""
    X = np.zeros((u.n_rows, u.n_features))
    indptr = np.asarray(u.csr_indptr)
    X[np.repeat(np.arange(u.n_rows), np.diff(indptr)), np.asarray(u.csr_indices)] = 1.0
    ev = np.ones(u.n_features, dtype=bool)
    info = u.fields["s"]
    ev[info.feature_offset: info.feature_offset + len(info.values)] = False
    return X, ev, X[:, u.feature_id("s", "in")].astype(bool)


def test_the_stored_model_is_predicts_fit_with_its_pairs(applied):
    root, vdir, said = applied
    snap = open_snapshot(root / "pairs")
    u = snap.universe(U)
    entry = json.loads((vdir / "manifest.json").read_text())["catalog_models"][U]["agree"]
    pairs = entry["pairs"]
    assert entry["cross_validated"] and len(pairs) > 0
    assert any(f"{U}/agree:" in m and f"{len(pairs):,} pairs" in m for m in said)
    # the pairs that say "a and b agree" are among them
    named = {(u.feature_name(p[0]), u.feature_name(p[1])) for p in pairs}
    assert all(((("a", f"a{i}"), ("b", f"b{i}")) in named) for i in range(4))
    # bit for bit what logistic.fit_rows (Predict's fit) gives on the same rows, evidence and target
    X, ev, y = _design(u)
    fids = np.flatnonzero(ev).astype(np.int64)
    b, w, l2, inter = L.fit_rows(u, np.arange(u.n_rows), y.astype(np.int64), 2, fids, None)
    assert entry["l2"] == l2 and [p[:2] for p in pairs] == inter.pairs.tolist()
    assert [p[2] for p in pairs] == inter.support.tolist()
    coef, _ = u.stored_models[tuple(entry["key"])]
    want = np.zeros(u.n_features)
    want[fids] = w[0]
    assert coef.shape == (1, 1 + u.n_features + len(pairs))
    assert np.array_equal(coef[0], np.concatenate([[b[0]], want, inter.weights[0]]))
    # support: the rows with both features, by brute force
    assert [p[2] for p in pairs] == [int((X[:, p[0]] * X[:, p[1]]).sum()) for p in pairs]


def test_propensities_with_pairs_equal_sklearn(applied):
    """P(member) by id and for a new customer's features equals scikit-learn's LogisticRegression on the
    main effects and the stored pairs' indicator columns at the stored l2."""
    from sklearn.linear_model import LogisticRegression

    root, vdir, _ = applied
    snap = open_snapshot(root / "pairs")
    u = snap.universe(U)
    entry = snap.catalog_models[U]["agree"]
    X, ev, y = _design(u)
    pairs = [tuple(p[:2]) for p in entry["pairs"]]
    Z = np.column_stack([X[:, a] * X[:, b] for a, b in pairs])
    design = np.hstack([X[:, ev], Z])
    ref = LogisticRegression(C=1.0 / entry["l2"], tol=1e-10, max_iter=100_000).fit(design, y)
    outside = np.flatnonzero(~y)[::37][:30]
    want = ref.predict_proba(design[outside])[:, 1]
    before = A.fit_count()
    res = assign(snap, AssignQuery(universe=U, ids=list(u.ids_for_rows(outside)), include_propensities=True))
    got = np.array([next(m.propensity for m in r.segments if m.segment == "agree") for r in res.assignments])
    assert np.abs(got - want).max() < 1e-5
    # without the pairs the answer would be far off: they carry the signal
    main = LogisticRegression(C=1.0 / entry["l2"], tol=1e-10, max_iter=100_000).fit(X[:, ev], y)
    assert np.abs(main.predict_proba(X[outside][:, ev])[:, 1] - want).max() > 0.2
    for row, p in list(zip(outside.tolist(), got))[:8]:
        new = assign(snap, AssignQuery(universe=U, features=row_features(u, row), include_propensities=True))
        q = next(m.propensity for m in new.assignments[0].segments if m.segment == "agree")
        assert q == pytest.approx(p, rel=1e-12)
    assert A.fit_count() == before  # stored: read, never fitted


def test_privacy_floor_zeroes_pairs_with_small_cells(applied):
    root, _, _ = applied
    snap = open_snapshot(root / "pairs")
    u = snap.universe(U)
    cat = compiled_catalog(snap, u)
    X, ev, y = _design(u)
    (inter,) = cat.propensity_pairs()
    n, n1 = u.n_rows, int(y.sum())
    both = np.column_stack([X[:, a] * X[:, b] for a, b in inter.pairs.tolist()]).astype(bool)
    nP, n1P = both.sum(axis=0), both[y].sum(axis=0)
    cells = np.stack([n1P, nP - n1P, n1 - n1P, n - n1 - nP + n1P, nP, n - nP,
                      np.full_like(nP, n1), np.full_like(nP, n - n1)])
    smallest = np.where(cells > 0, cells, np.iinfo(np.int64).max).min(axis=0)
    assert np.array_equal(cat.pair_cells(0, inter), smallest)
    k = int(np.median(smallest)) + 1  # some pairs under the floor, some above
    _, floored, (fp,) = cat.floored_model(A.DEFAULT_PARAMS, k)
    small = ((cells > 0) & (cells < k)).any(axis=0)
    assert small.any() and (~small).any()
    assert np.array_equal(fp.weights[0], np.where(small, 0.0, inter.weights[0]))
    # an Assign under the floor scores with exactly those weights
    bias, _ = cat.propensity_model()
    rows = np.flatnonzero(~y)[:50]
    logit = bias[0] + X[rows] @ floored[:, 0] + both[rows].astype(float) @ fp.weights[0]
    p = cat.propensities_of_rows(rows, A.DEFAULT_PARAMS, k)[0]
    assert np.allclose(p, 1.0 / (1.0 + np.exp(-logit)), rtol=1e-12, atol=1e-300)
    new = cat.propensities_of_features(np.flatnonzero(X[rows[0]]), A.DEFAULT_PARAMS, k)[0, 0]
    assert math.isclose(new, p[0], rel_tol=1e-12)


def test_a_pair_list_that_does_not_fit_the_file_is_refused(applied, tmp_path):
    import shutil

    from segsrv.errors import CorruptSnapshotError

    _, vdir, _ = applied
    copy = tmp_path / "pairs" / vdir.name
    shutil.copytree(vdir, copy)
    mpath = copy / "manifest.json"
    m = json.loads(mpath.read_text())
    entry = m["catalog_models"][U]["agree"]
    for bad, match in ((entry["pairs"][:-1], "does not fit"), ([[5, 2, 10]] + entry["pairs"][1:], "pairs")):
        m["catalog_models"][U]["agree"] = dict(entry, pairs=bad)
        mpath.write_text(json.dumps(m))
        with pytest.raises(CorruptSnapshotError, match=match):
            open_snapshot(copy)


def test_one_row_propensities_equal_the_batch(applied):
    """Assign's per-request path (one row: its features, without the kernels) gives the batch kernels'
    propensities, pairs included."""
    root, _, _ = applied
    snap = open_snapshot(root / "pairs")
    cat = compiled_catalog(snap, snap.universe(U))
    rows = np.arange(0, snap.universe(U).n_rows, 97)
    for k in (0, 10):
        batch = cat.propensities_of_rows(rows, A.DEFAULT_PARAMS, k)
        for j, r in enumerate(rows.tolist()):
            one = cat.propensities_of_rows(np.array([r]), A.DEFAULT_PARAMS, k)[:, 0]
            np.testing.assert_allclose(one, batch[:, j], rtol=1e-12, atol=1e-300)
    assert len(cat.propensity_pairs()[0]) > 0  # the pairs are exercised


@pytest.mark.parametrize("privacy_k", [0, 10, 60])
def test_single_id_assign_with_pairs_equals_the_batch(applied, privacy_k):
    """The single-id Assign (plain Python over the row; the pair model's block summed as before) against the
    batch, every row: the same ranking, propensities bit for bit the one-row computation's as it was."""
    root, _, _ = applied
    snap = open_snapshot(root / "pairs")
    u = snap.universe(U)
    ids = list(u.ids_for_rows(np.arange(u.n_rows))) + [-1, "x", 2**64]
    assert_single_ids_equal_batch(snap, U, ids, privacy_k, {"include_propensities": True})
    assert len(compiled_catalog(snap, u).propensity_pairs()[0]) > 0
