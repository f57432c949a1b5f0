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

from .. import _kernels
from ..ops.discover import DiscoveredSegment, Persona, Segmentation, primary_order
from . import cancel

_REDUNDANCY_BATCH = 128  # candidates checked against the listed segments in one cross co-occurrence pass


def segmentation(segments: list[DiscoveredSegment], bits: list[np.ndarray], k: int, n: int) -> Segmentation:
    stack = np.ascontiguousarray(np.vstack(bits))
    sizes = np.array([s.support for s in segments], dtype=np.int64)
    covered = np.zeros_like(bits[0])
    multi = np.zeros_like(bits[0])
    chosen: list[int] = []
    gains: list[int] = []
    for _ in range(min(k, len(segments))):
        gain = sizes - _kernels.and_count_dense(covered, stack)
        gain[chosen] = -1
        best = int(np.argmax(gain))  # first of the largest: the listed order breaks ties
        if gain[best] <= 0:
            break
        chosen.append(best)
        gains.append(int(gain[best]))
        multi |= covered & bits[best]
        covered |= bits[best]
    assigned = np.zeros_like(covered)
    primary: dict[int, int] = {}
    for j in primary_order([segments[i] for i in chosen]):
        i = chosen[j]
        primary[i] = int(_kernels.popcount(_kernels.bitset_andnot(bits[i], assigned)))
        assigned |= bits[i]
    n_cov = int(_kernels.popcount(covered))
    return Segmentation([Persona(i, primary[i], g) for i, g in zip(chosen, gains)], n_cov,
                        n_cov / n if n else 0.0, int(_kernels.popcount(multi)), n - n_cov)


def non_redundant(bits_of, n_words: int, n: int, terms: list[np.ndarray], sizes: np.ndarray, order: np.ndarray,
                  max_overlap: float, max_excess_overlap: float, limit: int):
    """Segments to list: the first `limit` of `order` (each made of `terms[i]`, `sizes[i]` rows, its member
    bitset from `bits_of(terms[i])`) whose members overlap every one listed before by a Jaccard index of at most
    max_overlap and an overlap beyond chance (overlap_beyond_chance) of at most max_excess_overlap.

    Candidates are taken _REDUNDANCY_BATCH at a time: their overlaps with the segments listed so far are one
    cross co-occurrence pass; a segment listed from the batch adds its column for the rest of the batch."""
    listed: list[int] = []
    bits_list: list[np.ndarray] = []
    kept = np.zeros((limit, n_words), dtype=np.uint64)
    check = max_overlap < 1.0 or max_excess_overlap < 1.0
    for start in range(0, len(order), _REDUNDANCY_BATCH):
        if len(listed) >= limit:
            break
        idx = order[start:start + _REDUNDANCY_BATCH]
        batch = np.stack([bits_of(terms[i]) for i in idx])
        inter = np.zeros((len(idx), limit), dtype=np.int64)
        if listed and check:
            inter[:, :len(listed)] = _kernels.cross_cooccurrence(batch, kept[:len(listed)])
        for j, i in enumerate(idx.tolist()):
            if len(listed) >= limit:
                break
            if listed and check:
                both = inter[j, :len(listed)]
                union = sizes[i] + sizes[listed] - both
                if np.any(both > max_overlap * union):
                    continue
                if np.any(overlap_beyond_chance(n, sizes[i], sizes[listed], both) > max_excess_overlap):
                    continue
            if j + 1 < len(idx) and check:
                inter[j + 1:, len(listed)] = _kernels.and_count_dense(batch[j], batch, rows=np.arange(
                    j + 1, len(idx), dtype=np.int64), n_threads=1)
            kept[len(listed)] = batch[j]
            listed.append(i)
            bits_list.append(batch[j].copy())
        cancel.check()
    return listed, bits_list


def overlap_beyond_chance(n: int, a, b, both) -> np.ndarray:
    """How much of the largest possible overlap of two member sets of sizes a and b (the smaller size) their
    overlap `both` reaches beyond what independent sets would share (a b / n): 0 for independent sets, 1 when
    one contains the other, negative when they avoid each other (a kappa-like normalisation)."""
    a, b, both = (np.asarray(x, dtype=np.float64) for x in (a, b, both))
    chance = a * b / float(n)
    room = np.minimum(a, b) - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (both - chance) / np.where(room > 0, room, 1.0), 0.0)
