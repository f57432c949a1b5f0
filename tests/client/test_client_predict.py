"""SegsrvClient.predict / score_segment / score_stream / evaluate and `segsrv query predict|score|evaluate`
against a real server on port 0 over PetNord, compared with the in-process JSON runners and with
independent expectations from the brute-force oracle over the source tables (tests/support.py:
segment sizes, the target's values, evidence the row has, scored ids in the segment)."""

from __future__ import annotations

import csv
import json

import grpc
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.ops.conditions import Term
from segsrv.engine.predict import score_segment
from segsrv.ops.score import ScoreQuery
from segsrv.service import run_json
from segsrv.errors import QueryError
from support import check_remote_equals_local, cli_remote_and_local, expect_evaluate, expect_predict, expect_score
from support import segsrv_cli as _cli
from support import strip_elapsed as _strip

PREDICT_QUERIES = [
    {"from": "customers", "segment": {"lifestyle": "premium"}, "target": "churned", "id": "CUST-00007"},
    {"from": "customers", "target": "segment", "id": "CUST-00042", "evidence": {"region": "oulu"},
     "evidence_fields": ["region", "lifestyle", "orders.*"], "prior_strength": 2, "min_support": 10,
     "method": "factorized"},
    {"from": "customers", "target": "churned", "evidence": [["segment", "dog_owner"], ["brand_loyalty", "flexible"]]},
    {"from": "customers", "target": "orders.lines.product.category", "evidence": {"segment": "cat_owner"}},
]
EVALUATE_QUERIES = [
    {"from": "customers", "target": "churned"},
    {"from": "customers", "target": "segment", "holdout_fraction": 0.3, "seed": 5, "method": "factorized",
     "evidence_fields": ["orders.*", "region"], "prior_strength": 2},
]








@pytest.mark.parametrize("query", PREDICT_QUERIES, ids=lambda q: json.dumps(q)[:40])
def test_predict_equals_local(client, petnord_snapshot, oracle, query):
    remote = client.predict(query)
    check_remote_equals_local(remote, run_json("predict", petnord_snapshot, query), query, oracle, expect_predict)
    assert remote["probabilities"] and remote["evidence"]


def test_predict_keyword_form(client, petnord_snapshot, oracle, petnord_expected):
    remote = client.predict(from_="customers", target="churned", id="CUST-00003")
    local = run_json("predict", petnord_snapshot, {"from": "customers", "target": "churned", "id": "CUST-00003"})
    expect_predict(remote, {"from": "customers", "target": "churned", "id": "CUST-00003"}, oracle)
    assert sorted(p["value"] for p in remote["probabilities"]) == petnord_expected["predict"]["values"]
    assert _strip(remote) == _strip(local)


def test_score_segment_equals_local(client, petnord_snapshot, oracle):
    query = {"from": "customers", "segment": {"region": "oulu"}, "target": "churned", "value": True}
    remote = client.score_segment(query, chunk_size=7)
    check_remote_equals_local(remote, run_json("score", petnord_snapshot, query), query, oracle, expect_score)
    assert remote["returned"] == remote["n_members"] == len(remote["scores"]) > 7

    query = {"from": "customers", "target": "segment", "value": "dog_owner", "top_k": 15, "evidence_fields": "orders.*"}
    remote = client.score_segment(query)
    expect_score(remote, query, oracle)
    assert _strip(remote) == _strip(run_json("score", petnord_snapshot, query))


def test_score_stream(client, petnord_snapshot):
    stream = client.score_stream({"from": "customers", "target": "churned", "value": "true", "top_k": 20},
                                 chunk_size=7)
    pairs = list(stream)
    res = score_segment(petnord_snapshot, ScoreQuery(target="churned", value="true", universe="customers", top_k=20))
    assert pairs == [(str(i), s) for i, s in zip(res.ids, res.scores.tolist())]
    assert stream.chunks == 3
    assert stream.summary["n_members"] == 3000 and stream.summary["returned"] == 20
    assert stream.summary["mean_score"] == res.mean_score


@pytest.mark.parametrize("query", EVALUATE_QUERIES, ids=lambda q: json.dumps(q)[:40])
def test_evaluate_equals_local(client, petnord_snapshot, oracle, query):
    remote = client.evaluate(query)
    check_remote_equals_local(remote, run_json("evaluate", petnord_snapshot, query), query, oracle, expect_evaluate)
    assert (remote["auc"] is None) == (query["target"] != "churned")


def test_errors(client):
    with pytest.raises(SegsrvRpcError) as info:
        client.predict({"from": "customers", "target": "churnd"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in info.value.violations] == ["target_field"]

    with pytest.raises(SegsrvRpcError) as info:
        client.predict({"from": "customers", "target": "churned", "id": "CUST-77777"})
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "CUST-77777" in info.value.message

    with pytest.raises(SegsrvRpcError) as info:
        client.predict({"from": "customers", "target": "churned", "evidence": {"region": "oulu", "churned": True}})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in info.value.violations] == ["evidence[1]"]

    with pytest.raises(SegsrvRpcError) as info:
        client.score_segment({"from": "customers", "target": "churned", "value": "maybe"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in info.value.violations] == ["target_value"]


@pytest.mark.parametrize("call,query,violation", [
    ("predict", {"from": "customers", "target": "churned", "idd": "x"}, "idd"),
    ("predict", {"from": "customers"}, "target"),
    ("predict", {"from": "customers", "target": "churned", "evidence": [["region"]]}, "evidence[0]"),
    ("predict", {"from": "customers", "target": "churned", "method": "magic"}, "method"),
    ("score_segment", {"from": "customers", "target": "churned"}, "value"),
    ("score_segment", {"from": "customers", "target": "churned", "value": "true", "top_k": -1}, "top_k"),
    ("evaluate", {"from": "customers", "target": "churned", "holdout_fraction": 1.5}, "holdout_fraction"),
    ("evaluate", {"from": "customers", "target": "churned", "segment": {"region": {"$foo": 1}}}, "segment.region"),
])
def test_malformed_query_fails_before_the_rpc(client, call, query, violation):
    with pytest.raises(QueryError) as info:
        getattr(client, call)(query)
    assert info.value.violations[0][0] == violation


def test_score_stream_deadline(server_addr):
    codes = []
    for _ in range(10):
        with SegsrvClient(server_addr, timeout=0.000001, channel_options=[("grpc.use_local_subchannel_pool", 1)]) as c:
            try:
                c.score_segment({"from": "customers", "target": "churned", "value": "true"}, chunk_size=1)
            except SegsrvRpcError as exc:
                codes.append(exc.code)
                if len(codes) >= 3:
                    break
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


# --- the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("kind,query", [("predict", PREDICT_QUERIES[1]), ("evaluate", EVALUATE_QUERIES[0])])
def test_cli_addr_equals_local(server_addr, petnord_root, oracle, kind, query):
    r, l = cli_remote_and_local(kind, server_addr, petnord_root, query)
    (expect_predict if kind == "predict" else expect_evaluate)(r, query, oracle)
    r.pop("elapsed_ms")
    l.pop("elapsed_ms")
    assert r == l and list(r) == list(l)


def test_cli_score_csv(server_addr, petnord_root, petnord_snapshot, tmp_path):
    query = {"from": "customers", "segment": {"lifestyle": "budget"}, "target": "churned", "value": "true",
             "top_k": 25}
    res = score_segment(petnord_snapshot, ScoreQuery(target="churned", value="true", universe="customers",
                                                     segment=Term("lifestyle", "budget"), top_k=25))
    expected = [[str(i), s] for i, s in zip(res.ids, res.scores.tolist())]
    for where in (["--addr", server_addr], ["--local", str(petnord_root)]):
        out = tmp_path / f"scores{where[0]}.csv"
        done = _cli("query", "score", *where, "--json", json.dumps(query), "--csv", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "score"]
        assert [[r[0], float(r[1])] for r in rows[1:]] == expected
        summary = json.loads(done.stderr.strip().splitlines()[-1])
        assert (summary["n_members"], summary["returned"], summary["target"], summary["value"]) == \
            (res.n_members, 25, "churned", "true")

    # without --csv: JSON lines on stdout
    done = _cli("query", "score", "--addr", server_addr, "--json", json.dumps(query))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [[d["id"], d["score"]] for d in lines] == expected

    done = _cli("query", "predict", "--local", str(petnord_root), "--csv", str(tmp_path / "x.csv"),
                "--json", json.dumps(PREDICT_QUERIES[0]))
    assert done.returncode == 1 and "--csv" in done.stderr


def test_cli_addr_error(server_addr):
    out = _cli("query", "predict", "--addr", server_addr, "--json", '{"from": "customers", "target": "churned", '
                                                                     '"id": "CUST-77777"}')
    assert out.returncode == 1 and out.stderr.startswith("segsrv: error: NOT_FOUND: ")
    assert "CUST-77777" in out.stderr and out.stdout == ""
