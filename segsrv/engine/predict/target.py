"""The target and the evidence of a prediction, and the counts and tests every model shares.

``resolve_target`` turns a target field, a segment and a training mask into the counted rows S
and one bitset per target value; ``questions`` splits the target into the questions a model
answers (one over K classes for a single-valued target, one binary question per value for a
multi-valued one). The evidence of a Predict comes from a row (``resolve_row``, its features
filtered by ``evidence_feature_mask``) and from explicit (field, value) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ... import _kernels
from ...errors import LimitExceededError, QueryError, UnknownFieldError, UnknownIdError
from ...snapshot.reader import FieldInfo, Snapshot, Universe
from ...snapshot.spec import suggest
from ..conditions import All, Condition, band_feature, evaluate, feature_bits, raw_number, tail_mask
from ..fields import select_fields
from ..relate import count_features
from ...ops.params import bad
from ...ops.predict import Factor, PredictQuery


def is_multi_valued(info: FieldInfo) -> bool:
    return info.kind == "multi" or info.semantics == "exists"


@dataclass
class Target:
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
                   max_target_values: int) -> Target:
    u = snapshot.universe(universe_name)
    if not isinstance(target, str) or not target:
        raise bad("target", f"expected a field name, got {target!r}")
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
        raise bad("target", f"field {target!r} has no values in universe {u.name!r}")
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
            raise bad("train_mask",
                          f"expected a uint64 bitset of {u.n_words} words, got {train.dtype} {train.shape}")
        train = np.ascontiguousarray(train)
    S = _kernels.bitset_and(seg, train)
    pop = train.copy()
    if not multi:
        _kernels.bitset_and(S, has_target, S)
        _kernels.bitset_and(pop, has_target, pop)
    n_U_value = np.array([_kernels.popcount(_kernels.bitset_and(pop, b)) for b in value_bits], dtype=np.int64)
    return Target(u, info, multi, value_bits, has_target, seg, train, S, int(_kernels.popcount(S)),
                  int(_kernels.popcount(pop)), n_U_value)


def questions(t: Target) -> list[tuple[list[np.ndarray], np.ndarray, list[int]]]:
    """(class bitsets over the universe, prior P0 per class, value index per class) per question."""
    priors = question_priors(t.n_U_value, t.n_U, len(t.info.values), t.multi)
    if not t.multi:
        return [(t.value_bits, *priors[0])]
    full = tail_mask(t.universe.n_rows, t.universe.n_words)
    return [([b, _kernels.bitset_andnot(full, b)], *prior) for b, prior in zip(t.value_bits, priors)]


def question_priors(n_U_value: np.ndarray, n_U: int, K: int, multi: bool) -> list[tuple[np.ndarray, list[int]]]:
    """(prior P0 per class, value index per class) per question, from the training rows' counts (the
    classes of a single-valued target are its K values; of a multi-valued one, [value, not value])."""
    if not multi:
        return [((n_U_value + 1.0) / (n_U + K), list(range(K)))]
    out = []
    for i in range(K):
        n1 = float(n_U_value[i])
        out.append((np.array([(n1 + 1.0) / (n_U + 2), (n_U - n1 + 1.0) / (n_U + 2)]), [i]))
    return out


def base_probabilities(S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
                       a: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(S AND each class, their sizes, base(c) = (n_{S,c} + a P0(c)) / (n_S + a))."""
    SC = [_kernels.bitset_and(S, c) for c in classes]
    n_Sc = np.array([_kernels.popcount(b) for b in SC], dtype=np.int64)
    return SC, n_Sc, base_from_counts(n_Sc, n_S, p0, a)


def base_from_counts(n_Sc: np.ndarray, n_S: int, p0: np.ndarray, a: float) -> np.ndarray:
    """base(c) = (n_{S,c} + a P0(c)) / (n_S + a)."""
    return (n_Sc + a * p0) / (n_S + a)


def class_of_rows(S: np.ndarray, classes: list[np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of S in row order, int64; each row's class index, -1 for a row in no class)."""
    rows = _kernels.bitset_to_ids(S, n_rows).astype(np.int64)
    y = np.full(len(rows), -1, dtype=np.int64)
    for c, bits in enumerate(classes):
        ids = _kernels.bitset_to_ids(_kernels.bitset_and(S, bits), n_rows).astype(np.int64)
        y[np.searchsorted(rows, ids)] = c
    return rows, y


# ----------------------------------------------------------------------------
# evidence
# ----------------------------------------------------------------------------


def evidence_feature_mask(t: Target, evidence_fields: list[str] | None) -> np.ndarray:
    """bool[n_features]: the features that count as evidence when taken from a row (`evidence_mask`)."""
    u = t.universe

    def both(pairs: list[tuple[int, int]]) -> list[int]:
        return [int(_kernels.popcount(_kernels.bitset_and(feature_bits(u, fid), t.value_bits[j]))) for fid, j in pairs]

    return evidence_mask(u, t.info, u.feature_count, evidence_fields, both)


def copy_candidates(u: Universe, info: FieldInfo, feature_count: np.ndarray,
                    evidence_fields: list[str] | None) -> list[tuple[int, int]]:
    """(feature, target value index) pairs that may be copies of a target value: features outside the
    target with as many rows as the value (only those can have exactly its rows); [] with evidence_fields."""
    if evidence_fields is not None:
        return []
    tcounts = np.asarray(feature_count[info.feature_ids], dtype=np.int64)
    counts = np.asarray(feature_count, dtype=np.int64)
    outside = np.ones(u.n_features, dtype=bool)
    outside[info.feature_offset: info.feature_offset + len(info.values)] = False
    return [(fid, j) for fid in np.flatnonzero(np.isin(counts, tcounts[tcounts > 0]) & outside).tolist()
            for j in np.flatnonzero(tcounts == counts[fid]).tolist()]


def evidence_mask(u: Universe, info: FieldInfo, feature_count: np.ndarray, evidence_fields: list[str] | None,
                  both) -> np.ndarray:
    """bool[n_features]: the features that count as evidence when taken from a row. `feature_count`: each
    feature's rows in the universe; `both(pairs)`: the rows having feature f and target value j, for each
    pair of `copy_candidates` (one call: over shards, one round).

    None: every field except the target and except fields having a feature identical (as a row
    set over the whole universe) to a target value (a copy of the target would leak it)."""
    mask = np.zeros(u.n_features, dtype=bool)
    if evidence_fields is not None:
        fields = select_fields(u, list(evidence_fields), {info.name})
        for f in fields:
            if f == info.name:
                continue
            finfo = u.fields[f]
            mask[finfo.feature_offset: finfo.feature_offset + len(finfo.values)] = True
        return mask
    mask[:] = True
    mask[info.feature_offset: info.feature_offset + len(info.values)] = False
    pairs = copy_candidates(u, info, feature_count, evidence_fields)
    counts = np.asarray(feature_count, dtype=np.int64)
    for (fid, _), n in zip(pairs, both(pairs) if pairs else []):
        if int(n) == counts[fid]:
            finfo = u.fields[u.field_names[u.feature_field[fid]]]
            mask[finfo.feature_offset: finfo.feature_offset + len(finfo.values)] = False
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
    """int64 feature ids of one row (Universe.row_features; kept for callers of this package)."""
    return u.row_features(row)


def evidence_fids(t: Target, q: PredictQuery) -> np.ndarray:
    """Sorted feature ids of a Predict's evidence: the row's (row_id) and the explicit pairs."""
    u = t.universe
    explicit, explicit_fields = explicit_evidence(u, t.info, q)
    if q.row_id is not None:
        row = resolve_row(u, q.row_id)
        return row_evidence(u, u.row_features(row), evidence_feature_mask(t, q.evidence_fields), explicit,
                            explicit_fields)
    if q.evidence_fields is not None:
        evidence_feature_mask(t, q.evidence_fields)  # validates the names
    return row_evidence(u, np.zeros(0, np.int64), None, explicit, explicit_fields)


def explicit_evidence(u: Universe, info: FieldInfo, q: PredictQuery) -> tuple[list[int], set[str]]:
    """(feature ids, field names) of a Predict's explicit (field, value) evidence, checked."""
    explicit: list[int] = []
    explicit_fields: set[str] = set()
    for i, (fname, value) in enumerate(q.evidence):
        fname, value = str(fname), str(value)
        if fname == info.name:
            raise QueryError(
                f"evidence[{i}]: {fname}={value} is on the target field {info.name!r}; evidence must not "
                f"mention the target",
                [(f"evidence[{i}]", f"target field {info.name!r}")],
            )
        finfo = u.field(fname)  # UnknownFieldError
        x = raw_number(finfo, value)  # a raw number on a numeric field is evidence of its band (as in Assign)
        band = band_feature(finfo, x) if x is not None else None
        explicit.append(band if band is not None else u.feature_id(fname, value))  # UnknownValueError
        explicit_fields.add(fname)
    return explicit, explicit_fields


def row_evidence(u: Universe, row_fids: np.ndarray, mask: np.ndarray | None, explicit: list[int],
                 explicit_fields: set[str]) -> np.ndarray:
    """Sorted feature ids of the evidence: a row's features (`row_fids`) within `mask`, except those of
    fields given explicitly, and the explicit ones."""
    fids = [fid for fid in np.asarray(row_fids).tolist()
            if mask[fid] and u.field_names[u.feature_field[fid]] not in explicit_fields]
    fids.extend(explicit)
    return np.array(sorted(set(fids)), dtype=np.int64)


# ----------------------------------------------------------------------------
# counts, lifts and the G-test (shared by the models)
# ----------------------------------------------------------------------------


def class_feature_counts(u: Universe, ctx_classes: list[np.ndarray], n_ctx_c: np.ndarray,
                         fids: np.ndarray) -> np.ndarray:
    """[K, m] rows of each class (already ANDed with the context) having each feature."""
    out = np.zeros((len(ctx_classes), len(fids)), dtype=np.int64)
    if len(fids) == 0:
        return out
    for c, bits in enumerate(ctx_classes):
        if n_ctx_c[c] > 0:
            out[c], _ = count_features(u, bits, int(n_ctx_c[c]), fids)
    return out


def smoothed_lift(n_xec: np.ndarray, n_xc: np.ndarray, n_xe: int, n_x: int, a: float) -> np.ndarray:
    """lift_e(c) = ((n_{X,e,c} + a q) / (n_{X,c} + a)) / q with q = n_{X,e} / n_X."""
    q = n_xe / n_x
    return ((n_xec + a * q) / (n_xc + a)) / q


def add_lift(factors: list[list[Factor]], name: tuple[str, str], f_c: np.ndarray, support, note: str = "",
             table=None, p: tuple[float, float] | None = None) -> None:
    """Append one evidence's lift factor to every class's factors. `table`: what the factor rests on, for
    the privacy floor: one (context rows, class rows, evidence rows, both) per class, or one for all.
    `p`: (p-value, log10 p-value) of the evidence's G-test in the factor's context."""
    pv, lp = (float(p[0]), float(p[1])) if p is not None else (None, None)
    for c in range(len(factors)):
        t = table[c] if isinstance(table, list) else table
        factors[c].append(Factor([name], float(f_c[c]), int(support), "lift", note, t, pv, lp))


def lift_tables(n_x: int, n_xc: np.ndarray, n_xe: int, n_xec: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The tables a lift within a context X rests on, one per class: (n_X, n_{X,c}, n_{X,e}, n_{X,e,c})."""
    return [(int(n_x), int(n_xc[c]), int(n_xe), int(n_xec[c])) for c in range(len(n_xc))]


def question_counts(u: Universe, S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
                    fids: np.ndarray, a: float):
    """What a model of one question starts from: (evidence names, n_{S,c}[K], base[K], N[K, m] rows
    of S in class c with evidence e, n_{S,e}[m], empty factors per class)."""
    names = [u.feature_name(int(f)) for f in fids]
    SC, n_Sc, base = base_probabilities(S, n_S, classes, p0, a)
    N = class_feature_counts(u, SC, n_Sc, fids)
    factors: list[list[Factor]] = [[] for _ in classes]
    return names, n_Sc, base, N, N.sum(axis=0), factors


def effective_min_support(q, n_S: int) -> int:
    """Rows a conjunction must keep: min_support, or min_support_fraction of |S| when larger."""
    return max(int(q.min_support), math.ceil(float(q.min_support_fraction) * n_S))


LOG10_TAIL_BELOW = 1e-300  # p-values below this get their log10 from the exact log tail (chi2_log10_sf)


def chi2_log10_sf(x: float, df: int) -> float:
    """log10 P(X >= x), X ~ chi-square(df), exact also where the p-value underflows a double: scipy's
    sf above LOG10_TAIL_BELOW, else the continued fraction of the regularised upper incomplete gamma
    Q(df/2, x/2) evaluated in log space (Numerical Recipes' gcf, modified Lentz; converges fast for
    x/2 > df/2 + 1, which such tails always are)."""
    from scipy.special import gammaln
    from scipy.stats import chi2

    p = float(chi2.sf(x, df))
    if p >= LOG10_TAIL_BELOW or not math.isfinite(x):
        return math.log10(p) if p > 0 else -math.inf
    a, z = df / 2.0, x / 2.0
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return (-z + a * math.log(z) - float(gammaln(a)) + math.log(h)) / math.log(10.0)


def g_test(N: np.ndarray, n_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, log10 p) of the G-test of independence of "has e" and the class, per feature, from [K, m]
    counts; log10 p is exact also below LOG10_TAIL_BELOW, where p itself underflows towards 0."""
    from scipy.stats import chi2

    g, df = _g_statistics(N, n_c)
    p = chi2.sf(g, df)
    log10_p = np.array([chi2_log10_sf(float(x), df) if pv < LOG10_TAIL_BELOW else
                        (math.log10(pv) if pv > 0 else -math.inf) for x, pv in zip(g.tolist(), p.tolist())])
    return p, log10_p


def g_test_p(N: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    """p-value of the G-test of independence of "has e" and the class, per feature, from [K, m] counts."""
    from scipy.stats import chi2

    g, df = _g_statistics(N, n_c)
    return chi2.sf(g, df)


def _g_statistics(N: np.ndarray, n_c: np.ndarray) -> tuple[np.ndarray, int]:
    """(G per feature, degrees of freedom): G = 0 (p = 1) when there are no features or rows."""
    K, m = N.shape
    n = float(n_c.sum())
    if m == 0 or n == 0:
        return np.zeros(m), 1
    n_e = N.sum(axis=0).astype(np.float64)
    g = np.zeros(m)
    for cell, marg in ((N.astype(np.float64), n_e), ((n_c[:, None] - N).astype(np.float64), n - n_e)):
        expected = n_c[:, None].astype(np.float64) * marg[None, :] / n
        with np.errstate(divide="ignore", invalid="ignore"):
            g += np.where(cell > 0, 2.0 * cell * np.log(cell / expected), 0.0).sum(axis=0)
    df = max(int(np.count_nonzero(n_c)) - 1, 1)
    return np.maximum(g, 0.0), df


def combine_factors(base: np.ndarray, factors: list[list[Factor]]):
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
