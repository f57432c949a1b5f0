"""Predict over shards, and the models ScoreSegment and Evaluate apply (segsrv.engine.predict, merged).

Every model rests on counts over the rows of S (segment AND training rows [AND a target value]); S is
split over the shards like its universe, so each count is the sum of the shards' counts and the
unsharded engine's arithmetic runs on the sums:

* the target (``merged_target``, one round): n_S, the training rows per value (the prior), each
  question's class sizes in S, and the counts that find copies of the target among the evidence;
* a row's evidence (``id``): read from the one shard holding the row (``ShardedSnapshot.shard_of``);
* factorized: each evidence's rows per class in S (one round);
* conjunction: the greedy growth S' = S AND e1 AND ... runs one round per evidence that joins: each
  round counts every undecided evidence within the current S' (a rejected evidence leaves S' as it was,
  so one round decides every evidence up to the next one that joins); the redundancy test's pairs in S
  are one more round when it is needed;
* logistic: the fit's objective and every cross-validation fold's are sums over the distinct evidence
  patterns' rows per class (and per fold: folds go by the id's hash, so each shard knows its rows'
  folds): ``segsrv.engine.sharded.patterns.fit_over_shards`` merges the shards' patterns and counts of
  the rows of S (``target_rows``) and runs the unsharded ``logistic.fit_patterns`` (the same weights;
  the fallback to rows when the patterns are more than PATTERN_MAX_SHARE of them, as unsharded);
* the factorized prior strength's cross-validation: per fold, the held-out rows' counts (one round),
  then each shard scores its held-out rows under every fold's and grid value's model (one round); the
  pooled loss is the sum of the shards' sums (the same choice unless two grid values' losses are
  within rounding of each other).

Fitted models are cached per (build, universe, target, question, S, evidence, base, l2), as the
unsharded ones are; ``sharded_pending_fits`` says what a ScoreSegment would fit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ... import _kernels
from ...errors import QueryError
from ...ops.predict import PredictQuery, Regularisation, ValueProbability
from ...snapshot.reader import Snapshot
from .. import privacy
from ..conditions import bool_to_bitset, feature_bits, tail_mask
from ..relate import count_features
from ..predict import predict_result, prior_choice
from ..predict.conjunction import conjunction_blocked, conjunction_factors, conjunction_order
from ..predict.factorized import PRIOR_GRID, factorized_factors, held_out_loss, lift_weights, prior_of_losses
from ..predict.logistic import CV_FOLDS, FITS, LOGISTIC_LOCK, _digest, class_weights, cv_folds, logistic_factors
from ..predict.target import (base_from_counts, class_feature_counts, class_of_rows, combine_factors,
                              copy_candidates, effective_min_support, evidence_mask, explicit_evidence, is_multi_valued,
                              question_priors, questions, resolve_row, resolve_target, row_evidence)
from .open import MergedUniverse, ShardedSnapshot
from .patterns import fit_over_shards

# what a shard needs to find the target and S: (universe, target field, segment, holdout or None,
# max_target_values); holdout (fraction, seed): the training rows are the others (Evaluate's split)
TargetArgs = tuple


def shard_target(shard: Snapshot, args: TargetArgs):
    """This shard's Target (segsrv.engine.predict.target) of `args`."""
    universe, target, segment, holdout, max_target_values = args
    train = None
    if holdout is not None:
        from ..evaluate import holdout_rows  # (engine.evaluate imports the predict package)

        u = shard.universe(universe)
        train = bool_to_bitset(~holdout_rows(u, float(holdout[0]), holdout[1]), u.n_words)
        _kernels.bitset_and(train, tail_mask(u.n_rows, u.n_words), train)
    return resolve_target(shard, universe, target, segment, train, max_target_values)


def target_part(shard: Snapshot, args: TargetArgs, copy_pairs: list[tuple[int, int]]):
    """(n_S, training rows, training rows per value, each question's rows of S per class, a digest of S,
    the rows with feature f and target value j for each (f, j) of `copy_pairs`)."""
    t = shard_target(shard, args)
    n_Sc = [np.array([_kernels.popcount(_kernels.bitset_and(t.S, c)) for c in classes], dtype=np.int64)
            for classes, _, _ in questions(t)]
    both = [int(_kernels.popcount(_kernels.bitset_and(feature_bits(t.universe, fid), t.value_bits[j])))
            for fid, j in copy_pairs]
    return t.n_S, t.n_U, np.asarray(t.n_U_value, dtype=np.int64), n_Sc, _digest(t.S), both


def counts_part(shard: Snapshot, args: TargetArgs, fids: np.ndarray, question_list: list[int]) -> list[np.ndarray]:
    """For each question of `question_list`: int64[K, len(fids)], the rows of S in each class with each feature."""
    t = shard_target(shard, args)
    out = []
    for qi in question_list:
        SC = [_kernels.bitset_and(t.S, c) for c in questions(t)[qi][0]]
        n_Sc = np.array([_kernels.popcount(b) for b in SC], dtype=np.int64)
        out.append(np.asarray(class_feature_counts(t.universe, SC, n_Sc, fids), dtype=np.int64))
    return out


def within_part(shard: Snapshot, args: TargetArgs, question: int, conj: np.ndarray, fids: np.ndarray):
    """Counts within S' = S AND every feature of `conj`: (|S'|, its rows per class, each feature's rows in
    S', each feature's rows in S' per class [K, len(fids)])."""
    t = shard_target(shard, args)
    u = t.universe
    Sp = t.S.copy()
    for fid in np.asarray(conj).tolist():
        _kernels.bitset_and(Sp, feature_bits(u, int(fid)), Sp)
    n_Sp = int(_kernels.popcount(Sp))
    SpC = [_kernels.bitset_and(Sp, c) for c in questions(t)[question][0]]
    n_Spc = np.array([_kernels.popcount(b) for b in SpC], dtype=np.int64)
    per_class = np.asarray(class_feature_counts(u, SpC, n_Spc, fids), dtype=np.int64)
    total = (np.asarray(count_features(u, Sp, n_Sp, fids)[0], dtype=np.int64) if n_Sp and len(fids)
             else np.zeros(len(fids), np.int64))
    return n_Sp, n_Spc, total, per_class


def pairs_part(shard: Snapshot, args: TargetArgs, fids: np.ndarray) -> np.ndarray:
    """int64[m, m]: the rows of S with both features fids[a] and fids[b]."""
    t = shard_target(shard, args)
    u = t.universe
    out = np.zeros((len(fids), len(fids)), dtype=np.int64)
    for a, fid in enumerate(np.asarray(fids).tolist()):
        with_a = _kernels.bitset_and(t.S, feature_bits(u, int(fid)))
        n_a = int(_kernels.popcount(with_a))
        if n_a:
            out[a] = count_features(u, with_a, n_a, fids)[0]
    return out


def row_part(shard: Snapshot, universe: str, row_id) -> np.ndarray:
    """The feature ids of the row `row_id` (UnknownIdError when this shard lacks it, as unsharded)."""
    u = shard.universe(universe)
    return np.asarray(u.row_features(resolve_row(u, row_id)), dtype=np.int64)


@dataclass
class MergedTarget:
    """The target over shards: its counts summed (as segsrv.engine.predict.target.Target holds them)."""

    sharded: ShardedSnapshot
    merged: MergedUniverse
    args: TargetArgs
    info: object  # the target's FieldInfo in the schema shard
    multi: bool
    n_S: int
    n_U: int
    n_U_value: np.ndarray
    n_Sc: list  # per question: int64[K], the rows of S per class
    digest: str  # of the shards' S bitsets, in shard order: identifies S as the unsharded cache key does
    both: list  # the copy check's counts (copy_candidates of the query's evidence fields)
    _masks: dict = field(default_factory=dict)

    @property
    def schema(self):
        return self.merged.schema

    def map(self, fn, *args) -> list:
        return self.sharded.map(fn, self.args, *args, shards=self.merged.shards)

    def priors(self) -> list[tuple[np.ndarray, list[int]]]:
        return question_priors(self.n_U_value, self.n_U, len(self.info.values), self.multi)

    def evidence_mask(self, evidence_fields) -> np.ndarray:
        """segsrv.engine.predict.target.evidence_mask over the summed counts, of the features the unsharded
        build holds (``MergedUniverse.unsharded_features``: the same model columns)."""
        key = None if evidence_fields is None else tuple(evidence_fields)
        if key not in self._masks:
            self._masks[key] = evidence_mask(self.schema, self.info, self.merged.feature_count, evidence_fields,
                                             lambda pairs: self.both) & self.merged.unsharded_features()
        return self._masks[key]

    def class_feature_counts(self, fids: np.ndarray, question_list: list[int]) -> list[np.ndarray]:
        """Summed `counts_part`: per question, int64[K, len(fids)]."""
        parts = self.map(counts_part, np.asarray(fids, dtype=np.int64), list(question_list))
        return [np.sum([p[i] for p in parts], axis=0) for i in range(len(question_list))]

    def key(self, question: int) -> tuple:
        return (str(self.sharded.path), self.sharded.version, self.merged.name, self.info.name, int(question),
                len(self.n_Sc[question]), self.digest)


def merged_target(sharded: ShardedSnapshot, universe: str | None, target: str, segment, holdout,
                  max_target_values: int, evidence_fields) -> MergedTarget:
    """The target, S and the counts every model starts from, over shards (one round)."""
    merged = sharded.universe(universe)
    schema = merged.schema
    info = schema.fields.get(target) if isinstance(target, str) else None
    # the copy check's pairs come from summed counts (a target the schema lacks: the shards raise its error)
    pairs = copy_candidates(schema, info, merged.feature_count, evidence_fields) if info is not None and \
        len(info.values) <= max_target_values else []
    args = (merged.name, target, segment, holdout, max_target_values)
    parts = sharded.map(target_part, args, pairs, shards=merged.shards)
    n_questions = len(parts[0][3])
    return MergedTarget(
        sharded, merged, args, info, is_multi_valued(info),
        n_S=sum(p[0] for p in parts), n_U=sum(p[1] for p in parts),
        n_U_value=np.sum([p[2] for p in parts], axis=0),
        n_Sc=[np.sum([p[3][q] for p in parts], axis=0) for q in range(n_questions)],
        digest=_digest(np.frombuffer("|".join(p[4] for p in parts).encode(), dtype=np.uint8)),
        both=[sum(p[5][i] for p in parts) for i in range(len(pairs))])


def refuse_train_mask(query) -> None:
    if getattr(query, "train_mask", None) is not None:
        raise QueryError("train_mask: a bitset of one snapshot's rows cannot select rows over shards",
                         [("train_mask", "not over shards")])


# --- Predict ---------------------------------------------------------------------------------------------


def sharded_predict(sharded: ShardedSnapshot, query: PredictQuery, privacy_k: int = 0):
    """segsrv.engine.predict.predict over shards: the same answer (module docstring)."""
    t0 = time.perf_counter()
    query.validate()
    refuse_train_mask(query)
    mt = merged_target(sharded, query.universe, query.target, query.segment, None, query.max_target_values,
                       query.evidence_fields)
    u = mt.schema
    explicit, explicit_fields = explicit_evidence(u, mt.info, query)
    if query.row_id is not None:
        shard = sharded.shard_of(mt.merged.name, query.row_id)
        row_fids = sharded.map(row_part, mt.merged.name, query.row_id, shards=[shard])[0]
        fids = row_evidence(u, row_fids, mt.evidence_mask(query.evidence_fields), explicit, explicit_fields)
    else:
        if query.evidence_fields is not None:
            mt.evidence_mask(query.evidence_fields)  # validates the names
        fids = row_evidence(u, np.zeros(0, np.int64), None, explicit, explicit_fields)
    ev_mask = mt.evidence_mask(query.evidence_fields) if query.method != "conjunction" else None
    priors = mt.priors()
    counts = mt.class_feature_counts(fids, list(range(len(priors))))
    names = [u.feature_name(int(f)) for f in fids]
    out: list[ValueProbability] = []
    regularisation: list[Regularisation] = []
    for qi, (p0, vidx) in enumerate(priors):
        n_Sc, N = mt.n_Sc[qi], counts[qi]
        factors = [[] for _ in n_Sc]
        if query.method == "logistic":
            base = base_from_counts(n_Sc, mt.n_S, p0, float(query.prior_strength))
            intercept, W, reg, inter = merged_logistic_weights(mt, qi, ev_mask, query.l2, base)
            regularisation.append(reg)
            factors = logistic_factors(u, fids, ev_mask, N.sum(axis=0), mt.n_S, intercept, W, inter, base)
        elif query.method == "conjunction":
            base = base_from_counts(n_Sc, mt.n_S, p0, float(query.prior_strength))
            merged_conjunction(mt, qi, base, fids, names, N, factors, query, privacy_k)
        else:
            a, reg = merged_prior(mt, qi, p0, ev_mask, query)
            regularisation.append(reg)
            base = base_from_counts(n_Sc, mt.n_S, p0, a)
            factorized_factors(factors, names, mt.n_S, n_Sc, N, N.sum(axis=0), a)
        factors = privacy.floor_factors(factors, privacy_k)
        probs, norm = combine_factors(base, factors)
        for c, vi in enumerate(vidx):
            out.append(ValueProbability(mt.info.values[vi], float(probs[c]), float(base[c]), factors[c], norm,
                                        int(n_Sc[c])))
    return predict_result(sharded.name, sharded.version, u, mt.info, mt.multi, query.method, mt.n_S, fids, out,
                          regularisation, t0)


def merged_conjunction(mt: MergedTarget, qi: int, base: np.ndarray, fids: np.ndarray, names: list, N: np.ndarray,
                       factors: list, q: PredictQuery, privacy_k: int) -> None:
    """segsrv.engine.predict.conjunction.conjunction_question over shards: the greedy growth one round per
    evidence that joins (module docstring), then the same factors."""
    a = float(q.prior_strength)
    n_S, n_Sc = mt.n_S, mt.n_Sc[qi]
    n_Se = N.sum(axis=0)
    order = conjunction_order(N, n_Sc, n_S, fids)
    min_support = effective_min_support(q, n_S)
    conj: list[int] = []
    backed: list[int] = []
    n_Sp, pos = n_S, 0
    while True:
        ask = backed + order[pos:]  # every evidence not in the conjunction, counted within the current S'
        if conj:
            parts = mt.map(within_part, qi, fids[conj], fids[ask])
            n_Spc = np.sum([p[1] for p in parts], axis=0)
            total = np.sum([p[2] for p in parts], axis=0)
            per_class = np.sum([p[3] for p in parts], axis=0)
        else:  # S' = S: the counts are N's
            n_Spc, total, per_class = n_Sc, n_Se[ask], N[:, ask]
        first = len(backed)
        joined = False
        for j in range(pos, len(order)):
            col = first + j - pos
            k = int(total[col])
            if k >= min_support and privacy_k > 1 and conjunction_blocked(n_S, n_Sc, k, per_class[:, col], privacy_k):
                k = -1
            if k >= min_support:
                conj.append(order[j])
                n_Sp, pos, joined = k, j + 1, True
                break
            backed.append(order[j])
        if not joined:  # every evidence decided: `ask` was the backed-off evidence, counted within the final S'
            Np = per_class
            break
    pairs: dict = {}

    def co_counts(i: int, used: list[int]) -> np.ndarray:
        if not pairs:  # one round: the pairs in S of every backed-off evidence seen in S
            seen = [b for b in backed if n_Se[b] > 0]
            pairs["index"] = {b: x for x, b in enumerate(seen)}
            pairs["n"] = np.sum(mt.map(pairs_part, fids[seen]), axis=0)
        index = pairs["index"]
        return pairs["n"][index[i], [index[b] for b in used]]

    conjunction_factors(factors, names, base, a, n_S, n_Sc, N, n_Se, conj, backed, n_Sp, n_Spc, Np, q, co_counts)


# --- the factorized model's prior strength ------------------------------------------------------------------


def _held_rows(t, question: int):
    """(rows of S, their class, their fold) in this shard."""
    u = t.universe
    rows, y = class_of_rows(t.S, questions(t)[question][0], u.n_rows)
    return rows, y, cv_folds(u, rows)


def prior_fold_part(shard: Snapshot, args: TargetArgs, question: int, fids: np.ndarray):
    """Per cross-validation fold: (held-out rows [k], held-out rows per class [k, K], held-out rows per class
    with each feature [k, K, len(fids)]); and each class's rows with each feature in S [K, len(fids)]."""
    t = shard_target(shard, args)
    u = t.universe
    classes = questions(t)[question][0]
    K = len(classes)
    rows, y, folds = _held_rows(t, question)
    n_test = np.zeros(CV_FOLDS, np.int64)
    n_c = np.zeros((CV_FOLDS, K), np.int64)
    n_ce = np.zeros((CV_FOLDS, K, len(fids)), np.int64)
    for f in range(CV_FOLDS):
        test = rows[(folds == f) & (y >= 0)]
        n_test[f] = len(test)
        held = _kernels.ids_to_bitset(test.astype(np.uint32), u.n_words)
        HC = [_kernels.bitset_and(held, c) for c in classes]
        n_c[f] = [_kernels.popcount(b) for b in HC]
        n_ce[f] = class_feature_counts(u, HC, n_c[f], fids)
    SC = [_kernels.bitset_and(t.S, c) for c in classes]
    total = class_feature_counts(u, SC, np.array([_kernels.popcount(b) for b in SC]), fids)
    return n_test, n_c, n_ce, np.asarray(total, dtype=np.int64)


def prior_loss_part(shard: Snapshot, args: TargetArgs, question: int, models: dict) -> dict:
    """{fold: [held-out loss of each model]}: this shard's held-out rows of each fold scored by that fold's
    models (log base, W) (`factorized.held_out_loss`)."""
    t = shard_target(shard, args)
    rows, y, folds = _held_rows(t, question)
    out = {}
    for f, fold_models in models.items():
        test = rows[(folds == f) & (y >= 0)]
        y_test = y[np.searchsorted(rows, test)]
        out[f] = [held_out_loss(t.universe, lb, W, test, y_test) if len(test) else 0.0 for lb, W in fold_models]
    return out


PRIOR_CACHE: "OrderedDict[tuple, float]" = OrderedDict()
FIT_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()  # (intercept, W, Interactions, l2) per model and l2
L2_CACHE: "OrderedDict[tuple, float]" = OrderedDict()
CACHE_SIZE = 32
_LOCK = threading.Lock()


def _remember(cache: OrderedDict, key, value) -> None:
    with _LOCK:
        cache[key] = value
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)


def _recall(cache: OrderedDict, key):
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    return None


def merged_prior(mt: MergedTarget, qi: int, p0: np.ndarray, ev_mask: np.ndarray, query) -> tuple[float, Regularisation]:
    """segsrv.engine.predict.factorized_prior over shards."""
    return prior_choice(query, mt.info.values[qi] if mt.multi else None,
                        lambda: merged_prior_strength(mt, qi, p0, ev_mask))


def merged_prior_strength(mt: MergedTarget, qi: int, p0: np.ndarray, ev_mask: np.ndarray, grid=PRIOR_GRID) -> float:
    """factorized.choose_prior_strength over shards: the folds' lifts from summed counts, the held-out loss
    pooled from the shards' sums."""
    key = mt.key(qi) + (_digest(ev_mask, p0), "prior")
    hit = _recall(PRIOR_CACHE, key)
    if hit is not None:
        return hit
    best = 1.0
    if mt.n_S >= 2:
        fids = np.flatnonzero(ev_mask).astype(np.int64)
        parts = mt.map(prior_fold_part, qi, fids)
        n_test, n_c, n_ce, total = (np.sum([p[i] for p in parts], axis=0) for i in range(4))
        n_Sc = mt.n_Sc[qi]
        models = {}
        for f in range(CV_FOLDS):
            if n_test[f] == 0 or n_test[f] == mt.n_S:
                continue
            n_Sc_f, n_S_f, N_f = n_Sc - n_c[f], mt.n_S - int(n_test[f]), total - n_ce[f]
            models[f] = [lift_weights(mt.schema.n_features, fids, N_f, n_Sc_f, n_S_f,
                                      base_from_counts(n_Sc_f, n_S_f, p0, float(a)), float(a)) for a in grid]
        losses = mt.map(prior_loss_part, qi, models)
        loss = np.zeros(len(grid))
        for f in models:
            for j in range(len(grid)):
                loss[j] += float(sum(part[f][j] for part in losses))
        best = prior_of_losses(loss, grid)
    _remember(PRIOR_CACHE, key, best)
    return best


# --- the logistic model ----------------------------------------------------------------------------------


def target_rows(shard: Snapshot, args: TargetArgs, question: int):
    """The logistic fit's rows in this shard (segsrv.engine.sharded.patterns' `rows_of`): (universe, the rows
    of S, each one's class of question `question`, the question's number of classes)."""
    t = shard_target(shard, args)
    classes = questions(t)[question][0]
    rows, y = class_of_rows(t.S, classes, t.universe.n_rows)
    return t.universe, rows, y, len(classes)


def merged_logistic_weights(mt: MergedTarget, qi: int, ev_mask: np.ndarray, l2, base: np.ndarray):
    """segsrv.engine.predict.logistic.logistic_weights over shards: (intercepts[K], W[K, n_features], the
    Regularisation, Interactions), fitted once per model and cached (module docstring)."""
    K = len(mt.n_Sc[qi])
    value = mt.info.values[qi] if mt.multi else None
    cv = l2 is None
    key = mt.key(qi) + (_digest(ev_mask, base),)
    if cv:
        l2 = _recall(L2_CACHE, key)
    hit = _recall(FIT_CACHE, key + (float(l2),)) if l2 is not None else None
    if hit is None:
        with LOGISTIC_LOCK:
            FITS[0] += 1
        fids = np.flatnonzero(ev_mask).astype(np.int64)
        present = np.flatnonzero(mt.n_Sc[qi] > 0)

        def fit(Kp: int, l2_fit):
            return fit_over_shards(mt.sharded, mt.merged.shards, target_rows, (mt.args, qi), fids, present, l2_fit)

        intercept, W, inter, l2 = class_weights(K, mt.schema.n_features, fids, base, present, l2, fit)
        hit = (intercept, W, inter, float(l2))
        _remember(FIT_CACHE, key + (float(l2),), hit)
        if cv:
            _remember(L2_CACHE, key, float(l2))
    intercept, W, inter, l2 = hit
    return intercept, W, Regularisation(float(l2), cv, value, len(inter)), inter


def logistic_fit_pending(mt: MergedTarget, qi: int, ev_mask: np.ndarray, l2, base: np.ndarray):
    """`logistic.pending_fit` over shards: None when the model is cached; else (l2 still to be
    cross-validated, the l2 when known)."""
    key = mt.key(qi) + (_digest(ev_mask, base),)
    known = l2 if l2 is not None else _recall(L2_CACHE, key)
    if known is not None and _recall(FIT_CACHE, key + (float(known),)) is not None:
        return None
    return known is None, known


def merged_bulk_weights(mt: MergedTarget, qi: int, p0: np.ndarray, ev_mask: np.ndarray, query):
    """segsrv.engine.predict.bulk_weights over shards: (log base or intercepts[K], W[K, n_features], the
    Regularisation, Interactions or None) of a ScoreSegment's or Evaluate's bulk method."""
    n_Sc = mt.n_Sc[qi]
    if query.method == "logistic":
        base = base_from_counts(n_Sc, mt.n_S, p0, float(query.prior_strength))
        return merged_logistic_weights(mt, qi, ev_mask, None if query.l2 is None else float(query.l2), base)
    a, reg = merged_prior(mt, qi, p0, ev_mask, query)
    fids = np.flatnonzero(ev_mask).astype(np.int64)
    N = mt.class_feature_counts(fids, [qi])[0]
    return (*lift_weights(mt.schema.n_features, fids, N, n_Sc, mt.n_S, base_from_counts(n_Sc, mt.n_S, p0, a), a),
            reg, None)


