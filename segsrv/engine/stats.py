"""Exact relate statistics from the four counts of a 2x2 table (DESIGN.md section 3).

All functions are vectorised over features: n and n_c are scalars (universe
size, rows in the condition C), n_f and n_cf arrays (rows with feature F,
rows with both). C is the antecedent and F the consequent, as in
association-rule libraries (mlxtend).
"""

from __future__ import annotations

import numpy as np

from .. import _kernels

Z95 = 1.959963984540054


def _div(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def wilson_interval(k, m, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion k/m."""
    k = np.asarray(k, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / m
        denom = 1 + z * z / m
        center = (p + z * z / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / denom
    lo = np.where(m > 0, np.clip(center - half, 0, 1), np.nan)
    hi = np.where(m > 0, np.clip(center + half, 0, 1), np.nan)
    # the exact endpoints at k = 0 and k = m (center -/+ half leaves rounding residue like 3e-18,
    # which would put the interval above p = 0)
    lo = np.where((m > 0) & (k <= 0), 0.0, lo)
    hi = np.where((m > 0) & (k >= m), 1.0, hi)
    return lo, hi


def _xlog2(p, q):
    """p * log2(p / q) with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(q > 0, q, 1.0)), 0.0)


def mutual_information(n, n_c, n_f, n_cf) -> np.ndarray:
    """Mutual information (bits) between membership of C and of F."""
    n = float(n)
    n_f = np.asarray(n_f, dtype=np.float64)
    n_cf = np.asarray(n_cf, dtype=np.float64)
    if n <= 0:
        return np.zeros_like(n_f)
    pc = n_c / n
    pf = n_f / n
    p11 = n_cf / n
    p10 = (n_c - n_cf) / n
    p01 = (n_f - n_cf) / n
    p00 = (n - n_c - n_f + n_cf) / n
    return (
        _xlog2(p11, pc * pf)
        + _xlog2(p10, pc * (1 - pf))
        + _xlog2(p01, (1 - pc) * pf)
        + _xlog2(p00, (1 - pc) * (1 - pf))
    )


def p_value_over(n, n_c, n_f, n_cf) -> np.ndarray:
    """P(X >= n_cf), X ~ Hypergeometric(population n, successes n_f, draws n_c) (`tail_over`: the kernel
    hypergeom_tail, about a microsecond per feature; scipy's Boost tails, used here until December 2026,
    cost up to ~200 us each at populations near 1e5: a 90-feature relate over 100k rows took 18.2 ms, now 0.53)."""
    return _tail(n, n_f, n_c, n_cf, True)


def p_value_under(n, n_c, n_f, n_cf) -> np.ndarray:
    """P(X <= n_cf): the under-representation tail."""
    return _tail(n, n_f, n_c, n_cf, False)


# A tail at most this is the smaller of the two at its point: the two tails at a point sum to 1 + its
# probability, so the other is at least 0.55, a margin far beyond the tails' rounding (relative errors
# below 1e-12; tested against exact sums to 1e-7)
ONE_TAIL_ENOUGH = 0.45


def p_value_two_sided(n: int, n_c: int, n_f, n_cf) -> np.ndarray:
    """min(1, 2 min(P(X >= n_cf), P(X <= n_cf))) per feature (n_f, n_cf: int arrays), X as in p_value_over.
    The tail away from the expected count (n_c n_f / n) is summed first; the other only where that one
    exceeds ONE_TAIL_ENOUGH (else it is the larger): half the tail sums, the same numbers as both."""
    n_f, n_cf = np.asarray(n_f, dtype=np.int64), np.asarray(n_cf, dtype=np.int64)
    above = n_cf.astype(np.float64) * n > float(n_c) * n_f.astype(np.float64)  # a near tie: either tail first
    smaller = np.empty(len(n_cf))
    smaller[above] = p_value_over(n, n_c, n_f[above], n_cf[above])
    smaller[~above] = p_value_under(n, n_c, n_f[~above], n_cf[~above])
    unsure = smaller > ONE_TAIL_ENOUGH
    if unsure.any():
        smaller[unsure] = np.minimum(p_value_over(n, n_c, n_f[unsure], n_cf[unsure]),
                                     p_value_under(n, n_c, n_f[unsure], n_cf[unsure]))
    return np.minimum(1.0, 2.0 * smaller)


def _tail(population, n_a, n_b, n_ab, upper: bool) -> np.ndarray:
    """P(X >= n_ab) (upper) or P(X <= n_ab), X ~ Hypergeometric(population, successes n_a, draws n_b); every
    argument an integer array or scalar (broadcast; a population per element is the test within each
    element's own rows). Exact tail sums in segsrv._kernels.hypergeom_tail (about a microsecond each; scipy's
    Boost tails cost up to ~200 us at populations near 1e5)."""
    pop, *counts = (np.asarray(v, dtype=np.int64) for v in (population, n_a, n_b, n_ab))
    lengths = {c.shape[0] for c in counts if c.ndim == 1}
    if pop.ndim == 0 and len(lengths) == 1 and max(c.ndim for c in counts) == 1:
        # Relate's shape (one population, per-feature vectors beside scalars): the broadcasting below costs
        # more than the kernel at a page of hits
        m = lengths.pop()
        n_a, n_b, n_ab = (np.ascontiguousarray(c) if c.ndim else np.full(m, c, dtype=np.int64) for c in counts)
        pops = int(pop)
    else:
        shape = np.broadcast_shapes(pop.shape, *(c.shape for c in counts))
        # views where the shapes already agree: a copy only of what broadcasting repeats
        n_a, n_b, n_ab = (np.ascontiguousarray(np.broadcast_to(c, shape)).ravel() for c in counts)
        if len(n_ab) == 0:
            return np.zeros(0)
        one = pop.ndim == 0 or pop.min() == pop.max()  # one population: the kernel's scalar form
        pops = int(pop.flat[0]) if one else np.ascontiguousarray(np.broadcast_to(pop, shape)).ravel()
    out = _kernels.hypergeom_tail(n_ab, n_a, n_b, pops, upper=upper)
    # exp of a log tail is >= 0 (NaN stays NaN); a sum's rounding may pass 1 (np.clip costs ~3 us more)
    return np.minimum(out, 1.0, out=out)


def tail_over(n, n_a, n_b, n_ab) -> np.ndarray:
    """P(X >= n_ab), X ~ Hypergeometric(population n, successes n_a, draws n_b): the one-sided Fisher exact
    test of a 2x2 table by its margins (n may be an array too: a population per element)."""
    return _tail(n, n_a, n_b, n_ab, True)


def tail_under(n, n_a, n_b, n_ab) -> np.ndarray:
    """P(X <= n_ab) for the same X as tail_over."""
    return _tail(n, n_a, n_b, n_ab, False)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as p."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def p_values(n, n_c, n_f, n_cf, direction: str = "over") -> np.ndarray:
    """Hypergeometric tail of each feature: upper for "over", lower for "under", own side for "all"."""
    if direction == "under":
        return p_value_under(n, n_c, n_f, n_cf)
    if direction == "over":
        return p_value_over(n, n_c, n_f, n_cf)
    # lift >= 1 (or undefined) <=> n_cf * n >= n_c * n_f, in exact integer arithmetic
    over = np.asarray(n_cf, dtype=object) * n >= np.asarray(n_f, dtype=object) * n_c
    return np.where(over.astype(bool), p_value_over(n, n_c, n_f, n_cf), p_value_under(n, n_c, n_f, n_cf))


def relate_statistics(
    n: int, n_c: int, n_f, n_cf, prior_strength: float = 10.0, direction: str = "over", p_value=None
) -> dict[str, np.ndarray]:
    """Every statistic of DESIGN.md section 3, as arrays aligned with n_f / n_cf (the kernel
    segsrv._kernels.table_statistics; its naive twin is segsrv._kernels.naive.table_statistics).

    `p_value`, when given, is reused instead of recomputed (it is the costly one).
    """
    n_f = np.ascontiguousarray(n_f, dtype=np.int64)
    n_cf = np.ascontiguousarray(n_cf, dtype=np.int64)
    table = _kernels.table_statistics(int(n), int(n_c), n_f, n_cf, float(prior_strength))
    out = {name: table[:, j] for j, name in enumerate(_kernels.TABLE_STATISTICS)}
    if p_value is None:
        p_value = p_values(n, n_c, n_f, n_cf, direction)
    out.update({
        "n": np.full(len(n_f), n, dtype=np.int64),
        "n_condition": np.full(len(n_f), n_c, dtype=np.int64),
        "n_feature": n_f,
        "support": n_cf,
        "p_value": p_value,
    })
    return out
