"""Profile over gRPC: a real server on port 0 over PetNord (create_server, in-process).

The numbers are compared with the in-process engine on the same snapshot (whose numbers
tests/engine/test_profile.py checks against the brute-force oracle over the source tables):
every value's counts, shares, lift and p-value and every numeric statistic must arrive
unchanged (NaN included). The Python client and `segsrv query profile --addr` must print the
same JSON as `--local`. Errors come back with their status codes and field violations.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import grpc
import pytest

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.engine.catalog import apply_segments
from segsrv.ops.conditions import And, Not, Or, Range, Term, parse_where
from segsrv.engine.profile import profile
from segsrv.ops.profile import NUMERIC_STATS, ProfileQuery
from segsrv.errors import QueryError, Violation
from segsrv.service import run_json
from segsrv.v1 import condition_pb2 as cpb
from segsrv.v1 import segsrv_pb2 as pb
from support import check_remote_equals_local, cli_remote_and_local, expect_profile
from support import segsrv_cli as _cli
from support import strip_elapsed as _strip


def _term(field: str, value: str) -> cpb.Condition:
    return cpb.Condition(term=cpb.Term(field=field, value=value))


def _all_of(*conds) -> cpb.Condition:
    return cpb.Condition(all_of=cpb.ConditionList(conditions=list(conds)))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check(resp: pb.ProfileResponse, res) -> None:
    assert resp.info.snapshot_name == res.snapshot and resp.info.snapshot_version == res.version
    assert (resp.universe, resp.row_count, resp.segment_count) == (res.universe, res.n_rows, res.n_segment)
    assert [f.field for f in resp.fields] == [f.field for f in res.fields]
    for got, want in zip(resp.fields, res.fields):
        values = [*want.over, *want.under]  # over-indexed first, then under-indexed
        assert [v.value for v in got.values] == [v.value for v in values]
        for g, w in zip(got.values, values):
            assert (g.segment_count, g.segment_share, g.population_share, g.lift, g.p_value) == \
                (w.segment_count, w.segment_share, w.population_share, w.lift, w.p_value)
    assert [p.field for p in resp.numeric_fields] == [p.field for p in res.numeric]
    for got, want in zip(resp.numeric_fields, res.numeric):
        for side in ("segment", "population"):
            g, w = getattr(got, side), getattr(want, side)
            assert g.count == w.count
            assert all(_same(getattr(g, s), getattr(w, s)) for s in NUMERIC_STATS[1:]), (side, g, w)


CASES = [
    # (request kwargs, engine query kwargs)
    (dict(universe="customers", segment=_term("region", "oulu")),
     dict(universe="customers", segment=Term("region", "oulu"))),
    (dict(universe="customers", segment=_all_of(_term("segment", "dog_owner"),
                                                cpb.Condition(negation=_term("region", "helsinki"))),
          fields=["region", "tenure_months", "orders.lines.product.*"], values_per_field=3),
     dict(universe="customers", segment=And((Term("segment", "dog_owner"), Not(Term("region", "helsinki")))),
          fields=["region", "tenure_months", "orders.lines.product.*"], values_per_field=3)),
    (dict(universe="customers", segment=cpb.Condition(negation=cpb.Condition(any_of=cpb.ConditionList(
        conditions=[_term("churned", "true"), _term("lifestyle", "budget")])))),
     dict(universe="customers", segment=Not(Or((Term("churned", "true"), Term("lifestyle", "budget")))))),
    (dict(universe="order_lines", segment=cpb.Condition(numeric_range=cpb.NumericRange(field="qty", gte=2)),
          values_per_field=100),
     dict(universe="order_lines", segment=Range("qty", gte=2), values_per_field=100)),
    (dict(universe="orders"), dict(universe="orders")),  # every row: lift 1 everywhere, no values listed
    # empty: count 0, NaN statistics travel as NaN
    (dict(universe="orders", segment=cpb.Condition(numeric_range=cpb.NumericRange(field="total_eur", lt=-1))),
     dict(universe="orders", segment=Range("total_eur", lt=-1))),
]


@pytest.mark.parametrize("request_kwargs,query_kwargs", CASES)
def test_profile_equals_engine(stub, petnord_snapshot, request_kwargs, query_kwargs):
    resp = stub.Profile(pb.ProfileRequest(**request_kwargs), timeout=30)
    res = profile(petnord_snapshot, ProfileQuery(**query_kwargs))
    _check(resp, res)
    assert resp.info.server_time_ms > 0


def test_empty_segment_sends_nan_statistics(stub):
    resp = stub.Profile(pb.ProfileRequest(universe="orders", segment=CASES[-1][0]["segment"]), timeout=30)
    assert resp.segment_count == 0 and resp.row_count > 0
    assert resp.fields and all(len(f.values) == 0 for f in resp.fields)
    assert "total_eur" in [p.field for p in resp.numeric_fields]  # and customer.tenure_months etc.
    for num in resp.numeric_fields:
        assert num.segment.count == 0
        assert all(math.isnan(getattr(num.segment, s)) for s in NUMERIC_STATS[1:])
        assert num.population.count == resp.row_count and not math.isnan(num.population.mean)
    # and back from the wire: NaN survives serialisation
    again = pb.ProfileResponse.FromString(resp.SerializeToString())
    assert math.isnan(again.numeric_fields[0].segment.median)


def test_values_per_field_zero_means_five(stub, petnord_snapshot):
    resp = stub.Profile(pb.ProfileRequest(universe="customers", segment=_term("region", "oulu"),
                                          fields=["region"]), timeout=30)
    (f,) = resp.fields
    assert [v.lift > 1 for v in f.values] == [True] + [False] * 5  # oulu, then the first 5 of 5 other regions
    _check(resp, profile(petnord_snapshot, ProfileQuery(universe="customers", segment=Term("region", "oulu"),
                                                        fields=["region"], values_per_field=5)))


def test_segment_reference(start_server, petnord_root, tmp_path, petnord_snapshot):
    root = tmp_path / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    apply_segments(root / "petnord", {"oulu": {"where": {"region": "oulu"}, "universe": "customers"}},
                   fit_propensities=False)
    stub = start_server(root).stub
    resp = stub.Profile(pb.ProfileRequest(universe="customers", segment=cpb.Condition(
        segment=cpb.SegmentReference(name="oulu"))), timeout=30)
    want = profile(petnord_snapshot, ProfileQuery(universe="customers", segment=Term("region", "oulu")))
    want.version = resp.info.snapshot_version  # the catalog version; the same data
    _check(resp, want)


# --- the Python client and the CLI ------------------------------------------------

JSON_QUERIES = [
    {"from": "customers", "segment": {"lifestyle": "premium", "churned": True}},
    {"from": "customers", "segment": {"$not": {"$or": [{"churned": True}, {"lifestyle": "budget"}]}},
     "fields": ["region", "total_*", "orders.**"], "values_per_field": 2},
    {"from": "order_lines", "segment": {"product.category": "aquarium"}, "fields": "product.*"},
    {"from": "orders", "segment": {"total_eur": {"$lt": -1}}},  # empty: NaN -> null both ways
    {"from": "orders"},
]


@pytest.mark.parametrize("query", JSON_QUERIES, ids=lambda q: json.dumps(q)[:60])
def test_client_equals_local(served, petnord_snapshot, oracle, query):
    with SegsrvClient(served.address, timeout=30) as client:
        remote = client.profile(query)
    json.dumps(remote, allow_nan=False)
    check_remote_equals_local(remote, run_json("profile", petnord_snapshot, query), query, oracle, expect_profile)


def test_client_keyword_form_and_local_validation(served, petnord_snapshot, oracle):
    with SegsrvClient(served.address, timeout=30) as client:
        a = client.profile(from_="customers", segment=Term("region", "oulu"), fields=["region"])
        with pytest.raises(QueryError, match="values_per_field"):
            client.profile({"from": "customers", "values_per_field": 0})  # refused before any RPC
        with pytest.raises(QueryError, match="unknown key"):
            client.profile({"from": "customers", "where": {}})
        with pytest.raises(SegsrvRpcError) as info:
            client.profile({"from": "customers", "fields": ["regoin"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.violations[0][0] == "fields[0]"
    b = run_json("profile", petnord_snapshot, {"from": "customers", "segment": {"region": "oulu"}, "fields": ["region"]})
    expect_profile(a, {"from": "customers", "segment": {"region": "oulu"}}, oracle)
    assert _strip(a) == _strip(b)


def test_cli_addr_equals_local(served, petnord_root, oracle):
    r, l = cli_remote_and_local("profile", served.address, petnord_root, JSON_QUERIES[1])
    expect_profile(r, JSON_QUERIES[1], oracle)
    assert list(r) == list(l)
    assert _strip(r) == _strip(l)
    bad = _cli("query", "profile", "--addr", served.address, "--json", '{"from": "customers", "fields": ["regoin"]}')
    assert bad.returncode == 1 and bad.stderr.startswith("segsrv: error: INVALID_ARGUMENT: ")
    assert "fields[0]" in bad.stderr and "region" in bad.stderr


# --- errors -------------------------------------------------------------------------


def _error(stub, rpc_details, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        stub.Profile(pb.ProfileRequest(**kwargs), timeout=30)
    return rpc_details(err.value)


@pytest.mark.parametrize("kwargs,code,paths,reason,text", [
    (dict(universe="customers", fields=["region", "lifestyel"]), "INVALID_ARGUMENT", ["fields[1]"], "UNKNOWN_FIELD",
     "did you mean 'lifestyle'"),
    (dict(universe="customers", fields=["nope.*"]), "INVALID_ARGUMENT", ["fields[0]"], "UNKNOWN_FIELD",
     "matches no field"),
    (dict(universe="customers", fields=["region", ""]), "INVALID_ARGUMENT", ["fields[1]"], "INVALID_REQUEST",
     "empty"),
    (dict(universe="customers", segment=_term("regoin", "oulu")), "INVALID_ARGUMENT", ["segment.term.field"],
     "UNKNOWN_FIELD", "did you mean 'region'"),
    (dict(universe="customers", segment=_all_of(_term("region", "oulu"), _term("lifestyle", "luxury"))),
     "INVALID_ARGUMENT", ["segment.all_of.conditions[1].term.value"], "UNKNOWN_VALUE", "luxury"),
    (dict(universe="customerz"), "INVALID_ARGUMENT", ["universe"], "UNKNOWN_UNIVERSE", "customers"),
    (dict(universe="customers", values_per_field=101), "RESOURCE_EXHAUSTED", ["values_per_field"],
     "LIMIT_EXCEEDED", "maximum 100"),
    (dict(universe="customers", values_per_field=-1), "INVALID_ARGUMENT", ["values_per_field"], "INVALID_REQUEST",
     ">= 0"),
    (dict(universe="customers", segment=cpb.Condition(segment=cpb.SegmentReference(name="vip"))), "NOT_FOUND",
     ["segment.segment.name"], "UNKNOWN_SEGMENT", "vip"),
    (dict(universe="customers", snapshot=pb.SnapshotSelector(name="nope")), "NOT_FOUND", None, None, "nope"),
])
def test_errors(stub, rpc_details, kwargs, code, paths, reason, text):
    got_code, message, violations, info = _error(stub, rpc_details, **kwargs)
    assert got_code == getattr(grpc.StatusCode, code), message
    assert text in message
    if paths is not None:
        assert [f for f, _ in violations] == paths
    if reason is not None:
        assert info.reason == reason


def test_paths_locate_fields():
    paths = ProfileQuery.paths(pb.ProfileRequest(fields=["region", "lifestyel"]))
    assert paths.locate(Violation("fields", "unknown field 'lifestyel'", "pattern", "lifestyel")) == ["fields[1]"]
    assert paths.locate(Violation("fields", "something else")) == ["fields"]
    assert paths.locate(Violation("from", "x")) == ["universe"]
    req = pb.ProfileRequest(universe="customers", segment=_term("region", "oulu"))
    q = ProfileQuery.from_proto(req, ProfileQuery.paths(req))
    assert q.segment == parse_where({"region": "oulu"}) and q.values_per_field == 5 and q.fields is None
