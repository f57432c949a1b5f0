"""Quantile band edges across versions: a rebuild keeps the previous version's edges when the data allows.

A numeric column banded by ``quantiles = q`` gets its edges at the discrete quantiles of its values, and
its band labels (the feature values, ``120-340``) are written from the edges. Recomputed at every build,
the edges would follow every small change of the data, and a saved query naming a band would stop
matching. So a build over ROOT/NAME starts from the edges the CURRENT version used for the same table
column with the same q (the manifest's field ``quantiles``) and

* keeps them whatever the data when the spec says ``pin = true``;
* otherwise keeps them when, over the new values, each previous edge's *rank* (the share of the column's
  non-missing values below it: a value equal to an edge belongs to the band above) is within the
  tolerance (``DEFAULT_TOLERANCE``, ``segsrv build --band-tolerance``) of the rank of the edge the new
  quantiles give, edge by edge (the same number of edges);
* recomputes them otherwise, and says so.

Explicit ``edges = [...]`` are always used as written. docs/spec.md "Stable band labels across rebuilds".
``band_labels`` writes the labels of a list of edges (docs/spec.md "Numeric columns and their bands").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SegsrvError
from . import format as fmt
from .location import read_current

DEFAULT_TOLERANCE = 0.02


def _fmt_num(x: float) -> str:
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def band_labels(edges: list[float]) -> list[str]:
    """Labels of the bands cut by ascending `edges`: <e0, e0-e1, ..., >=ek."""
    labels = [f"<{_fmt_num(edges[0])}"]
    for lo, hi in zip(edges, edges[1:]):
        if lo < 0 or hi < 0:
            labels.append(f"[{_fmt_num(lo)}, {_fmt_num(hi)})")
        else:
            labels.append(f"{_fmt_num(lo)}-{_fmt_num(hi)}")
    labels.append(f">={_fmt_num(edges[-1])}")
    return labels


@dataclass(frozen=True)
class PreviousBands:
    """The quantile edges of a published version, by (table, column)."""

    version: str | None
    edges: dict[tuple[str, str], tuple[int, list[float]]]  # (table, column) -> (q, edges)


NONE = PreviousBands(None, {})


def previous_bands(snapshot_dir: Path) -> tuple[PreviousBands, str | None]:
    """The quantile edges of ROOT/NAME's CURRENT version, and a note when it cannot be read (a rebuild
    may be what repairs it: it then computes every edge afresh)."""
    if not (snapshot_dir / fmt.CURRENT).exists():
        return NONE, None
    try:
        version = read_current(snapshot_dir)
        manifest = json.loads((snapshot_dir / version / fmt.MANIFEST).read_text(encoding="utf-8"))
        found = {}
        for universe in manifest["universes"].values():
            for f in universe["fields"]:
                if f.get("kind") == "numeric" and "quantiles" in f and f.get("edges") is not None:
                    found[(f["table"], f["column"])] = (int(f["quantiles"]), [float(e) for e in f["edges"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SegsrvError) as exc:
        why = exc.message if isinstance(exc, SegsrvError) else f"{type(exc).__name__}: {exc}"
        return NONE, f"cannot read the band edges of the CURRENT version ({why}); computing every edge afresh"
    return PreviousBands(version, found), None


def ranks(sorted_values: np.ndarray, edges: list[float]) -> np.ndarray:
    """The share of the values below each edge (values sorted ascending, finite)."""
    if not len(sorted_values):
        return np.zeros(len(edges))
    return np.searchsorted(sorted_values, np.asarray(edges, dtype=np.float64), side="left") / len(sorted_values)


def choose_edges(name: str, fresh: list[float], q: int, pin: bool, previous: PreviousBands,
                 sorted_values: np.ndarray, tolerance: float) -> tuple[list[float], str | None]:
    """The edges of the quantile-banded column `name` ("table.column"): the previous version's or `fresh`
    (the new data's quantiles), and the progress line saying which and why (None: nothing to say, no
    previous version or no such column there)."""
    table, column = name.split(".", 1)
    prev = previous.edges.get((table, column))
    if prev is None:
        return fresh, None
    prev_q, prev_edges = prev
    if prev_q != q:
        return fresh, (f"band edges of {name}: recomputed (quantiles changed from {prev_q} to {q} since "
                       f"version {previous.version})")
    if pin:
        return prev_edges, f"band edges of {name}: pinned, kept from version {previous.version}"
    if prev_edges == fresh:
        return fresh, None
    if len(prev_edges) != len(fresh):
        return fresh, (f"band edges of {name}: recomputed: the new data has {len(fresh)} distinct quantile "
                       f"edges, version {previous.version} had {len(prev_edges)}; labels {_labels_change(prev_edges, fresh)}")
    gaps = np.abs(ranks(sorted_values, prev_edges) - ranks(sorted_values, fresh))
    worst = int(np.argmax(gaps))
    if gaps[worst] <= tolerance:
        return prev_edges, (f"band edges of {name}: kept from version {previous.version} (each edge's rank within "
                            f"{gaps[worst]:.4f} of the new quantiles', tolerance {tolerance:g})")
    return fresh, (f"band edges of {name}: recomputed: edge {prev_edges[worst]:g} of version {previous.version} "
                   f"is at rank {ranks(sorted_values, prev_edges[worst:worst + 1])[0]:.4f} of the new values, the "
                   f"new quantile edge {fresh[worst]:g} at {ranks(sorted_values, fresh[worst:worst + 1])[0]:.4f} "
                   f"(tolerance {tolerance:g}); labels {_labels_change(prev_edges, fresh)}")


def _labels_change(old: list[float], new: list[float]) -> str:
    return f"{band_labels(old) if old else []} -> {band_labels(new) if new else []}"
