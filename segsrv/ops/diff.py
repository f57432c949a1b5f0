"""segsrv diff's answer: how every catalog segment changed between two versions, and its forms.

``DiffResult`` (computed by segsrv.engine.diff.diff_versions) renders as JSON
(``to_json``: infinite numbers as "inf", undefined ones null), as a readable text
report (``report``) and as one CSV of joined / left ids per segment
(``write_id_lists``). See docs/segments.md.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .params import json_number


@dataclass
class FeatureMove:
    """One feature's lift in the segment in each version (None where the version lacks the feature)."""

    field: str
    value: str
    support_a: int | None  # n_sf: segment members with the feature
    support_b: int | None
    p_a: float | None  # P(f | segment)
    p_b: float | None
    base_a: float | None  # P(f) over the universe
    base_b: float | None
    lift_a: float | None
    lift_b: float | None
    delta: float | None  # lift_b - lift_a
    log_ratio: float | None  # log(lift_b / lift_a); +-inf when one lift is 0


@dataclass
class SegmentDiff:
    name: str
    status: str  # both | added | removed
    universe_a: str | None
    universe_b: str | None
    definition_changed: bool = False
    description: str = ""
    size_a: int | None = None
    size_b: int | None = None
    n_rows_a: int | None = None
    n_rows_b: int | None = None
    share_a: float | None = None
    share_b: float | None = None
    joined: int | None = None
    left: int | None = None
    stayed: int | None = None
    joined_new: int | None = None  # joined members whose id is not in version A's universe
    left_gone: int | None = None  # left members whose id is not in version B's universe
    jaccard: float | None = None
    n_features_compared: int = 0  # features in both versions that passed the support floor
    moved: list[FeatureMove] = field(default_factory=list)
    new_features: list[FeatureMove] = field(default_factory=list)
    missing_features: list[FeatureMove] = field(default_factory=list)
    error_a: str | None = None
    error_b: str | None = None
    note: str | None = None
    joined_ids: np.ndarray | None = field(default=None, repr=False)  # external ids, sorted
    left_ids: np.ndarray | None = field(default=None, repr=False)
    joined_new_mask: np.ndarray | None = field(default=None, repr=False)  # per joined id: not in A's universe
    left_gone_mask: np.ndarray | None = field(default=None, repr=False)  # per left id: not in B's universe

    @property
    def universe(self) -> str | None:
        return self.universe_b or self.universe_a


@dataclass
class UniverseDiff:
    name: str
    n_rows_a: int | None
    n_rows_b: int | None
    common: int | None  # ids in both versions
    only_a: int | None
    only_b: int | None


@dataclass
class DiffResult:
    snapshot: str
    snapshot_b: str
    version_a: str
    version_b: str
    top_features: int
    min_support: int
    universes: dict[str, UniverseDiff]
    segments: list[SegmentDiff]
    elapsed_ms: float

    def to_json(self) -> dict:
        return diff_json(self)

    def report(self) -> str:
        return render_report(self)


def id_list(ids: np.ndarray | None) -> list:
    """External ids as Python values (int or str)."""
    if ids is None:
        return []
    if ids.dtype.kind == "i":
        return [int(v) for v in ids]
    return [bytes(v).decode("utf-8") for v in ids]


def _move_json(m: FeatureMove) -> dict:
    return {k: json_number(getattr(m, k)) for k in (
        "field", "value", "support_a", "support_b", "p_a", "p_b", "base_a", "base_b", "lift_a", "lift_b",
        "delta", "log_ratio")}


def diff_json(result: DiffResult) -> dict:
    """The JSON form of a diff (infinite numbers as "inf", undefined ones null)."""
    segs = []
    for d in result.segments:
        segs.append({
            "name": d.name, "status": d.status, "universe": d.universe, "universe_a": d.universe_a,
            "universe_b": d.universe_b, "definition_changed": d.definition_changed, "description": d.description,
            "size_a": d.size_a, "size_b": d.size_b, "n_rows_a": d.n_rows_a, "n_rows_b": d.n_rows_b,
            "share_a": d.share_a, "share_b": d.share_b, "joined": d.joined, "left": d.left, "stayed": d.stayed,
            "joined_new": d.joined_new, "left_gone": d.left_gone, "jaccard": d.jaccard,
            "n_features_compared": d.n_features_compared,
            "moved": [_move_json(m) for m in d.moved],
            "new_features": [_move_json(m) for m in d.new_features],
            "missing_features": [_move_json(m) for m in d.missing_features],
            "error_a": d.error_a, "error_b": d.error_b, "note": d.note,
        })
    return {
        "snapshot": result.snapshot,
        **({"snapshot_b": result.snapshot_b} if result.snapshot_b != result.snapshot else {}),
        "version_a": result.version_a, "version_b": result.version_b,
        "top_features": result.top_features, "min_support": result.min_support,
        "universes": {u.name: {"n_rows_a": u.n_rows_a, "n_rows_b": u.n_rows_b, "common": u.common,
                               "only_a": u.only_a, "only_b": u.only_b} for u in result.universes.values()},
        "segments": segs,
        "elapsed_ms": result.elapsed_ms,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _int(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _ratio(m: FeatureMove) -> str:
    if m.log_ratio is None:
        return "-"
    if math.isinf(m.log_ratio):
        return "inf" if m.log_ratio > 0 else "0"
    return f"x{math.exp(m.log_ratio):.2f}"


def _feature_table(rows: list[FeatureMove], lines: list[str], ratio: bool) -> None:
    width = max(28, *(len(f"{m.field}={m.value}") for m in rows))
    head = f"    {'feature':<{width}}  {'lift A':>7}  {'lift B':>7}  {'supp A':>7}  {'supp B':>7}"
    lines.append(head + (f"  {'delta':>7}  {'B/A':>7}" if ratio else ""))
    for m in rows:
        line = (f"    {m.field + '=' + m.value:<{width}}  {_num(m.lift_a):>7}  {_num(m.lift_b):>7}  "
                f"{_int(m.support_a):>7}  {_int(m.support_b):>7}")
        lines.append(line + (f"  {_num(m.delta):>7}  {_ratio(m):>7}" if ratio else ""))


def render_report(result: DiffResult) -> str:
    """A readable text report of a diff."""
    name = result.snapshot if result.snapshot == result.snapshot_b else f"{result.snapshot} / {result.snapshot_b}"
    lines = [f"{name}: version {result.version_a} (A) -> {result.version_b} (B)"]
    for u in result.universes.values():
        if u.common is None:
            lines.append(f"universe {u.name}: {_int(u.n_rows_a)} -> {_int(u.n_rows_b)} rows")
        else:
            lines.append(f"universe {u.name}: {_int(u.n_rows_a)} -> {_int(u.n_rows_b)} rows "
                         f"({_int(u.common)} ids in both, {_int(u.only_a)} only in A, {_int(u.only_b)} only in B)")
    for d in result.segments:
        lines.append("")
        flags = [d.status] if d.status != "both" else []
        if d.definition_changed:
            flags.append("definition changed")
        head = f"segment {d.name} ({d.universe or '?'})" + (f"  [{', '.join(flags)}]" if flags else "")
        lines.append(head)
        if d.description:
            lines.append(f"  {d.description}")
        for side in ("a", "b"):
            err = getattr(d, f"error_{side}")
            if err:
                lines.append(f"  error in {side.upper()}: {err}")
        size_a = "-" if d.size_a is None else f"{d.size_a:,} ({_pct(d.share_a)})"
        size_b = "-" if d.size_b is None else f"{d.size_b:,} ({_pct(d.share_b)})"
        lines.append(f"  size     {size_a} -> {size_b}")
        if d.note:
            lines.append(f"  note: {d.note}")
        if d.jaccard is not None or d.stayed is not None:
            lines.append(f"  joined   {d.joined:,} ({d.joined_new:,} not in A)   left {d.left:,} ({d.left_gone:,} not in B)"
                         f"   stayed {d.stayed:,}   Jaccard {_num(d.jaccard, 3)}")
        if d.moved:
            lines.append(f"  lift moved most (of {d.n_features_compared:,} features with support >= "
                         f"{result.min_support} in A or B):")
            _feature_table(d.moved, lines, ratio=True)
        if d.new_features:
            lines.append(f"  new in B (support >= {max(result.min_support, 1)}):")
            _feature_table(d.new_features, lines, ratio=False)
        if d.missing_features:
            lines.append(f"  gone from B (support >= {max(result.min_support, 1)} in A):")
            _feature_table(d.missing_features, lines, ratio=False)
    lines.append("")
    lines.append(f"{len(result.segments)} segments compared in {result.elapsed_ms / 1e3:.2f} s")
    return "\n".join(lines) + "\n"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def write_id_lists(result: DiffResult, directory: str | Path) -> list[Path]:
    """One CSV per compared segment, DIR/<segment>.csv: id,change (joined|left),note (new|gone|'')."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for d in result.segments:
        if d.joined_ids is None or d.left_ids is None:
            continue
        base = _safe_name(d.name)
        fname, k = base, 1
        while fname in used:
            k += 1
            fname = f"{base}-{k}"
        used.add(fname)
        path = directory / f"{fname}.csv"
        joined, left = id_list(d.joined_ids), id_list(d.left_ids)
        new = d.joined_new_mask if d.joined_new_mask is not None else np.zeros(len(joined), dtype=bool)
        gone = d.left_gone_mask if d.left_gone_mask is not None else np.zeros(len(left), dtype=bool)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "change", "note"])
            w.writerows((i, "joined", "new" if n else "") for i, n in zip(joined, new))
            w.writerows((i, "left", "gone" if g else "") for i, g in zip(left, gone))
        written.append(path)
    return written
