"""Profile: describe a segment field by field against the population (DESIGN.md section 1).

JSON form: {"from": universe, "segment": condition, "fields": [names or globs], "values_per_field": k};
answer {"snapshot", "version", "from", "n_rows", "n_segment", "elapsed_ms", "fields": [{"field", "over",
"under"}], "numeric": [{"field", "segment", "population"}]} (and "suppressed": true when the privacy
floor hid a small segment, "suppressed_values": N when it left values or numeric fields out). Over the wire a field's values are its over-indexed ones (lift > 1, most
over-indexed first) followed by its under-indexed ones (lift < 1, most under-indexed first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import LimitExceededError, QueryError, Violation
from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .conditions import All, Condition
from .params import Integer, Names, Param, Text, bad, check_keys, check_params, json_number, read_json

DEFAULT_VALUES_PER_FIELD = 5
MAX_VALUES_PER_FIELD = 100
MAX_FIELD_PATTERNS = 1024
KEYS = {"from", "segment", "fields", "values_per_field"}
NUMERIC_STATS = ("count", "mean", "std", "min", "p25", "median", "p75", "max")

PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("fields", Names(), none=True),
    Param("values_per_field", Integer(low=1), limit=MAX_VALUES_PER_FIELD),
)
_JSON_PARAMS = tuple(p for p in PARAMS if p.key != "fields")  # fields: read by from_json (pattern violations)


def check_fields(fields) -> None:
    """A list of names or globs, at most MAX_FIELD_PATTERNS; a bad item is a "pattern" violation."""
    if fields is None:
        return
    if not isinstance(fields, (list, tuple)):
        raise QueryError("fields: expected a list of field names or globs", [("fields", "expected a list")])
    if len(fields) > MAX_FIELD_PATTERNS:
        raise LimitExceededError(f"fields: {len(fields)} names or globs exceed the maximum {MAX_FIELD_PATTERNS}",
                                 [("fields", f"at most {MAX_FIELD_PATTERNS} names or globs")])
    for pat in fields:
        if not isinstance(pat, str) or not pat:
            raise QueryError(f"fields: bad field name or glob {pat!r}",
                             [Violation("fields", f"bad pattern {pat!r}", "pattern", pat)])


@dataclass
class ProfileQuery:
    segment: Condition = field(default_factory=All)
    universe: str | None = None
    fields: list[str] | None = None  # names or globs; None / empty = every field
    values_per_field: int = DEFAULT_VALUES_PER_FIELD

    def validate(self) -> None:
        check_fields(self.fields)
        check_params(self, PARAMS)

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "ProfileQuery":
        """`segment` may also be a condition tree or a proto Condition (Python callers); one string
        stands for a `fields` list of one."""
        check_keys(obj, KEYS, "profile")
        fields = obj.get("fields")
        if isinstance(fields, str):
            fields = [fields]
        if fields is not None and not isinstance(fields, list):
            raise QueryError("fields: expected a list of field names or globs", [("fields", "expected a list")])
        q = cls(segment=cond.to_condition(obj.get("segment"), "segment"), fields=fields or None)
        read_json(obj, q, _JSON_PARAMS)
        q.validate()
        return q

    def to_json(self) -> dict:
        return {"from": self.universe, "segment": cond.where_json(self.segment), "fields": self.fields,
                "values_per_field": self.values_per_field}

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.ProfileRequest:
        return pb.ProfileRequest(snapshot=at.to_proto(), universe=self.universe or "",
                                 segment=cond.to_proto(self.segment), fields=list(self.fields or ()),
                                 values_per_field=int(self.values_per_field))

    @staticmethod
    def paths(req: pb.ProfileRequest) -> cond.RequestPaths:
        return cond.RequestPaths("segment", ("fields", list(req.fields)))

    @classmethod
    def from_proto(cls, req: pb.ProfileRequest, paths: cond.RequestPaths) -> "ProfileQuery":
        """values_per_field 0 means the default (5); negative ones and empty field names are refused here,
        the upper limit and unknown fields by validate() and the engine."""
        if req.values_per_field < 0:
            raise bad("values_per_field",
                      f"must be >= 0 (0 means {DEFAULT_VALUES_PER_FIELD}), got {req.values_per_field}")
        for i, pat in enumerate(req.fields):
            if not pat:
                raise bad(f"fields[{i}]", "empty field name or glob")
        return cls(segment=cond.from_proto(req.segment if req.HasField("segment") else None, paths),
                   universe=req.universe or None, fields=list(req.fields) or None,
                   values_per_field=req.values_per_field or DEFAULT_VALUES_PER_FIELD)


# --- the answer ----------------------------------------------------------------------


@dataclass
class ValueProfile:
    value: str
    segment_count: int  # n_{S,v}
    population_count: int  # n_v
    segment_share: float
    population_share: float
    lift: float
    p_value: float

    def to_json(self) -> dict:
        return {"value": self.value, "segment_count": int(self.segment_count),
                "segment_share": json_number(float(self.segment_share)),
                "population_share": json_number(float(self.population_share)),
                "lift": json_number(float(self.lift)), "p_value": json_number(float(self.p_value))}

    def to_proto(self) -> pb.ValueProfile:
        return pb.ValueProfile(value=self.value, segment_count=int(self.segment_count),
                               segment_share=float(self.segment_share), population_share=float(self.population_share),
                               lift=float(self.lift), p_value=float(self.p_value))

    @classmethod
    def from_proto(cls, msg: pb.ValueProfile, n_rows: int) -> "ValueProfile":
        """population_count is not sent: population_share * n_rows (exact for any real universe)."""
        share = msg.population_share
        n_v = int(round(share * n_rows)) if n_rows and math.isfinite(share) else 0
        return cls(msg.value, int(msg.segment_count), n_v, msg.segment_share, share, msg.lift, msg.p_value)


@dataclass
class FieldProfile:
    field: str
    over: list[ValueProfile]  # lift > 1, most certainly over-indexed first (lower bound of the lift)
    under: list[ValueProfile]  # lift < 1, most certainly under-indexed first (upper bound of the lift)
    strength: float = 1.0  # the largest lower bound of an over-indexed value's lift (1: none); fields rank by it

    def to_json(self) -> dict:
        return {"field": self.field, "strength": json_number(float(self.strength)),
                "over": [v.to_json() for v in self.over], "under": [v.to_json() for v in self.under]}

    def to_proto(self) -> pb.FieldProfile:
        return pb.FieldProfile(field=self.field, values=[v.to_proto() for v in (*self.over, *self.under)],
                               strength=float(self.strength))

    @classmethod
    def from_proto(cls, msg: pb.FieldProfile, n_rows: int) -> "FieldProfile":
        values = [ValueProfile.from_proto(v, n_rows) for v in msg.values]
        return cls(msg.field, [v for v in values if v.lift > 1], [v for v in values if v.lift < 1], msg.strength)


@dataclass
class NumericStats:
    count: int
    mean: float
    std: float
    min: float
    p25: float
    median: float
    p75: float
    max: float

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in NUMERIC_STATS}

    def to_json(self) -> dict:
        return {name: int(self.count) if name == "count" else json_number(float(getattr(self, name)))
                for name in NUMERIC_STATS}

    def to_proto(self) -> pb.NumericStats:
        """NaN statistics (no value in the rows) travel as NaN doubles; count is then 0."""
        return pb.NumericStats(count=int(self.count), **{n: float(getattr(self, n)) for n in NUMERIC_STATS[1:]})

    @classmethod
    def from_proto(cls, msg: pb.NumericStats) -> "NumericStats":
        return cls(int(msg.count), *(float(getattr(msg, n)) for n in NUMERIC_STATS[1:]))


@dataclass
class NumericProfile:
    field: str
    segment: NumericStats
    population: NumericStats

    def to_json(self) -> dict:
        return {"field": self.field, "segment": self.segment.to_json(), "population": self.population.to_json()}

    def to_proto(self) -> pb.NumericProfile:
        return pb.NumericProfile(field=self.field, segment=self.segment.to_proto(),
                                 population=self.population.to_proto())

    @classmethod
    def from_proto(cls, msg: pb.NumericProfile) -> "NumericProfile":
        return cls(msg.field, NumericStats.from_proto(msg.segment), NumericStats.from_proto(msg.population))


@dataclass
class ProfileResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int
    n_segment: int
    fields: list[FieldProfile]
    numeric: list[NumericProfile]
    elapsed_ms: float
    plan: str = "none"  # counting plan of the value counts (Relate's), "none" when nothing was counted
    suppressed: bool = False  # the segment (or the rest) is below the privacy floor: no profiles, n_segment 0
    suppressed_values: int = 0  # values and numeric fields left out by the privacy floor

    def to_json(self) -> dict:
        """The JSON answer (plan is not part of it, nor of the proto)."""
        out = {
            "snapshot": self.snapshot,
            "version": self.version,
            "from": self.universe,
            "n_rows": int(self.n_rows),
            "n_segment": int(self.n_segment),
            "elapsed_ms": round(float(self.elapsed_ms), 3),
            "fields": [f.to_json() for f in self.fields],
            "numeric": [p.to_json() for p in self.numeric],
        }
        if self.suppressed:
            out["suppressed"] = True
        if self.suppressed_values:
            out["suppressed_values"] = int(self.suppressed_values)
        return out

    def to_proto(self, server_ms: float) -> pb.ProfileResponse:
        return pb.ProfileResponse(info=response_info(self, server_ms), segment_count=int(self.n_segment),
                                  row_count=int(self.n_rows), fields=[f.to_proto() for f in self.fields],
                                  numeric_fields=[p.to_proto() for p in self.numeric], universe=self.universe,
                                  suppressed=self.suppressed, suppressed_value_count=int(self.suppressed_values))

    @classmethod
    def from_proto(cls, resp: pb.ProfileResponse) -> "ProfileResult":
        n = int(resp.row_count)
        return cls(
            snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
            n_rows=n, n_segment=int(resp.segment_count),
            fields=[FieldProfile.from_proto(f, n) for f in resp.fields],
            numeric=[NumericProfile.from_proto(p) for p in resp.numeric_fields],
            elapsed_ms=resp.info.server_time_ms, suppressed=resp.suppressed,
            suppressed_values=int(resp.suppressed_value_count),
        )
