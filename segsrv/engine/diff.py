"""Drift between two versions of a snapshot: how every catalog segment changed.

``diff_versions(snap_a, snap_b)`` evaluates each segment of the two versions'
catalogs in its own version (its definition there, over its universe there)
and reports, per segment:

* its size and share of the universe in each version;
* the members who joined (members in B, not in A) and left (members in A, not
  in B), matched by external id (a customer only in B who is a member counts
  as joined, one only in A who was a member counts as left; ``joined_new`` /
  ``left_gone`` count those), the members who stayed, and the Jaccard
  similarity |A and B| / |A or B| of the two member sets (None when both are
  empty);
* the features whose lift in the segment moved most. A feature is matched
  across versions by field and value name; its lift in a version is
  P(f | segment) / P(f) = (n_sf / n_s) / (n_f / n), counted exactly (the relate
  engine's ``count_features``). Features with support n_sf below
  ``min_support`` in both versions are skipped; the rest are ranked by
  |log(lift_b / lift_a)| (infinite when the lift is 0 in one version), then by
  the larger support. Features only in B (``new_features``) or only in A
  (``missing_features``) with support >= ``min_support`` are ranked by
  |log(lift)|. The fields the segment's definition mentions (following
  ``$segment`` references) are left out unless ``include_condition_fields``
  or they are named (not globbed) in ``fields``.

The result types and their forms (JSON, the text report, id lists) are
segsrv.ops.diff. Segments in only one catalog are reported as "added" / "removed" with their
size there. A segment that cannot be evaluated in a version (e.g. its
definition names a value that no longer exists) carries the error message in
``error_a`` / ``error_b`` instead of figures. Everything is vectorised:
membership is a binary search of one sorted id array in another, so diffs of
a million customers take seconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .. import _kernels
from ..errors import NoCatalogError, QueryError, SegsrvError, UnknownFieldError, UnknownSegmentError
from ..ops.diff import DiffResult, FeatureMove, SegmentDiff, UniverseDiff
from ..snapshot.paths import match_path
from ..snapshot.location import resolve_snapshot_dir, version_dir
from ..snapshot.reader import Snapshot, Universe, open_snapshot
from ..snapshot.spec import suggest
from ..ops.conditions import SegmentRef, condition_fields, parse_where, segment_refs
from .conditions import evaluate
from .relate import count_features

DEFAULT_TOP_FEATURES = 10
DEFAULT_MIN_SUPPORT = 10
CATALOG_HINT = "add one with `segsrv segments apply`"


# ----------------------------------------------------------------------------
# opening two versions
# ----------------------------------------------------------------------------


def open_versions(location: str | Path, version_a: str, version_b: str,
                  verify: str = "full") -> tuple[Snapshot, Snapshot]:
    """Open VERSION_A and VERSION_B of the snapshot at ROOT/NAME."""
    name_dir = resolve_snapshot_dir(location)
    dirs = [version_dir(name_dir, v) for v in (version_a, version_b)]
    return open_snapshot(dirs[0], verify=verify), open_snapshot(dirs[1], verify=verify)


# ----------------------------------------------------------------------------
# ids
# ----------------------------------------------------------------------------


def align_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted id arrays -> the same dtype, still sorted (ints vs bytes: both as decimal bytes)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "i" and b.dtype.kind == "i":
        return _sorted(a.astype(np.int64, copy=False)), _sorted(b.astype(np.int64, copy=False))
    if a.dtype.kind == "i":
        a = np.sort(a.astype("S"))
    if b.dtype.kind == "i":
        b = np.sort(b.astype("S"))
    width = max(a.dtype.itemsize, b.dtype.itemsize, 1)
    return _sorted(a.astype(f"S{width}", copy=False)), _sorted(b.astype(f"S{width}", copy=False))


def _sorted(a: np.ndarray) -> np.ndarray:
    """a, sorted (a no-op for the ids of a snapshot, kept sorted by the format; checked, it is cheap)."""
    return a if len(a) < 2 or bool(np.all(a[1:] >= a[:-1])) else np.sort(a)


def in_sorted(needles: np.ndarray, haystack: np.ndarray) -> np.ndarray:
    """Which needles occur in the sorted array haystack (same dtype)."""
    if len(haystack) == 0 or len(needles) == 0:
        return np.zeros(len(needles), dtype=bool)
    pos = np.minimum(np.searchsorted(haystack, needles), len(haystack) - 1)
    return haystack[pos] == needles


# ----------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------


class _Features:
    """The selected features of one universe of one version: ids, counts, (field, value) names."""

    def __init__(self, universe: Universe, patterns: list[str] | None):
        self.universe = universe
        names = list(universe.fields) if not patterns else [
            f for f in universe.fields if any(f == p or match_path(p.split("."), f.split(".")) for p in patterns)
        ]
        infos = [universe.fields[f] for f in names]
        self.fids = (np.concatenate([f.feature_ids for f in infos]) if infos else np.zeros(0, np.int64))
        self.field_of = np.concatenate(
            [np.full(len(f.values), i, dtype=np.int64) for i, f in enumerate(infos)]) if infos else np.zeros(0, np.int64)
        self.field_names = names
        self.keys = [(f.name, v) for f in infos for v in f.values]
        self.n_f = np.asarray(universe.feature_count[self.fids], dtype=np.int64)

    def counts(self, bits: np.ndarray, n_s: int) -> np.ndarray:
        if n_s == 0 or len(self.fids) == 0:
            return np.zeros(len(self.fids), dtype=np.int64)
        return count_features(self.universe, bits, n_s, self.fids)[0]

    def skip_mask(self, skip: set[str]) -> np.ndarray:
        bad = np.array([name in skip for name in self.field_names], dtype=bool)
        return bad[self.field_of] if len(self.field_of) else np.zeros(0, dtype=bool)


class _FeaturePair:
    """Features of a universe in both versions, matched by (field, value)."""

    def __init__(self, fa: _Features, fb: _Features):
        self.a, self.b = fa, fb
        index_b = {k: j for j, k in enumerate(fb.keys)}
        common_a, common_b = [], []
        for i, k in enumerate(fa.keys):
            j = index_b.get(k)
            if j is not None:
                common_a.append(i)
                common_b.append(j)
        self.common_a = np.asarray(common_a, dtype=np.int64)
        self.common_b = np.asarray(common_b, dtype=np.int64)
        self.only_a = np.setdiff1d(np.arange(len(fa.keys)), self.common_a)
        self.only_b = np.setdiff1d(np.arange(len(fb.keys)), self.common_b)


def _stats(n: int, n_s: int, n_f: np.ndarray, n_sf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(f|s), P(f), lift) arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = n_sf / n_s if n_s else np.full(len(n_f), np.nan)
        base = n_f / n if n else np.full(len(n_f), np.nan)
        lift = p / base
    return p, base, lift


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _moves(keys, idx_a, idx_b, sa, sb) -> list[FeatureMove]:
    """FeatureMove rows; sa / sb = (support, p, base, lift) arrays of a version or None."""
    out = []
    for k, (ia, ib) in enumerate(zip(idx_a, idx_b)):
        name = keys[k]
        va = [None] * 4 if sa is None else [int(sa[0][ia]), _f(sa[1][ia]), _f(sa[2][ia]), _f(sa[3][ia])]
        vb = [None] * 4 if sb is None else [int(sb[0][ib]), _f(sb[1][ib]), _f(sb[2][ib]), _f(sb[3][ib])]
        la, lb = va[3], vb[3]
        delta = log_ratio = None
        if la is not None and lb is not None:
            delta = lb - la
            if la > 0 and lb > 0:
                log_ratio = math.log(lb / la)
            elif lb > 0:
                log_ratio = math.inf
            elif la > 0:
                log_ratio = -math.inf
            else:
                log_ratio = 0.0
        out.append(FeatureMove(name[0], name[1], va[0], vb[0], va[1], vb[1], va[2], vb[2], la, lb, delta, log_ratio))
    return out


def _rank(key: np.ndarray, support: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Order: key descending (NaN last), then support descending, then tiebreak ascending.

    Keys are rounded to 10 decimals first so that equal lift ratios computed from different
    counts (rounding noise ~1e-16) tie and fall to the support."""
    key = np.where(np.isnan(key), -1.0, np.round(key, 10))
    return np.lexsort((tiebreak, -support, -key))


# ----------------------------------------------------------------------------
# segments
# ----------------------------------------------------------------------------


def definition_fields(catalog: dict, name: str) -> set[str]:
    """Fields a segment's definition mentions, following $segment references (cycles tolerated)."""
    out: set[str] = set()
    todo, seen = [name], set()
    while todo:
        n = todo.pop()
        if n in seen or n not in catalog:
            continue
        seen.add(n)
        try:
            cond = parse_where(catalog[n].get("where"))
        except QueryError:
            continue
        out |= condition_fields(cond)
        todo.extend(segment_refs(cond))
    return out


def _members(snap: Snapshot, name: str) -> tuple[Universe, np.ndarray, np.ndarray]:
    """(universe, bitset, sorted external ids) of a catalog segment in a version."""
    entry = snap.segments[name]
    if not isinstance(entry, dict) or "where" not in entry:
        raise QueryError(f"segment {name!r}: catalog entry has no 'where'", [("$segment", "no where")])
    u = snap.universe(entry.get("universe"))
    bits = evaluate(snap, u, SegmentRef(name))
    rows = _kernels.bitset_to_ids(bits, u.n_rows)
    return u, bits, np.asarray(u.row_ids[np.asarray(rows, dtype=np.int64)])


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise QueryError(f"{name}: expected an integer >= {minimum}, got {value!r}", [(name, f"integer >= {minimum}")])


def diff_versions(
    snap_a: Snapshot,
    snap_b: Snapshot,
    segments: list[str] | None = None,
    top_features: int = DEFAULT_TOP_FEATURES,
    min_support: int = DEFAULT_MIN_SUPPORT,
    fields: list[str] | None = None,
    include_condition_fields: bool = False,
    keep_ids: bool = True,
) -> DiffResult:
    """Compare the segment catalogs of two versions (see the module docstring)."""
    t0 = time.perf_counter()
    _check_int("top_features", top_features, 0)
    _check_int("min_support", min_support, 0)
    for snap in (snap_a, snap_b):
        if not snap.segments:
            raise NoCatalogError(
                f"version {snap.version!r} of snapshot {snap.name!r} has no segment catalog; {CATALOG_HINT}",
                [("version", f"{snap.version!r} has no segment catalog")],
            )
    cat_a, cat_b = snap_a.segments, snap_b.segments
    names = sorted(set(cat_a) | set(cat_b))
    if segments:
        unknown = [s for s in segments if s not in cat_a and s not in cat_b]
        if unknown:
            raise UnknownSegmentError(
                f"no segment {unknown[0]!r} in version {snap_a.version!r} or {snap_b.version!r}"
                f"{suggest(unknown[0], names)}; segments: {names[:20]}"
                + (f" and {len(names) - 20} more" if len(names) > 20 else ""),
                [("segment", f"unknown segment {unknown[0]!r}")],
            )
        names = [n for n in dict.fromkeys(segments)]
    if fields:
        for pat in fields:
            if not any(f == pat or match_path(pat.split("."), f.split("."))
                       for snap in (snap_a, snap_b) for u in snap.universes.values() for f in u.fields):
                every = sorted({f for s in (snap_a, snap_b) for u in s.universes.values() for f in u.fields})
                raise UnknownFieldError(f"fields: {pat!r} matches no field in either version{suggest(pat, every)}",
                                        [("fields", f"{pat!r} matches nothing")])

    features: dict[tuple[str, str], _FeaturePair] = {}
    aligned_ids: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def universe_ids(ua: Universe, ub: Universe) -> tuple[np.ndarray, np.ndarray]:
        key = (ua.name, ub.name)
        if key not in aligned_ids:
            aligned_ids[key] = align_ids(np.asarray(ua.row_ids), np.asarray(ub.row_ids))
        return aligned_ids[key]

    def pair(ua: Universe, ub: Universe) -> _FeaturePair:
        key = (ua.name, ub.name)
        if key not in features:
            features[key] = _FeaturePair(_Features(ua, fields), _Features(ub, fields))
        return features[key]

    out = []
    for name in names:
        ea, eb = cat_a.get(name), cat_b.get(name)
        status = "both" if ea is not None and eb is not None else ("removed" if eb is None else "added")
        entry = eb if eb is not None else ea
        uname_a, uname_b = _universe_name(snap_a, ea), _universe_name(snap_b, eb)
        d = SegmentDiff(
            name=name, status=status, universe_a=uname_a, universe_b=uname_b,
            definition_changed=status == "both" and (
                not isinstance(ea, dict) or not isinstance(eb, dict)
                or (ea.get("where"), uname_a) != (eb.get("where"), uname_b)),
            description=str(entry.get("description", "") or "") if isinstance(entry, dict) else "",
        )
        got = {}
        for side, snap, e in (("a", snap_a, ea), ("b", snap_b, eb)):
            if e is None:
                continue
            try:
                u, bits, ids = _members(snap, name)
            except SegsrvError as exc:
                setattr(d, f"error_{side}", exc.message)
                continue
            got[side] = (u, bits, ids)
            setattr(d, f"size_{side}", int(len(ids)))
            setattr(d, f"n_rows_{side}", u.n_rows)
            setattr(d, f"share_{side}", len(ids) / u.n_rows if u.n_rows else None)
        out.append(d)
        if "a" not in got or "b" not in got:
            continue
        (ua, bits_a, ids_a), (ub, bits_b, ids_b) = got["a"], got["b"]
        if ua.name != ub.name:
            d.note = f"defined over universe {ua.name!r} in A and {ub.name!r} in B: members are not compared"
            continue
        ma, mb = align_ids(ids_a, ids_b)
        in_b = in_sorted(ma, mb)
        in_a = in_sorted(mb, ma)
        d.stayed = int(in_b.sum())
        left_ids, joined_ids = ma[~in_b], mb[~in_a]
        d.left, d.joined = int(len(left_ids)), int(len(joined_ids))
        union = len(ma) + len(mb) - d.stayed
        d.jaccard = d.stayed / union if union else None
        all_a, all_b = universe_ids(ua, ub)
        new_mask = ~in_sorted(*align_ids(joined_ids, all_a))
        gone_mask = ~in_sorted(*align_ids(left_ids, all_b))
        d.joined_new, d.left_gone = int(new_mask.sum()), int(gone_mask.sum())
        if keep_ids:
            d.joined_ids, d.left_ids = joined_ids, left_ids
            d.joined_new_mask, d.left_gone_mask = new_mask, gone_mask
        skip = set() if include_condition_fields else (
            definition_fields(cat_a, name) | definition_fields(cat_b, name)) - set(fields or ())
        _feature_drift(d, pair(ua, ub), bits_a, bits_b, top_features, min_support, skip)

    universes = {}
    for uname in sorted({d.universe_a for d in out if d.universe_a} | {d.universe_b for d in out if d.universe_b}):
        ua, ub = snap_a.universes.get(uname), snap_b.universes.get(uname)
        if ua is None or ub is None:
            universes[uname] = UniverseDiff(uname, ua.n_rows if ua else None, ub.n_rows if ub else None, None, None, None)
            continue
        all_a, all_b = universe_ids(ua, ub)
        common = int(in_sorted(all_a, all_b).sum())
        universes[uname] = UniverseDiff(uname, ua.n_rows, ub.n_rows, common, ua.n_rows - common, ub.n_rows - common)
    return DiffResult(snap_a.name, snap_b.name, snap_a.version, snap_b.version, top_features, min_support,
                      universes, out, (time.perf_counter() - t0) * 1e3)


def _universe_name(snap: Snapshot, entry) -> str | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("universe"):
        return str(entry["universe"])
    return next(iter(snap.universes)) if len(snap.universes) == 1 else None


def _feature_drift(d: SegmentDiff, fp: _FeaturePair, bits_a, bits_b, top: int, min_support: int, skip: set[str]) -> None:
    fa, fb = fp.a, fp.b
    na, nb = fa.universe.n_rows, fb.universe.n_rows
    sa_, sb_ = d.size_a, d.size_b
    cnt_a, cnt_b = fa.counts(bits_a, sa_), fb.counts(bits_b, sb_)
    pa, base_a, lift_a = _stats(na, sa_, fa.n_f, cnt_a)
    pb, base_b, lift_b = _stats(nb, sb_, fb.n_f, cnt_b)
    sa, sb = (cnt_a, pa, base_a, lift_a), (cnt_b, pb, base_b, lift_b)
    skip_a, skip_b = fa.skip_mask(skip), fb.skip_mask(skip)
    # a feature no row of a version has (n_f = 0) has no lift there: it counts as absent
    present_a, present_b = fa.n_f > 0, fb.n_f > 0

    # in both versions
    ca, cb = fp.common_a, fp.common_b
    ok = (~skip_a[ca]) & present_a[ca] & present_b[cb] & ((cnt_a[ca] >= min_support) | (cnt_b[cb] >= min_support))
    ok &= (sa_ > 0) & (sb_ > 0)
    ca, cb = ca[ok], cb[ok]
    d.n_features_compared = int(len(ca))
    if top and len(ca):
        with np.errstate(divide="ignore", invalid="ignore"):
            key = np.abs(np.log(lift_b[cb]) - np.log(lift_a[ca]))
        key = np.where(np.isnan(key), 0.0, key)  # 0 in both: no move
        order = _rank(key, np.maximum(cnt_a[ca], cnt_b[cb]), ca)[:top]
        d.moved = _moves([fa.keys[i] for i in ca[order]], ca[order], cb[order], sa, sb)

    # in one version only (by field and value), or with no row in the other
    for which in ("b", "a"):
        fx, cnt, lift, skip_x, size = (fb, cnt_b, lift_b, skip_b, sb_) if which == "b" else (fa, cnt_a, lift_a, skip_a, sa_)
        only = fp.only_b if which == "b" else fp.only_a
        absent_other = fp.common_b[~present_a[fp.common_a]] if which == "b" else fp.common_a[~present_b[fp.common_b]]
        idx = np.concatenate([only, absent_other]).astype(np.int64)
        idx = idx[(~skip_x[idx]) & (cnt[idx] >= max(min_support, 1))] if size else idx[:0]
        if not top or not len(idx):
            continue
        with np.errstate(divide="ignore"):
            key = np.abs(np.log(lift[idx]))
        order = _rank(key, cnt[idx], idx)[:top]
        sel = idx[order]
        keys = [fx.keys[i] for i in sel]
        if which == "b":
            d.new_features = _moves(keys, sel, sel, None, sb)
        else:
            d.missing_features = _moves(keys, sel, sel, sa, None)
