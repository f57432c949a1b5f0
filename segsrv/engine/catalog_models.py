"""Catalog propensity models fitted ahead: ``segsrv segments apply`` fits them, the snapshot stores them.

The default propensity of Assign (segsrv.engine.assign) is the logistic method's membership model of
each catalog segment: classes member / non-member over every row of the universe, evidence = every
feature but those of the fields the segment's condition mentions, fitted by ``logistic.fit_rows``, the
fit of Predict, ScoreSegment and Evaluate (``fit_membership``): an L2 logistic regression with the
objective of ``logistic.fit_counts`` (scikit-learn's with C = 1 / l2, intercept unpenalised), l2
chosen by ``logistic.choose_l2`` over the folds ``logistic.cv_folds`` unless the caller fixes it, and
with a cross-validated l2 the pairwise interactions tried as Predict's are
(segsrv.engine.predict.interactions; kept only when they pass the same held-out bar). The
membership logit of a row is bias + the sum of d[f] over its features + the weight of each of the
model's pairs whose two features the row has.

``apply_segments`` (segsrv.engine.catalog) fits the cross-validated model of every segment of the
applied catalog (``fit_catalog_models``) and stores one file per segment in the new version,
``models/catalog/<universe>/<key digest>.bin``: float64[1, 1 + n_features + n_pairs], column 0 the
bias, then one weight per feature of the universe, then one per pair (the layout of the declared
Predict models, segsrv.engine.predict.models). The manifest's ``catalog_models`` section maps universe
-> segment -> {"key", "file", "l2", "cross_validated", "members", "evidence_features", "pairs"}
("pairs": [[feature a, feature b, rows with both], ...], a < b, the order of the file's pair
columns; the reader checks them against the universe and the file's width); the files are data files
(listed with their checksums, verified at every open, read-only). The *content key* (``content_key``)
names what the coefficients depend on: the data version, the universe with its rows and features, a
digest of the segment's member bitset (its condition as evaluated), a digest of the evidence mask and
l2 ("cv+pairs" when cross-validated: the pairs are tried then). A segment whose key is unchanged since the base version (the same
condition over the same data) reuses the base's file (a hard link): nothing is refitted.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..snapshot import format as fmt

METHOD = "catalog-logistic"
FITTED_KEPT = 256  # segment models this process keeps by content key (a few KB each)
_FITTED: "OrderedDict[tuple, tuple]" = OrderedDict()  # content key -> fit_membership's tuple
_FITTED_LOCK = threading.Lock()
SECTION = "catalog_models"  # the manifest's section
DIR = "models/catalog"
CV_MARK = "cv+pairs"  # a cross-validated model's mark in its content key ("cv": an older segsrv's, no pairs)


def digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8).tobytes(), digest_size=16).hexdigest()


def data_version(snapshot) -> str:
    """The version of a snapshot's data files (unchanged by catalog changes)."""
    m = snapshot.manifest
    return str(m.get("data_version", m["version"]))


def content_key(data_ver: str, universe: str, n_rows: int, n_features: int, member_digest: str, evidence_digest: str,
                l2: float | None) -> tuple:
    """What identifies a segment's fitted membership model across processes and versions."""
    return (METHOD, str(data_ver), universe, int(n_rows), int(n_features), member_digest, evidence_digest,
            CV_MARK if l2 is None else float(l2))


def file_of(u, key: tuple) -> str:
    return f"{DIR}/{u.name}/{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.bin"


def constant_bias(n1: int, n: int, a: float = 1.0) -> float:
    """The membership logit of a segment without a model (no member, or every row): the smoothed base
    rates of the factorized model, log((n1 + a p1) / (n - n1 + a p0)), p1 = (n1 + 1) / (n + 2)."""
    p1 = (n1 + 1.0) / (n + 2.0)
    return math.log((n1 + a * p1) / (n - n1 + a * (1.0 - p1)))


def fitted(key: tuple):
    """The model this process fitted under a content key (`fit_membership`'s tuple), or None."""
    with _FITTED_LOCK:
        hit = _FITTED.get(key)
        if hit is not None:
            _FITTED.move_to_end(key)
        return hit


def keep_fitted(key: tuple, model: tuple) -> None:
    with _FITTED_LOCK:
        _FITTED[key] = model
        while len(_FITTED) > FITTED_KEPT:
            _FITTED.popitem(last=False)


def fit_membership(u, member: np.ndarray, ev_mask: np.ndarray, l2: float | None,
                   rows: np.ndarray | None = None, interactions: bool = True) -> tuple:
    """The logistic membership model over `rows` (default: every row of the universe); `member`:
    bool[n_rows] of the universe. -> (bias, d float64[n_features], l2 used, cross-validated,
    Interactions with weights [1, n_pairs]: the pairs the fit kept, none when l2 is given or without
    `interactions`, the main effects alone, for comparison: bench/assign_propensity.py).
    Without both classes among the rows: the constant model (d = 0) and l2 the fallback (or the one given)."""
    from .predict.logistic import fit_rows

    rows = np.arange(u.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    y = np.asarray(member, dtype=bool)[rows].astype(np.int64)
    return membership_model(int(y.sum()), len(y), u.n_features, ev_mask, l2,
                            lambda fids: fit_rows(u, rows, y, 2, fids, l2, interactions=interactions))


def membership_model(n1: int, n: int, n_features: int, ev_mask: np.ndarray, l2: float | None, fit) -> tuple:
    """`fit_membership`'s tuple for a segment of n1 members among the fit's n rows, from fit(evidence feature
    ids) -> `logistic.fit_rows`' answer over those rows (class 1: member; not called without both classes):
    over one snapshot's rows, or over a sharded one's from the shards' pattern counts
    (segsrv.engine.sharded.catalog)."""
    from .predict.interactions import none as no_pairs
    from .predict.logistic import L2_FALLBACK

    d = np.zeros(n_features)
    if n1 == 0 or n1 == n:
        return constant_bias(n1, n), d, float(L2_FALLBACK if l2 is None else l2), l2 is None, no_pairs(1)
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    b, w, used, pairs = fit(fids)
    d[fids] = w[0]
    return float(b[0]), d, used, l2 is None, pairs


def fit_catalog_models(catalog, staging: Path, base, say) -> tuple[dict, set]:
    """Fit (or reuse from the `base` Snapshot) the default logistic model of every segment of the compiled
    catalogs (universe -> CompiledCatalog of the new catalog) and write the files into `staging`.
    -> (the manifest's catalog_models section, the relative paths written or linked)."""
    section: dict = {}
    written: set = set()
    for uname, cat in sorted(catalog.items()):
        u = cat.universe
        out = section.setdefault(uname, {})
        for i, seg in enumerate(cat.segments):
            t0 = time.perf_counter()
            key = cat.content_key(i, None)
            rel = file_of(u, key)
            ev = int(cat.evidence_mask(i).sum())
            old = base.universes[uname].stored_models.get(key) if uname in base.universes else None
            if old is not None:
                old = old[1]
                if rel not in written:
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.link(base.path / old["file"], staging / rel)  # the same bytes: share them
                entry = dict(old, file=rel)
                how = "reused (unchanged)"
            else:
                bias, d, l2, cv, pairs = cat.fit_logistic(i, None)  # or this process's earlier fit of the same key
                if rel not in written:
                    coef = np.concatenate([[bias], d, pairs.weights[0]])[None, :].astype(np.float64)
                    fmt.write_array(staging / rel, coef)
                entry = {"key": list(key), "file": rel, "l2": l2, "cross_validated": cv, "members": int(seg.size),
                         "evidence_features": ev,
                         "pairs": [[int(a), int(b), int(n)] for (a, b), n in zip(pairs.pairs, pairs.support)]}
                how = "fitted"
            written.add(rel)
            out[seg.name] = entry
            say(f"propensity model {uname}/{seg.name}: {seg.size:,} of {cat.n_rows:,} rows, {ev:,} evidence "
                f"features, {len(entry.get('pairs', [])):,} pairs, l2 {entry['l2']:.4g}, {how} ({time.perf_counter() - t0:.2f} s)")
    return section, written
