"""Conditions: a small boolean tree over features, and its evaluation to a bitset.

The tree is made of frozen dataclasses (Term, AnyOf, Range, And, Or, Not, All,
SegmentRef). ``parse_where`` turns the JSON ``where`` form into a tree:

    {"a": "x", "b": "y"}            AND of terms
    {"a": ["x", "y"]}               any of the values ({"$in": [...]} too)
    {"a": {"$gte": 1, "$lt": 5}}    numeric range on a raw numeric column
    {"a": {"$ne": "x"}}             NOT a=x
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}
    {"$segment": "name"}            a segment of the snapshot's catalog
    {} or {"$all": true}            every row

``evaluate`` compiles a tree against a universe into a fresh uint64 bitset
(bits past n_rows are zero). The ``Evaluator`` resolves a tree once (fields, values,
ranges, segment references and their errors) for any ops object (``BitsetOps`` by
default; segsrv.engine.assign builds membership programs with the same resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _kernels
from ..errors import LimitExceededError, QueryError, UnknownFieldError, UnknownSegmentError
from ..snapshot.reader import Snapshot, Universe
from ..snapshot.spec import suggest

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

_RANGE_OPS = {"$gte": "gte", "$gt": "gt", "$lte": "lte", "$lt": "lt"}


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
    raise QueryError(
        f"{where}: value {value!r} must be a string, number or boolean",
        [(where, f"bad value {value!r}")],
    )


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


def check_limits(cond: Condition, max_depth: int = MAX_DEPTH, max_terms: int = MAX_TERMS) -> None:
    terms = 0

    def walk(c, depth: int) -> None:
        nonlocal terms
        if depth > max_depth:
            raise LimitExceededError(
                f"condition nests deeper than {max_depth} levels", [("where", f"depth > {max_depth}")]
            )
        if isinstance(c, (And, Or)):
            for item in c.items:
                walk(item, depth + 1)
        elif isinstance(c, Not):
            walk(c.item, depth + 1)
        else:
            terms += len(c.values) if isinstance(c, AnyOf) else 1
            if terms > max_terms:
                raise LimitExceededError(
                    f"condition has more than {max_terms} terms", [("where", f"more than {max_terms} terms")]
                )

    walk(cond, 0)


def condition_fields(cond: Condition) -> set[str]:
    """Fields a condition mentions directly (not through segment references)."""
    if isinstance(cond, (Term, AnyOf, Range)):
        return {cond.field}
    if isinstance(cond, (And, Or)):
        return set().union(*(condition_fields(c) for c in cond.items))
    if isinstance(cond, Not):
        return condition_fields(cond.item)
    return set()


def tail_mask(n_rows: int, n_words: int) -> np.ndarray:
    """All-ones bitset of n_rows bits."""
    bits = np.full(n_words, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    rem = n_rows & 63
    if rem and n_words:
        bits[-1] = np.uint64((1 << rem) - 1)
    return bits


def bool_to_bitset(mask: np.ndarray, n_words: int) -> np.ndarray:
    """bool[n_rows] -> uint64 bitset of n_words words (row i is bit i % 64 of word i // 64)."""
    packed = np.packbits(mask, bitorder="little")
    bits = np.zeros(n_words, dtype=np.uint64)
    bits.view(np.uint8)[: len(packed)] = packed
    return bits


def feature_bits(universe: Universe, fid: int) -> np.ndarray:
    """The rows of feature `fid` as a bitset to read, never to write: a dense feature's row of the
    memory-mapped matrix itself (no copy), a sparse one materialised."""
    slot = int(universe.feature_slot[fid])
    if slot >= 0:
        return universe.dense[slot]
    return _kernels.ids_to_bitset(np.ascontiguousarray(universe.sparse_feature_ids(fid)), universe.n_words)


def feature_bitset(universe: Universe, fid: int, out: np.ndarray | None = None) -> np.ndarray:
    """The rows of feature `fid` as a bitset of the caller's own (a copy, or written into `out`)."""
    slot = int(universe.feature_slot[fid])
    if slot >= 0:
        row = universe.dense[slot]
        if out is None:
            return np.array(row, dtype=np.uint64)
        out[:] = row
        return out
    return _kernels.ids_to_bitset(np.ascontiguousarray(universe.sparse_feature_ids(fid)), universe.n_words, out)


def range_mask(x: np.ndarray, cond: Range) -> np.ndarray:
    """bool mask of the raw values `x` within the range (NaN = missing: never within)."""
    with np.errstate(invalid="ignore"):
        mask = ~np.isnan(x)
        if cond.gte is not None:
            mask &= x >= cond.gte
        if cond.gt is not None:
            mask &= x > cond.gt
        if cond.lte is not None:
            mask &= x <= cond.lte
        if cond.lt is not None:
            mask &= x < cond.lt
    return mask


class BitsetOps:
    """What the Evaluator builds by default: a fresh uint64 bitset over the universe per node.

    The Evaluator resolves a tree (fields, values, numeric ranges, segment references, with
    their errors) and hands the resolved leaves and combinations to an ops object with these
    methods; another ops object builds something else from the same resolution (the compiled
    membership programs of segsrv.engine.assign). Parts come as iterators, evaluated lazily, so
    bitset ops hold one intermediate at a time."""

    def __init__(self, universe: Universe):
        self.universe = universe

    def feature(self, fid: int) -> np.ndarray:
        return feature_bitset(self.universe, fid)

    def range(self, info, cond: Range) -> np.ndarray:
        return bool_to_bitset(range_mask(np.asarray(info.numeric), cond), self.universe.n_words)

    def all_of(self, parts) -> np.ndarray:
        return _fold(parts, _kernels.bitset_and)

    def any_of(self, parts) -> np.ndarray:
        return _fold(parts, _kernels.bitset_or)

    def negate(self, inner: np.ndarray) -> np.ndarray:
        u = self.universe
        return _kernels.bitset_andnot(tail_mask(u.n_rows, u.n_words), inner)

    def everything(self) -> np.ndarray:
        return tail_mask(self.universe.n_rows, self.universe.n_words)


def _fold(parts, combine) -> np.ndarray:
    """Combine bitsets into the first one, in place (each part is a fresh bitset of its own)."""
    parts = iter(parts)
    bits = next(parts)
    for b in parts:
        combine(bits, b, bits)
    return bits


class Evaluator:
    """Evaluates condition trees against one universe of a snapshot (to bitsets, or to what `ops`
    builds). `fields` collects the fields the evaluated trees mention, through segment references too."""

    def __init__(self, snapshot: Snapshot, universe: Universe, ops=None):
        self.snapshot = snapshot
        self.universe = universe
        self.ops = ops if ops is not None else BitsetOps(universe)
        self.fields: set[str] = set()
        self._segment_stack: list[str] = []

    def evaluate(self, cond: Condition):
        ops = self.ops
        if isinstance(cond, Term):
            return self._term(cond.field, cond.value)
        if isinstance(cond, AnyOf):
            return ops.any_of(self._term(cond.field, v) for v in cond.values)
        if isinstance(cond, Range):
            return self._range(cond)
        if isinstance(cond, And):
            return ops.all_of(self.evaluate(item) for item in cond.items)
        if isinstance(cond, Or):
            return ops.any_of(self.evaluate(item) for item in cond.items)
        if isinstance(cond, Not):
            return ops.negate(self.evaluate(cond.item))
        if isinstance(cond, All):
            return ops.everything()
        if isinstance(cond, SegmentRef):
            return self._segment(cond.name)
        raise QueryError(f"not a condition: {cond!r}", [("where", "not a condition")])

    def _term(self, field: str, value: str):
        self.fields.add(field)
        info = self.universe.field(field)
        if info.kind == "numeric" and not info.has_value(value) and info.numeric is not None:
            try:
                x = float(value)
            except ValueError:
                pass
            else:  # a raw number on a numeric field is an equality range
                return self._range(Range(field, gte=x, lte=x))
        return self.ops.feature(info.feature_offset + info.value_index(value))

    def _range(self, cond: Range):
        u = self.universe
        self.fields.add(cond.field)
        info = u.field(cond.field)
        if info.kind != "numeric":
            raise QueryError(
                f"range on field {cond.field!r}, which is {info.kind}, not numeric",
                [(cond.field, "range on a non-numeric field")],
            )
        if info.numeric is None:
            raise QueryError(
                f"field {cond.field!r} has no raw values in universe {u.name!r} (it is reached through a "
                f"reverse link, so it only has bands); use its bands: {info.values}",
                [(cond.field, "no raw values for a range; use a band")],
            )
        return self.ops.range(info, cond)

    def _segment(self, name: str):
        catalog = self.snapshot.segments or {}
        if name not in catalog:
            raise UnknownSegmentError(
                f"snapshot {self.snapshot.name!r} has no segment {name!r}{suggest(name, catalog)}"
                + ("" if catalog else " (its segment catalog is empty)"),
                [("$segment", f"unknown segment {name!r}")],
            )
        if name in self._segment_stack:
            cycle = " -> ".join(self._segment_stack + [name])
            raise QueryError(f"segment reference cycle: {cycle}", [("$segment", f"cycle {cycle}")])
        seg = catalog[name]
        if seg.get("universe") not in (None, self.universe.name):
            raise QueryError(
                f"segment {name!r} is defined over universe {seg['universe']!r}, not {self.universe.name!r}",
                [("$segment", "segment of another universe")],
            )
        self._segment_stack.append(name)
        try:
            return self.evaluate(parse_where(seg["where"], f"segment {name}"))
        finally:
            self._segment_stack.pop()


def evaluate(snapshot: Snapshot, universe: Universe, cond: Condition) -> np.ndarray:
    check_limits(cond)
    return Evaluator(snapshot, universe).evaluate(cond)


def validate_fields(universe: Universe, cond: Condition) -> None:
    """Raise UnknownFieldError for the first unknown field (cheap pre-check)."""
    for name in sorted(condition_fields(cond)):
        if name not in universe.fields:
            raise UnknownFieldError(
                f"universe {universe.name!r} has no field {name!r}{suggest(name, universe.fields)}",
                [(name, "unknown field")],
            )
