"""Relate: which features over- or under-index in a condition, with exact statistics.

JSON keys: from, where, relate, select, limit, order_by, direction, min_support,
min_lift, max_p_value, prior_strength, include_condition_fields, plan, q_values. `select` items
are `$<statistic>` (e.g. `$lift`, `$p`, `$support`), `$field`, `$value`,
`$feature_id`, or a field name (the hit's value when the hit belongs to that field,
else null); every hit carries `$field` and `$value`, selected or not. Q-values are computed only when asked for (`q_values`, `$q_value` in
`select`, or ordering by q_value): each needs every tested candidate's p-value. See
docs/query.md. A new parameter is declared in PARAMS and mapped in
``from_proto`` / ``to_proto`` (and the proto): nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import QueryError
from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, enum_from_proto, enum_to_proto, response_info
from .conditions import All, Condition
from .params import Boolean, Integer, Names, Options, Param, Real, Text, check_keys, check_params, json_number, read_json
from ..errors import suggest

ORDER_KEYS = (
    "lift_low", "lift_high", "lift_smoothed", "lift", "support", "p_value", "q_value", "mutual_information", "p",
    "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang", "support_ratio", "p_base", "p_not",
    "n_feature",
)
DIRECTIONS = ("over", "under", "all")
PLANS = ("auto", "scan", "histogram")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEFAULT_PRIOR_STRENGTH = 10.0

STAT_NAMES = (
    "support", "support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed", "lift_low", "lift_high",
    "p_value", "q_value", "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang",
    "mutual_information", "n_feature",
)
SELECT_NAMES = ("$field", "$value", "$feature_id")
DEFAULT_SELECT = ["$field", "$value", "$support", "$p", "$p_base", "$lift", "$lift_smoothed", "$p_value"]
KEYS = {"from", "where", "relate", "select", "limit", "order_by", "direction", "min_support", "min_lift",
        "max_p_value", "prior_strength", "include_condition_fields", "plan", "q_values"}

PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("relate", Names(), none=True),
    Param("order_by", Options(ORDER_KEYS), none=True),
    Param("direction", Options(DIRECTIONS)),
    Param("plan", Options(PLANS)),
    Param("limit", Integer(low=1), limit=MAX_LIMIT, none=True),
    Param("min_support", Integer(low=0)),
    Param("min_lift", Real(), none=True),
    Param("max_p_value", Real(0, 1), none=True),
    Param("prior_strength", Real(low=0)),
    Param("q_values", Boolean()),
)
INCLUDE_CONDITION_FIELDS = Param("include_condition_fields", Boolean())

# RelateOrder names that differ from the statistic names: RELATE_ORDER_CONFIDENCE is P(feature | condition),
# "p" (association rules call it confidence; RELATE_ORDER_P would clash with RELATE_ORDER_P_VALUE in Java)
_ORDER_ALIASES = {"confidence": "p"}
_ORDER_PROTO_NAMES = {v: k for k, v in _ORDER_ALIASES.items()}
# RelateHit proto field of each statistic
_STAT_FIELDS = {name: name for name in STAT_NAMES} | {"n_feature": "feature_count"}
_INT_STATS = {"support", "n_feature"}
# a hit's statistics that are floats, in the order of RelateHits.stats' columns
HIT_FLOAT_STATS = tuple(s for s in STAT_NAMES if s not in _INT_STATS)
# RelateHit.stats' keys, in the order the engine has always given them: the table kernel's statistics
# (segsrv._kernels.TABLE_STATISTICS), then support, n_feature, p_value, q_value
STAT_DICT_ORDER = ("support_ratio", "p", "p_base", "p_not", "lift", "lift_smoothed", "lift_low", "lift_high",
                   "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang", "mutual_information",
                   "support", "n_feature", "p_value", "q_value")
_HIT_DICT_HEAD = [HIT_FLOAT_STATS.index(s) for s in STAT_DICT_ORDER[:STAT_DICT_ORDER.index("support")]]
_HIT_DICT_TAIL = [HIT_FLOAT_STATS.index(s) for s in STAT_DICT_ORDER[STAT_DICT_ORDER.index("n_feature") + 1:]]


@dataclass
class RelateQuery:
    where: Condition = field(default_factory=All)
    universe: str | None = None
    relate: list[str] | None = None  # field names or globs; None = every field
    order_by: str | None = None  # None: mutual_information (docs/query.md, "Default order")
    direction: str = "over"
    limit: int | None = None  # None: DEFAULT_LIMIT (or a server's lower maximum)
    min_support: int = 1
    min_lift: float | None = None
    max_p_value: float | None = None
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    exclude_condition_fields: bool = True
    plan: str = "auto"
    q_values: bool = False  # BH q-values (every tested candidate's p-value); implied by order_by q_value
    select: list[str] = field(default_factory=lambda: list(DEFAULT_SELECT))  # the JSON answer's columns

    @property
    def wants_q_values(self) -> bool:
        return bool(self.q_values) or self.order_by == "q_value"

    @property
    def effective_limit(self) -> int:
        return DEFAULT_LIMIT if self.limit is None else self.limit

    def validate(self) -> None:
        check_params(self, PARAMS)
        INCLUDE_CONDITION_FIELDS.check(self.exclude_condition_fields)

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "RelateQuery":
        """`where` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "relate")
        q = cls(where=cond.to_condition(obj.get("where")))
        read_json(obj, q, PARAMS)
        if "include_condition_fields" in obj:
            INCLUDE_CONDITION_FIELDS.check(obj["include_condition_fields"])
            q.exclude_condition_fields = not obj["include_condition_fields"]
        select = obj.get("select") or DEFAULT_SELECT
        if not isinstance(select, list) or not all(isinstance(s, str) for s in select):
            raise QueryError("select: expected a list of strings", [("select", "expected a list of strings")])
        for s in select:
            if s.startswith("$") and s[1:] not in STAT_NAMES and s not in SELECT_NAMES:
                names = ["$" + n for n in STAT_NAMES] + ["$field", "$value"]
                raise QueryError(f"select: unknown statistic {s!r}{suggest(s, names)}", [("select", f"unknown {s!r}")])
        q.select = list(select)
        if "$q_value" in q.select:
            q.q_values = True
        q.validate()
        return q

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.RelateRequest:
        req = pb.RelateRequest(
            snapshot=at.to_proto(), universe=self.universe or "", condition=cond.to_proto(self.where),
            fields=list(self.relate or ()),
            order_by=enum_to_proto(pb.RelateOrder, "RELATE_ORDER_", _ORDER_PROTO_NAMES.get(self.order_by or "", self.order_by)),
            direction=enum_to_proto(pb.RelateDirection, "RELATE_DIRECTION_", self.direction),
            limit=self.limit or 0, min_support=self.min_support, prior_strength=float(self.prior_strength),
            include_condition_fields=not self.exclude_condition_fields,
            plan=enum_to_proto(pb.RelatePlan, "RELATE_PLAN_", self.plan), q_values=bool(self.q_values),
        )
        if self.min_lift is not None:
            req.min_lift = float(self.min_lift)
        if self.max_p_value is not None:
            req.max_p_value = float(self.max_p_value)
        return req

    @staticmethod
    def paths(req: pb.RelateRequest) -> cond.RequestPaths:
        return cond.RequestPaths("condition", ("fields", list(req.fields)))

    @classmethod
    def from_proto(cls, req: pb.RelateRequest, paths: cond.RequestPaths) -> "RelateQuery":
        order = enum_from_proto(pb.RelateOrder, "RELATE_ORDER_", req.order_by, None, "order_by")
        return cls(
            where=cond.from_proto(req.condition if req.HasField("condition") else None, paths),
            universe=req.universe or None,
            relate=list(req.fields) or None,
            order_by=None if order is None else _ORDER_ALIASES.get(order, order),
            direction=enum_from_proto(pb.RelateDirection, "RELATE_DIRECTION_", req.direction, "over", "direction"),
            limit=req.limit or None,
            min_support=req.min_support if req.HasField("min_support") else 1,
            min_lift=req.min_lift if req.HasField("min_lift") else None,
            max_p_value=req.max_p_value if req.HasField("max_p_value") else None,
            prior_strength=req.prior_strength if req.HasField("prior_strength") else DEFAULT_PRIOR_STRENGTH,
            exclude_condition_fields=not req.include_condition_fields,
            plan=enum_from_proto(pb.RelatePlan, "RELATE_PLAN_", req.plan, "auto", "plan"),
            q_values=req.q_values,
        )


def hit_columns(select: list[str]) -> list[str]:
    """A hit's JSON keys: `$field` and `$value` first, selected or not, so that every hit names its feature
    (a field-name column alone is null on the hits of other fields), then the rest of `select` in its order."""
    return ["$field", "$value"] + [s for s in select if s not in ("$field", "$value")]


@dataclass
class RelateHit:
    feature_id: int | None  # None when the hit came over gRPC
    field: str
    value: str
    stats: dict[str, float]

    def __getattr__(self, name):
        try:
            return self.__dict__["stats"][name]
        except KeyError:
            raise AttributeError(name) from None


class RelateHits(Sequence):
    """A Relate's hits as columns, as the engine computes them, read as a sequence of RelateHit (built on
    first access): the gRPC answer and the privacy floor read the columns, so a server builds no object
    per hit. stats: float64[k, len(HIT_FLOAT_STATS)], columns in that order; support and n_feature:
    int64[k]; feature_ids: int64[k]; fields, values: k names."""

    __slots__ = ("feature_ids", "fields", "values", "stats", "support", "n_feature", "_list")

    def __init__(self, feature_ids: np.ndarray, fields: list[str], values: list[str], stats: np.ndarray,
                 support: np.ndarray, n_feature: np.ndarray):
        self.feature_ids, self.fields, self.values = feature_ids, fields, values
        self.stats, self.support, self.n_feature = stats, support, n_feature
        self._list: list[RelateHit] | None = None

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, i):
        return self.as_list()[i]

    def __iter__(self):
        return iter(self.as_list())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self.as_list() == list(other)

    def __repr__(self) -> str:
        return f"RelateHits({self.as_list()!r})"

    def as_list(self) -> list[RelateHit]:
        if self._list is None:
            rows = self.stats.tolist()
            self._list = [  # the statistics in STAT_DICT_ORDER
                RelateHit(fid, f, v, dict(zip(STAT_DICT_ORDER, [row[j] for j in _HIT_DICT_HEAD] + [s, nf]
                                              + [row[j] for j in _HIT_DICT_TAIL])))
                for fid, f, v, row, s, nf in zip(self.feature_ids.tolist(), self.fields, self.values, rows,
                                                 self.support.tolist(), self.n_feature.tolist())]
        return self._list

    def take(self, keep: np.ndarray) -> "RelateHits":
        """The hits at positions `keep` (int array), in that order."""
        idx = keep.tolist()
        return RelateHits(self.feature_ids[keep], [self.fields[i] for i in idx], [self.values[i] for i in idx],
                          self.stats[keep], self.support[keep], self.n_feature[keep])

    def wire_bytes(self) -> bytes:
        """The hits as RelateResponse's repeated `hits` on the wire, for the response's MergeFromString: one
        kernel pass (segsrv._kernels.encode_messages) instead of ~20 attribute assignments per hit through
        the protobuf runtime."""
        encode, layout = _hits_encoder()
        ints = np.empty((len(self.fields), 2), dtype=np.int64)
        ints[:, 0], ints[:, 1] = self.support, self.n_feature
        return encode(layout, (self.fields, self.values), ints, np.ascontiguousarray(self.stats, dtype=np.float64))


_ENCODER: tuple | None = None


def _hits_encoder() -> tuple:
    """(segsrv._kernels.encode_messages, the WireLayout of RelateResponse.hits), loaded on a server's first
    answer: ops imports no compiled kernels, so a client (which only reads answers) never loads them."""
    global _ENCODER
    if _ENCODER is None:
        from .._kernels import WireLayout, encode_messages

        fields = pb.RelateHit.DESCRIPTOR.fields_by_name  # the field numbers, from the generated descriptor
        _ENCODER = (encode_messages, WireLayout(
            pb.RelateResponse.DESCRIPTOR.fields_by_name["hits"].number,
            text_fields=[fields[name].number for name in ("field", "value")],
            int_fields=[fields[_STAT_FIELDS[name]].number for name in ("support", "n_feature")],
            double_fields=[fields[_STAT_FIELDS[name]].number for name in HIT_FLOAT_STATS]))
    return _ENCODER


@dataclass
class RelateResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int
    n_condition: int
    n_candidates: int
    n_matching: int  # candidates passing every filter (hits is the first `limit` of them)
    plan: str
    hits: Sequence[RelateHit]  # the engine's: RelateHits
    elapsed_ms: float
    suppressed: bool = False  # the condition is below the privacy floor: no hits
    suppressed_hits: int = 0  # hits dropped by the privacy floor

    def to_json(self, select: list[str] | None = None) -> dict:
        rows = []
        for hit in self.hits:
            row = {}
            for s in hit_columns(select or DEFAULT_SELECT):
                if s == "$field":
                    row[s] = hit.field
                elif s == "$value":
                    row[s] = hit.value
                elif s == "$feature_id":
                    row[s] = hit.feature_id
                elif s.startswith("$"):
                    row[s] = json_number(hit.stats[s[1:]])
                else:
                    row[s] = hit.value if hit.field == s else None
            rows.append(row)
        out = {
            "snapshot": self.snapshot, "version": self.version, "from": self.universe, "n_rows": self.n_rows,
            "n_condition": self.n_condition, "n_candidates": self.n_candidates, "n_matching": self.n_matching,
            "plan": self.plan, "elapsed_ms": round(self.elapsed_ms, 3), "hits": rows,
        }
        if self.suppressed or self.suppressed_hits:  # the server's privacy floor (docs/server.md)
            out["suppressed"] = bool(self.suppressed)
            out["suppressed_hits"] = int(self.suppressed_hits)
        return out

    def to_proto(self, server_ms: float) -> pb.RelateResponse:
        resp = pb.RelateResponse(
            info=response_info(self, server_ms), universe=self.universe, row_count=self.n_rows,
            condition_count=self.n_condition, candidate_count=self.n_candidates, matching_count=self.n_matching,
            plan=enum_to_proto(pb.RelatePlan, "RELATE_PLAN_", self.plan),  # "none" (nothing counted) -> UNSPECIFIED
            suppressed=self.suppressed, suppressed_hit_count=self.suppressed_hits,
        )
        if isinstance(self.hits, RelateHits):
            if len(self.hits):
                resp.MergeFromString(self.hits.wire_bytes())
            return resp
        add_hit = resp.hits.add  # built in place: a list of RelateHit messages would be copied in again
        for h in self.hits:
            kw = dict(h.stats)  # STAT_NAMES, which are RelateHit's fields but for n_feature
            kw["support"], kw["feature_count"] = int(kw["support"]), int(kw.pop("n_feature"))
            add_hit(field=h.field, value=h.value, **kw)
        return resp

    @classmethod
    def from_proto(cls, resp: pb.RelateResponse) -> "RelateResult":
        hits = []
        for h in resp.hits:
            stats = {name: (int if name in _INT_STATS else float)(getattr(h, attr)) for name, attr in _STAT_FIELDS.items()}
            hits.append(RelateHit(None, h.field, h.value, stats))
        return cls(
            snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
            n_rows=resp.row_count, n_condition=resp.condition_count, n_candidates=resp.candidate_count,
            n_matching=resp.matching_count,
            plan=enum_from_proto(pb.RelatePlan, "RELATE_PLAN_", resp.plan, "none", "plan"),
            hits=hits, elapsed_ms=resp.info.server_time_ms, suppressed=resp.suppressed,
            suppressed_hits=resp.suppressed_hit_count,
        )
