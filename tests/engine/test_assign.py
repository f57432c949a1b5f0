"""Assign: exact membership from CSR rows, feature-list customers, propensities, ranking."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segsrv.engine.assign import _ScalarOps, assign, compiled_catalog
from segsrv.ops.assign import AssignQuery
from segsrv.engine.catalog import apply_segments
from segsrv.engine.conditions import Evaluator, evaluate
from segsrv.ops.conditions import SegmentRef, parse_where
from segsrv.engine.predict.target import g_test_p as _g_test_p
from segsrv.errors import LimitExceededError, QueryError, UnknownFieldError, UnknownValueError
from segsrv.snapshot.reader import open_snapshot
from support import assert_single_ids_equal_batch, quiet, row_features, write_small_shop

U = "customers"
F = "factorized"  # these tests check the factorized propensities (the logistic ones: test_catalog_models.py)

CATALOG = {
    "helsinki_large": {"where": {"region": "helsinki", "pet_size": "large"}, "priority": 5},
    "churners": {"where": {"churned": True}},
    "kept_helsinki_large": {"where": {"$segment": "helsinki_large", "$not": {"$segment": "churners"}}, "priority": 7},
    "long_tenure": {"where": {"tenure_months": {"$gte": 24}}, "priority": 1},
    "mid_spend_band": {"where": {"total_spent_eur": {"$gte": 100, "$lt": 400}}},
    "north_or_lapsed": {"where": {"$or": [{"region": ["oulu", "jyvaskyla"]}, {"churned": True}]}},
    "bought_dry_food": {"where": {"orders.lines.product.category": "dry-food"}},
    "not_dry_food": {"where": {"$not": {"orders.lines.product.category": "dry-food"}}},
    "tenure_exact_12": {"where": {"tenure_months": 12}},
    "empty": {"where": {"region": "helsinki", "$not": {"region": "helsinki"}}},
}


@pytest.fixture(scope="module")
def snap(petnord_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("assign") / "snapshots"
    shutil.copytree(petnord_root, root, copy_function=os.link)
    apply_segments(root / "petnord", {k: dict(v, universe=U) for k, v in CATALOG.items()}, fit_propensities=False)
    return open_snapshot(root / "petnord")


@pytest.fixture(scope="module")
def truth(snap):
    """Membership by evaluating every catalog condition over the whole universe (bitsets)."""
    u = snap.universe(U)
    out = {}
    for name in CATALOG:
        bits = evaluate(snap, u, SegmentRef(name))
        mask = np.unpackbits(bits.view(np.uint8), bitorder="little")[: u.n_rows].astype(bool)
        out[name] = mask
    return out


def test_assign_by_id_equals_whole_universe_evaluation(snap, truth, oracle):
    u = snap.universe(U)
    bu = oracle.universe(U)
    # the bitset truth itself agrees with the source-table oracle
    assert truth["helsinki_large"].sum() == bu.eval({"region": "helsinki", "pet_size": "large"}).sum()
    assert np.array_equal(truth["bought_dry_food"], bu.eval({"orders.lines.product.category": "dry-food"}))
    ids = list(u.ids_for_rows(np.arange(u.n_rows)))
    res = assign(snap, AssignQuery(universe=U, ids=ids))
    assert res.n_segments == len(CATALOG) and len(res.assignments) == u.n_rows
    for row, a in enumerate(res.assignments):
        assert a.found and a.id == ids[row]
        members = {m.segment for m in a.segments if m.member}
        assert members == {n for n in CATALOG if truth[n][row]}, a.id
        assert all(m.member for m in a.segments)  # without propensities only member segments are listed
        assert [m.segment for m in a.segments[: len(members)]] == sorted(
            members, key=lambda n: (-CATALOG[n].get("priority", 0), truth[n].sum(), n))
        assert a.primary_segment == (a.segments[0].segment if members else None)
        for m in a.segments:
            assert m.segment_size == int(truth[m.segment].sum())
            assert math.isclose(m.share, m.segment_size / u.n_rows)


def test_unknown_ids_are_reported_per_id(snap):
    u = snap.universe(U)
    known = u.ids_for_rows([0, 5])
    res = assign(snap, AssignQuery(universe=U, ids=[known[0], "NOPE", known[1], "", "CUST-000011111"]))
    assert [a.found for a in res.assignments] == [True, False, True, False, False]
    assert [a.id for a in res.assignments] == [known[0], "NOPE", known[1], "", "CUST-000011111"]
    assert res.assignments[1].segments == [] and res.assignments[1].primary_segment is None


def test_batch_of_10000_ids(snap, truth):
    u = snap.universe(U)
    rng = np.random.default_rng(7)
    rows = rng.integers(0, u.n_rows, 10_000)
    ids = list(u.ids_for_rows(rows))
    res = assign(snap, AssignQuery(universe=U, ids=ids))
    assert len(res.assignments) == 10_000
    for r, a in zip(rows, res.assignments):
        assert {m.segment for m in a.segments if m.member} == {n for n in CATALOG if truth[n][r]}


def _row_features(snap, row):
    return row_features(snap.universe(U), row)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.integers(0, 2999))
def test_feature_list_customer_equals_known_customer(snap, row):
    u = snap.universe(U)
    rid = u.ids_for_rows([row])[0]
    by_id = assign(snap, AssignQuery(universe=U, ids=[rid], include_propensities=True, propensity_method=F)).assignments[0]
    by_features = assign(snap, AssignQuery(universe=U, features=_row_features(snap, row),
                                           include_propensities=True, propensity_method=F)).assignments[0]
    assert by_features.id is None and by_features.found
    assert [(m.segment, m.member) for m in by_features.segments] == [(m.segment, m.member) for m in by_id.segments]
    for a, b in zip(by_features.segments, by_id.segments):
        assert (a.propensity is None) == (b.propensity is None)
        if a.propensity is not None:
            assert math.isclose(a.propensity, b.propensity, rel_tol=1e-9, abs_tol=1e-15)
    assert by_features.primary_segment == by_id.primary_segment


def test_propensity_equals_brute_force_factorized_model(snap, truth):
    """P(member) = softmax of log base + sum of smoothed log lifts over significant features
    outside the segment's own fields, recomputed here from plain numpy masks."""
    u = snap.universe(U)
    n = u.n_rows
    indptr, indices = np.asarray(u.csr_indptr), np.asarray(u.csr_indices)
    X = np.zeros((n, u.n_features), dtype=bool)
    X[np.repeat(np.arange(n), np.diff(indptr)), indices] = True
    a, max_p = 1.0, 0.001
    rows = [0, 11, 222, 1999, 2999]
    res = assign(snap, AssignQuery(universe=U, ids=list(u.ids_for_rows(rows)), include_propensities=True, propensity_method=F))
    seg_fields = {"churners": {"churned"}, "long_tenure": {"tenure_months"},
                  "bought_dry_food": {"orders.lines.product.category"},
                  "helsinki_large": {"region", "pet_size"}}
    for name, fields in seg_fields.items():
        m = truth[name]
        n1 = int(m.sum())
        n1f = X[m].sum(axis=0)
        nf = X.sum(axis=0)
        N = np.vstack([n1f, nf - n1f])
        n_c = np.array([n1, n - n1])
        keep = (nf > 0) & (_g_test_p(N, n_c) <= max_p)
        for f in fields:
            info = u.fields[f]
            keep[info.feature_offset: info.feature_offset + len(info.values)] = False
        p0 = np.array([(n1 + 1) / (n + 2), (n - n1 + 1) / (n + 2)])
        base = (n_c + a * p0) / (n + a)
        q = nf / n
        for row, asg in zip(rows, res.assignments):
            ms = {x.segment: x for x in asg.segments}
            if m[row]:
                assert ms[name].member and ms[name].propensity is None
                continue
            logit = np.log(base).copy()
            for f in np.flatnonzero(X[row] & keep):
                for c in range(2):
                    logit[c] += math.log(((N[c, f] + a * q[f]) / (n_c[c] + a)) / q[f])
            p = math.exp(logit[0] - np.logaddexp(logit[0], logit[1]))
            assert math.isclose(ms[name].propensity, p, rel_tol=1e-9, abs_tol=1e-300), (name, row)


def test_non_members_ranked_by_propensity(snap):
    u = snap.universe(U)
    res = assign(snap, AssignQuery(universe=U, ids=list(u.ids_for_rows(range(50))), include_propensities=True, propensity_method=F))
    for a in res.assignments:
        others = [m.propensity for m in a.segments if not m.member]
        assert others == sorted(others, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in others)


def test_compiled_catalog_is_cached_per_version(snap):
    u = snap.universe(U)
    assert compiled_catalog(snap, u) is compiled_catalog(snap, u)


def test_bad_requests(snap):
    u = snap.universe(U)
    with pytest.raises(QueryError, match="either ids"):
        assign(snap, AssignQuery(universe=U, ids=[u.ids_for_rows([0])[0]], features=[("region", "oulu")]))
    with pytest.raises(QueryError, match="give the ids"):
        assign(snap, AssignQuery(universe=U))
    with pytest.raises(UnknownFieldError, match="did you mean 'region'"):
        assign(snap, AssignQuery(universe=U, features=[("regio", "oulu")]))
    with pytest.raises(UnknownValueError):
        assign(snap, AssignQuery(universe=U, features=[("region", "mars")]))
    with pytest.raises(LimitExceededError, match="100000"):
        assign(snap, AssignQuery(universe=U, ids=["x"] * 100_001))
    with pytest.raises(QueryError, match="prior_strength"):
        assign(snap, AssignQuery(universe=U, ids=["x"], prior_strength=0))
    # an empty feature list is a customer with no features: valid
    res = assign(snap, AssignQuery(universe=U, features=[]))
    assert {m.segment for m in res.assignments[0].segments if m.member} == {"not_dry_food"}


def test_universe_defaults_to_the_catalogs(snap):
    res = assign(snap, AssignQuery(ids=["NOPE"]))
    assert res.universe == U


def test_first_factorized_callers_share_one_fit(snap, monkeypatch):
    """warm_catalog fits nothing (this catalog stores no models: they are left to the first Assign);
    concurrent first callers of the factorized propensities share one fit per segment."""
    import threading

    from segsrv.engine import assign as A

    fresh = open_snapshot(snap.path.parent)  # a new Snapshot object: its own catalog cache entry
    fits = []
    original = A.CompiledCatalog.model

    def counting(self, i, a, max_p):
        key = (i, *A.propensity_params(F, a, max_p))
        with self._lock:
            cached = key in self._models
        if not cached:
            fits.append(key)
        return original(self, i, a, max_p)

    monkeypatch.setattr(A.CompiledCatalog, "model", counting)
    before = A.fit_count()
    assert A.warm_catalog(fresh) == {U: len(CATALOG)}
    assert fits == [] and A.fit_count() == before
    u = fresh.universe(U)
    other = open_snapshot(snap.path.parent)  # cold again: 8 threads ask at once, each model is fitted once
    start = threading.Barrier(8)
    answers, failures = [], []

    def call():
        try:
            start.wait()
            answers.append(assign(other, AssignQuery(universe=U, ids=list(u.ids_for_rows([5, 6])),
                                                     include_propensities=True, propensity_method=F)))
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not failures and len(answers) == 8
    assert sorted(fits) == sorted(set(fits)) and len(fits) == len(CATALOG)
    first = [[(m.segment, m.propensity) for m in a.segments] for a in answers[0].assignments]
    assert all([[(m.segment, m.propensity) for m in a.segments] for a in r.assignments] == first for r in answers)


def test_model_caches_are_bounded_by_parameter_pairs(snap):
    """Requests choose prior_strength and max_p_value: a catalog keeps the models of at most
    MODEL_PARAMS_KEPT pairs (least recently used dropped), and a dropped pair refits to the same."""
    from segsrv.engine import assign as A

    fresh = open_snapshot(snap.path.parent)
    cat = compiled_catalog(fresh, fresh.universe(U))
    K = A.MODEL_PARAMS_KEPT
    pairs = [(1.0 + i, 0.05) for i in range(K + 4)]
    keys = [(F, *pair) for pair in pairs]
    first = {key: cat.propensity_model(key) for key in keys}
    assert list(cat._stacked) == keys[-K:]
    assert cat._models == {} and not cat._partial and cat._fitting == {}  # all in the stacked models
    bias, D = cat.propensity_model(keys[0])  # dropped: fitted again, identically
    assert np.array_equal(bias, first[keys[0]][0]) and np.array_equal(D, first[keys[0]][1])
    assert len(cat._stacked) == K and keys[0] in cat._stacked and keys[-K] not in cat._stacked

    for i in range(K + 3):  # first fits stopped after one segment (cancelled) leave bounded leftovers
        cat.model(0, 100.0 + i, 0.05)
    assert len(cat._partial) == K and {k[1:] for k in cat._models} == set(cat._partial)
    assert len(cat._models) == K


def test_warm_catalog_without_segments_is_a_no_op(petnord_root):
    from segsrv.engine.assign import warm_catalog

    assert warm_catalog(open_snapshot(petnord_root / "petnord")) == {}


def test_waiting_for_a_fit_stops_when_the_caller_is_cancelled(snap):
    """A caller that waits for another request's fit gives up when its own call is over."""
    import threading

    from segsrv.engine import cancel
    from segsrv.errors import SegsrvError

    fresh = open_snapshot(snap.path.parent)
    cat = compiled_catalog(fresh, fresh.universe(U))
    gate = cat._fitting.setdefault((F, 1.0, 0.001), threading.Lock())
    gate.acquire()  # somebody else is fitting, and never finishes
    try:
        class Gone(SegsrvError):
            pass

        def check():
            raise Gone("cancelled")

        with cancel.checking(check), pytest.raises(Gone):
            cat.propensity_model((F, 1.0, 0.001))
    finally:
        gate.release()


def test_catalog_cache_does_not_keep_a_snapshot_alive(snap):
    """The compiled catalog (and its fitted models) go with their Snapshot object: a version the
    server retired is unmapped even after Assign used its catalog."""
    import gc
    import weakref

    fresh = open_snapshot(snap.path.parent)
    u = fresh.universe(U)
    assign(fresh, AssignQuery(universe=U, ids=list(u.ids_for_rows([0, 1])), include_propensities=True, propensity_method=F))
    alive = weakref.ref(fresh)
    dense = weakref.ref(u.dense.base)  # the np.memmap of the dense matrix
    del fresh, u
    gc.collect()
    assert alive() is None and dense() is None


def test_membership_of_known_rows_one_at_a_time_and_in_batches(snap, truth):
    """Known rows' membership, by the programs over feature presence: one row (the per-request path, a set
    lookup per catalog feature) and batches agree, row for row, with the whole-universe evaluation."""
    u = snap.universe(U)
    cat = compiled_catalog(snap, u)
    rows = np.random.default_rng(3).choice(u.n_rows, 300, replace=False)
    want = np.array([truth[sg.name][rows] for sg in cat.segments])
    np.testing.assert_array_equal(cat.membership(cat.presence_of_rows(rows)), want)
    for j, r in enumerate(rows[:40]):
        np.testing.assert_array_equal(cat.membership(cat.presence_of_rows(np.array([r])))[:, 0], want[:, j])
    ids = u.ids_for_rows(rows[:50])
    batch = assign(snap, AssignQuery(universe=U, ids=ids))
    one_by_one = [assign(snap, AssignQuery(universe=U, ids=[i])).assignments[0] for i in ids]
    assert [a.segments for a in batch.assignments] == [a.segments for a in one_by_one]


# -- one id (the per-request path: plain Python over the row) against the batch -------------------------

PROPENSITY_CASES = [{}, {"include_propensities": True, "propensity_method": F},
                    {"include_propensities": True, "propensity_l2": 1.0}]  # pair models: test_catalog_pairs.py


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("options", PROPENSITY_CASES, ids=["members", "factorized", "logistic"])
def test_single_id_equals_its_batch_entry(snap, truth, privacy_k, options):
    """Every row of PetNord (text ids) and ids that are not keys: the single-id Assign (row_for_id, the scalar
    programs, the one-row propensities and ranking) answers as the batch does for that id."""
    u = snap.universe(U)
    known = list(u.ids_for_rows(np.arange(u.n_rows)))
    width = u.row_ids.dtype.itemsize
    unknown = ["NOPE", "", known[0] + "\0", known[0][:-1], known[0] + "0", "x" * (width + 1), 5, None]
    batch, single = assert_single_ids_equal_batch(snap, U, known + unknown, privacy_k, options)
    assert [a.found for a in single] == [True] * len(known) + [False] * len(unknown)
    for row, a in enumerate(single[: len(known)]):
        assert {m.segment for m in a.segments if m.member} <= {n for n in CATALOG if truth[n][row]}
    if privacy_k == 0:
        for row, a in enumerate(single[: len(known)]):
            assert {m.segment for m in a.segments if m.member} == {n for n in CATALOG if truth[n][row]}


def test_scalar_programs_read_missing_numbers_as_outside_every_range(shop):
    """Range segments (and their negations) over rows without a raw value: never within, as range_mask."""
    u = shop.universe("customers")
    cat = compiled_catalog(shop, u)
    missing = np.flatnonzero(np.isnan(np.asarray(u.field("spend").numeric, dtype=np.float64)))
    assert len(missing) > 10
    by_name = {sg.name: sg for sg in cat.segments}
    for r in missing.tolist():
        present, numeric = set(u.row_features(r).tolist()), cat.numeric_of_row(r)
        assert math.isnan(numeric["spend"])
        assert not by_name["big_spenders"].scalar(present, numeric) and not by_name["mid_spend"].scalar(present, numeric)
        assert by_name["not_big"].scalar(present, numeric)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_scalar_programs_equal_bitset_evaluation(snap, where_strategy, data):
    """A random condition (terms, value lists, ranges with missing values, $not / $or / nested $and, and catalog
    segment references) compiled to a scalar program: per row, what the whole-universe bitset says."""
    u = snap.universe(U)
    where = data.draw(where_strategy(U))
    ref = data.draw(st.sampled_from([None] + sorted(CATALOG)))
    if ref is not None:
        where = data.draw(st.sampled_from([{"$and": [where, {"$segment": ref}]}, {"$or": [where, {"$segment": ref}]},
                                           {"$not": {"$segment": ref}, "$or": [where]}]))
    cond = parse_where(where)
    try:
        bits = evaluate(snap, u, cond)
    except QueryError as e:
        with pytest.raises(type(e)):
            Evaluator(snap, u, _ScalarOps()).evaluate(cond)
        return
    want = np.unpackbits(bits.view(np.uint8), bitorder="little")[: u.n_rows].astype(bool)
    program = Evaluator(snap, u, _ScalarOps()).evaluate(cond)
    numeric_cols = {f: np.asarray(info.numeric, dtype=np.float64) for f, info in u.fields.items()
                    if info.numeric is not None}
    rows = data.draw(st.lists(st.integers(0, u.n_rows - 1), min_size=1, max_size=60))
    for r in rows:
        got = program(set(u.row_features(r).tolist()), {f: float(c[r]) for f, c in numeric_cols.items()})
        assert got == bool(want[r]), (where, r)


SHOP_CATALOG = {
    "north": {"where": {"region": "north"}, "priority": 2},
    "north_or_east": {"where": {"region": ["north", "east"]}},
    "big_spenders": {"where": {"spend": {"$gte": 80}}, "priority": 3},
    "mid_spend": {"where": {"spend": {"$gt": 20, "$lte": 80}}},
    "not_big": {"where": {"$not": {"$segment": "big_spenders"}}},
    "pro_or_old": {"where": {"$or": [{"plan": "pro"}, {"age": {"$gte": 60}}]}, "priority": 2},
    "north_pro_long": {"where": {"$and": [{"$segment": "north"}, {"$and": [{"plan": "pro"},
                                                                         {"tenure": {"$gte": 30}}]}]}},
    "tenure_12": {"where": {"tenure": 12}},
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small shop with integer customer ids and missing spend values, with SHOP_CATALOG applied."""
    import pandas as pd

    from segsrv.snapshot.builder import build_snapshot

    d = tmp_path_factory.mktemp("int_ids")
    spec = write_small_shop(d / "data", 400, seed=5)
    df = pd.read_csv(d / "data" / "customers.csv")
    df.loc[df.index % 7 == 3, "spend"] = np.nan
    df.to_csv(d / "data" / "customers.csv", index=False)
    root = d / "root"
    build_snapshot(spec, root, progress=quiet)
    apply_segments(root / "shop", {k: dict(v, universe="customers") for k, v in SHOP_CATALOG.items()},
                   fit_propensities=False)
    return open_snapshot(root / "shop")


@pytest.mark.parametrize("privacy_k", [0, 10])
@pytest.mark.parametrize("options", PROPENSITY_CASES, ids=["members", "factorized", "logistic"])
def test_single_int_id_equals_its_batch_entry(shop, privacy_k, options):
    """Integer ids: every row, and ids given as text, floats and numpy integers, or that are no key (5.5,
    past int64, unknown)."""
    u = shop.universe("customers")
    assert u.key_kind == "int" and np.isnan(np.asarray(u.field("spend").numeric)).any()
    known = list(u.ids_for_rows(np.arange(u.n_rows)))
    others = ["5", 5.0, np.int64(7), np.uint8(9), " 11", 5.5, "5.5", 2**70, -(2**63), -1, 10**6, "x", "", None]
    batch, single = assert_single_ids_equal_batch(shop, "customers", known + others, privacy_k, options)
    assert all(a.found for a in single[: len(known)])
    assert [a.found for a in single[len(known):]] == [True, True, True, True, True] + [False] * 9
