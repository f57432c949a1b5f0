"""A segmentation of k personas chosen among discovered segments (DESIGN.md section 9).

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
