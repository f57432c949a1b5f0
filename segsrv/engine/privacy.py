"""The privacy floor: no answer states, or lets one subtract or multiply back, a count of 1..k-1 rows.

A count c is *small* when 0 < c < k (k = the floor; k <= 1 turns the floor off). Zero is not
small: "nobody" is revealed. The floor is a property of each answer, taken alone: an answer is a
set of counts and of numbers derived from them (shares, rates, lifts, probabilities, p-values);
every count it determines -- stated, or recovered from its numbers by the documented formulas
(a share times a stated count, a base probability times the segment count, a rate times a bin's
count), or the difference of two such counts over nested row sets (a complement within the
universe, a condition minus a support) -- is 0 or at least k. Where exact numbers would determine a
small count the answer is coarsened (a part left out, a count reported as 0, a factor made 1, bins
merged) and marked, or refused; where no small count is involved the answer is exact and unchanged.

The counts involved, per answer (n = rows of the universe):

* one count c of a universe (Count; a catalog segment's size in ListSegments and Assign; a value's
  count in GetSnapshotInfo; a segment Predict / ScoreSegment / Evaluate / ExportMembers is about):
  c and n - c (``small_in``);
* a 2x2 table of two row sets A, B over n rows (Relate: the condition and a hit's feature; Profile:
  the segment and a value; a Predict factor: a class and an evidence within its context; an Assign
  propensity: a segment and a feature): the four cells ab, a - ab, b - ab, n - a - b + ab and the
  margins a, n - a, b, n - b (``table_small``);
* the counts of a partition (the values of a single-valued field; the rows of a partition of a
  segment): each count, and the rest of the total after the counts stated (``floor_partition``).

What happens, per answer:

Coarsened (the answer is still given, marked):
  * Count: a count c with c or n - c small is reported as 0 with ``suppressed = true``.
  * Relate: a condition C with |C| or n - |C| small gives no hits, ``condition_count`` 0 and
    ``suppressed = true``; a hit whose table (C, feature) has a small cell or margin is left out and
    counted in ``suppressed_hit_count`` (the search counts only supports of at least k, so ``limit``
    still fills up).
  * Profile: a segment S with |S| or n - |S| small gives no profiles and ``suppressed = true``; a value
    whose table (S, value) has a small cell or margin is left out; for a single-valued field, values
    are then left out (fewest rows first) until |S| and n minus the listed counts are not small; a
    numeric field whose table (S, rows with a value) has a small cell or margin is left out; numeric
    min and max (single rows' values) are NaN; a field's strength is recomputed from the values
    listed. Values and numeric fields left out are counted in ``suppressed_value_count``.
  * ListSegments, Assign: a catalog segment's size s with s or n - s small is reported as 0 (share 0).
    GetSnapshotInfo: a value count c with c or n - c small is reported as 0, and per single-valued
    field further counts (fewest rows first) until n minus the stated counts is not small.
  * Predict: (on a segment that is not refused) a factor whose tables (per class: context, class,
    evidence) have a small cell or margin is made 1 (support 0, note "below the privacy floor") and the
    probabilities are recomputed, so the explanation still multiplies to the probability; the
    conjunction method only extends its conjunction while its tables stay clear, and its minimum
    support is at least k. A value of a multi-valued target whose count in the segment, or the
    segment's rows without it, is small is left out (``suppressed_value_count``).
  * Assign: a catalog segment whose size s or n - s is small is left out of every assignment (no
    membership, no propensity; ``suppressed_segment_count``): Assign over every id would otherwise
    list its members. A feature whose table (segment, feature) has a small cell or margin does not
    enter that segment's propensity model (a one-feature customer's propensity times Count(feature)
    would be a count).
  * Evaluate: adjacent calibration bins are merged until each bin's count, its observed count
    (observed_rate * count) and the rest are not small (``calibration_merged``).
  * Discover: segments whose support, n - support or target table has a small cell are left out,
    as are related features whose table with the segment has one; the segmentation's partitions
    (personas' primary members and the rest; their gains) are floored as partitions; a target count
    t with t or n - t small suppresses the answer.
Refused (FAILED_PRECONDITION, ErrorInfo reason PRIVACY_FLOOR; not worth retrying), before any other
check of the request's rows:
  * Predict, ScoreSegment, Evaluate, ExportMembers whose segment / condition holds a small count of
    rows or all but a small count; Predict whose counted rows (the segment's rows with a target value)
    are small, or whose single-valued target has a value with a small count in them or all but a small
    count of them; Evaluate whose training or test set is small, or whose test rows predicted right
    (accuracy * test_count), or holding the baseline value (baseline_accuracy * test_count), or the
    rest of either, are small.

Per-row answers are not counts and need their own scope (docs/server.md): Predict by ``id`` states the
customer's features as evidence, Assign by ``ids`` their memberships (scope ``rows``); ScoreSegment
and ExportMembers state ids (scope ``export``).

Not covered: differencing across answers. Every answer is floored alone; two answers about nested
row sets (|A| and |A and B| in two Counts, Relate's support of one condition and of a slightly larger
one, a Profile before and after a catalog change) can still isolate fewer than k rows, as with any
counting service. Nor are fitted numbers counts: the logistic method's weights (Predict's factors
with that method) are checked on the evidence's support only, and Discover's lifts over independence
or over a split are ratios of counts of sub-conjunctions that are each at least the minimum support.
Operators: give callers who may not see small groups a larger k, no ``query`` scope, or answers
through a reviewed application; log per token (the access log names it) to audit for differencing.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import PrivacyFloorError
from ..ops.relate import RelateHits

DEFAULT_PRIVACY_K = 10
FLOOR_NOTE = "below the privacy floor"


def is_small(count: int, k: int) -> bool:
    return k > 1 and 0 < int(count) < k


def small_in(count: int, total: int, k: int) -> bool:
    """`count` rows of `total`: the count or the rest (total - count) is small."""
    return is_small(count, k) or is_small(int(total) - int(count), k)


def table_small(n: int, a: int, b: int, ab: int, k: int) -> bool:
    """A 2x2 table over n rows: a rows in A, b in B, ab in both. True when a cell (ab, a - ab, b - ab,
    n - a - b + ab) or a margin (a, n - a, b, n - b) is small."""
    return tables_small(n, a, (b,), (ab,), k)[0]


def tables_small(n: int, a: int, bs, abs_, k: int) -> list[bool]:
    """table_small(n, a, b, ab, k) for each (b, ab) of bs and abs_ (Relate's hits: one condition, many
    features), in one loop."""
    if k <= 1:
        return [False] * len(bs)
    n, a = int(n), int(a)
    if 0 < a < k or 0 < n - a < k:
        return [True] * len(bs)
    # one short-circuit expression per table, no call: Relate checks every hit
    return [0 < ab < k or 0 < a - ab < k or 0 < b - ab < k or 0 < n - a - b + ab < k or 0 < b < k or 0 < n - b < k
            for b, ab in zip(map(int, bs), map(int, abs_))]


def floor_size(count: int, k: int, total: int | None = None) -> int:
    """The count, or 0 when it (or, given the total, the rest) is small."""
    small = is_small(count, k) if total is None else small_in(count, total, k)
    return 0 if small else int(count)


def floor_partition(counts, total: int, k: int) -> list[int]:
    """Counts of disjoint row sets within `total` rows -> the counts stated: each small one (or one whose
    rest is small) as 0, then the fewest-row ones as 0 too until total minus the stated counts is not
    small (it would be what the zeros hold)."""
    out = [floor_size(c, k, total) for c in counts]
    if k <= 1:
        return out
    while is_small(int(total) - sum(out), k):
        stated = [i for i, c in enumerate(out) if c > 0]
        if not stated:
            break
        out[min(stated, key=lambda i: (out[i], i))] = 0
    return out


def refuse_small(count: int, k: int, what: str, field: str, total: int | None = None) -> None:
    """PrivacyFloorError when `count` (or, given the total, total - count) is small."""
    if is_small(count, k):
        raise PrivacyFloorError(
            f"{what} holds fewer than {k} rows (the privacy floor); answers about fewer than {k} rows are "
            f"not given", [(field, f"fewer than {k} rows (privacy floor)")])
    if total is not None and is_small(int(total) - int(count), k):
        raise PrivacyFloorError(
            f"{what} holds all but fewer than {k} rows (the privacy floor): the rest would be a group of "
            f"fewer than {k}; answers about fewer than {k} rows are not given",
            [(field, f"all but fewer than {k} rows (privacy floor)")])


# --- Count, Relate --------------------------------------------------------------------------------


def floor_count(result, k: int):
    """CountResult -> the result, a count whose value or complement is small reported as 0, suppressed."""
    if small_in(result.count, result.n_rows, k):
        return dataclasses.replace(result, count=0, suppressed=True)
    return result


def floor_relate(result, k: int):
    """RelateResult -> the result without what the floor hides (marked suppressed / suppressed_hits)."""
    if k <= 1:
        return result
    n, c = int(result.n_rows), int(result.n_condition)
    if small_in(c, n, k):
        return dataclasses.replace(result, n_condition=0, n_matching=0, hits=[], suppressed=True,
                                   suppressed_hits=len(result.hits))
    hits = result.hits
    columns = isinstance(hits, RelateHits)  # the engine's: read without building a hit object
    n_f, support = ((hits.n_feature.tolist(), hits.support.tolist()) if columns
                    else ([h.stats["n_feature"] for h in hits], [h.stats["support"] for h in hits]))
    small = tables_small(n, c, n_f, support, k)
    dropped = sum(small)
    if not dropped:  # the usual case (Relate's min_support is the floor already): nothing to copy
        return result
    keep = [i for i, s in enumerate(small) if not s]
    hits = hits.take(np.array(keep, dtype=np.int64)) if columns else [hits[i] for i in keep]
    return dataclasses.replace(result, hits=hits, n_matching=result.n_matching - dropped, suppressed_hits=dropped)


# --- Profile --------------------------------------------------------------------------------------


def _lift_low(v, n_segment: int) -> float:
    """The lower end of a value's lift interval (what a field's strength is the largest of)."""
    from .stats import wilson_interval

    lo, _ = wilson_interval(v.segment_count, n_segment)
    return float(lo) / v.population_share if v.population_share else math.nan


def floor_profile(result, k: int, single_valued=lambda field: False):
    """ProfileResult -> the result without what the floor hides (a small segment: marked suppressed;
    values and numeric fields left out: suppressed_values). `single_valued(field)` says whether a
    field's values partition the rows (then the listed counts must leave a rest that is not small)."""
    if k <= 1:
        return result
    n, s = result.n_rows, result.n_segment
    if small_in(s, n, k):
        return dataclasses.replace(result, n_segment=0, fields=[], numeric=[], suppressed=True)
    dropped = 0
    fields = []
    listed = [v for f in result.fields for v in (*f.over, *f.under)]  # every value's table in one loop
    small = iter(tables_small(n, s, [v.population_count for v in listed], [v.segment_count for v in listed], k))
    for f in result.fields:
        values = [v for v, is_small_table in zip((*f.over, *f.under), small) if not is_small_table]
        if single_valued(f.field):
            while values and (is_small(s - sum(v.segment_count for v in values), k)
                              or is_small(n - sum(v.population_count for v in values), k)):
                values.remove(min(values, key=lambda v: (v.segment_count, v.population_count)))
        if len(values) == len(f.over) + len(f.under):  # the usual case: every value stands, nothing to copy
            fields.append(f)
            continue
        kept = {id(v) for v in values}
        over = [v for v in f.over if id(v) in kept]
        under = [v for v in f.under if id(v) in kept]
        dropped += len(f.over) + len(f.under) - len(values)
        strength = f.strength
        if len(over) != len(f.over):
            strength = max([1.0] + [x for x in (_lift_low(v, s) for v in over) if math.isfinite(x)])
        fields.append(dataclasses.replace(f, over=over, under=under, strength=strength))
    order = sorted(range(len(fields)), key=lambda i: (-fields[i].strength, i))  # stable: the engine's order
    numeric = []
    for nf in result.numeric:
        if table_small(n, s, nf.population.count, nf.segment.count, k):
            dropped += 1
            continue
        numeric.append(dataclasses.replace(nf, segment=dataclasses.replace(nf.segment, min=math.nan, max=math.nan),
                                           population=dataclasses.replace(nf.population, min=math.nan,
                                                                          max=math.nan)))
    return dataclasses.replace(result, fields=[fields[i] for i in order], numeric=numeric, suppressed_values=dropped)


# --- Predict --------------------------------------------------------------------------------------


def floor_factors(factors: list[list], k: int) -> list[list]:
    """One question's factors per class (aligned: factor j of every class is the same evidence) -> the
    factors the floor lets stand: factor j is made 1 (support 0, FLOOR_NOTE) in every class when the
    table it rests on has a small cell or margin in any class (``Factor.table``: context rows, class
    rows, evidence rows, both). The probabilities are then computed from these factors."""
    if k <= 1 or not factors or not factors[0]:
        return factors
    out = [list(fs) for fs in factors]
    for j in range(len(factors[0])):
        if any(fs[j].table is not None and table_small(*fs[j].table, k) for fs in factors):
            for fs in out:
                fs[j] = dataclasses.replace(fs[j], factor=1.0, support=0, note=FLOOR_NOTE, table=None,
                                            p_value=None, log10_p_value=None)
    return out


def floor_predict(result, k: int):
    """PredictResult -> the result, or PrivacyFloorError. The counted rows n_S must not be small; per
    value, its count in them (``ValueProbability.count``, which the base probability determines) and the
    rest must not be small: a single-valued target is refused, a multi-valued one (each value its own
    question) leaves the value out (suppressed_values). Factors were floored by the engine
    (floor_factors); a factor's small support still standing is reported as 0."""
    refuse_small(result.n_segment, k, "the segment (rows counted for the prediction)", "segment")
    if k <= 1:
        return result
    probs = []
    for vp in result.probabilities:
        if vp.count is not None and small_in(vp.count, result.n_segment, k):
            if not result.multi_valued:
                raise PrivacyFloorError(
                    f"the segment holds fewer than {k} rows with {result.target}={vp.value}, or all but fewer than "
                    f"{k} rows have it (the privacy floor): its base probability would state that count",
                    [("target_field", f"value {vp.value!r}: fewer than {k} rows (privacy floor)")])
            continue
        factors = [dataclasses.replace(f, support=0, note=(f.note + "; " if f.note else "") + FLOOR_NOTE,
                                       p_value=None, log10_p_value=None)
                   if is_small(f.support, k) else f for f in vp.factors]
        probs.append(dataclasses.replace(vp, factors=factors))
    return dataclasses.replace(result, probabilities=probs,
                               suppressed_values=len(result.probabilities) - len(probs))


# --- Evaluate -------------------------------------------------------------------------------------


def _merge_bins(a, b):
    n = a.count + b.count
    return dataclasses.replace(
        a, predicted_low=min(a.predicted_low, b.predicted_low), predicted_high=max(a.predicted_high, b.predicted_high),
        mean_predicted=(a.mean_predicted * a.count + b.mean_predicted * b.count) / n,
        observed_rate=(round(a.observed_rate * a.count) + round(b.observed_rate * b.count)) / n, count=n)


def _bin_small(b, k: int) -> bool:
    """A calibration bin's count, or its observed count (observed_rate * count), or the rest, is small."""
    return is_small(b.count, k) or (b.count > 0 and small_in(round(b.observed_rate * b.count), b.count, k))


def floor_evaluate(result, k: int):
    """EvaluateResult -> the result, or PrivacyFloorError: the training and test sets, the test rows
    predicted right and those holding the baseline value (and the rest of each) must not be small;
    adjacent calibration bins are merged until no bin's count or observed count (or the rest) is small."""
    refuse_small(result.n_train, k, "the training set", "segment")
    refuse_small(result.n_test, k, "the test set", "segment")
    if k <= 1:
        return result
    for rate, what in ((result.accuracy, "the test rows predicted right"),
                       (result.baseline_accuracy, "the test rows holding the baseline value")):
        refuse_small(round(rate * result.n_test), k, what, "segment", total=result.n_test)
    bins = list(result.calibration)
    while len(bins) > 1 and any(_bin_small(b, k) for b in bins):
        i = next(i for i, b in enumerate(bins) if _bin_small(b, k))
        j = i + 1 if i + 1 < len(bins) and (i == 0 or bins[i + 1].count <= bins[i - 1].count) else i - 1
        lo, hi = min(i, j), max(i, j)
        bins[lo:hi + 1] = [_merge_bins(bins[lo], bins[hi])]
    if len(bins) == len(result.calibration):
        return result
    return dataclasses.replace(result, calibration=bins, calibration_merged=True)


# --- ListSegments, GetSnapshotInfo, Assign --------------------------------------------------------


def floor_info(result, k: int):
    """InfoResult -> value counts floored: each (count or rest small) as 0; per single-valued field as a
    partition of the universe's rows."""
    if k <= 1 or not result.include_values:
        return result
    universes = []
    for u in result.universes:
        fields = []
        for f in u.fields:
            if f.values is None:
                fields.append(f)
                continue
            names, counts = list(f.values), list(f.values.values())
            if f.kind == "multi" or f.semantics == "exists":
                floored = [floor_size(c, k, u.n_rows) for c in counts]
            else:
                floored = floor_partition(counts, u.n_rows, k)
            fields.append(dataclasses.replace(f, values=dict(zip(names, floored))))
        universes.append(dataclasses.replace(u, fields=fields))
    return dataclasses.replace(result, universes=universes)


def floor_assign(result, k: int, n_rows: int | None = None):
    """AssignResult -> sizes of catalog segments floored (the engine already left out small segments)."""
    if k <= 1:
        return result
    small = {m.segment_size for a in result.assignments for m in a.segments
             if floor_size(m.segment_size, k, n_rows) != m.segment_size}
    if not small:  # the usual case: a catalog's segments are far above the floor
        return result
    out = []
    for a in result.assignments:
        segs = [dataclasses.replace(m, segment_size=0, share=0.0) if m.segment_size in small else m
                for m in a.segments]
        out.append(dataclasses.replace(a, segments=segs))
    return dataclasses.replace(result, assignments=out)


# --- Discover -------------------------------------------------------------------------------------


def floor_discover(result, k: int):
    """DiscoverResult -> the result without what the floor hides. The search itself counts only
    conjunctions and features of at least k rows (min_support >= k); here a small target count (or
    rest) suppresses the answer; segments whose support leaves a small rest, or whose table with the
    target has a small cell, are dropped, as are related features whose table with the segment (their
    feature count from their lift) has one; the segmentation's counts are floored as partitions."""
    if k <= 1 or result.suppressed:
        return result
    n = result.n_rows
    targeted = result.target is not None
    if targeted and small_in(result.target_count, n, k):
        return dataclasses.replace(result, segments=[], segmentation=None, target_count=0, suppressed=True)
    kept = []
    for seg in result.segments:
        if small_in(seg.support, n, k):
            continue
        if targeted and seg.direction and table_small(n, seg.support, result.target_count, seg.target_support, k):
            continue
        related = []
        for r in seg.related:
            n_f = round(r.support * n / (seg.support * r.lift)) if r.lift > 0 and seg.support else r.support
            if not table_small(n, seg.support, n_f, r.support, k):
                related.append(r)
        kept.append(dataclasses.replace(seg, related=related))
    seg_out = result.segmentation
    if seg_out is not None:
        if len(kept) != len(result.segments):  # personas point into the list: recompute nothing, drop it
            seg_out = None
        else:
            *primary, other = floor_partition([p.primary for p in seg_out.personas] + [seg_out.other], n, k)
            gain = floor_partition([p.gain for p in seg_out.personas], seg_out.covered, k)
            covered = floor_size(seg_out.covered, k, n)
            seg_out = dataclasses.replace(
                seg_out, personas=[dataclasses.replace(p, primary=pr, gain=g)
                                   for p, pr, g in zip(seg_out.personas, primary, gain)],
                covered=covered, coverage=seg_out.coverage if covered else 0.0,
                overlap=floor_size(seg_out.overlap, k, seg_out.covered), other=other)
    return dataclasses.replace(result, segments=kept, segmentation=seg_out)
