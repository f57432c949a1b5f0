"""Evaluation of condition trees (segsrv.ops.conditions) to bitsets over a universe.

``evaluate`` compiles a tree against a universe into a fresh uint64 bitset
(bits past n_rows are zero). The ``Evaluator`` resolves a tree once (fields, values,
ranges, segment references and their errors: cycles and segments of other universes are
refused) for any ops object (``BitsetOps`` by default; segsrv.engine.assign builds
membership programs with the same resolution; segsrv.engine.count counts without building
what a count does not need).

``BitsetOps`` reads a dense feature's row of the memory-mapped matrix in place: a
combination writes into a bitset it allocates, and only a tree that is one dense feature
is copied (at the top, so every caller still owns what ``Evaluator.evaluate`` returns).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from ..errors import QueryError, UnknownFieldError, UnknownSegmentError, Violation
from ..ops.conditions import (All, And, AnyOf, Condition, Not, Or, Range, SegmentRef, Term, check_limits, condition_fields,
                              parse_where)
from ..snapshot.reader import Snapshot, Universe
from ..snapshot.spec import suggest


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


def raw_number(info, value: str) -> float | None:
    """The raw number a value of a numeric field gives instead of one of its band labels ("3" for
    tenure_months): the finite float, else None (a label, text, NaN or an infinity)."""
    if info.kind != "numeric" or info.has_value(value):
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def band_feature(info, x: float) -> int | None:
    """The feature id of the band of a numeric field holding the raw number x (band i is
    [edges[i-1], edges[i])); None when the field has no bands (no edges: no values at all). The one
    mapping of a raw number to its band: Assign's features and Predict's evidence use it."""
    if not info.edges:
        return None
    return info.feature_offset + int(np.searchsorted(np.asarray(info.edges, dtype=np.float64), x, side="right"))


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
        return feature_bits(self.universe, fid)  # read in place; `owned` copies it if it is the answer

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

    @staticmethod
    def owned(bits: np.ndarray) -> np.ndarray:
        """The answer as a bitset of the caller's own: a dense feature's row (read-only) copied."""
        return bits if bits.flags.writeable else bits.copy()


def _fold(parts, combine) -> np.ndarray:
    """Combine bitsets (read-only rows of the snapshot among them): the first combination writes a new
    bitset, the later ones write into it."""
    parts = iter(parts)
    bits = next(parts)
    second = next(parts, None)
    if second is None:
        return bits
    bits = combine(bits, second)
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
        """What the ops object builds for `cond` (a bitset of the caller's own with BitsetOps)."""
        out = self._evaluate(cond)
        owned = getattr(self.ops, "owned", None)
        return out if owned is None else owned(out)

    def _evaluate(self, cond: Condition):
        ops = self.ops
        if isinstance(cond, Term):
            return self._term(cond.field, cond.value)
        if isinstance(cond, AnyOf):
            return ops.any_of(self._term(cond.field, v) for v in cond.values)
        if isinstance(cond, Range):
            return self._range(cond)
        if isinstance(cond, And):
            return ops.all_of(self._evaluate(item) for item in cond.items)
        if isinstance(cond, Or):
            return ops.any_of(self._evaluate(item) for item in cond.items)
        if isinstance(cond, Not):
            return ops.negate(self._evaluate(cond.item))
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
                [Violation(cond.field, "range on a non-numeric field", "range")],
            )
        if info.numeric is None:
            raise QueryError(
                f"field {cond.field!r} has no raw values in universe {u.name!r} (it is reached through a "
                f"reverse link, so it only has bands); use its bands: {info.values}",
                [Violation(cond.field, "no raw values for a range; use a band", "range")],
            )
        return self.ops.range(info, cond)

    def _segment(self, name: str):
        catalog = self.snapshot.segments or {}
        if name not in catalog:
            raise UnknownSegmentError(
                f"snapshot {self.snapshot.name!r} has no segment {name!r}{suggest(name, catalog)}"
                + ("" if catalog else " (its segment catalog is empty)"),
                [Violation("$segment", f"unknown segment {name!r}", "segment", name)],
            )
        if name in self._segment_stack:
            cycle = " -> ".join(self._segment_stack + [name])
            raise QueryError(f"segment reference cycle: {cycle}", [Violation("$segment", f"cycle {cycle}", "segment", name)])
        seg = catalog[name]
        if seg.get("universe") not in (None, self.universe.name):
            raise QueryError(
                f"segment {name!r} is defined over universe {seg['universe']!r}, not {self.universe.name!r}",
                [Violation("$segment", "segment of another universe", "segment", name)],
            )
        self._segment_stack.append(name)
        try:
            return self._evaluate(parse_where(seg["where"], f"segment {name}"))
        finally:
            self._segment_stack.pop()


def evaluate(snapshot: Snapshot, universe: Universe, cond: Condition) -> np.ndarray:
    check_limits(cond)
    return Evaluator(snapshot, universe).evaluate(cond)


def evaluate_to_read(snapshot: Snapshot, universe: Universe, cond: Condition) -> np.ndarray:
    """evaluate's bitset, to read and never to write: a condition of one dense feature is its row of the
    snapshot in place (evaluate copies it, ~125 KB at 1M rows, for callers that write into the answer)."""
    check_limits(cond)
    return Evaluator(snapshot, universe)._evaluate(cond)


def validate_fields(universe: Universe, cond: Condition) -> None:
    """Raise UnknownFieldError for the first unknown field (cheap pre-check)."""
    for name in sorted(condition_fields(cond)):
        if name not in universe.fields:
            raise UnknownFieldError(
                f"universe {universe.name!r} has no field {name!r}{suggest(name, universe.fields)}",
                [(name, "unknown field")],
            )
