"""Build and run the gRPC server: servicer, health, reflection, limits, graceful stop.

``create_server`` returns a bound but not started ``grpc.Server`` and its
port; ``serve`` runs one until SIGTERM / SIGINT. A sync (thread-pool) server:
it beat grpc.aio for small unary calls here (FIELD-NOTES.md).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import SegsrvError
from ..engine import set_kernel_threads
from ..engine.predict import DEFAULT_MAX_TARGET_VALUES
from ..v1 import segsrv_pb2, segsrv_pb2_grpc
from .registry import SnapshotRegistry
from .servicer import SegmentationServiceServicer

log = logging.getLogger("segsrv.server")

SERVICE_NAME = segsrv_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name
MIB = 1024 * 1024
DEFAULT_PORT = 50051


class BindError(SegsrvError):
    """The server cannot listen on the requested address (in use, or not an address of this host)."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def create_server(
    snapshot_root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 8,
    max_concurrent_rpcs: int | None = 64,
    max_receive_message_bytes: int = 4 * MIB,
    max_send_message_bytes: int = 64 * MIB,
    max_result_hits: int = 10_000,
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES,
    reuse_port: bool = False,
    registry: SnapshotRegistry | None = None,
    kernel_threads: int | None = 1,
) -> tuple[grpc.Server, int]:
    """A bound, not yet started server over the snapshots under `snapshot_root`, and its port.

    port 0 picks a free port. max_target_values caps the values of a Predict / ScoreSegment /
    Evaluate target (more: RESOURCE_EXHAUSTED). With reuse_port False (the default outside multi-process mode) a
    port already in use raises BindError instead of being shared silently. `registry` lets a
    caller (tests, a reloader) keep a handle on the served snapshots; by default one is opened
    over snapshot_root. Health is NOT_SERVING until at least one snapshot is loaded.
    """
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    if kernel_threads is not None:
        # one thread per kernel call: handler threads already run requests side by side, and an
        # OpenMP team per request oversubscribes the cores (measured: 8 ms vs 2 ms per relate)
        set_kernel_threads(kernel_threads)
    registry = registry if registry is not None else SnapshotRegistry(snapshot_root)
    servicer = SegmentationServiceServicer(registry, max_result_hits=max_result_hits,
                                           max_target_values=max_target_values)
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", int(max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(max_send_message_bytes)),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="segsrv-rpc"),
        options=options,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    segsrv_pb2_grpc.add_SegmentationServiceServicer_to_server(servicer, server)

    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="segsrv-health"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def update_health(snapshots) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if snapshots else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    registry.add_listener(update_health)

    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = format_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {address}: the port is in use or the address is not "
                        f"local ({str(exc).splitlines()[0]})") from None
    if not bound:
        raise BindError(f"cannot listen on {address}")
    # for serve(): graceful shutdown needs the health servicer
    server.segsrv_health = health_servicer  # type: ignore[attr-defined]
    server.segsrv_registry = registry  # type: ignore[attr-defined]
    return server, bound


def serve(
    snapshot_root: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    grace_seconds: float = 5.0,
    **kwargs,
) -> int:
    """Serve until SIGTERM / SIGINT, then stop gracefully; returns the exit code (0)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, bound = create_server(snapshot_root, host=host, port=port, **kwargs)
    health_servicer = server.segsrv_health
    registry = server.segsrv_registry
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("received %s: NOT_SERVING, stopping within %.1f s", signal.Signals(signum).name, grace_seconds)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        served = ", ".join(f"{s.name}@{s.version}" for s in registry.snapshots.values()) or "nothing yet"
        log.info("serving %s (%s) on %s", snapshot_root, served, format_address(host, bound))
        print(f"serving {snapshot_root} on {format_address(host, bound)}", file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            pass
        health_servicer.enter_graceful_shutdown()
        server.stop(grace_seconds).wait()
        log.info("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
