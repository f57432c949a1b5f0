"""ListSegments: the snapshot's segment catalog, each segment with its size.

The query is just the universe (JSON {"universe": name}; none or empty: every segment). The answer
is a list, one {"name", "description", "universe", "where" (the JSON `where` form), "priority",
"tags", "size", "share"} per segment, by name. A segment defined without a universe is listed with
universe None (it is sized in the requested universe, or the snapshot's only one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .conditions import All, Condition
from .params import Param, Text, check_keys, check_params, read_json

KEYS = {"from"}
PARAMS = (Param("from", Text("a universe name"), attr="universe", none=True),)


@dataclass
class SegmentsQuery:
    universe: str | None = None  # only the segments of this universe; None: every segment

    def validate(self) -> None:
        check_params(self, PARAMS)

    @classmethod
    def from_json(cls, obj: dict) -> "SegmentsQuery":
        """An empty universe means "not given" (the client's default)."""
        check_keys(obj, KEYS, "list segments")
        q = cls()
        read_json({k: v for k, v in obj.items() if v != ""}, q, PARAMS)
        return q

    def to_json(self) -> dict:
        return {"from": self.universe}

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.ListSegmentsRequest:
        return pb.ListSegmentsRequest(snapshot=at.to_proto(), universe=self.universe or "")

    @staticmethod
    def paths(req: pb.ListSegmentsRequest) -> cond.RequestPaths:
        return cond.RequestPaths("condition")

    @classmethod
    def from_proto(cls, req: pb.ListSegmentsRequest, paths: cond.RequestPaths | None = None) -> "SegmentsQuery":
        return cls(universe=req.universe or None)


@dataclass
class Segment:
    name: str
    description: str = ""
    universe: str | None = None  # the universe it is defined over (None: not given in the catalog)
    where: Condition = field(default_factory=All)
    priority: int = 0
    tags: list[str] = field(default_factory=list)
    size: int = 0  # members (after the privacy floor)
    share: float = 0.0  # size / rows of the universe

    @classmethod
    def from_catalog(cls, name: str, entry: dict, size: int, n_rows: int) -> "Segment":
        """A catalog entry ({"where", "description", "universe", "priority", "tags"}) and its size."""
        return cls(name=name, description=str(entry.get("description") or ""), universe=entry.get("universe") or None,
                   where=cond.parse_where(entry.get("where"), f"segment {name}"),
                   priority=int(entry.get("priority") or 0), tags=[str(t) for t in entry.get("tags") or []],
                   size=int(size), share=size / n_rows if n_rows else 0.0)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "universe": self.universe,
                "where": cond.where_json(self.where), "priority": self.priority, "tags": list(self.tags),
                "size": self.size, "share": self.share}

    def to_proto(self) -> pb.Segment:
        return pb.Segment(name=self.name, description=self.description, universe=self.universe or "",
                          condition=cond.to_proto(self.where), priority=int(self.priority), tags=list(self.tags),
                          size=int(self.size), share=float(self.share))

    @classmethod
    def from_proto(cls, msg: pb.Segment) -> "Segment":
        return cls(name=msg.name, description=msg.description, universe=msg.universe or None,
                   where=cond.from_proto(msg.condition if msg.HasField("condition") else None,
                                         cond.RequestPaths("condition")),
                   priority=int(msg.priority), tags=list(msg.tags), size=int(msg.size), share=msg.share)


@dataclass
class SegmentsResult:
    snapshot: str
    version: str
    segments: list[Segment]
    elapsed_ms: float = 0.0

    @classmethod
    def from_snapshot(cls, snapshot, universe: str | None, size_of: Callable[[str, str | None], tuple[int, int]],
                      elapsed_ms: float = 0.0) -> "SegmentsResult":
        """The catalog of an open snapshot (duck-typed: .name, .version, .segments {name: entry}), by name;
        with `universe`, only its segments and those defined without one. size_of(name, universe) ->
        (members, rows of the universe): the caller counts (and applies the privacy floor)."""
        out = []
        for name, entry in sorted((snapshot.segments or {}).items()):
            where = entry.get("universe") or universe or None
            if universe and where != universe:
                continue
            size, n_rows = size_of(name, where)
            out.append(Segment.from_catalog(name, entry, size, n_rows))
        return cls(snapshot.name, snapshot.version, out, elapsed_ms)

    def to_json(self) -> list[dict]:
        """The list of segments (client.list_segments / `segsrv segments list`)."""
        return [s.to_json() for s in self.segments]

    def to_proto(self, server_ms: float) -> pb.ListSegmentsResponse:
        return pb.ListSegmentsResponse(info=response_info(self, server_ms), segments=[s.to_proto() for s in self.segments])

    @classmethod
    def from_proto(cls, resp: pb.ListSegmentsResponse) -> "SegmentsResult":
        return cls(resp.info.snapshot_name, resp.info.snapshot_version, [Segment.from_proto(s) for s in resp.segments],
                   resp.info.server_time_ms)
