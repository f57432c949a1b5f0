"""Relate over many features of a small universe: the cost must follow the words counted and the hits
returned, not the number of candidates (issue 16, item 1).

Two synthetic snapshots (built once into bench/.data/relate-wide/, deterministic), each a `people`
table with a multi-valued `items` column (Zipf-like item popularity) and a categorical `group`:

  narrow   600 rows, ~14,000 distinct items, ~60 items per row; the condition `group = g0` (~1/3 of
           the rows)
  wide     15,000 rows, ~15,000 distinct items, ~40 items per row; the condition `group = g0` (860 rows)

Relate names the field (`relate: ["items"]`: its items are identifier-like, so "every field" would
leave them out), limit 20, the service as the server calls it (privacy floor 10, one kernel thread).
Printed per snapshot: candidates, the plan, the median whole Relate and the counts alone
(count_features), what the rest costs per candidate, and the scan's words (bitset words plus sparse
ids) for scale.

    python bench/relate_wide.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np

from common import DATA_ROOT, cpu_model, median_ms, write_result

from segsrv import _kernels
from segsrv.engine.conditions import evaluate
from segsrv.engine.relate import candidate_features, count_features
from segsrv.ops.conditions import Term
from segsrv.ops.relate import RelateQuery
from segsrv.service import OneSnapshot, SegmentationService
from segsrv.snapshot.reader import open_snapshot

SHAPES = {  # name: (rows, distinct items, items per row, rows in the condition)
    "narrow": (600, 14_000, 60, 200),
    "wide": (15_000, 15_000, 40, 860),
}


def build(name: str, rows: int, n_items: int, per_row: int, in_condition: int):
    """The snapshot of one shape (cached); its root."""
    import pandas as pd

    out = DATA_ROOT / "relate-wide" / name
    root = out / "snapshots"
    if (root / name / "CURRENT").exists():
        return root
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights /= weights.sum()
    items = []
    for _ in range(rows):
        picked = rng.choice(n_items, size=per_row, replace=False, p=weights)
        items.append(" ".join(f"i{j}" for j in sorted(picked)))
    group = np.where(np.arange(rows) < in_condition, "g0", rng.choice(["g1", "g2", "g3"], size=rows))
    pd.DataFrame({"person_id": [f"P{i:06d}" for i in range(rows)], "group": group, "items": items}).to_parquet(
        out / "people.parquet")
    (out / "spec.toml").write_text(
        f'name = "{name}"\n\n[tables.people]\nfile = "people.parquet"\nkey = "person_id"\n'
        'categorical = ["group"]\nmulti = { items = " " }\n\n[universes.people]\n')
    subprocess.run([sys.executable, "-m", "segsrv", "build", str(out / "spec.toml"), "--out", str(root), "--quiet"],
                   check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    _kernels.set_num_threads(1)  # as `segsrv serve` runs its kernels
    out = {"cpu": cpu_model(), "repeat": args.repeat, "shapes": {}}
    print(f"Relate over one many-valued field of a small universe; {cpu_model()}, one kernel thread")
    print(f"{'shape':8s}{'rows':>8s}{'candidates':>12s}{'n_C':>7s}{'plan':>11s}{'words':>11s}{'relate ms':>11s}"
          f"{'counts ms':>11s}{'rest/cand':>11s}")
    for name, (rows, n_items, per_row, in_condition) in SHAPES.items():
        root = build(name, rows, n_items, per_row, in_condition)
        snap = open_snapshot(root / name)
        u = snap.universe("people")
        service = SegmentationService(OneSnapshot(snap), privacy_k=10)
        query = RelateQuery(where=Term("group", "g0"), universe="people", relate=["items"], limit=20)
        fids = candidate_features(u, query)
        bits = evaluate(snap, u, query.where)
        n_c = int(_kernels.popcount(bits))
        _, plan = count_features(u, bits, n_c, fids)
        slots = np.asarray(u.feature_slot[fids])
        words = int((slots >= 0).sum()) * u.n_words + int(np.asarray(u.feature_count[fids[slots < 0]]).sum())
        whole = median_ms(lambda: service.relate(RelateQuery(**{**query.__dict__})), args.repeat)
        counts = median_ms(lambda: count_features(u, bits, n_c, fids), args.repeat)
        rest_ns = (whole - counts) / len(fids) * 1e6
        out["shapes"][name] = {"rows": u.n_rows, "candidates": len(fids), "n_condition": n_c, "plan": plan,
                               "scan_words": words, "relate_ms": whole, "counts_ms": counts,
                               "rest_ns_per_candidate": rest_ns}
        print(f"{name:8s}{u.n_rows:8,d}{len(fids):12,d}{n_c:7,d}{plan:>11s}{words:11,d}{whole:11.3f}{counts:11.3f}"
              f"{rest_ns:9.0f} ns")
    print(f"results: {write_result('relate_wide', out)}")


if __name__ == "__main__":
    main()
