"""SegsrvClient.export and `segsrv export` against a real server (and --local) over PetNord.

The expected ids and scores come from the in-process engine (segsrv.engine.export), which
tests/engine/test_export.py checks against the brute-force oracle over the source tables.
"""

from __future__ import annotations

import csv
import io
import json

import grpc
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.ops.conditions import And, Not, Term, parse_where
from segsrv.engine.export import export_members
from segsrv.ops.export import ExportQuery
from segsrv.errors import QueryError
from segsrv.v1 import condition_pb2 as cpb
from support import segsrv_cli as _cli

U = "customers"
NEGATION = {"segment": "dog_owner", "region": {"$ne": "helsinki"}}


def _engine(snap, where, **kw):
    res = export_members(snap, ExportQuery(universe=U, condition=parse_where(where), **kw))
    chunks = list(res.chunks())
    ids = [i for c, _ in chunks for i in c]
    scores = [s for _, sc in chunks for s in sc.tolist()] if res.ranked else None
    return res, ids, scores


@pytest.mark.parametrize("where", [{}, {"region": "oulu"}, NEGATION, {"$not": {"churned": True}},
                                   {"$and": [{"churned": True}, {"churned": False}]}])
def test_export_equals_local(client, petnord_snapshot, where):
    res, ids, _ = _engine(petnord_snapshot, where)
    stream = client.export({"from": U, "where": where})
    assert stream.total == res.total and not stream.ranked
    assert (stream.snapshot, stream.version) == (petnord_snapshot.name, petnord_snapshot.version)
    assert list(stream) == ids
    assert stream.returned == len(ids)


def test_chunks_members_and_the_keyword_form(client, petnord_snapshot):
    res, ids, scores = _engine(petnord_snapshot, NEGATION, top_k=45, target="churned", value="true")
    stream = client.export(from_=U, where=NEGATION, top_k=45, target="churned", value=True, chunk_size=20)
    assert stream.ranked and stream.total == res.total
    chunks = list(stream.chunks())
    assert [len(c) for c, _ in chunks] == [20, 20, 5] and stream.chunks_received == 3
    assert [i for c, _ in chunks for i in c] == ids and [s for _, sc in chunks for s in sc] == scores
    members = list(client.export({"from": U, "where": NEGATION, "top_k": 45, "target": "churned",
                                  "value": "true"}).members())
    assert members == list(zip(ids, scores))
    assert list(client.export({"from": U, "where": {"region": "oulu"}}, chunk_size=100).members())[:2] == \
        [(i, None) for i in _engine(petnord_snapshot, {"region": "oulu"})[1][:2]]


def test_where_as_engine_or_proto_condition(client, petnord_snapshot):
    _, ids, _ = _engine(petnord_snapshot, NEGATION)
    engine_cond = And((Term("segment", "dog_owner"), Not(Term("region", "helsinki"))))
    assert list(client.export(from_=U, where=engine_cond)) == ids
    proto = cpb.Condition(all_of=cpb.ConditionList(conditions=[
        cpb.Condition(term=cpb.Term(field="segment", value="dog_owner")),
        cpb.Condition(negation=cpb.Condition(term=cpb.Term(field="region", value="helsinki")))]))
    assert list(client.export({"from": U, "where": proto})) == ids
    req = client.export_request({"from": U, "where": NEGATION, "top_k": 3, "target": "churned", "value": True})
    assert (req.universe, req.top_k, req.target_field, req.target_value, req.chunk_size) == \
        (U, 3, "churned", "true", 0)


@pytest.mark.parametrize("query,field", [
    ({"from": U, "top_k": 10}, "target"),
    ({"from": U, "target": "churned"}, "value"),
    ({"from": U, "limit": 10}, "limit"),
    ({"from": U, "where": {"region": {"$bad": 1}}}, "where.region"),
])
def test_malformed_query_fails_before_the_rpc(client, query, field):
    with pytest.raises(QueryError) as info:
        client.export(query)
    assert info.value.violations[0][0] == field


def test_server_errors(client):
    with pytest.raises(SegsrvRpcError) as info:
        client.export({"from": U, "where": {"regoin": "oulu"}}).total
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.violations[0][0] == "condition.term.field" and "region" in info.value.message
    with pytest.raises(SegsrvRpcError) as info:
        list(client.export({"from": U, "top_k": 3, "target": "churned", "value": "maybe"}))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.violations[0][0] == "target_value"
    with pytest.raises(SegsrvRpcError) as info:
        list(client.export({"from": U, "where": {"$segment": "loyal"}}))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(SegsrvRpcError) as info:
        client.export({"from": U}, chunk_size=100_001).total
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.violations[0][0] == "chunk_size"


def test_deadline(server_addr):
    codes = []
    for _ in range(10):
        with SegsrvClient(server_addr, timeout=0.000001, channel_options=[("grpc.use_local_subchannel_pool", 1)]) as c:
            try:
                list(c.export({"from": U}, chunk_size=1))
            except SegsrvRpcError as exc:
                codes.append(exc.code)
                if len(codes) >= 3:
                    break
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


def test_cancel(client):
    stream = client.export({"from": U}, chunk_size=10)
    it = iter(stream)
    assert stream.total == 3000 and next(it)
    stream.cancel()
    with pytest.raises(SegsrvRpcError) as info:
        list(it)
    assert info.value.code == grpc.StatusCode.CANCELLED


# --- the CLI ------------------------------------------------------------------


def _where(server_addr, petnord_root):
    return [["--addr", server_addr], ["--local", str(petnord_root)]]


def test_cli_csv_and_jsonl(server_addr, petnord_root, petnord_snapshot, tmp_path):
    query = {"from": U, "where": NEGATION}
    _, ids, _ = _engine(petnord_snapshot, NEGATION)
    written = {}
    for where in _where(server_addr, petnord_root):
        tag = where[0].strip("-")
        out = tmp_path / f"members-{tag}.csv"
        done = _cli("export", *where, "--json", json.dumps(query), "--out", str(out), "--chunk-size", "100")
        assert done.returncode == 0, done.stderr
        # the summary on stdout (JSON when piped), nothing on stderr
        assert done.stderr == "" and json.loads(done.stdout)["rows"] == len(ids)
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
        assert rows == [["id"]] + [[i] for i in ids]
        out = tmp_path / f"members-{tag}.jsonl"
        done = _cli("export", *where, "--json", json.dumps(query), "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert [json.loads(line) for line in out.read_text().splitlines()] == [{"id": i} for i in ids]
        assert list(tmp_path.glob(".*tmp*")) == []
        written[tag] = out.read_bytes()
    assert written["addr"] == written["local"]


def test_cli_top_k_with_scores(server_addr, petnord_root, petnord_snapshot, tmp_path):
    query = {"from": U, "where": {"lifestyle": "budget"}, "top_k": 25, "target": "churned", "value": True}
    _, ids, scores = _engine(petnord_snapshot, query["where"], top_k=25, target="churned", value="true")
    written = []
    for where in _where(server_addr, petnord_root):
        out = tmp_path / f"top{where[0]}.csv"
        done = _cli("export", *where, "--json", json.dumps(query), "--out", str(out))
        assert done.returncode == 0, done.stderr
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["id", "score"]
        assert [[r[0], float(r[1])] for r in rows[1:]] == [[i, s] for i, s in zip(ids, scores)]
        written.append(out.read_bytes())
        # JSON lines to stdout: --format, since "-" has no extension
        done = _cli("export", *where, "--json", json.dumps(query), "--out", "-", "--format", "jsonl", "--quiet")
        assert done.returncode == 0 and done.stderr == ""
        assert [json.loads(line) for line in done.stdout.splitlines()] == \
            [{"id": i, "score": s} for i, s in zip(ids, scores)]
    assert written[0] == written[1]  # --addr and --local write the same bytes
    # stdout defaults to CSV; a file whose extension says nothing needs --ids-format
    done = _cli("export", "--local", str(petnord_root), "--json", json.dumps(query), "--out", "-", "--quiet")
    assert list(csv.reader(io.StringIO(done.stdout)))[0] == ["id", "score"]
    out = tmp_path / "top.txt"
    done = _cli("export", "--local", str(petnord_root), "--json", json.dumps(query), "--out", str(out))
    assert done.returncode == 1 and "--ids-format" in done.stderr and not out.exists()
    done = _cli("export", "--local", str(petnord_root), "--json", json.dumps(query), "--out", str(out),
                "--format", "csv", "--quiet")
    assert done.returncode == 0 and out.read_text().startswith("id,score")


def test_cli_errors(server_addr, petnord_root, tmp_path):
    out = tmp_path / "x.csv"
    done = _cli("export", "--addr", server_addr, "--json", '{"from": "customers", "where": {"regoin": "oulu"}}',
                "--out", str(out))
    assert done.returncode == 1 and done.stderr.startswith("segsrv: error: INVALID_ARGUMENT: ")
    assert "condition.term.field" in done.stderr and not out.exists()
    done = _cli("export", "--local", str(petnord_root), "--json", '{"from": "customers", "where": {"regoin": "oulu"}}',
                "--out", str(out))
    assert done.returncode == 1 and done.stderr.startswith("segsrv: error: ") and "regoin" in done.stderr
    done = _cli("export", "--addr", server_addr, "--json", '{"from": "customers", "top_k": 5}', "--out", str(out))
    assert done.returncode == 1 and "target" in done.stderr and not out.exists()
    done = _cli("export", "--local", str(petnord_root), "--json", '{"from": "customers"}', "--out", str(out),
                "--chunk-size", "0")
    assert done.returncode == 1 and "--chunk-size" in done.stderr
    done = _cli("export", "--addr", "127.0.0.1:1", "--timeout", "2", "--json", '{"from": "customers"}',
                "--out", str(out))
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and not out.exists()
