"""Predict within a segment, and ScoreSegment (batch scoring). See docs/predict.md.

A target field T splits the counted rows into classes:

* single-valued T (categorical or numeric bands, own or forward semantics): one
  class per value; S is restricted to rows that have a value of T and the
  probabilities of the values sum to 1;
* multi-valued T (``multi`` columns, or "exists" semantics through a reverse
  link): every value t is its own binary question with classes [t, not t];
  probabilities are P(row has t) and are not normalised across values.

The model of one question, over classes c (all counts exact, within
S = segment AND train_mask [AND has a value of T]), prior strength a > 0:

    P0(c)        = (n_{U,c} + 1) / (n_U + K)                  population prior (train rows)
    base(c)      = (n_{S,c} + a P0(c)) / (n_S + a)            base probability in S
    conjunction  : evidence in decreasing mutual information with T within S joins
                   S' = S AND e1 AND e2 ... while |S' AND e| >= min_support
    P(c | S')    = (n_{S',c} + a base(c)) / (n_{S'} + a);  factor = P(c|S') / base(c)
    lift_e(c)    = ((n_{X,e,c} + a q) / (n_{X,c} + a)) / q,  q = n_{X,e} / n_X
                   for each backed-off e, X = S' (or S when no row of S' has e);
                   skipped (factor 1) when e is unseen in S or |phi(e, e_prev)| >=
                   max_correlation within S for an already-used lift e_prev
    u(c)         = base(c) * conjunction factor * prod lift_e(c)
    P(c)         = u(c) / sum_c u(c)

``method="logistic"`` fits an L2-regularised logistic regression (scikit-learn's objective with
C = 1 / l2) on the one-hot evidence features of the rows of S and explains it in the same product
form (base, an intercept factor, one exp(weight) factor per evidence, the normaliser); it is the
default of ScoreSegment and Evaluate (cached per S).

``method="factorized"`` is the naive-Bayes floor: no conjunction and no
correlation pruning, every evidence's lift within S. It is the model that
ScoreSegment and Evaluate apply in bulk: per-class log-lift weights for all
features at once and one CSR row-score pass per class.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .. import _kernels
from . import cancel
from ..errors import LimitExceededError, QueryError, UnknownFieldError, UnknownIdError
from ..snapshot.reader import FieldInfo, Snapshot, Universe
from ..snapshot.spec import suggest
from .conditions import All, Condition, evaluate, feature_bits, tail_mask
from .relate import count_features, select_fields

METHODS = ("conjunction", "factorized", "logistic")
DEFAULT_PRIOR_STRENGTH = 1.0
DEFAULT_L2 = 1.0  # L2 penalty of the logistic method (scikit-learn's C = 1 / l2)
DEFAULT_BULK_METHOD = "logistic"  # ScoreSegment and Evaluate
DEFAULT_MIN_SUPPORT = 30
DEFAULT_MAX_CORRELATION = 0.9
DEFAULT_MIN_SUPPORT_FRACTION = 0.005
DEFAULT_MAX_P_VALUE = 0.001
DEFAULT_MAX_TARGET_VALUES = 64


# ----------------------------------------------------------------------------
# requests and results
# ----------------------------------------------------------------------------


@dataclass
class PredictQuery:
    target: str
    universe: str | None = None
    segment: Condition = field(default_factory=All)
    row_id: object = None
    evidence: list[tuple[str, str]] = field(default_factory=list)
    evidence_fields: list[str] | None = None
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    min_support: int = DEFAULT_MIN_SUPPORT
    min_support_fraction: float = DEFAULT_MIN_SUPPORT_FRACTION
    max_p_value: float = DEFAULT_MAX_P_VALUE
    max_correlation: float = DEFAULT_MAX_CORRELATION
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    method: str = "conjunction"
    train_mask: np.ndarray | None = None
    l2: float = DEFAULT_L2


@dataclass
class Factor:
    evidence: list[tuple[str, str]]
    factor: float
    support: int
    kind: str  # "conjunction" | "lift"
    note: str = ""


@dataclass
class ValueProbability:
    value: str
    probability: float
    base_probability: float
    factors: list[Factor]
    normalizer: float


@dataclass
class PredictResult:
    snapshot: str
    version: str
    universe: str
    target: str
    multi_valued: bool
    method: str
    n_segment: int
    evidence: list[tuple[str, str]]
    probabilities: list[ValueProbability]
    elapsed_ms: float


@dataclass
class ScoreQuery:
    target: str
    value: str
    universe: str | None = None
    segment: Condition = field(default_factory=All)
    top_k: int = 0
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    evidence_fields: list[str] | None = None
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    train_mask: np.ndarray | None = None
    method: str = DEFAULT_BULK_METHOD  # "logistic" or "factorized"
    l2: float = DEFAULT_L2


@dataclass
class ScoreResult:
    snapshot: str
    version: str
    universe: str
    target: str
    value: str
    rows: np.ndarray  # int64 row numbers (top_k: best first; else every member in row order)
    scores: np.ndarray  # float64 probability of `value`
    n_members: int
    mean_score: float  # over every member (not only the top K)
    elapsed_ms: float
    _universe: Universe | None = field(default=None, repr=False)

    @property
    def ids(self) -> list:
        return self._universe.ids_for_rows(self.rows) if self._universe is not None else []


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------


def _bad(name: str, msg: str):
    raise QueryError(f"{name}: {msg}", [(name, msg)])


def _check_common(q) -> None:
    a = q.prior_strength
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) or a <= 0:
        _bad("prior_strength", f"must be a finite number > 0, got {a!r}")
    m = q.max_target_values
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        _bad("max_target_values", f"must be an integer >= 2, got {m!r}")
    if q.evidence_fields is not None and (
        not isinstance(q.evidence_fields, (list, tuple)) or not all(isinstance(f, str) for f in q.evidence_fields)
    ):
        _bad("evidence_fields", "expected a list of field names or globs")
    l2 = getattr(q, "l2", DEFAULT_L2)
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not math.isfinite(l2) or l2 <= 0:
        _bad("l2", f"must be a finite number > 0, got {l2!r}")


def check_conjunction_params(q) -> None:
    f = q.min_support_fraction
    if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f <= 1:
        _bad("min_support_fraction", f"must be a number within [0, 1], got {f!r}")
    p = q.max_p_value
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        _bad("max_p_value", f"must be a number within (0, 1], got {p!r}")


def _check_predict(q: PredictQuery) -> None:
    _check_common(q)
    if q.method not in METHODS:
        _bad("method", f"must be one of {list(METHODS)}, got {q.method!r}")
    ms = q.min_support
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 1:
        _bad("min_support", f"must be an integer >= 1, got {ms!r}")
    mc = q.max_correlation
    if isinstance(mc, bool) or not isinstance(mc, numbers.Real) or not 0 < mc <= 1:
        _bad("max_correlation", f"must be a number within (0, 1], got {mc!r}")
    check_conjunction_params(q)
    if not isinstance(q.evidence, (list, tuple)):
        _bad("evidence", "expected a list of (field, value) pairs")
    for item in q.evidence:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            _bad("evidence", f"expected (field, value) pairs, got {item!r}")


# ----------------------------------------------------------------------------
# the target and the counted rows
# ----------------------------------------------------------------------------


def is_multi_valued(info: FieldInfo) -> bool:
    return info.kind == "multi" or info.semantics == "exists"


@dataclass
class _Target:
    """A resolved target field and the counted rows S."""

    universe: Universe
    info: FieldInfo
    multi: bool
    value_bits: list[np.ndarray]  # one bitset per value over the whole universe
    has_target: np.ndarray  # bitset: rows with any value of T
    segment: np.ndarray  # bitset of the segment (every member)
    train: np.ndarray  # bitset of the rows allowed in counts
    S: np.ndarray  # segment AND train [AND has_target when single-valued]
    n_S: int
    n_U: int  # training rows [with a target value]
    n_U_value: np.ndarray  # training rows with each value


def resolve_target(snapshot: Snapshot, universe_name, target: str, segment: Condition, train_mask,
                   max_target_values: int) -> _Target:
    u = snapshot.universe(universe_name)
    if not isinstance(target, str) or not target:
        _bad("target", f"expected a field name, got {target!r}")
    if target not in u.fields:
        raise UnknownFieldError(
            f"target: universe {u.name!r} has no field {target!r}{suggest(target, u.fields)}",
            [("target", f"unknown field {target!r}")],
        )
    info = u.fields[target]
    if len(info.values) > max_target_values:
        raise LimitExceededError(
            f"target {target!r} has {len(info.values)} values, more than the limit max_target_values="
            f"{max_target_values}; predict a field with fewer values (or raise the limit)",
            [("target", f"{len(info.values)} values > max_target_values={max_target_values}")],
        )
    if len(info.values) == 0:
        _bad("target", f"field {target!r} has no values in universe {u.name!r}")
    multi = is_multi_valued(info)
    value_bits = [feature_bits(u, int(fid)) for fid in info.feature_ids]
    has_target = np.zeros(u.n_words, dtype=np.uint64)
    for b in value_bits:
        _kernels.bitset_or(has_target, b, has_target)
    seg = evaluate(snapshot, u, segment if segment is not None else All())
    if train_mask is None:
        train = tail_mask(u.n_rows, u.n_words)
    else:
        train = np.asarray(train_mask)
        if train.dtype != np.uint64 or train.shape != (u.n_words,):
            _bad("train_mask", f"expected a uint64 bitset of {u.n_words} words, got {train.dtype} {train.shape}")
        train = np.ascontiguousarray(train)
    S = _kernels.bitset_and(seg, train)
    pop = train.copy()
    if not multi:
        _kernels.bitset_and(S, has_target, S)
        _kernels.bitset_and(pop, has_target, pop)
    n_U_value = np.array([_kernels.popcount(_kernels.bitset_and(pop, b)) for b in value_bits], dtype=np.int64)
    return _Target(u, info, multi, value_bits, has_target, seg, train, S, int(_kernels.popcount(S)),
                   int(_kernels.popcount(pop)), n_U_value)


def _questions(t: _Target) -> list[tuple[list[np.ndarray], np.ndarray, list[int]]]:
    """(class bitsets over the universe, prior P0 per class, value index per class) per question."""
    K = len(t.info.values)
    if not t.multi:
        p0 = (t.n_U_value + 1.0) / (t.n_U + K)
        return [(t.value_bits, p0, list(range(K)))]
    full = tail_mask(t.universe.n_rows, t.universe.n_words)
    out = []
    for i, b in enumerate(t.value_bits):
        n1 = float(t.n_U_value[i])
        p0 = np.array([(n1 + 1.0) / (t.n_U + 2), (t.n_U - n1 + 1.0) / (t.n_U + 2)])
        out.append(([b, _kernels.bitset_andnot(full, b)], p0, [i]))
    return out


def evidence_feature_mask(t: _Target, evidence_fields: list[str] | None) -> np.ndarray:
    """bool[n_features]: the features that count as evidence when taken from a row.

    None: every field except the target and except fields having a feature identical (as a row
    set over the whole universe) to a target value (a copy of the target would leak it)."""
    u = t.universe
    mask = np.zeros(u.n_features, dtype=bool)
    if evidence_fields is not None:
        fields = select_fields(u, list(evidence_fields), {t.info.name})
        for f in fields:
            if f == t.info.name:
                continue
            info = u.fields[f]
            mask[info.feature_offset: info.feature_offset + len(info.values)] = True
        return mask
    tcounts = np.asarray(u.feature_count[t.info.feature_ids], dtype=np.int64)
    counts = np.asarray(u.feature_count, dtype=np.int64)
    mask[:] = True
    mask[t.info.feature_offset: t.info.feature_offset + len(t.info.values)] = False
    # only a feature with as many rows as a target value can be a copy of it
    for fid in np.flatnonzero(np.isin(counts, tcounts[tcounts > 0]) & mask).tolist():
        fb = feature_bits(u, fid)
        for j in np.flatnonzero(tcounts == counts[fid]).tolist():
            if int(_kernels.popcount(_kernels.bitset_and(fb, t.value_bits[j]))) == counts[fid]:
                info = u.fields[u.field_names[u.feature_field[fid]]]
                mask[info.feature_offset: info.feature_offset + len(info.values)] = False
                break
    return mask


def resolve_row(u: Universe, row_id) -> int:
    row = int(u.rows_for_ids([row_id])[0])
    if row < 0:
        raise UnknownIdError(
            f"row_id: universe {u.name!r} has no row with {u.key} {row_id!r}",
            [("row_id", f"unknown id {row_id!r}")],
        )
    return row


def row_features(u: Universe, row: int) -> np.ndarray:
    return np.asarray(u.csr_indices[int(u.csr_indptr[row]): int(u.csr_indptr[row + 1])], dtype=np.int64)


def _evidence_fids(t: _Target, q: PredictQuery) -> np.ndarray:
    u = t.universe
    explicit: list[int] = []
    explicit_fields: set[str] = set()
    for i, (fname, value) in enumerate(q.evidence):
        fname, value = str(fname), str(value)
        if fname == t.info.name:
            raise QueryError(
                f"evidence[{i}]: {fname}={value} is on the target field {t.info.name!r}; evidence must not "
                f"mention the target",
                [(f"evidence[{i}]", f"target field {t.info.name!r}")],
            )
        explicit.append(u.feature_id(fname, value))  # UnknownFieldError / UnknownValueError
        explicit_fields.add(fname)
    fids: list[int] = []
    if q.row_id is not None:
        row = resolve_row(u, q.row_id)
        mask = evidence_feature_mask(t, q.evidence_fields)
        for fid in row_features(u, row).tolist():
            if mask[fid] and u.field_names[u.feature_field[fid]] not in explicit_fields:
                fids.append(fid)
    elif q.evidence_fields is not None:
        evidence_feature_mask(t, q.evidence_fields)  # validates the names
    fids.extend(explicit)
    return np.array(sorted(set(fids)), dtype=np.int64)


# ----------------------------------------------------------------------------
# the model of one question
# ----------------------------------------------------------------------------


def _counts(u: Universe, ctx_classes: list[np.ndarray], n_ctx_c: np.ndarray, fids: np.ndarray) -> np.ndarray:
    """[K, m] rows of each class (already ANDed with the context) having each feature."""
    out = np.zeros((len(ctx_classes), len(fids)), dtype=np.int64)
    if len(fids) == 0:
        return out
    for c, bits in enumerate(ctx_classes):
        if n_ctx_c[c] > 0:
            out[c], _ = count_features(u, bits, int(n_ctx_c[c]), fids)
    return out


def _mutual_information(N: np.ndarray, n_c: np.ndarray, n: int) -> np.ndarray:
    """MI (bits) between a feature's presence and the class, per feature, from [K, m] counts."""
    if n == 0 or N.shape[1] == 0:
        return np.zeros(N.shape[1])
    n_e = N.sum(axis=0).astype(np.float64)
    mi = np.zeros(N.shape[1])
    for present in (True, False):
        cell = N.astype(np.float64) if present else (n_c[:, None] - N).astype(np.float64)
        marg = n_e if present else n - n_e
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(cell > 0, (cell / n) * np.log2(cell * n / (n_c[:, None] * marg[None, :])), 0.0)
        mi += term.sum(axis=0)
    return mi


def _lift(n_xec: np.ndarray, n_xc: np.ndarray, n_xe: int, n_x: int, a: float) -> np.ndarray:
    q = n_xe / n_x
    return ((n_xec + a * q) / (n_xc + a)) / q


def effective_min_support(q, n_S: int) -> int:
    """Rows a conjunction must keep: min_support, or min_support_fraction of |S| when larger."""
    return max(int(q.min_support), math.ceil(float(q.min_support_fraction) * n_S))


def _g_test_p(N: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    """p-value of the G-test of independence of "has e" and the class, per feature, from [K, m] counts."""
    from scipy.stats import chi2

    K, m = N.shape
    n = float(n_c.sum())
    if m == 0 or n == 0:
        return np.ones(m)
    n_e = N.sum(axis=0).astype(np.float64)
    g = np.zeros(m)
    for cell, marg in ((N.astype(np.float64), n_e), ((n_c[:, None] - N).astype(np.float64), n - n_e)):
        expected = n_c[:, None].astype(np.float64) * marg[None, :] / n
        with np.errstate(divide="ignore", invalid="ignore"):
            g += np.where(cell > 0, 2.0 * cell * np.log(cell / expected), 0.0).sum(axis=0)
    df = max(int(np.count_nonzero(n_c)) - 1, 1)
    return chi2.sf(np.maximum(g, 0.0), df)


def _question(u: Universe, S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
              fids: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...], u[K]) for one question."""
    a = float(q.prior_strength)
    K = len(classes)
    names = [u.feature_name(int(f)) for f in fids]
    SC = [_kernels.bitset_and(S, c) for c in classes]
    n_Sc = np.array([_kernels.popcount(b) for b in SC], dtype=np.int64)
    base = (n_Sc + a * p0) / (n_S + a)
    N = _counts(u, SC, n_Sc, fids)
    n_Se = N.sum(axis=0)
    factors: list[list[Factor]] = [[] for _ in range(K)]

    def add_lift(i, f_c, support, note=""):
        for c in range(K):
            factors[c].append(Factor([names[i]], float(f_c[c]), int(support), "lift", note))

    if q.method == "factorized":
        for i in range(len(fids)):
            if n_Se[i] == 0:
                add_lift(i, np.ones(K), 0, "not observed in the segment")
            else:
                add_lift(i, _lift(N[:, i], n_Sc, int(n_Se[i]), n_S, a), n_Se[i])
        return base, factors

    # conjunction: greedy exact conditioning in decreasing mutual information
    mi = _mutual_information(N, n_Sc, n_S)
    order = np.lexsort((fids, -mi)) if len(fids) else np.zeros(0, np.int64)
    bits = {int(i): feature_bits(u, int(fids[i])) for i in order}  # read-only views of dense rows
    Sp = S.copy()
    n_Sp = n_S
    conj: list[int] = []
    backed: list[int] = []
    tmp = np.empty_like(S)
    min_support = effective_min_support(q, n_S)
    for i in order.tolist():
        _kernels.bitset_and(Sp, bits[i], tmp)
        k = int(_kernels.popcount(tmp))
        if k >= min_support:
            Sp, tmp = tmp, Sp
            n_Sp = k
            conj.append(i)
        else:
            backed.append(i)
    if conj:
        SpC = [_kernels.bitset_and(Sp, c) for c in classes]
        n_Spc = np.array([_kernels.popcount(b) for b in SpC], dtype=np.int64)
        p_conj = (n_Spc + a * base) / (n_Sp + a)
        f = p_conj / base
        for c in range(K):
            factors[c].append(Factor([names[i] for i in conj], float(f[c]), n_Sp, "conjunction"))
        fb = fids[backed]
        Np = _counts(u, SpC, n_Spc, fb)
    else:
        n_Spc = n_Sc
        Np = N[:, backed]
    n_Spe = Np.sum(axis=0)
    p_Sp = _g_test_p(Np, n_Spc)
    p_S = _g_test_p(N, n_Sc)
    used: list[int] = []
    for j, i in enumerate(backed):
        if n_Se[i] == 0:
            add_lift(i, np.ones(K), 0, "not observed in the segment")
            continue
        in_ctx = n_Spe[j] > 0
        p_val = float(p_Sp[j] if in_ctx else p_S[i])
        if p_val > q.max_p_value:
            add_lift(i, np.ones(K), int(n_Spe[j] if in_ctx else n_Se[i]),
                     f"not significant {'within the conjunction' if conj and in_ctx else 'within the segment'} "
                     f"(p={p_val:.3g} > max_p_value={q.max_p_value:g})")
            continue
        redundant = None
        if used:  # rows of S with e and each used lift evidence: one counting pass
            n12, _ = count_features(u, _kernels.bitset_and(S, bits[i]), int(n_Se[i]), fids[used])
            n1, n2 = float(n_Se[i]), n_Se[used].astype(np.float64)
            den = n1 * (n_S - n1) * n2 * (n_S - n2)
            with np.errstate(divide="ignore", invalid="ignore"):
                phis = np.where(den > 0, (n12 * float(n_S) - n1 * n2) / np.sqrt(np.where(den > 0, den, 1.0)), 0.0)
            hit = np.flatnonzero(np.abs(phis) >= q.max_correlation)
            if len(hit):
                redundant = (used[int(hit[0])], float(phis[hit[0]]))
        if redundant is not None:
            f2, v2 = names[redundant[0]]
            add_lift(i, np.ones(K), int(n_Se[i]), f"redundant with {f2}={v2} (phi={redundant[1]:.3f} in the segment)")
            continue
        if n_Spe[j] > 0:
            add_lift(i, _lift(Np[:, j], n_Spc, int(n_Spe[j]), n_Sp, a), n_Spe[j],
                     "within the conjunction" if conj else "")
        else:
            add_lift(i, _lift(N[:, i], n_Sc, int(n_Se[i]), n_S, a), n_Se[i],
                     "within the segment (no row of the conjunction has it)")
        used.append(i)
    return base, factors


def _combine(base: np.ndarray, factors: list[list[Factor]]):
    """-> (probabilities, normalizer): u_c = base_c * prod factors_c, P = u / sum u."""
    K = len(base)
    u = np.empty(K)
    for c in range(K):
        x = float(base[c])
        for f in factors[c]:
            x *= f.factor
        u[c] = x
    norm = float(sum(u.tolist()))
    if not math.isfinite(norm) or norm <= 0:  # over/underflow: fall back to logs
        logs = np.array([math.log(base[c]) + sum(math.log(f.factor) for f in factors[c]) for c in range(K)])
        m = logs.max()
        p = np.exp(logs - m)
        p /= p.sum()
        return p, math.exp(math.log(sum(np.exp(logs - m))) + m) if m < 700 else math.inf
    return u / norm, norm


def predict(snapshot: Snapshot, query: PredictQuery) -> PredictResult:
    t0 = time.perf_counter()
    _check_predict(query)
    t = resolve_target(snapshot, query.universe, query.target, query.segment, query.train_mask,
                       query.max_target_values)
    u = t.universe
    fids = _evidence_fids(t, query)
    out: list[ValueProbability] = []
    ev_mask = evidence_feature_mask(t, query.evidence_fields) if query.method == "logistic" else None
    for qi, (classes, p0, vidx) in enumerate(_questions(t)):
        if query.method == "logistic":
            base, factors = _logistic_question(t, qi, classes, p0, fids, ev_mask, query)
        else:
            base, factors = _question(u, t.S, t.n_S, classes, p0, fids, query)
        probs, norm = _combine(base, factors)
        for c, vi in enumerate(vidx):
            out.append(ValueProbability(t.info.values[vi], float(probs[c]), float(base[c]), factors[c], norm))
    order = sorted(range(len(out)), key=lambda j: (-out[j].probability, j))
    return PredictResult(
        snapshot=snapshot.name,
        version=snapshot.version,
        universe=u.name,
        target=t.info.name,
        multi_valued=t.multi,
        method=query.method,
        n_segment=t.n_S,
        evidence=[u.feature_name(int(f)) for f in fids],
        probabilities=[out[j] for j in order],
        elapsed_ms=(time.perf_counter() - t0) * 1e3,
    )


# ----------------------------------------------------------------------------
# the logistic method: L2-regularised logistic regression within S
# ----------------------------------------------------------------------------

_LOGISTIC_CACHE: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
_LOGISTIC_CACHE_SIZE = 16
_LOGISTIC_LOCK = threading.Lock()  # the server calls the engine from several threads
LOGISTIC_MAX_ITER = 1000
LOGISTIC_GTOL_SMALL = 1e-7
LOGISTIC_GTOL_LARGE = 1e-4
LOGISTIC_SMALL_NNZ = 2_000_000


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return h.hexdigest()


def design_matrix(u: Universe, rows: np.ndarray, col_of: np.ndarray, n_cols: int):
    """scipy CSR [len(rows), n_cols] of the rows' features mapped by col_of (feature -> column, -1 = drop)."""
    from scipy.sparse import csr_matrix

    rows = np.asarray(rows, dtype=np.int64)
    indptr = np.asarray(u.csr_indptr)
    starts = indptr[rows].astype(np.int64)
    lens = indptr[rows + 1].astype(np.int64) - starts
    total = int(lens.sum())
    offs = np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    cols = col_of[np.asarray(u.csr_indices)[offs]]
    keep = cols >= 0
    kept_per_row = np.bincount(np.repeat(np.arange(len(rows)), lens)[keep], minlength=len(rows))
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(kept_per_row, out=new_ptr[1:])
    idx = cols[keep].astype(np.int32)
    return csr_matrix((np.ones(len(idx)), idx, new_ptr), shape=(len(rows), n_cols))


def fit_logistic(X, y: np.ndarray, K: int, l2: float, max_iter: int = LOGISTIC_MAX_ITER):
    """Minimise sum_i -ln P(y_i | x_i) + l2/2 ||W||^2 (intercepts unpenalised) by L-BFGS.

    K == 2: one weight vector w for class 1 against class 0 (logit b + x.w); K > 2: multinomial
    (softmax over K weight vectors). -> (intercepts, weights) with shapes (1,), (1, F) or (K,), (K, F)."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    n, F = X.shape
    XT = X.T.tocsr()
    # stopping: projected gradient of the mean objective <= gtol (tight on small problems; scikit-learn's
    # default tol 1e-4 on large ones, where every iteration is a pass over millions of non-zeros)
    gtol = LOGISTIC_GTOL_SMALL if X.nnz <= LOGISTIC_SMALL_NNZ else LOGISTIC_GTOL_LARGE
    scale = 1.0 / max(n, 1)  # the mean loss: same minimiser, better conditioned for L-BFGS
    if K == 2:
        yb = (y == 1).astype(np.float64)
        rate = (yb.sum() + 0.5) / (n + 1.0)

        def fg(theta):
            cancel.check()  # one pass over the rows per evaluation: stop when the caller is gone
            w, b = theta[:F], theta[F]
            z = X @ w + b
            loss = np.logaddexp(0.0, z).sum() - float(z @ yb) + 0.5 * l2 * float(w @ w)
            r = expit(z) - yb
            g = np.empty(F + 1)
            g[:F] = XT @ r + l2 * w
            g[F] = r.sum()
            return loss * scale, g * scale

        theta0 = np.zeros(F + 1)
        theta0[F] = math.log(rate / (1.0 - rate))
        res = minimize(fg, theta0, jac=True, method="L-BFGS-B",
                       options=dict(maxiter=max_iter, ftol=1e-12, gtol=gtol, maxcor=20))
        return res.x[F:F + 1].copy(), res.x[None, :F].copy()
    Y = np.zeros((n, K))
    Y[np.arange(n), y] = 1.0
    counts = Y.sum(axis=0)

    def fg(theta):
        cancel.check()
        W = theta[: K * F].reshape(K, F)
        b = theta[K * F:]
        Z = (X @ W.T) + b[None, :]
        lse = logsumexp(Z, axis=1)
        loss = float(lse.sum() - (Z * Y).sum()) + 0.5 * l2 * float((W * W).sum())
        R = np.exp(Z - lse[:, None]) - Y
        g = np.empty_like(theta)
        g[: K * F] = ((XT @ R).T + l2 * W).ravel()
        g[K * F:] = R.sum(axis=0)
        return loss * scale, g * scale

    theta0 = np.zeros(K * F + K)
    lb = np.log((counts + 0.5) / (n + 0.5 * K))
    theta0[K * F:] = lb - lb.mean()
    res = minimize(fg, theta0, jac=True, method="L-BFGS-B",
                   options=dict(maxiter=max_iter, ftol=1e-12, gtol=gtol, maxcor=20))
    return res.x[K * F:].copy(), res.x[: K * F].reshape(K, F).copy()


def logistic_weights(t: _Target, classes: list[np.ndarray], ev_mask: np.ndarray, l2: float,
                     question: int, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept logits[K], W[K, n_features]) of the logistic model within S: a row's class logit is
    intercept[c] + sum of W[c, f] over its evidence features, P = softmax. Binary questions split the
    fitted logit symmetrically (class 1 gets +(b + x.w)/2, class 0 the negative), so each class's
    factors explain it. When S holds fewer than two classes there is nothing to fit: the intercepts are
    log base(c) and every weight 0. Fitted once per (universe, target, S, evidence features, l2), cached."""
    u = t.universe
    K = len(classes)
    # the universe's directory names its immutable version (id(u) alone can be reused after a reload)
    key = (id(u), str(getattr(u, "dir", "")), u.name, u.n_rows, u.n_features, t.info.name, question, K, _digest(t.S, ev_mask, base),
           float(l2))
    with _LOGISTIC_LOCK:
        hit = _LOGISTIC_CACHE.get(key)
        if hit is not None:
            _LOGISTIC_CACHE.move_to_end(key)
            return hit
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    col_of = np.full(u.n_features, -1, dtype=np.int64)
    col_of[fids] = np.arange(len(fids))
    rows = _kernels.bitset_to_ids(t.S, u.n_rows).astype(np.int64)
    y = np.full(len(rows), -1, dtype=np.int64)
    for c, bits in enumerate(classes):
        member = _kernels.bitset_and(t.S, bits)
        ids = _kernels.bitset_to_ids(member, u.n_rows).astype(np.int64)
        y[np.searchsorted(rows, ids)] = c
    W = np.zeros((K, u.n_features))
    intercept = np.log(np.asarray(base, dtype=np.float64))
    present = np.unique(y[y >= 0]) if len(rows) else np.zeros(0, np.int64)
    if len(present) >= 2:  # fit over the classes present in S (as scikit-learn does)
        X = design_matrix(u, rows, col_of, len(fids))
        yp = np.searchsorted(present, y)
        b, w = fit_logistic(X, yp, len(present), float(l2))
        if len(present) == 2:
            c0, c1 = int(present[0]), int(present[1])
            intercept[c0], intercept[c1] = -b[0] / 2.0, b[0] / 2.0
            W[c0, fids] = -w[0] / 2.0
            W[c1, fids] = w[0] / 2.0
        else:
            intercept[present] = b
            W[np.ix_(present, fids)] = w
        absent = np.setdiff1d(np.arange(K), present)
        if len(absent):  # constant logit: a row without evidence gets about its smoothed base
            bp = np.asarray(base, dtype=np.float64)
            lse = float(np.log(np.exp(intercept[present] - intercept[present].max()).sum()) + intercept[present].max())
            intercept[absent] = np.log(bp[absent] / max(1.0 - bp[absent].sum(), 1e-300)) + lse
    out = (intercept, W)
    with _LOGISTIC_LOCK:
        _LOGISTIC_CACHE[key] = out
        while len(_LOGISTIC_CACHE) > _LOGISTIC_CACHE_SIZE:
            _LOGISTIC_CACHE.popitem(last=False)
    return out


def _logistic_question(t: _Target, qi: int, classes: list[np.ndarray], p0: np.ndarray, fids: np.ndarray,
                       ev_mask: np.ndarray, q: PredictQuery):
    """-> (base[K], factors[K][...]): base(c) as in the other methods; an "intercept" factor
    exp(intercept_c) / base(c); one factor exp(W[c, e]) per evidence (feature-id order)."""
    u = t.universe
    a = float(q.prior_strength)
    K = len(classes)
    n_Sc = np.array([_kernels.popcount(_kernels.bitset_and(t.S, c)) for c in classes], dtype=np.int64)
    base = (n_Sc + a * p0) / (t.n_S + a)
    intercept, W = logistic_weights(t, classes, ev_mask, float(q.l2), qi, base)
    names = [u.feature_name(int(f)) for f in fids]
    n_Se = count_features(u, t.S, t.n_S, fids)[0] if len(fids) and t.n_S else np.zeros(len(fids), np.int64)
    factors: list[list[Factor]] = [[] for _ in range(K)]
    for c in range(K):
        factors[c].append(Factor([], float(math.exp(intercept[c]) / base[c]), int(t.n_S), "lift", "intercept"))
        for i, f in enumerate(fids.tolist()):
            if not ev_mask[f]:
                note = "not a feature of the model (outside the evidence fields)"
            elif n_Se[i] == 0:
                note = "not observed in the segment"
            else:
                note = "logistic weight"
            factors[c].append(Factor([names[i]], float(math.exp(W[c, f])), int(n_Se[i]), "lift", note))
    return base, factors


# ----------------------------------------------------------------------------
# the factorised model in bulk (ScoreSegment, Evaluate)
# ----------------------------------------------------------------------------


def factorized_weights(t: _Target, classes: list[np.ndarray], p0: np.ndarray, ev_mask: np.ndarray,
                       a: float) -> tuple[np.ndarray, np.ndarray]:
    """(log base[K], W[K, n_features]): W[c, f] = log lift_f(c) within S for evidence features seen
    in S, 0 elsewhere. Counts of every evidence feature at once (one AND-count pass per class)."""
    u = t.universe
    K = len(classes)
    SC = [_kernels.bitset_and(t.S, c) for c in classes]
    n_Sc = np.array([_kernels.popcount(b) for b in SC], dtype=np.int64)
    base = (n_Sc + a * p0) / (t.n_S + a)
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    N = _counts(u, SC, n_Sc, fids)
    n_Se = N.sum(axis=0)
    W = np.zeros((K, u.n_features), dtype=np.float64)
    seen = n_Se > 0
    if seen.any() and t.n_S > 0:
        qv = n_Se[seen] / t.n_S
        lift = ((N[:, seen] + a * qv[None, :]) / (n_Sc[:, None] + a)) / qv[None, :]
        W[:, fids[seen]] = np.log(lift)
    return np.log(base), W


def class_log_scores(u: Universe, log_base: np.ndarray, W: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[len(rows), K] log of the unnormalised class scores (CSR kernel, GIL released)."""
    r = np.ascontiguousarray(rows, dtype=np.uint32)
    # one pass over the rows scores every class: W.T is the kernel's [features, classes] matrix
    out = _kernels.csr_row_scores(u.csr_indptr, u.csr_indices, np.ascontiguousarray(W.T), r)
    out += np.asarray(log_base, dtype=np.float64)[None, :]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=1, keepdims=True)


def score_segment(snapshot: Snapshot, query: ScoreQuery) -> ScoreResult:
    t0 = time.perf_counter()
    _check_common(query)
    k = query.top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        _bad("top_k", f"must be a non-negative integer (0 = every member), got {k!r}")
    if query.method not in ("factorized", "logistic"):
        _bad("method", f"must be 'logistic' or 'factorized', got {query.method!r}")
    t = resolve_target(snapshot, query.universe, query.target, query.segment, query.train_mask,
                       query.max_target_values)
    u = t.universe
    vi = t.info.value_index(str(query.value))
    questions = _questions(t)
    if t.multi:
        classes, p0, _ = questions[vi]
        ci = 0
    else:
        classes, p0, _ = questions[0]
        ci = vi
    ev_mask = evidence_feature_mask(t, query.evidence_fields)
    if query.method == "logistic":
        a = float(query.prior_strength)
        n_Sc = np.array([_kernels.popcount(_kernels.bitset_and(t.S, c)) for c in classes], dtype=np.int64)
        log_base, W = logistic_weights(t, classes, ev_mask, float(query.l2), vi if t.multi else 0,
                                       (n_Sc + a * p0) / (t.n_S + a))
    else:
        log_base, W = factorized_weights(t, classes, p0, ev_mask, float(query.prior_strength))
    members = _kernels.bitset_to_ids(t.segment, u.n_rows)
    probs = softmax(class_log_scores(u, log_base, W, members))[:, ci] if len(members) else np.zeros(0)
    rows = members.astype(np.int64)
    mean = float(probs.mean()) if len(probs) else math.nan
    if k and k < len(rows):
        part = np.argpartition(-probs, k - 1)[:k]
        part = part[np.lexsort((rows[part], -probs[part]))]
        rows, probs = rows[part], probs[part]
    elif k:
        order = np.lexsort((rows, -probs))
        rows, probs = rows[order], probs[order]
    return ScoreResult(snapshot.name, snapshot.version, u.name, t.info.name, t.info.values[vi], rows, probs,
                       len(members), mean, (time.perf_counter() - t0) * 1e3, u)
