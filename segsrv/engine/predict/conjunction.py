"""The conjunction model of one question (Predict's default method; Evaluate's "conjunction").

Evidence joins the conjunction S' = S AND e1 AND e2 ... in decreasing mutual information with
the target within S while |S' AND e| >= min_support; every other ("backed-off") evidence gets a
smoothed lift within S' (or within S when no row of S' has it), unless it is not significant
(G-test p > max_p_value) or redundant with a lift already used (|phi| >= max_correlation in S).
See the formulas in segsrv.engine.predict and docs/predict.md.

Under a privacy floor k (``privacy_k`` > 1, segsrv/engine/privacy.py) evidence joins the conjunction
only while every class keeps a count in S' that is 0 or at least k, as do S' and S minus S' and each
class's rows outside S'; every factor records the table it rests on (``Factor.table``).
"""

from __future__ import annotations

import numpy as np

from ... import _kernels
from ...snapshot.reader import Universe
from ..conditions import feature_bits
from ..relate import count_features
from .. import privacy
from .target import (add_lift, class_feature_counts, effective_min_support, g_test, lift_tables, question_counts,
                     smoothed_lift)
from ...ops.predict import Factor, PredictQuery


def mutual_information(N: np.ndarray, n_c: np.ndarray, n: int) -> np.ndarray:
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


def _conjunction_tables(n_S: int, n_Sc: np.ndarray, n_Sp: int, n_Spc: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The tables the conjunction factor of S' within S rests on, one per class."""
    return [(int(n_S), int(n_Sc[c]), int(n_Sp), int(n_Spc[c])) for c in range(len(n_Sc))]


def conjunction_order(N: np.ndarray, n_Sc: np.ndarray, n_S: int, fids: np.ndarray) -> list[int]:
    """The evidence (indices into fids) in the order it is tried for the conjunction: decreasing mutual
    information with the target within S, ties by feature id."""
    mi = mutual_information(N, n_Sc, n_S)
    return (np.lexsort((fids, -mi)) if len(fids) else np.zeros(0, np.int64)).tolist()


def conjunction_blocked(n_S: int, n_Sc: np.ndarray, k: int, n_tc: np.ndarray, privacy_k: int) -> bool:
    """Whether S' AND e (k rows, n_tc per class) may not join under the privacy floor: the conjunction
    factor would rest on a small count."""
    return any(privacy.table_small(*t, privacy_k) for t in _conjunction_tables(n_S, n_Sc, k, n_tc))


def conjunction_question(u: Universe, S: np.ndarray, n_S: int, classes: list[np.ndarray], p0: np.ndarray,
                         fids: np.ndarray, q: PredictQuery, privacy_k: int = 0):
    """-> (base[K], factors[K][...]) for one question."""
    a = float(q.prior_strength)
    names, n_Sc, base, N, n_Se, factors = question_counts(u, S, n_S, classes, p0, fids, a)

    # greedy exact conditioning in decreasing mutual information
    order = conjunction_order(N, n_Sc, n_S, fids)
    bits = {int(i): feature_bits(u, int(fids[i])) for i in order}  # read-only views of dense rows
    Sp = S.copy()
    n_Sp = n_S
    conj: list[int] = []
    backed: list[int] = []
    tmp = np.empty_like(S)
    min_support = effective_min_support(q, n_S)
    for i in order:
        _kernels.bitset_and(Sp, bits[i], tmp)
        k = int(_kernels.popcount(tmp))
        if k >= min_support and privacy_k > 1:  # the conjunction factor must not rest on a small count
            n_tc = np.array([_kernels.popcount(_kernels.bitset_and(tmp, c)) for c in classes], dtype=np.int64)
            if conjunction_blocked(n_S, n_Sc, k, n_tc, privacy_k):
                k = -1
        if k >= min_support:
            Sp, tmp = tmp, Sp
            n_Sp = k
            conj.append(i)
        else:
            backed.append(i)
    if conj:
        SpC = [_kernels.bitset_and(Sp, c) for c in classes]
        n_Spc = np.array([_kernels.popcount(b) for b in SpC], dtype=np.int64)
        Np = class_feature_counts(u, SpC, n_Spc, fids[backed])
    else:
        n_Spc = n_Sc
        Np = N[:, backed]

    def co_counts(i: int, used: list[int]) -> np.ndarray:
        return count_features(u, _kernels.bitset_and(S, bits[i]), int(n_Se[i]), fids[used])[0]

    conjunction_factors(factors, names, base, a, n_S, n_Sc, N, n_Se, conj, backed, n_Sp, n_Spc, Np, q, co_counts)
    return base, factors


def conjunction_factors(factors, names, base: np.ndarray, a: float, n_S: int, n_Sc: np.ndarray, N: np.ndarray,
                        n_Se: np.ndarray, conj: list[int], backed: list[int], n_Sp: int, n_Spc: np.ndarray,
                        Np: np.ndarray, q: PredictQuery, co_counts) -> None:
    """Append the conjunction's factor and each backed-off evidence's lift to `factors`, from counts:
    S' (n_Sp rows, n_Spc per class) the conjunction of the evidence `conj` (indices into the evidence),
    Np[K, len(backed)] each backed-off evidence's rows in S' per class (N, n_Se: in S);
    co_counts(i, used): the rows of S with evidence i and each evidence of `used` (the redundancy test)."""
    K = len(base)
    if conj:
        p_conj = (n_Spc + a * base) / (n_Sp + a)
        f = p_conj / base
        tables = _conjunction_tables(n_S, n_Sc, n_Sp, n_Spc)
        pc, lpc = g_test(n_Spc[:, None], n_Sc)  # "in S'" against the class within S
        for c in range(K):
            factors[c].append(Factor([names[i] for i in conj], float(f[c]), n_Sp, "conjunction", "", tables[c],
                                     float(pc[0]), float(lpc[0])))
    n_Spe = Np.sum(axis=0)
    p_Sp, lp_Sp = g_test(Np, n_Spc)
    p_S, lp_S = g_test(N, n_Sc)
    used: list[int] = []
    for j, i in enumerate(backed):
        if n_Se[i] == 0:
            add_lift(factors, names[i], np.ones(K), 0, "not observed in the segment")
            continue
        in_ctx = n_Spe[j] > 0
        p_val = float(p_Sp[j] if in_ctx else p_S[i])
        p = (p_val, float(lp_Sp[j] if in_ctx else lp_S[i]))
        tables = (lift_tables(n_Sp, n_Spc, n_Spe[j], Np[:, j]) if in_ctx
                  else lift_tables(n_S, n_Sc, n_Se[i], N[:, i]))
        if p_val > q.max_p_value:
            add_lift(factors, names[i], np.ones(K), int(n_Spe[j] if in_ctx else n_Se[i]),
                     f"not significant {'within the conjunction' if conj and in_ctx else 'within the segment'} "
                     f"(p={p_val:.3g} > max_p_value={q.max_p_value:g})", tables, p)
            continue
        redundant = None
        if used:  # rows of S with e and each used lift evidence: one counting pass
            n12 = co_counts(i, used)
            n1, n2 = float(n_Se[i]), n_Se[used].astype(np.float64)
            den = n1 * (n_S - n1) * n2 * (n_S - n2)
            with np.errstate(divide="ignore", invalid="ignore"):
                phis = np.where(den > 0, (n12 * float(n_S) - n1 * n2) / np.sqrt(np.where(den > 0, den, 1.0)), 0.0)
            hit = np.flatnonzero(np.abs(phis) >= q.max_correlation)
            if len(hit):
                h = int(hit[0])
                redundant = (used[h], float(phis[h]), (int(n_S), int(n_Se[i]), int(n2[h]), int(n12[h])))
        if redundant is not None:
            f2, v2 = names[redundant[0]]
            add_lift(factors, names[i], np.ones(K), int(n_Se[i]),
                     f"redundant with {f2}={v2} (phi={redundant[1]:.3f} in the segment)", redundant[2], p)
            continue
        if n_Spe[j] > 0:
            add_lift(factors, names[i], smoothed_lift(Np[:, j], n_Spc, int(n_Spe[j]), n_Sp, a), n_Spe[j],
                     "within the conjunction" if conj else "", tables, p)
        else:
            add_lift(factors, names[i], smoothed_lift(N[:, i], n_Sc, int(n_Se[i]), n_S, a), n_Se[i],
                     "within the segment (no row of the conjunction has it)", tables, p)
        used.append(i)
