"""Choosing among discovered segments by their members: the non-redundant list, and a segmentation of k
personas (DESIGN.md section 9).

Non-redundant: in score order, a segment is listed while its members' Jaccard index with every segment
listed before is at most max_overlap and their overlap beyond chance at most max_excess_overlap.

Greedy cover: k times, the segment adding the most rows not yet covered is chosen (ties: the one
listed first, i.e. the higher score), stopping early when no segment adds a row. Every segment
offered already passed Discover's lift floor and redundancy rules, so the cover is large, of
little overlap and high lift. A member in several chosen personas belongs first to the one with
the highest lift (ties: listed first): its primary persona. Members of no persona are "other".
"""

from __future__ import annotations

import numpy as np

from ..ops.discover import DiscoveredSegment, Persona, Segmentation, primary_order
from . import cancel

_REDUNDANCY_BATCH = 128  # candidates checked against the listed segments in one cross co-occurrence pass


def segmentation(segments: list[DiscoveredSegment], conjunctions: list, k: int, n: int, counts) -> Segmentation:
    """k personas among `segments` (each the conjunction conjunctions[i]) by greedy cover, counted by `counts`
    (a segsrv.engine.discover.SearchCounts: `outside` and `layered`)."""
    sizes = np.array([s.support for s in segments], dtype=np.int64)
    chosen: list[int] = []
    gains: list[int] = []
    for _ in range(min(k, len(segments))):
        # each segment's rows not covered yet (nothing is covered before the first choice)
        gain = counts.outside(conjunctions, [conjunctions[i] for i in chosen]) if chosen else sizes.copy()
        gain[chosen] = -1
        best = int(np.argmax(gain))  # first of the largest: the listed order breaks ties
        if gain[best] <= 0:
            break
        chosen.append(best)
        gains.append(int(gain[best]))
        cancel.check()
    order = primary_order([segments[i] for i in chosen])
    new, multi = counts.layered([conjunctions[chosen[j]] for j in order])
    primary = {chosen[j]: int(c) for j, c in zip(order, new.tolist())}
    n_cov = int(new.sum())  # the covered rows: each counted with the first persona holding it
    return Segmentation([Persona(i, primary[i], g) for i, g in zip(chosen, gains)], n_cov,
                        n_cov / n if n else 0.0, int(multi), n - n_cov)


def non_redundant(counts, n: int, terms: list, sizes: np.ndarray, order: np.ndarray, max_overlap: float,
                  max_excess_overlap: float, limit: int) -> list[int]:
    """Segments to list: the first `limit` of `order` (each the conjunction `terms[i]` of `sizes[i]` rows) whose
    members overlap every one listed before by a Jaccard index of at most max_overlap and an overlap beyond
    chance (overlap_beyond_chance) of at most max_excess_overlap. `counts` (a segsrv.engine.discover.
    SearchCounts) counts the overlaps.

    Candidates are taken _REDUNDANCY_BATCH at a time: their overlaps with the segments listed so far are one
    batch; a segment listed from the batch adds its overlaps with the rest of the batch."""
    if not (max_overlap < 1.0 or max_excess_overlap < 1.0):  # nothing is redundant: no overlap to count
        return [int(i) for i in order[:limit]]
    listed: list[int] = []
    for start in range(0, len(order), _REDUNDANCY_BATCH):
        if len(listed) >= limit:
            break
        idx = order[start:start + _REDUNDANCY_BATCH]
        overlaps = counts.overlaps([terms[i] for i in idx], [terms[i] for i in listed])
        inter = np.zeros((len(idx), limit), dtype=np.int64)
        inter[:, :len(listed)] = overlaps.listed
        for j, i in enumerate(idx.tolist()):
            if len(listed) >= limit:
                break
            if listed:
                both = inter[j, :len(listed)]
                union = sizes[i] + sizes[listed] - both
                if np.any(both > max_overlap * union):
                    continue
                if np.any(overlap_beyond_chance(n, sizes[i], sizes[listed], both) > max_excess_overlap):
                    continue
            if j + 1 < len(idx):
                inter[j + 1:, len(listed)] = overlaps.later(j)
            listed.append(i)
        cancel.check()
    return listed


def overlap_beyond_chance(n: int, a, b, both) -> np.ndarray:
    """How much of the largest possible overlap of two member sets of sizes a and b (the smaller size) their
    overlap `both` reaches beyond what independent sets would share (a b / n): 0 for independent sets, 1 when
    one contains the other, negative when they avoid each other (a kappa-like normalisation)."""
    a, b, both = (np.asarray(x, dtype=np.float64) for x in (a, b, both))
    chance = a * b / float(n)
    room = np.minimum(a, b) - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (both - chance) / np.where(room > 0, room, 1.0), 0.0)
