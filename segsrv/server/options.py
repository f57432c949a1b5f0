"""Server settings that need no gRPC import: limits, keepalive, TLS files, addresses, port checks.

The multi-process supervisor (``workers.py``) checks everything here before
it forks, so that it never imports grpc (whose threads must not exist at
fork time) yet fails at once on a bad flag.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import SegsrvError

MIB = 1024 * 1024
DEFAULT_PORT = 50051
# handler threads per process. Python code of a request runs under the GIL, so past ~4 threads more
# of them only contend for it: on the 1M demo mix, open loop at 135 req/s on 2 cores, 8 threads cost
# more CPU per call and tipped into overload (p50 ~330 ms, RESOURCE_EXHAUSTED) where 3-4 threads held
# (p50 ~25 ms, no errors); closed loop 178 req/s with 4 vs 166 with 8 (docs/server.md). More cores:
# more processes (--workers), not threads. segsrv/cli.py repeats the value (it must not import grpc).
DEFAULT_MAX_WORKERS = 4
# RPCs accepted and not finished (running or waiting for a handler thread). A safety bound on
# memory and queueing, not the load-shedding policy: a call whose deadline passes while it waits is
# dropped when it reaches a thread, before any work. 256 holds ~1.5 s of backlog at the 1M demo
# mix's ~170 req/s, enough to ride out a few seconds of lost CPU (hypervisor steal on a shared host)
# that made 64 refuse calls at 80% load (docs/server.md#limits). segsrv/cli.py repeats the value.
DEFAULT_MAX_CONCURRENT_RPCS = 256
# server-streaming calls (ScoreSegment, ExportMembers) at once, on threads of their own (streams.py):
# as many as the unary handler threads. A stream mostly waits for its client (sends), and each holds
# its selected rows until it ends; more are RESOURCE_EXHAUSTED. segsrv/cli.py repeats the value.
DEFAULT_MAX_CONCURRENT_STREAMS = 4
# seconds one stream message may wait to be sent (the client read nothing: its HTTP/2 window and
# socket buffers, ~1-2 MB with grpc's defaults, are full) before the stream is cancelled. Generous
# for a client that writes each chunk somewhere slow; short enough that a stalled client gives its
# slot back. segsrv/cli.py repeats the value.
DEFAULT_STREAM_WRITE_TIMEOUT = 30.0
DEFAULT_MAX_RECEIVE_BYTES = 4 * MIB
DEFAULT_MAX_SEND_BYTES = 64 * MIB


class BindError(SegsrvError):
    """The server cannot listen on the requested address (in use, or not an address of this host)."""


class ConfigError(SegsrvError):
    """A server setting is invalid (TLS files, limits, ...)."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive and connection-age settings of the server (seconds; None: gRPC's default / off).

    time / timeout: the server pings a connection idle for `time` and closes it when no answer comes
    within `timeout` (finds dead clients and half-open connections).
    min_client_ping_interval: clients may ping this often (without data) at most; faster pinging
    gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" after 2 strikes. Clients' keepalive time must be
    at least this.
    permit_without_calls: accept client pings on connections with no call in flight.
    max_connection_idle: close connections idle this long (None: never).
    max_connection_age / max_connection_age_grace: close every connection after `age` (with `grace`
    for calls in flight); clients reconnect, which spreads them again over the workers of a
    multi-process server or the replicas behind a load balancer (None: never).
    """

    time: float = 60.0
    timeout: float = 20.0
    min_client_ping_interval: float = 10.0
    permit_without_calls: bool = True
    max_connection_idle: float | None = None
    max_connection_age: float | None = None
    max_connection_age_grace: float | None = None

    def grpc_options(self) -> list[tuple[str, int]]:
        ms = lambda s: int(round(s * 1000))  # noqa: E731
        out = [
            ("grpc.keepalive_time_ms", ms(self.time)),
            ("grpc.keepalive_timeout_ms", ms(self.timeout)),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval)),
            ("grpc.keepalive_permit_without_calls", 1 if self.permit_without_calls else 0),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.max_connection_idle:
            out.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle)))
        if self.max_connection_age:
            out.append(("grpc.max_connection_age_ms", ms(self.max_connection_age)))
            if self.max_connection_age_grace is not None:
                out.append(("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)))
        return out

    def check(self) -> None:
        for name in ("time", "timeout", "min_client_ping_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"keepalive {name} must be positive, got {getattr(self, name)}")
        for name in ("max_connection_idle", "max_connection_age", "max_connection_age_grace"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name.replace('_', ' ')} must not be negative, got {v}")


def server_options(*, reuse_port: bool, max_receive_message_bytes: int, max_send_message_bytes: int,
                   keepalive: Keepalive) -> list[tuple[str, int]]:
    """The grpc.server options segsrv sets."""
    return [
        # on only in multi-process mode: elsewhere a second server on a busy port must fail, not share it
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", int(max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(max_send_message_bytes)),
        *keepalive.grpc_options(),
    ]


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes: the server's certificate chain and key, and the CA that signs client certificates (mTLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


def load_tls(cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None) -> TlsFiles | None:
    """Read the TLS files (None when TLS is off); ConfigError for a missing pair or unreadable file."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with client certificates)")
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together")

    def read(path, flag: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
        if b"-----BEGIN " not in data:
            raise ConfigError(f"{flag}: {str(path)!r} is not a PEM file")
        return data

    return TlsFiles(read(cert, "--tls-cert"), read(key, "--tls-key"),
                    read(client_ca, "--tls-client-ca") if client_ca is not None else None)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET


def check_port_free(host: str, port: int) -> int:
    """Bind HOST:PORT without SO_REUSEPORT to prove nobody listens there; returns the port (chosen when 0)."""
    h = host.strip("[]")
    try:
        with socket.socket(_family(h), socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no clash
            s.bind((h, port))
            return s.getsockname()[1]
    except OSError as exc:
        address = format_address(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"cannot listen on {address}: the port is in use") from None
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT with SO_REUSEPORT, never listening: holds the port for the workers.

    Workers (same user, SO_REUSEPORT) join it; any other program gets "address in use". A socket
    that does not listen receives no connections.
    """
    h = host.strip("[]")
    s = socket.socket(_family(h), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((h, port))
    except OSError as exc:
        s.close()
        raise BindError(f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}") from None
    return s
