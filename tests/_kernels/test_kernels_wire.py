"""segsrv._kernels.wire (protobuf wire encoding of a page of messages) vs its naive twin, and against the
protobuf runtime itself: the bytes parse into the messages the runtime builds field by field (any text,
negative and 64-bit ints, NaN and infinities), and bad layouts or columns are refused with the field
that is wrong."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segsrv._kernels as K
from segsrv._kernels import naive as N
from segsrv.v1 import segsrv_pb2 as pb

HYP = settings(max_examples=200, deadline=None)

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True, width=64)
FIELD_NUMBERS = st.one_of(st.integers(1, 40), st.integers(1, K.wire.MAX_FIELD_NUMBER))


@st.composite
def pages(draw):
    layout = K.WireLayout(draw(FIELD_NUMBERS), draw(st.lists(FIELD_NUMBERS, max_size=3)),
                          draw(st.lists(FIELD_NUMBERS, max_size=3)), draw(st.lists(FIELD_NUMBERS, max_size=4)))
    k = draw(st.integers(0, 6))
    texts = [draw(st.lists(st.text(max_size=300), min_size=k, max_size=k)) for _ in layout.text_fields]
    ints = np.array(draw(st.lists(st.lists(INT64, min_size=len(layout.int_fields), max_size=len(layout.int_fields)),
                                  min_size=k, max_size=k)), dtype=np.int64).reshape(k, len(layout.int_fields))
    doubles = np.array(draw(st.lists(st.lists(DOUBLES, min_size=len(layout.double_fields),
                                              max_size=len(layout.double_fields)), min_size=k, max_size=k)),
                       dtype=np.float64).reshape(k, len(layout.double_fields))
    return layout, texts, ints, doubles


@HYP
@given(pages())
def test_encode_messages_equals_twin(page):
    layout, texts, ints, doubles = page
    assert K.encode_messages(layout, texts, ints, doubles) == N.encode_messages(layout, texts, ints, doubles)


HIT = pb.RelateHit.DESCRIPTOR.fields_by_name
HIT_LAYOUT = K.WireLayout(pb.RelateResponse.DESCRIPTOR.fields_by_name["hits"].number,
                          [HIT["field"].number, HIT["value"].number],
                          [HIT["support"].number, HIT["feature_count"].number],
                          [HIT["lift"].number, HIT["p_value"].number, HIT["mutual_information"].number])


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@HYP
@given(st.integers(0, 5).flatmap(lambda k: st.tuples(
    st.lists(st.text(max_size=40), min_size=k, max_size=k), st.lists(st.text(max_size=40), min_size=k, max_size=k),
    st.lists(st.tuples(INT64, INT64), min_size=k, max_size=k),
    st.lists(st.tuples(DOUBLES, DOUBLES, DOUBLES), min_size=k, max_size=k))))
def test_bytes_parse_into_the_runtimes_messages(hits):
    fields, values, ints, doubles = hits
    k = len(fields)
    data = K.encode_messages(HIT_LAYOUT, [fields, values], np.array(ints, dtype=np.int64).reshape(k, 2),
                             np.array(doubles, dtype=np.float64).reshape(k, 3))
    parsed = pb.RelateResponse(universe="u", row_count=7)
    parsed.MergeFromString(data)  # appended to what the message holds
    assert parsed.universe == "u" and parsed.row_count == 7 and len(parsed.hits) == k
    for hit, f, v, (s, n), (lift, p, mi) in zip(parsed.hits, fields, values, ints, doubles):
        built = pb.RelateHit(field=f, value=v, support=s, feature_count=n, lift=lift, p_value=p, mutual_information=mi)
        assert (hit.field, hit.value, hit.support, hit.feature_count) == (built.field, built.value, s, n)
        assert all(same_float(getattr(hit, name), getattr(built, name)) for name in ("lift", "p_value", "mutual_information"))


def test_empty_page_is_no_bytes():
    assert K.encode_messages(HIT_LAYOUT, [[], []], np.zeros((0, 2), np.int64), np.zeros((0, 3))) == b""


def test_non_ascii_text_and_extremes():
    texts = [["ålder ≥ 65", "🐈"], ["", "x" * 200]]
    ints = np.array([[-1, (1 << 63) - 1], [0, -(1 << 63)]], dtype=np.int64)
    doubles = np.array([[math.inf, -0.0, math.nan], [5e-324, -math.inf, 1.0]])
    parsed = pb.RelateResponse.FromString(K.encode_messages(HIT_LAYOUT, texts, ints, doubles))
    assert [h.field for h in parsed.hits] == texts[0] and [h.value for h in parsed.hits] == texts[1]
    assert [(h.support, h.feature_count) for h in parsed.hits] == [tuple(r) for r in ints.tolist()]
    assert parsed.hits[0].lift == math.inf and math.isnan(parsed.hits[0].mutual_information)
    assert parsed.hits[1].lift == 5e-324 and parsed.hits[1].p_value == -math.inf


@pytest.mark.parametrize("args, error, message", [
    ((0,), ValueError, "outer_field: field numbers must be 1"),
    ((1 << 29,), ValueError, "outer_field: field numbers must be 1"),
    ((True,), TypeError, "outer_field: field numbers must be ints"),
    ((8, [1, "2"]), TypeError, "text_fields: field numbers must be ints"),
    ((8, [], [3, -1]), ValueError, "int_fields: field numbers must be 1"),
    ((8, [], [], [4.5]), TypeError, "double_fields: field numbers must be ints"),
])
def test_layout_refuses_bad_field_numbers(args, error, message):
    with pytest.raises(error, match=message):
        K.WireLayout(*args)


@pytest.mark.parametrize("texts, ints, doubles, error, message", [
    ([["a"], ["b"]], np.zeros((1, 2), np.int32), np.zeros((1, 3)), TypeError, "ints must have dtype int64"),
    ([["a"], ["b"]], np.zeros((1, 2), np.int64), np.zeros((1, 3), np.float32), TypeError, "doubles must have dtype"),
    ([["a"], ["b"]], np.zeros((1, 3), np.int64), np.zeros((1, 3)), ValueError, "must have 2 and 3 columns"),
    ([["a"], ["b"]], np.zeros((1, 2), np.int64), np.zeros((2, 3)), ValueError, "as many rows"),
    ([["a"]], np.zeros((1, 2), np.int64), np.zeros((1, 3)), ValueError, "texts must hold 2 columns"),
    ([["a"], ["b", "c"]], np.zeros((1, 2), np.int64), np.zeros((1, 3)), ValueError, r"texts\[1\] must hold 1 strings"),
    ([["a"], [b"b"]], np.zeros((1, 2), np.int64), np.zeros((1, 3)), TypeError, r"texts\[1\]\[0\] must be a str"),
    ([["a"], ["b"]], np.zeros((2, 2), np.int64)[:, ::-1][:1], np.zeros((1, 3)), ValueError, "C-contiguous"),
])
def test_encode_refuses_bad_columns(texts, ints, doubles, error, message):
    with pytest.raises(error, match=message):
        K.encode_messages(HIT_LAYOUT, texts, ints, doubles)


def test_text_that_is_not_utf8_encodable_raises():
    with pytest.raises(UnicodeEncodeError):
        K.encode_messages(HIT_LAYOUT, [["\ud800"], ["b"]], np.zeros((1, 2), np.int64), np.zeros((1, 3)))
