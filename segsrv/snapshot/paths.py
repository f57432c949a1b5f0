"""Field paths: how a universe row reaches a column through links.

A path is a dot-separated list of steps ending in a column. A step is a
forward link of the current table (``product`` from order_lines) or the
reverse name of a link that points at the current table (``orders`` from
customers). A path through at least one reverse step has "exists" semantics;
a path of forward steps only gives at most one value per row. Paths never
visit a table twice, which rules out cycles.

Include patterns are matched segment by segment: ``*`` (and other fnmatch
wildcards) match within one segment, ``**`` matches any number of segments.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import SpecError
from .spec import LinkSpec, Spec, suggest


@dataclass(frozen=True)
class Step:
    direction: str  # "forward" | "reverse"
    name: str  # the step as written in the path
    link: LinkSpec
    owner: str  # table holding the link column
    source: str  # table the step starts from
    target: str  # table the step arrives at


@dataclass(frozen=True)
class FieldPath:
    name: str  # e.g. "orders.lines.product.category"
    steps: tuple[Step, ...]
    table: str  # table holding the column
    column: str
    kind: str  # categorical | multi | numeric

    @property
    def semantics(self) -> str:
        if not self.steps:
            return "own"
        if any(s.direction == "reverse" for s in self.steps):
            return "exists"
        return "forward"


def outgoing_steps(spec: Spec, table: str) -> list[Step]:
    steps = [
        Step("forward", link.name, link, table, table, link.table)
        for link in spec.tables[table].links.values()
    ]
    for owner in spec.tables.values():
        for link in owner.links.values():
            if link.table == table and link.reverse:
                steps.append(Step("reverse", link.reverse, link, owner.name, table, owner.name))
    return steps


def enumerate_paths(spec: Spec, root: str) -> dict[str, FieldPath]:
    """Every field path reachable from `root` within spec.max_hops, by name."""
    out: dict[str, FieldPath] = {}

    def walk(table: str, steps: tuple[Step, ...], visited: frozenset[str]) -> None:
        prefix = ".".join(s.name for s in steps)
        for column, kind in spec.tables[table].feature_columns().items():
            name = f"{prefix}.{column}" if prefix else column
            out[name] = FieldPath(name, steps, table, column, kind)
        if len(steps) >= spec.max_hops:
            return
        for step in outgoing_steps(spec, table):
            if step.target not in visited:
                walk(step.target, steps + (step,), visited | {step.target})

    walk(root, (), frozenset([root]))
    return out


def _segment_matcher(segment: str) -> Callable[[str], bool]:
    if not any(ch in segment for ch in "*?["):
        return segment.__eq__
    # compiled here, not through fnmatch's cache of up to 32,768 patterns: a request's patterns must
    # not stay in memory after it (re's own cache is bounded at a few hundred small entries)
    return re.compile(fnmatch.translate(segment)).match


def compile_path_pattern(pattern: list[str]) -> Callable[[list[str]], bool]:
    """A matcher of dotted paths (split at dots) for a pattern of fnmatch parts; "**" spans any parts.

    Matching is a table over (pattern part, path part): time grows with their product, never
    exponentially with the number of "**"."""
    steps = [None if seg == "**" else _segment_matcher(seg) for seg in pattern]

    def matches(parts: list[str]) -> bool:
        reach = [True] + [False] * len(parts)  # reach[j]: the pattern so far matches parts[:j]
        for step in steps:
            if step is None:
                seen = False
                reach = [seen := seen or r for r in reach]
            else:
                reach = [False] + [reach[j] and bool(step(part)) for j, part in enumerate(parts)]
            if not any(reach):
                return False
        return reach[-1]

    return matches


def match_path(pattern: list[str], parts: list[str]) -> bool:
    """Whether a dotted path (split at dots) matches a pattern of fnmatch parts; "**" spans any parts."""
    return compile_path_pattern(pattern)(parts)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def explain_unknown_path(spec: Spec, root: str, path: str) -> str:
    """Say which step of `path` fails, with close matches."""
    table = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        steps = {s.name: s for s in outgoing_steps(spec, table)}
        columns = spec.tables[table].feature_columns()
        if last and part in columns:
            return f"path {path!r} is longer than max_hops={spec.max_hops} or revisits a table"
        if part in steps and not last:
            table = steps[part].target
            continue
        if last:
            if part in steps:
                return (
                    f"{part!r} is a link of table {table!r}, not a column; add the column, "
                    f"e.g. {path + '.' + next(iter(spec.tables[steps[part].target].feature_columns()), '*')!r}"
                )
            return (
                f"table {table!r} has no feature column {part!r}{suggest(part, columns)}; "
                f"declared columns: {sorted(columns)}"
            )
        return (
            f"table {table!r} has no link {part!r}{suggest(part, list(steps) + list(columns))}; "
            f"links from {table!r}: {sorted(steps)}"
        )
    return f"path {path!r} not found"


def resolve_universe_fields(spec: Spec, universe: str) -> list[FieldPath]:
    """The fields of a universe in deterministic (sorted by name) order."""
    uspec = spec.universes[universe]
    candidates = enumerate_paths(spec, uspec.table)
    chosen: dict[str, FieldPath] = {}
    for pattern in uspec.include:
        parts = pattern.split(".")
        hits = [name for name in candidates if match_path(parts, name.split("."))]
        if not hits:
            if _is_glob(pattern):
                raise SpecError(f"universes.{universe}.include: pattern {pattern!r} matches no field")
            raise SpecError(
                f"universes.{universe}.include: unknown path {pattern!r}: "
                f"{explain_unknown_path(spec, uspec.table, pattern)}"
            )
        for name in hits:
            chosen[name] = candidates[name]
    for pattern in uspec.exclude:
        parts = pattern.split(".")
        hits = [name for name in chosen if match_path(parts, name.split("."))]
        if not hits and not _is_glob(pattern):
            raise SpecError(
                f"universes.{universe}.exclude: {pattern!r} is not an included field{suggest(pattern, chosen)}"
            )
        for name in hits:
            del chosen[name]
    if not chosen:
        raise SpecError(f"universes.{universe}: no fields left after include/exclude")
    return [chosen[name] for name in sorted(chosen)]
