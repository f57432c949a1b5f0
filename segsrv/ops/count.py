"""Count: how many rows of a universe match a condition.

JSON form: {"from": universe, "where": condition}; answer {"snapshot", "version", "from",
"n_rows", "count"} (and "suppressed": true when the privacy floor hid a small count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .conditions import All, Condition
from .params import Param, Text, check_keys, read_json

KEYS = {"from", "where"}
PARAMS = (Param("from", Text("a universe name"), attr="universe", none=True),)


@dataclass
class CountQuery:
    where: Condition = field(default_factory=All)
    universe: str | None = None

    @classmethod
    def from_json(cls, obj: dict) -> "CountQuery":
        """`where` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "count")
        q = cls(where=cond.to_condition(obj.get("where")))
        read_json(obj, q, PARAMS)
        return q

    def to_json(self) -> dict:
        return {"from": self.universe, "where": cond.where_json(self.where)}

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.CountRequest:
        return pb.CountRequest(snapshot=at.to_proto(), universe=self.universe or "", condition=cond.to_proto(self.where))

    @classmethod
    def from_proto(cls, req: pb.CountRequest, paths: cond.RequestPaths) -> "CountQuery":
        return cls(where=cond.from_proto(req.condition if req.HasField("condition") else None, paths),
                   universe=req.universe or None)

    @staticmethod
    def paths(req: pb.CountRequest) -> cond.RequestPaths:
        return cond.RequestPaths("condition")


@dataclass
class CountResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int
    count: int
    suppressed: bool = False  # a count below the privacy floor, reported as 0
    elapsed_ms: float = 0.0

    def to_json(self) -> dict:
        out = {"snapshot": self.snapshot, "version": self.version, "from": self.universe, "n_rows": self.n_rows,
               "count": self.count}
        if self.suppressed:
            out["suppressed"] = True
        return out

    def to_proto(self, server_ms: float) -> pb.CountResponse:
        return pb.CountResponse(info=response_info(self, server_ms), universe=self.universe, count=self.count,
                                row_count=self.n_rows, suppressed=self.suppressed)

    @classmethod
    def from_proto(cls, resp: pb.CountResponse) -> "CountResult":
        return cls(resp.info.snapshot_name, resp.info.snapshot_version, resp.universe, resp.row_count, resp.count,
                   resp.suppressed, resp.info.server_time_ms)
