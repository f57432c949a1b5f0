"""Count: the number of rows of a universe matching a condition."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _kernels
from ..snapshot.reader import Snapshot
from .conditions import All, Condition, evaluate


@dataclass
class CountResult:
    snapshot: str
    version: str
    universe: str
    n_rows: int
    count: int


def count(snapshot: Snapshot, universe: str | None, where: Condition | None = None) -> CountResult:
    u = snapshot.universe(universe)
    bits = evaluate(snapshot, u, where if where is not None else All())
    return CountResult(snapshot.name, snapshot.version, u.name, u.n_rows, int(_kernels.popcount(bits)))
