"""Engine test fixtures: an independent brute-force oracle over the SOURCE tables.

Nothing here reads the snapshot's bitsets. The oracle loads the PetNord JSON
files with the standard library + pandas, parses the TOML spec itself, walks
field paths (forward links, reverse links with "exists" semantics, several
hops) with pandas joins, and evaluates JSON `where` conditions and relate
statistics with its own code. The only things it takes from the snapshot are
the list of field names to cover and the edges of quantile-banded numeric
columns (explicit edges are checked against the spec).

Test files cannot import this module reliably (no __init__.py, pytest's import
modes differ), so everything is handed out through fixtures.
"""

from __future__ import annotations

import gzip
import json
import math
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import strategies as st
from scipy.stats import hypergeom, norm

from segsrv.snapshot.builder import band_labels

RANGE_OPS = ("$gte", "$gt", "$lte", "$lt")


# ----------------------------------------------------------------------------
# source tables and spec, read independently of segsrv
# ----------------------------------------------------------------------------


class Source:
    """The PetNord tables as pandas frames plus the spec's declarations."""

    def __init__(self, spec_path: Path):
        raw = tomllib.loads(spec_path.read_text())
        base = spec_path.parent
        self.tables: dict[str, pd.DataFrame] = {}
        self.keys: dict[str, str] = {}
        self.kinds: dict[str, dict[str, str]] = {}  # table -> column -> categorical|multi|numeric
        self.delims: dict[str, dict[str, str]] = {}
        self.numeric: dict[str, dict[str, dict]] = {}
        self.links: dict[str, dict[str, tuple[str, str, str | None]]] = {}  # table -> name -> (col, target, reverse)
        for name, t in raw["tables"].items():
            path = (base / t["file"]).resolve()
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                self.tables[name] = pd.DataFrame(json.load(fh))
            self.keys[name] = t["key"]
            kinds = {c: "categorical" for c in t.get("categorical", [])}
            kinds.update({c: "multi" for c in t.get("multi", {})})
            kinds.update({c: "numeric" for c in t.get("numeric", {})})
            self.kinds[name] = kinds
            self.delims[name] = dict(t.get("multi", {}))
            self.numeric[name] = dict(t.get("numeric", {}))
            self.links[name] = {ln: (l["column"], l["table"], l.get("reverse")) for ln, l in t.get("links", {}).items()}
        self.universe_tables = {u: spec.get("table", u) for u, spec in raw["universes"].items()}
        self._by_key = {}

    def by_key(self, table: str) -> pd.DataFrame:
        if table not in self._by_key:
            self._by_key[table] = self.tables[table].set_index(self.keys[table])
        return self._by_key[table]

    def sorted_ids(self, table: str) -> np.ndarray:
        return np.array(sorted(self.tables[table][self.keys[table]].tolist()), dtype=object)

    def walk(self, root: str, path: str):
        """(root row positions, leaf values, leaf table, column, exists?) of a field path."""
        parts = path.split(".")
        column, steps = parts[-1], parts[:-1]
        ids = self.sorted_ids(root)
        pos = np.arange(len(ids))
        cur = ids
        table = root
        exists = False
        for step in steps:
            if step in self.links[table]:  # forward: follow the link column
                col, target, _ = self.links[table][step]
                nxt = self.by_key(table)[col].reindex(cur).to_numpy(dtype=object)
                ok = pd.notna(nxt)
                pos, cur, table = pos[ok], nxt[ok], target
            else:  # reverse: every row of the owner table pointing at cur
                owners = [(o, l) for o, ls in self.links.items() for l in ls.values() if l[1] == table and l[2] == step]
                assert len(owners) == 1, f"cannot resolve step {step!r} from {table!r}"
                owner, (col, _, _) = owners[0]
                okey = self.keys[owner]
                left = pd.DataFrame({"pos": pos, "k": cur})
                right = self.tables[owner][[col, okey]].rename(columns={col: "k", okey: "__okey"})
                m = left.merge(right, on="k", how="inner")
                pos, cur, table = m["pos"].to_numpy(), m["__okey"].to_numpy(dtype=object), owner
                exists = True
        vals = self.by_key(table)[column].reindex(cur).to_numpy(dtype=object)
        ok = pd.notna(vals)
        return pos[ok], vals[ok], table, column, exists


def _text(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, str):
        return v
    raise AssertionError(f"unexpected categorical value {v!r}")


class BruteField:
    def __init__(self, name, kind, exists, n, masks, raw=None, edges=None):
        self.name = name
        self.kind = kind
        self.exists = exists
        self.n = n
        self.masks = masks  # value -> bool[n]
        self.raw = raw  # float[n] (NaN = missing) for own / forward numeric fields
        self.edges = edges

    @property
    def values(self):
        return list(self.masks)


class BruteUniverse:
    """One universe computed from the source tables."""

    def __init__(self, source: Source, name: str, snapshot_universe):
        self.name = name
        self.table = source.universe_tables[name]
        self.ids = source.sorted_ids(self.table)
        self.n = len(self.ids)
        self.fields: dict[str, BruteField] = {}
        for fname, info in snapshot_universe.fields.items():
            self.fields[fname] = self._field(source, fname, info)

    def _field(self, source: Source, fname: str, info) -> BruteField:
        pos, vals, table, column, exists = source.walk(self.table, fname)
        kind = source.kinds[table][column]
        n = self.n
        masks: dict[str, np.ndarray] = {}

        def add(value: str, rows):
            m = masks.get(value)
            if m is None:
                m = masks[value] = np.zeros(n, dtype=bool)
            m[rows] = True

        if kind == "categorical":
            codes, uniques = pd.factorize(pd.Series(vals, dtype=object))
            for code, raw_value in enumerate(uniques):
                add(_text(raw_value), pos[codes == code])
            return BruteField(fname, kind, exists, n, masks)
        if kind == "multi":
            delim = source.delims[table][column]
            rows, tokens = [], []
            for p, v in zip(pos, vals):
                for tok in str(v).split(delim):
                    tok = tok.strip()
                    if tok:
                        rows.append(p)
                        tokens.append(tok)
            rows = np.asarray(rows, dtype=np.int64)
            tokens = np.asarray(tokens, dtype=object)
            for value in sorted(set(tokens)):
                add(value, rows[tokens == value])
            return BruteField(fname, kind, exists, n, masks)
        # numeric: raw values and bands [edges[i-1], edges[i])
        nspec = source.numeric[table][column]
        if "edges" in nspec:
            edges = [float(e) for e in nspec["edges"]]
            assert list(info.edges) == edges, f"{fname}: snapshot edges {info.edges} differ from the spec {edges}"
        else:
            edges = list(info.edges)  # quantile edges: computed by the builder
        x = np.asarray(vals, dtype=np.float64)
        labels = band_labels(edges)
        for i, label in enumerate(labels):
            lo = edges[i - 1] if i > 0 else -np.inf
            hi = edges[i] if i < len(edges) else np.inf
            sel = (x >= lo) & (x < hi)
            masks[label] = np.zeros(n, dtype=bool)
            masks[label][pos[sel]] = True
        raw = None
        if not exists:
            raw = np.full(n, np.nan)
            raw[pos] = x
        return BruteField(fname, kind, exists, n, masks, raw, edges)

    # -- conditions in the JSON form, evaluated independently ---------------------

    def all(self) -> np.ndarray:
        return np.ones(self.n, dtype=bool)

    def term(self, field: str, value) -> np.ndarray:
        f = self.fields[field]
        text = _scalar_text(value)
        if text in f.masks:
            return f.masks[text].copy()
        if f.raw is not None:
            return f.raw == float(text)  # NaN never equals
        raise KeyError(f"{field}={text!r}")

    def eval(self, where) -> np.ndarray:
        if where is None or where == {}:
            return self.all()
        out = self.all()
        for key, val in where.items():
            if key == "$and":
                m = self.all()
                for item in val:
                    m &= self.eval(item)
            elif key == "$or":
                m = np.zeros(self.n, dtype=bool)
                for item in val:
                    m |= self.eval(item)
            elif key == "$not":
                m = ~self.eval(val)
            elif key == "$all":
                m = self.all()
            else:
                m = self._field_cond(key, val)
            out &= m
        return out

    def _field_cond(self, field: str, val) -> np.ndarray:
        if isinstance(val, list):
            m = np.zeros(self.n, dtype=bool)
            for v in val:
                m |= self.term(field, v)
            return m
        if isinstance(val, dict):
            if set(val) <= set(RANGE_OPS):
                x = self.fields[field].raw
                m = ~np.isnan(x)
                with np.errstate(invalid="ignore"):
                    if "$gte" in val:
                        m &= x >= val["$gte"]
                    if "$gt" in val:
                        m &= x > val["$gt"]
                    if "$lte" in val:
                        m &= x <= val["$lte"]
                    if "$lt" in val:
                        m &= x < val["$lt"]
                return m
            if set(val) == {"$in"}:
                return self._field_cond(field, val["$in"] if isinstance(val["$in"], list) else [val["$in"]])
            if set(val) == {"$ne"}:
                return ~self.term(field, val["$ne"])
            raise AssertionError(f"oracle: unsupported {val!r}")
        return self.term(field, val)

    def id_set(self, mask: np.ndarray) -> set:
        return set(self.ids[mask].tolist())

    # -- features -------------------------------------------------------------------

    def features(self, fields) -> list[tuple[str, str]]:
        return [(f, v) for f in fields for v in self.fields[f].masks]

    def feature_mask(self, field: str, value: str) -> np.ndarray:
        return self.fields[field].masks[value]


def _scalar_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


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


def _num(x: float):
    return int(x) if float(x).is_integer() else float(x)


def build_where_strategy(u, bu, max_depth: int = 3) -> st.SearchStrategy:
    """Random JSON `where` trees over the universe's own fields and values."""
    fields = sorted(u.fields)
    raw_fields = sorted(f for f in fields if u.fields[f].numeric is not None)
    raw_values = {}
    for f in raw_fields:
        x = np.unique(bu.fields[f].raw[~np.isnan(bu.fields[f].raw)])
        pick = x[np.linspace(0, len(x) - 1, min(len(x), 40)).astype(int)]
        raw_values[f] = sorted({_num(v) for v in pick} | {_num(e) for e in u.fields[f].edges})

    def value(f):
        vals = u.fields[f].values
        base = st.sampled_from(vals)
        if set(vals) <= {"true", "false"}:
            return st.one_of(base, st.booleans())
        if raw_fields and f in raw_values:
            return st.one_of(base, st.sampled_from(raw_values[f]))  # band label or raw value
        return base

    field = st.sampled_from(fields)
    term = field.flatmap(lambda f: value(f).map(lambda v: {f: v}))
    any_of = field.flatmap(
        lambda f: st.lists(value(f), min_size=1, max_size=3).flatmap(
            lambda vs: st.sampled_from([{f: vs}, {f: {"$in": vs}}])
        )
    )
    ne = field.flatmap(lambda f: value(f).map(lambda v: {f: {"$ne": v}}))

    def bounds(f):
        b = st.sampled_from(raw_values[f]) | st.floats(
            min_value=float(min(raw_values[f])) - 1, max_value=float(max(raw_values[f])) + 1, allow_nan=False
        )
        lower = st.tuples(st.sampled_from([None, "$gte", "$gt"]), b)
        upper = st.tuples(st.sampled_from([None, "$lte", "$lt"]), b)

        def build(lu):
            (lo_op, lo), (hi_op, hi) = lu
            d = {}
            if lo_op:
                d[lo_op] = lo
            if hi_op:
                d[hi_op] = hi
            return {f: d or {"$gte": lo}}

        return st.tuples(lower, upper).map(build)

    leaves = [term, term, any_of, ne, st.sampled_from([{}, {"$all": True}])]
    if raw_fields:
        leaves.append(st.sampled_from(raw_fields).flatmap(bounds))
    leaf = st.one_of(*leaves)

    def merge(pair):
        a, b = pair
        if set(a) & set(b) or not a or not b:
            return {"$and": [a, b]}
        return {**a, **b}  # several keys in one object = AND

    def tree(depth):
        if depth == 0:
            return leaf
        sub = tree(depth - 1)
        return st.one_of(
            leaf,
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
            st.lists(sub, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
            sub.map(lambda x: {"$not": x}),
            st.tuples(sub, sub).map(merge),
        )

    return tree(max_depth)


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


@pytest.fixture(scope="session")
def source(petnord_spec_path) -> Source:
    return Source(petnord_spec_path)


class Oracle:
    def __init__(self, source: Source, snapshot):
        self.source = source
        self.snapshot = snapshot
        self._universes: dict[str, BruteUniverse] = {}

    def universe(self, name: str) -> BruteUniverse:
        if name not in self._universes:
            self._universes[name] = BruteUniverse(self.source, name, self.snapshot.universe(name))
        return self._universes[name]


@pytest.fixture(scope="session")
def oracle(source, petnord_snapshot) -> Oracle:
    return Oracle(source, petnord_snapshot)


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
