"""`segsrv serve-ray`: a 4-shard PetNord served through the Ray Serve router over gRPC answers as `segsrv serve`
answers for the unsharded PetNord; a killed shard replica is replaced; a new build is swapped in whole."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_status import rpc_status
import ray
from ray import cloudpickle, serve

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.engine.sharded import ids_part, open_shard, open_sharded, sharded_version
from segsrv.engine import cancel
from segsrv.errors import RequestCancelled, SegsrvError, ShardUnavailableError
from segsrv.ops import CountQuery, RelateQuery
from segsrv.ray.serve import APP_NAME, RayShardedSnapshot, deploy, wait_for_replicas
from segsrv.server.app import create_server
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.shards import read_shard_manifest
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc as pb_grpc
from support import (
    CUSTOMER_CONDITIONS, assert_same_answers, assert_same_relate, every_method_answers, free_port, quiet, repo_env,
)

PER_REPLICA = 2  # shards per shard-replica deployment: shards-0 holds shards 0 and 1, shards-1 shards 2 and 3
PRIVACY_K = 10  # segsrv serve's default, on both sides
STARTUP_SECONDS = 240  # Ray Serve on 2 shared cores starts slowly; bounded all the same

COUNTS = [("customers", where) for where in CUSTOMER_CONDITIONS.values()] + [
    ("orders", {"customer.churned": True}),
    ("order_lines", {"product.category": "dry-food", "order.customer.lifestyle": {"$ne": "premium"}}),
    ("impressions", {"surface": "for_you", "clicked": True}),
    # a handful of rows: suppressed by the privacy floor
    ("customers", {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}),
]
RELATES = [
    {"from": "customers", "where": {"churned": True}},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["not_tree"], "order_by": "support", "direction": "under",
     "q_values": True, "limit": 50},
    {"from": "orders", "where": {"customer.churned": True}, "relate": ["line_categories", "month", "total_eur"],
     "order_by": "q_value", "direction": "all"},
    {"from": "order_lines", "where": {"returned": True}, "include_condition_fields": True, "order_by": "n_feature"},
]


@pytest.fixture(scope="module")
def served_root(petnord_sharded4, tmp_path_factory):
    """A copy of the 4-shard build (the hot-reload test rebuilds it)."""
    root = tmp_path_factory.mktemp("ray_served")
    shutil.copytree(petnord_sharded4, root / "petnord")
    return root


def test_cli_serve_ray_serves_until_sigterm(ray_instance, served_root, whole, tmp_path):
    """`segsrv serve-ray` joins the running instance (first in this module: Serve is not started yet)."""
    port = free_port()
    log = tmp_path / "serve-ray.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "segsrv", "serve-ray", "--snapshots", str(served_root), "--shards-per-replica",
             str(PER_REPLICA), "--port", str(port), "--address", ray_instance.get_runtime_context().gcs_address,
             "--replica-cpus", "0"], stderr=err, env=repo_env())
    try:
        t0 = time.monotonic()
        while f"serving petnord over gRPC on port {port}" not in log.read_text():
            assert proc.poll() is None and time.monotonic() - t0 < STARTUP_SECONDS, log.read_text()[-3000:]
            time.sleep(0.5)
        with SegsrvClient(f"127.0.0.1:{port}", timeout=STARTUP_SECONDS) as client:
            assert_same_counts(client, whole)
        # Serve keeps the options it started with: a second serve-ray on another port is refused
        with pytest.raises(SegsrvError, match=f"already runs on this cluster with its gRPC proxy on port {port}"):
            deploy(str(served_root), shards_per_replica=PER_REPLICA, port=free_port(), replica_cpus=0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STARTUP_SECONDS) == 0
        assert "[serve-ray] stopped" in log.read_text()
        assert APP_NAME not in serve.status().applications  # the application is removed
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.shutdown()  # the router fixture starts Serve with its own port


@pytest.fixture(scope="module")
def router(ray_instance, served_root):
    port = free_port()
    deploy(str(served_root), shards_per_replica=PER_REPLICA, replicas=1, port=port,
           service_options={"privacy_k": PRIVACY_K}, replica_cpus=0, reload_interval=0.5)
    wait_for_replicas(STARTUP_SECONDS)
    with SegsrvClient(f"127.0.0.1:{port}", timeout=60) as client:
        client.count({"from": "customers"}, timeout=STARTUP_SECONDS)  # every shard group opened its shards
        yield SimpleNamespace(address=f"127.0.0.1:{port}", port=port, client=client)
    serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def whole(petnord_root):
    """`segsrv serve` over the unsharded PetNord (the same server, in this process)."""
    server, port = create_server(petnord_root, port=0, privacy_k=PRIVACY_K)
    server.start()
    with SegsrvClient(f"127.0.0.1:{port}", timeout=60) as client:
        yield client
    server.stop(0).wait()


def _count(client, universe, where):
    return client.call(CountQuery.from_json({"from": universe, "where": where}))


def assert_same_counts(router_client, whole) -> None:
    for universe, where in COUNTS:
        got, want = _count(router_client, universe, where), _count(whole, universe, where)
        assert (got.universe, got.n_rows, got.count, got.suppressed) == \
            (want.universe, want.n_rows, want.count, want.suppressed), (universe, where)


def test_count_and_relate_equal_segsrv_serve(router, whole, served_root):
    assert_same_counts(router.client, whole)
    assert _count(router.client, *COUNTS[-1]).suppressed  # the floor is exercised
    for obj in RELATES:
        got, want = router.client.call(RelateQuery.from_json(obj)), whole.call(RelateQuery.from_json(obj))
        assert got.hits
        assert_same_relate(got, want)
    answer = router.client.count({"from": "customers", "where": {"churned": True}})
    assert answer["snapshot"] == "petnord"
    assert answer["version"] == sharded_version(read_shard_manifest(served_root / "petnord"))


def test_every_method_equals_segsrv_serve(router, served_root):
    """One request of every method (Profile, Predict, ScoreSegment, Evaluate, Discover, Info, ListSegments,
    Assign, ExportMembers ranked and not, Count, Relate) through the router equals `segsrv serve`'s answer
    for the same sharded build (which equals the unsharded build's: tests/server/test_serve_sharded.py)."""
    server, port = create_server(served_root, port=0, privacy_k=PRIVACY_K)
    server.start()
    try:
        with SegsrvClient(f"127.0.0.1:{port}", timeout=STARTUP_SECONDS) as served, \
                SegsrvClient(router.address, timeout=STARTUP_SECONDS) as routed:
            assert_same_answers(every_method_answers(routed), every_method_answers(served))
    finally:
        server.stop(0).wait()


def _error(call) -> SegsrvRpcError:
    with pytest.raises(SegsrvRpcError) as info:
        call()
    return info.value


def test_errors_are_segsrv_serves(router, whole):
    """The same status, message and field violations (google.rpc.BadRequest travels in Ray Serve's trailers)."""
    for query in [{"from": "customers", "where": {"churnd": True}}, {"from": "clients"},
                  {"from": "customers", "where": {"region": "lapland"}}]:
        got, want = _error(lambda: router.client.count(query)), _error(lambda: whole.count(query))
        assert (got.code, got.message, got.violations) == (want.code, want.message, want.violations)
        assert got.code == grpc.StatusCode.INVALID_ARGUMENT and got.violations
    got = _error(lambda: SegsrvClient(router.address, snapshot="nope").count({"from": "customers"}))
    assert got.code == grpc.StatusCode.NOT_FOUND and got.violations[0][0] == "snapshot.name"
    got = _error(lambda: SegsrvClient(router.address, version="v0").count({"from": "customers"}))
    assert got.code == grpc.StatusCode.FAILED_PRECONDITION and got.violations[0][0] == "snapshot.version"


def test_the_callers_deadline_is_honoured(router):
    got = _error(lambda: router.client.relate({"from": "customers", "where": {"churned": True}}, timeout=0.001))
    assert got.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert router.client.count({"from": "customers"})["n_rows"] == 3000  # the router is not stuck


def _replica_actor(group: int):
    """The (one) Ray actor of shard-replica deployment shards-GROUP."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#shards-{group}#")]
    assert len(names) == 1, names
    return names[0], ray.get_actor(names[0], namespace="serve")


def _slow_part(shard, seconds: float) -> str:
    time.sleep(seconds)
    return shard.version


def _fan_out(served_root, shard_count) -> RayShardedSnapshot:
    """The router's view of the served build, here: its map fans out to the shard replicas from this process."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _slow_part is this module's: sent by value
    location = served_root / "petnord"
    manifest = read_shard_manifest(location)
    schema = open_shard(location, manifest["shards"][0], manifest["dictionary_sha256"])
    groups = [serve.get_deployment_handle(f"shards-{g}", APP_NAME) for g in range(shard_count // PER_REPLICA)]
    sharded = RayShardedSnapshot(location, manifest, schema, groups, PER_REPLICA)
    assert sharded.map(_slow_part, 0.0) == [e["version"] for e in manifest["shards"]]
    return sharded


def test_a_caller_gone_stops_the_fan_out(router, served_root, shard_count):
    """The router waits for shard answers checking its caller (what Ray Serve's cancellation sets, or a
    deadline): once the check raises, map raises within a poll and leaves the shard calls."""
    sharded = _fan_out(served_root, shard_count)
    t0 = time.monotonic()

    def caller_gone():
        if time.monotonic() - t0 > 1.0:
            raise RequestCancelled("the call was cancelled or its deadline passed")

    with cancel.checking(caller_gone), pytest.raises(RequestCancelled):
        sharded.map(_slow_part, 15.0)
    assert time.monotonic() - t0 < 10  # not the 15 s the shards would take


def test_a_call_in_flight_on_a_dying_replica_gets_unavailable(router, served_root, shard_count):
    """The router's fan-out run from here: the replica dies while it answers."""
    sharded = _fan_out(served_root, shard_count)
    outcome: dict = {}

    def fan_out():
        try:
            outcome["answer"] = sharded.map(_slow_part, 20.0, shards=[1])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    caller = threading.Thread(target=fan_out)
    caller.start()
    time.sleep(3.0)  # the call is on shards-0's replica, sleeping
    name, actor = _replica_actor(0)
    ray.kill(actor, no_restart=True)
    caller.join(60)
    assert not caller.is_alive()
    assert isinstance(outcome.get("error"), ShardUnavailableError), outcome
    assert "shard 1 of petnord: the replica died" in str(outcome["error"])
    _wait_for_a_new_replica(0, name)


def _wait_for_a_new_replica(group: int, old_name: str) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < STARTUP_SECONDS:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#shards-{group}#") and a["name"] != old_name]
        if names:
            wait_for_replicas(STARTUP_SECONDS)
            return names[0]
        time.sleep(0.5)
    raise AssertionError(f"shards-{group}'s replica was not replaced within {STARTUP_SECONDS} s")


def test_a_killed_shard_replica_is_replaced_and_later_calls_succeed(router, whole):
    name, actor = _replica_actor(1)
    old_pid = serve.get_deployment_handle("shards-1", APP_NAME).pid.remote().result()
    ray.kill(actor, no_restart=True)
    # calls right after the death: each answers (Ray Serve holds a call until a live replica takes it: observed,
    # after the replacement) or fails UNAVAILABLE (then the clients retry), nothing else
    codes = []
    with SegsrvClient(router.address, timeout=30, retry=False) as once:
        for _ in range(5):
            try:
                once.count({"from": "customers"})
                codes.append("OK")
            except SegsrvRpcError as exc:
                codes.append(exc.code.name)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    _wait_for_a_new_replica(1, name)
    assert serve.get_deployment_handle("shards-1", APP_NAME).pid.remote().result() != old_pid
    with SegsrvClient(router.address, timeout=STARTUP_SECONDS) as retrying:  # UNAVAILABLE is retried
        assert_same_counts(retrying, whole)


def test_map_each_answers_as_in_process_in_one_round(router, served_root, shard_count):
    """`map_each` through the shard replicas: each shard its own arguments, the answers in the order asked,
    as the in-process `map_each` answers (and `map` as `map`); the groups' calls of a round run in parallel."""
    routed = _fan_out(served_root, shard_count)
    local = open_sharded(served_root / "petnord")
    asked = {3: ("customers", np.array([0, 5], np.uint32)), 0: ("customers", np.array([1], np.uint32)),
             2: ("customers", np.arange(4, dtype=np.uint32)), 1: ("customers", np.zeros(0, np.uint32))}
    got = routed.map_each(ids_part, asked)
    assert got == local.map_each(ids_part, asked) and [len(ids) for ids in got] == [2, 1, 4, 0]
    assert routed.map(ids_part, "customers", np.array([7], np.uint32), shards=[2, 1]) == \
        local.map(ids_part, "customers", np.array([7], np.uint32), shards=[2, 1])
    versions = [e["version"] for e in read_shard_manifest(served_root / "petnord")["shards"]]
    t0 = time.monotonic()
    assert routed.map_each(_slow_part, {2: (3.0,), 0: (3.0,)}) == [versions[2], versions[0]]  # shards-1, shards-0
    assert time.monotonic() - t0 < 5.5  # the two groups at once: not one after the other (6 s)


def test_hot_reload_swaps_a_new_build_in_whole(router, whole, served_root, petnord_spec):
    before = router.client.count({"from": "customers"})["version"]
    # a new build of the same data with 3 shards: every shard's version changes, and so does the count of shards
    build_shards(replace(petnord_spec, shard_entity="customers"), served_root, 3, progress=quiet)
    new = sharded_version(read_shard_manifest(served_root / "petnord"))
    assert new != before
    t0 = time.monotonic()
    versions = set()
    while time.monotonic() - t0 < STARTUP_SECONDS:
        answer = router.client.count({"from": "customers", "where": {"churned": True}})
        versions.add(answer["version"])
        assert answer["count"] == _count(whole, "customers", {"churned": True}).count  # never a mixed answer
        if answer["version"] == new:
            break
        time.sleep(0.2)
    assert versions <= {before, new} and new in versions
    assert_same_counts(router.client, whole)
    for obj in RELATES[:2]:
        assert_same_relate(router.client.call(RelateQuery.from_json(obj)), whole.call(RelateQuery.from_json(obj)))
    opened = serve.get_deployment_handle("shards-0", APP_NAME).opened.remote().result()
    assert any(len(versions) == 2 for versions in opened.values())  # the old build's shard, kept for a while


QUERY_TOKEN, EXPORT_TOKEN = "q" * 24, "e" * 24


def test_tokens_as_segsrv_serve(router, served_root, tmp_path):
    """Redeployed with --tokens: the router checks each call's bearer token and scope (last: it redeploys)."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "dash"\ntoken = "{QUERY_TOKEN}"\nscopes = ["query"]\n\n'
                      f'[[tokens]]\nname = "crm"\ntoken = "{EXPORT_TOKEN}"\nscopes = ["export"]\n')
    deploy(str(served_root), shards_per_replica=PER_REPLICA, port=router.port, service_options={"privacy_k": PRIVACY_K},
           tokens=str(tokens), replica_cpus=0, reload_interval=0.5)
    wait_for_replicas(STARTUP_SECONDS)
    with grpc.insecure_channel(router.address) as channel:
        stub = pb_grpc.SegmentationServiceStub(channel)
        count = pb.CountRequest(universe="customers")

        def code(call, *args, token=None):
            try:
                call(*args, timeout=STARTUP_SECONDS, metadata=(("authorization", f"Bearer {token}"),) if token else None)
            except grpc.RpcError as err:
                return err.code(), err
            return grpc.StatusCode.OK, None

        status, err = code(stub.Count, count)
        assert status == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_status.from_call(err).message == "missing credentials: send metadata 'authorization: Bearer <token>'"
        assert code(stub.Count, count, token=QUERY_TOKEN)[0] == grpc.StatusCode.OK
        status, err = code(stub.Count, count, token=EXPORT_TOKEN)
        assert status == grpc.StatusCode.PERMISSION_DENIED and "'crm' lacks scope 'query'" in err.details()

        def export(**kwargs):
            return list(stub.ExportMembers(pb.ExportMembersRequest(universe="customers"), **kwargs))

        status, err = code(export, token=QUERY_TOKEN)  # a stream: the status and message travel, as for unary
        assert status == grpc.StatusCode.PERMISSION_DENIED and "'dash' lacks scope 'export'" in err.details()
        assert code(export, token=EXPORT_TOKEN)[0] not in (grpc.StatusCode.UNAUTHENTICATED,
                                                           grpc.StatusCode.PERMISSION_DENIED)
