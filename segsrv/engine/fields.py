"""Which fields a request uses: names and globs resolved (``select_fields``), and when it names none,
every field but identifier-like ones (``default_fields``).

A field is identifier-like when nearly every row has a value of its own: its values number at least
100 and the median value is held by at most IDENTIFIER_MEDIAN_ROWS rows (an e-mail address, an order
number, a free-text comment). Such fields describe single rows, not segments: Relate, Profile and
Discover leave them out of "every field", and use them when a request names them (by name or glob).

Limits on a request's list of names and globs (Relate ``relate``, Profile and Discover ``fields``,
Predict / ScoreSegment / Evaluate ``evidence_fields``, Discover ``field_weights``): at most
MAX_FIELD_PATTERNS entries, each at most MAX_PATTERN_CHARS characters, of which at most MAX_GLOBS
are globs; past a limit, LimitExceededError (RESOURCE_EXHAUSTED). Globs are compiled once per
request and matched in time proportional to pattern parts x path parts; nothing is cached.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ..errors import LimitExceededError, QueryError, UnknownFieldError, Violation, suggest
from ..snapshot.paths import compile_path_pattern
from ..snapshot.reader import Universe

IDENTIFIER_MIN_VALUES = 100
IDENTIFIER_MEDIAN_ROWS = 2
MAX_FIELD_PATTERNS = 10_000
MAX_PATTERN_CHARS = 512
MAX_GLOBS = 64

_CACHE: "weakref.WeakKeyDictionary[Universe, list[str]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def is_identifier_like(universe: Universe, name: str, feature_count: np.ndarray | None = None) -> bool:
    """feature_count: the features' counts to judge by (default the universe's own; a sharded snapshot
    judges by the counts summed over its shards)."""
    info = universe.fields[name]
    fids = info.feature_ids
    if len(fids) < IDENTIFIER_MIN_VALUES:
        return False
    counts = universe.feature_count if feature_count is None else feature_count
    return float(np.median(np.asarray(counts[fids]))) <= IDENTIFIER_MEDIAN_ROWS


def identifier_like_fields(universe: Universe) -> list[str]:
    with _LOCK:
        got = _CACHE.get(universe)
    if got is None:
        got = [f for f in universe.fields if is_identifier_like(universe, f)]
        with _LOCK:
            _CACHE[universe] = got
    return got


def default_fields(universe: Universe) -> list[str]:
    """Every field of the universe but the identifier-like ones, in universe order."""
    skip = set(identifier_like_fields(universe))
    return [f for f in universe.fields if f not in skip]


def check_patterns(patterns: list, key: str) -> None:
    """A request's list of field names and globs within the limits (module docstring)."""
    if len(patterns) > MAX_FIELD_PATTERNS:
        raise LimitExceededError(f"{key}: {len(patterns)} field names or globs exceed the maximum "
                                 f"{MAX_FIELD_PATTERNS}", [(key, f"at most {MAX_FIELD_PATTERNS} entries")])
    n_globs = 0
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise QueryError(f"{key}: bad field pattern {pat!r}", [Violation(key, f"bad pattern {pat!r}", "pattern", pat)])
        if len(pat) > MAX_PATTERN_CHARS:
            raise LimitExceededError(
                f"{key}: a field name or glob of {len(pat):,} characters exceeds the maximum {MAX_PATTERN_CHARS} "
                f"({pat[:40]!r}...)", [Violation(key, f"at most {MAX_PATTERN_CHARS} characters", "pattern", pat[:40])])
        n_globs += any(ch in pat for ch in "*?[")
    if n_globs > MAX_GLOBS:
        raise LimitExceededError(f"{key}: {n_globs} globs exceed the maximum {MAX_GLOBS} per list",
                                 [(key, f"at most {MAX_GLOBS} globs")])


def select_fields(universe: Universe, patterns: list[str] | None, skip: set[str], key: str = "relate") -> list[str]:
    """Field names selected by names / globs (segment-wise, `**` spans segments), in request order then
    universe order, without duplicates; every field but `skip` when `patterns` is empty. Errors name
    the request's list `key` ("relate", "fields", "evidence_fields") and the pattern."""
    if not patterns:
        return [f for f in universe.fields if f not in skip]
    check_patterns(patterns, key)
    chosen: dict[str, None] = {}
    for pat in patterns:
        if pat in universe.fields:
            chosen[pat] = None
            continue
        if not any(ch in pat for ch in "*?["):
            raise UnknownFieldError(
                f"{key}: universe {universe.name!r} has no field {pat!r}{suggest(pat, universe.fields)}",
                [Violation(key, f"unknown field {pat!r}", "pattern", pat)],
            )
        matches = compile_path_pattern(pat.split("."))
        hits = [f for f in universe.fields if f not in skip and matches(f.split("."))]
        if not hits:
            raise UnknownFieldError(f"{key}: pattern {pat!r} matches no field of universe {universe.name!r}",
                                    [Violation(key, f"{pat!r} matches nothing", "pattern", pat)])
        for f in hits:
            chosen[f] = None
    return list(chosen)
