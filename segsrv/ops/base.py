"""What every operation shares: the snapshot selector and the answer's provenance.

A request names the snapshot it asks (``Selector``: a served snapshot's name, a pinned
version; empty means the only one / the current one). Every result says what answered
(snapshot, version) and how long the answer took (``elapsed_ms``: the engine's time
in-process, the server's handling time over gRPC); ``response_info`` is its proto form.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LimitExceededError
from ..v1 import segsrv_pb2 as pb
from .params import bad


@dataclass(frozen=True)
class Selector:
    name: str = ""
    version: str = ""

    def to_proto(self) -> pb.SnapshotSelector:
        return pb.SnapshotSelector(name=self.name, version=self.version)

    @classmethod
    def from_proto(cls, msg: pb.SnapshotSelector) -> "Selector":
        return cls(msg.name, msg.version)


ANY_SNAPSHOT = Selector()
MAX_CHUNK_SIZE = 100_000  # the most ids / scores in one streamed message


def chunk_size_from_proto(n: int, default: int) -> int:
    """A stream's chunk_size: 0 means `default`; at most MAX_CHUNK_SIZE."""
    if n < 0:
        raise bad("chunk_size", f"must be >= 0 (0 means {default}), got {n}")
    if n > MAX_CHUNK_SIZE:
        raise LimitExceededError(f"chunk_size: {n} exceeds the maximum {MAX_CHUNK_SIZE}",
                                 [("chunk_size", f"at most {MAX_CHUNK_SIZE}")])
    return n or default


def response_info(result, server_ms: float) -> pb.ResponseInfo:
    """What answered (the result's snapshot and version) and the server's time in ms."""
    return pb.ResponseInfo(snapshot_name=result.snapshot, snapshot_version=result.version,
                           server_time_ms=server_ms)


def enum_from_proto(enum_type, prefix: str, number: int, default, field: str):
    """An enum number -> its lower-case name without `prefix`; 0 (unset) -> `default`."""
    if number == 0:
        return default
    try:
        return enum_type.Name(number).removeprefix(prefix).lower()
    except ValueError:
        raise bad(field, f"unknown {enum_type.DESCRIPTOR.name} value {number}") from None


def enum_to_proto(enum_type, prefix: str, name: str | None) -> int:
    """A lower-case name -> the enum number (0 for None or a name the enum lacks)."""
    try:
        return enum_type.Value(prefix + name.upper()) if name else 0
    except ValueError:
        return 0
