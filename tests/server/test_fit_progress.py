"""A ScoreSegment or ranked export that must fit a logistic model first says so in its stream (a progress
message before the fit) instead of staying silent; nothing is said when nothing is fitted (cached in the
server, declared in the snapshot, or the factorized method). Issue 15."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from segsrv import cli
from segsrv.client import SegsrvClient
from segsrv.engine.count import count
from segsrv.engine.predict import logistic, pending_fits, score_segment
from segsrv.ops.conditions import Term
from segsrv.ops.score import ScoreQuery
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb



def _fresh_caches():
    with logistic.LOGISTIC_LOCK:
        logistic.LOGISTIC_CACHE.clear()
        logistic.L2_CACHE.clear()


def _premium():
    return cpb.Condition(term=cpb.Term(field="lifestyle", value="premium"))


def _score(stub, **extra):
    req = pb.ScoreSegmentRequest(universe="customers", segment=_premium(), target_field="churned",
                                 target_value="true", chunk_size=50, **extra)
    msgs = list(stub.ScoreSegment(req, timeout=120))
    kinds = [m.WhichOneof("payload") for m in msgs]
    n = kinds.count("progress")
    assert kinds == ["progress"] * n + ["chunk"] * (len(kinds) - n - 1) + ["summary"]
    assert all(m.info.snapshot_name == "petnord" for m in msgs)
    progress = [m.progress.message for m in msgs[:n]]
    pairs = [(s.id, s.score) for m in msgs if m.WhichOneof("payload") == "chunk" for s in m.chunk.scores]
    return progress, pairs, msgs[-1].summary


def test_score_segment_says_it_fits_first_then_scores_the_same(petnord_root, petnord_snapshot, start_server):
    stub = start_server(petnord_root).stub
    _fresh_caches()
    query = ScoreQuery(target="churned", value="true", universe="customers", segment=Term("lifestyle", "premium"))
    assert len(pending_fits(petnord_snapshot, query)) == 1  # nothing fitted by asking
    assert not logistic.LOGISTIC_CACHE
    progress, pairs, summary = _score(stub)
    assert len(progress) == 1
    assert progress[0].startswith("fitting the logistic model of churned (2 classes) within ")
    assert "evidence features" in progress[0] and "cross-validation" in progress[0]
    assert "not declared in the snapshot" in progress[0]
    again, pairs2, summary2 = _score(stub)
    assert again == [] and pairs2 == pairs and summary2.mean_score == summary.mean_score
    res = score_segment(petnord_snapshot, query)
    assert [i for i, _ in pairs] == [str(i) for i in res.ids] and [s for _, s in pairs] == res.scores.tolist()
    # a fixed l2 is another model: said again, without the cross-validation
    progress, _, _ = _score(stub, l2=3.0)
    assert len(progress) == 1 and "l2 3" in progress[0] and "cross-validation" not in progress[0]
    assert _score(stub, l2=3.0)[0] == []


def test_pending_fits_uses_the_keys_of_the_fit(petnord_snapshot):
    _fresh_caches()
    query = ScoreQuery(target="churned", value="true", universe="customers", segment=Term("lifestyle", "premium"))
    assert len(pending_fits(petnord_snapshot, query)) == 1
    score_segment(petnord_snapshot, query)
    assert pending_fits(petnord_snapshot, query) == []
    logistic.LOGISTIC_CACHE.clear()  # the cross-validated l2 is still known: only the final fit is said
    [line] = pending_fits(petnord_snapshot, query)
    assert "cross-validation" not in line and "l2 " in line
    score_segment(petnord_snapshot, query)
    assert pending_fits(petnord_snapshot, query) == []
    # multi-valued target: one question per value, named
    multi = ScoreQuery(target="orders.line_categories", value="cat_toys", universe="customers")
    [line] = pending_fits(petnord_snapshot, multi)
    assert line.startswith("fitting the logistic model of orders.line_categories=cat_toys within ")
    score_segment(petnord_snapshot, multi)
    assert pending_fits(petnord_snapshot, multi) == []
    # nothing to fit when S holds one class
    one = ScoreQuery(target="churned", value="true", universe="customers", segment=Term("churned", "true"))
    assert pending_fits(petnord_snapshot, one) == []


def test_factorized_never_says_anything(petnord_root, start_server):
    stub = start_server(petnord_root).stub
    _fresh_caches()
    progress, pairs, _ = _score(stub, method=pb.PREDICT_METHOD_FACTORIZED)
    assert progress == [] and pairs


def _export(stub, **extra):
    req = pb.ExportMembersRequest(universe="customers", condition=_premium(), target_field="churned",
                                  target_value="true", top_k=40, chunk_size=15, **extra)
    msgs = list(stub.ExportMembers(req, timeout=120))
    head, chunks = msgs[0], msgs[1:]
    assert not head.ids and not head.scores
    assert all(m.ids and not m.progress and m.total_count == 0 for m in chunks)
    return head, [(i, s) for m in chunks for i, s in zip(m.ids, m.scores)]


def test_ranked_export_says_it_fits_in_its_first_message(petnord_root, petnord_snapshot, start_server):
    stub = start_server(petnord_root).stub
    total = count(petnord_snapshot, "customers", Term("lifestyle", "premium")).count
    _fresh_caches()
    head, members = _export(stub)
    assert head.total_count == total > 40
    assert head.progress.startswith("fitting the logistic model of churned (2 classes) within ")
    assert len(members) == 40
    head2, members2 = _export(stub)
    assert head2.total_count == total and head2.progress == "" and members2 == members
    # unranked: never
    msgs = list(stub.ExportMembers(pb.ExportMembersRequest(universe="customers", condition=_premium()), timeout=30))
    assert msgs[0].total_count == total and all(not m.progress for m in msgs)


def test_an_error_of_the_query_comes_before_any_progress(petnord_root, start_server):
    import grpc

    stub = start_server(petnord_root).stub
    _fresh_caches()
    req = pb.ExportMembersRequest(universe="customers", condition=_premium(), target_field="churned",
                                  target_value="maybe", top_k=5)
    stream = stub.ExportMembers(req, timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_python_client_and_cli_show_the_progress(petnord_root, start_server, capsys):
    r = start_server(petnord_root)
    query = {"from": "customers", "segment": {"lifestyle": "premium"}, "target": "churned", "value": "true"}
    _fresh_caches()
    with SegsrvClient(r.address, timeout=120) as client:
        stream = client.score_stream(query)
        pairs = list(stream)
        assert len(stream.progress) == 1 and stream.progress[0].startswith("fitting the logistic model")
        again = client.score_stream(query)
        assert list(again) == pairs and again.progress == [] and again.summary is not None
        _fresh_caches()
        seen: list[str] = []
        export = client.export({"from": "customers", "where": {"lifestyle": "premium"}, "target": "churned",
                                "value": "true", "top_k": 10})
        export.on_progress = seen.append
        assert export.total > 10 and export.progress == seen and len(seen) == 1
        assert len(list(export.members())) == 10
    _fresh_caches()
    assert cli.main(["query", "score", "--addr", r.address, "--timeout", "300", "--json", json.dumps(query)]) == 0
    err = capsys.readouterr().err
    assert "segsrv query score: fitting the logistic model of churned" in err
    assert cli.main(["query", "score", "--addr", r.address, "--timeout", "300", "--json", json.dumps(query)]) == 0
    assert "fitting" not in capsys.readouterr().err
    _fresh_caches()
    export = {"from": "customers", "where": {"lifestyle": "premium"}, "target": "churned", "value": "true",
              "top_k": 5}
    assert cli.main(["export", "--addr", r.address, "--timeout", "300", "--json", json.dumps(export),
                     "--out", "-"]) == 0
    out = capsys.readouterr()
    assert "segsrv export: fitting the logistic model of churned" in out.err and len(out.out.splitlines()) == 6
    # in-process (--local) the same line
    _fresh_caches()
    assert cli.main(["query", "score", "--local", str(petnord_root), "--json", json.dumps(query)]) == 0
    assert "segsrv query score: fitting the logistic model" in capsys.readouterr().err


def test_a_declared_model_is_never_announced(petnord_spec, tmp_path, start_server):
    """A model stored in the snapshot (declared in the build spec) is not fitted: no progress."""
    declared = pytest.importorskip("segsrv.engine.predict.models")
    from segsrv.snapshot.builder import build_snapshot
    from segsrv.snapshot.reader import open_snapshot
    from segsrv.snapshot.spec import _parse_models

    if "fit_models" not in inspect.signature(build_snapshot).parameters:
        pytest.skip("this tree's builder does not fit declared models")
    models = {"churn_premium": {"from": "customers", "target": "churned", "segment": {"lifestyle": "premium"}}}
    spec = dataclasses.replace(petnord_spec, models=_parse_models(models, petnord_spec.universes))
    root = tmp_path / "root"
    build_snapshot(spec, root, progress=lambda m: None, fit_models=declared.fit_declared_models)
    snap = open_snapshot(root)
    _fresh_caches()
    query = ScoreQuery(target="churned", value="true", universe="customers", segment=Term("lifestyle", "premium"))
    assert pending_fits(snap, query) == []
    stub = start_server(root).stub
    progress, pairs, _ = _score(stub)
    assert progress == [] and pairs
    head, members = _export(stub)
    assert head.progress == "" and members
    assert not logistic.LOGISTIC_CACHE  # answered from the stored model, nothing fitted
