"""Words for a discovered segment: its description, its catalog name, its most over-indexed other features.

A description reads "FIELD has VALUE and VALUE, FIELD is VALUE: N ROWS (SHARE), ..." (a behaviour field
"has" its values, a row's own field "is" its value), then the lifts, then "also over-indexes ..." with
the segment's strongest other features. Names are documented in ``segment_names``.
"""

from __future__ import annotations

import re

import numpy as np

from ..ops.discover import SegmentFeature, name_token, unique_names
from ..snapshot.reader import Universe
from . import stats as st


def segment_names(universe: Universe, segments: list[DiscoveredSegment]) -> list[str]:
    """Catalog names: one token per term joined by "_and_" ("low_" / "high_" first for a subgroup's
    direction). A term of a row's own field is "field-value" (region-islands); a behaviour (a linked
    field) is its value alone (dog-dryfood), qualified by the field's first and last path segments when
    another behaviour field has the same value (events-category-dog-dryfood), and by the last segment
    when the value alone says little (a boolean, a number or a band: subscription-true)."""
    by_value: dict[str, set[str]] = {}
    for name, info in universe.fields.items():
        if info.semantics != "own":
            for v in info.values:
                by_value.setdefault(v, set()).add(name)

    def token(field_name: str, value: str) -> str:
        info = universe.fields[field_name]
        parts = field_name.split(".")
        if info.semantics == "own":
            return name_token(f"{field_name}-{value}")
        if len(by_value.get(value, ())) > 1:
            return name_token(f"{parts[0]}-{parts[-1]}-{value}" if len(parts) > 1 else f"{parts[0]}-{value}")
        if value.lower() in ("true", "false") or re.fullmatch(r"[-+0-9.<>= ]+", value) or len(value) < 3:
            return name_token(f"{parts[-1]}-{value}")
        return name_token(value)

    bases = []
    for seg in segments:
        base = "_and_".join(token(f, v) for f, v in seg.terms)
        bases.append(f"{seg.direction}_{base}" if seg.direction else base)
    return unique_names(bases)


def terms_phrase(universe: Universe, terms: list[tuple[str, str]]) -> str:
    """The terms in words: "orders.lines.product.category has cat-litter and cat-wetfood, pet_type is cat"."""
    by_field: dict[str, list[str]] = {}
    for name, value in terms:
        by_field.setdefault(name, []).append(value)
    parts = []
    for name, values in by_field.items():
        info = universe.fields[name]
        many = info.kind == "multi" or info.semantics != "own"
        parts.append(f"{name} {'has' if many else 'is'} {' and '.join(values)}")
    return ", ".join(parts)


def related_features(universe: Universe, fids: np.ndarray, own: set[int], segment_rows: np.ndarray, n_x: int,
                     n: int, feature_rows: np.ndarray, min_support: int, limit: int,
                     implied: float) -> list[SegmentFeature]:
    """The `limit` candidates (positions in `fids` not in `own`) most over-indexed among the segment's n_x rows
    (segment_rows: its rows having each candidate): lift > 1, at least min_support rows, not implied by the
    segment (< `implied` of its rows); ranked by rows times the log of the lift's lower Wilson bound (sizable
    and certain first), then position."""
    others = np.array([i for i in range(len(fids)) if i not in own], dtype=np.int64)
    if not len(others) or not limit:
        return []
    counts = np.asarray(segment_rows)[others]
    base = feature_rows[others]
    lo, _ = st.wilson_interval(counts, n_x)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = (counts / n_x) / (base / n)
        strength = counts * np.log(np.maximum(lo / (base / n), 1.0))
    idx = np.flatnonzero((counts >= min_support) & (lift > 1) & (counts < implied * n_x))
    idx = idx[np.lexsort((others[idx], -strength[idx]))][:limit]
    out = []
    for i in idx.tolist():
        name, value = universe.feature_name(int(fids[others[i]]))
        out.append(SegmentFeature(name, value, int(counts[i]), float(lift[i])))
    return out


def description(universe: Universe, terms: list[tuple[str, str]], n_x: int, n: int, lift: float, split_lift: float,
                target: tuple[int, int] | None, related: list[SegmentFeature]) -> str:
    """One line in words; `target` is (segment rows with the target, rows searched with it) for a subgroup."""
    head = f"{terms_phrase(universe, terms)}: {n_x:,} {universe.name} ({n_x / n:.1%})"
    if target is not None:
        x_t, n_t = target
        text = f"{head}, target rate {x_t / n_x:.1%} against {n_t / n:.1%} overall ({lift:.2f}x)"
    else:
        text = f"{head}, {lift:.2f}x what independence predicts, {split_lift:.2f}x its best split"
    if related:
        text += "; also over-indexes " + ", ".join(f"{r.field} {r.value} ({r.lift:.1f}x)" for r in related)
    return text
