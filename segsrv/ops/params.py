"""Declarative parameter validation: constraints declared once, messages generated.

In the spirit of scikit-learn's ``_param_validation``: an operation declares its
parameters as ``Param`` (the JSON key, the query attribute, a ``Constraint``, an
optional hard limit), and ``check`` / ``read_json`` validate values against the
declaration with messages made from it:

    Param("limit", Integer(low=1), limit=MAX_LIMIT)
    -> "limit: must be a positive integer, got 0"            (QueryError, INVALID_ARGUMENT)
    -> "limit: 10001 exceeds the maximum 10000"              (LimitExceededError, RESOURCE_EXHAUSTED)

Constraints are plain objects: ``accepts(value)`` says whether a value satisfies
them and ``str(constraint)`` is the phrase a message shows ("a number within
[0, 1]"). Nothing here imports numpy, the engine or gRPC.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import LimitExceededError, QueryError
from ..errors import suggest


def bad(key: str, description: str) -> QueryError:
    """The QueryError for one request key: message "key: description", one violation."""
    return QueryError(f"{key}: {description}", [(key, description)])


class Constraint:
    def accepts(self, value) -> bool:
        raise NotImplementedError

    def convert(self, value):
        """The value as the query keeps it (after `accepts`)."""
        return value


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Integer(Constraint):
    low: int | None = None
    high: int | None = None

    def accepts(self, value) -> bool:
        return _is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def convert(self, value):
        return int(value)

    def __str__(self) -> str:
        if self.high is not None:
            return f"an integer within [{self.low}, {self.high}]"
        return {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            self.low, f"an integer >= {self.low}")


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number within [low, high] (`open` names the bounds excluded: "low", "high", "both")."""

    low: float | None = None
    high: float | None = None
    open: str = ""

    def accepts(self, value) -> bool:
        if not _is_real(value):
            return False
        lo_open, hi_open = self.open in ("low", "both"), self.open in ("high", "both")
        if self.low is not None and (value < self.low or (lo_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (hi_open and value == self.high))

    def convert(self, value):
        return float(value)

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            if self.low == 0 and not self.open:
                return "a finite non-negative number"
            return f"a finite number {'>' if self.open else '>='} {self.low:g}"
        if self.open == "both":
            return f"a number strictly between {self.low:g} and {self.high:g}"
        left = "(" if self.open == "low" else "["
        right = ")" if self.open == "high" else "]"
        return f"a number within {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Options(Constraint):
    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class Boolean(Constraint):
    def accepts(self, value) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text(Constraint):
    what: str = "a non-empty string"

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value != ""

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Names(Constraint):
    """A list of non-empty names or globs; one string stands for a list of one."""

    what: str = "a list of field names or globs"

    def accepts(self, value) -> bool:
        items = [value] if isinstance(value, str) else value
        return isinstance(items, (list, tuple)) and all(isinstance(x, str) and x for x in items)

    def convert(self, value):
        return [value] if isinstance(value, str) else list(value)

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Param:
    """One parameter of an operation: its JSON key, the query attribute, what it accepts.

    limit   a hard upper bound (documented limit): past it LimitExceededError, not QueryError
    none    None is accepted (and kept) as "not given"
    """

    key: str
    constraint: Constraint
    attr: str | None = None
    limit: int | None = None
    none: bool = False
    hint: str = ""
    _accepted: set = field(default_factory=set, init=False, repr=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.attr or self.key

    def check(self, value) -> None:
        if value is None and self.none:
            return
        # A plain scalar this parameter accepted before is accepted again (acceptance depends on the type
        # and value only): a per-request query re-sends the same few values, mostly the defaults.
        key = (type(value), value) if type(value) in _MEMO_TYPES else None
        if key is not None and key in self._accepted:
            return
        if not self.constraint.accepts(value):
            if isinstance(self.constraint, Options) and isinstance(value, str):
                raise bad(self.key, f"must be {self.constraint}, got {value!r}{suggest(value, self.constraint.values)}")
            raise bad(self.key, f"must be {self.constraint}{self.hint}, got {value!r}")
        if self.limit is not None and value > self.limit:
            raise LimitExceededError(f"{self.key}: {value} exceeds the maximum {self.limit}",
                                     [(self.key, f"at most {self.limit}")])
        if key is not None and len(self._accepted) < _MEMO_SIZE:  # bounded: values come from requests
            self._accepted.add(key)


_MEMO_TYPES = frozenset({bool, int, float, str})  # immutable, hashable, compared by value (NaN never hits)
_MEMO_SIZE = 64


def check_params(query: Any, params: Iterable[Param]) -> None:
    """Validate a query object's attributes against its declared parameters."""
    for p in params:
        p.check(getattr(query, p.name))


def check_keys(obj, allowed: Iterable[str], kind: str) -> None:
    """A JSON query must be an object whose keys are all allowed (with a close-match suggestion)."""
    if not isinstance(obj, dict):
        raise QueryError(f"{kind} query must be a JSON object, got {type(obj).__name__}", [("query", "not an object")])
    allowed = set(allowed)
    for key in obj:
        if key not in allowed:
            raise QueryError(
                f"{kind} query: unknown key {key!r}{suggest(key, allowed)}; allowed: {sorted(allowed)}",
                [(key, "unknown key")],
            )


def read_json(obj: dict, query: Any, params: Iterable[Param]) -> None:
    """Set each declared parameter present in `obj` on `query`, validated and converted."""
    for p in params:
        if p.key in obj:
            value = obj[p.key]
            p.check(value)
            setattr(query, p.name, value if value is None else p.constraint.convert(value))


def json_number(x):
    """A float as JSON can carry it: NaN -> null, infinities -> "inf" / "-inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def merge_query(query, overrides: dict) -> dict:
    """A client's JSON query plus keyword overrides (`from_=` or `universe=` for "from")."""
    if query is not None and not isinstance(query, dict):
        raise QueryError(f"query must be a JSON object (dict), got {type(query).__name__}", [("query", "not an object")])
    obj = dict(query or {})
    for key, val in overrides.items():
        obj["from" if key in ("from_", "universe") else key] = val
    return obj
