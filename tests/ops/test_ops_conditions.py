"""segsrv.ops.conditions: the tree, its JSON form, its proto form and the request paths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv import errors as E
from segsrv.ops.conditions import (
    All, And, AnyOf, Not, Or, Range, RequestPaths, SegmentRef, Term, from_proto, parse_where, to_condition, to_proto,
    where_json,
)
from segsrv.v1 import condition_pb2 as c

TREES = [
    All(),
    Term("region", "oulu"),
    AnyOf("region", ("oulu", "turku")),
    Range("total_eur", gte=1.5, lt=10.0),
    Range("total_eur", gt=0.0),
    And((Term("a", "1"), Or((Term("b", "x"), Not(Term("c", "y")))))),
    SegmentRef("vip"),
    Not(And((SegmentRef("vip"), AnyOf("d", ("p", "q"))))),
]


@pytest.mark.parametrize("tree", TREES, ids=repr)
def test_condition_round_trip(tree):
    msg = to_proto(tree)
    assert from_proto(c.Condition.FromString(msg.SerializeToString())) == tree


def test_unset_condition_means_every_row():
    assert from_proto(None) == All()
    assert from_proto(c.Condition()) == All()
    assert from_proto(c.Condition(all_rows=c.AllRows())) == All()


def test_paths_are_recorded():
    msg = to_proto(parse_where({"$and": [{"region": "oulu"}, {"$or": [{"x": ["a", "b"]}, {"n": {"$gte": 1}}]}]}))
    paths = RequestPaths("segment")
    from_proto(msg, paths)
    assert paths.fields["region"] == ["segment.all_of.conditions[0].term.field"]
    assert paths.values[("x", "b")] == ["segment.all_of.conditions[1].any_of.conditions[0].value_set.values[1]"]
    assert paths.ranges["n"] == ["segment.all_of.conditions[1].any_of.conditions[1].numeric_range"]
    assert paths.locate(E.Violation("region", "unknown field")) == ["segment.all_of.conditions[0].term.field"]
    # the violation says what it is about as data: no parsing of its description
    assert paths.locate(E.Violation("x", "anything at all", "value", "b")) == [
        "segment.all_of.conditions[1].any_of.conditions[0].value_set.values[1]"]
    assert paths.locate(E.Violation("n", "range on a non-numeric field", "range")) == [
        "segment.all_of.conditions[1].any_of.conditions[1].numeric_range"]
    assert paths.locate(("from", "...")) == ["universe"]
    assert paths.locate(("where", "...")) == ["segment"]
    assert paths.locate(("limit", "...")) == ["limit"]


def test_paths_of_patterns_segments_and_targets():
    paths = RequestPaths("condition", ("fields", ["region", "lifestyel", "region"]))
    from_proto(to_proto(And((SegmentRef("vip"), SegmentRef("churn")))), paths)
    assert paths.locate(E.Violation("relate", "unknown field", "pattern", "lifestyel")) == ["fields[1]"]
    assert paths.locate(E.Violation("relate", "x", "pattern", "region")) == ["fields[0]", "fields[2]"]
    assert paths.locate(E.Violation("fields", "expected a list")) == ["fields"]
    assert paths.locate(E.Violation("$segment", "unknown", "segment", "churn")) == [
        "condition.all_of.conditions[1].segment.name"]
    assert paths.locate(E.Violation("$segment", "cycle", "segment", "nested")) == [
        "condition.all_of.conditions[0].segment.name", "condition.all_of.conditions[1].segment.name"]
    target = RequestPaths("segment", aliases={"target": ["target_field"]}, target=("species", "cat"))
    assert target.locate(E.Violation("species", "unknown value 'cat'", "value", "cat")) == ["target_value"]
    assert target.locate(E.Violation("target", "unknown field")) == ["target_field"]


@pytest.mark.parametrize("msg,path", [
    (c.Condition(all_of=c.ConditionList()), "condition.all_of.conditions"),
    (c.Condition(any_of=c.ConditionList(conditions=[c.Condition()])), "condition.any_of.conditions[0]"),
    (c.Condition(value_set=c.ValueSet(field="f")), "condition.value_set.values"),
    (c.Condition(numeric_range=c.NumericRange(field="f", lte=1, lt=2)), "condition.numeric_range"),
    (c.Condition(numeric_range=c.NumericRange(field="", lt=2)), "condition.numeric_range.field"),
    (c.Condition(numeric_range=c.NumericRange(field="f", lt=float("nan"))), "condition.numeric_range.lt"),
    (c.Condition(segment=c.SegmentReference()), "condition.segment.name"),
])
def test_malformed_conditions(msg, path):
    with pytest.raises(E.QueryError) as err:
        from_proto(msg)
    assert [v.field for v in err.value.violations] == [path]


def test_too_deep_a_proto_condition_is_a_limit():
    msg = c.Condition(term=c.Term(field="a", value="b"))
    for _ in range(40):
        msg = c.Condition(negation=msg)
    with pytest.raises(E.LimitExceededError):
        from_proto(msg)


def test_to_condition_accepts_every_form():
    tree = And((Term("a", "1"), Range("n", lt=2.0)))
    assert to_condition(tree) == tree
    assert to_condition(to_proto(tree)) == tree
    assert to_condition(where_json(tree)) == tree
    assert to_condition(None) == All()
    with pytest.raises(E.LimitExceededError):
        to_condition({"a": [str(i) for i in range(2000)]})


# --- JSON -> tree -> proto -> tree -> JSON, over generated conditions -----------------------

names = st.text(alphabet="abcdefghij._", min_size=1, max_size=8).filter(lambda s: not s.startswith("$"))
values = st.text(alphabet="abcxyz019-", min_size=0, max_size=6)
bounds = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def ranges(draw):
    low = draw(st.sampled_from([None, "gte", "gt"]))
    high = draw(st.sampled_from([None, "lte", "lt"] if low else ["lte", "lt"]))
    kw = {k: float(draw(bounds)) for k in (low, high) if k}
    return Range(draw(names), **kw)


leaves = st.one_of(
    st.builds(Term, names, values),
    st.builds(AnyOf, names, st.lists(values, min_size=1, max_size=4).map(tuple)),
    ranges(),
    st.builds(SegmentRef, names),
)
trees = st.recursive(leaves, lambda inner: st.one_of(
    st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    st.builds(Not, inner),
), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_json_tree_proto_round_trip(tree):
    obj = where_json(tree)
    parsed = parse_where(obj)
    wire = c.Condition.FromString(to_proto(parsed).SerializeToString())
    back = from_proto(wire)
    assert back == parsed
    assert where_json(back) == obj
    assert parse_where(where_json(back)) == parsed
