"""segsrv.ops.predict / score / evaluate: JSON -> query -> proto -> query round trips, results
through the proto and back, and validation errors naming the right field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv.errors import LimitExceededError, QueryError, UnknownIdError
from segsrv.ops import conditions as cond
from segsrv.ops.base import Selector
from segsrv.ops.evaluate import CalibrationBin, EvaluateQuery, EvaluateResult
from segsrv.ops.predict import (
    Factor, PredictQuery, PredictResult, ValueProbability, row_id_from_text,
)
from segsrv.ops.score import ScoreQuery, ScoreResult, ScoreSummary, chunk_size_from_proto
from segsrv.v1 import segsrv_pb2 as pb

names = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)
segments = st.one_of(
    st.just(None), st.just({}),
    st.dictionaries(names, names, min_size=1, max_size=3),
    st.builds(lambda f, lo: {f: {"$gte": lo}}, names, st.integers(-5, 5)),
    st.builds(lambda n: {"$segment": n}, names),
)
fractions = st.floats(0.0, 1.0)
open_fractions = st.floats(1e-6, 1.0)


def _opt(d, key, strat):
    return st.one_of(st.just(d), strat.map(lambda v: {**d, key: v}))


def _maybe(**strats):
    return st.fixed_dictionaries({}, optional=strats)


predict_json = st.builds(
    lambda req, opt: {**req, **opt},
    st.fixed_dictionaries({"target": names}),
    _maybe(
        **{"from": names, "segment": segments, "id": st.one_of(names, st.integers(0, 10 ** 9)),
           "evidence": st.one_of(st.dictionaries(names, st.one_of(names, st.integers(0, 99)), max_size=3),
                                 st.lists(st.tuples(names, names).map(list), max_size=3)),
           "evidence_fields": st.one_of(names, st.lists(names, min_size=1, max_size=3)),
           "prior_strength": st.floats(0.01, 100), "min_support": st.integers(1, 1000),
           "min_support_fraction": fractions, "max_p_value": open_fractions,
           "method": st.sampled_from(["conjunction", "factorized", "logistic"])}),
)
score_json = st.builds(
    lambda req, opt: {**req, **opt},
    st.fixed_dictionaries({"target": names, "value": st.one_of(names, st.integers(0, 9), st.booleans())}),
    _maybe(**{"from": names, "segment": segments, "top_k": st.integers(0, 10 ** 6),
              "evidence_fields": st.lists(names, min_size=1, max_size=3), "prior_strength": st.floats(0.01, 100),
              "method": st.sampled_from(["factorized", "logistic"])}),
)
evaluate_json = st.builds(
    lambda req, opt: {**req, **opt},
    st.fixed_dictionaries({"target": names}),
    _maybe(**{"from": names, "segment": segments, "evidence_fields": st.lists(names, min_size=1, max_size=3),
              "holdout_fraction": st.floats(0.01, 0.99), "seed": st.integers(-(2 ** 63), 2 ** 63 - 1),
              "prior_strength": st.floats(0.01, 100), "min_support": st.integers(1, 1000),
              "min_support_fraction": fractions, "max_p_value": open_fractions,
              "method": st.sampled_from(["conjunction", "factorized", "logistic"])}),
)

AT = Selector("snap", "v1")


def _round_trip(cls, obj, *args):
    q = cls.from_json(obj)
    req = q.to_proto(AT)
    req = type(req).FromString(req.SerializeToString())
    paths = cls.paths(req)
    back = cls.from_proto(req, paths, *args)
    return q, req, back


@settings(max_examples=200, deadline=None)
@given(predict_json)
def test_predict_query_round_trip(obj):
    q, req, back = _round_trip(PredictQuery, obj, 64)
    # the id travels as text: the service makes it the universe's key (row_id_from_text)
    expected = q if q.row_id is None else type(q)(**{**q.__dict__, "row_id": str(q.row_id)})
    assert back == expected
    assert back.to_proto(AT) == req
    # keys not given stay unset
    for key in ("prior_strength", "min_support", "min_support_fraction", "max_p_value"):
        assert req.HasField(key) == (key in obj)
    assert (req.method != 0) == ("method" in obj)


@settings(max_examples=200, deadline=None)
@given(score_json, st.integers(0, 1000))
def test_score_query_round_trip(obj, chunk):
    q = ScoreQuery.from_json(obj)
    req = q.to_proto(AT, chunk_size=chunk)
    assert req.chunk_size == chunk
    back = ScoreQuery.from_proto(req, ScoreQuery.paths(req), 64)
    assert back == q
    assert back.to_proto(AT, chunk) == req
    assert req.HasField("prior_strength") == ("prior_strength" in obj)
    assert (req.method != 0) == ("method" in obj)


@settings(max_examples=200, deadline=None)
@given(evaluate_json)
def test_evaluate_query_round_trip(obj):
    q, req, back = _round_trip(EvaluateQuery, obj, 64)
    assert back == q
    assert back.to_proto(AT) == req
    assert (req.holdout_fraction != 0) == ("holdout_fraction" in obj)
    for key in ("prior_strength", "min_support", "min_support_fraction", "max_p_value"):
        assert req.HasField(key) == (key in obj)


def test_defaults_kept_and_unset():
    q = PredictQuery.from_json({"target": "t"})
    assert q == PredictQuery(target="t")
    req = q.to_proto()
    assert req.snapshot == pb.SnapshotSelector()
    for key in ("prior_strength", "min_support", "min_support_fraction", "max_p_value"):
        assert not req.HasField(key)
    assert req.method == pb.PREDICT_METHOD_UNSPECIFIED and req.id == ""
    # a default given explicitly is sent
    assert PredictQuery.from_json({"target": "t", "prior_strength": 1.0}).to_proto().HasField("prior_strength")
    # a query built in Python sends what differs from the defaults
    assert PredictQuery(target="t", min_support=5).to_proto().min_support == 5
    assert ScoreQuery.from_json({"target": "t", "value": 1}).value == "1"
    ev = EvaluateQuery.from_json({"target": "t"})
    assert ev.to_proto().holdout_fraction == 0 and ev.holdout_fraction == 0.2 and ev.method == "logistic"


def test_segment_forms_accepted():
    tree = cond.And((cond.Term("a", "x"), cond.Not(cond.Term("b", "y"))))
    for seg in (cond.where_json(tree), tree, cond.to_proto(tree)):
        q = PredictQuery.from_json({"target": "t", "segment": seg})
        assert q.segment == tree
        assert q.to_proto().segment == cond.to_proto(tree)


def test_from_proto_records_paths():
    req = pb.PredictRequest(target_field="churned", id="42", evidence_fields=["a*", "b"],
                            evidence=[pb.PredictRequest().evidence.add().__class__(field="region", value="north")])
    req.segment.CopyFrom(cond.to_proto(cond.Term("plan", "gold")))
    paths = PredictQuery.paths(req)
    q = PredictQuery.from_proto(req, paths, 16)
    assert q.row_id == "42" and q.max_target_values == 16 and q.evidence == [("region", "north")]
    assert paths.locate(("region", "unknown value 'north'", "value", "north")) == ["evidence[0].value"]
    assert paths.locate(("plan", "unknown field")) == ["segment.term.field"]
    assert paths.locate(("target", "unknown field")) == ["target_field"]
    assert paths.locate(("row_id", "unknown id")) == ["id"]
    assert paths.locate(("evidence_fields", "matches nothing", "pattern", "b")) == ["evidence_fields[1]"]
    sreq = pb.ScoreSegmentRequest(target_field="churned", target_value="yes")
    spaths = ScoreQuery.paths(sreq)
    assert spaths.locate(("churned", "unknown value 'yes'", "value", "yes")) == ["target_value"]
    assert spaths.locate(("value", "unknown value")) == ["target_value"]


def test_row_id_from_text():
    assert row_id_from_text(" 17 ", "int", "customers", "customer_id") == 17
    assert row_id_from_text("abc", "str", "customers", "customer_id") == "abc"
    with pytest.raises(UnknownIdError) as e:
        row_id_from_text("abc", "int", "customers", "customer_id")
    assert e.value.violations == [("id", "unknown id 'abc'")]
    assert "has no row with customer_id 'abc' (its ids are integers)" in e.value.message


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls, obj, field_name", [
    (PredictQuery, {}, "target"),
    (PredictQuery, {"target": ""}, "target"),
    (PredictQuery, {"target": "t", "prior_strength": -1}, "prior_strength"),
    (PredictQuery, {"target": "t", "prior_strength": 0}, "prior_strength"),
    (PredictQuery, {"target": "t", "prior_strength": "x"}, "prior_strength"),
    (PredictQuery, {"target": "t", "min_support": 0}, "min_support"),
    (PredictQuery, {"target": "t", "min_support": 1.5}, "min_support"),
    (PredictQuery, {"target": "t", "min_support_fraction": 2}, "min_support_fraction"),
    (PredictQuery, {"target": "t", "max_p_value": 0}, "max_p_value"),
    (PredictQuery, {"target": "t", "method": "conjuction"}, "method"),
    (PredictQuery, {"target": "t", "id": True}, "id"),
    (PredictQuery, {"target": "t", "id": ""}, "id"),
    (PredictQuery, {"target": "t", "from": 3}, "from"),
    (PredictQuery, {"target": "t", "evidence": 3}, "evidence"),
    (PredictQuery, {"target": "t", "evidence": [["a"]]}, "evidence[0]"),
    (PredictQuery, {"target": "t", "evidence_fields": [""]}, "evidence_fields"),
    (PredictQuery, {"target": "t", "segment": {"$bogus": 1}}, "segment.$bogus"),
    (PredictQuery, {"target": "t", "max_correlation": 0.5}, "max_correlation"),  # not a JSON key
    (ScoreQuery, {"target": "t"}, "value"),
    (ScoreQuery, {"target": "t", "value": "v", "top_k": -1}, "top_k"),
    (ScoreQuery, {"target": "t", "value": "v", "method": "conjunction"}, "method"),
    (ScoreQuery, {"target": "t", "value": "v", "min_support": 3}, "min_support"),  # not a score key
    (EvaluateQuery, {"target": "t", "holdout_fraction": 1}, "holdout_fraction"),
    (EvaluateQuery, {"target": "t", "holdout_fraction": 0}, "holdout_fraction"),
    (EvaluateQuery, {"target": "t", "seed": 2 ** 63}, "seed"),
    (EvaluateQuery, {"target": "t", "seed": 1.5}, "seed"),
    (EvaluateQuery, {"target": "t", "method": "nope"}, "method"),
])
def test_json_validation_names_the_field(cls, obj, field_name):
    with pytest.raises(QueryError) as e:
        cls.from_json(obj)
    assert [v.field for v in e.value.violations] == [field_name]
    assert e.value.message.startswith(("predict query", "score query", "evaluate query", field_name.split(".")[0]))


def test_not_an_object():
    with pytest.raises(QueryError) as e:
        PredictQuery.from_json([1])
    assert e.value.violations[0].field == "query"


@pytest.mark.parametrize("query, field_name", [
    (PredictQuery(target="t", prior_strength=-1), "prior_strength"),
    (PredictQuery(target="t", max_target_values=1), "max_target_values"),
    (PredictQuery(target="t", l2=0), "l2"),
    (PredictQuery(target="t", max_correlation=0), "max_correlation"),
    (PredictQuery(target="t", evidence=[("a", "b", "c")]), "evidence"),
    (ScoreQuery(target="t", value="v", top_k=-2), "top_k"),
    (ScoreQuery(target="t", value="v", method="conjunction"), "method"),
    (EvaluateQuery(target="t", max_test_rows=0), "max_test_rows"),
    (EvaluateQuery(target="t", seed=True), "seed"),
])
def test_validate_names_the_field(query, field_name):
    with pytest.raises(QueryError) as e:
        query.validate()
    assert [v.field for v in e.value.violations] == [field_name]


def test_validate_accepts_defaults():
    PredictQuery(target="t").validate()
    ScoreQuery(target="t", value="v").validate()
    EvaluateQuery(target="t").validate()
    EvaluateQuery(target="t", max_test_rows=5).validate()


def test_proto_structural_errors():
    req = pb.PredictRequest(target_field="t", evidence_fields=["a", ""])
    with pytest.raises(QueryError) as e:
        PredictQuery.from_proto(req, PredictQuery.paths(req), 64)
    assert e.value.violations[0].field == "evidence_fields[1]"
    req = pb.PredictRequest(target_field="t")
    req.evidence.add(field="", value="x")
    with pytest.raises(QueryError) as e:
        PredictQuery.from_proto(req, PredictQuery.paths(req), 64)
    assert e.value.violations[0].field == "evidence[0].field"
    req = pb.PredictRequest(target_field="t", method=99)
    with pytest.raises(QueryError) as e:
        PredictQuery.from_proto(req, PredictQuery.paths(req), 64)
    assert e.value.violations[0].field == "method"
    sreq = pb.ScoreSegmentRequest(target_field="t", target_value="v", top_k=-1)
    with pytest.raises(QueryError) as e:
        ScoreQuery.from_proto(sreq, ScoreQuery.paths(sreq), 64)
    assert e.value.violations[0].field == "top_k"
    assert chunk_size_from_proto(0) == 1000 and chunk_size_from_proto(7) == 7
    with pytest.raises(QueryError) as e:
        chunk_size_from_proto(-1)
    assert e.value.violations[0].field == "chunk_size"
    with pytest.raises(LimitExceededError):
        chunk_size_from_proto(100_001)
    # values the engine checks come through as given, validate() names them
    req = pb.PredictRequest(target_field="t", prior_strength=-1.0)
    with pytest.raises(QueryError) as e:
        PredictQuery.from_proto(req, PredictQuery.paths(req), 64).validate()
    assert e.value.violations[0].field == "prior_strength"


# --- results --------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False)
floats = st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf]))
pairs = st.lists(st.tuples(names, names), max_size=3)
factors = st.builds(Factor, pairs, floats, st.integers(0, 10 ** 9), st.sampled_from(["conjunction", "lift"]),
                    st.one_of(st.just(""), names))
value_probs = st.builds(ValueProbability, names, floats, floats, st.lists(factors, max_size=3), floats)
predict_results = st.builds(
    PredictResult, names, names, names, names, st.booleans(), st.sampled_from(["conjunction", "factorized", "logistic"]),
    st.integers(0, 10 ** 9), pairs, st.lists(value_probs, max_size=4), st.floats(0, 1e4),
)


def _without_elapsed(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "elapsed_ms"}


def _same(a, b) -> bool:
    """JSON equality with NaN equal to itself (json_number renders NaN as None, so plain == is enough)."""
    return a == b


@settings(max_examples=150, deadline=None)
@given(predict_results, st.floats(0, 1e4))
def test_predict_result_round_trip(result, server_ms):
    msg = result.to_proto(server_ms)
    back = PredictResult.from_proto(pb.PredictResponse.FromString(msg.SerializeToString()))
    assert _same(_without_elapsed(back.to_json()), _without_elapsed(result.to_json()))
    assert back.elapsed_ms == server_ms
    assert msg.info.snapshot_name == result.snapshot and msg.info.snapshot_version == result.version


bins = st.builds(CalibrationBin, fractions, fractions, fractions, fractions, st.integers(0, 10 ** 6))


@st.composite
def evaluate_results(draw):
    values = draw(st.lists(names, min_size=2, max_size=4, unique=True))
    n = draw(st.integers(0, 5))
    return EvaluateResult(
        draw(names), draw(names), draw(names), draw(names), draw(st.sampled_from(["conjunction", "factorized", "logistic"])),
        values, draw(st.integers(0, 10 ** 6)), n, draw(fractions), draw(fractions), values[0], draw(floats),
        draw(st.one_of(st.none(), fractions)), draw(st.one_of(st.none(), names)), draw(finite), draw(fractions),
        draw(st.lists(bins, max_size=10)), draw(names), np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
        np.full((n, len(values)), 1.0 / len(values)), draw(st.floats(0, 1e4)),
    )


@settings(max_examples=150, deadline=None)
@given(evaluate_results(), st.floats(0, 1e4))
def test_evaluate_result_round_trip(result, server_ms):
    msg = result.to_proto(server_ms)
    back = EvaluateResult.from_proto(pb.EvaluateResponse.FromString(msg.SerializeToString()))
    assert _same(_without_elapsed(back.to_json()), _without_elapsed(result.to_json()))
    assert back.probabilities.shape == (0, len(result.values))


class _FakeUniverse:
    def ids_for_rows(self, rows):
        return [f"c{int(r)}" for r in rows]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=40), st.integers(1, 7), st.floats(0, 1e4))
def test_score_result_round_trip(scores, chunk, server_ms):
    rows = np.arange(len(scores), dtype=np.int64) * 3
    mean = float(np.mean(scores)) if scores else math.nan
    result = ScoreResult("s", "v", "u", "t", "yes", rows, np.asarray(scores, dtype=np.float64), len(scores) + 2,
                         mean, 1.5, _FakeUniverse())
    ids = result.ids
    assert ids == [f"c{r}" for r in rows.tolist()]
    stream = [pb.ScoreSegmentResponse.FromString(m.SerializeToString()) for m in result.to_proto(server_ms, chunk)]
    assert sum(m.WhichOneof("payload") == "chunk" for m in stream) == -(-len(scores) // chunk)
    back = ScoreResult.from_proto(stream)
    assert _without_elapsed(back.to_json()) == _without_elapsed(result.to_json(ids))
    assert back.ids == ids
    summary = ScoreSummary.from_proto(stream[-1])
    assert summary.to_json() == {**result.summary_json(), "elapsed_ms": round(server_ms, 3)}
    assert _without_elapsed(summary.to_json()) == {k: v for k, v in _without_elapsed(result.to_json(ids)).items()
                                                   if k != "scores"}


def test_score_json_shape():
    result = ScoreResult("s", "v", "u", "t", "yes", np.array([4, 2]), np.array([0.9, math.nan]), 10, 0.4, 2.0)
    assert result.to_json([104, 102]) == {
        "snapshot": "s", "version": "v", "from": "u", "target": "t", "value": "yes", "n_members": 10,
        "returned": 2, "mean_score": 0.4, "elapsed_ms": 2.0,
        "scores": [{"id": "104", "score": 0.9}, {"id": "102", "score": None}],
    }
    assert result.ids == []
    msg = result.chunk_to_proto([104], result.scores[:1], 3.0)
    assert msg.chunk.scores[0].id == "104" and msg.info.server_time_ms == 3.0


def test_unknown_enum_in_answer_is_empty():
    resp = pb.PredictResponse(method=77)
    resp.probabilities.add().explanation.factors.add(kind=55)
    back = PredictResult.from_proto(resp)
    assert back.method == "" and back.probabilities[0].factors[0].kind == ""


# --- the explanation a person reads ------------------------------------------------------------------


def _explained_value() -> ValueProbability:
    fs = [Factor([("a", "1")], 1.0, 40, "lift", "not significant within the segment (p=0.5 > max_p_value=0.001)",
                 p_value=0.5, log10_p_value=math.log10(0.5)),
          Factor([("b", "1")], 1.5, 80, "lift", "", p_value=1e-5, log10_p_value=-5.0),
          Factor([("c", "1")], 1.0, 0, "lift", "not observed in the segment"),
          Factor([("d", "1"), ("e", "2")], 0.25, 31, "conjunction", "", p_value=0.0, log10_p_value=-1004.0267),
          Factor([("f", "1")], 0.9, 12, "lift", "within the conjunction", p_value=1e-4, log10_p_value=-4.0),
          Factor([("g", "1")], 1.0, 7, "lift", "redundant with b=1 (phi=0.950 in the segment)"),
          Factor([("h", "1")], 0.6, 9, "lift", "", p_value=2e-5, log10_p_value=math.log10(2e-5)),
          Factor([], 1.0, 100, "lift", "intercept")]  # no evidence: listed, never folded
    base, norm = 0.3, 0.7
    prob = base * math.prod(f.factor for f in fs) / norm
    return ValueProbability("yes", prob, base, fs, norm)


def test_explanation_by_effect_with_no_effect_folded():
    vp = _explained_value()
    js = vp.to_json()
    # |ln| descending: 0.25 (1.386), 0.6 (0.511), 1.5 (0.405), 0.9 (0.105), the intercept (0)
    assert [f["evidence"] for f in js["factors"]] == [[["d", "1"], ["e", "2"]], [["h", "1"]], [["b", "1"]],
                                                      [["f", "1"]], []]
    assert js["no_effect"] == {"count": 3, "evidence": [["a", "1"], ["c", "1"], ["g", "1"]]}
    prod = math.prod(f["factor"] for f in js["factors"])
    assert js["base_probability"] * prod / js["normalizer"] == pytest.approx(js["probability"], rel=1e-15)
    # the proto: the listed factors in the same order, the count and the folded evidence
    e = vp.to_proto().explanation
    assert [gf.factor for gf in e.factors] == [f["factor"] for f in js["factors"]]
    assert e.no_effect_count == 3 and [(t.field, t.value) for t in e.no_effect_evidence] == [("a", "1"), ("c", "1"),
                                                                                                  ("g", "1")]
    assert e.base_probability * math.prod(gf.factor for gf in e.factors) / e.normalizer == \
        pytest.approx(vp.probability, rel=1e-15)
    back = ValueProbability.from_proto(pb.TargetProbability.FromString(vp.to_proto().SerializeToString()))
    assert back.to_json() == js and len(back.factors) == len(vp.factors)


def test_p_values_and_their_log10_in_json_and_proto():
    vp = _explained_value()
    js = vp.to_json()
    conj = js["factors"][0]
    assert conj["p_value"] == 0.0 and conj["log10_p_value"] == -1004.0267  # below 1e-300: read the log10
    b = js["factors"][2]
    assert (b["p_value"], b["log10_p_value"]) == (1e-5, -5.0)
    assert "p_value" not in js["factors"][-1] and "log10_p_value" not in js["factors"][-1]  # no test
    msgs = vp.to_proto().explanation.factors
    assert msgs[0].HasField("p_value") and msgs[0].p_value == 0.0 and msgs[0].log10_p_value == -1004.0267
    assert not msgs[-1].HasField("p_value") and not msgs[-1].HasField("log10_p_value")
    back = Factor.from_proto(msgs[0])
    assert (back.p_value, back.log10_p_value) == (0.0, -1004.0267)
