"""Export (segsrv.engine.export) against the brute-force oracle over the PetNord source tables.

The member lists come from the oracle of conftest.py (pandas over the source JSON files,
never the snapshot's bitsets); the ranking (top_k) is checked against per-member Predict
(method logistic, the documented default of the ranking) and ScoreSegment's scores.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from segsrv.ops.conditions import SegmentRef, Term, parse_where
from segsrv.engine.export import export_members, ids_text
from segsrv.ops.export import DEFAULT_CHUNK_SIZE, ExportQuery
from segsrv.engine.predict import predict, score_segment
from segsrv.ops.predict import PredictQuery
from segsrv.ops.score import ScoreQuery
from segsrv.errors import (
    LimitExceededError,
    QueryError,
    UnknownFieldError,
    UnknownSegmentError,
    UnknownUniverseError,
    UnknownValueError,
)
from segsrv.snapshot.reader import Snapshot
from support import CUSTOMER_CONDITIONS

U = "customers"

CONDITIONS = CUSTOMER_CONDITIONS


def _export(snap, where, **kw) -> tuple:
    res = export_members(snap, ExportQuery(universe=U, condition=parse_where(where), **kw))
    chunks = list(res.chunks())
    return res, chunks


def _ids(chunks) -> list[str]:
    return [i for ids, _ in chunks for i in ids]


# ----------------------------------------------------------------------------
# the member list
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONDITIONS))
@pytest.mark.parametrize("chunk_size", [97, DEFAULT_CHUNK_SIZE])
def test_members_equal_the_oracle(snap, bu, name, chunk_size):
    where = CONDITIONS[name]
    expected = bu.ids[bu.eval(where)].tolist()  # the oracle's ids, in key order (= row order)
    res, chunks = _export(snap, where, chunk_size=chunk_size)
    assert res.total == res.returned == len(expected)
    assert _ids(chunks) == expected
    assert not res.ranked and all(scores is None for _, scores in chunks)
    # chunk sizes: every chunk full but the last; no empty chunk; none at all for an empty result
    sizes = [len(ids) for ids, _ in chunks]
    assert len(sizes) == res.n_chunks == math.ceil(len(expected) / chunk_size)
    assert all(s == chunk_size for s in sizes[:-1]) and all(0 < s <= chunk_size for s in sizes)
    assert (res.universe, res.n_rows, res.snapshot, res.version) == (U, bu.n, snap.name, snap.version)
    if name == "empty":
        assert res.total == 0 and chunks == []


def test_ids_are_text_for_every_universe(snap, oracle):
    bo = oracle.universe("orders")
    res = export_members(snap, ExportQuery(universe="orders", condition=Term("customer.region", "oulu")))
    ids = _ids(res.chunks())
    assert ids == bo.ids[bo.eval({"customer.region": "oulu"})].tolist()
    assert all(isinstance(i, str) for i in ids)


def test_int_keys_become_text():
    class IntUniverse:
        key_kind = "int"
        row_ids = np.array([-5, 3, 12, 2**62], dtype=np.int64)

    assert ids_text(IntUniverse(), np.array([3, 0, 2], dtype=np.uint32)) == [str(2**62), "-5", "12"]


def test_random_conditions_equal_the_oracle(snap, bu, where_strategy):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(where_strategy(U))
    def check(where):
        res, chunks = _export(snap, where, chunk_size=250)
        assert _ids(chunks) == bu.ids[bu.eval(where)].tolist()
        assert res.total == sum(len(ids) for ids, _ in chunks)

    check()


def test_ids_are_made_one_chunk_at_a_time(snap, monkeypatch):
    from segsrv.engine import export as export_module

    calls = []
    real = export_module.ids_text
    monkeypatch.setattr(export_module, "ids_text", lambda u, rows: calls.append(len(rows)) or real(u, rows))
    res = export_members(snap, ExportQuery(universe=U, chunk_size=500))
    assert res.total == 3000 and calls == []  # the total is known before any id string exists
    it = res.chunks()
    first, _ = next(it)
    assert len(first) == 500 and calls == [500]
    rest = [ids for ids, _ in it]
    assert calls == [500] * 6 and sum(map(len, rest)) == 2500


def test_json_form(snap, bu):
    q = ExportQuery.from_json({"from": U, "where": {"region": "oulu"}, "top_k": 5, "target": "churned",
                                "value": True})
    assert (q.universe, q.condition, q.top_k, q.target, q.value) == (U, Term("region", "oulu"), 5, "churned", "true")
    q = ExportQuery.from_json({"from": U, "where": {"$segment": "x"}})
    assert q.condition == SegmentRef("x") and q.target is None and q.top_k == 0
    res = export_members(snap, ExportQuery.from_json({"from": U, "where": CONDITIONS["negation"]}))
    assert _ids(res.chunks()) == bu.ids[bu.eval(CONDITIONS["negation"])].tolist()


# ----------------------------------------------------------------------------
# ranked: top K by a Predict score
# ----------------------------------------------------------------------------


def _predict_scores(snap, seg, ids, target, value) -> dict:
    """Brute force: one Predict per member (logistic: the ranking's documented default)."""
    out = {}
    for rid in ids:
        p = predict(snap, PredictQuery(target=target, universe=U, segment=seg, row_id=rid, method="logistic"))
        out[rid] = {vp.value: vp.probability for vp in p.probabilities}[value]
    return out


@pytest.mark.parametrize("where,target,value,k", [
    ({"lifestyle": "premium", "region": ["oulu", "turku"]}, "churned", "true", 10),
    ({"segment": "cat_owner", "region": {"$ne": "helsinki"}, "tenure_months": "<6"}, "lifestyle", "premium", 7),
])
def test_top_k_equals_sorted_predict_scores(snap, bu, where, target, value, k):
    seg = parse_where(where)
    members = bu.ids[bu.eval(where)].tolist()
    assert 20 < len(members) < 400  # small enough for one Predict per member
    brute = _predict_scores(snap, seg, members, target, value)
    res, chunks = _export(snap, where, top_k=k, target=target, value=value, chunk_size=3)
    ids = _ids(chunks)
    scores = [s for _, sc in chunks for s in sc.tolist()]
    assert res.ranked and res.total == len(members) and res.returned == len(ids) == k
    assert [len(i) for i, _ in chunks] == [3] * (k // 3) + ([k % 3] if k % 3 else [])
    for rid, s in zip(ids, scores):  # each exported score is that member's Predict probability
        assert math.isclose(s, brute[rid], rel_tol=1e-9, abs_tol=1e-15), (rid, s, brute[rid])
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    # the K best: brute-force sort (score descending, ties in row order) gives the same ids, up to
    # ties at the boundary within float noise
    order = sorted(members, key=lambda r: (-brute[r], members.index(r)))
    kth = brute[order[k - 1]]
    assert all(brute[r] <= kth + 1e-12 for r in order[k:])
    assert set(ids) == set(order[:k]) or all(abs(brute[r] - kth) < 1e-12
                                             for r in set(ids) ^ set(order[:k]))


def test_top_k_equals_score_segment_sorted(snap, bu):
    where = {"churned": True, "$not": {"region": "helsinki"}}
    seg = parse_where(where)
    full = score_segment(snap, ScoreQuery(target="segment", value="dog_owner", universe=U, segment=seg))
    order = np.lexsort((full.rows, -full.scores))  # best first, ties in row order
    all_ids = full.ids
    for k in (1, 50, 333):
        res, chunks = _export(snap, where, top_k=k, target="segment", value="dog_owner", chunk_size=40)
        assert res.total == full.n_members == int(bu.eval(where).sum())
        assert _ids(chunks) == [all_ids[j] for j in order[:k]]
        assert np.array_equal(np.concatenate([s for _, s in chunks]), full.scores[order[:k]])


def test_target_without_top_k_ranks_every_member(snap, bu):
    where = CONDITIONS["negation"]
    res, chunks = _export(snap, where, target="churned", value="true", chunk_size=200)
    ids = _ids(chunks)
    scores = np.concatenate([s for _, s in chunks])
    assert res.total == res.returned == len(ids) == int(bu.eval(where).sum())
    assert sorted(ids) == bu.ids[bu.eval(where)].tolist()
    assert np.all(np.diff(scores) <= 0)


def test_top_k_beyond_the_members_and_empty_segments(snap, bu):
    where = {"lifestyle": "premium", "region": "oulu"}
    n = int(bu.eval(where).sum())
    res, chunks = _export(snap, where, top_k=10 ** 9, target="churned", value="true")
    assert res.total == res.returned == n == len(_ids(chunks))
    res, chunks = _export(snap, CONDITIONS["empty"], top_k=5, target="churned", value="true")
    assert res.total == res.returned == 0 and chunks == []


def test_ranking_method_is_selectable(snap):
    where = {"lifestyle": "premium"}
    logistic, _ = _export(snap, where, top_k=5, target="churned", value="true")
    factorized, _ = _export(snap, where, top_k=5, target="churned", value="true", method="factorized")
    ref = score_segment(snap, ScoreQuery(target="churned", value="true", universe=U, segment=parse_where(where),
                                         top_k=5, method="factorized"))
    assert np.array_equal(factorized.rows, ref.rows) and np.array_equal(factorized.scores, ref.scores)
    assert not np.array_equal(logistic.scores, factorized.scores)


# ----------------------------------------------------------------------------
# segment references (a catalog in the manifest)
# ----------------------------------------------------------------------------


def test_segment_references(snap, bu):
    manifest = copy.deepcopy(snap.manifest)
    manifest["segments"] = {
        "premium_dogs": {"where": {"lifestyle": "premium", "segment": "dog_owner"}, "universe": U},
        "outside_helsinki": {"where": {"region": {"$ne": "helsinki"}}, "universe": U},
        "nested": {"where": {"$segment": "premium_dogs", "churned": True}, "universe": U},
    }
    cat = Snapshot(snap.path, manifest)
    cases = [
        ({"$segment": "premium_dogs"}, {"lifestyle": "premium", "segment": "dog_owner"}),
        ({"$segment": "nested", "$not": {"$segment": "outside_helsinki"}},
         {"lifestyle": "premium", "segment": "dog_owner", "churned": True, "region": "helsinki"}),
        ({"$or": [{"$segment": "premium_dogs"}, {"region": "oulu"}]},
         {"$or": [{"lifestyle": "premium", "segment": "dog_owner"}, {"region": "oulu"}]}),
    ]
    for where, plain in cases:
        res, chunks = _export(cat, where, chunk_size=64)
        assert _ids(chunks) == bu.ids[bu.eval(plain)].tolist(), where
        assert res.total > 0
    res, chunks = _export(cat, {"$segment": "premium_dogs"}, top_k=3, target="churned", value="true")
    assert res.total == int(bu.eval(cases[0][1]).sum()) and len(_ids(chunks)) == 3
    with pytest.raises(UnknownSegmentError, match="premium_dgos"):
        export_members(cat, ExportQuery(universe=U, condition=SegmentRef("premium_dgos")))


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,exc,field", [
    (dict(top_k=5), QueryError, "target"),  # top K of what?
    (dict(value="true"), QueryError, "target"),
    (dict(target="churned"), QueryError, "value"),
    (dict(top_k=-1, target="churned", value="true"), QueryError, "top_k"),
    (dict(top_k=True, target="churned", value="true"), QueryError, "top_k"),
    (dict(chunk_size=0), QueryError, "chunk_size"),
    (dict(target="churnd", value="true", top_k=3), UnknownFieldError, "target"),
    (dict(target="churned", value="maybe", top_k=3), UnknownValueError, "churned"),
    (dict(target="last_order_month", value="2026-02", top_k=3, max_target_values=10), LimitExceededError, "target"),
    (dict(condition=Term("regoin", "oulu")), UnknownFieldError, "regoin"),
    (dict(condition=Term("region", "oslo")), UnknownValueError, "region"),
    (dict(universe="custmers"), UnknownUniverseError, "from"),
    (dict(condition=SegmentRef("nope")), UnknownSegmentError, "$segment"),
])
def test_errors(snap, kwargs, exc, field):
    kwargs = {"universe": U, **kwargs}
    with pytest.raises(exc) as info:
        export_members(snap, ExportQuery(**kwargs))
    assert type(info.value) is exc or exc is QueryError
    assert info.value.violations and info.value.violations[0][0] == field, info.value.violations


@pytest.mark.parametrize("obj,field", [
    ({"from": U, "top_k": 3}, "target"),
    ({"from": U, "top_k": "3", "target": "churned", "value": 1}, "top_k"),
    ({"from": U, "top_k": -2, "target": "churned", "value": 1}, "top_k"),
    ({"from": U, "target": "", "value": 1}, "target"),
    ({"from": 7}, "from"),
    ({"from": U, "limit": 3}, "limit"),
    ({"from": U, "where": {"region": {"$bad": 1}}}, "where.region"),
])
def test_json_errors(obj, field):
    with pytest.raises(QueryError) as info:
        ExportQuery.from_json(obj)
    assert info.value.violations[0][0] == field


def test_value_may_be_given_as_in_where(snap):
    res = export_members(snap, ExportQuery(universe=U, top_k=3, target="churned", value=True))
    assert res.value == "true" and res.returned == 3
