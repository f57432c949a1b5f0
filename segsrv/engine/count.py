"""Count: the number of rows of a universe matching a condition."""

from __future__ import annotations

import time

from .. import _kernels
from ..ops.count import CountResult
from ..snapshot.reader import Snapshot
from .conditions import All, Condition, evaluate


def count(snapshot: Snapshot, universe: str | None, where: Condition | None = None) -> CountResult:
    t0 = time.perf_counter()
    u = snapshot.universe(universe)
    bits = evaluate(snapshot, u, where if where is not None else All())
    return CountResult(snapshot.name, snapshot.version, u.name, u.n_rows, int(_kernels.popcount(bits)),
                       elapsed_ms=(time.perf_counter() - t0) * 1e3)
