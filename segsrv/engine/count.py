"""Count: the number of rows of a universe matching a condition.

A count reads only what it needs (``count_matching``): a feature's rows are counted at build
time (``feature_count``), so a condition that is one feature reads nothing; a conjunction
counts its sparsest feature against the AND of its other parts (``and_count_dense`` /
``and_count_sparse``) instead of writing that AND and counting it again. Any other tree is
evaluated to a bitset (engine.conditions) and counted. Every path gives the exact count.
"""

from __future__ import annotations

import time

import numpy as np

from .. import _kernels
from ..ops.conditions import check_limits
from ..ops.count import CountResult
from ..snapshot.reader import Snapshot, Universe
from .conditions import All, BitsetOps, Condition, Evaluator


class _Feature:
    """A feature as a count sees it, before anything is read."""

    __slots__ = ("fid",)

    def __init__(self, fid: int):
        self.fid = fid


class _AllOf:
    """A conjunction not evaluated yet: its parts, resolved."""

    __slots__ = ("parts",)

    def __init__(self, parts: list):
        self.parts = parts


class _CountOps(BitsetOps):
    """BitsetOps that leaves features and conjunctions unread until a count or an enclosing
    combination needs their rows (the Evaluator's resolution and errors are the same)."""

    def feature(self, fid: int):
        return _Feature(int(fid))

    def all_of(self, parts):
        return _AllOf(list(parts))

    def any_of(self, parts):
        return super().any_of(self.bits(p) for p in parts)

    def negate(self, inner):
        return super().negate(self.bits(inner))

    @staticmethod
    def owned(node):
        return node  # a count never hands rows to its caller

    def bits(self, node) -> np.ndarray:
        """The rows of `node` as a bitset (a dense feature's row read in place, never written)."""
        if isinstance(node, _Feature):
            return super().feature(node.fid)
        if isinstance(node, _AllOf):
            return super().all_of(self.bits(p) for p in node.parts)
        return node

    def count(self, node) -> int:
        u = self.universe
        if isinstance(node, _Feature):
            return int(u.feature_count[node.fid])
        if not isinstance(node, _AllOf):
            return int(_kernels.popcount(node))
        # flatten nested conjunctions; the sparsest feature is counted against the AND of the rest
        parts, stack = [], list(node.parts)
        while stack:
            p = stack.pop()
            if isinstance(p, _AllOf):
                stack.extend(p.parts)
            else:
                parts.append(p)
        if len(parts) == 1:
            return self.count(parts[0])
        features = [p for p in parts if isinstance(p, _Feature)]
        if not features:
            return int(_kernels.popcount(self.bits(_AllOf(parts))))
        probe = min(features, key=lambda f: int(u.feature_count[f.fid]))
        rest = self.bits(_AllOf([p for p in parts if p is not probe]))
        slot = int(u.feature_slot[probe.fid])
        if slot >= 0:
            return int(_kernels.and_count_dense(rest, u.dense, np.array([slot], dtype=np.int64))[0])
        return int(_kernels.and_count_sparse(rest, u.sparse_ids, u.sparse_offsets,
                                             np.array([-slot - 1], dtype=np.int64))[0])


def count_matching(snapshot: Snapshot, universe: Universe, cond: Condition) -> int:
    """The exact number of rows of `universe` matching `cond` (module docstring: what it reads)."""
    check_limits(cond)
    ops = _CountOps(universe)
    return ops.count(Evaluator(snapshot, universe, ops).evaluate(cond))


def count(snapshot: Snapshot, universe: str | None, where: Condition | None = None) -> CountResult:
    t0 = time.perf_counter()
    u = snapshot.universe(universe)
    n = count_matching(snapshot, u, where if where is not None else All())
    return CountResult(snapshot.name, snapshot.version, u.name, u.n_rows, n,
                       elapsed_ms=(time.perf_counter() - t0) * 1e3)

