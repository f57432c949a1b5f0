"""ScoreSegment over shards, and the ranking of a targeted Export.

The model is fitted once over the shards (``predict.merged_bulk_weights``: the same weights as the
unsharded snapshot's); then each shard scores its members of the segment and answers its member count,
its scores' sum and its own top K as (id, score) (row numbers differ from shard to shard; ids do not).
The merge keeps the global top K with the unsharded tie-break, score descending then row: rows are in
id order in every build, so the row order is the id order. Without top_k every member is returned in
row order (id order). The mean score is the sum of the shards' sums over the members (to rounding:
the unsharded mean sums every score at once).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ... import _kernels
from ...ops.score import ScoreQuery, ScoreResult
from ...snapshot.reader import Snapshot
from ..conditions import All, evaluate
from ..predict import pending_sentence, top_scores
from ..predict.factorized import class_log_scores, softmax
from ..predict.target import base_from_counts
from .open import ShardedSnapshot
from .predict import MergedTarget, logistic_fit_pending, merged_bulk_weights, merged_target, refuse_train_mask


def score_part(shard: Snapshot, universe: str, segment, log_base: np.ndarray, W: np.ndarray, interactions,
               column: int, top_k: int):
    """(members of the segment, the sum of their scores, the ids and scores of this shard's top K: score
    descending then row; every member in row order when top_k is 0)."""
    u = shard.universe(universe)
    members = _kernels.bitset_to_ids(evaluate(shard, u, segment if segment is not None else All()), u.n_rows)
    probs = (softmax(class_log_scores(u, log_base, W, members, interactions))[:, column] if len(members)
             else np.zeros(0))
    rows, scores = top_scores(members.astype(np.int64), probs, top_k)
    return len(members), float(probs.sum()), u.row_ids[rows], scores


def python_ids(raw: np.ndarray, key_kind: str) -> list:
    """Ids as Universe.ids_for_rows gives them: int for an integer key, text otherwise."""
    if key_kind == "int":
        return [int(v) for v in raw]
    return [bytes(v).decode("utf-8") for v in raw]


def _score_question(mt: MergedTarget, value) -> tuple[int, int, int]:
    """(question, class column, value index) of a ScoreSegment's value (UnknownValueError as unsharded)."""
    vi = mt.info.value_index(str(value))
    return (vi, 0, vi) if mt.multi else (0, vi, vi)


def _target(sharded: ShardedSnapshot, query: ScoreQuery) -> MergedTarget:
    query.validate()
    refuse_train_mask(query)
    return merged_target(sharded, query.universe, query.target, query.segment, None, query.max_target_values,
                         query.evidence_fields)


def sharded_score_segment(sharded: ShardedSnapshot, query: ScoreQuery) -> ScoreResult:
    """segsrv.engine.predict.score_segment over shards (module docstring); the result holds ids, not rows."""
    t0 = time.perf_counter()
    mt = _target(sharded, query)
    question, column, vi = _score_question(mt, query.value)
    p0 = mt.priors()[question][0]
    ev_mask = mt.evidence_mask(query.evidence_fields)
    log_base, W, reg, inter = merged_bulk_weights(mt, question, p0, ev_mask, query)
    parts = sharded.map(score_part, mt.merged.name, query.segment, log_base, W, inter, column, int(query.top_k),
                        shards=mt.merged.shards)
    n_members = sum(p[0] for p in parts)
    mean = sum(p[1] for p in parts) / n_members if n_members else math.nan
    ids = np.concatenate([p[2] for p in parts])
    scores = np.concatenate([p[3] for p in parts]).astype(np.float64)
    if query.top_k:
        order = np.lexsort((ids, -scores))[: int(query.top_k)]
    else:
        order = np.argsort(ids, kind="stable")
    u = mt.schema
    return ScoreResult(sharded.name, sharded.version, u.name, mt.info.name, mt.info.values[vi],
                       np.full(len(order), -1, dtype=np.int64), scores[order], n_members, mean,
                       (time.perf_counter() - t0) * 1e3, None, _ids=python_ids(ids[order], u.key_kind),
                       regularisation=reg)


def sharded_pending_fits(sharded: ShardedSnapshot, query: ScoreQuery) -> list[str]:
    """segsrv.engine.predict.pending_fits over shards: the logistic model a ScoreSegment (or a ranked
    export) would fit first, as a sentence; [] when it is cached (or nothing is fitted). Counts the
    target over the shards (one round), fits nothing."""
    if query.method != "logistic":
        query.validate()
        return []
    mt = _target(sharded, query)
    question, _, _ = _score_question(mt, query.value)
    n_Sc = mt.n_Sc[question]
    if int((n_Sc > 0).sum()) < 2:
        return []
    base = base_from_counts(n_Sc, mt.n_S, mt.priors()[question][0], float(query.prior_strength))
    ev_mask = mt.evidence_mask(query.evidence_fields)
    pending = logistic_fit_pending(mt, question, ev_mask, None if query.l2 is None else float(query.l2), base)
    if pending is None:
        return []
    return [pending_sentence(mt.info, mt.multi, question, len(n_Sc), mt.n_S, int(ev_mask.sum()), *pending)]


def sharded_ranked_rows(sharded: ShardedSnapshot, query) -> tuple[list, np.ndarray, int]:
    """A targeted Export (ExportQuery with a target) over shards: (the ids ranked by the probability of the
    value, best first, top_k of them when given; their scores; the members of the condition). The same
    ranking as the unsharded export (segsrv.engine.export: ScoreSegment of its ranking_query)."""
    from ..export import ranking_query  # (engine.export imports the predict package)

    result = sharded_score_segment(sharded, ranking_query(query))
    return result.ids, result.scores, int(result.n_members)
