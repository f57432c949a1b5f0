"""Assign: which catalog segments a customer is in, and how likely the others are.

JSON form (the CLI's and the client's): {"ids": [external ids]} for known customers (a batch), or
{"features": {field: value} or [(field, value), ...]} for a new customer; plus "from" (the universe),
"include_propensities", "propensity_method" ("logistic", the default, or "factorized"), "propensity_l2"
(logistic; absent: chosen by cross-validation), "prior_strength", "max_p_value" (factorized only). Answer {"snapshot", "version", "universe",
"assignments": [{"id", "found", "primary_segment", "segments": [{"segment", "member", "propensity",
"segment_size", "share", "priority"}]}]} (docs/segments.md): members first (by priority), then, with
include_propensities only, the other segments with their propensity (None for members).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..errors import LimitExceededError
from ..v1 import condition_pb2
from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, enum_from_proto, enum_to_proto, response_info
from .conditions import value_text
from .params import Boolean, Options, Param, Real, Text, bad, check_keys, check_params, read_json
from .predict import DEFAULT_MAX_P_VALUE, DEFAULT_PRIOR_STRENGTH, L2_RANGE  # the propensity models' defaults, l2 bounds

MAX_BATCH = 100_000
MAX_FEATURES = 10_000
KEYS = {"ids", "features", "from", "include_propensities", "propensity_method", "propensity_l2", "prior_strength",
        "max_p_value"}
PROPENSITY_METHODS = ("factorized", "logistic")
DEFAULT_PROPENSITY_METHOD = "logistic"  # the default method of Predict, ScoreSegment and Evaluate too
DEFAULT_PROPENSITY_L2 = None  # logistic: chosen by cross-validation

PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("include_propensities", Boolean()),
    Param("propensity_method", Options(PROPENSITY_METHODS)),
    Param("propensity_l2", L2_RANGE, none=True, hint=" (absent: chosen by cross-validation)"),  # Predict's bounds
    Param("prior_strength", Real(low=0, open="low")),
    Param("max_p_value", Real(0, 1, open="low")),
)


def _ids(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise bad("ids", f"expected a list of ids, got {value!r}")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (str, numbers.Integral)):
            raise bad(f"ids[{i}]", f"expected an id (a string or an integer), got {x!r}")
    return list(value)


def _features(value) -> list[tuple[str, str]] | None:
    """{field: value} or [(field, value), ...] -> pairs of text (values as `where` writes them)."""
    if value is None:
        return None
    pairs = list(value.items()) if isinstance(value, dict) else value
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (list, tuple)):
        raise bad("features", f"expected {{field: value}} or a list of (field, value) pairs, got {value!r}")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise bad(f"features[{i}]", f"expected a (field, value) pair, got {pair!r}")
        f, v = pair
        if not isinstance(f, str) or not f:
            raise bad(f"features[{i}].field", f"expected a field name, got {f!r}")
        out.append((f, value_text(v, f"features[{i}].value")))
    return out


@dataclass
class AssignQuery:
    universe: str | None = None
    ids: list = field(default_factory=list)  # external ids of known rows
    features: list[tuple[str, str]] | None = None  # a new customer (when ids is empty)
    include_propensities: bool = False
    propensity_method: str = DEFAULT_PROPENSITY_METHOD
    propensity_l2: float | None = DEFAULT_PROPENSITY_L2  # logistic only; None: cross-validated
    prior_strength: float = DEFAULT_PRIOR_STRENGTH  # factorized only
    max_p_value: float = DEFAULT_MAX_P_VALUE  # factorized only

    def validate(self) -> None:
        check_params(self, PARAMS)
        ids = list(self.ids or [])
        if ids and self.features:
            raise bad("features", "give either ids (known customers) or features (a new customer), not both")
        if not ids and self.features is None:
            raise bad("ids", "give the ids of known customers, or the features of a new customer")
        if len(ids) > MAX_BATCH:
            raise LimitExceededError(f"ids: {len(ids)} ids, more than the limit {MAX_BATCH} per call",
                                     [("ids", f"at most {MAX_BATCH}")])
        if self.features is not None and len(self.features) > MAX_FEATURES:
            raise LimitExceededError(f"features: {len(self.features)} features, more than the limit {MAX_FEATURES}",
                                     [("features", f"at most {MAX_FEATURES}")])

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "AssignQuery":
        """An empty universe means "not given" (the client's default); ids are kept as given."""
        check_keys(obj, KEYS, "assign")
        obj = {k: v for k, v in obj.items() if not (k == "from" and v == "")}
        q = cls(ids=_ids(obj.get("ids")), features=_features(obj.get("features")))
        read_json(obj, q, PARAMS)
        q.validate()
        return q

    def to_json(self) -> dict:
        out = {"ids": list(self.ids), "from": self.universe, "include_propensities": self.include_propensities,
               "propensity_method": self.propensity_method, "propensity_l2": self.propensity_l2,
               "prior_strength": self.prior_strength, "max_p_value": self.max_p_value}
        if self.features is not None:
            out["features"] = [list(p) for p in self.features]
        return out

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.AssignRequest:
        """propensity_method, propensity_l2, prior_strength and max_p_value are sent when they differ from the
        defaults (unset: the server's)."""
        req = pb.AssignRequest(snapshot=at.to_proto(), universe=self.universe or "",
                               ids=[str(i) for i in self.ids or ()],
                               features=[condition_pb2.Term(field=str(f), value=value_text(v))
                                         for f, v in self.features or ()],
                               include_propensities=bool(self.include_propensities))
        if self.propensity_method != DEFAULT_PROPENSITY_METHOD:
            req.propensity_method = enum_to_proto(pb.PredictMethod, "PREDICT_METHOD_", self.propensity_method)
            if not req.propensity_method:  # a name the enum lacks must not become "unset" (the default)
                PARAMS[2].check(self.propensity_method)
        if self.propensity_l2 is not None:
            req.propensity_l2 = float(self.propensity_l2)
        if self.prior_strength != DEFAULT_PRIOR_STRENGTH:
            req.prior_strength = float(self.prior_strength)
        if self.max_p_value != DEFAULT_MAX_P_VALUE:
            req.max_p_value = float(self.max_p_value)
        return req

    @staticmethod
    def paths(req: pb.AssignRequest) -> cond.RequestPaths:
        """No condition: the root is `ids`; from_proto records features[i].field / .value."""
        return cond.RequestPaths("ids")

    @classmethod
    def from_proto(cls, req: pb.AssignRequest, paths: cond.RequestPaths) -> "AssignQuery":
        if req.ids and req.features:
            raise bad("features", "give either ids (known customers) or features (a new customer), not both")
        features = None
        if not req.ids:
            if not req.features:
                raise bad("ids", "give the ids of known customers, or the features of a new customer")
            features = []
            for i, t in enumerate(req.features):
                paths.add_term(t.field, t.value, f"features[{i}]")
                features.append((t.field, t.value))
        return cls(universe=req.universe or None, ids=list(req.ids), features=features,
                   include_propensities=bool(req.include_propensities),
                   propensity_method=enum_from_proto(pb.PredictMethod, "PREDICT_METHOD_", req.propensity_method,
                                                     DEFAULT_PROPENSITY_METHOD, "propensity_method"),
                   propensity_l2=req.propensity_l2 if req.HasField("propensity_l2") else DEFAULT_PROPENSITY_L2,
                   prior_strength=req.prior_strength if req.HasField("prior_strength") else DEFAULT_PRIOR_STRENGTH,
                   max_p_value=req.max_p_value if req.HasField("max_p_value") else DEFAULT_MAX_P_VALUE)


# --- the answer ----------------------------------------------------------------------


@dataclass(frozen=True)
class Membership:
    segment: str
    member: bool
    segment_size: int
    share: float
    priority: int
    propensity: float | None = None  # P(member) for non-members (include_propensities)

    def to_json(self) -> dict:
        return {"segment": self.segment, "member": self.member,
                "propensity": None if self.member else self.propensity,
                "segment_size": int(self.segment_size), "share": float(self.share), "priority": int(self.priority)}

    def to_proto(self) -> pb.SegmentMembership:
        return pb.SegmentMembership(segment=self.segment, member=self.member, propensity=self.propensity or 0.0,
                                    segment_size=int(self.segment_size), share=float(self.share),
                                    priority=int(self.priority))

    @classmethod
    def from_proto(cls, msg: pb.SegmentMembership) -> "Membership":
        """Non-members are only sent with include_propensities, so their propensity is always meaningful."""
        return cls(msg.segment, msg.member, int(msg.segment_size), msg.share, int(msg.priority),
                   None if msg.member else msg.propensity)


@dataclass
class Assignment:
    id: object  # external id, or None for a feature-list customer
    found: bool
    # ranked: the member segments; with include_propensities also every other segment with its
    # propensity; empty when not found
    segments: list[Membership]
    primary_segment: str | None

    def to_json(self) -> dict:
        return {"id": "" if self.id is None else str(self.id), "found": self.found,
                "primary_segment": self.primary_segment or None,
                "segments": [m.to_json() for m in self.segments]}

    def to_proto(self) -> pb.Assignment:
        return pb.Assignment(id="" if self.id is None else str(self.id), found=self.found,
                             primary_segment=self.primary_segment or "",
                             segments=[m.to_proto() for m in self.segments])

    @classmethod
    def from_proto(cls, msg: pb.Assignment) -> "Assignment":
        """An empty id (a feature-list customer) -> None; ids come back as text."""
        return cls(msg.id or None, msg.found, [Membership.from_proto(m) for m in msg.segments],
                   msg.primary_segment or None)


@dataclass
class AssignResult:
    snapshot: str
    version: str
    universe: str
    n_segments: int
    assignments: list[Assignment]
    elapsed_ms: float
    suppressed_segments: int = 0  # catalog segments left out by the privacy floor (size or rest small)

    def to_json(self) -> dict:
        out = {"snapshot": self.snapshot, "version": self.version, "universe": self.universe,
               "assignments": [a.to_json() for a in self.assignments]}
        if self.suppressed_segments:  # the server's privacy floor (docs/server.md)
            out["suppressed_segments"] = int(self.suppressed_segments)
        return out

    def to_proto(self, server_ms: float) -> pb.AssignResponse:
        return pb.AssignResponse(info=response_info(self, server_ms), universe=self.universe,
                                 assignments=[a.to_proto() for a in self.assignments],
                                 suppressed_segment_count=int(self.suppressed_segments))

    @classmethod
    def from_proto(cls, resp: pb.AssignResponse) -> "AssignResult":
        """n_segments is not sent: the segments named in the answer (every catalog segment of the
        universe when propensities were included; else only those some customer is in)."""
        assignments = [Assignment.from_proto(a) for a in resp.assignments]
        names = {m.segment for a in assignments for m in a.segments}
        return cls(resp.info.snapshot_name, resp.info.snapshot_version, resp.universe, len(names), assignments,
                   resp.info.server_time_ms, int(resp.suppressed_segment_count))
