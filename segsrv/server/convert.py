"""Conversions between the segsrv.v1 messages and the engine's dataclasses.

Only conversions live here (and the structural checks a message needs before
it is a valid engine input, like "a list has at least one item"); every
statement about the data (unknown fields, values, universes, limits of the
engine) comes from the engine itself.

While converting a condition, ``RequestPaths`` records where each field,
value and segment name sits in the request, so that an engine error naming
the domain field ``region`` can be reported as a violation of the request
field ``condition.all_of.conditions[1].term.field``.
"""

from __future__ import annotations

import ast
import math
import time
from collections import defaultdict

from ..engine.assign import AssignQuery, AssignResult
from ..engine.conditions import MAX_DEPTH, All, And, AnyOf, Condition, Not, Or, Range, SegmentRef, Term
from ..engine.count import CountResult
from ..engine.evaluate import EvaluateQuery, EvaluateResult
from ..engine.privacy import floor_size
from ..engine.predict import PredictQuery, PredictResult, ScoreQuery, ScoreResult
from ..engine.relate import DEFAULT_LIMIT, DEFAULT_PRIOR_STRENGTH, RelateQuery, RelateResult
from ..errors import LimitExceededError, QueryError, UnknownIdError
from ..snapshot.reader import Snapshot, Universe
from ..v1 import condition_pb2, segsrv_pb2

# --- conditions ---------------------------------------------------------------


class RequestPaths:
    """Where the names of a request's condition sit in the request message."""

    def __init__(self, root: str = "condition", fields: list[str] | None = None):
        self.root = root
        self.relate_fields = list(fields or [])
        self.fields: dict[str, list[str]] = defaultdict(list)  # field name -> paths of its `field` member
        self.values: dict[tuple[str, str], list[str]] = defaultdict(list)  # (field, value) -> value paths
        self.ranges: dict[str, list[str]] = defaultdict(list)  # field name -> paths of numeric ranges
        self.segments: dict[str, list[str]] = defaultdict(list)  # segment name -> paths of its `name`

    def locate(self, field: str, description: str) -> list[str]:
        """Request paths for an engine violation (field, description); [field] when unknown."""
        if field == "from":
            return ["universe"]
        if field == "where":
            return [self.root]
        if field == "relate":
            hits = [f"fields[{i}]" for i, pat in enumerate(self.relate_fields) if repr(pat) in description]
            return hits or ["fields"]
        if field == "$segment":
            hits = [p for name, ps in self.segments.items() if repr(name) in description for p in ps]
            return hits or [p for ps in self.segments.values() for p in ps] or [self.root]
        if field in self.fields:
            if description.startswith("unknown value "):
                try:
                    value = ast.literal_eval(description[len("unknown value "):])
                except (ValueError, SyntaxError):
                    value = None
                if (field, value) in self.values:
                    return self.values[(field, value)]
            if "range" in description and field in self.ranges:
                return self.ranges[field]
            return self.fields[field]
        return [field]


def _bad(path: str, description: str) -> QueryError:
    return QueryError(f"{path}: {description}", [(path, description)])


def condition_from_proto(msg: condition_pb2.Condition | None, paths: RequestPaths | None = None,
                         path: str | None = None) -> Condition:
    """A request's condition -> engine tree; unset (or no message) at the top means every row."""
    paths = paths if paths is not None else RequestPaths()
    path = path or paths.root
    if msg is None or msg.WhichOneof("kind") is None:
        return All()
    return _node(msg, paths, path, 0)


def _node(msg: condition_pb2.Condition, paths: RequestPaths, path: str, depth: int) -> Condition:
    if depth > MAX_DEPTH:
        raise LimitExceededError(
            f"{path}: condition nests deeper than {MAX_DEPTH} levels", [(path, f"depth > {MAX_DEPTH}")]
        )
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise _bad(path, "condition has no kind set (one of term, value_set, numeric_range, all_of, any_of, "
                         "negation, segment, all_rows)")
    at = f"{path}.{kind}"
    if kind == "term":
        _field(msg.term.field, paths, at)
        paths.values[(msg.term.field, msg.term.value)].append(f"{at}.value")
        return Term(msg.term.field, msg.term.value)
    if kind == "value_set":
        _field(msg.value_set.field, paths, at)
        if not msg.value_set.values:
            raise _bad(f"{at}.values", "at least one value is required")
        for i, v in enumerate(msg.value_set.values):
            paths.values[(msg.value_set.field, v)].append(f"{at}.values[{i}]")
        return AnyOf(msg.value_set.field, tuple(msg.value_set.values))
    if kind == "numeric_range":
        r = msg.numeric_range
        _field(r.field, paths, at)
        paths.ranges[r.field].append(at)
        bounds = {}
        for name in ("gte", "gt", "lte", "lt"):
            if r.HasField(name):
                x = getattr(r, name)
                if math.isnan(x):
                    raise _bad(f"{at}.{name}", "bound is NaN")
                bounds[name] = float(x)
        if "gte" in bounds and "gt" in bounds:
            raise _bad(at, "give at most one lower bound (gte or gt)")
        if "lte" in bounds and "lt" in bounds:
            raise _bad(at, "give at most one upper bound (lte or lt)")
        return Range(r.field, **bounds)
    if kind in ("all_of", "any_of"):
        items = getattr(msg, kind).conditions
        if not items:
            raise _bad(f"{at}.conditions", "at least one condition is required")
        parts = tuple(_node(c, paths, f"{at}.conditions[{i}]", depth + 1) for i, c in enumerate(items))
        return And(parts) if kind == "all_of" else Or(parts)
    if kind == "negation":
        return Not(_node(msg.negation, paths, at, depth + 1))
    if kind == "segment":
        if not msg.segment.name:
            raise _bad(f"{at}.name", "segment name is required")
        paths.segments[msg.segment.name].append(f"{at}.name")
        return SegmentRef(msg.segment.name)
    return All()  # all_rows


def _field(name: str, paths: RequestPaths, at: str) -> None:
    if not name:
        raise _bad(f"{at}.field", "field is required")
    paths.fields[name].append(f"{at}.field")


def condition_to_proto(cond: Condition) -> condition_pb2.Condition:
    """Engine tree -> message (e.g. a catalog segment's definition)."""
    c = condition_pb2
    if isinstance(cond, Term):
        return c.Condition(term=c.Term(field=cond.field, value=cond.value))
    if isinstance(cond, AnyOf):
        return c.Condition(value_set=c.ValueSet(field=cond.field, values=list(cond.values)))
    if isinstance(cond, Range):
        bounds = {k: getattr(cond, k) for k in ("gte", "gt", "lte", "lt") if getattr(cond, k) is not None}
        return c.Condition(numeric_range=c.NumericRange(field=cond.field, **bounds))
    if isinstance(cond, And):
        return c.Condition(all_of=c.ConditionList(conditions=[condition_to_proto(i) for i in cond.items]))
    if isinstance(cond, Or):
        return c.Condition(any_of=c.ConditionList(conditions=[condition_to_proto(i) for i in cond.items]))
    if isinstance(cond, Not):
        return c.Condition(negation=condition_to_proto(cond.item))
    if isinstance(cond, SegmentRef):
        return c.Condition(segment=c.SegmentReference(name=cond.name))
    return c.Condition(all_rows=c.AllRows())


# --- enums --------------------------------------------------------------------


def _enum_from_proto(enum_type, prefix: str, number: int, default: str, field: str) -> str:
    if number == 0:
        return default
    try:
        return enum_type.Name(number).removeprefix(prefix).lower()
    except ValueError:
        raise _bad(field, f"unknown {enum_type.DESCRIPTOR.name} value {number}") from None


def _enum_to_proto(enum_type, prefix: str, name: str) -> int:
    try:
        return enum_type.Value(prefix + name.upper())
    except ValueError:
        return 0


# --- relate -------------------------------------------------------------------

# RelateOrder names that differ from the engine's statistic names. RELATE_ORDER_CONFIDENCE is
# P(feature | condition), the engine's "p" (association rules call it confidence; a value named
# RELATE_ORDER_P would clash with RELATE_ORDER_P_VALUE's generated Java constant).
_RELATE_ORDER_ALIASES = {"confidence": "p"}


def relate_query_from_proto(req: segsrv_pb2.RelateRequest, paths: RequestPaths) -> RelateQuery:
    q = RelateQuery(
        where=condition_from_proto(req.condition if req.HasField("condition") else None, paths),
        universe=req.universe or None,
        relate=list(req.fields) or None,
        order_by=_RELATE_ORDER_ALIASES.get(o := _enum_from_proto(segsrv_pb2.RelateOrder, "RELATE_ORDER_", req.order_by,
                                                                "lift_smoothed", "order_by"), o),
        direction=_enum_from_proto(segsrv_pb2.RelateDirection, "RELATE_DIRECTION_", req.direction, "over", "direction"),
        limit=req.limit or DEFAULT_LIMIT,
        min_support=req.min_support if req.HasField("min_support") else 1,
        min_lift=req.min_lift if req.HasField("min_lift") else None,
        max_p_value=req.max_p_value if req.HasField("max_p_value") else None,
        prior_strength=req.prior_strength if req.HasField("prior_strength") else DEFAULT_PRIOR_STRENGTH,
        exclude_condition_fields=not req.include_condition_fields,
        plan=_enum_from_proto(segsrv_pb2.RelatePlan, "RELATE_PLAN_", req.plan, "auto", "plan"),
    )
    return q


def relate_response_to_proto(result: RelateResult, info: segsrv_pb2.ResponseInfo, suppressed: bool = False,
                             suppressed_hit_count: int = 0) -> segsrv_pb2.RelateResponse:
    hits = []
    for h in result.hits:
        s = h.stats
        hits.append(segsrv_pb2.RelateHit(
            field=h.field, value=h.value, support=int(s["support"]), support_ratio=s["support_ratio"],
            p=s["p"], p_base=s["p_base"], p_not=s["p_not"], lift=s["lift"], lift_smoothed=s["lift_smoothed"],
            lift_low=s["lift_low"], lift_high=s["lift_high"], p_value=s["p_value"], q_value=s["q_value"],
            leverage=s["leverage"], conviction=s["conviction"], jaccard=s["jaccard"], certainty=s["certainty"],
            kulczynski=s["kulczynski"], zhang=s["zhang"], mutual_information=s["mutual_information"],
            feature_count=int(s["n_feature"]),
        ))
    return segsrv_pb2.RelateResponse(
        info=info, universe=result.universe, row_count=result.n_rows, condition_count=result.n_condition,
        candidate_count=result.n_candidates, matching_count=result.n_matching,
        plan=_enum_to_proto(segsrv_pb2.RelatePlan, "RELATE_PLAN_", result.plan),  # "none" (empty C) -> UNSPECIFIED
        hits=hits, suppressed=suppressed, suppressed_hit_count=suppressed_hit_count,
    )


# --- count --------------------------------------------------------------------


def count_response_to_proto(result: CountResult, info: segsrv_pb2.ResponseInfo,
                            suppressed: bool = False) -> segsrv_pb2.CountResponse:
    return segsrv_pb2.CountResponse(info=info, universe=result.universe, count=result.count, row_count=result.n_rows,
                                    suppressed=suppressed)


# --- predict, score, evaluate ----------------------------------------------------

MAX_CHUNK_SIZE = 100_000
DEFAULT_CHUNK_SIZE = 1_000


class PredictPaths(RequestPaths):
    """RequestPaths of Predict / ScoreSegment / Evaluate: the condition is `segment`, and the
    engine's names of the request's parts (target, row_id, value, evidence_fields as "relate")
    map to the request fields (target_field, id, target_value, evidence_fields[i])."""

    ALIASES = {"target": ["target_field"], "row_id": ["id"]}

    def __init__(self, evidence_fields: list[str] | None = None, target: str = "", target_value: str | None = None):
        super().__init__("segment")
        self.evidence_fields = list(evidence_fields or [])
        self.target = target
        self.target_value = target_value

    def locate(self, field: str, description: str) -> list[str]:
        if field in self.ALIASES:
            return self.ALIASES[field]
        if field in ("relate", "evidence_fields"):
            hits = [f"evidence_fields[{i}]" for i, pat in enumerate(self.evidence_fields) if repr(pat) in description]
            return hits or ["evidence_fields"]
        if field == "value" or (self.target_value is not None and field == self.target
                                and description == f"unknown value {self.target_value!r}"):
            return ["target_value"]
        return super().locate(field, description)


_FACTOR_KINDS = {name.removeprefix("FACTOR_KIND_").lower(): number
                 for name, number in segsrv_pb2.FactorKind.items() if number}


def method_from_proto(number: int) -> str | None:
    """PredictMethod -> the engine's method name; None (unset) keeps the engine's default."""
    return _enum_from_proto(segsrv_pb2.PredictMethod, "PREDICT_METHOD_", number, None, "method")


def method_to_proto(name: str) -> int:
    return _enum_to_proto(segsrv_pb2.PredictMethod, "PREDICT_METHOD_", name)


def _segment(req, paths: RequestPaths) -> Condition:
    return condition_from_proto(req.segment if req.HasField("segment") else None, paths)


def _evidence_fields(req) -> list[str] | None:
    fields = list(req.evidence_fields)
    for i, pat in enumerate(fields):
        if not pat:
            raise _bad(f"evidence_fields[{i}]", "empty field name or glob")
    return fields or None


def _set_method(query, req) -> None:
    method = method_from_proto(req.method)
    if method is not None:
        query.method = method


def row_id_from_proto(text: str, universe: Universe):
    """The request's id (text) -> the universe's key (an int for integer-keyed universes)."""
    if universe.key_kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise UnknownIdError(
                f"id: universe {universe.name!r} has no row with {universe.key} {text!r} (its ids are integers)",
                [("id", f"unknown id {text!r}")],
            ) from None
    return text


def predict_query_from_proto(req: segsrv_pb2.PredictRequest, paths: PredictPaths,
                             max_target_values: int) -> PredictQuery:
    """Everything but the row id (which needs the universe: row_id_from_proto)."""
    evidence = []
    for i, t in enumerate(req.evidence):
        if not t.field:
            raise _bad(f"evidence[{i}].field", "field is required")
        paths.fields[t.field].append(f"evidence[{i}].field")
        paths.values[(t.field, t.value)].append(f"evidence[{i}].value")
        evidence.append((t.field, t.value))
    q = PredictQuery(target=req.target_field, universe=req.universe or None, segment=_segment(req, paths),
                     evidence=evidence, evidence_fields=_evidence_fields(req),
                     max_target_values=max_target_values)
    if req.HasField("prior_strength"):
        q.prior_strength = req.prior_strength
    if req.HasField("min_support"):
        q.min_support = req.min_support
    _set_conjunction_params(q, req)
    _set_method(q, req)
    return q


def _set_conjunction_params(q, req) -> None:
    for name in ("min_support_fraction", "max_p_value"):
        if req.HasField(name):
            setattr(q, name, getattr(req, name))


def _terms(pairs) -> list:
    return [condition_pb2.Term(field=f, value=v) for f, v in pairs]


def predict_response_to_proto(result: PredictResult, info: segsrv_pb2.ResponseInfo) -> segsrv_pb2.PredictResponse:
    probs = []
    for vp in result.probabilities:
        factors = [segsrv_pb2.ExplanationFactor(evidence=_terms(f.evidence), factor=f.factor, support=int(f.support),
                                                kind=_FACTOR_KINDS.get(f.kind, 0), note=f.note or "")
                   for f in vp.factors]
        probs.append(segsrv_pb2.TargetProbability(
            value=vp.value, probability=vp.probability,
            explanation=segsrv_pb2.Explanation(base_probability=vp.base_probability, factors=factors,
                                               normalizer=vp.normalizer)))
    return segsrv_pb2.PredictResponse(
        info=info, target_field=result.target, segment_count=result.n_segment, probabilities=probs,
        universe=result.universe, multi_valued=result.multi_valued, method=method_to_proto(result.method),
        evidence=_terms(result.evidence),
    )


def chunk_size_from_proto(n: int) -> int:
    if n < 0:
        raise _bad("chunk_size", f"must be >= 0 (0 means {DEFAULT_CHUNK_SIZE}), got {n}")
    if n > MAX_CHUNK_SIZE:
        raise LimitExceededError(f"chunk_size: {n} exceeds the maximum {MAX_CHUNK_SIZE}",
                                 [("chunk_size", f"at most {MAX_CHUNK_SIZE}")])
    return n or DEFAULT_CHUNK_SIZE


def score_query_from_proto(req: segsrv_pb2.ScoreSegmentRequest, paths: PredictPaths,
                           max_target_values: int) -> ScoreQuery:
    if req.top_k < 0:
        raise _bad("top_k", f"must be >= 0 (0 means every member), got {req.top_k}")
    q = ScoreQuery(target=req.target_field, value=req.target_value, universe=req.universe or None,
                   segment=_segment(req, paths), top_k=int(req.top_k), evidence_fields=_evidence_fields(req),
                   max_target_values=max_target_values)
    if req.HasField("prior_strength"):
        q.prior_strength = req.prior_strength
    _set_method(q, req)
    return q


def score_summary_to_proto(result: ScoreResult) -> segsrv_pb2.ScoreSummary:
    return segsrv_pb2.ScoreSummary(member_count=int(result.n_members), returned_count=len(result.scores),
                                   mean_score=float(result.mean_score), universe=result.universe,
                                   target_field=result.target, target_value=result.value)


def evaluate_query_from_proto(req: segsrv_pb2.EvaluateRequest, paths: PredictPaths,
                              max_target_values: int) -> EvaluateQuery:
    q = EvaluateQuery(target=req.target_field, universe=req.universe or None, segment=_segment(req, paths),
                      evidence_fields=_evidence_fields(req), seed=int(req.seed),
                      max_target_values=max_target_values)
    if req.holdout_fraction != 0:  # 0 means the default
        q.holdout_fraction = req.holdout_fraction
    if req.HasField("prior_strength"):
        q.prior_strength = req.prior_strength
    if req.HasField("min_support"):
        q.min_support = req.min_support
    _set_conjunction_params(q, req)
    _set_method(q, req)
    return q


def evaluate_response_to_proto(result: EvaluateResult, info: segsrv_pb2.ResponseInfo) -> segsrv_pb2.EvaluateResponse:
    resp = segsrv_pb2.EvaluateResponse(
        info=info, test_count=result.n_test, train_count=result.n_train, accuracy=result.accuracy,
        baseline_accuracy=result.baseline_accuracy, log_loss=result.log_loss, mean_rank=result.mean_rank,
        geometric_mean_probability=result.geometric_mean_probability,
        calibration=[segsrv_pb2.CalibrationBin(predicted_low=b.predicted_low, predicted_high=b.predicted_high,
                                               mean_predicted=b.mean_predicted, observed_rate=b.observed_rate,
                                               count=int(b.count)) for b in result.calibration],
        universe=result.universe, target_field=result.target, method=method_to_proto(result.method),
        values=list(result.values), baseline_value=result.baseline_value, calibration_of=result.calibration_of,
    )
    if result.auc is not None:
        resp.auc = result.auc
    if result.positive_value is not None:
        resp.positive_value = result.positive_value
    return resp


# --- snapshot info and catalog ------------------------------------------------

_KINDS = {"categorical": segsrv_pb2.FIELD_KIND_CATEGORICAL, "multi": segsrv_pb2.FIELD_KIND_MULTI,
          "numeric": segsrv_pb2.FIELD_KIND_NUMERIC}
_SEMANTICS = {"own": segsrv_pb2.FIELD_SEMANTICS_OWN, "forward": segsrv_pb2.FIELD_SEMANTICS_FORWARD,
              "exists": segsrv_pb2.FIELD_SEMANTICS_EXISTS}


def universe_to_proto(u: Universe, include_values: bool, privacy_k: int = 0) -> segsrv_pb2.UniverseInfo:
    fields = []
    for f in u.fields.values():
        fi = segsrv_pb2.FieldInfo(
            name=f.name, kind=_KINDS.get(f.kind, 0), semantics=_SEMANTICS.get(f.semantics, 0),
            value_count=len(f.values), band_edges=[float(e) for e in (f.edges or [])],
            has_raw_values=f.numeric is not None,
        )
        if include_values:
            fi.values.extend(segsrv_pb2.ValueCount(value=v, count=floor_size(int(c), privacy_k))
                             for v, c in zip(f.values, f.counts))
        fields.append(fi)
    return segsrv_pb2.UniverseInfo(name=u.name, table=u.table, key=u.key, row_count=u.n_rows,
                                   feature_count=u.n_features, fields=fields)


def snapshot_info_to_proto(snapshot: Snapshot, universes: list[Universe], include_values: bool,
                           served: list[str], info: segsrv_pb2.ResponseInfo,
                           privacy_k: int = 0) -> segsrv_pb2.GetSnapshotInfoResponse:
    return segsrv_pb2.GetSnapshotInfoResponse(
        info=info, description=snapshot.description,
        universes=[universe_to_proto(u, include_values, privacy_k) for u in universes], served_snapshots=served,
    )


def segment_to_proto(name: str, entry: dict, cond: Condition, size: int, n_rows: int) -> segsrv_pb2.Segment:
    return segsrv_pb2.Segment(
        name=name, description=str(entry.get("description", "")), universe=str(entry.get("universe", "")),
        condition=condition_to_proto(cond), priority=int(entry.get("priority", 0)),
        tags=[str(t) for t in entry.get("tags", [])], size=size, share=size / n_rows if n_rows else 0.0,
    )


def response_info(snapshot: Snapshot, t0: float) -> segsrv_pb2.ResponseInfo:
    """What answered; t0 is the handler's time.perf_counter() at entry."""
    return segsrv_pb2.ResponseInfo(snapshot_name=snapshot.name, snapshot_version=snapshot.version,
                                   server_time_ms=(time.perf_counter() - t0) * 1e3)


# --- export -------------------------------------------------------------------
# (imported here, next to its converters; the engine module never imports grpc)
from ..engine.export import ExportQuery, ExportResult  # noqa: E402

EXPORT_DEFAULT_CHUNK_SIZE = 10_000  # ids are small: 10x ScoreSegment's default (1.5x the throughput of 1,000)


def export_chunk_size_from_proto(n: int) -> int:
    """ExportMembers' chunk_size: 0 means 10,000; at most MAX_CHUNK_SIZE (100,000) like ScoreSegment."""
    if n < 0:
        raise _bad("chunk_size", f"must be >= 0 (0 means {EXPORT_DEFAULT_CHUNK_SIZE}), got {n}")
    return chunk_size_from_proto(n) if n else EXPORT_DEFAULT_CHUNK_SIZE


def export_paths(req: segsrv_pb2.ExportMembersRequest) -> PredictPaths:
    """Request paths of ExportMembers: the condition is `condition`; target / value / top_k name the
    ranking fields (target_field, target_value, top_k)."""
    paths = PredictPaths([], req.target_field, req.target_value)
    paths.root = "condition"
    return paths


def export_query_from_proto(req: segsrv_pb2.ExportMembersRequest, paths: PredictPaths,
                            max_target_values: int) -> ExportQuery:
    """Empty target_field / target_value mean "not ranked"; the engine checks the combination
    (top_k needs a target, a target needs a value)."""
    if req.top_k < 0:
        raise _bad("top_k", f"must be >= 0 (0 means every member), got {req.top_k}")
    return ExportQuery(
        universe=req.universe or None,
        condition=condition_from_proto(req.condition if req.HasField("condition") else None, paths),
        top_k=int(req.top_k), target=req.target_field or None,
        value=req.target_value or None,
        chunk_size=export_chunk_size_from_proto(req.chunk_size), max_target_values=max_target_values,
    )


def export_total_to_proto(result: ExportResult, info: segsrv_pb2.ResponseInfo) -> segsrv_pb2.ExportMembersResponse:
    """The first message: the total, no ids."""
    return segsrv_pb2.ExportMembersResponse(info=info, total_count=int(result.total))


def export_chunk_to_proto(ids: list[str], scores, info: segsrv_pb2.ResponseInfo) -> segsrv_pb2.ExportMembersResponse:
    """One chunk of ids (text), with their scores when ranked (None: not ranked)."""
    return segsrv_pb2.ExportMembersResponse(info=info, ids=ids,
                                            scores=scores.tolist() if scores is not None else None)


# --- assign -------------------------------------------------------------------


def assign_query_from_proto(req: segsrv_pb2.AssignRequest, paths: PredictPaths) -> AssignQuery:
    if req.ids and req.features:
        raise _bad("features", "give either ids (known customers) or features (a new customer), not both")
    features = None
    if not req.ids:
        if not req.features:
            raise _bad("ids", "give the ids of known customers, or the features of a new customer")
        features = []
        for i, t in enumerate(req.features):
            if not t.field:
                raise _bad(f"features[{i}].field", "field is required")
            paths.fields[t.field].append(f"features[{i}].field")
            paths.values[(t.field, t.value)].append(f"features[{i}].value")
            features.append((t.field, t.value))
    q = AssignQuery(universe=req.universe or None, ids=list(req.ids), features=features,
                    include_propensities=bool(req.include_propensities))
    if req.HasField("prior_strength"):
        q.prior_strength = req.prior_strength
    if req.HasField("max_p_value"):
        q.max_p_value = req.max_p_value
    return q


def assign_response_to_proto(result: AssignResult, info: segsrv_pb2.ResponseInfo) -> segsrv_pb2.AssignResponse:
    out = []
    for a in result.assignments:
        out.append(segsrv_pb2.Assignment(
            id="" if a.id is None else str(a.id), found=a.found, primary_segment=a.primary_segment or "",
            segments=[segsrv_pb2.SegmentMembership(segment=m.segment, member=m.member,
                                                   propensity=m.propensity or 0.0, segment_size=m.segment_size,
                                                   share=m.share, priority=m.priority)
                      for m in a.segments]))
    return segsrv_pb2.AssignResponse(info=info, assignments=out, universe=result.universe)


# --- profile ------------------------------------------------------------------
# (imported here, next to its converters; the engine module never imports grpc)
from ..engine.profile import DEFAULT_VALUES_PER_FIELD, NumericStats, ProfileQuery, ProfileResult  # noqa: E402


class ProfilePaths(RequestPaths):
    """RequestPaths of Profile: the condition is `segment`; the engine's "fields" violations point at
    the `fields[i]` entry they name."""

    def __init__(self, fields: list[str] | None = None):
        super().__init__("segment", fields)

    def locate(self, field: str, description: str) -> list[str]:
        if field == "fields":
            hits = [f"fields[{i}]" for i, pat in enumerate(self.relate_fields) if repr(pat) in description]
            return hits or ["fields"]
        return super().locate(field, description)


def profile_query_from_proto(req: segsrv_pb2.ProfileRequest, paths: ProfilePaths) -> ProfileQuery:
    """values_per_field 0 means the default (5); negative ones and empty field names are refused here,
    the upper limit and unknown fields by the engine."""
    if req.values_per_field < 0:
        raise _bad("values_per_field", f"must be >= 0 (0 means {DEFAULT_VALUES_PER_FIELD}), got {req.values_per_field}")
    for i, pat in enumerate(req.fields):
        if not pat:
            raise _bad(f"fields[{i}]", "empty field name or glob")
    return ProfileQuery(
        segment=condition_from_proto(req.segment if req.HasField("segment") else None, paths),
        universe=req.universe or None, fields=list(req.fields) or None,
        values_per_field=req.values_per_field or DEFAULT_VALUES_PER_FIELD,
    )


def numeric_stats_to_proto(s: NumericStats) -> segsrv_pb2.NumericStats:
    """NaN statistics (no value in the rows) travel as NaN doubles; count is then 0."""
    return segsrv_pb2.NumericStats(count=int(s.count), mean=float(s.mean), std=float(s.std), min=float(s.min),
                                   p25=float(s.p25), median=float(s.median), p75=float(s.p75), max=float(s.max))


def profile_response_to_proto(result: ProfileResult, info: segsrv_pb2.ResponseInfo,
                              suppressed: bool = False) -> segsrv_pb2.ProfileResponse:
    """FieldProfile.values: the over-indexed values (lift > 1, most over-indexed first), then the
    under-indexed ones (lift < 1, most under-indexed first)."""
    fields = []
    for f in result.fields:
        fields.append(segsrv_pb2.FieldProfile(field=f.field, values=[
            segsrv_pb2.ValueProfile(value=v.value, segment_count=int(v.segment_count),
                                    segment_share=float(v.segment_share),
                                    population_share=float(v.population_share), lift=float(v.lift),
                                    p_value=float(v.p_value))
            for v in (*f.over, *f.under)]))
    numeric = [segsrv_pb2.NumericProfile(field=p.field, segment=numeric_stats_to_proto(p.segment),
                                         population=numeric_stats_to_proto(p.population))
               for p in result.numeric]
    return segsrv_pb2.ProfileResponse(info=info, segment_count=int(result.n_segment), row_count=int(result.n_rows),
                                      fields=fields, numeric_fields=numeric, universe=result.universe,
                                      suppressed=suppressed)
