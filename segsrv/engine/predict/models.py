"""Models declared ahead and fitted ahead: a request on a declared model never fits.

A build spec declares models (``[models.NAME]``: universe, target, optional segment, evidence
fields, l2, prior strength; docs/spec.md). ``segsrv build`` fits each with the logistic method, the
way a request would (``fit_declared_models``: the same ``logistic_weights``, cross-validated l2
unless the declaration fixes it), and stores one file per question in the version,
``models/NAME/q<i>.bin``: float64[K, 1 + n_features + n_pairs], column 0 the intercepts, then one weight
per feature of the universe, then one weight per interaction pair (segsrv.engine.predict.interactions),
whose features and support the question's manifest entry lists in the same order
(``"pairs": [[feature a, feature b, rows of S with both], ...]``, feature ids of the universe). The manifest's ``models`` section names each file with its *content key*
(``content_key``): the method, universe, rows and features of the universe, target, question, classes,
a digest of the rows of S, the evidence features and the base probabilities, and l2 (``"cv"`` when
cross-validated). Model files are data files: listed with their checksums, verified at every open,
read-only, hard-linked into catalog versions (``segsrv segments apply``) as the other data files are.

A request whose model has the same content key (the same target, segment, evidence fields, prior
strength and l2 over the same data) takes the stored coefficients: its first call costs what every
later call does. Any other request fits on demand, as before (``fits`` counts those fits).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...errors import SegsrvError, SpecError
from ...snapshot import format as fmt
from ...snapshot.reader import open_snapshot
from ...ops.predict import PredictQuery

METHOD = "logistic"


def content_key(t, question: int, K: int, digest: str, l2: float | None) -> tuple:
    """What identifies a fitted model across processes and versions (never an object id or a path)."""
    u = t.universe
    return (METHOD, u.name, int(u.n_rows), int(u.n_features), t.info.name, int(question), int(K), digest,
            "cv" if l2 is None else float(l2))


def stored_pairs(entry: dict, K: int, coef: np.ndarray | None = None):
    """The Interactions of a stored question entry (weights: coef's columns after 1 + n_features)."""
    from .interactions import Interactions

    table = np.asarray(entry.get("pairs", []), dtype=np.int64).reshape(-1, 3)
    n = len(table)
    weights = coef[:, coef.shape[1] - n:] if coef is not None and n else np.zeros((K, 0))
    return Interactions(table[:, :2].copy(), weights, table[:, 2].copy())


def stored_model(t, key: tuple):
    """(intercept[K], W[K, n_features], l2 used, Interactions) stored in the snapshot for `key`, or None."""
    u = t.universe
    hit = getattr(u, "stored_models", {}).get(key)
    if hit is None:
        return None
    coef, entry = hit
    F = int(u.n_features)
    return coef[:, 0], coef[:, 1:1 + F], float(entry["l2"]), stored_pairs(entry, coef.shape[0], coef)


def fit_declared_models(vdir: Path, declarations: dict[str, dict], say) -> dict:
    """Fit every declared model on the finished data in `vdir`, write its files there, and return the
    manifest's "models" section. A declaration the engine refuses is a SpecError naming the model."""
    from .logistic import logistic_weights
    from .target import base_probabilities, evidence_feature_mask, questions, resolve_target

    snap = open_snapshot(vdir)
    section = {}
    for name, decl in sorted(declarations.items()):
        t0 = time.perf_counter()
        try:
            q = PredictQuery.from_json({**decl, "method": METHOD})
            t = resolve_target(snap, q.universe, q.target, q.segment, q.train_mask, q.max_target_values)
            ev_mask = evidence_feature_mask(t, q.evidence_fields)
        except SegsrvError as exc:
            raise SpecError(f"models.{name}: {exc.message}") from None
        u = t.universe
        entries = []
        for qi, (classes, p0, vidx) in enumerate(questions(t)):
            _, _, base = base_probabilities(t.S, t.n_S, classes, p0, float(q.prior_strength))
            intercept, W, reg, inter, key = logistic_weights(t, classes, ev_mask,
                                                             None if q.l2 is None else float(q.l2), qi, base,
                                                             with_key=True)
            rel = f"models/{name}/q{qi}.bin"
            fmt.write_array(vdir / rel, np.column_stack([np.asarray(intercept, np.float64), np.asarray(W, np.float64),
                                                         np.asarray(inter.weights, np.float64)]))
            entries.append({"key": list(key), "file": rel, "l2": float(reg.l2),
                            "cross_validated": bool(reg.cross_validated), "value": reg.value,
                            "pairs": [[int(a), int(b), int(n)] for (a, b), n in zip(inter.pairs.tolist(),
                                                                                    inter.support.tolist())]})
        section[name] = {"universe": u.name, "target": t.info.name, "method": METHOD, "declaration": decl,
                         "n_segment": int(t.n_S), "questions": entries}
        chosen = ", ".join(f"{e['l2']:.4g}" + (f" with {len(e['pairs'])} pairs" if e["pairs"] else "")
                           for e in entries)
        say(f"model {name}: {t.info.name} in {u.name} over {t.n_S:,} rows, {int(ev_mask.sum()):,} evidence "
            f"features, {len(entries)} question(s), l2 {chosen} ({time.perf_counter() - t0:.1f} s)")
    return section


WARM_CALLS = 3  # answers per stored model before serving (CPython specialises a function's code after a few calls)


def warm_models(snapshot, answer=None) -> int:
    """Answer each stored model's question WARM_CALLS times for one customer (by id: the evidence path a
    request takes) and once without evidence, before the version is served, so that the first request
    reads pages, builds per-version lookups and runs specialised bytecode no sooner than any later one.
    answer: runs a query as a request would (the server passes its service's `call`, so the service
    layer is warmed too); default: the engine's predict. Returns the number of models; never fits
    (their coefficients are stored)."""
    from . import predict

    run = answer if answer is not None else (lambda q: predict(snapshot, q))
    models = getattr(snapshot, "models", {})
    for _, model in sorted(models.items()):
        query = {**model["declaration"], "method": METHOD}
        run(PredictQuery.from_json(query))
        u = snapshot.universes.get(model["universe"])
        if u is not None and u.n_rows:
            by_id = PredictQuery.from_json({**query, "id": u.ids_for_rows([0])[0]})
            for _ in range(WARM_CALLS):
                run(by_id)
    return len(models)
