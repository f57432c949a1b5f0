"""End to end: SegsrvClient and `segsrv query --addr` against a real server on port 0.

Every answer is compared with the local engine's answer on the same snapshot
(segsrv.service.run_json), all keys but elapsed_ms, and with an independent
expectation: the brute-force oracle over the source tables (tests/support.py: condition
counts and hit supports) or the known answers of clients/fixtures/petnord_expected.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.service import run_json
from segsrv.errors import QueryError
from support import check_remote_equals_local, cli_remote_and_local, expect_count, expect_relate
from support import segsrv_cli as _cli
from support import strip_elapsed as _strip


RELATE_QUERIES = [
    # the seed-style query: what else is in the orders holding dog dry food
    {"from": "orders", "where": {"line_categories": "dog_dryfood"}, "relate": ["line_categories", "lines.product.*"],
     "limit": 10},
    {"from": "order_lines",
     "where": {"product.category": "dry-food", "product.pet_type": "dog"},
     "relate": ["order.customer.region", "order.customer.lifestyle"],
     "select": ["$lift", "$p", "$support", "order.customer.region", "$field", "$value", "$conviction"],
     "limit": 10},
    {"from": "customers", "where": {"region": {"$ne": "helsinki"}, "total_spent_eur": {"$gte": 100, "$lt": 400}},
     "order_by": "p_value", "direction": "all", "limit": 25,
     "select": ["$field", "$value"] + [f"${s}" for s in (
         "support", "support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed", "lift_low", "lift_high",
         "p_value", "q_value", "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang",
         "mutual_information", "n_feature")]},
    {"from": "customers", "where": {"$or": [{"segment": ["dog_owner", "cat_owner"]}, {"$not": {"churned": True}}]},
     "direction": "under", "order_by": "lift", "min_support": 5, "max_p_value": 0.5, "plan": "histogram"},
    {"from": "customers", "where": {"churned": True}, "relate": "**", "include_condition_fields": True,
     "min_lift": 1.2, "prior_strength": 3, "plan": "scan", "order_by": "mutual_information"},
    # "p" travels as RELATE_ORDER_CONFIDENCE and must come back as "p"
    {"from": "customers", "where": {"churned": True}, "order_by": "p", "min_support": 20, "limit": 15},
    {"from": "customers", "where": {"tenure_months": {"$gte": 1e9}}},  # empty condition: plan "none", no hits
    {"from": "customers"},  # every row
    # the orders added last to RelateOrder (17-19) travel too
    {"from": "customers", "where": {"region": "oulu"}, "order_by": "p_not", "limit": 15},
    {"from": "customers", "where": {"region": "oulu"}, "order_by": "n_feature", "direction": "all", "limit": 15},
    {"from": "customers", "where": {"region": "oulu"}, "order_by": "p_base", "direction": "under", "limit": 15},
]








@pytest.mark.parametrize("query", RELATE_QUERIES, ids=lambda q: json.dumps(q)[:50])
def test_relate_equals_local(client, petnord_snapshot, oracle, query):
    remote = client.relate(query)
    check_remote_equals_local(remote, run_json("relate", petnord_snapshot, query), query, oracle, expect_relate)


def test_relate_seed_has_hits(client):
    answer = client.relate(RELATE_QUERIES[0])
    assert answer["hits"] and answer["n_condition"] > 0 and answer["plan"] in ("scan", "histogram")
    assert client.relate(RELATE_QUERIES[6])["plan"] == "none"


def test_relate_keyword_form(client, petnord_snapshot, oracle):
    remote = client.relate(from_="customers", where={"region": "oulu"}, relate=["segment"], limit=3)
    local = run_json("relate", petnord_snapshot, {"from": "customers", "where": {"region": "oulu"},
                                               "relate": ["segment"], "limit": 3})
    expect_relate(remote, {"from": "customers", "where": {"region": "oulu"}}, oracle)
    assert _strip(remote) == _strip(local)


@pytest.mark.parametrize("query", [
    {"from": "customers", "where": {"region": "oulu"}},
    {"from": "orders", "where": {"$and": [{"line_categories": "dog_dryfood"}, {"total_eur": {"$gt": 20}}]}},
    {"from": "customers", "where": {}},
    {"from": "customers", "where": {"$all": True}},
    {"from": "impressions", "where": {"clicked": True, "product.pet_type": ["cat", "dog"]}},
])
def test_count_equals_local(client, petnord_snapshot, oracle, query):
    remote = client.count(query)
    expect_count(remote, query, oracle)
    assert remote == run_json("count", petnord_snapshot, query)


def test_relate_and_count_known_answers(client, petnord_expected):
    """Against clients/fixtures/petnord_expected.json (DuckDB over the source tables)."""
    want = petnord_expected["relate"]
    answer = client.relate({"from": "customers", "where": {"churned": True}, "relate": want["fields"],
                            "select": ["$value", "$support", "$n_feature", "$lift"], "min_support": 0,
                            "max_p_value": 1, "direction": "all", "limit": 100})
    assert answer["n_condition"] == want["condition_count"]
    got = {h["$value"]: h for h in answer["hits"]}
    assert set(got) == {h["value"] for h in want["hits"]}
    for h in want["hits"]:
        assert (got[h["value"]]["$support"], got[h["value"]]["$n_feature"]) == (h["support"], h["feature_count"])
        assert abs(got[h["value"]]["$lift"] - h["lift"]) < 1e-12
    assert client.count({"from": "customers", "where": {"churned": True}})["count"] == want["condition_count"]
    assert client.count({"from": "customers", "where": {"pet_size": "large", "region": "helsinki"}})["count"] == \
        petnord_expected["counts"][1]["count"]


def test_snapshot_info(client, petnord_snapshot):
    info = client.snapshot_info()
    assert (info["name"], info["version"]) == (petnord_snapshot.name, petnord_snapshot.version)
    assert info["description"] == petnord_snapshot.description
    assert petnord_snapshot.name in info["served_snapshots"]
    assert set(info["universes"]) == set(petnord_snapshot.universes)
    for name, u in petnord_snapshot.universes.items():
        got = info["universes"][name]
        assert (got["table"], got["key"], got["n_rows"], got["n_features"]) == (u.table, u.key, u.n_rows, u.n_features)
        assert set(got["fields"]) == set(u.fields)
        for fname, f in u.fields.items():
            g = got["fields"][fname]
            assert (g["kind"], g["semantics"], g["n_values"]) == (f.kind, f.semantics, len(f.values))
            assert g["has_raw_values"] == (f.numeric is not None)
            assert "values" not in g

    one = client.snapshot_info(universe="customers", include_values=True)
    assert list(one["universes"]) == ["customers"]
    u = petnord_snapshot.universes["customers"]
    region = one["universes"]["customers"]["fields"]["region"]
    assert region["values"] == dict(zip(u.fields["region"].values, (int(c) for c in u.fields["region"].counts)))
    assert one["universes"]["customers"]["fields"]["tenure_months"]["edges"] == list(u.fields["tenure_months"].edges)


def test_list_segments(client, petnord_snapshot):
    segments = client.list_segments()
    assert isinstance(segments, list)
    assert {s["name"] for s in segments} == set(petnord_snapshot.segments or {})


def test_health(client):
    try:
        status = client.health()
    except SegsrvRpcError as exc:  # the server does not register grpc.health.v1
        assert exc.code == grpc.StatusCode.UNIMPLEMENTED
    else:
        assert status == "SERVING"


# --- errors -------------------------------------------------------------------


def test_unknown_field_is_invalid_argument(client):
    with pytest.raises(SegsrvRpcError) as info:
        client.relate({"from": "customers", "where": {"regoin": "oulu"}})
    exc = info.value
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "regoin" in exc.message
    assert exc.violations, "expected google.rpc.BadRequest field violations"
    assert any("regoin" in field or "regoin" in desc or field.endswith("term.field") for field, desc in exc.violations)
    assert exc.details and exc.status is not None
    assert str(exc).startswith("INVALID_ARGUMENT: ")

    with pytest.raises(SegsrvRpcError) as info:
        client.relate({"from": "customers", "relate": ["nope_field"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any("nope_field" in f or "nope_field" in d or f.startswith("fields") for f, d in info.value.violations)

    with pytest.raises(SegsrvRpcError) as info:
        client.count({"from": "customers", "where": {"region": "atlantis"}})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_universe_is_invalid_argument(client):
    with pytest.raises(SegsrvRpcError) as info:
        client.count({"from": "nope"})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_snapshot_is_not_found(server_addr):
    with SegsrvClient(server_addr, snapshot="no-such-snapshot") as c:
        with pytest.raises(SegsrvRpcError) as info:
            c.relate({"from": "customers"})
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_malformed_query_fails_before_the_rpc(server_addr):
    with SegsrvClient(server_addr) as c:
        with pytest.raises(QueryError) as info:
            c.relate({"where": {"region": {"$foo": 1}}})
        assert info.value.violations == [("where.region", "bad operators ['$foo']")]


def test_deadline_exceeded(server_addr):
    # gRPC rounds deadlines up to its (millisecond) timer, so a 1 us call on a fast local server may still
    # get its answer: the request is one of the slower ones (every tested feature a hit, each with its
    # q-value: ~1-2 ms on PetNord), each attempt uses a fresh connection, every failure must be
    # DEADLINE_EXCEEDED
    heavy = {"from": "order_lines", "where": {"returned": True}, "relate": ["**"], "direction": "all",
             "min_support": 0, "limit": 10_000, "q_values": True}
    codes = []
    for _ in range(100):
        with SegsrvClient(server_addr, timeout=0.000001, channel_options=[("grpc.use_local_subchannel_pool", 1)]) as c:
            try:
                c.relate(heavy)
            except SegsrvRpcError as exc:
                codes.append(exc.code)
                assert exc.violations == []
                if len(codes) >= 3:
                    break
    assert codes and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture
def slow_server_addr():
    """A server whose Relate and Count answer after 0.5 s: deadlines miss it for sure."""
    from concurrent import futures

    from segsrv.v1 import segsrv_pb2 as pb

    def slow(response):
        def handler(request, context):
            time.sleep(0.5)
            return response
        return handler

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("segsrv.v1.SegmentationService", {
        "Relate": grpc.unary_unary_rpc_method_handler(slow(pb.RelateResponse()), pb.RelateRequest.FromString,
                                                      pb.RelateResponse.SerializeToString),
        "Count": grpc.unary_unary_rpc_method_handler(slow(pb.CountResponse(count=7)), pb.CountRequest.FromString,
                                                     pb.CountResponse.SerializeToString),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_deadline_exceeded_slow_server(slow_server_addr):
    with SegsrvClient(slow_server_addr, timeout=0.1) as c:
        with pytest.raises(SegsrvRpcError) as info:
            c.relate({"from": "customers"})
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert str(info.value).startswith("DEADLINE_EXCEEDED: ")
        with pytest.raises(SegsrvRpcError) as info:  # per-call override
            c.count({"from": "customers"}, timeout=0.05)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert c.count({"from": "customers"}, timeout=None)["count"] == 7


def test_unavailable():
    with SegsrvClient("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(SegsrvRpcError) as info:
            c.count({"from": "customers"})
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# --- the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("kind,query", [("relate", RELATE_QUERIES[1]), ("relate", RELATE_QUERIES[2]),
                                        ("count", {"from": "customers", "where": {"region": "oulu"}})])
def test_cli_addr_equals_local(server_addr, petnord_root, oracle, kind, query):
    r, l = cli_remote_and_local(kind, server_addr, petnord_root, query)
    (expect_relate if kind == "relate" else expect_count)(r, query, oracle)
    r.pop("elapsed_ms", None)
    l.pop("elapsed_ms", None)
    assert r == l
    assert list(r) == list(l)


def test_cli_addr_error(server_addr, slow_server_addr):
    out = _cli("query", "relate", "--addr", server_addr, "--json", '{"from": "customers", "where": {"regoin": "x"}}')
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("segsrv: error: INVALID_ARGUMENT: ")
    # the one violation repeats the message: printed once, its field in brackets
    assert len(lines) == 1 and lines[0].endswith("[condition.term.field]") and lines[0].count("regoin") == 1
    assert out.stdout == ""

    out = _cli("query", "count", "--addr", slow_server_addr, "--timeout", "0.1", "--json", '{"from": "customers"}')
    assert out.returncode == 1 and out.stderr.startswith("segsrv: error: DEADLINE_EXCEEDED: ")

    out = _cli("query", "count", "--addr", server_addr, "--timeout", "0", "--json", "{}")
    assert out.returncode == 1 and "--timeout" in out.stderr


def test_cli_snapshot_flag_names_the_served_snapshot(server_addr):
    query = json.dumps({"from": "customers", "where": {"churned": True}})
    ok = subprocess.run([sys.executable, "-m", "segsrv", "query", "count", "--addr", server_addr,
                         "--snapshot", "petnord", "--json", query], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["snapshot"] == "petnord"
    bad = subprocess.run([sys.executable, "-m", "segsrv", "query", "count", "--addr", server_addr,
                          "--snapshot", "nosuch", "--json", query], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "NOT_FOUND" in bad.stderr and "nosuch" in bad.stderr
