"""Models declared in the build spec are fitted by `segsrv build`, stored in the snapshot and never fitted
again on a request (issue 15, item 3). PetNord with two declared models."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from segsrv.engine.catalog import apply_segments
from segsrv.engine.predict import models as declared
from segsrv.engine.predict import predict, score_segment
from segsrv.engine.predict import logistic
from segsrv.errors import BuildError, CorruptSnapshotError, SpecError
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from segsrv.snapshot import format as fmt
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot
from segsrv.snapshot.spec import _parse_models
from support import quiet

EVIDENCE = ["segment", "region", "lifestyle", "orders.line_categories"]
MODELS = {
    "churn": {"from": "customers", "target": "churned", "evidence_fields": EVIDENCE},
    "churn_dogs": {"from": "customers", "target": "churned", "segment": {"segment": "dog_owner"},
                   "evidence_fields": EVIDENCE, "l2": 2.0},
    # its cross-validated model takes pairwise interactions (tests/engine/test_logistic_cv.py, PAIR_FIELDS)
    "churn_pairs": {"from": "customers", "target": "churned",
                    "evidence_fields": ["region", "lifestyle", "orders.lines.product.brand"]},
}


def _predict_query(model: dict, **extra) -> PredictQuery:
    return PredictQuery.from_json({**model, "method": "logistic", "evidence": {"region": "oulu"}, **extra})


def _score_query(model: dict) -> ScoreQuery:
    obj = {k: v for k, v in model.items() if k != "l2"}
    obj.update(value="true", method="logistic", top_k=20)
    if "l2" in model:
        obj["l2"] = model["l2"]
    return ScoreQuery.from_json(obj)


@pytest.fixture(scope="module")
def built(petnord_spec, tmp_path_factory):
    """(root with models, root without) built from the same data."""
    base = tmp_path_factory.mktemp("declared")
    with_models = dataclasses.replace(petnord_spec, models=_parse_models(MODELS, petnord_spec.universes))
    messages: list[str] = []
    build_snapshot(with_models, base / "with", progress=messages.append, fit_models=declared.fit_declared_models)
    build_snapshot(petnord_spec, base / "without", progress=quiet)
    return base / "with", base / "without", messages


def _fresh_caches():
    logistic.LOGISTIC_CACHE.clear()
    logistic.L2_CACHE.clear()


def test_build_fits_declared_models_with_progress_and_stores_them(built):
    root, _, messages = built
    snap = open_snapshot(root)
    assert sorted(snap.models) == sorted(MODELS)
    assert [m for m in messages if m.startswith("model ")] and any("model churn_dogs" in m for m in messages)
    for name, model in snap.models.items():
        for q in model["questions"]:
            path = snap.path / q["file"]
            assert q["file"] in snap.manifest["files"] and not path.stat().st_mode & 0o222
    assert snap.models["churn_dogs"]["questions"][0]["l2"] == 2.0
    assert snap.models["churn"]["questions"][0]["cross_validated"] is True
    assert any("model churn_pairs" in m and " pairs " in m for m in messages)  # the progress line says so


def _fit_on_demand(snap, model: dict) -> list[np.ndarray]:
    """[K, 1 + n_features + n_pairs] coefficients per question, fitted now (as a request would)."""
    from segsrv.engine.predict.target import base_probabilities, evidence_feature_mask, questions, resolve_target

    q = _predict_query(model)
    t = resolve_target(snap, q.universe, q.target, q.segment, q.train_mask, q.max_target_values)
    ev_mask = evidence_feature_mask(t, q.evidence_fields)
    out = []
    for qi, (classes, p0, _) in enumerate(questions(t)):
        _, _, base = base_probabilities(t.S, t.n_S, classes, p0, float(q.prior_strength))
        intercept, W, _, inter = logistic.logistic_weights(t, classes, ev_mask, q.l2, qi, base)
        out.append(np.column_stack([intercept, W, inter.weights]))
    return out


def test_stored_coefficients_are_the_fit_bit_for_bit(built):
    root, plain_root, _ = built
    stored = open_snapshot(root)
    plain = open_snapshot(plain_root)
    for name, model in MODELS.items():
        _fresh_caches()
        fits = logistic.fit_count()
        fresh = _fit_on_demand(plain, model)
        assert logistic.fit_count() == fits + len(fresh)
        files = [fmt.open_array(stored.path / q["file"]) for q in stored.models[name]["questions"]]
        assert len(files) == len(fresh)
        for a, b in zip(files, fresh):
            assert a.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()
        # and the answers a request gets from the stored model are those of the fresh fit
        _fresh_caches()
        a = predict(stored, _predict_query(model))
        b = predict(plain, _predict_query(model))
        assert [(v.value, v.probability) for v in a.probabilities] == [(v.value, v.probability) for v in b.probabilities]


def test_a_request_on_a_declared_model_never_fits(built):
    root, _, _ = built
    snap = open_snapshot(root)
    _fresh_caches()
    before = logistic.fit_count()
    for model in MODELS.values():
        predict(snap, _predict_query(model))
        predict(snap, _predict_query(model, evidence={"segment": "cat_owner"}))
        score_segment(snap, _score_query(model))
    assert logistic.fit_count() == before
    # anything else (other evidence fields) still fits on demand
    predict(snap, _predict_query({**MODELS["churn"], "evidence_fields": ["region"]}))
    assert logistic.fit_count() == before + 1


def test_a_catalog_version_keeps_the_models(built, tmp_path):
    root, _, _ = built
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    name_dir = copy / "petnord"
    base = open_snapshot(name_dir)
    new, changed = apply_segments(name_dir, {"dogs": {"where": {"segment": "dog_owner"}, "universe": "customers"}},
                                  fit_propensities=False)
    assert changed
    snap = open_snapshot(name_dir)
    assert snap.models == base.models
    q = snap.models["churn"]["questions"][0]["file"]
    assert os.stat(new / q).st_ino == os.stat(base.path / q).st_ino  # hard-linked, not refitted
    _fresh_caches()
    before = logistic.fit_count()
    predict(snap, _predict_query(MODELS["churn"]))
    assert logistic.fit_count() == before


def test_a_damaged_or_unlisted_model_file_is_refused(built, tmp_path):
    root, _, _ = built
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    snap = open_snapshot(copy)
    rel = snap.models["churn"]["questions"][0]["file"]
    path = snap.path / rel
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshotError, match="checksum mismatch"):
        open_snapshot(copy)
    manifest = json.loads((snap.path / fmt.MANIFEST).read_text())
    del manifest["files"][rel]
    (snap.path / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(manifest))
    with pytest.raises(CorruptSnapshotError, match="does not list 1 required file"):
        open_snapshot(copy)


def test_stored_pairs_are_checked_against_the_file_and_the_universe(built, tmp_path):
    """The churn_pairs model's interaction pairs are stored (manifest entry and the file's last columns); an
    entry whose pairs do not fit the universe, are malformed, or do not match the file's width is refused."""
    root, _, _ = built
    entry = open_snapshot(root).models["churn_pairs"]["questions"][0]
    assert len(entry["pairs"]) > 0 and all(a < b for a, b, _ in entry["pairs"])
    n_features = open_snapshot(root).universe("customers").n_features
    for bad, match in [(lambda p: p[:-1], "does not fit its universe"),
                       (lambda p: [[p[0][1], p[0][0], p[0][2]]] + p[1:], "'pairs'"),
                       (lambda p: [[p[0][0], n_features, 1]] + p[1:], "'pairs'"),
                       (lambda p: [[p[0][0], p[0][1]]] + p[1:], "'pairs'"),
                       (lambda p: [[str(x) for x in p[0]]] + p[1:], "'pairs'")]:
        copy = tmp_path / f"root{len(list(tmp_path.iterdir()))}"
        shutil.copytree(root, copy)
        vdir = open_snapshot(copy).path
        manifest = json.loads((vdir / fmt.MANIFEST).read_text())
        q = manifest["models"]["churn_pairs"]["questions"][0]
        q["pairs"] = bad(q["pairs"])
        (vdir / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(manifest))
        with pytest.raises(CorruptSnapshotError, match=match):
            open_snapshot(copy)


@pytest.mark.parametrize("models,match", [
    ({"m": {"from": "customers", "target": "churned", "evidence_fields": ["nope"]}}, "models.m: "),
    ({"m": {"from": "customers", "target": "nope"}}, "models.m: "),
    ({"m": {"from": "customers", "target": "churned", "segment": {"segment": "martian"}}}, "models.m: "),
])
def test_declarations_the_engine_refuses_are_spec_errors(petnord_spec, tmp_path, models, match):
    spec = dataclasses.replace(petnord_spec, models=_parse_models(models, petnord_spec.universes))
    with pytest.raises(SpecError, match=match):
        build_snapshot(spec, tmp_path / "root", progress=quiet, fit_models=declared.fit_declared_models)
    assert not (tmp_path / "root" / "petnord").exists()


@pytest.mark.parametrize("models,match", [
    ({"m": {"from": "customers"}}, "models.m.target"),
    ({"m": {"from": "shops", "target": "churned"}}, "models.m.from: unknown universe"),
    ({"m": {"from": "customers", "target": "churned", "method": "conjunction"}}, "unknown key 'method'"),
    ({"bad name": {"target": "churned"}}, "identifier"),
])
def test_model_declarations_are_checked_when_the_spec_is_read(petnord_spec, models, match):
    with pytest.raises(SpecError, match=match):
        _parse_models(models, petnord_spec.universes)


def test_a_build_that_cannot_fit_says_so(petnord_spec, tmp_path):
    spec = dataclasses.replace(petnord_spec, models=_parse_models(MODELS, petnord_spec.universes))
    with pytest.raises(BuildError, match="cannot fit"):
        build_snapshot(spec, tmp_path / "root", progress=quiet)


def test_the_spec_docs_example_declares_these_models(petnord_spec):
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[models.churn]" in b)
    assert _parse_models(tomllib.loads(block)["models"], petnord_spec.universes) == MODELS


def test_hot_reload_swaps_the_models_with_their_version(built, tmp_path):
    """A server that swaps to a version with stored models answers from them at once."""
    from segsrv.server.registry import SnapshotRegistry
    from segsrv.snapshot.publish import point_current

    with_root, plain_root, _ = built
    root = tmp_path / "root"
    shutil.copytree(plain_root, root)
    stored_version = open_snapshot(with_root).path
    shutil.copytree(stored_version, root / "petnord" / stored_version.name)
    registry = SnapshotRegistry(root)
    assert registry.resolve().models == {}
    point_current(root / "petnord", stored_version.name)
    assert registry.refresh() == ["petnord"]
    snap = registry.resolve()
    assert sorted(snap.models) == sorted(MODELS)
    _fresh_caches()
    before = logistic.fit_count()
    predict(snap, _predict_query(MODELS["churn_dogs"]))
    assert logistic.fit_count() == before


def test_warm_up_answers_each_model_by_id_without_fitting(built, monkeypatch):
    """The server's warm-up (engine.warm) answers each stored model's question for a customer by id, the
    path a request takes, a few times; it never fits."""
    from segsrv.engine import predict as predict_pkg

    root, _, _ = built
    snap = open_snapshot(root)
    _fresh_caches()
    calls = []
    original = predict_pkg.predict

    def recording(snapshot, query):
        calls.append((query.target, query.row_id))
        return original(snapshot, query)

    monkeypatch.setattr(predict_pkg, "predict", recording)
    before = logistic.fit_count()
    assert declared.warm_models(snap) == len(MODELS)
    assert logistic.fit_count() == before
    first_id = snap.universe("customers").ids_for_rows([0])[0]
    assert calls.count(("churned", first_id)) == declared.WARM_CALLS * len(MODELS)
    assert calls.count(("churned", None)) == len(MODELS)


def test_the_servers_warm_up_answers_through_the_service(built, monkeypatch):
    """segsrv.service.warm_version (the server's warm-up) runs each stored model's warm queries through a
    service with the server's options (the path a request takes, service layer included), falling back
    to a service without the privacy floor when the floor refuses one; it never fits."""
    from segsrv.service import SegmentationService, warm_version

    root, _, _ = built
    calls = []
    original = SegmentationService.predict

    def recording(self, query, *args, **kw):
        calls.append((self.privacy_k, query.row_id))
        return original(self, query, *args, **kw)

    monkeypatch.setattr(SegmentationService, "predict", recording)
    snap = open_snapshot(root)
    _fresh_caches()
    before = logistic.fit_count()
    info = warm_version(snap, privacy_k=10)
    assert info["models"] == len(MODELS) and logistic.fit_count() == before
    first_id = snap.universe("customers").ids_for_rows([0])[0]
    assert sum(1 for _, rid in calls if rid == first_id) >= declared.WARM_CALLS * len(MODELS)
    assert all(k in (10, 0) for k, _ in calls) and any(k == 10 for k, _ in calls)
