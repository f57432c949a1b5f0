"""Predict: the probability of each value of a target field within a segment, explained.

JSON keys: from, segment, target, id, evidence, evidence_fields, prior_strength,
min_support, min_support_fraction, max_p_value, method, l2 (logistic; absent: chosen by
cross-validation). `evidence` is
{"field": value, ...} or [["field", value], ...]; `id` a row whose own features are
evidence too. Answer: {"snapshot", "version", "from", "target", "method",
"multi_valued", "n_segment", "evidence", "elapsed_ms", "probabilities": [{"value",
"probability", "base_probability", "normalizer", "factors": [...]}], "regularisation" (logistic:
[{"l2", "cross_validated", "value", "interaction_pairs"}]; factorized: [{"prior_strength", "cross_validated",
"value"}])}. See
docs/predict.md and docs/query.md.

This module also holds what Predict, ScoreSegment and Evaluate share: the methods
and defaults of the model, the parameters common to the three (``COMMON_PARAMS``,
``CONJUNCTION_PARAMS``), the PredictMethod mapping, the request paths and
``row_id_from_text``. Keys the caller did not give stay unset in the proto (the
server then applies the engine's defaults): a query records them in ``given``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import QueryError, UnknownIdError
from ..v1 import condition_pb2
from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, enum_from_proto, enum_to_proto, response_info
from .conditions import All, Condition
from .params import (
    Constraint, Integer, Names, Options, Param, Real, Text, bad, check_keys, check_params, json_number, read_json,
)

METHODS = ("conjunction", "factorized", "logistic")
BULK_METHODS = ("factorized", "logistic")  # the methods ScoreSegment applies in bulk
FACTOR_KINDS = ("conjunction", "lift")
DEFAULT_METHOD = "logistic"  # Predict, ScoreSegment, Evaluate (Assign propensities: the same method)
DEFAULT_PRIOR_STRENGTH = 1.0
# the penalties a caller may give: beyond them a fit's preconditioner over- or underflows (1e-8 leaves a
# 1M-row fit unpenalised in effect; 1e8 leaves every weight ~0)
L2_RANGE = Real(low=1e-8, high=1e8)
DEFAULT_L2 = None  # L2 penalty of the logistic method (scikit-learn's C = 1 / l2); None: chosen by cross-validation
DEFAULT_BULK_METHOD = DEFAULT_METHOD  # ScoreSegment and Evaluate: one default (issue 15)
DEFAULT_MIN_SUPPORT = 30
DEFAULT_MAX_CORRELATION = 0.9
DEFAULT_MIN_SUPPORT_FRACTION = 0.005
DEFAULT_MAX_P_VALUE = 0.001
DEFAULT_MAX_TARGET_VALUES = 64

KEYS = {"from", "segment", "target", "id", "evidence", "evidence_fields", "prior_strength",
        "min_support", "min_support_fraction", "max_p_value", "method", "l2"}


class RowId(Constraint):
    """A row's external id: a non-empty string or an integer."""

    def accepts(self, value) -> bool:
        return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))

    def __str__(self) -> str:
        return "a row id (string or integer)"


# prior_strength, max_target_values, evidence_fields, l2: every operation of the model
COMMON_PARAMS = (
    Param("target", Text("a field name")),
    Param("from", Text("a universe name"), attr="universe", none=True),
    Param("evidence_fields", Names(), none=True),
    Param("prior_strength", Real(low=0, open="low")),
    Param("max_target_values", Integer(low=2)),
    Param("l2", L2_RANGE, none=True, hint=" (absent: chosen by cross-validation)"),
)
# the conjunction method's thresholds (Predict and Evaluate)
CONJUNCTION_PARAMS = (
    Param("min_support", Integer(low=1)),
    Param("min_support_fraction", Real(0, 1)),
    Param("max_p_value", Real(0, 1, open="low")),
    Param("max_correlation", Real(0, 1, open="low")),
)
PARAMS = COMMON_PARAMS + CONJUNCTION_PARAMS + (
    Param("id", RowId(), attr="row_id", none=True),
    Param("method", Options(METHODS)),
)

# engine names of a request's parts -> request paths (Predict, ScoreSegment, Evaluate)
ALIASES = {"target": ["target_field"], "row_id": ["id"], "value": ["target_value"]}


# --- shared by predict, score and evaluate --------------------------------------------


def method_from_proto(number: int, default: str) -> str:
    """PredictMethod -> the method name; unset -> `default` (QueryError "method" when unknown)."""
    return enum_from_proto(pb.PredictMethod, "PREDICT_METHOD_", number, default, "method")


def method_to_proto(name: str | None) -> int:
    return enum_to_proto(pb.PredictMethod, "PREDICT_METHOD_", name)


def name_from_proto(enum_type, prefix: str, number: int) -> str:
    """An answer's enum -> its name; "" for unset or a number this client does not know."""
    try:
        return enum_from_proto(enum_type, prefix, number, "", "")
    except QueryError:
        return ""


def request_paths(req, target: tuple[str, str] | None = None) -> cond.RequestPaths:
    """The request paths of a Predict / ScoreSegment / Evaluate request (condition root `segment`)."""
    return cond.RequestPaths("segment", ("evidence_fields", list(req.evidence_fields)), dict(ALIASES), target)


def segment_from_proto(req, paths: cond.RequestPaths) -> Condition:
    return cond.from_proto(req.segment if req.HasField("segment") else None, paths)


def evidence_fields_from_proto(req) -> list[str] | None:
    fields = list(req.evidence_fields)
    for i, pat in enumerate(fields):
        if not pat:
            raise bad(f"evidence_fields[{i}]", "empty field name or glob")
    return fields or None


def read_target(obj: dict) -> str:
    if obj.get("target") is None:
        raise bad("target", "required")
    return obj["target"]


def sent(query, name: str, default) -> bool:
    """Whether an optional request field is set in the proto: given by the caller, or not the default."""
    return name in query.given or getattr(query, name) != default


# the optional scalar fields of the Predict / Evaluate requests: (name, default, type)
OPTIONAL_FIELDS = (("prior_strength", DEFAULT_PRIOR_STRENGTH, float), ("min_support", DEFAULT_MIN_SUPPORT, int),
                   ("min_support_fraction", DEFAULT_MIN_SUPPORT_FRACTION, float),
                   ("max_p_value", DEFAULT_MAX_P_VALUE, float), ("l2", DEFAULT_L2, float))


def optionals_to_proto(query, req, fields=OPTIONAL_FIELDS) -> None:
    """Set the optional request fields the caller gave (or that differ from the default; None: unset)."""
    for name, default, kind in fields:
        if getattr(query, name) is not None and sent(query, name, default):
            setattr(req, name, kind(getattr(query, name)))


def optionals_from_proto(req, query, fields=OPTIONAL_FIELDS) -> set[str]:
    """Copy the optional fields a request sets onto the query; the names set."""
    given = set()
    for name, _, _ in fields:
        if req.HasField(name):
            setattr(query, name, getattr(req, name))
            given.add(name)
    return given


def given_keys(obj: dict, names) -> frozenset:
    return frozenset(n for n in names if n in obj)


def row_id_from_text(text: str, key_kind: str, universe_name: str, key: str):
    """A request's id (text) -> the universe's key (an int for integer-keyed universes)."""
    if key_kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise UnknownIdError(
                f"id: universe {universe_name!r} has no row with {key} {text!r} (its ids are integers)",
                [("id", f"unknown id {text!r}")],
            ) from None
    return text


def terms_to_proto(pairs) -> list[condition_pb2.Term]:
    return [condition_pb2.Term(field=f, value=v) for f, v in pairs]


def terms_from_proto(terms) -> list[tuple[str, str]]:
    return [(t.field, t.value) for t in terms]


def evidence_from_json(val) -> list[tuple[str, str]]:
    """{"field": value, ...} or [["field", value], ...] -> [(field, value text)]."""
    if val is None:
        return []
    if isinstance(val, dict):
        return [(k, cond.value_text(v, f"evidence.{k}")) for k, v in val.items()]
    if isinstance(val, list):
        out = []
        for i, item in enumerate(val):
            if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str) or not item[0]:
                raise bad(f"evidence[{i}]", f"expected a [field, value] pair, got {item!r}")
            out.append((item[0], cond.value_text(item[1], f"evidence[{i}]")))
        return out
    raise bad("evidence", 'expected {"field": value, ...} or [["field", value], ...]')


# --- the query -------------------------------------------------------------------------

# optional request fields sent only when given (or not the default)
_OPTIONAL = ("prior_strength", "min_support", "min_support_fraction", "max_p_value", "method", "l2")


@dataclass
class PredictQuery:
    target: str
    universe: str | None = None
    segment: Condition = field(default_factory=All)
    row_id: object = None
    evidence: list[tuple[str, str]] = field(default_factory=list)
    evidence_fields: list[str] | None = None
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    min_support: int = DEFAULT_MIN_SUPPORT
    min_support_fraction: float = DEFAULT_MIN_SUPPORT_FRACTION
    max_p_value: float = DEFAULT_MAX_P_VALUE
    max_correlation: float = DEFAULT_MAX_CORRELATION
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    method: str = DEFAULT_METHOD
    train_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    l2: float | None = DEFAULT_L2  # None: chosen by cross-validation (logistic)
    given: frozenset = field(default=frozenset(), compare=False, repr=False)  # optional keys the caller gave

    def validate(self) -> None:
        check_params(self, PARAMS)
        if not isinstance(self.evidence, (list, tuple)):
            raise bad("evidence", "expected a list of (field, value) pairs")
        for item in self.evidence:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise bad("evidence", f"expected (field, value) pairs, got {item!r}")

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "PredictQuery":
        """`segment` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "predict")
        q = cls(target=read_target(obj), segment=cond.to_condition(obj.get("segment"), "segment"))
        read_json(obj, q, PARAMS)
        q.evidence = evidence_from_json(obj.get("evidence"))
        q.given = given_keys(obj, _OPTIONAL)
        q.validate()
        return q

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.PredictRequest:
        req = pb.PredictRequest(
            snapshot=at.to_proto(), universe=self.universe or "", segment=cond.to_proto(self.segment),
            target_field=self.target, id="" if self.row_id is None else str(self.row_id),
            evidence=terms_to_proto(self.evidence), evidence_fields=list(self.evidence_fields or ()),
            method=method_to_proto(self.method) if sent(self, "method", DEFAULT_METHOD) else 0,
        )
        optionals_to_proto(self, req)
        return req

    @staticmethod
    def paths(req: pb.PredictRequest) -> cond.RequestPaths:
        return request_paths(req)

    @classmethod
    def from_proto(cls, req: pb.PredictRequest, paths: cond.RequestPaths,
                   max_target_values: int = DEFAULT_MAX_TARGET_VALUES) -> "PredictQuery":
        """The row id stays text: row_id_from_text makes it the universe's key."""
        evidence = []
        for i, t in enumerate(req.evidence):
            paths.add_term(t.field, t.value, f"evidence[{i}]")
            evidence.append((t.field, t.value))
        q = cls(target=req.target_field, universe=req.universe or None, segment=segment_from_proto(req, paths),
                row_id=req.id or None, evidence=evidence, evidence_fields=evidence_fields_from_proto(req),
                max_target_values=max_target_values, method=method_from_proto(req.method, DEFAULT_METHOD))
        given = {"method"} if req.method else set()
        q.given = frozenset(given | optionals_from_proto(req, q))
        return q


# --- the result ---------------------------------------------------------------------------


@dataclass
class Regularisation:
    """The regularisation of a fitted model, chosen by cross-validation or given by the caller: the L2
    penalty of a logistic model, or the prior strength of a factorized one (`prior_strength` set, `l2`
    None). `value` names the value of a multi-valued target whose binary model it is (None: the one model
    of a single-valued one); `interaction_pairs`: the pairwise interaction terms a logistic model uses
    (0: main effects only)."""

    l2: float | None
    cross_validated: bool
    value: str | None = None
    interaction_pairs: int = 0
    prior_strength: float | None = None

    def to_json(self) -> dict:
        if self.prior_strength is not None:
            return {"prior_strength": json_number(float(self.prior_strength)),
                    "cross_validated": bool(self.cross_validated), "value": self.value}
        return {"l2": json_number(float(self.l2)), "cross_validated": bool(self.cross_validated),
                "value": self.value, "interaction_pairs": int(self.interaction_pairs)}

    def to_proto(self) -> pb.Regularisation:
        if self.prior_strength is not None:
            return pb.Regularisation(prior_strength=float(self.prior_strength),
                                     cross_validated=bool(self.cross_validated), target_value=self.value or "")
        return pb.Regularisation(l2=float(self.l2), cross_validated=bool(self.cross_validated),
                                 target_value=self.value or "", interaction_pairs=int(self.interaction_pairs))

    @classmethod
    def from_proto(cls, msg: pb.Regularisation) -> "Regularisation":
        if msg.prior_strength > 0:
            return cls(None, msg.cross_validated, msg.target_value or None, prior_strength=msg.prior_strength)
        return cls(msg.l2, msg.cross_validated, msg.target_value or None, int(msg.interaction_pairs))


@dataclass
class Factor:
    evidence: list[tuple[str, str]]
    factor: float
    support: int
    kind: str  # "conjunction" | "lift"
    note: str = ""
    # the counts the factor rests on, for the privacy floor (not sent): (context rows, class rows, evidence
    # rows, rows of both) within its context; None when it states nothing beyond the base (segsrv/engine/privacy.py)
    table: tuple[int, int, int, int] | None = field(default=None, compare=False, repr=False)
    # the G-test of the factor's evidence against the target in its context (None: no test, e.g. the
    # logistic method); log10_p_value is exact also where p_value underflows to 0 (below 1e-300)
    p_value: float | None = None
    log10_p_value: float | None = None

    @property
    def no_effect(self) -> bool:
        """A single evidence's lift of exactly 1: folded into the explanation's no-effect entry."""
        return self.factor == 1.0 and self.kind == "lift" and len(self.evidence) == 1

    def to_json(self) -> dict:
        out = {"evidence": [[f, v] for f, v in self.evidence], "factor": json_number(float(self.factor)),
               "support": int(self.support), "kind": self.kind, "note": self.note}
        if self.p_value is not None:
            out["p_value"] = json_number(float(self.p_value))
        if self.log10_p_value is not None:
            out["log10_p_value"] = json_number(float(self.log10_p_value))
        return out

    def to_proto(self) -> pb.ExplanationFactor:
        msg = pb.ExplanationFactor(evidence=terms_to_proto(self.evidence), factor=self.factor,
                                   support=int(self.support), kind=enum_to_proto(pb.FactorKind, "FACTOR_KIND_", self.kind),
                                   note=self.note or "")
        if self.p_value is not None:
            msg.p_value = float(self.p_value)
        if self.log10_p_value is not None:
            msg.log10_p_value = float(self.log10_p_value)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ExplanationFactor) -> "Factor":
        return cls(terms_from_proto(msg.evidence), msg.factor, msg.support,
                   name_from_proto(pb.FactorKind, "FACTOR_KIND_", msg.kind), msg.note,
                   p_value=msg.p_value if msg.HasField("p_value") else None,
                   log10_p_value=msg.log10_p_value if msg.HasField("log10_p_value") else None)


NO_EFFECT_NOTE = "no effect (factor 1)"  # the note of a folded factor read back from the proto


def effect(factor: float) -> float:
    """How much a factor moves the probability: |ln factor| (0 and infinity: infinite; NaN: -1, last)."""
    if math.isnan(factor):
        return -1.0
    if factor <= 0 or math.isinf(factor):
        return math.inf
    return abs(math.log(factor))


def explained(factors: list[Factor]) -> tuple[list[Factor], list[Factor]]:
    """(listed, no effect): the factors a person reads, by effect (|ln factor| descending; ties in the
    model's order), and the single-evidence lifts of exactly 1, folded (model order). The product of the
    listed factors is the product of all of them: the folded ones are exactly 1."""
    listed = [f for f in factors if not f.no_effect]
    order = sorted(range(len(listed)), key=lambda j: (-effect(float(listed[j].factor)), j))
    return [listed[j] for j in order], [f for f in factors if f.no_effect]


@dataclass
class ValueProbability:
    value: str
    probability: float
    base_probability: float
    factors: list[Factor]
    normalizer: float
    count: int | None = field(default=None, compare=False, repr=False)  # rows of the segment with it (not sent)

    def to_json(self) -> dict:
        """`factors`: the factors with an effect, largest |ln factor| first; `no_effect`: the evidence whose
        factor is exactly 1 (not observed, not significant, redundant, below the privacy floor), folded.
        base_probability * prod(factors) / normalizer == probability."""
        listed, folded = explained(self.factors)
        return {"value": self.value, "probability": json_number(float(self.probability)),
                "base_probability": json_number(float(self.base_probability)),
                "normalizer": json_number(float(self.normalizer)),
                "factors": [f.to_json() for f in listed],
                "no_effect": {"count": len(folded), "evidence": [[fv, vv] for f in folded for fv, vv in f.evidence]}}

    def to_proto(self) -> pb.TargetProbability:
        listed, folded = explained(self.factors)
        return pb.TargetProbability(
            value=self.value, probability=self.probability,
            explanation=pb.Explanation(base_probability=self.base_probability,
                                       factors=[f.to_proto() for f in listed], normalizer=self.normalizer,
                                       no_effect_count=len(folded),
                                       no_effect_evidence=terms_to_proto(e for f in folded for e in f.evidence)))

    @classmethod
    def from_proto(cls, msg: pb.TargetProbability) -> "ValueProbability":
        """The listed factors, then one factor 1 per folded evidence (note NO_EFFECT_NOTE)."""
        e = msg.explanation
        factors = [Factor.from_proto(f) for f in e.factors]
        factors += [Factor([(t.field, t.value)], 1.0, 0, "lift", NO_EFFECT_NOTE) for t in e.no_effect_evidence]
        return cls(msg.value, msg.probability, e.base_probability, factors, e.normalizer)


@dataclass
class PredictResult:
    snapshot: str
    version: str
    universe: str
    target: str
    multi_valued: bool
    method: str
    n_segment: int
    evidence: list[tuple[str, str]]
    probabilities: list[ValueProbability]
    elapsed_ms: float
    suppressed_values: int = 0  # values of a multi-valued target left out by the privacy floor
    regularisation: list[Regularisation] = field(default_factory=list)  # logistic, factorized: each model's

    def to_json(self) -> dict:
        out = {
            "snapshot": self.snapshot, "version": self.version, "from": self.universe, "target": self.target,
            "method": self.method, "multi_valued": bool(self.multi_valued), "n_segment": int(self.n_segment),
            "evidence": [[f, v] for f, v in self.evidence], "elapsed_ms": round(self.elapsed_ms, 3),
            "probabilities": [vp.to_json() for vp in self.probabilities],
        }
        if self.suppressed_values:  # the server's privacy floor (docs/server.md)
            out["suppressed_values"] = int(self.suppressed_values)
        if self.regularisation:  # logistic
            out["regularisation"] = [r.to_json() for r in self.regularisation]
        return out

    def to_proto(self, server_ms: float) -> pb.PredictResponse:
        return pb.PredictResponse(
            info=response_info(self, server_ms), target_field=self.target, segment_count=int(self.n_segment),
            probabilities=[vp.to_proto() for vp in self.probabilities], universe=self.universe,
            multi_valued=bool(self.multi_valued), method=method_to_proto(self.method),
            evidence=terms_to_proto(self.evidence), suppressed_value_count=int(self.suppressed_values),
            regularisation=[r.to_proto() for r in self.regularisation],
        )

    @classmethod
    def from_proto(cls, resp: pb.PredictResponse) -> "PredictResult":
        return cls(
            snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
            target=resp.target_field, multi_valued=resp.multi_valued,
            method=name_from_proto(pb.PredictMethod, "PREDICT_METHOD_", resp.method), n_segment=resp.segment_count,
            evidence=terms_from_proto(resp.evidence),
            probabilities=[ValueProbability.from_proto(tp) for tp in resp.probabilities],
            elapsed_ms=resp.info.server_time_ms, suppressed_values=int(resp.suppressed_value_count),
            regularisation=[Regularisation.from_proto(r) for r in resp.regularisation],
        )
