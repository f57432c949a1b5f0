"""`segsrv serve` over a sharded snapshot (ROOT/NAME holding SHARDS) next to an ordinary one: the same answers
over gRPC, hot reload of a new build as one version (never a mix), refused broken builds, --workers and tokens.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import xxhash

from segsrv.client import SegsrvClient, SegsrvRpcError
from segsrv.errors import SnapshotWithdrawnError
from segsrv.engine.sharded import sharded_version
from segsrv.ops import RelateQuery
from segsrv.ops.base import Selector
from segsrv.server.registry import SnapshotRegistry
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.shardbuild import build_shards
from segsrv.snapshot.shards import SHARDS, read_shard_manifest, write_shard_manifest
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc
from support import CUSTOMER_CONDITIONS, Pki, ServeProcess, assert_same_answers, every_method_answers, quiet

N_SHARDS = 3
SMALL = {"tenure_months": {"$lt": 6}, "churned": True, "region": "oulu", "lifestyle": "premium"}  # under 10 rows

COUNTS = [{"from": "customers", "where": where} for where in CUSTOMER_CONDITIONS.values()] + [
    {"from": "orders", "where": {"line_categories": ["cat_dryfood", "cat_treats"], "customer.churned": True}},
    {"from": "order_lines", "where": {"product.category": "dry-food", "order.customer.lifestyle": {"$ne": "premium"}}},
    {"from": "impressions", "where": {"surface": "for_you", "clicked": True}},
    {"from": "customers", "where": SMALL},  # suppressed by the server's default floor of 10
]
RELATES = [
    {"from": "customers", "where": {"churned": True}},
    {"from": "customers", "where": CUSTOMER_CONDITIONS["exists_link"], "order_by": "p_value", "direction": "all",
     "limit": 40, "q_values": True},
    {"from": "orders", "where": {"customer.churned": True}, "relate": ["line_categories", "month", "total_eur"],
     "order_by": "q_value", "direction": "all"},
    {"from": "impressions", "where": {"clicked": True}, "relate": ["product.*", "surface"]},
    {"from": "customers", "where": SMALL},
]
# what differs between a sharded build and an unsharded one with the same answers (docs/scale.md)
BUILD_KEYS = ("snapshot", "version", "elapsed_ms", "plan", "n_candidates")


def same_answer(kind: str, sharded: dict, whole: dict) -> None:
    """Counts bit for bit, statistics to 1e-12, hits in the same order."""
    strip = lambda d: {k: v for k, v in d.items() if k not in BUILD_KEYS}  # noqa: E731
    sharded, whole = strip(sharded), strip(whole)
    if kind == "relate":
        hits_s, hits_w = sharded.pop("hits"), whole.pop("hits")
        assert [(h["$field"], h["$value"]) for h in hits_s] == [(h["$field"], h["$value"]) for h in hits_w]
        for hs, hw in zip(hits_s, hits_w):
            assert set(hs) == set(hw)
            for key, value in hw.items():
                assert hs[key] == (pytest.approx(value, rel=1e-12, abs=1e-300) if isinstance(value, float)
                                   else value), key
    assert sharded == whole


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, petnord_spec) -> Path:
    """ROOT with petnord built as 3 shards (ROOT/petnord/SHARDS) and the same data unsharded as petnord_whole."""
    root = tmp_path_factory.mktemp("serve_sharded")
    build_shards(replace(petnord_spec, shard_entity="customers"), root, N_SHARDS, progress=quiet)
    build_snapshot(replace(petnord_spec, name="petnord_whole"), root, progress=quiet)
    return root


@pytest.fixture(scope="module")
def server(side_by_side, tmp_path_factory):
    sup = ServeProcess(side_by_side, tmp_path_factory.mktemp("log") / "serve.log")  # privacy floor: default 10
    yield sup
    sup.close()


def test_count_and_relate_over_grpc_equal_the_unsharded_answers(server):
    with SegsrvClient(server.address, snapshot="petnord", timeout=30) as sharded, \
            SegsrvClient(server.address, snapshot="petnord_whole", timeout=30) as whole:
        for query in COUNTS:
            answer = sharded.count(query)
            same_answer("count", answer, whole.count(query))
            assert answer["snapshot"] == "petnord" and answer["version"].startswith("shards-")
        assert sharded.count({"from": "customers", "where": SMALL})["suppressed"]  # the floor applies
        for query in RELATES:
            same_answer("relate", sharded.relate(query), whole.relate(query))


def test_raw_stubs_get_the_same_answers_and_may_name_the_sharded_version(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
        answers = {}
        for name in ("petnord", "petnord_whole"):
            counts = [stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name=name), universe=universe),
                                 timeout=30) for universe in ("customers", "orders", "order_lines", "impressions")]
            relates = [stub.Relate(RelateQuery.from_json(query).to_proto(Selector(name)), timeout=30)
                       for query in RELATES]
            answers[name] = ([(c.count, c.row_count, c.suppressed) for c in counts],
                             [(r.row_count, r.condition_count, r.matching_count,
                               [(h.field, h.value, h.support) for h in r.hits]) for r in relates])
            versions = {c.info.snapshot_version for c in counts} | {r.info.snapshot_version for r in relates}
            assert len(versions) == 1
            answers[name] += (versions.pop(),)
        assert answers["petnord"][:2] == answers["petnord_whole"][:2]
        assert answers["petnord"][0][0] == (3000, 3000, False)
        version = answers["petnord"][2]
        assert version.startswith("shards-")
        pinned = stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name="petnord", version=version),
                                            universe="orders"), timeout=30)
        assert pinned.count == 12215 and pinned.info.snapshot_version == version
        with pytest.raises(grpc.RpcError) as err:
            stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name="petnord", version="shards-0000000000000000"),
                                       universe="orders"), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_every_method_answers_as_the_unsharded_build(server):
    """One request of each method (Profile, Predict, ScoreSegment, Evaluate, Discover, Info, ListSegments,
    Assign, ExportMembers ranked and not, Count, Relate) over gRPC: the sharded build answers as the
    unsharded one, at the server's privacy floor."""
    with SegsrvClient(server.address, timeout=120, snapshot="petnord") as sharded, \
            SegsrvClient(server.address, timeout=120, snapshot="petnord_whole") as whole:
        assert_same_answers(every_method_answers(sharded), every_method_answers(whole))


def test_the_server_logs_and_describes_the_sharded_build_with_its_shard_count(server, side_by_side):
    loaded = {r["snapshot"]: r for r in server.records() if r.get("event") == "snapshot_loaded"}
    assert loaded["petnord"]["shards"] == N_SHARDS and "shards" not in loaded["petnord_whole"]
    warmed = [r for r in server.records() if r.get("event") == "snapshot_warmed" and r["snapshot"] == "petnord"]
    assert warmed  # the merged universes were found before the build was served
    registry = SnapshotRegistry(side_by_side)
    rows = {row["name"]: row for row in registry.describe()}
    assert rows["petnord"]["shards"] == N_SHARDS and rows["petnord_whole"]["shards"] is None
    assert rows["petnord"]["version"] == read_version(side_by_side / "petnord")


def read_version(snapshot_dir: Path) -> str:
    return sharded_version(read_shard_manifest(snapshot_dir))


# -- hot reload ------------------------------------------------------------------------------------


def write_customers(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(rows, f)


class _Caller:
    """A client thread calling Count and Relate in a loop; records (query index, answer) per call."""

    QUERIES = [("count", {"from": "customers", "where": {"churned": True}}),
               ("count", {"from": "orders", "where": {"customer.churned": True}}),
               ("relate", {"from": "customers", "where": {"churned": True}, "limit": 20})]

    def __init__(self, address: str):
        self.client = SegsrvClient(address, timeout=30)
        self.answers: list[tuple[int, dict]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            kind, query = self.QUERIES[i % len(self.QUERIES)]
            try:
                self.answers.append((i % len(self.QUERIES), getattr(self.client, kind)(query)))
            except SegsrvRpcError as exc:
                self.errors.append(str(exc))
            i += 1

    def join(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.client.close()


def expected_answers(address: str, version: str) -> list[dict]:
    with SegsrvClient(address, timeout=30, snapshot="petnord", version=version) as client:
        return [getattr(client, kind)(query) for kind, query in _Caller.QUERIES]


def test_hot_reload_swaps_every_shard_together_and_refuses_broken_builds(petnord_spec, tmp_path):
    customers = json.loads(gzip.open(petnord_spec.tables["customers"].file, "rt", encoding="utf-8").read())
    data = tmp_path / "customers.json.gz"
    write_customers(data, customers)
    spec = replace(petnord_spec, shard_entity="customers",
                   tables={**petnord_spec.tables, "customers": replace(petnord_spec.tables["customers"], file=data)})
    root = tmp_path / "root"
    build_shards(spec, root, N_SHARDS, progress=quiet)
    first = read_shard_manifest(root / "petnord")
    sup = ServeProcess(root, tmp_path / "serve.log", "--reload-interval", "0.2", "--keep-versions", "1")
    try:
        old_version = read_version(root / "petnord")
        old = expected_answers(sup.address, old_version)
        caller = _Caller(sup.address)
        while len(caller.answers) < 10:
            time.sleep(0.05)
        # two customers churn: their shards change, the feature dictionary does not
        changed = [c for c in customers if not c["churned"]][:2]
        for c in changed:
            c["churned"] = True
        write_customers(data, customers)
        build_shards(spec, root, N_SHARDS, progress=quiet)
        second = read_shard_manifest(root / "petnord")
        moved = {i for i in range(N_SHARDS) if first["shards"][i]["version"] != second["shards"][i]["version"]}
        assert moved == {xxhash.xxh3_64_intdigest(c["customer_id"].encode()) % N_SHARDS for c in changed}
        assert len(moved) < N_SHARDS  # some shards were reused: the swap still takes all of them together
        new_version = read_version(root / "petnord")
        sup.wait_for_line(rf'"event": "snapshot_swapped".*"version": "{new_version}"', timeout=60)
        n_before = len(caller.answers)
        while len(caller.answers) < n_before + 10:
            time.sleep(0.05)
        caller.join()
        new = expected_answers(sup.address, new_version)  # the old version is retired but still pinnable
        assert old[0]["count"] + 2 == new[0]["count"]
        assert caller.errors == []
        by_version = {old_version: old, new_version: new}
        versions = [answer["version"] for _, answer in caller.answers]
        assert set(versions) == {old_version, new_version}
        assert versions == sorted(versions, key=[old_version, new_version].index)  # swapped once, for good
        for i, answer in caller.answers:  # each answer is wholly the old build's or wholly the new one's
            kind = _Caller.QUERIES[i][0]
            same_answer(kind, answer, by_version[answer["version"]][i])

        # a broken build: SHARDS names a version of a changed shard that its CURRENT does not name
        index = min(moved)
        broken = json.loads(json.dumps(second))
        broken["shards"][index] = first["shards"][index]
        write_shard_manifest(root / "petnord", broken)
        sup.wait_for_line(r'"event": "reload_refused".*CURRENT names version', timeout=60)
        # a corrupt shard: the first build again, one byte of a shard's data flipped
        vdir = root / "petnord" / first["shards"][index]["dir"] / first["shards"][index]["version"]
        victim = max(vdir.rglob("*.bin"), key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        changed_copy = victim.with_name(victim.name + ".tmp")
        changed_copy.write_bytes(bytes(raw))
        os.replace(changed_copy, victim)  # a new file: the retired build still maps the old one
        (root / "petnord" / first["shards"][index]["dir"] / "CURRENT").write_text(first["shards"][index]["version"])
        write_shard_manifest(root / "petnord", first)
        sup.wait_for_line(rf'"event": "reload_refused".*"version": "{old_version}"', timeout=60)
        with SegsrvClient(sup.address, timeout=30) as client:  # the new build keeps answering
            for (kind, query), expected in zip(_Caller.QUERIES, new):
                answer = getattr(client, kind)(query)
                assert answer["version"] == new_version
                same_answer(kind, answer, expected)
        refused = [r for r in sup.records() if r.get("event") == "reload_refused"]
        assert len(refused) == 2 and {r["snapshot"] for r in refused} == {"petnord"}
    finally:
        sup.close()


def test_a_refused_build_counts_as_a_failed_load_and_the_old_build_stays(side_by_side, tmp_path, petnord_spec):
    root = tmp_path / "root"
    build_shards(replace(petnord_spec, shard_entity="customers"), root, 2, progress=quiet)
    registry = SnapshotRegistry(root, verify="sizes", reload_verify="sizes")
    served = registry.resolve("petnord").version
    good = (root / "petnord" / SHARDS).read_bytes()
    (root / "petnord" / SHARDS).write_bytes(b"{not json")
    assert registry.refresh() == []
    assert registry.load_counts() == {("petnord", "success"): 1, ("petnord", "failure"): 1}
    assert "SHARDS" in registry.last_error["petnord"]
    assert registry.resolve("petnord").version == served
    tmp = root / "petnord" / "SHARDS.tmp"  # the good manifest again, in a new file: the same build, no reload
    tmp.write_bytes(good)
    tmp.replace(root / "petnord" / SHARDS)
    assert registry.refresh() == [] and registry.load_counts()[("petnord", "success")] == 1


def test_a_shard_file_changed_on_disk_withdraws_the_build_and_metrics_show_the_shards(tmp_path, petnord_spec):
    from segsrv.server.metrics import Metrics

    root = tmp_path / "root"
    build_shards(replace(petnord_spec, shard_entity="customers"), root, 2, progress=quiet)
    registry = SnapshotRegistry(root)
    version = registry.resolve("petnord").version
    text = Metrics(registry, process_metrics=False).exposition().decode()
    assert f'segsrv_snapshot_shards{{snapshot="petnord",version="{version}"}} 2.0' in text
    assert registry.scrub() == []
    manifest = read_shard_manifest(root / "petnord")
    path = max((root / "petnord" / "shard-001" / manifest["shards"][1]["version"]).rglob("*.bin"),
               key=lambda p: p.stat().st_size)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # written in place: the served map sees it
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert registry.scrub() == [f"petnord@{version}"]
    with pytest.raises(SnapshotWithdrawnError, match="changed on disk"):
        registry.resolve()


# -- workers and tokens ----------------------------------------------------------------------------


def test_two_workers_with_tokens_serve_the_sharded_build(side_by_side, tmp_path):
    token = "sharded-test-token-0123456789"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "dashboard"\ntoken = "{token}"\nscopes = ["query"]\n')
    sup = ServeProcess(side_by_side, tmp_path / "serve.log", "--workers", "2", "--tokens", str(tokens), "--no-warm")
    try:
        assert sorted(sup.worker_pids()) == [0, 1]
        metadata = (("authorization", f"Bearer {token}"),)
        request = RelateQuery.from_json(RELATES[1])
        expected = None
        for _ in range(8):  # fresh connections: the kernel spreads them over both workers
            with grpc.insecure_channel(sup.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
                with pytest.raises(grpc.RpcError) as err:
                    stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name="petnord")), timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                answer = [(h.field, h.value, h.support) for h in
                          stub.Relate(request.to_proto(Selector("petnord")), timeout=30, metadata=metadata).hits]
                whole = [(h.field, h.value, h.support) for h in
                         stub.Relate(request.to_proto(Selector("petnord_whole")), timeout=30, metadata=metadata).hits]
                assert answer == whole and answer
                expected = expected or answer
                assert answer == expected
        served_by = {r.get("pid") for r in sup.records() if r.get("event") == "rpc"}
        assert len(served_by) == 2
    finally:
        sup.close()


def test_tls_serves_the_sharded_build(side_by_side, start_server, tmp_path):
    pki = Pki(tmp_path)
    r = start_server(side_by_side, tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"), warm=False)
    with pki.channel(r.address) as channel:
        stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
        counts = {name: stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(name=name), universe="orders",
                                                   condition=RelateQuery.from_json(RELATES[2]).to_proto().condition),
                                   timeout=30) for name in ("petnord", "petnord_whole")}
    assert counts["petnord"].count == counts["petnord_whole"].count > 0
    assert counts["petnord"].info.snapshot_version.startswith("shards-")
