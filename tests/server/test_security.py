"""TLS, mTLS, bearer tokens with scopes, and request names that can never become paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from segsrv.server.app import ConfigError, create_server
from segsrv.server.auth import TokenFileError, TokenStore
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc
from support import Pki

QUERY_TOKEN = "q-token-0123456789abcdef"
EXPORT_TOKEN = "e-token-0123456789abcdef"
BOTH_TOKEN = "b-token-0123456789abcdef"
ROWS_TOKEN = "r-token-0123456789abcdef"
ROWS_ONLY_TOKEN = "o-token-0123456789abcdef"


# -- certificates (support.Pki) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _count(channel: grpc.Channel, timeout: float = 10, metadata=None):
    stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
    return stub.Count(pb.CountRequest(universe="customers"), timeout=timeout, metadata=metadata)


def _fails(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value


# -- TLS / mTLS ----------------------------------------------------------------------------------


def test_tls_accepts_a_verifying_client_and_refuses_plaintext(pki, petnord_root, start_server):
    r = start_server(petnord_root, tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"))
    assert r.server.secure
    with pki.channel(r.address) as channel:
        assert _count(channel).row_count == 3000
    # a plaintext client cannot talk to it (the Running helper's channel is plaintext)
    assert _fails(_count, r.channel, timeout=3).code() == grpc.StatusCode.UNAVAILABLE
    # a client that does not trust the server's CA refuses it
    with grpc.secure_channel(r.address, grpc.ssl_channel_credentials(root_certificates=pki.files["stranger.pem"])) \
            as channel:
        assert _fails(_count, channel, timeout=3).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_signed_by_the_client_ca(pki, petnord_root, start_server):
    r = start_server(petnord_root, tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"),
                     tls_client_ca=pki.path("ca.pem"))
    with pki.channel(r.address, client="client") as channel:
        assert _count(channel).row_count == 3000
    with pki.channel(r.address) as channel:  # TLS, but no client certificate
        assert _fails(_count, channel, timeout=3).code() == grpc.StatusCode.UNAVAILABLE
    with pki.channel(r.address, client="stranger") as channel:  # a certificate from another CA
        assert _fails(_count, channel, timeout=3).code() == grpc.StatusCode.UNAVAILABLE
    assert _fails(_count, r.channel, timeout=3).code() == grpc.StatusCode.UNAVAILABLE  # plaintext


def test_tls_settings_are_checked(pki, petnord_root, tmp_path):
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        create_server(petnord_root, tls_cert=pki.path("server.pem"))
    with pytest.raises(ConfigError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        create_server(petnord_root, tls_client_ca=pki.path("ca.pem"))
    with pytest.raises(ConfigError, match="cannot read"):
        create_server(petnord_root, tls_cert=tmp_path / "nope.pem", tls_key=pki.path("server.key"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM file"):
        create_server(petnord_root, tls_cert=tmp_path / "junk.pem", tls_key=pki.path("server.key"))


# -- tokens and scopes ---------------------------------------------------------------------------


def _write_tokens_toml(path: Path) -> Path:
    path.write_text(f"""
[[tokens]]
name = "dashboard"
token = "{QUERY_TOKEN}"
scopes = ["query"]

[[tokens]]
name = "exporter"
sha256 = "{hashlib.sha256(EXPORT_TOKEN.encode()).hexdigest()}"
scopes = ["export"]

[[tokens]]
name = "crm"
token = "{BOTH_TOKEN}"
scopes = ["query", "export"]

[[tokens]]
name = "support-desk"
token = "{ROWS_TOKEN}"
scopes = ["query", "rows"]

[[tokens]]
name = "rows-only"
token = "{ROWS_ONLY_TOKEN}"
scopes = ["rows"]
""")
    return path


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def authed(petnord_root, start_server, tmp_path):
    return start_server(petnord_root, tokens=_write_tokens_toml(tmp_path / "tokens.toml"))


def _score(stub, metadata):
    return list(stub.ScoreSegment(pb.ScoreSegmentRequest(universe="customers", target_field="churned",
                                                         target_value="true", top_k=3), timeout=30,
                                  metadata=metadata))


def test_tokens_and_scopes_accept_and_reject_exactly_as_configured(authed, rpc_details):
    stub = authed.stub
    count = pb.CountRequest(universe="customers")
    # no token, a wrong token, a malformed header: UNAUTHENTICATED
    for metadata in (None, bearer("x" * 24), (("authorization", QUERY_TOKEN),), bearer("")):
        err = _fails(stub.Count, count, timeout=10, metadata=metadata)
        code, message, _, info = rpc_details(err)
        assert code == grpc.StatusCode.UNAUTHENTICATED and info.reason == "UNAUTHENTICATED", metadata
        assert QUERY_TOKEN not in message
    # query scope: Count / Relate yes, ScoreSegment and ExportMembers (customer ids) no
    assert stub.Count(count, timeout=10, metadata=bearer(QUERY_TOKEN)).row_count == 3000
    churned = c.Condition(term=c.Term(field="churned", value="true"))
    assert stub.Relate(pb.RelateRequest(universe="customers", condition=churned, limit=3), timeout=30,
                       metadata=bearer(QUERY_TOKEN)).hits
    err = _fails(_score, stub, bearer(QUERY_TOKEN))
    code, message, _, info = rpc_details(err)
    assert code == grpc.StatusCode.PERMISSION_DENIED and info.reason == "PERMISSION_DENIED"
    assert "'dashboard' lacks scope 'export'" in message
    err = _fails(lambda: list(stub.ExportMembers(pb.ExportMembersRequest(), timeout=10,
                                                 metadata=bearer(QUERY_TOKEN))))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # export scope only (configured by its SHA-256): ScoreSegment yes, Count no (export does not imply query)
    assert _score(stub, bearer(EXPORT_TOKEN))[-1].summary.returned_count == 3
    assert _fails(stub.Count, count, timeout=10, metadata=bearer(EXPORT_TOKEN)).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    # both scopes: everything; ExportMembers gets past authentication to the method itself
    assert stub.Count(count, timeout=10, metadata=bearer(BOTH_TOKEN)).row_count == 3000
    assert _score(stub, bearer(BOTH_TOKEN))[-1].summary.returned_count == 3
    err = _fails(lambda: list(stub.ExportMembers(pb.ExportMembersRequest(), timeout=10,
                                                 metadata=bearer(BOTH_TOKEN))))
    assert err.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_reading_a_customer_by_id_needs_the_rows_scope(authed, rpc_details):
    """Predict by `id` answers with the customer's features (its evidence) and Assign by `ids` with
    memberships: per-row data, scope `rows`; the same methods without ids need `query` only."""
    stub = authed.stub
    by_id = pb.PredictRequest(universe="customers", target_field="churned", id="CUST-00001")
    by_evidence = pb.PredictRequest(universe="customers", target_field="churned",
                                    evidence=[c.Term(field="region", value="helsinki")])
    assign_ids = pb.AssignRequest(universe="customers", ids=["CUST-00001"])
    assign_features = pb.AssignRequest(universe="customers", features=[c.Term(field="region", value="helsinki")])
    for request, method, field in ((by_id, stub.Predict, "id"), (assign_ids, stub.Assign, "ids")):
        for token in (QUERY_TOKEN, BOTH_TOKEN):
            code, message, _, info = rpc_details(_fails(method, request, timeout=30, metadata=bearer(token)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and info.reason == "PERMISSION_DENIED"
            assert "lacks scope 'rows'" in message and f"`{field}`" in message, message
        # a token with rows but not query: query is what it lacks
        code, message, _, _ = rpc_details(_fails(method, request, timeout=30, metadata=bearer(ROWS_ONLY_TOKEN)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "lacks scope 'query'" in message, message
    # query alone: Predict from evidence, Assign of a new customer's features
    assert stub.Predict(by_evidence, timeout=30, metadata=bearer(QUERY_TOKEN)).probabilities
    assert stub.Assign(assign_features, timeout=30, metadata=bearer(QUERY_TOKEN)).assignments[0].found
    # query and rows: by id too
    answer = stub.Predict(by_id, timeout=30, metadata=bearer(ROWS_TOKEN))
    assert answer.probabilities and answer.evidence
    assert stub.Assign(assign_ids, timeout=30, metadata=bearer(ROWS_TOKEN)).assignments[0].found
    # Predict by id and Assign by ids of a server without tokens: unchanged (everything is open)


def test_health_and_reflection_need_no_token(authed):
    health = health_pb2_grpc.HealthStub(authed.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(authed.channel)
    answer = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10))
    assert "segsrv.v1.SegmentationService" in {s.name for s in answer[0].list_services_response.service}


def test_auth_errors_carry_the_request_id(authed):
    err = _fails(authed.stub.Count, pb.CountRequest(universe="customers"), timeout=10,
                 metadata=(("x-request-id", "client-chosen-id"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(err.trailing_metadata())["x-request-id"] == "client-chosen-id"


def test_a_json_tokens_file_works_the_same(petnord_root, start_server, tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"name": "a", "token": QUERY_TOKEN, "scopes": ["query"]}]}))
    r = start_server(petnord_root, tokens=path)
    assert r.stub.Count(pb.CountRequest(universe="customers"), timeout=10, metadata=bearer(QUERY_TOKEN)).row_count
    assert _fails(r.stub.Count, pb.CountRequest(universe="customers"), timeout=10).code() == \
        grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("content, message", [
    ('{"tokens": []}', "non-empty list 'tokens'"),
    ('{"tokens": [{"name": "a", "token": "short", "scopes": ["query"]}]}', "at least 16 characters"),
    ('{"tokens": [{"name": "a", "token": "%s", "scopes": ["admin"]}]}' % QUERY_TOKEN, "unknown scopes ['admin']"),
    ('{"tokens": [{"name": "a", "token": "%s", "scopes": []}]}' % QUERY_TOKEN, "'scopes' must be a non-empty list"),
    ('{"tokens": [{"name": "a", "token": "%s", "sha256": "00", "scopes": ["query"]}]}' % QUERY_TOKEN,
     "exactly one of 'token' and 'sha256'"),
    ('{"tokens": [{"name": "a", "sha256": "zz", "scopes": ["query"]}]}', "64 hex digits"),
    ('{"tokens": [{"name": "a", "token": "%s", "scopes": ["query"]}, {"name": "b", "token": "%s", '
     '"scopes": ["export"]}]}' % (QUERY_TOKEN, QUERY_TOKEN), "are the same"),
    ('{"tokens": [{"name": "a", "token": "%s", "scopes": ["query"], "role": "x"}]}' % QUERY_TOKEN, "unknown keys"),
    ("tokens = [", "not valid JSON"),
])
def test_bad_tokens_files_are_refused(tmp_path, content, message):
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TokenStore.load(path)


def test_missing_tokens_file_is_an_error(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenStore.load(tmp_path / "none.toml")


# -- names from requests never become paths ------------------------------------------------------


@pytest.mark.parametrize("selector, field", [
    (pb.SnapshotSelector(name="../petnord"), "snapshot.name"),
    (pb.SnapshotSelector(name="petnord/.."), "snapshot.name"),
    (pb.SnapshotSelector(name="/etc"), "snapshot.name"),
    (pb.SnapshotSelector(name=".."), "snapshot.name"),
    (pb.SnapshotSelector(name="pet\x00nord"), "snapshot.name"),
    (pb.SnapshotSelector(name="petnord", version="../../etc/passwd"), "snapshot.version"),
    (pb.SnapshotSelector(name="petnord", version=".."), "snapshot.version"),
    (pb.SnapshotSelector(name="petnord", version="a\\b"), "snapshot.version"),
    (pb.SnapshotSelector(name="petnord", version="x" * 300), "snapshot.version"),
])
def test_snapshot_names_and_versions_that_are_not_plain_names_are_invalid(stub, rpc_details, selector, field):
    err = _fails(stub.Count, pb.CountRequest(snapshot=selector, universe="customers",
                                             condition=c.Condition(term=c.Term(field="churned", value="true"))),
                 timeout=10)
    code, message, violations, info = rpc_details(err)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "INVALID_REQUEST"
    assert [f for f, _ in violations] == [field] and "plain name" in message
