"""Conditions for the gRPC client: JSON `where` form / engine dataclasses <-> proto Condition.

One code path: a JSON `where` is parsed with the engine's ``parse_where`` (so a
malformed where raises exactly the QueryError a local query raises), then the
dataclass tree is converted to a ``segsrv.v1.Condition``. The reverse
(``condition_from_proto`` and ``where_from_condition``) renders conditions the
server sends back, e.g. the segment catalog.

Imports the engine's condition module only (no grpc, no segsrv.server).
"""

from __future__ import annotations

from .engine.conditions import (
    All, And, AnyOf, Not, Or, Range, SegmentRef, Term, check_limits, parse_where, value_text,
)
from .errors import QueryError
from .v1 import condition_pb2 as pb

_DATACLASSES = (Term, AnyOf, Range, And, Or, Not, All, SegmentRef)


def to_condition(where, at: str = "where"):
    """JSON where (dict / None), engine dataclass, or proto Condition -> engine dataclass tree.

    Raises QueryError (the engine's, with violations) for malformed input and
    LimitExceededError for conditions past the documented limits.
    """
    if isinstance(where, _DATACLASSES):
        cond = where
    elif isinstance(where, pb.Condition):
        cond = condition_from_proto(where, at)
    else:
        cond = parse_where(where, at)
    check_limits(cond)
    return cond


def condition_to_proto(cond) -> pb.Condition:
    """Engine dataclass tree -> proto Condition (every node's kind set; All -> all_rows)."""
    if isinstance(cond, Term):
        return pb.Condition(term=pb.Term(field=cond.field, value=cond.value))
    if isinstance(cond, AnyOf):
        return pb.Condition(value_set=pb.ValueSet(field=cond.field, values=list(cond.values)))
    if isinstance(cond, Range):
        bounds = {k: float(v) for k, v in (("gte", cond.gte), ("gt", cond.gt), ("lte", cond.lte), ("lt", cond.lt))
                  if v is not None}
        return pb.Condition(numeric_range=pb.NumericRange(field=cond.field, **bounds))
    if isinstance(cond, And):
        return pb.Condition(all_of=pb.ConditionList(conditions=[condition_to_proto(c) for c in cond.items]))
    if isinstance(cond, Or):
        return pb.Condition(any_of=pb.ConditionList(conditions=[condition_to_proto(c) for c in cond.items]))
    if isinstance(cond, Not):
        return pb.Condition(negation=condition_to_proto(cond.item))
    if isinstance(cond, All):
        return pb.Condition(all_rows=pb.AllRows())
    if isinstance(cond, SegmentRef):
        return pb.Condition(segment=pb.SegmentReference(name=cond.name))
    raise QueryError(f"not a condition: {cond!r}", [("where", "not a condition")])


def where_to_proto(where, at: str = "where") -> pb.Condition:
    """Any accepted condition form -> proto Condition."""
    return condition_to_proto(to_condition(where, at))


def condition_from_proto(msg: pb.Condition, at: str = "condition"):
    """Proto Condition -> engine dataclass tree (an unset condition is All)."""
    kind = msg.WhichOneof("kind")

    def bad(what: str):
        raise QueryError(f"{at}: {what}", [(at, what)])

    if kind is None or kind == "all_rows":
        return All()
    if kind == "term":
        if not msg.term.field:
            bad("term without a field")
        return Term(msg.term.field, msg.term.value)
    if kind == "value_set":
        if not msg.value_set.field:
            bad("value_set without a field")
        if not msg.value_set.values:
            bad("value_set without values")
        return AnyOf(msg.value_set.field, tuple(msg.value_set.values))
    if kind == "numeric_range":
        r = msg.numeric_range
        if not r.field:
            bad("numeric_range without a field")
        bounds = {k: getattr(r, k) for k in ("gte", "gt", "lte", "lt") if r.HasField(k)}
        return Range(r.field, **bounds)
    if kind in ("all_of", "any_of"):
        items = getattr(msg, kind).conditions
        if not items:
            bad(f"{kind} without conditions")
        parts = tuple(condition_from_proto(c, f"{at}.{kind}[{i}]") for i, c in enumerate(items))
        return And(parts) if kind == "all_of" else Or(parts)
    if kind == "negation":
        return Not(condition_from_proto(msg.negation, f"{at}.negation"))
    if kind == "segment":
        if not msg.segment.name:
            bad("segment reference without a name")
        return SegmentRef(msg.segment.name)
    bad(f"unknown condition kind {kind!r}")  # pragma: no cover


def where_from_condition(cond) -> dict:
    """Engine dataclass tree -> the JSON `where` form (parse_where of it gives the tree back)."""
    if isinstance(cond, Term):
        return {cond.field: cond.value}
    if isinstance(cond, AnyOf):
        return {cond.field: {"$in": list(cond.values)}}
    if isinstance(cond, Range):
        return {cond.field: {f"${k}": v for k, v in (("gte", cond.gte), ("gt", cond.gt), ("lte", cond.lte),
                                                      ("lt", cond.lt)) if v is not None}}
    if isinstance(cond, And):
        return {"$and": [where_from_condition(c) for c in cond.items]}
    if isinstance(cond, Or):
        return {"$or": [where_from_condition(c) for c in cond.items]}
    if isinstance(cond, Not):
        return {"$not": where_from_condition(cond.item)}
    if isinstance(cond, All):
        return {}
    if isinstance(cond, SegmentRef):
        return {"$segment": cond.name}
    raise QueryError(f"not a condition: {cond!r}", [("where", "not a condition")])


def where_from_proto(msg: pb.Condition) -> dict:
    """Proto Condition -> the JSON `where` form."""
    return where_from_condition(condition_from_proto(msg))


__all__ = [
    "to_condition", "condition_to_proto", "where_to_proto", "condition_from_proto",
    "where_from_condition", "where_from_proto", "value_text",
]
