"""Which fields a request uses: names and globs resolved (``select_fields``), and when it names none,
every field but identifier-like ones (``default_fields``).

A field is identifier-like when nearly every row has a value of its own: its values number at least
100 and the median value is held by at most IDENTIFIER_MEDIAN_ROWS rows (an e-mail address, an order
number, a free-text comment). Such fields describe single rows, not segments: Relate, Profile and
Discover leave them out of "every field", and use them when a request names them (by name or glob).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ..errors import QueryError, UnknownFieldError, Violation, suggest
from ..snapshot.paths import match_path
from ..snapshot.reader import Universe

IDENTIFIER_MIN_VALUES = 100
IDENTIFIER_MEDIAN_ROWS = 2

_CACHE: "weakref.WeakKeyDictionary[Universe, list[str]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def is_identifier_like(universe: Universe, name: str) -> bool:
    info = universe.fields[name]
    fids = info.feature_ids
    if len(fids) < IDENTIFIER_MIN_VALUES:
        return False
    return float(np.median(np.asarray(universe.feature_count[fids]))) <= IDENTIFIER_MEDIAN_ROWS


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


def select_fields(universe: Universe, patterns: list[str] | None, skip: set[str], key: str = "relate") -> list[str]:
    """Field names selected by names / globs (segment-wise, `**` spans segments), in request order then
    universe order, without duplicates; every field but `skip` when `patterns` is empty. Errors name
    the request's list `key` ("relate", "fields", "evidence_fields") and the pattern."""
    if not patterns:
        return [f for f in universe.fields if f not in skip]
    chosen: dict[str, None] = {}
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise QueryError(f"{key}: bad field pattern {pat!r}", [Violation(key, f"bad pattern {pat!r}", "pattern", pat)])
        if pat in universe.fields:
            chosen[pat] = None
            continue
        if not any(ch in pat for ch in "*?["):
            raise UnknownFieldError(
                f"{key}: universe {universe.name!r} has no field {pat!r}{suggest(pat, universe.fields)}",
                [Violation(key, f"unknown field {pat!r}", "pattern", pat)],
            )
        parts = pat.split(".")
        hits = [f for f in universe.fields if match_path(parts, f.split(".")) and f not in skip]
        if not hits:
            raise UnknownFieldError(f"{key}: pattern {pat!r} matches no field of universe {universe.name!r}",
                                    [Violation(key, f"{pat!r} matches nothing", "pattern", pat)])
        for f in hits:
            chosen[f] = None
    return list(chosen)
