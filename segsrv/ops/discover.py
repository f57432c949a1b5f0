"""Discover: the segments that emerge from co-occurrence (DESIGN.md section 9, docs/discover.md).

JSON form::

    {"from": universe, "within": condition, "fields": [names or globs], "max_length": 3,
     "min_support": rows, "min_lift": x, "limit": 20, "target": condition, "direction": "both",
     "field_weights": {"name or glob": weight}, "k": personas, "max_overlap": 0.5,
     "max_excess_overlap": 0.3, "max_q_value": 0.05, "describe": 3, "max_candidates": n,
     "adjust_for_activity": true}

Without ``target`` the search is unsupervised (productive conjunctions of two or more
features); with it, subgroup discovery (conjunctions of one or more features where the
target's rate is high or low). The answer::

    {"snapshot", "version", "from", "n_rows", "candidates", "tested", "min_support", "min_lift",
     "elapsed_ms", "segments": [{"name", "terms": [[field, value], ...], "where", "support",
     "share", "lift", "split_lift", "adjusted_lift", "p_value", "q_value", "score", "description",
     "related": [{"field", "value", "support", "lift"}], and with a target "target_support",
     "target_rate", "wracc", "direction"}], "target": condition, "target_count",
     "segmentation": {"personas": [{"segment", "name", "primary", "gain"}], "covered",
     "coverage", "overlap", "other"}}

(``suppressed``: true when the privacy floor hid the answer.) ``to_catalog`` turns the answer
into a segment catalog (TOML) that ``segsrv segments apply`` takes as it is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import LimitExceededError, QueryError, Violation
from ..v1 import condition_pb2 as cpb
from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, enum_from_proto, enum_to_proto, response_info
from .conditions import All, And, Condition, Term
from .params import Boolean, Integer, Options, Param, Real, Text, bad, check_keys, check_params, json_number, read_json
from .profile import MAX_FIELD_PATTERNS, check_fields

DIRECTIONS = ("both", "high", "low")
DEFAULT_MAX_LENGTH = 3
MAX_LENGTH = 5
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
MAX_K = 20
DEFAULT_MAX_OVERLAP = 0.5
DEFAULT_MAX_EXCESS_OVERLAP = 0.3  # without a target
DEFAULT_MAX_TARGET_EXCESS_OVERLAP = 0.5  # with one
DEFAULT_MAX_Q_VALUE = 0.05
DEFAULT_DESCRIBE = 3
MAX_DESCRIBE = 20
DEFAULT_MIN_SHARE = 0.01  # min_support not given: 1% of the rows searched
DEFAULT_MIN_LIFT = 1.25  # unsupervised: over the best split (for a pair: over independence)
DEFAULT_MIN_TARGET_LIFT = 1.2  # supervised: target rate over the overall rate (low: at most 1 / 1.2)
MAX_WEIGHT = 1e6

KEYS = {"from", "within", "fields", "max_length", "min_support", "min_lift", "limit", "target", "direction",
        "field_weights", "k", "max_overlap", "max_excess_overlap", "max_q_value", "describe", "max_candidates",
        "adjust_for_activity"}

PARAMS = (
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("max_length", Integer(low=1), limit=MAX_LENGTH),
    Param("min_support", Integer(low=1), none=True),
    Param("min_lift", Real(low=1), none=True, hint=" (1 keeps every lift; the low direction uses 1 / min_lift)"),
    Param("limit", Integer(low=1), limit=MAX_LIMIT),
    Param("direction", Options(DIRECTIONS)),
    Param("k", Integer(low=0), limit=MAX_K),
    Param("max_overlap", Real(0, 1, open="low")),
    Param("max_excess_overlap", Real(0, 1, open="low"), none=True),
    Param("max_q_value", Real(0, 1, open="low")),
    Param("describe", Integer(low=0), limit=MAX_DESCRIBE),
    Param("max_candidates", Integer(low=1), none=True),
    Param("adjust_for_activity", Boolean()),
)


def _check_weights(weights) -> None:
    if not isinstance(weights, dict):
        raise QueryError("field_weights: expected an object {field name or glob: weight}",
                         [("field_weights", "expected an object")])
    if len(weights) > MAX_FIELD_PATTERNS:
        raise LimitExceededError(f"field_weights: {len(weights)} entries exceed the maximum {MAX_FIELD_PATTERNS}",
                                 [("field_weights", f"at most {MAX_FIELD_PATTERNS} entries")])
    for pat, w in weights.items():
        if not isinstance(pat, str) or not pat:
            raise QueryError(f"field_weights: bad field name or glob {pat!r}",
                             [Violation("field_weights", f"bad pattern {pat!r}", "pattern", pat)])
        ok = isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and 0 < w <= MAX_WEIGHT
        if not ok:
            raise QueryError(f"field_weights[{pat!r}]: must be a number within (0, {MAX_WEIGHT:g}], got {w!r}",
                             [(f"field_weights[{pat!r}]", f"must be a number within (0, {MAX_WEIGHT:g}]")])


@dataclass
class DiscoverQuery:
    universe: str | None = None
    within: Condition = field(default_factory=All)
    fields: list[str] | None = None  # candidate fields (names or globs); None: every non-identifier field
    max_length: int = DEFAULT_MAX_LENGTH
    min_support: int | None = None  # None: 1% of the rows searched (at least the privacy floor)
    min_lift: float | None = None  # None: DEFAULT_MIN_LIFT / DEFAULT_MIN_TARGET_LIFT
    limit: int = DEFAULT_LIMIT
    target: Condition | None = None  # None: unsupervised
    direction: str = "both"
    field_weights: dict[str, float] = field(default_factory=dict)
    k: int = 0
    max_overlap: float = DEFAULT_MAX_OVERLAP  # Jaccard index
    max_excess_overlap: float | None = None  # overlap beyond chance; None: 0.3 (0.5 with a target)
    max_q_value: float = DEFAULT_MAX_Q_VALUE
    describe: int = DEFAULT_DESCRIBE
    max_candidates: int | None = None  # None: the server's limit
    adjust_for_activity: bool = True  # rank against what the members' activity predicts (docs/discover.md)

    def validate(self) -> None:
        check_fields(self.fields)
        _check_weights(self.field_weights)
        check_params(self, PARAMS)
        if self.target is None and self.max_length < 2:
            raise bad("max_length", f"must be >= 2 without a target (a segment has two or more features), "
                                    f"got {self.max_length}")
        if self.k > self.limit:
            raise bad("k", f"must be at most limit ({self.limit}): personas are chosen among the listed "
                           f"segments, got {self.k}")

    @property
    def supervised(self) -> bool:
        return self.target is not None

    @property
    def effective_max_excess_overlap(self) -> float:
        if self.max_excess_overlap is not None:
            return self.max_excess_overlap
        return DEFAULT_MAX_TARGET_EXCESS_OVERLAP if self.supervised else DEFAULT_MAX_EXCESS_OVERLAP

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "DiscoverQuery":
        """`within` and `target` take any condition form; a target may also be "field=value"."""
        check_keys(obj, KEYS, "discover")
        fields = obj.get("fields")
        if isinstance(fields, str):
            fields = [fields]
        if fields is not None and not isinstance(fields, list):
            raise QueryError("fields: expected a list of field names or globs", [("fields", "expected a list")])
        target = obj.get("target")
        if isinstance(target, str):
            target = parse_target(target)
        weights = obj.get("field_weights")
        q = cls(within=cond.to_condition(obj.get("within"), "within"), fields=fields or None,
                target=None if target is None else cond.to_condition(target, "target"),
                field_weights=dict(weights) if isinstance(weights, dict) else ({} if weights is None else weights))
        if isinstance(q.target, All):
            raise bad("target", "an empty condition is not a target (every row would have it)")
        read_json(obj, q, PARAMS)
        q.validate()
        return q

    def to_json(self) -> dict:
        return {"from": self.universe, "within": cond.where_json(self.within), "fields": self.fields,
                "max_length": self.max_length, "min_support": self.min_support, "min_lift": self.min_lift,
                "limit": self.limit, "target": None if self.target is None else cond.where_json(self.target),
                "direction": self.direction, "field_weights": dict(self.field_weights), "k": self.k,
                "max_overlap": self.max_overlap, "max_excess_overlap": self.max_excess_overlap,
                "max_q_value": self.max_q_value, "describe": self.describe,
                "max_candidates": self.max_candidates, "adjust_for_activity": self.adjust_for_activity}

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.DiscoverRequest:
        req = pb.DiscoverRequest(
            snapshot=at.to_proto(), universe=self.universe or "", fields=list(self.fields or ()),
            max_length=int(self.max_length), min_support=int(self.min_support or 0), limit=int(self.limit),
            direction=enum_to_proto(pb.DiscoverDirection, "DISCOVER_DIRECTION_", self.direction),
            field_weights=[pb.FieldWeight(field=p, weight=float(w)) for p, w in self.field_weights.items()],
            k=int(self.k), max_overlap=float(self.max_overlap),
            max_q_value=float(self.max_q_value),
            describe=int(self.describe), max_candidates=int(self.max_candidates or 0))
        if not isinstance(self.within, All):
            req.within.CopyFrom(cond.to_proto(self.within))
        if self.target is not None:
            req.target.CopyFrom(cond.to_proto(self.target))
        if self.min_lift is not None:
            req.min_lift = float(self.min_lift)
        if not self.adjust_for_activity:
            req.adjust_for_activity = False
        if self.max_excess_overlap is not None:
            req.max_excess_overlap = float(self.max_excess_overlap)
        return req

    @staticmethod
    def paths(req: pb.DiscoverRequest) -> cond.RequestPaths:
        return cond.RequestPaths("within", ("fields", list(req.fields)))

    @classmethod
    def from_proto(cls, req: pb.DiscoverRequest, paths: cond.RequestPaths) -> "DiscoverQuery":
        """0 means the default for max_length, min_support, limit and max_candidates; unset optionals
        their defaults; negative numbers and empty names are refused here, the rest by validate()."""
        for key in ("max_length", "min_support", "limit", "k", "max_candidates"):
            if getattr(req, key) < 0:
                raise bad(key, f"must be >= 0 (0 means the default), got {getattr(req, key)}")
        for i, pat in enumerate(req.fields):
            if not pat:
                raise bad(f"fields[{i}]", "empty field name or glob")
        weights: dict[str, float] = {}
        for i, fw in enumerate(req.field_weights):
            if not fw.field:
                raise bad(f"field_weights[{i}].field", "empty field name or glob")
            if not (math.isfinite(fw.weight) and 0 < fw.weight <= MAX_WEIGHT):
                raise bad(f"field_weights[{i}].weight", f"must be a number within (0, {MAX_WEIGHT:g}], got {fw.weight!r}")
            weights[fw.field] = fw.weight
        target = None
        if req.HasField("target"):
            target = cond.from_proto(req.target, paths, "target")
            if isinstance(target, All):
                raise bad("target", "an empty condition is not a target (every row would have it)")
        return cls(
            universe=req.universe or None,
            within=cond.from_proto(req.within if req.HasField("within") else None, paths),
            fields=list(req.fields) or None, max_length=req.max_length or DEFAULT_MAX_LENGTH,
            min_support=req.min_support or None, min_lift=req.min_lift if req.HasField("min_lift") else None,
            limit=req.limit or DEFAULT_LIMIT, target=target,
            direction=enum_from_proto(pb.DiscoverDirection, "DISCOVER_DIRECTION_", req.direction, "both", "direction"),
            field_weights=weights, k=req.k,
            max_overlap=req.max_overlap if req.HasField("max_overlap") else DEFAULT_MAX_OVERLAP,
            max_excess_overlap=req.max_excess_overlap if req.HasField("max_excess_overlap") else None,
            max_q_value=req.max_q_value if req.HasField("max_q_value") else DEFAULT_MAX_Q_VALUE,
            describe=req.describe if req.HasField("describe") else DEFAULT_DESCRIBE,
            max_candidates=req.max_candidates or None,
            adjust_for_activity=req.adjust_for_activity if req.HasField("adjust_for_activity") else True,
        )


def parse_target(text: str) -> Condition:
    """"field=value" (the CLI's --target) -> the term; a bare "field" is refused with a hint."""
    if not isinstance(text, str) or "=" not in text:
        raise bad("target", f"expected field=value (e.g. churned=true) or a condition, got {text!r}")
    name, value = text.split("=", 1)
    name, value = name.strip(), value.strip()
    if not name or not value:
        raise bad("target", f"expected field=value (e.g. churned=true), got {text!r}")
    return Term(name, value)


def parse_weight(text: str) -> tuple[str, float]:
    """"field=weight" (the CLI's --weight) -> (field or glob, weight)."""
    name, sep, value = (text or "").partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not sep or not name.strip() or not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise bad("field_weights", f"expected FIELD=WEIGHT with a weight within (0, {MAX_WEIGHT:g}], got {text!r}")
    return name.strip(), weight


# --- the answer ----------------------------------------------------------------------


@dataclass
class SegmentFeature:
    field: str
    value: str
    support: int
    lift: float

    def to_json(self) -> dict:
        return {"field": self.field, "value": self.value, "support": int(self.support),
                "lift": json_number(float(self.lift))}

    def to_proto(self) -> pb.SegmentFeature:
        return pb.SegmentFeature(term=cpb.Term(field=self.field, value=self.value), support=int(self.support),
                                 lift=float(self.lift))

    @classmethod
    def from_proto(cls, msg: pb.SegmentFeature) -> "SegmentFeature":
        return cls(msg.term.field, msg.term.value, int(msg.support), msg.lift)


@dataclass
class DiscoveredSegment:
    terms: list[tuple[str, str]]
    support: int
    share: float
    lift: float  # unsupervised: over independence of the terms; supervised: target rate / overall rate
    split_lift: float  # over the best split (unsupervised) or the best generalisation (supervised)
    p_value: float
    q_value: float
    score: float
    description: str = ""
    name: str = ""
    related: list[SegmentFeature] = field(default_factory=list)
    target_support: int = 0
    target_rate: float = 0.0
    wracc: float = 0.0
    direction: str = ""  # supervised: "high" / "low"
    adjusted_lift: float = 0.0  # over what the members' activity predicts (docs/discover.md); NaN: not adjusted

    @property
    def condition(self) -> Condition:
        terms = [Term(f, v) for f, v in self.terms]
        return terms[0] if len(terms) == 1 else And(terms)

    def to_json(self) -> dict:
        out = {"name": self.name, "terms": [[f, v] for f, v in self.terms], "where": cond.where_json(self.condition),
               "support": int(self.support), "share": json_number(float(self.share)),
               "lift": json_number(float(self.lift)), "split_lift": json_number(float(self.split_lift)),
               "adjusted_lift": json_number(float(self.adjusted_lift)),
               "p_value": json_number(float(self.p_value)), "q_value": json_number(float(self.q_value)),
               "score": json_number(float(self.score)), "description": self.description,
               "related": [r.to_json() for r in self.related]}
        if self.direction:
            out.update(target_support=int(self.target_support), target_rate=json_number(float(self.target_rate)),
                       wracc=json_number(float(self.wracc)), direction=self.direction)
        return out

    def to_proto(self) -> pb.DiscoveredSegment:
        return pb.DiscoveredSegment(
            terms=[cpb.Term(field=f, value=v) for f, v in self.terms], support=int(self.support),
            lift=float(self.lift), p_value=float(self.p_value), condition=cond.to_proto(self.condition),
            share=float(self.share), split_lift=float(self.split_lift), q_value=float(self.q_value),
            description=self.description, related=[r.to_proto() for r in self.related], name=self.name,
            score=float(self.score), target_support=int(self.target_support), target_rate=float(self.target_rate),
            wracc=float(self.wracc), direction=self.direction, adjusted_lift=float(self.adjusted_lift))

    @classmethod
    def from_proto(cls, msg: pb.DiscoveredSegment) -> "DiscoveredSegment":
        return cls(terms=[(t.field, t.value) for t in msg.terms], support=int(msg.support), share=msg.share,
                   lift=msg.lift, split_lift=msg.split_lift, p_value=msg.p_value, q_value=msg.q_value,
                   score=msg.score, description=msg.description, name=msg.name,
                   related=[SegmentFeature.from_proto(r) for r in msg.related],
                   target_support=int(msg.target_support), target_rate=msg.target_rate, wracc=msg.wracc,
                   direction=msg.direction, adjusted_lift=msg.adjusted_lift)


@dataclass
class Persona:
    segment: int  # index into DiscoverResult.segments
    primary: int  # members whose primary segment it is
    gain: int  # members it added to the cover when chosen

    def to_proto(self) -> pb.Persona:
        return pb.Persona(segment=self.segment, primary=int(self.primary), gain=int(self.gain))


@dataclass
class Segmentation:
    personas: list[Persona]
    covered: int
    coverage: float
    overlap: int
    other: int

    def to_json(self, segments: list[DiscoveredSegment]) -> dict:
        return {"personas": [{"segment": p.segment, "name": segments[p.segment].name, "primary": int(p.primary),
                              "gain": int(p.gain)} for p in self.personas],
                "covered": int(self.covered), "coverage": json_number(float(self.coverage)),
                "overlap": int(self.overlap), "other": int(self.other)}

    def to_proto(self) -> pb.Segmentation:
        return pb.Segmentation(personas=[p.to_proto() for p in self.personas], covered=int(self.covered),
                               coverage=float(self.coverage), overlap=int(self.overlap), other=int(self.other))

    @classmethod
    def from_proto(cls, msg: pb.Segmentation) -> "Segmentation":
        return cls([Persona(p.segment, int(p.primary), int(p.gain)) for p in msg.personas], int(msg.covered),
                   msg.coverage, int(msg.overlap), int(msg.other))


@dataclass
class DiscoverResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int  # rows searched
    candidates: int
    tested: int
    segments: list[DiscoveredSegment]
    elapsed_ms: float
    min_support: int = 0  # what the search used (after defaults and the privacy floor)
    min_lift: float = 0.0
    target: Condition | None = None
    target_count: int = 0
    segmentation: Segmentation | None = None
    suppressed: bool = False

    def to_json(self) -> dict:
        out = {"snapshot": self.snapshot, "version": self.version, "from": self.universe, "n_rows": int(self.n_rows),
               "candidates": int(self.candidates), "tested": int(self.tested), "min_support": int(self.min_support),
               "min_lift": json_number(float(self.min_lift)), "elapsed_ms": round(float(self.elapsed_ms), 3),
               "segments": [s.to_json() for s in self.segments]}
        if self.target is not None:
            out["target"] = cond.where_json(self.target)
            out["target_count"] = int(self.target_count)
        if self.segmentation is not None:
            out["segmentation"] = self.segmentation.to_json(self.segments)
        if self.suppressed:
            out["suppressed"] = True
        return out

    def to_proto(self, server_ms: float) -> pb.DiscoverResponse:
        resp = pb.DiscoverResponse(info=response_info(self, server_ms), segments=[s.to_proto() for s in self.segments],
                                   universe=self.universe, row_count=int(self.n_rows), candidates=int(self.candidates),
                                   tested=int(self.tested), target_count=int(self.target_count),
                                   suppressed=self.suppressed, min_support=int(self.min_support),
                                   min_lift=float(self.min_lift))
        if self.segmentation is not None:
            resp.segmentation.CopyFrom(self.segmentation.to_proto())
        return resp

    @classmethod
    def from_proto(cls, resp: pb.DiscoverResponse) -> "DiscoverResult":
        """The target is not sent back (the caller knows its request)."""
        return cls(snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
                   n_rows=int(resp.row_count), candidates=int(resp.candidates), tested=int(resp.tested),
                   segments=[DiscoveredSegment.from_proto(s) for s in resp.segments],
                   elapsed_ms=resp.info.server_time_ms, target_count=int(resp.target_count),
                   min_support=int(resp.min_support), min_lift=resp.min_lift,
                   segmentation=Segmentation.from_proto(resp.segmentation) if resp.HasField("segmentation") else None,
                   suppressed=resp.suppressed)

    # -- the catalog ---------------------------------------------------------------------

    def catalog(self, personas_only: bool = False) -> dict:
        """The segments as a catalog {"universe", "segments": {name: entry}} (segsrv.engine.catalog's
        form). Priorities follow the list (the first segment highest); with a segmentation, its
        personas only when `personas_only`, with priorities that make Assign's primary segment
        the segmentation's (docs/discover.md)."""
        chosen = list(range(len(self.segments)))
        if personas_only and self.segmentation is not None:
            chosen = [p.segment for p in self.segmentation.personas]
        order = primary_order([self.segments[i] for i in chosen])
        entries = {}
        for rank, j in enumerate(order):
            seg = self.segments[chosen[j]]
            entries[seg.name] = {"where": cond.where_json(seg.condition), "description": seg.description,
                                 "priority": len(order) - rank,
                                 "tags": ["discovered", seg.direction or "co-occurrence"]}
        return {"universe": self.universe, "segments": entries}

    def to_catalog(self, personas_only: bool = False) -> str:
        """The catalog as TOML text for `segsrv segments apply`."""
        import tomli_w

        header = (f"# segments discovered by segsrv discover in {self.snapshot} {self.version}, "
                  f"universe {self.universe} ({self.n_rows:,} rows)\n")
        return header + tomli_w.dumps(self.catalog(personas_only))


def primary_order(segments: list[DiscoveredSegment]) -> list[int]:
    """The documented primary-segment rule: a member in several segments belongs first to the one
    with the highest lift (ties: listed first). Returns indices in that order."""
    return sorted(range(len(segments)), key=lambda i: (-segments[i].lift, i))


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


_COMPARISONS = (("<=", "le"), (">=", "ge"), ("<", "lt"), (">", "gt"))


def name_token(text: str) -> str:
    """Text made safe for a catalog name (segsrv.engine.catalog.NAME_PATTERN); a band's comparison in words
    ("<12" -> "lt12")."""
    for op, word in _COMPARISONS:
        text = text.replace(op, word)
    return _NAME_UNSAFE.sub("-", text).strip("-.") or "empty"


def unique_names(bases: list[str]) -> list[str]:
    """Catalog names from proposed ones: at most 100 characters, made unique with a numeric suffix."""
    seen: set[str] = set()
    out = []
    for base in bases:
        base = base.lstrip("-.")[:100] or "segment"
        name, i = base, 1
        while name in seen:
            i += 1
            name = f"{base}_{i}"
        seen.add(name)
        out.append(name)
    return out


def render_text(result: DiscoverResult) -> str:
    """The answer for a terminal: a header, one block per segment, the segmentation."""
    lines = []
    what = (f"target {cond.where_json(result.target)}: {result.target_count:,} of {result.n_rows:,} rows"
            if result.target is not None else f"{result.n_rows:,} rows")
    lines.append(f"{result.snapshot} {result.version} / {result.universe}: {what}; {result.candidates:,} candidate "
                 f"features, {result.tested:,} conjunctions tested, {len(result.segments)} segments "
                 f"({result.elapsed_ms / 1000:.1f} s)")
    if result.suppressed:
        lines.append("(suppressed: fewer rows than the privacy floor)")
    supervised = result.target is not None
    header = ("  #  size       share   lift   target   q        name" if supervised
              else "  #  size       share   lift   split  adjusted q        name")
    lines.append("")
    lines.append(header)
    for i, seg in enumerate(result.segments, 1):
        if supervised:
            lines.append(f"{i:>3}  {seg.support:>9,}  {seg.share:>6.1%}  {seg.lift:>5.2f}  {seg.target_rate:>6.1%}"
                         f"   {seg.q_value:<7.1e}  {seg.name}")
        else:
            lines.append(f"{i:>3}  {seg.support:>9,}  {seg.share:>6.1%}  {seg.lift:>5.2f}  {seg.split_lift:>5.2f}"
                         f"  {seg.adjusted_lift:>6.2f}   {seg.q_value:<7.1e}  {seg.name}")
        lines.append(f"     {seg.description}")
    seg_out = result.segmentation
    if seg_out is not None:
        lines.append("")
        lines.append(f"segmentation: {len(seg_out.personas)} personas cover {seg_out.covered:,} rows "
                     f"({seg_out.coverage:.1%}); {seg_out.overlap:,} in two or more; {seg_out.other:,} other")
        for p in seg_out.personas:
            seg = result.segments[p.segment]
            lines.append(f"  {seg.name}: {p.primary:,} primary members (adds {p.gain:,} to the cover), "
                         f"lift {seg.lift:.2f}")
    return "\n".join(lines) + "\n"
