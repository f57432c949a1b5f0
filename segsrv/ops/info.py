"""GetSnapshotInfo: what a snapshot holds, universe by universe and field by field.

Query: {"from": name (none or empty: every universe), "include_values": bool}. Answer (shaped like
`segsrv info`): {"name", "version", "description", "served_snapshots", "universes": {name: {"table",
"key", "n_rows", "n_features", "fields": {field: {"kind", "semantics", "n_values", "has_raw_values",
"values" ({value: count}, when asked), "edges" (numeric fields)}}}}, "elapsed_ms"}. Value counts pass
the privacy floor (a count of 1..k-1 rows is reported as 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, enum_from_proto, enum_to_proto, response_info
from .params import Boolean, Param, Text, check_keys, check_params, read_json

KEYS = {"from", "include_values"}
PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("include_values", Boolean()),
)
KINDS = ("categorical", "multi", "numeric")
SEMANTICS = ("own", "forward", "exists")


@dataclass
class InfoQuery:
    universe: str | None = None  # only this universe; None: every universe
    include_values: bool = False  # every value of every field with its count

    def validate(self) -> None:
        check_params(self, PARAMS)

    @classmethod
    def from_json(cls, obj: dict) -> "InfoQuery":
        """An empty universe means "not given" (the client's default)."""
        check_keys(obj, KEYS, "snapshot info")
        q = cls()
        read_json({k: v for k, v in obj.items() if not (k == "from" and v == "")}, q, PARAMS)
        return q

    def to_json(self) -> dict:
        return {"from": self.universe, "include_values": self.include_values}

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.GetSnapshotInfoRequest:
        return pb.GetSnapshotInfoRequest(snapshot=at.to_proto(), universe=self.universe or "",
                                         include_values=bool(self.include_values))

    @staticmethod
    def paths(req: pb.GetSnapshotInfoRequest) -> cond.RequestPaths:
        return cond.RequestPaths("condition")

    @classmethod
    def from_proto(cls, req: pb.GetSnapshotInfoRequest, paths: cond.RequestPaths | None = None) -> "InfoQuery":
        return cls(universe=req.universe or None, include_values=bool(req.include_values))


@dataclass
class FieldInfo:
    name: str
    kind: str | None  # categorical | multi | numeric
    semantics: str | None  # own | forward | exists
    n_values: int
    has_raw_values: bool  # numeric ranges can be used on it
    values: dict[str, int] | None = None  # {value: rows having it} when asked
    edges: list[float] | None = None  # band edges of a numeric field

    @classmethod
    def from_field(cls, f, include_values: bool, privacy_floor: Callable[[int], int]) -> "FieldInfo":
        """From a snapshot field (duck-typed: .name .kind .semantics .values .counts .edges .numeric)."""
        return cls(name=f.name, kind=f.kind, semantics=f.semantics, n_values=len(f.values),
                   has_raw_values=f.numeric is not None,
                   values={v: privacy_floor(int(c)) for v, c in zip(f.values, f.counts)} if include_values else None,
                   edges=[float(e) for e in f.edges] if f.edges else None)

    def to_json(self) -> dict:
        out = {"kind": self.kind, "semantics": self.semantics, "n_values": self.n_values,
               "has_raw_values": self.has_raw_values}
        if self.values is not None:
            out["values"] = dict(self.values)
        if self.edges:
            out["edges"] = list(self.edges)
        return out

    def to_proto(self) -> pb.FieldInfo:
        msg = pb.FieldInfo(name=self.name, kind=enum_to_proto(pb.FieldKind, "FIELD_KIND_", self.kind),
                           semantics=enum_to_proto(pb.FieldSemantics, "FIELD_SEMANTICS_", self.semantics),
                           value_count=int(self.n_values), band_edges=[float(e) for e in self.edges or ()],
                           has_raw_values=self.has_raw_values)
        if self.values is not None:
            msg.values.extend(pb.ValueCount(value=v, count=int(c)) for v, c in self.values.items())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.FieldInfo, include_values: bool) -> "FieldInfo":
        return cls(name=msg.name, kind=enum_from_proto(pb.FieldKind, "FIELD_KIND_", msg.kind, None, "kind"),
                   semantics=enum_from_proto(pb.FieldSemantics, "FIELD_SEMANTICS_", msg.semantics, None, "semantics"),
                   n_values=int(msg.value_count), has_raw_values=msg.has_raw_values,
                   values={v.value: int(v.count) for v in msg.values} if include_values else None,
                   edges=list(msg.band_edges) or None)


@dataclass
class UniverseInfo:
    name: str
    table: str
    key: str
    n_rows: int
    n_features: int
    fields: list[FieldInfo] = field(default_factory=list)

    @classmethod
    def from_universe(cls, u, include_values: bool, privacy_floor: Callable[[int], int]) -> "UniverseInfo":
        """From a snapshot universe (duck-typed: .name .table .key .n_rows .n_features .fields {name: field})."""
        return cls(u.name, u.table, u.key, int(u.n_rows), int(u.n_features),
                   [FieldInfo.from_field(f, include_values, privacy_floor) for f in u.fields.values()])

    def to_json(self) -> dict:
        return {"table": self.table, "key": self.key, "n_rows": self.n_rows, "n_features": self.n_features,
                "fields": {f.name: f.to_json() for f in self.fields}}

    def to_proto(self) -> pb.UniverseInfo:
        return pb.UniverseInfo(name=self.name, table=self.table, key=self.key, row_count=int(self.n_rows),
                               feature_count=int(self.n_features), fields=[f.to_proto() for f in self.fields])

    @classmethod
    def from_proto(cls, msg: pb.UniverseInfo, include_values: bool) -> "UniverseInfo":
        return cls(msg.name, msg.table, msg.key, int(msg.row_count), int(msg.feature_count),
                   [FieldInfo.from_proto(f, include_values) for f in msg.fields])


def _no_floor(count: int) -> int:
    return count


@dataclass
class InfoResult:
    name: str
    version: str
    description: str
    served_snapshots: list[str]
    universes: list[UniverseInfo]
    elapsed_ms: float = 0.0

    @property
    def snapshot(self) -> str:  # what answered (base.response_info)
        return self.name

    @property
    def include_values(self) -> bool:
        return any(f.values is not None for u in self.universes for f in u.fields)

    @classmethod
    def from_snapshot(cls, snapshot, universes: Iterable, include_values: bool, served: Iterable[str],
                      privacy_floor: Callable[[int], int] = _no_floor, elapsed_ms: float = 0.0) -> "InfoResult":
        """From an open snapshot (duck-typed: .name .version .description) and the universes to describe;
        served: the names of the snapshots served; privacy_floor(count) -> the count reported."""
        return cls(snapshot.name, snapshot.version, snapshot.description or "", list(served),
                   [UniverseInfo.from_universe(u, include_values, privacy_floor) for u in universes], elapsed_ms)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "served_snapshots": list(self.served_snapshots),
            "universes": {u.name: u.to_json() for u in self.universes},
            "elapsed_ms": round(self.elapsed_ms, 3),
        }

    def to_proto(self, server_ms: float) -> pb.GetSnapshotInfoResponse:
        return pb.GetSnapshotInfoResponse(info=response_info(self, server_ms), description=self.description,
                                          universes=[u.to_proto() for u in self.universes],
                                          served_snapshots=list(self.served_snapshots))

    @classmethod
    def from_proto(cls, resp: pb.GetSnapshotInfoResponse, include_values: bool | None = None) -> "InfoResult":
        """include_values: what the request asked (None: values were included if any field has some)."""
        if include_values is None:
            include_values = any(f.values for u in resp.universes for f in u.fields)
        return cls(resp.info.snapshot_name, resp.info.snapshot_version, resp.description,
                   list(resp.served_snapshots), [UniverseInfo.from_proto(u, include_values) for u in resp.universes],
                   resp.info.server_time_ms)
