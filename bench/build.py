"""Build benchmark: the 1M-customer demo shop (~10M order lines).

Measures, in one run: wall time and peak RSS of `segsrv build` (a child
process), the snapshot's size on disk, and the time to open it (memory map +
manifest + size checks, median of 7). Anchor: DuckDB alone loading the same
tables into memory (the ingest floor the builder stands on).

    python bench/build.py [--customers N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

from common import DATA_ROOT, child_usage, demo_tables, write_result


def run_child(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process (each run in a fresh helper)."""
    usage = child_usage(args)
    return usage["wall_s"], usage["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    args = ap.parse_args()
    spec = demo_tables(args.customers)
    root = DATA_ROOT / f"build-bench-{args.customers}"
    shutil.rmtree(root, ignore_errors=True)

    files = sorted(p for p in spec.parent.glob("*.parquet"))
    loads = ";".join(f"con.execute(\"CREATE TABLE t{i} AS SELECT * FROM read_parquet('{p}')\")" for i, p in enumerate(files))
    anchor_wall, anchor_peak = run_child([sys.executable, "-c", f"import duckdb; con=duckdb.connect(); {loads}"])

    wall, peak = run_child([sys.executable, "-m", "segsrv", "build", str(spec), "--out", str(root)])
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    from segsrv.snapshot.reader import open_snapshot

    opens = []
    for _ in range(7):
        t = time.perf_counter()
        snap = open_snapshot(root)
        opens.append(time.perf_counter() - t)
    open_s = statistics.median(opens)
    n_lines = snap.universes["order_lines"].n_rows if "order_lines" in snap.universes else None
    result = {
        "customers": args.customers,
        "order_lines": n_lines,
        "build_wall_s": round(wall, 2),
        "build_peak_rss_mb": round(peak, 1),
        "snapshot_mb": round(size / 1e6, 1),
        "open_median_s": round(open_s, 4),
        "anchor_duckdb_load_s": round(anchor_wall, 2),
        "anchor_duckdb_peak_rss_mb": round(anchor_peak, 1),
        "ratio_build_to_duckdb_load": round(wall / anchor_wall, 2),
        "universes": {u.name: {"rows": u.n_rows, "features": u.n_features} for u in snap.universes.values()},
    }
    print(f"build of {args.customers:,} customers / {n_lines:,} order lines")
    print(f"  segsrv build      {wall:8.1f} s   peak RSS {peak:8.0f} MB   snapshot {size / 1e6:,.0f} MB")
    print(f"  duckdb load only  {anchor_wall:8.1f} s   peak RSS {anchor_peak:8.0f} MB   (anchor)")
    print(f"  ratio build / load {wall / anchor_wall:.1f}x")
    print(f"  open snapshot     {open_s * 1e3:8.1f} ms (median of 7)")
    for u in snap.universes.values():
        print(f"  universe {u.name}: {u.n_rows:,} rows, {u.n_features:,} features")
    print(f"results: {write_result('build', result)}")


if __name__ == "__main__":
    main()
