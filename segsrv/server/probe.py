"""Liveness probes of the multi-process workers: a gRPC health Check written by hand, non-blocking.

A worker can stop answering without dying (SIGSTOP, a wedged process): the
kernel keeps handing it new connections on the shared port, and they hang.
The supervisor probes each worker on that worker's own channel: every worker
also serves health alone on a private 127.0.0.1 port
(``create_server(health_port=0)``), named in its ready line.

The supervisor must not import grpc (it forks workers again and again, and
grpc's threads must not exist then) nor block (it also reaps, restarts and
forwards signals). So the probe is the smallest gRPC call there is, spoken
over a plain non-blocking socket from the supervisor's own select loop: the
HTTP/2 preface, an empty SETTINGS frame, one HEADERS frame (HPACK literals:
no Huffman, no table) and one DATA frame holding an empty
HealthCheckRequest. A worker answers only when its gRPC core polls and one of
its threads can run Python (the health handler), i.e. when it would serve.
Any answer on the call counts, NOT_SERVING included (a draining worker, or one
with no snapshot yet, is alive); no answer within the timeout, a refused or
closed connection is a miss. (The alternative, an exec'd prober process
using grpc, is one more process to supervise, ~1 s and ~40 MB to start, for
the same few frames.)
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger("segsrv.workers")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman (names and values < 127 bytes)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes((len(n),)) + n + bytes((len(v),)) + v


def health_check_request(port: int) -> bytes:
    """The bytes of a client connection making one grpc.health.v1.Health/Check call (service "")."""
    headers = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers")))
    return (PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, headers)
            + _frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x00"))  # uncompressed, 0 bytes: an empty request


class HealthProbe:
    """One probe in flight: `fileno()`, `wants_write`, `on_writable()`, `on_readable()`, `expire(now)`;
    `outcome` is None until it is (True, "SERVING" / ...) or (False, why)."""

    def __init__(self, port: int, timeout: float, now: float):
        self.deadline = now + timeout
        self.timeout = timeout
        self.outcome: tuple[bool, str] | None = None
        self._out = health_check_request(port)
        self._in = b""
        self._connecting = True
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._end(False, f"cannot connect: {errno.errorcode.get(err, err)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        return self.outcome is None and (self._connecting or bool(self._out))

    def on_writable(self) -> None:
        if self.outcome is not None:
            return
        if self._connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._end(False, f"cannot connect: {errno.errorcode.get(err, err)}")
                return
            self._connecting = False
        try:
            self._out = self._out[self.sock.send(self._out):]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._end(False, f"send failed: {exc.strerror or exc}")

    def on_readable(self) -> None:
        if self.outcome is not None:
            return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(False, f"receive failed: {exc.strerror or exc}")
            return
        if not data:
            self._end(False, "the worker closed the connection without answering")
            return
        self._in += data
        while len(self._in) >= 9 and self.outcome is None:
            length = int.from_bytes(self._in[:3], "big")
            if len(self._in) < 9 + length:
                break
            kind, flags, stream = self._in[3], self._in[4], int.from_bytes(self._in[5:9], "big") & 0x7FFFFFFF
            payload, self._in = self._in[9:9 + length], self._in[9 + length:]
            self._frame_received(kind, flags, stream, payload)

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            self._queue(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._queue(_frame(PING, ACK, 0, payload))
        elif kind == DATA and stream == 1:
            # a gRPC message: flag byte, 4-byte length, HealthCheckResponse (field 1, varint status)
            message = payload[5:]
            status = message[1] if len(message) >= 2 and message[0] == 0x08 else 0
            self._end(True, HEALTH_STATUS.get(status, str(status)))
        elif (kind == HEADERS and stream == 1 and flags & END_STREAM) or (kind == RST_STREAM and stream == 1) \
                or kind == GOAWAY:
            self._end(True, "answered without a status")  # refused or shutting down, but alive

    def _queue(self, data: bytes) -> None:
        self._out += data
        self.on_writable()

    def expire(self, now: float) -> None:
        if self.outcome is None and now >= self.deadline:
            self._end(False, f"no answer within {self.timeout:g} s")

    def _end(self, ok: bool, why: str) -> None:
        if self.outcome is None:
            self.outcome = (ok, why)
        self.sock.close()


@dataclass
class _Target:
    port: int
    label: str
    next_at: float
    missed: int = 0
    probe: HealthProbe | None = None


class Prober:
    """Probes every watched worker every `interval` seconds (`timeout` each); `step()` returns the workers
    that missed `failures` probes in a row. Driven by the caller's select loop: `waiting()` gives the
    probes to select on, `step(readable, writable, now)` advances them."""

    def __init__(self, interval: float, timeout: float, failures: int):
        if not interval > 0 or not timeout > 0 or failures < 1:
            raise ValueError("probe interval and timeout must be positive, failures at least 1")
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self._targets: dict[object, _Target] = {}

    def watch(self, key, port: int, label: str, now: float) -> None:
        self.forget(key)
        self._targets[key] = _Target(port, label, now + self.interval)

    def forget(self, key) -> None:
        target = self._targets.pop(key, None)
        if target is not None and target.probe is not None:
            target.probe.sock.close()

    def close(self) -> None:
        for key in list(self._targets):
            self.forget(key)

    def waiting(self) -> tuple[list[HealthProbe], list[HealthProbe]]:
        """(probes to read from, probes to write to)."""
        probes = [t.probe for t in self._targets.values() if t.probe is not None and t.probe.outcome is None]
        return probes, [p for p in probes if p.wants_write]

    def next_due(self, now: float) -> float:
        """Seconds until a probe starts or times out."""
        times = [t.probe.deadline if t.probe is not None else t.next_at for t in self._targets.values()]
        return max(0.0, min(times) - now) if times else 1.0

    def step(self, readable, writable, now: float) -> list[tuple[object, str]]:
        """Advance every probe; [(key, why)] for the targets that just reached `failures` misses."""
        readable, writable = set(map(id, readable)), set(map(id, writable))
        out = []
        for key, t in self._targets.items():
            p = t.probe
            if p is None:
                if now >= t.next_at:
                    t.probe = HealthProbe(t.port, self.timeout, now)
                    t.next_at = now + self.interval
                continue
            if id(p) in writable:
                p.on_writable()
            if id(p) in readable:
                p.on_readable()
            p.expire(now)
            if p.outcome is None:
                continue
            t.probe = None
            t.next_at = max(t.next_at, now)
            ok, why = p.outcome
            if ok:
                t.missed = 0
                continue
            t.missed += 1
            log.warning("%s missed a health probe (%s): %d of %d", t.label, why, t.missed, self.failures,
                        extra={"fields": {"event": "probe_missed", "worker_index": key, "missed": t.missed}})
            if t.missed == self.failures:
                out.append((key, f"{t.missed} health probes in a row went unanswered ({why})"))
        return out
