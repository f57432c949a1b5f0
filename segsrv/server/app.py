"""Build and run the gRPC server: servicer, health, reflection, limits, security, metrics, reload, stop.

``create_server`` returns a bound but not started server and its port;
``serve`` runs one until SIGTERM / SIGINT. A sync (thread-pool) server: it
beat grpc.aio for small unary calls here (FIELD-NOTES.md). More cores need
more processes: ``workers.py`` forks them before any of this is imported.

Threads: unary calls run on the handler pool (``max_workers``); streams on
their own (``streams.py``); health Check on one more thread, so a probe is
answered however busy the handlers are.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine import set_kernel_threads
from ..service import warm_version
from ..engine.discover import DEFAULT_MAX_CANDIDATES
from ..ops.predict import DEFAULT_MAX_TARGET_VALUES
from ..engine.privacy import DEFAULT_PRIVACY_K
from ..v1 import segsrv_pb2, segsrv_pb2_grpc
from . import heap
from .auth import TokenStore
from .options import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_RECEIVE_BYTES,
    DEFAULT_MAX_SEND_BYTES,
    DEFAULT_MAX_WORKERS,
    DEFAULT_PORT,
    DEFAULT_STREAM_WRITE_TIMEOUT,
    MIB,
    BindError,
    ConfigError,
    Keepalive,
    TlsFiles,
    format_address,
    load_tls,
    server_options,
)
from .pipeline import RequestPipeline
from .registry import SnapshotRegistry
from .reload import DEFAULT_VERIFY_INTERVAL, Reloader
from .servicer import SegmentationServiceServicer
from .signals import StopSignals
from .streams import StreamGuard

log = logging.getLogger("segsrv.server")

SERVICE_NAME = segsrv_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name

__all__ = ["create_server", "serve", "SegsrvServer", "BindError", "ConfigError", "Keepalive", "MIB", "DEFAULT_PORT",
           "SERVICE_NAME", "format_address"]


class SegsrvServer(grpc.Server):
    """A grpc.Server that also runs segsrv's reloader and metrics endpoint with it.

    start() starts the gRPC server, the CURRENT watcher, the stream watchdog, the /metrics endpoint
    and the private health listener; stop(grace) marks health NOT_SERVING, stops watching and serving
    metrics, then stops the gRPC server (returns its threading.Event, like grpc's). The health
    listener answers (NOT_SERVING) until that event is set, so a supervisor does not mistake a
    draining worker for a hung one.
    """

    def __init__(self, server: grpc.Server, *, registry: SnapshotRegistry, health_servicer,
                 reloader: Reloader | None, streams: StreamGuard, metrics=None, metrics_port: int | None = None,
                 health_listener: grpc.Server | None = None, health_port: int | None = None,
                 secure: bool = False):
        self._server = server
        self.segsrv_registry = registry
        self.segsrv_health = health_servicer
        self.segsrv_reloader = reloader
        self.segsrv_streams = streams
        self.segsrv_metrics = metrics
        self.metrics_port = metrics_port
        self._health_listener = health_listener
        self.health_port = health_port
        self.secure = secure

    # grpc.Server
    def add_generic_rpc_handlers(self, generic_rpc_handlers):
        return self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        return self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address):
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address, server_credentials):
        return self._server.add_secure_port(address, server_credentials)

    def start(self):
        self._server.start()
        self.segsrv_streams.start()
        if self._health_listener is not None:
            self._health_listener.start()
        if self.segsrv_reloader is not None:
            self.segsrv_reloader.start()
        if self.segsrv_metrics is not None:
            self.segsrv_metrics.start_http()

    def stop(self, grace):
        self.segsrv_health.enter_graceful_shutdown()
        if self.segsrv_reloader is not None:
            self.segsrv_reloader.stop(timeout=0)
        event = self._server.stop(grace)
        if self.segsrv_metrics is not None:
            self.segsrv_metrics.stop_http()
        listener, self._health_listener = self._health_listener, None

        def after_drain() -> None:
            event.wait()
            self.segsrv_streams.stop()
            if listener is not None:
                listener.stop(0)

        threading.Thread(target=after_drain, name="segsrv-stopped", daemon=True).start()
        return event

    def wait_for_termination(self, timeout=None):
        return self._server.wait_for_termination(timeout)


def prepare_version(snapshot, *, warm: bool = True, **options) -> dict | None:
    """What the registry does to each version it opens before serving it: warm it (segsrv.service.warm_version,
    with the server's `options`) unless `warm` is false, then freeze the heap (heap.py) -> the warm-up's summary."""
    info = warm_version(snapshot, **options) if warm else None
    heap.freeze()
    return info


def create_server(
    snapshot_root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    stream_write_timeout: float | None = DEFAULT_STREAM_WRITE_TIMEOUT,
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    max_send_message_bytes: int = DEFAULT_MAX_SEND_BYTES,
    max_result_hits: int = 10_000,
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES,
    max_discover_candidates: int = DEFAULT_MAX_CANDIDATES,
    privacy_k: int = DEFAULT_PRIVACY_K,
    reuse_port: bool = False,
    registry: SnapshotRegistry | None = None,
    kernel_threads: int | None = 1,
    reload_interval: float | None = None,
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL,
    keep_versions: int = 0,
    warm: bool = True,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_client_ca: str | Path | None = None,
    tls: TlsFiles | None = None,
    tokens: TokenStore | str | Path | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    health_port: int | None = None,
    access_log: bool = True,
    keepalive: Keepalive | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> tuple[SegsrvServer, int]:
    """A bound, not yet started server over the snapshots under `snapshot_root`, and its port.

    port 0 picks a free port. max_concurrent_rpcs bounds the RPCs in progress (running or queued for a
    handler thread); more are RESOURCE_EXHAUSTED at once. Streams (ScoreSegment, ExportMembers) run on
    threads of their own, at most max_concurrent_streams at once (more: RESOURCE_EXHAUSTED), and one
    whose next message waits stream_write_timeout seconds to be sent (the client stopped reading) is
    cancelled (None: never). privacy_k is the privacy floor (counts of
    1..k-1 rows are suppressed or refused; 0 or 1: off; segsrv/engine/privacy.py). max_target_values caps the values of a
    Predict / ScoreSegment / Evaluate target (more: RESOURCE_EXHAUSTED), max_discover_candidates the candidate
    features of a Discover search (more: RESOURCE_EXHAUSTED). With reuse_port False (the
    default outside multi-process mode) a port already in use raises BindError instead of being shared
    silently. `registry` lets a caller (tests) keep a handle on the served snapshots; by default one is
    opened over snapshot_root (with keep_versions; with `warm`, each version's segment catalog is
    compiled, its stored default Assign propensity models loaded and its stored models answered once before it is
    served; segsrv.engine.warm). reload_interval (seconds) watches every CURRENT and swaps in new versions (None: no watching; `serve` defaults to 1 s);
    with it, every verify_interval seconds (None: never) every served byte is checked again and a version
    whose files changed on disk is withdrawn (DATA_LOSS). tls_cert + tls_key (PEM files,
    or `tls`) serve TLS only; tls_client_ca also requires client certificates signed by that CA (mTLS).
    tokens (a TokenStore or a tokens file) turns on bearer-token authentication with scopes.
    metrics_port serves Prometheus metrics on metrics_host (0: a free port, see `.metrics_port`).
    health_port also serves health alone, in plaintext, on 127.0.0.1:health_port (0: a free port, see
    `.health_port`): the multi-process supervisor probes each worker there.
    `interceptors` run inside segsrv's own (after authentication). Health is NOT_SERVING until at
    least one snapshot is loaded. See docs/server.md.
    """
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    streams = StreamGuard(max_concurrent_streams, stream_write_timeout)  # checks both
    if max_concurrent_rpcs is None or max_concurrent_rpcs < 1:
        raise ValueError("max_concurrent_rpcs must be at least 1 (without a limit the queue of waiting "
                         "RPCs grows without bound)")
    if max_receive_message_bytes < 1024 or max_send_message_bytes < 1024:
        raise ValueError("message size limits must be at least 1 KiB")
    if reload_interval is not None and not reload_interval > 0:
        raise ValueError(f"reload_interval must be positive, got {reload_interval}")
    keepalive = keepalive or Keepalive()
    keepalive.check()
    if tls is None:
        tls = load_tls(tls_cert, tls_key, tls_client_ca)
    elif tls_cert or tls_key or tls_client_ca:
        raise ConfigError("give either tls or tls_cert / tls_key / tls_client_ca")
    if tokens is not None and not isinstance(tokens, TokenStore):
        tokens = TokenStore.load(tokens)
    if tokens is not None and tls is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("bearer tokens without TLS on %s: tokens travel in clear text; use --tls-cert/--tls-key", host)
    if kernel_threads is not None:
        # one thread per kernel call: handler threads already run requests side by side, and an
        # OpenMP team per request oversubscribes the cores (measured: 8 ms vs 2 ms per relate)
        set_kernel_threads(kernel_threads)

    if registry is None:
        # warm-up through a service with this server's options: the path its requests take
        prepare = functools.partial(prepare_version, warm=warm, privacy_k=privacy_k, max_result_hits=max_result_hits,
                                    max_target_values=max_target_values,
                                    max_discover_candidates=max_discover_candidates)
        registry = SnapshotRegistry(snapshot_root, keep_versions=keep_versions, prepare=prepare)
    metrics = None
    if metrics_port is not None:
        from .metrics import Metrics  # prometheus-client, only when asked for

        metrics = Metrics(registry, max_concurrent_rpcs=max_concurrent_rpcs)
    servicer = SegmentationServiceServicer(registry, max_result_hits=max_result_hits,
                                           max_target_values=max_target_values, privacy_k=privacy_k,
                                           max_discover_candidates=max_discover_candidates)
    pipeline = RequestPipeline(SERVICE_NAME, registry, streams, tokens=tokens, metrics=metrics,
                               access_log_enabled=access_log)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="segsrv-rpc"),
        options=server_options(reuse_port=reuse_port, max_receive_message_bytes=max_receive_message_bytes,
                               max_send_message_bytes=max_send_message_bytes, keepalive=keepalive),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        # the pipeline runs first; alone, it wraps the handlers at registration (no interceptor per call)
        interceptors=[pipeline, *interceptors] if interceptors else None,
    )
    if interceptors:
        segsrv_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, server)
    else:
        pipeline.register(server, segsrv_pb2_grpc.add_SegmentationServiceServicer_to_server, servicer)

    health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="segsrv-health")
    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=health_pool)
    health_pb2_grpc.add_HealthServicer_to_server(_HealthOnItsOwnThread(health_servicer, health_pool), server)

    def update_health(snapshots) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if snapshots else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    registry.add_listener(update_health)

    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = format_address(host, port)
    try:
        if tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)], root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None)
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {address}: the port is in use or the address is not "
                        f"local ({str(exc).splitlines()[0]})") from None
    if not bound:
        raise BindError(f"cannot listen on {address}")

    health_listener = bound_health = None
    if health_port is not None:
        health_listener = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="segsrv-probe"),
                                      options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_listener)
        try:
            bound_health = health_listener.add_insecure_port(format_address("127.0.0.1", health_port))
        except RuntimeError:
            bound_health = 0
        if not bound_health:
            server.stop(0)
            raise BindError(f"cannot serve health on 127.0.0.1:{health_port}: the port is in use")

    bound_metrics = None
    if metrics is not None:
        try:
            bound_metrics = metrics.bind_http(metrics_host, metrics_port)
        except OSError as exc:
            server.stop(0)
            if health_listener is not None:
                health_listener.stop(0)
            raise BindError(f"cannot serve metrics on {format_address(metrics_host, metrics_port)}: "
                            f"{exc.strerror or exc}") from None
    reloader = Reloader(registry, reload_interval, verify_interval) if reload_interval is not None else None
    return SegsrvServer(server, registry=registry, health_servicer=health_servicer, reloader=reloader,
                        streams=streams, metrics=metrics, metrics_port=bound_metrics,
                        health_listener=health_listener, health_port=bound_health, secure=tls is not None), bound


class _HealthOnItsOwnThread:
    """The health servicer with Check on `pool` (grpc's per-handler experimental_thread_pool): probes are
    answered even when every handler thread is busy. Watch already runs there (non-blocking); the
    other methods are the servicer's."""

    def __init__(self, servicer: health.HealthServicer, pool: futures.ThreadPoolExecutor):
        def check(request, context):
            return servicer.Check(request, context)

        check.experimental_thread_pool = pool
        self.Check = check
        self._servicer = servicer

    def __getattr__(self, name):
        return getattr(self._servicer, name)


def serve(
    snapshot_root: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    grace_seconds: float = 5.0,
    reload_interval: float | None = 1.0,
    announce: bool = True,
    ready=None,
    **kwargs,
) -> int:
    """Serve until SIGTERM / SIGINT, then stop gracefully; returns the exit code (0).

    On the signal: health NOT_SERVING, no new RPCs, in-flight ones get `grace_seconds`; later signals
    change nothing (signals.py: the handlers take no lock, so a burst cannot deadlock). `announce`
    prints `serving ROOT on HOST:PORT` to stderr once listening; `ready(server)` (multi-process
    workers) is called then too.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, bound = create_server(snapshot_root, host=host, port=port, reload_interval=reload_interval, **kwargs)
    registry = server.segsrv_registry
    with StopSignals() as stop:
        server.start()
        served = ", ".join(f"{s.name}@{s.version}" for s in registry.snapshots.values()) or "nothing yet"
        where = format_address(host, bound)
        extras = [f"{'TLS' if server.secure else 'plaintext'}"]
        if kwargs.get("tls_client_ca") or (kwargs.get("tls") is not None and kwargs["tls"].client_ca):
            extras.append("client certificates required")
        if kwargs.get("tokens") is not None:
            extras.append("token auth")
        if server.metrics_port is not None:
            extras.append(f"metrics on {format_address(kwargs.get('metrics_host', '127.0.0.1'), server.metrics_port)}"
                          f"/metrics")
        if reload_interval is not None:
            extras.append(f"watching CURRENT every {reload_interval:g} s")
        log.info("serving %s (%s) on %s, pid %d; %s", snapshot_root, served, where, os.getpid(), "; ".join(extras))
        if announce:
            print(f"serving {snapshot_root} on {where}", file=sys.stderr, flush=True)
        if ready is not None:
            ready(server)
        while not (received := stop.wait(None)):
            pass
        log.info("received %s: NOT_SERVING, stopping within %.1f s", signal.Signals(received[0]).name, grace_seconds)
        server.stop(grace_seconds).wait()
        registry.close()
        log.info("stopped")
        return 0
