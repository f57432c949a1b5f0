"""Evaluate over shards: the holdout, the model and every statistic of the unsharded Evaluate.

A row is held out by a hash of its id (segsrv.engine.evaluate), so each shard knows its own test rows
and its training rows; the model is fitted on the training rows over all shards
(``predict.merged_bulk_weights``: the unsharded model, bit for bit). Each shard scores its test rows
and sends (id, true value, probabilities, log-probabilities) of each; the router puts them in row (id)
order and computes accuracy, log-loss, mean rank, AUC and calibration with the unsharded code
(``evaluate.evaluation``): the same numbers. Under max_test_rows the rows of the smallest hash are kept,
as unsharded: each shard sends its test rows' hashes first (one round, which also counts them; two ids
of equal 64-bit hash in different shards would be kept in shard order, not row order). The conjunction method
(one greedy search per test row) is not answered over shards.
"""

from __future__ import annotations

import time

import numpy as np

from ... import _kernels
from ...errors import QueryError
from ...ops.evaluate import EvaluateQuery, EvaluateResult
from ...snapshot.reader import Snapshot
from ..conditions import bool_to_bitset
from ..evaluate import (bulk_probabilities, evaluation, held_out_rows, holdout_rows, keep_hash, refuse_multi_valued,
                        refuse_no_test_rows, row_cap, true_values)
from .open import ShardedSnapshot
from .predict import TargetArgs, merged_bulk_weights, merged_target, shard_target


def _test_rows(shard: Snapshot, args: TargetArgs):
    """(the shard's Target, its test rows: members of the segment held out with a target value, row order)."""
    t = shard_target(shard, args)
    u = t.universe
    hold = bool_to_bitset(holdout_rows(u, float(args[3][0]), args[3][1]), u.n_words)
    test_bits = _kernels.bitset_and(t.segment, hold)
    _kernels.bitset_and(test_bits, t.has_target, test_bits)
    return t, held_out_rows(u, test_bits, None)


def test_hash_part(shard: Snapshot, args: TargetArgs) -> np.ndarray:
    """The keep-hash (evaluate.keep_hash) of each of this shard's test rows, in row order."""
    t, rows = _test_rows(shard, args)
    return keep_hash(t.universe, rows)


def evaluate_part(shard: Snapshot, args: TargetArgs, keep: np.ndarray | None, log_base: np.ndarray, W: np.ndarray,
                  interactions):
    """This shard's test rows (those at the positions `keep` of its test rows, or all): (their ids, true value
    index, probabilities [n, K], log-probabilities [n, K]) under the model (log_base, W, interactions)."""
    t, rows = _test_rows(shard, args)
    if keep is not None:
        rows = rows[keep]
    probs, log_probs = bulk_probabilities(t.universe, log_base, W, interactions, rows)
    return t.universe.row_ids[rows], true_values(t, rows), probs, log_probs


def sharded_evaluate(sharded: ShardedSnapshot, query: EvaluateQuery) -> EvaluateResult:
    """segsrv.engine.evaluate.evaluate over shards (module docstring); `test_rows` are -1 (rows are a shard's)."""
    t0 = time.perf_counter()
    query.validate()
    holdout = (float(query.holdout_fraction), query.seed)
    mt = merged_target(sharded, query.universe, query.target, query.segment, holdout, query.max_target_values,
                       query.evidence_fields)
    refuse_multi_valued(mt.info, mt.multi)
    if query.method == "conjunction":
        raise QueryError("method: 'conjunction' is not answered over shards (a greedy search per test row, each "
                         "a round over the shards); use 'logistic' or 'factorized' (docs/scale.md)",
                         [("method", "conjunction over shards")])
    keep: list = [None] * len(mt.merged.shards)
    cap = row_cap(query)
    hashes = mt.map(test_hash_part)  # (also the test rows' count: an empty test set is refused before the fit)
    n_test = sum(len(h) for h in hashes)
    if cap is not None and n_test > cap:  # the cap smallest hashes over all shards, as unsharded
        owner = np.concatenate([np.full(len(h), i) for i, h in enumerate(hashes)])
        position = np.concatenate([np.arange(len(h)) for h in hashes])
        chosen = np.argsort(np.concatenate(hashes), kind="mergesort")[:cap]
        keep = [np.sort(position[chosen[owner[chosen] == i]]) for i in range(len(hashes))]
    refuse_no_test_rows(min(n_test, cap) if cap is not None else n_test)
    ev_mask = mt.evidence_mask(query.evidence_fields)
    p0 = mt.priors()[0][0]
    log_base, W, reg, inter = merged_bulk_weights(mt, 0, p0, ev_mask, query)
    parts = sharded.map_each(evaluate_part, {s: (mt.args, k, log_base, W, inter)
                                             for s, k in zip(mt.merged.shards, keep)})
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")  # row order: id order
    true_index = np.concatenate([p[1] for p in parts])[order]
    K = len(mt.info.values)
    probs = np.concatenate([p[2].reshape(-1, K) for p in parts])[order]
    log_probs = np.concatenate([p[3].reshape(-1, K) for p in parts])[order]
    return evaluation(sharded.name, sharded.version, mt.merged.name, mt.info.name, query.method, list(mt.info.values),
                      mt.n_S, np.full(len(order), -1, dtype=np.int64), true_index, probs, log_probs, mt.n_Sc[0], reg,
                      t0)
