"""segsrv.ops.params: constraints declared once, messages generated from the declaration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segsrv.errors import LimitExceededError, QueryError
from segsrv.ops.params import (
    Boolean, Integer, Names, Options, Param, Real, Text, check_keys, check_params, json_number, read_json,
)


@pytest.mark.parametrize("constraint,phrase", [
    (Integer(), "an integer"),
    (Integer(low=0), "a non-negative integer"),
    (Integer(low=1), "a positive integer"),
    (Integer(low=2), "an integer >= 2"),
    (Integer(0, 5), "an integer within [0, 5]"),
    (Real(), "a finite number"),
    (Real(low=0), "a finite non-negative number"),
    (Real(low=0, open="low"), "a finite number > 0"),
    (Real(0, 1), "a number within [0, 1]"),
    (Real(0, 1, open="low"), "a number within (0, 1]"),
    (Real(0, 1, open="both"), "a number strictly between 0 and 1"),
    (Options(("a", "b")), "one of ['a', 'b']"),
    (Boolean(), "true or false"),
    (Text(), "a non-empty string"),
    (Names(), "a list of field names or globs"),
])
def test_phrases(constraint, phrase):
    assert str(constraint) == phrase


@pytest.mark.parametrize("constraint,good,bad", [
    (Integer(low=1), [1, 7, 10**12], [0, -1, 1.0, True, "1", None]),
    (Real(0, 1, open="low"), [1e-9, 0.5, 1, 1.0], [0, 0.0, 1.01, math.nan, math.inf, True, "0.5"]),
    (Real(0, 1, open="both"), [0.5], [0.0, 1.0]),
    (Real(low=0), [0, 3.5], [-1e-9, math.inf]),
    (Options(("over", "under")), ["over"], ["OVER", 1, None]),
    (Boolean(), [True, False], [0, 1, "true"]),
    (Text(), ["x"], ["", 1, None]),
    (Names(), ["a", ["a", "b.*"], []], [["a", ""], [1], "", 3]),
])
def test_accepts(constraint, good, bad):
    assert all(constraint.accepts(v) for v in good)
    assert not any(constraint.accepts(v) for v in bad)


@dataclass
class Q:
    limit: int | None = None
    ratio: float = 0.5
    mode: str = "fast"


PARAMS = (
    Param("limit", Integer(low=1), limit=100, none=True),
    Param("ratio", Real(0, 1)),
    Param("mode", Options(("fast", "exact"))),
)


def test_messages_name_the_key_and_the_value():
    with pytest.raises(QueryError) as err:
        check_params(Q(limit=0), PARAMS)
    assert err.value.message == "limit: must be a positive integer, got 0"
    assert err.value.violations == [("limit", "must be a positive integer, got 0")]
    with pytest.raises(LimitExceededError) as err:
        check_params(Q(limit=101), PARAMS)
    assert err.value.message == "limit: 101 exceeds the maximum 100"
    assert err.value.violations[0].field == "limit"
    with pytest.raises(QueryError, match=r"^mode: must be one of \['fast', 'exact'\], got 'exakt' \(did you mean 'exact'\?\)$"):
        check_params(Q(mode="exakt"), PARAMS)
    check_params(Q(), PARAMS)  # None is "not given" where declared so


def test_read_json_converts_and_keeps_defaults():
    q = Q()
    read_json({"ratio": 1}, q, PARAMS)
    assert (q.limit, q.ratio, q.mode) == (None, 1.0, "fast") and isinstance(q.ratio, float)
    with pytest.raises(QueryError, match=r"^ratio: must be a number within \[0, 1\], got 'x'$"):
        read_json({"ratio": "x"}, Q(), PARAMS)


def test_check_keys():
    check_keys({"limit": 1}, {"limit", "mode"}, "test")
    with pytest.raises(QueryError, match=r"unknown key 'limt' \(did you mean 'limit'\?\)") as err:
        check_keys({"limt": 1}, {"limit", "mode"}, "test")
    assert err.value.violations == [("limt", "unknown key")]
    with pytest.raises(QueryError, match="must be a JSON object"):
        check_keys([1], {"limit"}, "test")


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_json_number(x):
    y = json_number(x)
    if math.isnan(x):
        assert y is None
    elif math.isinf(x):
        assert y == ("inf" if x > 0 else "-inf")
    else:
        assert y == x


@given(st.one_of(st.integers(-5, 200), st.floats(), st.none(), st.text(max_size=3), st.booleans()))
def test_integer_param_accepts_exactly_its_domain(value):
    p = Param("limit", Integer(low=1), limit=100)
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100
    try:
        p.check(value)
    except QueryError:
        assert not ok
    else:
        assert ok


def _outcome(param: Param, value):
    try:
        param.check(value)
    except (QueryError, LimitExceededError) as e:
        return type(e), str(e)
    return None


_SCALARS = st.one_of(st.integers(-3, 12), st.floats(), st.booleans(), st.none(), st.sampled_from(["a", "b", "", "c"]),
                     st.sampled_from([0.0, -0.0, 1, 1.0, True, 0, False]))


@given(st.lists(_SCALARS, min_size=1, max_size=30))
def test_check_after_accepting_values_answers_as_the_first_time(values):
    """Param.check remembers the plain scalars it accepted (the per-request fast path): over any sequence of
    values every answer, accepted or the very error, is that of a parameter that has seen none before."""
    declared = [Param("limit", Integer(low=1), limit=10), Param("p", Real(0, 1, open="low")),
                Param("a", Real(low=0, open="low")), Param("x", Boolean()), Param("m", Options(("a", "b"))),
                Param("u", Text(), none=True)]
    for p in declared:
        for v in values:
            fresh = Param(p.key, p.constraint, p.attr, p.limit, p.none, p.hint)
            assert _outcome(p, v) == _outcome(fresh, v), (p.key, v)


def test_accepted_values_do_not_stand_for_equal_values_of_other_types():
    p = Param("limit", Integer(low=1))
    p.check(1)
    p.check(1)  # remembered
    with pytest.raises(QueryError, match="limit: must be a positive integer, got True"):
        p.check(True)  # True == 1, but not an integer parameter's value
    with pytest.raises(QueryError, match="got 1.0"):
        p.check(1.0)
    b = Param("x", Boolean())
    b.check(False)
    with pytest.raises(QueryError, match="x: must be true or false, got 0"):
        b.check(0)
