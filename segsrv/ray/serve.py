"""``segsrv serve-ray``: sharded snapshots served on Ray Serve, through the segsrv.v1 gRPC service.

Deployments (one Ray Serve application, ``segsrv``):

* ``shards-G`` (G = 0 .. groups-1): shard replicas. Group G holds shards ``G*K .. G*K+K-1`` of every sharded
  snapshot under the root (K = ``--shards-per-replica``; a build with more shards than at start puts shard
  i in group ``(i // K) % groups``), ``--replicas`` R copies of it for throughput. A replica opens the
  shard versions asked of it from the shared storage on first use, keeps the last ``KEEP_VERSIONS`` of
  each shard and runs ``fn(shard, *args)`` on them: the per-shard functions of segsrv/engine/sharded/.
* ``router``: Ray Serve's gRPC proxy sends it every segsrv.v1 call. It holds a SegmentationService over
  ``RayShardedSnapshot``s, whose ``map`` and ``map_each`` send (the SHARDS entries of the shards a group
  holds, fn, each shard's args) to each group, one call per group in parallel, and gather the answers, so
  every operation the in-process engine merges is answered here with the same merge, the same privacy
  floor and the same proto conversion and error table (segsrv/server/servicer.py,
  segsrv/server/errors.py).

Versions: the router reads ROOT/NAME/SHARDS (every ``reload_interval`` seconds) and swaps a new build in
whole once every shard group has opened it; a request resolves its build once, and every shard call
carries that build's shard versions, so no answer mixes builds.

Failures: a shard call whose replica dies (or cannot be reached) fails the request with UNAVAILABLE
(ShardUnavailableError), which the segsrv clients retry; Ray Serve starts a new replica. When the caller's
deadline passes or it cancels, Ray Serve cancels the router's task: the fan-out stops (no further shard
calls are awaited, the outstanding ones are cancelled) and the client has its DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import ray
from ray import serve
from ray.serve.config import gRPCOptions

from ..engine import cancel
from ..engine.sharded import ShardedSnapshot, open_shard, sharded_version
from ..errors import (
    NoSnapshotServedError, QueryError, RequestCancelled, SegsrvError, ShardUnavailableError,
    SnapshotNotFoundError, VersionNotServedError, suggest,
)
from ..server import errors
from ..server.auth import TokenStore
from ..server.servicer import UNARY_QUERIES, answer_unary, export_messages, score_segment_messages
from ..service import SegmentationService
from ..snapshot.reader import Snapshot
from ..snapshot.shards import SHARDS, read_shard_manifest
from ..v1 import segsrv_pb2 as pb

log = logging.getLogger("segsrv.ray")

APP_NAME = "segsrv"
SERVICER_FUNCTIONS = ["segsrv.v1.segsrv_pb2_grpc.add_SegmentationServiceServicer_to_server"]
KEEP_VERSIONS = 2  # shard versions a replica keeps open: the served build and the one before (requests finishing)
POLL_SECONDS = 0.05  # how often a router waiting on shard answers checks whether its caller is still there
_SERVICE = pb.DESCRIPTOR.services_by_name["SegmentationService"]

# what a dead or unreachable replica looks like to a caller (anything else a shard call raises is its answer)
_REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                 ray.exceptions.ObjectLostError, ray.serve.exceptions.DeploymentUnavailableError,
                 ray.serve.exceptions.ReplicaUnavailableError)


def sharded_locations(root: str | Path) -> dict[str, Path]:
    """The sharded snapshots to serve: ROOT itself when it holds SHARDS, else every ROOT/NAME holding SHARDS
    (by directory name)."""
    root = Path(str(root).removeprefix("file://"))
    if (root / SHARDS).is_file():
        return {root.name: root}
    if not root.is_dir():
        raise SnapshotNotFoundError(f"--snapshots: {str(root)!r} is not a directory")
    found = {p.parent.name: p.parent for p in sorted(root.glob(f"*/{SHARDS}"))}
    if not found:
        raise SnapshotNotFoundError(f"--snapshots: no sharded snapshot under {str(root)!r} (ROOT/NAME/{SHARDS}, "
                                    f"written by segsrv build --shards N); segsrv serve serves unsharded ones")
    return found


def shard_group(index: int, per_replica: int, groups: int) -> int:
    """The shard-replica deployment that holds shard `index`."""
    return (index // per_replica) % groups


def shard_version(shard: Snapshot) -> str:
    """A shard's version (a router's check that a shard group opened a new build)."""
    return shard.version


# --- shard replicas ---------------------------------------------------------------------------------------


class ShardReplica:
    """One replica of a shard group: opens shard versions on demand and runs per-shard functions on them."""

    def __init__(self, group: int, keep_versions: int = KEEP_VERSIONS):
        self.group = group
        self.keep_versions = keep_versions
        self._open: dict[tuple[str, str], OrderedDict[str, Snapshot]] = {}  # (location, dir) -> version -> shard
        self._lock = threading.Lock()

    def _shard(self, location: str, entry: dict, dictionary: str) -> Snapshot:
        with self._lock:  # one open per shard version, even when calls for it arrive together
            versions = self._open.setdefault((location, entry["dir"]), OrderedDict())
            shard = versions.get(entry["version"])
            if shard is None:
                shard = versions[entry["version"]] = open_shard(location, entry, dictionary)
                log.info("shard group %d opened %s/%s at %s", self.group, location, entry["dir"], entry["version"])
                while len(versions) > self.keep_versions:  # the oldest opened; a call still on it keeps its object
                    versions.popitem(last=False)
            versions.move_to_end(entry["version"])
            return shard

    def run(self, location: str, entries: list[dict], dictionary: str, fn, args: tuple) -> list:
        """[fn(shard, *args) for the shards `entries` (SHARDS entries) name], in order."""
        return self.run_each(location, entries, dictionary, fn, [args] * len(entries))

    def run_each(self, location: str, entries: list[dict], dictionary: str, fn, args_each: list[tuple]) -> list:
        """[fn(shard, *args) for each shard `entries` (SHARDS entries) names and its args of `args_each`], in
        order."""
        return [fn(self._shard(location, entry, dictionary), *args) for entry, args in zip(entries, args_each)]

    def pid(self) -> int:
        return os.getpid()

    def opened(self) -> dict[str, list[str]]:
        """The shard versions open here, oldest first."""
        with self._lock:
            return {f"{loc}/{d}": list(v) for (loc, d), v in self._open.items()}


# --- the router -------------------------------------------------------------------------------------------


class RayShardedSnapshot(ShardedSnapshot):
    """One sharded build whose shards answer on the shard replicas: ``map_each`` (and so ``map``) sends
    each group one call for its shards, every group's call of a round in parallel, and gathers the answers
    in order (the merges of segsrv/engine/sharded/ are unchanged)."""

    def __init__(self, path: Path, manifest: dict, schema: Snapshot, groups: list, per_replica: int):
        super().__init__(path, manifest["name"], sharded_version(manifest), schema, manifest["shard_count"])
        self.manifest = manifest
        self.groups = groups
        self.per_replica = per_replica

    def map_each(self, fn, shard_args: dict[int, tuple]) -> list:
        by_group: dict[int, list[int]] = {}  # one call per shard group (a hop costs more than a shard's count)
        for i in shard_args:
            by_group.setdefault(shard_group(i, self.per_replica, len(self.groups)), []).append(i)
        entries = self.manifest["shards"]
        # (``map``'s arguments are one object in every shard's place: pickled once per group call)
        calls = {g: self.groups[g].run_each.remote(str(self.path), [entries[i] for i in held],
                                                   self.manifest["dictionary_sha256"], fn,
                                                   [shard_args[i] for i in held])
                 for g, held in by_group.items()}
        try:
            answers = {}
            for g, call in calls.items():
                answers.update(zip(by_group[g], self._gather(by_group[g], call)))
            return [answers[i] for i in shard_args]
        finally:
            for call in calls.values():  # when one failed or the caller left: the others' answers go unread
                call.cancel()

    def _gather(self, held: list[int], call) -> list:
        while True:
            try:
                return call.result(timeout_s=POLL_SECONDS)
            except ray.exceptions.RayTaskError as exc:  # a shard's function raised: that is the answer
                cause = exc.cause
                if isinstance(cause, _REPLICA_GONE):
                    raise self._gone(held, cause) from None
                raise (cause if isinstance(cause, Exception) else exc) from None
            except _REPLICA_GONE as exc:
                raise self._gone(held, exc) from None
            except TimeoutError:
                cancel.check()  # the caller's deadline passed or it cancelled: stop here

    def _gone(self, held: list[int], exc: BaseException) -> ShardUnavailableError:
        shards = f"shard {held[0]}" if len(held) == 1 else f"shards {', '.join(map(str, held))}"
        return ShardUnavailableError(
            f"{shards} of {self.name}: the replica died or could not be reached ({type(exc).__name__}); Ray Serve "
            f"replaces it: retry")


class ShardedBuilds:
    """The SnapshotSource of the router: the current build of each sharded snapshot, reloaded from SHARDS."""

    def __init__(self, root: str, groups: list, per_replica: int):
        self.root = root
        self.groups = groups
        self.per_replica = per_replica
        self._builds: dict[str, RayShardedSnapshot] = {}
        self._seen: dict[str, str] = {}  # name -> SHA-256 of the SHARDS last read
        self._lock = threading.Lock()

    def refresh(self, warm: bool = True) -> list[str]:
        """Read every SHARDS; a changed one is opened (shard 0 here; with `warm`, every shard on its group)
        and swapped in whole. Returns the names swapped; a build that fails to open is logged and the
        previous one kept."""
        swapped = []
        for name, location in sharded_locations(self.root).items():
            try:
                digest = hashlib.sha256((location / SHARDS).read_bytes()).hexdigest()
                if self._seen.get(name) == digest:
                    continue
                manifest = read_shard_manifest(location)
                schema = open_shard(location, manifest["shards"][0], manifest["dictionary_sha256"])
                build = RayShardedSnapshot(location, manifest, schema, self.groups, self.per_replica)
                if warm and build.map(shard_version) != [e["version"] for e in manifest["shards"]]:
                    raise SegsrvError(f"{location}: the shard replicas opened other versions than {SHARDS} names")
            except (OSError, SegsrvError) as exc:
                log.error("sharded snapshot %s not (re)loaded, the previous build stays served: %s", name, exc)
                continue
            with self._lock:
                self._builds[name] = build
                self._seen[name] = digest
            swapped.append(name)
            log.info("serving %s version %s (%d shards)", name, build.version, build.shard_count)
        return swapped

    def resolve(self, name: str = "", version: str = "") -> RayShardedSnapshot:
        with self._lock:
            builds = dict(self._builds)
        if not builds:
            raise NoSnapshotServedError(f"no sharded snapshot is loaded yet from {self.root!r}; the router is not ready")
        if not name:
            if len(builds) > 1:
                raise QueryError(f"the server serves several snapshots {sorted(builds)}; name one in snapshot.name",
                                 [("snapshot.name", "required when the server serves several snapshots")])
            name = next(iter(builds))
        build = builds.get(name)
        if build is None:
            raise SnapshotNotFoundError(f"no snapshot {name!r} is served{suggest(name, builds)}; served: {sorted(builds)}",
                                        [("snapshot.name", f"unknown snapshot {name!r}")])
        if version and version != build.version:
            raise VersionNotServedError(f"version {version} of {name} is not served; serving {build.version}",
                                        [("snapshot.version", f"version {version!r} is not served; serving "
                                                              f"{build.version!r}")])
        return build

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._builds)


class _Failed(Exception):
    """The call's status is set on its Ray Serve context; the handler returns an empty message."""


class RayCall:
    """A call as the handlers of segsrv/server/servicer.py see it, over Ray Serve's gRPC context."""

    def __init__(self, grpc_context, cancelled: threading.Event):
        self.grpc_context = grpc_context
        self.cancelled = cancelled

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RequestCancelled("the call was cancelled or its deadline passed")

    def fail(self, exc: BaseException, locate, method: str) -> NoReturn:
        status = errors.grpc_status(exc, locate, method)
        self.grpc_context.set_code(status.code)
        self.grpc_context.set_details(status.details)
        self.grpc_context.set_trailing_metadata(list(status.trailing_metadata))  # the BadRequest / ErrorInfo
        raise _Failed(status.details)


class Router:
    """The segsrv.v1 SegmentationService on Ray Serve (module docstring)."""

    def __init__(self, root: str, groups: list, per_replica: int, service_options: dict,
                 tokens: str | None = None, reload_interval: float = 1.0, threads: int = 8):
        self.builds = ShardedBuilds(root, groups, per_replica)
        self.builds.refresh(warm=False)  # the shard replicas may not be up yet: they open shards on first use
        self.service = SegmentationService(self.builds, **service_options)
        self.tokens = TokenStore.load(tokens) if tokens else None
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="segsrv-router")
        if reload_interval > 0:
            threading.Thread(target=self._reload, args=(reload_interval,), name="segsrv-reload", daemon=True).start()

    def _reload(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            try:
                self.builds.refresh()
            except Exception:  # noqa: BLE001 - the reloader must outlive a bad moment of the storage
                log.exception("reloading the sharded snapshots failed; retrying in %.1f s", interval)

    def _authorize(self, method: str, call: RayCall) -> None:
        if self.tokens is not None:
            try:
                self.tokens.authorize(call.grpc_context.invocation_metadata(), method)
            except SegsrvError as exc:
                call.fail(exc, None, method)

    def _answer(self, method: str, request, call: RayCall):
        self._authorize(method, call)
        return answer_unary(self.service, method, request, call)

    async def _unary(self, method: str, request, grpc_context):
        call = RayCall(grpc_context, threading.Event())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, contextvars.copy_context().run, self._answer, method,
                                              request, call)
        except _Failed:
            return getattr(pb, _SERVICE.methods_by_name[method].output_type.name)()
        except asyncio.CancelledError:  # Ray Serve cancels the task when the caller's deadline passed or it left
            call.cancelled.set()
            raise

    def _stream(self, method: str, messages, request, grpc_context):
        call = RayCall(grpc_context, threading.Event())
        self._authorize(method, call)
        yield from messages(self.service, request, call)  # an error ends the stream with its code and message

    def ScoreSegment(self, request, grpc_context):
        yield from self._stream("ScoreSegment", score_segment_messages, request, grpc_context)

    def ExportMembers(self, request, grpc_context):
        yield from self._stream("ExportMembers", export_messages, request, grpc_context)


def _unary_handler(method: str):
    async def handler(self, request, grpc_context):  # Ray Serve calls the router's method of the RPC's name
        return await self._unary(method, request, grpc_context)

    handler.__name__ = handler.__qualname__ = method
    return handler


for _method in UNARY_QUERIES:  # Count, Relate, ...: the unary methods of segsrv.v1.SegmentationService
    setattr(Router, _method, _unary_handler(_method))


# --- deploying ---------------------------------------------------------------------------------------------


def deploy(root: str, *, shards_per_replica: int, replicas: int = 1, port: int = 50051,
           service_options: dict | None = None, tokens: str | None = None, reload_interval: float = 1.0,
           replica_cpus: float = 1.0, request_timeout: float | None = None, http_port: int = 0):
    """Start Ray Serve (gRPC on PORT) and run the application: the shard groups and the router. Needs a
    connected Ray (segsrv.ray.connect). Returns the router's DeploymentHandle."""
    if shards_per_replica < 1:
        raise SegsrvError(f"--shards-per-replica: expected at least 1, got {shards_per_replica}")
    if replicas < 1:
        raise SegsrvError(f"--replicas: expected at least 1, got {replicas}")
    if tokens:
        TokenStore.load(tokens)  # a bad file fails here, not in the router's constructor
    most = max(read_shard_manifest(location)["shard_count"] for location in sharded_locations(root).values())
    n_groups = -(-most // shards_per_replica)
    needed, total = (n_groups * replicas + 1) * replica_cpus, ray.cluster_resources().get("CPU", 0)
    if needed > total:  # Ray Serve would wait for CPUs that may never come: say so rather than hang silently
        log.warning("the deployments reserve %g CPUs (%d shard replicas and the router, --replica-cpus %g) and the "
                    "cluster has %g: Ray Serve waits until nodes join (or give a smaller --replica-cpus)",
                    needed, n_groups * replicas, replica_cpus, total)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICER_FUNCTIONS,
                                         request_timeout_s=request_timeout))
    _check_grpc_proxy(port)
    actor = {"num_cpus": replica_cpus}
    groups = [serve.deployment(ShardReplica).options(name=f"shards-{g}", num_replicas=replicas,
                                                     ray_actor_options=actor).bind(g)
              for g in range(n_groups)]
    router = serve.deployment(Router).options(name="router", ray_actor_options=actor).bind(
        str(root), groups, shards_per_replica, service_options or {}, tokens, reload_interval)
    return serve.run(router, name=APP_NAME, route_prefix=f"/{APP_NAME}")


def _check_grpc_proxy(port: int) -> None:
    """Refuse to deploy behind a Ray Serve started earlier on this cluster with another gRPC port or without
    the segsrv.v1 servicer: serve.start keeps the first options (Ray Serve's private controller API: the
    public one does not tell)."""
    from ray.serve.context import _get_global_client

    running = ray.get(_get_global_client()._controller.get_grpc_config.remote())
    if running.port != port or not set(SERVICER_FUNCTIONS) <= set(running.grpc_servicer_functions):
        raise SegsrvError(
            f"Ray Serve already runs on this cluster with its gRPC proxy on port {running.port} serving "
            f"{running.grpc_servicer_functions or 'no gRPC service'}, and keeps those options: one serve-ray per "
            f"cluster (stop the running Serve with `serve shutdown`, or give --port {running.port} when it "
            f"already serves segsrv.v1)")


def wait_for_replicas(timeout: float = 120.0) -> None:
    """Block until the application is RUNNING (SegsrvError after `timeout` seconds)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and str(status.status).endswith("RUNNING"):
            return
        time.sleep(0.2)
    raise SegsrvError(f"the Ray Serve application {APP_NAME!r} is not running after {timeout:.0f} s")


__all__ = ["APP_NAME", "KEEP_VERSIONS", "RayShardedSnapshot", "Router", "ShardReplica", "ShardedBuilds",
           "deploy", "sharded_locations", "shard_group", "wait_for_replicas"]
