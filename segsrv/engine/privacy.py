"""The privacy floor: no count of fewer than k rows leaves the server.

A count c is *small* when 0 < c < k (k = the floor; k <= 1 turns the floor off). Zero is
not small: "nobody" is revealed. What happens to small counts, per answer:

Suppressed (the answer is still given, marked ``suppressed``):
  * Count: a small count is reported as 0 with ``suppressed = true``.
  * Relate: a small condition (|C|) gives no hits, ``condition_count`` 0 and
    ``suppressed = true``; otherwise hits whose support, feature count, or rows with
    the feature outside the condition (feature count - support) are small are dropped
    and counted in ``suppressed_hit_count``.
  * Profile: a small segment gives no field profiles and ``suppressed = true``; values
    whose segment count is small are dropped; numeric min and max (single rows' values)
    are not reported (NaN) while the floor is on.
  * Sizes of catalog segments (ListSegments, Assign) and value counts of
    GetSnapshotInfo: small sizes are reported as 0.
  * Predict explanations: a factor's small support is reported as 0 (its factor stays:
    the probability must remain explained).
Refused (FAILED_PRECONDITION, ErrorInfo reason PRIVACY_FLOOR; not worth retrying):
  * Predict, ScoreSegment and Evaluate whose counted segment (or test set) is small;
    ExportMembers of a small condition.

Only counts the answer states are floored; differencing several answers (|A| - |A and
B|) can still isolate fewer than k rows, as with any counting service: give narrow
roles a larger k or no query scope (docs/server.md).
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import PrivacyFloorError

DEFAULT_PRIVACY_K = 10


def is_small(count: int, k: int) -> bool:
    return k > 1 and 0 < int(count) < k


def floor_size(count: int, k: int) -> int:
    return 0 if is_small(count, k) else int(count)


def refuse_small(count: int, k: int, what: str, field: str) -> None:
    if is_small(count, k):
        raise PrivacyFloorError(
            f"{what} holds fewer than {k} rows (the privacy floor); answers about fewer than {k} rows are "
            f"not given", [(field, f"fewer than {k} rows (privacy floor)")])


def floor_count(result, k: int):
    """CountResult -> the result, a small count reported as 0 and marked suppressed."""
    if is_small(result.count, k):
        return dataclasses.replace(result, count=0, suppressed=True)
    return result


def floor_relate(result, k: int):
    """RelateResult -> the result without what the floor hides (marked suppressed / suppressed_hits)."""
    if k <= 1:
        return result
    if is_small(result.n_condition, k):
        return dataclasses.replace(result, n_condition=0, n_matching=0, hits=[], suppressed=True,
                                   suppressed_hits=len(result.hits))
    kept = []
    for h in result.hits:
        support, n_feature = int(h.stats["support"]), int(h.stats["n_feature"])
        if is_small(support, k) or is_small(n_feature, k) or is_small(n_feature - support, k):
            continue
        kept.append(h)
    dropped = len(result.hits) - len(kept)
    return dataclasses.replace(result, hits=kept, n_matching=result.n_matching - dropped, suppressed_hits=dropped)


def floor_predict(result, k: int):
    refuse_small(result.n_segment, k, "the segment (rows counted for the prediction)", "segment")
    if k <= 1:
        return result
    probs = []
    for vp in result.probabilities:
        factors = [dataclasses.replace(f, support=0, note=(f.note + "; " if f.note else "") +
                                       "support below the privacy floor") if is_small(f.support, k) else f
                   for f in vp.factors]
        probs.append(dataclasses.replace(vp, factors=factors))
    return dataclasses.replace(result, probabilities=probs)


def floor_profile(result, k: int):
    """ProfileResult -> the result without what the floor hides (a small segment: marked suppressed)."""
    if k <= 1:
        return result
    if is_small(result.n_segment, k):
        return dataclasses.replace(result, n_segment=0, fields=[], numeric=[], suppressed=True)

    def keep(v) -> bool:
        return not (is_small(v.segment_count, k) or is_small(v.population_count, k))

    fields = [dataclasses.replace(f, over=[v for v in f.over if keep(v)], under=[v for v in f.under if keep(v)])
              for f in result.fields]
    numeric = [dataclasses.replace(nf, segment=dataclasses.replace(nf.segment, min=math.nan, max=math.nan),
                                   population=dataclasses.replace(nf.population, min=math.nan, max=math.nan))
               for nf in result.numeric]
    return dataclasses.replace(result, fields=fields, numeric=numeric)


def floor_assign(result, k: int):
    if k <= 1:
        return result
    out = []
    for a in result.assignments:
        segs = [dataclasses.replace(m, segment_size=0, share=0.0) if is_small(m.segment_size, k) else m
                for m in a.segments]
        out.append(dataclasses.replace(a, segments=segs))
    return dataclasses.replace(result, assignments=out)


def floor_discover(result, k: int):
    """DiscoverResult -> the result without what the floor hides. The search itself counts only
    conjunctions and features of at least k rows (min_support >= k); here segments whose target rows,
    or rows without the target, are small are dropped, as are related features with a small count
    outside the segment, and the segmentation's small numbers are reported as 0."""
    if k <= 1 or result.suppressed:
        return result
    kept = []
    for seg in result.segments:
        if seg.direction and (is_small(seg.target_support, k) or is_small(seg.support - seg.target_support, k)):
            continue
        kept.append(dataclasses.replace(seg, related=[r for r in seg.related if not is_small(r.support, k)]))
    seg_out = result.segmentation
    if seg_out is not None:
        if len(kept) != len(result.segments):  # personas point into the list: recompute nothing, drop it
            seg_out = None
        else:
            seg_out = dataclasses.replace(
                seg_out, personas=[dataclasses.replace(p, primary=floor_size(p.primary, k), gain=floor_size(p.gain, k))
                                   for p in seg_out.personas],
                overlap=floor_size(seg_out.overlap, k), other=floor_size(seg_out.other, k))
    return dataclasses.replace(result, segments=kept, segmentation=seg_out)
