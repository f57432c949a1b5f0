"""Engine test fixtures: reference formulas and random conditions, checked against an
independent brute-force oracle over the SOURCE tables.

The oracle itself (``Source``, ``BruteUniverse``: pandas joins over the PetNord JSON files,
nothing read from the snapshot's bitsets) lives in tests/support.py; the session fixtures
``source`` and ``oracle`` are in tests/conftest.py. ``snap`` / ``su`` / ``bu`` are PetNord,
its customers universe and the oracle's customers universe; ``petnord_sharded`` is PetNord built with
1, 2 and 7 shards (ROOT/petnord), built once per session for every suite of merged answers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st
from scipy.stats import hypergeom, norm

from support import build_where_strategy, quiet
from support import scalar_text as _scalar_text

# ----------------------------------------------------------------------------
# reference statistics: scalar textbook formulas (no segsrv code)
# ----------------------------------------------------------------------------

Z95 = float(norm.ppf(0.975))


def ref_wilson(k: int, m: int, z: float = Z95) -> tuple[float, float]:
    if m == 0:
        return math.nan, math.nan
    center = (k + z * z / 2) / (m + z * z)
    half = z * math.sqrt(k * (m - k) / m + z * z / 4) / (m + z * z)
    return max(0.0, center - half), min(1.0, center + half)


def ref_mutual_information(n: int, n_c: int, n_f: int, n_cf: int) -> float:
    cells = {(1, 1): n_cf, (1, 0): n_c - n_cf, (0, 1): n_f - n_cf, (0, 0): n - n_c - n_f + n_cf}
    row = {1: n_c, 0: n - n_c}
    col = {1: n_f, 0: n - n_f}
    mi = 0.0
    for (i, j), k in cells.items():
        if k > 0:
            mi += (k / n) * math.log2(k * n / (row[i] * col[j]))
    return mi


def ref_p_value(n, n_c, n_f, n_cf, tail: str) -> float:
    if tail == "over":  # P(X >= n_cf)
        return float(hypergeom.sf(n_cf - 1, n, n_f, n_c))
    return float(hypergeom.cdf(n_cf, n, n_f, n_c))  # P(X <= n_cf)


def ref_tails(n: int, n_c: int, n_f, n_cf) -> list[tuple[float, float]]:
    """(upper, lower) hypergeometric tails for many features at once (one scipy call per tail)."""
    n_f = np.asarray(n_f, dtype=np.int64)
    n_cf = np.asarray(n_cf, dtype=np.int64)
    if len(n_f) == 0:
        return []
    upper = hypergeom.sf(n_cf - 1, n, n_f, n_c)
    lower = hypergeom.cdf(n_cf, n, n_f, n_c)
    return [(float(u), float(l)) for u, l in zip(upper, lower)]


def _safe(a, b):
    return a / b if b != 0 else math.nan


def ref_stats(n: int, n_c: int, n_f: int, n_cf: int, a: float = 10.0, direction: str = "over",
              tails: tuple[float, float] | None = None) -> dict:
    """Every statistic of DESIGN.md section 3 for one feature, from its four counts.

    `tails` = (P(X >= n_cf), P(X <= n_cf)) when already computed (batched scipy calls)."""
    p = _safe(n_cf, n_c)
    p_base = _safe(n_f, n)
    lift = _safe(p, p_base)
    s_c, s_f, s_cf = n_c / n, n_f / n, n_cf / n
    lo, hi = ref_wilson(n_cf, n_c)
    if direction == "all":
        tail = "under" if lift < 1 else "over"
    else:
        tail = direction
    leverage = s_cf - s_c * s_f
    # mlxtend.frequent_patterns.association_rules definitions, antecedent C, consequent F
    conviction = math.inf if p >= 1 else (1 - s_f) / (1 - p)  # p = 1: rule never fails
    zhang_den = max(s_cf * (1 - s_c), s_c * (s_f - s_cf))
    zhang = 0.0 if zhang_den == 0 else leverage / zhang_den
    certainty = 0.0 if 1 - s_f == 0 else (p - s_f) / (1 - s_f)
    return {
        "support": n_cf,
        "support_ratio": s_cf,
        "n_feature": n_f,
        "p": p,
        "p_base": p_base,
        "p_not": _safe(n_f - n_cf, n - n_c),
        "lift": lift,
        "lift_smoothed": _safe(_safe(n_cf + a * p_base, n_c + a), p_base),
        "lift_low": _safe(lo, p_base),
        "lift_high": _safe(hi, p_base),
        "p_value": ref_p_value(n, n_c, n_f, n_cf, tail) if tails is None else tails[tail == "under"],
        "leverage": leverage,
        "conviction": conviction,
        "jaccard": _safe(n_cf, n_c + n_f - n_cf),
        "certainty": certainty,
        "kulczynski": 0.5 * (_safe(n_cf, n_c) + _safe(n_cf, n_f)),
        "zhang": zhang,
        "mutual_information": ref_mutual_information(n, n_c, n_f, n_cf),
    }


def ref_bh(pvals) -> list[float]:
    """Benjamini-Hochberg q-values from the definition: q_i = min over p_j >= p_i of m * p_j / rank_j,
    rank_j = #{k : p_k <= p_j} (ties share the highest rank), capped at 1."""
    m = len(pvals)
    ranks = [sum(1 for pk in pvals if pk <= pj) for pj in pvals]
    return [min([1.0] + [pj * m / rj for pj, rj in zip(pvals, ranks) if pj >= pi]) for pi in pvals]


def json_condition_fields(where) -> set[str]:
    """Field names a JSON `where` mentions (keys not starting with $), at any depth."""
    out: set[str] = set()
    if isinstance(where, dict):
        for key, val in where.items():
            if key in ("$and", "$or"):
                for item in val:
                    out |= json_condition_fields(item)
            elif key == "$not":
                out |= json_condition_fields(val)
            elif not key.startswith("$"):
                out.add(key)
    return out


def close(a, b, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    if a is None or b is None:
        return a is b
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def glob_fields(fields, pattern: str) -> list[str]:
    """Segment-wise glob (``*`` / ``?`` within a segment, ``**`` any number of segments), via a regex."""
    import re

    def seg(part: str) -> str:
        return "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in part)

    parts = pattern.split(".")
    rx = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            if not last:
                rx += r"(?:[^.]+\.)*"
            elif i == 0:
                rx += r".*"
            else:
                rx = rx[: -len(r"\.")] + r"(?:\..+)?"
        else:
            rx += seg(part) + ("" if last else r"\.")
    compiled = re.compile(r"\A" + rx + r"\Z")
    return [f for f in fields if compiled.match(f)]


def bits_to_ids(universe, bits: np.ndarray) -> set:
    mask = np.unpackbits(np.asarray(bits, dtype=np.uint64).view(np.uint8), bitorder="little")
    assert not mask[universe.n_rows :].any(), "bits set past n_rows"
    rows = np.flatnonzero(mask[: universe.n_rows])
    return set(universe.ids_for_rows(rows))


# ----------------------------------------------------------------------------
# random conditions (hypothesis)
# ----------------------------------------------------------------------------

_STRATEGIES: dict[str, st.SearchStrategy] = {}


@pytest.fixture(scope="session")
def where_strategy(petnord_snapshot, oracle):
    """where_strategy(universe_name) -> hypothesis strategy of random JSON `where` trees (depth <= 3)."""

    def get(name: str) -> st.SearchStrategy:
        if name not in _STRATEGIES:
            _STRATEGIES[name] = build_where_strategy(petnord_snapshot.universe(name), oracle.universe(name))
        return _STRATEGIES[name]

    return get


# ----------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session", params=[1, 2, 7], ids=lambda n: f"{n}_shards")
def petnord_sharded(request, tmp_path_factory, petnord_spec):
    """PetNord sharded by customer into 1, 2 and 7 shards (ROOT/petnord holding SHARDS), built once each."""
    from segsrv.snapshot.shardbuild import build_shards

    root = tmp_path_factory.mktemp(f"petnord_{request.param}_shards")
    build_shards(replace(petnord_spec, shard_entity="customers"), root, request.param, progress=quiet)
    return root / "petnord"


@pytest.fixture(scope="session")
def snap(petnord_snapshot):
    return petnord_snapshot


@pytest.fixture(scope="session")
def su(snap):
    return snap.universe("customers")


@pytest.fixture(scope="session")
def bu(oracle):
    return oracle.universe("customers")


@pytest.fixture(scope="session")
def ref():
    """Reference formulas and helpers (independent of segsrv's implementation)."""
    return SimpleNamespace(
        stats=ref_stats,
        wilson=ref_wilson,
        mutual_information=ref_mutual_information,
        p_value=ref_p_value,
        tails=ref_tails,
        bh=ref_bh,
        condition_fields=json_condition_fields,
        close=close,
        glob_fields=glob_fields,
        bits_to_ids=bits_to_ids,
        text=_scalar_text,
        Z95=Z95,
    )
