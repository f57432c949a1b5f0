"""The JSON query form (seed 000): parse a relate / count request, render the answer.

Relate query keys: from, where, relate, select, limit, order_by, direction,
min_support, min_lift, max_p_value, prior_strength, include_condition_fields,
plan. `select` items are `$<statistic>` (e.g. `$lift`, `$p`, `$support`),
`$field`, `$value`, or a field name (the hit's value when the hit belongs to
that field, else null). See docs/query.md.
"""

from __future__ import annotations

import math

from ..errors import QueryError
from ..snapshot.reader import Snapshot
from ..snapshot.spec import suggest
from .conditions import evaluate, parse_where
from .relate import STAT_NAMES, RelateQuery, RelateResult, relate
from .. import _kernels

RELATE_KEYS = {
    "from", "where", "relate", "select", "limit", "order_by", "direction", "min_support",
    "min_lift", "max_p_value", "prior_strength", "include_condition_fields", "plan",
}
DEFAULT_SELECT = ["$field", "$value", "$support", "$p", "$p_base", "$lift", "$lift_smoothed", "$p_value", "$q_value"]


def _check_keys(obj, allowed, kind):
    if not isinstance(obj, dict):
        raise QueryError(f"{kind} query must be a JSON object, got {type(obj).__name__}", [("query", "not an object")])
    for key in obj:
        if key not in allowed:
            raise QueryError(
                f"{kind} query: unknown key {key!r}{suggest(key, allowed)}; allowed: {sorted(allowed)}",
                [(key, "unknown key")],
            )


def relate_query_from_json(obj: dict) -> tuple[RelateQuery, list[str]]:
    _check_keys(obj, RELATE_KEYS, "relate")
    relate_fields = obj.get("relate")
    if relate_fields is not None:
        if isinstance(relate_fields, str):
            relate_fields = [relate_fields]
        if not isinstance(relate_fields, list):
            raise QueryError("relate: expected a list of field names or globs", [("relate", "expected a list")])
    select = obj.get("select") or DEFAULT_SELECT
    if not isinstance(select, list) or not all(isinstance(s, str) for s in select):
        raise QueryError("select: expected a list of strings", [("select", "expected a list of strings")])
    for s in select:
        if s.startswith("$") and s[1:] not in STAT_NAMES and s not in ("$field", "$value", "$feature_id"):
            names = ["$" + n for n in STAT_NAMES] + ["$field", "$value"]
            raise QueryError(f"select: unknown statistic {s!r}{suggest(s, names)}", [("select", f"unknown {s!r}")])
    q = RelateQuery(where=parse_where(obj.get("where")), universe=obj.get("from"), relate=relate_fields)
    for key, attr in (("limit", "limit"), ("order_by", "order_by"), ("direction", "direction"),
                      ("min_support", "min_support"), ("min_lift", "min_lift"), ("max_p_value", "max_p_value"),
                      ("prior_strength", "prior_strength"), ("plan", "plan")):
        if key in obj:
            setattr(q, attr, obj[key])
    if "include_condition_fields" in obj:
        if not isinstance(obj["include_condition_fields"], bool):
            raise QueryError(
                f"include_condition_fields: expected true or false, got {obj['include_condition_fields']!r}",
                [("include_condition_fields", "expected a boolean")],
            )
        q.exclude_condition_fields = not obj["include_condition_fields"]
    q.validate()
    return q, select


def _json_number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def render_relate(result: RelateResult, select: list[str]) -> dict:
    rows = []
    for hit in result.hits:
        row = {}
        for s in select:
            if s == "$field":
                row[s] = hit.field
            elif s == "$value":
                row[s] = hit.value
            elif s == "$feature_id":
                row[s] = hit.feature_id
            elif s.startswith("$"):
                row[s] = _json_number(hit.stats[s[1:]])
            else:
                row[s] = hit.value if hit.field == s else None
        rows.append(row)
    return {
        "snapshot": result.snapshot,
        "version": result.version,
        "from": result.universe,
        "n_rows": result.n_rows,
        "n_condition": result.n_condition,
        "n_candidates": result.n_candidates,
        "n_matching": result.n_matching,
        "plan": result.plan,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "hits": rows,
    }


def run_relate_json(snapshot: Snapshot, obj: dict) -> dict:
    query, select = relate_query_from_json(obj)
    return render_relate(relate(snapshot, query), select)


def run_count_json(snapshot: Snapshot, obj: dict) -> dict:
    _check_keys(obj, {"from", "where"}, "count")
    universe = snapshot.universe(obj.get("from"))
    bits = evaluate(snapshot, universe, parse_where(obj.get("where")))
    return {
        "snapshot": snapshot.name,
        "version": snapshot.version,
        "from": universe.name,
        "n_rows": universe.n_rows,
        "count": int(_kernels.popcount(bits)),
    }
