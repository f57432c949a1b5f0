"""Assign's default propensities: logistic membership models, fitted by `segments apply`, stored, read."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from segsrv.engine import assign as A
from segsrv.engine import catalog_models as CM
from segsrv.engine.assign import assign, compiled_catalog
from segsrv.engine.catalog import apply_segments
from segsrv.engine.predict import logistic as L
from segsrv.errors import CorruptSnapshotError, QueryError
from segsrv.ops.assign import AssignQuery
from segsrv.snapshot.reader import open_snapshot
from support import row_features

U = "customers"
CATALOG = {  # segments whose cross-validated fits are quick on PetNord
    "oulu": {"where": {"region": "oulu"}, "universe": U},
    "helsinki_large": {"where": {"region": "helsinki", "pet_size": "large"}, "universe": U, "priority": 2},
    "none": {"where": {"region": "oulu", "$not": {"region": "oulu"}}, "universe": U},
}


@pytest.fixture(scope="module")
def applied(petnord_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog_models") / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    said = []
    CM._FITTED.clear()  # this process's earlier fits of the same keys would not be fits
    before = A.fit_count()
    vdir, changed = apply_segments(root / "petnord", CATALOG, progress=said.append)
    assert changed
    return root, vdir, said, A.fit_count() - before


def _member(snap, name) -> np.ndarray:
    from segsrv.engine.conditions import evaluate
    from segsrv.ops.conditions import SegmentRef

    u = snap.universe(U)
    bits = evaluate(snap, u, SegmentRef(name))
    return np.unpackbits(bits.view(np.uint8), bitorder="little")[: u.n_rows].astype(bool)


def _design(snap, fields) -> tuple[np.ndarray, np.ndarray]:
    """Dense one-hot rows of the universe over every feature but those of `fields`; the evidence mask."""
    u = snap.universe(U)
    ev = np.ones(u.n_features, dtype=bool)
    for f in fields:
        info = u.fields[f]
        ev[info.feature_offset: info.feature_offset + len(info.values)] = False
    X = np.zeros((u.n_rows, u.n_features))
    indptr = np.asarray(u.csr_indptr)
    X[np.repeat(np.arange(u.n_rows), np.diff(indptr)), np.asarray(u.csr_indices)] = 1.0
    return X[:, ev], ev


def test_apply_fits_and_reports_every_segment(applied):
    root, vdir, said, fits = applied
    assert fits == len(CATALOG)
    lines = [m for m in said if m.startswith("propensity model ")]
    assert len(lines) == len(CATALOG)
    for name in CATALOG:  # name, rows, evidence features, chosen l2, seconds
        line = next(m for m in lines if f"{U}/{name}:" in m)
        assert "of 3,000 rows" in line and "evidence features" in line and " l2 " in line and " s)" in line
    manifest = json.loads((vdir / "manifest.json").read_text())
    section = manifest["catalog_models"][U]
    assert sorted(section) == sorted(CATALOG)
    for entry in section.values():
        assert entry["file"] in manifest["files"] and entry["cross_validated"] is True
        assert not os.stat(vdir / entry["file"]).st_mode & 0o222  # read-only, like every data file


def test_logistic_propensity_equals_sklearn(applied):
    """A fixed l2: P(member) equals scikit-learn's LogisticRegression (C = 1 / l2, intercept unpenalised)
    on the same design, for batch ids and for a new customer's feature list."""
    from sklearn.linear_model import LogisticRegression

    root, _, _, _ = applied
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    l2 = 1.0
    name = "oulu"
    y = _member(snap, name)
    X, _ = _design(snap, ["region"])
    ref = LogisticRegression(C=1.0 / l2, tol=1e-10, max_iter=100_000).fit(X, y)
    rows = [r for r in range(0, u.n_rows, 97) if not y[r]][:20]
    want = ref.predict_proba(X[rows])[:, 1]
    ids = list(u.ids_for_rows(rows))
    res = assign(snap, AssignQuery(universe=U, ids=ids, include_propensities=True, propensity_l2=l2))
    got = [next(m.propensity for m in a.segments if m.segment == name) for a in res.assignments]
    assert np.allclose(got, want, atol=1e-5, rtol=0)
    for row, p in list(zip(rows, want))[:5]:
        new = assign(snap, AssignQuery(universe=U, features=row_features(u, row), include_propensities=True,
                                       propensity_l2=l2)).assignments[0]
        assert next(m.propensity for m in new.segments if m.segment == name) == pytest.approx(p, abs=1e-5)


def test_stored_l2_is_choose_l2_and_coefficients_round_trip(applied):
    """The stored model's l2 is logistic.choose_l2's choice on the same design and folds, and the stored
    coefficients are, bit for bit, the fit at that l2 (the file holds what was fitted)."""
    root, vdir, _, _ = applied
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    entry = snap.catalog_models[U]["helsinki_large"]
    coef, _ = u.stored_models[tuple(entry["key"])]
    y = _member(snap, "helsinki_large").astype(np.int64)
    _, ev = _design(snap, ["region", "pet_size"])
    fids = np.flatnonzero(ev)
    col_of = np.full(u.n_features, -1, dtype=np.int64)
    col_of[fids] = np.arange(len(fids))
    rows = np.arange(u.n_rows)
    P, inv = L.distinct_patterns(L.design_matrix(u, rows, col_of, len(fids)))
    l2 = L.choose_l2(P, inv, y, L.cv_folds(u, rows), 2)[0]
    assert entry["l2"] == l2
    b, w, _ = L.fit_counts(P, L.pattern_counts(inv, y, P.shape[0], 2), l2)
    want = np.zeros(u.n_features + 1)
    want[0], want[1 + fids] = b[0], w[0]
    assert coef.shape == (1, u.n_features + 1) and np.array_equal(coef[0], want)
    # the compiled catalog takes exactly these numbers
    cat = compiled_catalog(snap, u)
    i = [s.name for s in cat.segments].index("helsinki_large")
    bias, D = cat.propensity_model()
    assert bias[i] == want[0] and np.array_equal(D[:, i], want[1:])


def test_assign_on_stored_models_fits_nothing(applied):
    root, _, _, _ = applied
    snap = open_snapshot(root / "petnord")  # a new Snapshot object: nothing cached for it
    u = snap.universe(U)
    before = A.fit_count()
    assert A.warm_catalog(snap) == {U: len(CATALOG)}
    ids = list(u.ids_for_rows([0, 1, 2, 3]))
    q = AssignQuery(universe=U, ids=ids, include_propensities=True)
    first = assign(snap, q)
    second = assign(open_snapshot(root / "petnord"), q)  # cold, without warm_catalog
    new = assign(snap, AssignQuery(universe=U, features=row_features(u, 5), include_propensities=True))
    assert A.fit_count() == before
    assert [a.segments for a in first.assignments] == [a.segments for a in second.assignments]
    assert all(any(not m.member for m in a.segments) for a in first.assignments)
    assert all(0.0 < m.propensity < 1.0 for m in new.assignments[0].segments if not m.member and m.segment != "none")


def test_a_flipped_byte_in_a_model_file_is_refused(applied, tmp_path):
    _, vdir, _, _ = applied
    copy = tmp_path / "petnord" / vdir.name
    shutil.copytree(vdir, copy)  # copies: the published files are shared (hard links) and read-only
    rel = json.loads((copy / "manifest.json").read_text())["catalog_models"][U]["oulu"]["file"]
    path = copy / rel
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        open_snapshot(copy)
    path.unlink()  # a listed model file that is missing
    with pytest.raises(Exception, match="missing|No such file"):
        open_snapshot(copy)


def test_unchanged_segments_reuse_their_stored_models(applied, tmp_path):
    root, vdir, _, _ = applied
    r = tmp_path / "snapshots"
    shutil.copytree(root, r, copy_function=os.link)
    said = []
    before = A.fit_count()
    new_catalog = dict(CATALOG, single={"where": {"region": "oulu", "pet_size": "small"}, "universe": U})
    CM._FITTED.clear()
    new, changed = apply_segments(r / "petnord", new_catalog, progress=said.append)
    assert changed and A.fit_count() - before == 1  # only the new segment
    old_m = json.loads((vdir / "manifest.json").read_text())
    new_m = json.loads((new / "manifest.json").read_text())
    for name in CATALOG:
        rel = old_m["catalog_models"][U][name]["file"]
        assert new_m["catalog_models"][U][name] == old_m["catalog_models"][U][name]
        assert os.stat(new / rel).st_ino == os.stat(vdir / rel).st_ino  # linked, not refitted
        assert any(f"{U}/{name}:" in m and "reused" in m for m in said)
    # the files of segments no longer in the catalog are not carried along
    smaller, _ = apply_segments(r / "petnord", {"oulu": CATALOG["oulu"]}, progress=said.append)
    files = json.loads((smaller / "manifest.json").read_text())["files"]
    assert [f for f in files if f.startswith("models/catalog/")] == [old_m["catalog_models"][U]["oulu"]["file"]]
    open_snapshot(smaller, verify="strong")


def test_privacy_floor_zeroes_the_weights_of_features_with_small_cells(applied):
    root, _, _, _ = applied
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    cat = compiled_catalog(snap, u)
    bias, D = cat.propensity_model()
    X, _ = _design(snap, [])
    X = X.astype(bool)
    n, nf = u.n_rows, X.sum(axis=0)
    k = 10
    _, floored, _ = cat.floored_model(A.DEFAULT_PARAMS, k)
    zeroed = kept = 0
    for i, seg in enumerate(cat.segments):
        m = _member(snap, seg.name)
        n1, n1f = int(m.sum()), X[m].sum(axis=0)
        cells = np.stack([n1f, nf - n1f, n1 - n1f, n - n1 - nf + n1f, nf, n - nf,
                          np.full_like(nf, n1), np.full_like(nf, n - n1)])
        small = ((cells > 0) & (cells < k)).any(axis=0)
        assert np.array_equal(floored[:, i], np.where(small, 0.0, D[:, i])), seg.name
        zeroed += int((small & (D[:, i] != 0)).sum())
        kept += int((~small & (D[:, i] != 0)).sum())
    assert zeroed and kept
    # an Assign under the floor uses exactly those weights
    rows = np.arange(0, n, 301)
    p = cat.propensities_of_rows(rows, A.DEFAULT_PARAMS, k)
    want = 1.0 / (1.0 + np.exp(-(bias[:, None] + (X[rows].astype(float) @ floored).T)))
    assert np.allclose(p, want, rtol=1e-12, atol=1e-300)


def test_factorized_method_is_the_old_model(applied):
    """propensity_method "factorized" is the previous default: the model of CompiledCatalog.model."""
    root, _, _, _ = applied
    snap = open_snapshot(root / "petnord")
    u = snap.universe(U)
    cat = compiled_catalog(snap, u)
    rows = [0, 7, 11]
    res = assign(snap, AssignQuery(universe=U, ids=list(u.ids_for_rows(rows)), include_propensities=True,
                                   propensity_method="factorized", prior_strength=2.0, max_p_value=0.01))
    X, _ = _design(snap, [])
    for row, a in zip(rows, res.assignments):
        for m in a.segments:
            if m.member:
                continue
            i = [s.name for s in cat.segments].index(m.segment)
            log_base, W = cat.model(i, 2.0, 0.01)
            logit = log_base[0] - log_base[1] + X[row] @ (W[0] - W[1])
            assert m.propensity == pytest.approx(1.0 / (1.0 + math.exp(-logit)), rel=1e-12)


@pytest.mark.parametrize("obj,field", [
    ({"propensity_method": "bogus"}, "propensity_method"),
    ({"propensity_method": "conjunction"}, "propensity_method"),
    ({"propensity_method": 1}, "propensity_method"),
    ({"propensity_l2": 0}, "propensity_l2"),
    ({"propensity_l2": -1.0}, "propensity_l2"),
    ({"propensity_l2": "cv"}, "propensity_l2"),
    ({"propensity_l2": float("inf")}, "propensity_l2"),
    ({"propensity_l2": 1e9}, "propensity_l2"),  # Predict's bounds of l2
])
def test_bad_propensity_options_name_their_field(obj, field):
    with pytest.raises(QueryError) as err:
        AssignQuery.from_json({"ids": ["CUST-00001"], **obj})
    assert err.value.violations[0][0] == field and field in err.value.message


def test_json_and_proto_forms_carry_the_options():
    q = AssignQuery.from_json({"ids": ["a"], "include_propensities": True, "propensity_method": "factorized",
                               "propensity_l2": 2.5})
    assert (q.propensity_method, q.propensity_l2) == ("factorized", 2.5)
    back = AssignQuery.from_proto(q.to_proto(), AssignQuery.paths(q.to_proto()))
    assert (back.propensity_method, back.propensity_l2) == ("factorized", 2.5)
    default = AssignQuery.from_json({"ids": ["a"]})
    req = default.to_proto()
    assert not req.HasField("propensity_l2") and req.propensity_method == 0
    back = AssignQuery.from_proto(req, AssignQuery.paths(req))
    assert (back.propensity_method, back.propensity_l2) == ("logistic", None)
    assert AssignQuery.from_json(default.to_json()).propensity_method == "logistic"


def test_a_catalog_applied_without_models_gets_them_when_applied_again(applied, tmp_path):
    """`--no-propensity-models` then a plain apply of the same catalog: a new version with the models
    (reused from this process's fits: the same content keys); then the catalog is unchanged."""
    root, vdir, _, _ = applied
    r = tmp_path / "snapshots"
    shutil.copytree(root, r, copy_function=os.link)
    catalog = {"oulu": CATALOG["oulu"]}
    bare, changed = apply_segments(r / "petnord", catalog, fit_propensities=False)
    assert changed and "catalog_models" not in json.loads((bare / "manifest.json").read_text())
    assert apply_segments(r / "petnord", catalog, fit_propensities=False) == (bare, False)
    fitted, changed = apply_segments(r / "petnord", catalog)
    assert changed and fitted != bare
    section = json.loads((fitted / "manifest.json").read_text())["catalog_models"][U]
    assert section["oulu"] == json.loads((vdir / "manifest.json").read_text())["catalog_models"][U]["oulu"]
    assert apply_segments(r / "petnord", catalog) == (fitted, False)



def test_models_of_an_older_definition_are_fitted_again_when_applied_again(applied, tmp_path):
    """A version whose models an older segsrv stored (main effects alone, content keys marked "cv") is
    not the current default: Assign would fit on its first call, so a plain apply of the same catalog
    publishes a new version with the current models, and then the catalog is unchanged."""
    root, vdir, _, _ = applied
    r = tmp_path / "snapshots"
    shutil.copytree(root, r, copy_function=os.link)
    old = r / "petnord" / "older"
    shutil.copytree(vdir, old)  # copies: the manifest is edited
    mpath = old / "manifest.json"
    m = json.loads(mpath.read_text())
    for entry in m["catalog_models"][U].values():
        assert entry["key"][-1] == CM.CV_MARK
        entry["key"][-1] = "cv"
    os.chmod(mpath, 0o644)
    mpath.write_text(json.dumps(m))
    snap = open_snapshot(r / "petnord", version="older")
    assert not compiled_catalog(snap, snap.universe(U)).stored_default()
    shutil.rmtree(r / "petnord" / vdir.name)  # (this copy's links of) the version the current segsrv applied
    said = []
    CM._FITTED.clear()
    before = A.fit_count()
    new, changed = apply_segments(old, CATALOG, progress=said.append)
    assert changed and new.name == vdir.name  # the current definition's version name, fitted again
    assert A.fit_count() - before == len(CATALOG)
    section = json.loads((new / "manifest.json").read_text())["catalog_models"][U]
    assert section == json.loads((vdir / "manifest.json").read_text())["catalog_models"][U]
    fresh = open_snapshot(new)
    assert compiled_catalog(fresh, fresh.universe(U)).stored_default()
    assert apply_segments(new, CATALOG) == (new, False)
