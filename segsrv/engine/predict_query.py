"""The JSON query form of predict, score and evaluate: parse a request, render the answer.

Like segsrv.engine.query does for relate and count: `segsrv query predict|score|evaluate
--local` runs these in-process, and the gRPC client (segsrv.client) parses the same JSON
with the same functions and renders the server's answer with the same renderers, so
`--local` and `--addr` print the same JSON. The renderers read attributes only, so the
client can hand them objects rebuilt from the proto responses. See docs/query.md.

Predict keys:  from, segment, target, id, evidence, evidence_fields, prior_strength,
               min_support, min_support_fraction, max_p_value, method
Score keys:    from, segment, target, value, top_k, evidence_fields, prior_strength, method
Evaluate keys: from, segment, target, evidence_fields, holdout_fraction, seed,
               prior_strength, min_support, min_support_fraction, max_p_value, method
"""

from __future__ import annotations

import math
import numbers

from ..errors import QueryError
from ..snapshot.reader import Snapshot
from .conditions import parse_where, value_text
from .evaluate import EvaluateQuery, evaluate
from .predict import PredictQuery, ScoreQuery, predict, score_segment
from .query import _check_keys, _json_number

PREDICT_KEYS = {"from", "segment", "target", "id", "evidence", "evidence_fields", "prior_strength",
                "min_support", "min_support_fraction", "max_p_value", "method"}
SCORE_KEYS = {"from", "segment", "target", "value", "top_k", "evidence_fields", "prior_strength", "method"}
EVALUATE_KEYS = {"from", "segment", "target", "evidence_fields", "holdout_fraction", "seed", "prior_strength",
                 "min_support", "min_support_fraction", "max_p_value", "method"}


def _bad(key: str, description: str):
    raise QueryError(f"{key}: {description}", [(key, description)])


def _string(obj: dict, key: str, required: bool = False):
    val = obj.get(key)
    if val is None:
        if required:
            _bad(key, "required")
        return None
    if not isinstance(val, str) or not val:
        _bad(key, f"expected a non-empty string, got {val!r}")
    return val


def _real(obj: dict, key: str):
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, numbers.Real) or not math.isfinite(val):
        _bad(key, f"expected a finite number, got {val!r}")
    return float(val)


def _int(obj: dict, key: str):
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, numbers.Integral):
        _bad(key, f"expected an integer, got {val!r}")
    return int(val)


def _evidence_fields(obj: dict):
    val = obj.get("evidence_fields")
    if val is None:
        return None
    if isinstance(val, str):
        val = [val]
    if not isinstance(val, list) or not all(isinstance(f, str) and f for f in val):
        _bad("evidence_fields", "expected a list of field names or globs")
    return list(val)


def _evidence(val) -> list[tuple[str, str]]:
    """{"field": value, ...} or [["field", value], ...] -> [(field, value text)]."""
    if val is None:
        return []
    out: list[tuple[str, str]] = []
    if isinstance(val, dict):
        for k, v in val.items():
            out.append((k, value_text(v, f"evidence.{k}")))
        return out
    if isinstance(val, list):
        for i, item in enumerate(val):
            if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str) or not item[0]:
                _bad(f"evidence[{i}]", f"expected a [field, value] pair, got {item!r}")
            out.append((item[0], value_text(item[1], f"evidence[{i}]")))
        return out
    _bad("evidence", 'expected {"field": value, ...} or [["field", value], ...]')


def _method(obj: dict):
    val = obj["method"]
    if not isinstance(val, str) or not val:
        _bad("method", f"expected a method name, got {val!r}")
    return val


def _common(obj: dict, q) -> None:
    """prior_strength / min_support / method when given (otherwise the engine's defaults stay)."""
    if "prior_strength" in obj:
        q.prior_strength = _real(obj, "prior_strength")
    if "min_support" in obj:
        q.min_support = _int(obj, "min_support")
    for key in ("min_support_fraction", "max_p_value"):
        if key in obj:
            setattr(q, key, _real(obj, key))
    if "method" in obj:
        q.method = _method(obj)


def predict_query_from_json(obj: dict) -> PredictQuery:
    _check_keys(obj, PREDICT_KEYS, "predict")
    row_id = obj.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == ""):
        _bad("id", f"expected a row id (string or integer), got {row_id!r}")
    q = PredictQuery(
        target=_string(obj, "target", required=True),
        universe=_string(obj, "from"),
        segment=parse_where(obj.get("segment"), "segment"),
        row_id=row_id,
        evidence=_evidence(obj.get("evidence")),
        evidence_fields=_evidence_fields(obj),
    )
    _common(obj, q)
    return q


def score_query_from_json(obj: dict) -> ScoreQuery:
    _check_keys(obj, SCORE_KEYS, "score")
    value = obj.get("value")
    if value is None:
        _bad("value", "required (the target value whose probability is the score)")
    q = ScoreQuery(
        target=_string(obj, "target", required=True),
        value=value_text(value, "value"),
        universe=_string(obj, "from"),
        segment=parse_where(obj.get("segment"), "segment"),
        evidence_fields=_evidence_fields(obj),
    )
    if "top_k" in obj:
        q.top_k = _int(obj, "top_k")
        if q.top_k < 0:
            _bad("top_k", f"must be a non-negative integer (0 = every member), got {q.top_k}")
    if "prior_strength" in obj:
        q.prior_strength = _real(obj, "prior_strength")
    if "method" in obj:
        q.method = _method(obj)
    return q


def evaluate_query_from_json(obj: dict) -> EvaluateQuery:
    _check_keys(obj, EVALUATE_KEYS, "evaluate")
    q = EvaluateQuery(
        target=_string(obj, "target", required=True),
        universe=_string(obj, "from"),
        segment=parse_where(obj.get("segment"), "segment"),
        evidence_fields=_evidence_fields(obj),
    )
    if "holdout_fraction" in obj:
        q.holdout_fraction = _real(obj, "holdout_fraction")
        if not 0 < q.holdout_fraction < 1:
            _bad("holdout_fraction", f"must be a number strictly between 0 and 1, got {q.holdout_fraction!r}")
    if "seed" in obj:
        q.seed = _int(obj, "seed")
        if not -(2 ** 63) <= q.seed < 2 ** 63:
            _bad("seed", f"must fit in 64 bits, got {q.seed}")
    _common(obj, q)
    return q


# --- rendering ------------------------------------------------------------------


def render_predict(result) -> dict:
    return {
        "snapshot": result.snapshot,
        "version": result.version,
        "from": result.universe,
        "target": result.target,
        "method": result.method,
        "multi_valued": bool(result.multi_valued),
        "n_segment": int(result.n_segment),
        "evidence": [[f, v] for f, v in result.evidence],
        "elapsed_ms": round(result.elapsed_ms, 3),
        "probabilities": [
            {
                "value": vp.value,
                "probability": _json_number(float(vp.probability)),
                "base_probability": _json_number(float(vp.base_probability)),
                "normalizer": _json_number(float(vp.normalizer)),
                "factors": [
                    {"evidence": [[f, v] for f, v in fa.evidence], "factor": _json_number(float(fa.factor)),
                     "support": int(fa.support), "kind": fa.kind, "note": fa.note}
                    for fa in vp.factors
                ],
            }
            for vp in result.probabilities
        ],
    }


def score_summary(result) -> dict:
    """Everything of a score answer but the scores."""
    return {
        "snapshot": result.snapshot,
        "version": result.version,
        "from": result.universe,
        "target": result.target,
        "value": result.value,
        "n_members": int(result.n_members),
        "returned": len(result.scores),
        "mean_score": _json_number(float(result.mean_score)),
        "elapsed_ms": round(result.elapsed_ms, 3),
    }


def render_score(result, ids) -> dict:
    """ids: the external ids of result.rows (rendered as text, the form gRPC carries)."""
    out = score_summary(result)
    out["scores"] = [{"id": str(i), "score": _json_number(float(s))} for i, s in zip(ids, result.scores)]
    return out


def render_evaluate(result) -> dict:
    return {
        "snapshot": result.snapshot,
        "version": result.version,
        "from": result.universe,
        "target": result.target,
        "method": result.method,
        "values": list(result.values),
        "n_train": int(result.n_train),
        "n_test": int(result.n_test),
        "accuracy": _json_number(float(result.accuracy)),
        "baseline_accuracy": _json_number(float(result.baseline_accuracy)),
        "baseline_value": result.baseline_value,
        "log_loss": _json_number(float(result.log_loss)),
        "auc": None if result.auc is None else _json_number(float(result.auc)),
        "positive_value": result.positive_value,
        "mean_rank": _json_number(float(result.mean_rank)),
        "geometric_mean_probability": _json_number(float(result.geometric_mean_probability)),
        "calibration_of": result.calibration_of,
        "calibration": [
            {"predicted_low": _json_number(float(b.predicted_low)), "predicted_high": _json_number(float(b.predicted_high)),
             "mean_predicted": _json_number(float(b.mean_predicted)), "observed_rate": _json_number(float(b.observed_rate)),
             "count": int(b.count)}
            for b in result.calibration
        ],
        "elapsed_ms": round(result.elapsed_ms, 3),
    }


# --- in-process --------------------------------------------------------------------


def run_predict_json(snapshot: Snapshot, obj: dict) -> dict:
    return render_predict(predict(snapshot, predict_query_from_json(obj)))


def run_score_json(snapshot: Snapshot, obj: dict) -> dict:
    result = score_segment(snapshot, score_query_from_json(obj))
    return render_score(result, snapshot.universe(result.universe).ids_for_rows(result.rows))


def run_evaluate_json(snapshot: Snapshot, obj: dict) -> dict:
    return render_evaluate(evaluate(snapshot, evaluate_query_from_json(obj)))
