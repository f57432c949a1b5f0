"""Hot reload: CURRENT is watched, new versions are verified then swapped under load, bad ones refused.

The versions v00..v10 of a tiny snapshot differ in their answers (version k has 40 + 3k customers
and its own churn pattern), so every response can be checked against the version it names.
"""

from __future__ import annotations

import contextvars
import gc
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsrv.errors import NoSnapshotServedError, VersionNotServedError
from segsrv.server.registry import SnapshotRegistry
from segsrv.snapshot.builder import build_snapshot
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb
from segsrv.v1 import segsrv_pb2_grpc

N_VERSIONS = 11
REGIONS = ("north", "south", "east")
SPEC = """name = "tiny"
[tables.customers]
file = "customers_{k}.csv"
key = "customer_id"
categorical = ["region", "churned"]
[universes.customers]
include = ["*"]
"""


def version_name(k: int) -> str:
    return f"v{k:02d}"


def _customers(k: int) -> list[tuple[int, str, bool]]:
    return [(i, REGIONS[(i + k) % 3], i % (k + 2) == 0) for i in range(40 + 3 * k)]


def expected_answers(k: int) -> dict:
    rows = _customers(k)
    return {"rows": len(rows), "churned": sum(ch for _, _, ch in rows)}


@pytest.fixture(scope="module")
def versions_template(tmp_path_factory) -> Path:
    """ROOT/tiny/v00..v10 built from different data, CURRENT -> v00."""
    src = tmp_path_factory.mktemp("tiny_src")
    root = tmp_path_factory.mktemp("tiny_versions")
    for k in range(N_VERSIONS):
        with open(src / f"customers_{k}.csv", "w") as f:
            f.write("customer_id,region,churned\n")
            for i, region, churned in _customers(k):
                f.write(f"{i},{region},{'true' if churned else 'false'}\n")
        (src / f"spec_{k}.toml").write_text(SPEC.format(k=k))
        build_snapshot(src / f"spec_{k}.toml", root, version=version_name(k), progress=lambda m: None)
    set_current(root, "v00")
    return root


@pytest.fixture
def root(versions_template, tmp_path) -> Path:
    out = tmp_path / "root"
    shutil.copytree(versions_template, out)
    return out


def set_current(root: Path, version: str) -> None:
    """Replace ROOT/tiny/CURRENT atomically (as the builder does)."""
    tmp = root / "tiny" / f".CURRENT.tmp-{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "tiny" / "CURRENT")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def mapped_paths() -> str:
    gc.collect()
    with open("/proc/self/maps") as f:
        return f.read()


def churned() -> c.Condition:
    return c.Condition(term=c.Term(field="churned", value="true"))


def current_version(server) -> str:
    return server.segsrv_registry.snapshots["tiny"].version


# -- reload under load ---------------------------------------------------------------------------


def test_reload_under_sustained_load_swaps_ten_times_without_a_failed_request(root, start_server):
    r = start_server(root, reload_interval=0.05, max_workers=4)
    stop = threading.Event()
    failures: list[str] = []
    answers: list[tuple[str, str, tuple]] = []  # (method, version, answer)
    lock = threading.Lock()

    def client(i: int) -> None:
        with grpc.insecure_channel(r.address) as channel:
            stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 2:
                        got = stub.Count(pb.CountRequest(universe="customers", condition=churned()), timeout=30)
                        item = ("Count", got.info.snapshot_version, (got.row_count, got.count))
                    else:
                        got = stub.Relate(pb.RelateRequest(universe="customers", condition=churned(),
                                                           fields=["region"]), timeout=30)
                        item = ("Relate", got.info.snapshot_version, (got.row_count, got.condition_count))
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                with lock:
                    answers.append(item)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 20, what="first answers")
        for k in range(1, N_VERSIONS):
            set_current(root, version_name(k))
            wait_for(lambda: current_version(r.server) == version_name(k), what=f"swap to {version_name(k)}")
            seen_before = len(answers)
            wait_for(lambda: any(v == version_name(k) for _, v, _ in answers[seen_before:]),
                     what=f"an answer from {version_name(k)}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    by_version = {version_name(k): expected_answers(k) for k in range(N_VERSIONS)}
    for method, version, (rows, matching) in answers:
        want = by_version[version]
        assert (rows, matching) == (want["rows"], want["churned"]), (method, version)
    assert {v for _, v, _ in answers} == set(by_version)
    registry = r.server.segsrv_registry
    wait_for(lambda: registry.load_counts().get(("tiny", "success")) == N_VERSIONS, what="load count")
    # nothing holds the old versions: only the current one is served, the others are unmapped
    assert r.server.segsrv_registry.served_versions("tiny") == ["v10"]
    maps = mapped_paths()
    assert str(root / "tiny" / "v10") in maps
    assert not [k for k in range(N_VERSIONS - 1) if str(root / "tiny" / version_name(k)) + "/" in maps]


class HoldStream(grpc.ServerInterceptor):
    """Test-only: ScoreSegment pauses after its first message until `release` is set."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.endswith("/ScoreSegment"):
            return handler
        inner = handler.unary_stream

        def behavior(request, context):
            for i, message in enumerate(inner(request, context)):
                yield message
                if i == 0:
                    self.entered.set()
                    self.release.wait(30)

        return grpc.unary_stream_rpc_method_handler(behavior, handler.request_deserializer,
                                                    handler.response_serializer)


def test_request_in_flight_finishes_on_its_version_which_stays_pinnable_until_it_ends(root, start_server):
    hold = HoldStream()
    r = start_server(root, reload_interval=0.05, interceptors=[hold])
    stream = r.stub.ScoreSegment(pb.ScoreSegmentRequest(universe="customers", target_field="churned",
                                                        target_value="true", chunk_size=7), timeout=60)
    messages = [next(stream)]
    assert hold.entered.wait(20)
    set_current(root, "v01")
    wait_for(lambda: current_version(r.server) == "v01", what="swap to v01")
    registry = r.server.segsrv_registry
    assert registry.served_versions("tiny") == ["v00", "v01"]
    # the old version still serves a request that pins it, and new requests get the new one
    pinned = r.stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(version="v00"), universe="customers"))
    assert (pinned.info.snapshot_version, pinned.row_count) == ("v00", expected_answers(0)["rows"])
    fresh = r.stub.Count(pb.CountRequest(universe="customers"))
    assert (fresh.info.snapshot_version, fresh.row_count) == ("v01", expected_answers(1)["rows"])
    assert str(root / "tiny" / "v00") + "/" in mapped_paths()
    hold.release.set()
    messages += list(stream)
    assert {m.info.snapshot_version for m in messages} == {"v00"}
    ids = [s.id for m in messages if m.HasField("chunk") for s in m.chunk.scores]
    assert len(ids) == messages[-1].summary.member_count == expected_answers(0)["rows"]
    # the stream ended: nobody holds v00, it is no longer served and its files are unmapped
    wait_for(lambda: registry.served_versions("tiny") == ["v01"], what="v00 released")
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Count(pb.CountRequest(snapshot=pb.SnapshotSelector(version="v00"), universe="customers"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "v00" in err.value.details() and "serving v01" in err.value.details()
    assert str(root / "tiny" / "v00") + "/" not in mapped_paths()


# -- refused versions ----------------------------------------------------------------------------


def _copy_version(root: Path, src: str, dst: str) -> Path:
    """ROOT/tiny/dst: a copy of src whose manifest names dst (a valid version until damaged)."""
    out = root / "tiny" / dst
    shutil.copytree(root / "tiny" / src, out)
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["version"] = dst
    mpath.write_text(json.dumps(manifest))
    return out


def _a_data_file(vdir: Path) -> Path:
    manifest = json.loads((vdir / "manifest.json").read_text())
    rel = max(manifest["files"], key=lambda f: manifest["files"][f]["bytes"])
    return vdir / rel


def _flip_a_byte(path: Path) -> None:
    """Flip the first data byte (after the 64-byte header): same size, valid shapes, wrong checksum."""
    data = bytearray(path.read_bytes())
    data[64] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bad_versions_are_refused_while_the_old_one_keeps_serving(root, start_server, caplog):
    r = start_server(root, reload_interval=0.05)
    registry = r.server.segsrv_registry
    health = health_pb2_grpc.HealthStub(r.channel)
    corrupt = _copy_version(root, "v01", "corrupt")  # same sizes, one byte differs: only checksums see it
    _flip_a_byte(_a_data_file(corrupt))
    truncated = _copy_version(root, "v01", "truncated")
    data = _a_data_file(truncated)
    data.write_bytes(data.read_bytes()[:-8])
    too_new = _copy_version(root, "v01", "too-new")
    manifest = json.loads((too_new / "manifest.json").read_text())
    manifest["format_version"] = 999
    (too_new / "manifest.json").write_text(json.dumps(manifest))
    not_a_snapshot = root / "tiny" / "garbage"
    not_a_snapshot.mkdir()
    (not_a_snapshot / "manifest.json").write_text("{not json")

    cases = [
        ("corrupt", "checksum mismatch"),
        ("truncated", "bytes on disk"),
        ("too-new", "format"),
        ("garbage", "unreadable manifest"),
        ("missing", "does not exist"),
        # CURRENT names one directory of ROOT/tiny: never a path, never outside it
        ("../tiny/v02", "path separator"),
        ("..", "starts with '.'"),
    ]
    failures = 0
    with caplog.at_level(logging.ERROR, logger="segsrv.server"):
        for version, reason in cases:
            caplog.clear()
            set_current(root, version)
            failures += 1
            wait_for(lambda: registry.load_counts().get(("tiny", "failure")) == failures, what=f"refusal of {version}")
            assert reason in registry.last_error["tiny"], (version, registry.last_error["tiny"])
            assert any("refusing version" in rec.getMessage() and reason in rec.getMessage()
                       for rec in caplog.records), version
            got = r.stub.Count(pb.CountRequest(universe="customers"), timeout=10)
            assert (got.info.snapshot_version, got.row_count) == ("v00", expected_answers(0)["rows"])
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
    # a refused version is not tried again while CURRENT stays as it is ...
    time.sleep(0.5)
    assert registry.load_counts().get(("tiny", "failure")) == failures
    # ... but is when CURRENT is replaced again, and a good version then swaps in
    set_current(root, "corrupt")
    wait_for(lambda: registry.load_counts().get(("tiny", "failure")) == failures + 1, what="retry after CURRENT changed")
    set_current(root, "v02")
    wait_for(lambda: current_version(r.server) == "v02", what="swap to v02")
    got = r.stub.Count(pb.CountRequest(universe="customers"), timeout=10)
    assert (got.info.snapshot_version, got.row_count) == ("v02", expected_answers(2)["rows"])
    assert registry.served_versions("tiny") == ["v02"]


def test_every_load_checks_every_byte_the_first_one_too(root):
    """A byte flipped without changing sizes is refused at start-up as on a reload: a version the
    reloader refused is never served by the next process that starts."""
    corrupt = _copy_version(root, "v01", "corrupt")
    _flip_a_byte(_a_data_file(corrupt))
    set_current(root, "corrupt")
    registry = SnapshotRegistry(root)
    assert registry.snapshots == {} and "checksum mismatch" in registry.last_error["tiny"]
    with pytest.raises(NoSnapshotServedError):
        registry.resolve()
    set_current(root, "v02")
    assert registry.refresh() == ["tiny"]
    set_current(root, "corrupt")
    assert registry.refresh() == []
    assert "checksum mismatch" in registry.last_error["tiny"]
    assert registry.snapshots["tiny"].version == "v02"


# -- versions kept, references -------------------------------------------------------------------


def test_keep_versions_keeps_the_last_k_retired_versions_pinnable(root):
    registry = SnapshotRegistry(root, keep_versions=1)
    for k in (1, 2):
        set_current(root, version_name(k))
        assert registry.refresh() == ["tiny"]
    assert registry.served_versions("tiny") == ["v01", "v02"]
    assert registry.resolve("tiny", "v01").version == "v01"
    with pytest.raises(VersionNotServedError, match="version v00 of tiny is not served; serving v02"):
        registry.resolve("tiny", "v00")


def test_a_request_scope_holds_its_version_until_closed(root):
    registry = SnapshotRegistry(root)

    def in_request():
        scope = registry.request_scope()
        snap = registry.resolve()
        return scope, snap

    scope, snap = contextvars.copy_context().run(in_request)
    assert snap.version == "v00" and scope.versions == ["tiny@v00"]
    set_current(root, "v01")
    registry.refresh()
    assert registry.served_versions("tiny") == ["v00", "v01"]
    assert registry.describe()[0] == {**registry.describe()[0], "version": "v00", "state": "retired", "refs": 1}
    scope.close()
    assert registry.served_versions("tiny") == ["v01"]
    scope.close()  # idempotent
    # outside a request scope nothing is counted (the Python reference keeps the maps alive)
    assert registry.resolve().version == "v01" and registry.describe()[0]["refs"] == 0


# -- integrity of what is served (issue 14) -----------------------------------------------------------------


def _count_outcome(stub) -> tuple:
    try:
        got = stub.Count(pb.CountRequest(universe="customers"), timeout=10)
    except grpc.RpcError as exc:
        return (exc.code().name,)
    return (got.info.snapshot_version, got.row_count)


def _health(channel) -> str:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_a_version_refused_on_reload_is_not_served_by_the_next_server_that_starts(root, start_server):
    first = start_server(root, reload_interval=0.05)
    corrupt = _copy_version(root, "v01", "corrupt")
    path = _a_data_file(corrupt)
    header = path.read_bytes()[:64]
    path.write_bytes(header + bytes(path.stat().st_size - 64))  # zeroed bitsets, header and size kept
    set_current(root, "corrupt")
    registry = first.server.segsrv_registry
    wait_for(lambda: registry.load_counts().get(("tiny", "failure")) == 1, what="refusal")
    assert _count_outcome(first.stub) == ("v00", expected_answers(0)["rows"])
    # a server (or a restarted worker) starting now opens CURRENT's version with the same checks
    second = start_server(root, reload_interval=0.05)
    assert _health(second.channel) == "NOT_SERVING"
    assert _count_outcome(second.stub) == ("UNAVAILABLE",)
    assert "checksum mismatch" in second.server.segsrv_registry.last_error["tiny"]
    set_current(root, "v02")
    wait_for(lambda: _count_outcome(second.stub) == ("v02", expected_answers(2)["rows"]), what="v02 served")
    assert _health(second.channel) == "SERVING"


@pytest.mark.parametrize("damage", ["unlisted", "fifo-current", "linked-version", "counts"])
def test_untrusted_manifests_and_current_files_are_refused_while_the_old_version_serves(root, start_server,
                                                                                        tmp_path, damage):
    r = start_server(root, reload_interval=0.05)
    registry = r.server.segsrv_registry
    if damage == "unlisted":  # a manifest that leaves a data file out of its list
        bad = _copy_version(root, "v01", "bad")
        manifest = json.loads((bad / "manifest.json").read_text())
        rel = max(manifest["files"], key=lambda f: manifest["files"][f]["bytes"])
        del manifest["files"][rel]
        (bad / "manifest.json").write_text(json.dumps(manifest))
        (bad / rel).write_bytes(bytes((bad / rel).stat().st_size))
        set_current(root, "bad")
        reason = "does not list"
    elif damage == "fifo-current":
        current = root / "tiny" / "CURRENT"
        current.unlink()
        os.mkfifo(current)
        reason = "not a regular file"
    elif damage == "linked-version":  # ROOT/tiny/bad is a symbolic link out of ROOT
        outside = tmp_path / "outside"
        shutil.copytree(root / "tiny" / "v01", outside)
        manifest = json.loads((outside / "manifest.json").read_text())
        manifest["version"] = "bad"
        (outside / "manifest.json").write_text(json.dumps(manifest))
        (root / "tiny" / "bad").symlink_to(outside)
        set_current(root, "bad")
        reason = "symbolic link"
    else:  # counts in the manifest that disagree with the data
        bad = _copy_version(root, "v01", "bad")
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest["universes"]["customers"]["fields"][0]["counts"][0] += 1
        (bad / "manifest.json").write_text(json.dumps(manifest))
        set_current(root, "bad")
        reason = "manifest disagrees with the data"
    wait_for(lambda: registry.load_counts().get(("tiny", "failure")) == 1, what=f"refusal ({damage})")
    assert reason in registry.last_error["tiny"], registry.last_error
    assert _count_outcome(r.stub) == ("v00", expected_answers(0)["rows"])
    assert _health(r.channel) == "SERVING"
    if damage == "fifo-current":
        (root / "tiny" / "CURRENT").unlink()
    set_current(root, "v02")
    wait_for(lambda: current_version(r.server) == "v02", what="swap to v02")


def test_a_server_starts_and_answers_health_when_current_is_a_fifo(root):
    current = root / "tiny" / "CURRENT"
    current.unlink()
    os.mkfifo(current)
    done = threading.Event()
    out = {}

    def start():
        out["registry"] = SnapshotRegistry(root)
        done.set()

    threading.Thread(target=start, daemon=True).start()
    assert done.wait(10), "the registry blocked on a FIFO CURRENT"
    assert out["registry"].snapshots == {} and "not a regular file" in out["registry"].last_error["tiny"]


def test_a_served_file_changed_on_disk_is_noticed_and_the_version_withdrawn(root, start_server, caplog):
    r = start_server(root, reload_interval=0.05, verify_interval=0.1)
    assert _count_outcome(r.stub) == ("v00", expected_answers(0)["rows"])
    path = _a_data_file(root / "tiny" / "v00")
    assert not path.stat().st_mode & 0o222, "published files are read-only"
    os.chmod(path, 0o644)  # an operator who insists (or root) ...
    with open(path, "r+b") as f:  # ... writes into the served file in place
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.ERROR, logger="segsrv.server"):
        wait_for(lambda: _count_outcome(r.stub) == ("DATA_LOSS",), what="withdrawal")
    assert any("withdrawing snapshot tiny version v00" in rec.getMessage() for rec in caplog.records)
    assert _health(r.channel) == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as info:
        r.stub.Count(pb.CountRequest(universe="customers"), timeout=10)
    assert "changed on disk" in info.value.details()
    set_current(root, "v02")
    wait_for(lambda: _count_outcome(r.stub) == ("v02", expected_answers(2)["rows"]), what="v02 served")
    assert _health(r.channel) == "SERVING"


def test_a_worker_restarted_after_a_refused_version_never_serves_it(root, tmp_path):
    """The adversarial test's restarted worker served zeroed bitsets (Count 0, health SERVING) because a
    first open checked sizes only. Now it refuses the version too: no connection gets a wrong count."""
    from support import ServeProcess, process_alive

    sup = ServeProcess(root, tmp_path / "serve.log", "--workers", "2", "--reload-interval", "0.1", "--no-warm",
                       "--grace", "1", "--privacy-k", "0")
    try:
        corrupt = _copy_version(root, "v01", "corrupt")
        path = _a_data_file(corrupt)
        header = path.read_bytes()[:64]
        path.write_bytes(header + bytes(path.stat().st_size - 64))  # zeroed data, header and size kept
        set_current(root, "corrupt")
        wait_for(lambda: sum(r.get("event") == "reload_refused" for r in sup.records()) >= 2, what="both refuse")
        killed = sup.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: sup.worker_pids()[0] != killed, timeout=30, what="a replacement worker")
        replacement = sup.worker_pids()[0]
        sup.wait_for_line(rf'"event": "worker_ready".*"worker_pid": {replacement}', timeout=60)
        assert not process_alive(killed)
        outcomes = set()
        for _ in range(24):
            with grpc.insecure_channel(sup.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = segsrv_pb2_grpc.SegmentationServiceStub(channel)
                count, health = _count_outcome(stub), _health(channel)
                assert (count, health) in {(("v00", expected_answers(0)["rows"]), "SERVING"),
                                           (("UNAVAILABLE",), "NOT_SERVING")}, (count, health)
                outcomes.add(health)
        assert outcomes == {"SERVING", "NOT_SERVING"}  # both workers were reached
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(timeout=30) == 0
    finally:
        sup.close()
