"""Conditions, once: the tree, its JSON `where` form and its proto mapping.

The tree is made of frozen dataclasses (Term, AnyOf, Range, And, Or, Not, All,
SegmentRef). The JSON `where` form (``parse_where`` / ``where_json``):

    {"a": "x", "b": "y"}            AND of terms
    {"a": ["x", "y"]}               any of the values ({"$in": [...]} too)
    {"a": {"$gte": 1, "$lt": 5}}    numeric range on a raw numeric column
    {"a": {"$ne": "x"}}             NOT a=x
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}
    {"$segment": "name"}            a segment of the snapshot's catalog
    {} or {"$all": true}            every row

The proto form is ``segsrv.v1.Condition`` (``to_proto`` / ``from_proto``).
While a request's condition is read from the proto, ``RequestPaths`` records
where each field, value, range and segment name sits in the request, so that
an engine error about the domain field ``region`` (a ``Violation`` whose kind
and item say what it is about) is reported at the request field
``condition.all_of.conditions[1].term.field``. Evaluation against a snapshot
lives in segsrv.engine.conditions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ..errors import LimitExceededError, QueryError, Violation, as_violation, suggest
from ..v1 import condition_pb2 as pb

MAX_DEPTH = 32
MAX_TERMS = 1024


@dataclass(frozen=True)
class Term:
    field: str
    value: str


@dataclass(frozen=True)
class AnyOf:
    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    field: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


@dataclass(frozen=True)
class All:
    pass


@dataclass(frozen=True)
class SegmentRef:
    name: str


Condition = Term | AnyOf | Range | And | Or | Not | All | SegmentRef
CONDITION_TYPES = (Term, AnyOf, Range, And, Or, Not, All, SegmentRef)

_RANGE_OPS = {"$gte": "gte", "$gt": "gt", "$lte": "lte", "$lt": "lt"}
_BOUNDS = ("gte", "gt", "lte", "lt")


# --- the JSON form ----------------------------------------------------------------


def value_text(value, where: str = "where") -> str:
    """Canonical text of a scalar condition value (as the builder writes values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    raise QueryError(f"{where}: value {value!r} must be a string, number or boolean", [(where, f"bad value {value!r}")])


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise QueryError(f"{where}: expected a finite number, got {value!r}", [(where, f"not a number: {value!r}")])
    return float(value)


def parse_where(obj, where: str = "where") -> Condition:
    """JSON `where` form -> condition tree (raises QueryError naming the bad part)."""
    if obj is None or obj == {}:
        return All()
    if not isinstance(obj, dict):
        raise QueryError(f"{where}: expected an object, got {obj!r}", [(where, "expected an object")])
    items = []
    for key, val in obj.items():
        at = f"{where}.{key}"
        if key == "$and" or key == "$or":
            if not isinstance(val, list) or not val:
                raise QueryError(f"{at}: expected a non-empty list of conditions", [(at, "expected a non-empty list")])
            parts = tuple(parse_where(v, f"{at}[{i}]") for i, v in enumerate(val))
            items.append(And(parts) if key == "$and" else Or(parts))
        elif key == "$not":
            items.append(Not(parse_where(val, at)))
        elif key == "$segment":
            if not isinstance(val, str) or not val:
                raise QueryError(f"{at}: expected a segment name", [(at, "expected a segment name")])
            items.append(SegmentRef(val))
        elif key == "$all":
            if val is not True:
                raise QueryError(f"{at}: only true is allowed", [(at, "expected true")])
            items.append(All())
        elif key.startswith("$"):
            raise QueryError(
                f"{where}: unknown operator {key!r}{suggest(key, ['$and', '$or', '$not', '$segment', '$all'])}",
                [(at, "unknown operator")],
            )
        else:
            items.append(_parse_field(key, val, at))
    return items[0] if len(items) == 1 else And(tuple(items))


def _parse_field(field: str, val, at: str) -> Condition:
    if isinstance(val, list):
        if not val:
            raise QueryError(f"{at}: empty list of values", [(at, "empty list")])
        return AnyOf(field, tuple(value_text(v, at) for v in val))
    if isinstance(val, dict):
        if not val:
            raise QueryError(f"{at}: empty operator object", [(at, "empty object")])
        if set(val) <= set(_RANGE_OPS):
            bounds = {_RANGE_OPS[k]: _number(v, f"{at}.{k}") for k, v in val.items()}
            if "gte" in bounds and "gt" in bounds or "lte" in bounds and "lt" in bounds:
                raise QueryError(f"{at}: give at most one lower and one upper bound", [(at, "conflicting bounds")])
            return Range(field, **bounds)
        if set(val) == {"$in"}:
            return _parse_field(field, val["$in"] if isinstance(val["$in"], list) else [val["$in"]], at)
        if set(val) == {"$ne"}:
            return Not(Term(field, value_text(val["$ne"], at)))
        bad = sorted(set(val) - set(_RANGE_OPS) - {"$in", "$ne"})
        raise QueryError(
            f"{at}: unknown or mixed operators {bad or sorted(val)}; use $gte/$gt/$lte/$lt, $in or $ne",
            [(at, f"bad operators {bad or sorted(val)}")],
        )
    return Term(field, value_text(val, at))


def where_json(cond: Condition) -> dict:
    """Condition tree -> the JSON `where` form (parse_where of it gives the tree back)."""
    if isinstance(cond, Term):
        return {cond.field: cond.value}
    if isinstance(cond, AnyOf):
        return {cond.field: {"$in": list(cond.values)}}
    if isinstance(cond, Range):
        return {cond.field: {f"${k}": getattr(cond, k) for k in _BOUNDS if getattr(cond, k) is not None}}
    if isinstance(cond, And):
        return {"$and": [where_json(c) for c in cond.items]}
    if isinstance(cond, Or):
        return {"$or": [where_json(c) for c in cond.items]}
    if isinstance(cond, Not):
        return {"$not": where_json(cond.item)}
    if isinstance(cond, All):
        return {}
    if isinstance(cond, SegmentRef):
        return {"$segment": cond.name}
    raise QueryError(f"not a condition: {cond!r}", [("where", "not a condition")])


# --- the proto form ---------------------------------------------------------------


def to_proto(cond: Condition) -> pb.Condition:
    """Condition tree -> segsrv.v1.Condition (every node's kind set; All -> all_rows)."""
    if isinstance(cond, Term):
        return pb.Condition(term=pb.Term(field=cond.field, value=cond.value))
    if isinstance(cond, AnyOf):
        return pb.Condition(value_set=pb.ValueSet(field=cond.field, values=list(cond.values)))
    if isinstance(cond, Range):
        bounds = {k: float(getattr(cond, k)) for k in _BOUNDS if getattr(cond, k) is not None}
        return pb.Condition(numeric_range=pb.NumericRange(field=cond.field, **bounds))
    if isinstance(cond, And):
        return pb.Condition(all_of=pb.ConditionList(conditions=[to_proto(c) for c in cond.items]))
    if isinstance(cond, Or):
        return pb.Condition(any_of=pb.ConditionList(conditions=[to_proto(c) for c in cond.items]))
    if isinstance(cond, Not):
        return pb.Condition(negation=to_proto(cond.item))
    if isinstance(cond, All):
        return pb.Condition(all_rows=pb.AllRows())
    if isinstance(cond, SegmentRef):
        return pb.Condition(segment=pb.SegmentReference(name=cond.name))
    raise QueryError(f"not a condition: {cond!r}", [("where", "not a condition")])


def _bad(path: str, description: str) -> QueryError:
    return QueryError(f"{path}: {description}", [(path, description)])


def from_proto(msg: pb.Condition | None, paths: "RequestPaths | None" = None, path: str | None = None) -> Condition:
    """A request's condition -> tree; unset (or no message) at the top means every row. Records in
    `paths` where each name sits; structural faults raise QueryError at their request path."""
    paths = paths if paths is not None else RequestPaths()
    if msg is None or msg.WhichOneof("kind") is None:
        return All()
    return _node(msg, paths, path or paths.root, 0)


def _node(msg: pb.Condition, paths: "RequestPaths", path: str, depth: int) -> Condition:
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"{path}: condition nests deeper than {MAX_DEPTH} levels",
                                 [(path, f"depth > {MAX_DEPTH}")])
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise _bad(path, "condition has no kind set (one of term, value_set, numeric_range, all_of, any_of, "
                         "negation, segment, all_rows)")
    at = f"{path}.{kind}"
    if kind == "term":
        paths.add_field(msg.term.field, at)
        paths.values[(msg.term.field, msg.term.value)].append(f"{at}.value")
        return Term(msg.term.field, msg.term.value)
    if kind == "value_set":
        paths.add_field(msg.value_set.field, at)
        if not msg.value_set.values:
            raise _bad(f"{at}.values", "at least one value is required")
        for i, v in enumerate(msg.value_set.values):
            paths.values[(msg.value_set.field, v)].append(f"{at}.values[{i}]")
        return AnyOf(msg.value_set.field, tuple(msg.value_set.values))
    if kind == "numeric_range":
        r = msg.numeric_range
        paths.add_field(r.field, at)
        paths.ranges[r.field].append(at)
        bounds = {}
        for name in _BOUNDS:
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


def to_condition(where, at: str = "where") -> Condition:
    """Any accepted form (JSON where dict / None, tree, proto Condition) -> tree, within the limits."""
    if isinstance(where, CONDITION_TYPES):
        cond = where
    elif isinstance(where, pb.Condition):
        cond = from_proto(where, RequestPaths(at))
    else:
        cond = parse_where(where, at)
    check_limits(cond)
    return cond


# --- properties of a tree ------------------------------------------------------------


def check_limits(cond: Condition, max_depth: int = MAX_DEPTH, max_terms: int = MAX_TERMS) -> None:
    terms = 0

    def walk(c, depth: int) -> None:
        nonlocal terms
        if depth > max_depth:
            raise LimitExceededError(f"condition nests deeper than {max_depth} levels",
                                     [("where", f"depth > {max_depth}")])
        if isinstance(c, (And, Or)):
            for item in c.items:
                walk(item, depth + 1)
        elif isinstance(c, Not):
            walk(c.item, depth + 1)
        else:
            terms += len(c.values) if isinstance(c, AnyOf) else 1
            if terms > max_terms:
                raise LimitExceededError(f"condition has more than {max_terms} terms",
                                         [("where", f"more than {max_terms} terms")])

    walk(cond, 0)


def _leaves(cond: Condition):
    if isinstance(cond, (And, Or)):
        for c in cond.items:
            yield from _leaves(c)
    elif isinstance(cond, Not):
        yield from _leaves(cond.item)
    else:
        yield cond


def condition_fields(cond: Condition) -> set[str]:
    """Fields a condition mentions directly (not through segment references)."""
    return {c.field for c in _leaves(cond) if isinstance(c, (Term, AnyOf, Range))}


def segment_refs(cond: Condition) -> set[str]:
    """Names of the segments a condition references directly."""
    return {c.name for c in _leaves(cond) if isinstance(c, SegmentRef)}


# --- where a violation sits in the request -----------------------------------------------


PATTERN_NAMES = ("relate", "fields", "evidence_fields")  # engine names of lists of field names or globs


class RequestPaths:
    """Where the parts of one request sit in its message, for reporting violations.

    root      the request field holding the condition ("condition", "segment", "ids")
    patterns  (request list name, its items): the list of field names or globs ("fields",
              "evidence_fields") whose item a "pattern" violation names
    aliases   engine names of request parts -> request paths ({"target": ["target_field"]})
    target    (field, value) of a Score / Export target: an unknown value of it is `target_value`
    Fields, values, ranges and segment names are recorded while the condition is read.
    """

    def __init__(self, root: str = "condition", patterns: tuple[str, list[str]] | None = None,
                 aliases: dict[str, list[str]] | None = None, target: tuple[str, str] | None = None):
        self.root = root
        self.target = target
        self.pattern_list, self.pattern_items = patterns or ("fields", [])
        self.aliases = {"from": ["universe"], "where": [root], **(aliases or {})}
        self.fields: dict[str, list[str]] = defaultdict(list)
        self.values: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.ranges: dict[str, list[str]] = defaultdict(list)
        self.segments: dict[str, list[str]] = defaultdict(list)

    def add_field(self, name: str, at: str) -> None:
        if not name:
            raise _bad(f"{at}.field", "field is required")
        self.fields[name].append(f"{at}.field")

    def add_term(self, name: str, value: str, at: str) -> None:
        """A (field, value) pair outside the condition (evidence[i], features[i])."""
        if not name:
            raise _bad(f"{at}.field", "field is required")
        self.fields[name].append(f"{at}.field")
        self.values[(name, value)].append(f"{at}.value")

    def locate(self, violation) -> list[str]:
        """Request paths of an engine violation; [its field] when the request has no such part."""
        v: Violation = as_violation(violation)
        field, kind, item = v.field, v.kind, v.item
        if field in PATTERN_NAMES:
            if kind != "pattern":
                return [self.pattern_list]
            hits = [f"{self.pattern_list}[{i}]" for i, p in enumerate(self.pattern_items) if p == item]
            return hits or [self.pattern_list]
        if field == "$segment":
            if kind == "segment" and item in self.segments:
                return list(self.segments[item])
            return [p for ps in self.segments.values() for p in ps] or [self.root]
        if kind == "value" and self.target is not None and (field, item) == self.target:
            return ["target_value"]
        if field in self.fields:
            if kind == "value" and (field, item) in self.values:
                return list(self.values[(field, item)])
            if kind == "range" and field in self.ranges:
                return list(self.ranges[field])
            return list(self.fields[field])
        if field in self.aliases:
            return list(self.aliases[field])
        return [field]
