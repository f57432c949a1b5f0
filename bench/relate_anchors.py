"""Relate counts against independent anchors on the same data: DuckDB and ClickHouse (chdb).

One condition over the customers universe of the demo shop (--customers, default 1M;
bench/common.py's cached snapshot and source tables), by default the README's example
"bought dog dry-food AND filtered for grain-free":

    orders.lines.product.category = dog-dryfood  AND  events.filter = grain-free

and the features of bench/relate.py's pick_fields (~90 features over ~17 fields). Every
method answers "how many of the condition's customers have each feature" and must give
the same counts as segsrv, exactly (asserted; the run prints "same answers: yes"):

  segsrv relate     segsrv.engine.relate.relate: evaluating the condition, the counts,
                    every statistic and the ordering (include_condition_fields, so the
                    condition's own fields are counted too; limit 20). Also the counts
                    alone (count_features on the evaluated condition), shown for scale.
                    Both with the default kernel threads and on one
                    (_kernels.set_num_threads(1)), taking turns call by call: on a
                    shared machine the OpenMP team can spin while a member is
                    descheduled (FIELD-NOTES), which one thread avoids. The ratios and
                    the target use the default.
  duckdb pairs      DuckDB SQL over a (row uint32, feature uint32) table of every
                    customer's features (the snapshot's CSR; a native in-memory DuckDB
                    table sorted by feature then row): the condition's rows as a CTE
                    (rows having all its features), joined back and grouped by feature.
                    Sorted by feature, DuckDB's zone maps skip the features not asked
                    for: ~2.8x faster here than the same table sorted by row.
  duckdb source     DuckDB SQL over the demo's source tables (customers, orders,
                    order_lines, products, events; native in-memory tables): the
                    condition as INTERSECTed EXISTS-paths, each feature as its source
                    column along its path (customers.region; orders.channel via
                    orders.customer_id; orders.lines.product.tag via order_lines ->
                    orders, products, split on '|'; events.product.category via
                    events -> products; ...), numeric bands cut at the snapshot's own
                    edges (fixed edges, or the quantile edges the build computed), then
                    count(DISTINCT customer) per (field, value). Every field of the
                    customers universe reached through those paths maps; the run says
                    which of the chosen fields were expressed (all of them by default).
  chdb bitmaps      ClickHouse via chdb: one groupBitmapState(row) per feature (a
                    Memory table built from the pairs), the condition as
                    groupBitmapAndState over its features, and
                    bitmapAndCardinality(feature bitmap, condition bitmap).
  chdb bitmaps (MergeTree)  the same bitmaps in a MergeTree table (ORDER BY feature):
                    each query reads and deserializes them again (~5x slower here).
  chdb pairs        ClickHouse plain SQL over the (row, feature) pairs (MergeTree,
                    ORDER BY (feature, row)), the duckdb pairs query with the condition's
                    rows as IN (SELECT ...) rather than a join (ClickHouse's faster form).

Each anchor's time is the whole answer in its engine (condition + counts), the median of
--repeat runs after one warm-up; segsrv's the median of --repeat-ours runs (cheap). The
run also times "SELECT 1" in each engine from Python (the per-query floor). The
table gives anchor / segsrv relate (the whole answer: the ratio the issue's target is
about, ours >= 20x faster than DuckDB and ClickHouse) and anchor / segsrv counts. Set-up
(loading tables, building bitmaps) is reported separately and not in the ratios. Every
engine runs with its default threads (the machine's cores); the load average and the
busiest other processes are recorded, since this box is shared.

chdb is the `anchors` extra (pyproject's [anchors]: `.venv/bin/pip install -e '.[anchors]'`), or on its own:

    .venv/bin/pip install chdb

    python bench/relate_anchors.py [--customers N] [--repeat R] [--repeat-ours R]

Writes bench/results/relate_anchors.json. The pairs are cached as Parquet next to the
snapshot (bench/.data/relate-anchors-N/), ClickHouse's tables in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA_ROOT, busy_processes, cpu_model, demo_snapshot, demo_tables, write_result
from relate import pick_fields

from segsrv import _kernels
from segsrv.engine.conditions import evaluate
from segsrv.engine.relate import count_features, relate
from segsrv.ops.conditions import And, Term
from segsrv.ops.relate import MAX_LIMIT, RelateQuery
from segsrv.snapshot.reader import open_snapshot

TARGET_RATIO = 20.0
CONDITION = And((Term("orders.lines.product.category", "dog-dryfood"), Term("events.filter", "grain-free")))

# customers-universe path prefix -> (FROM clause, customer id expression, alias of the leaf table)
_LINES = "order_lines l JOIN orders o ON l.order_id = o.order_id"
SOURCE_PATHS = {
    "": ("customers c", "c.customer_id", "c"),
    "orders": ("orders o", "o.customer_id", "o"),
    "orders.lines": (_LINES, "o.customer_id", "l"),
    "orders.lines.product": (f"{_LINES} JOIN products p ON l.product_id = p.product_id", "o.customer_id", "p"),
    "events": ("events e", "e.customer_id", "e"),
    "events.product": ("events e JOIN products p ON e.product_id = p.product_id", "e.customer_id", "p"),
}


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _terms(cond) -> list[Term]:
    """The terms of a Term or an And of Terms (the shapes every anchor here expresses)."""
    items = cond.items if isinstance(cond, And) else (cond,)
    if not all(isinstance(t, Term) for t in items):
        raise SystemExit(f"relate_anchors: only a Term or an And of Terms is expressed in SQL here, not {cond!r}")
    return list(items)


# --- segsrv -----------------------------------------------------------------------------------


def median_ms(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), out


def interleaved_ms(fn, repeat: int, thread_settings) -> list[tuple[float, object]]:
    """(median ms, last answer) of fn under each kernel thread setting (set_num_threads), the settings taking
    turns call by call after one warm-up each: the host's drift and the process's warming fall on all alike."""
    outs = []
    try:
        for n in thread_settings:
            _kernels.set_num_threads(n)
            outs.append(fn())
        times = [[] for _ in thread_settings]
        for _ in range(repeat):
            for i, n in enumerate(thread_settings):
                _kernels.set_num_threads(n)
                t = time.perf_counter()
                outs[i] = fn()
                times[i].append(time.perf_counter() - t)
    finally:
        _kernels.set_num_threads(None)
    return [(float(np.median(ts) * 1e3), out) for ts, out in zip(times, outs)]


def segsrv_sides(snap, u, fields, fids, repeat: int) -> tuple[dict, dict]:
    """segsrv's relate and counts with the default kernel threads and on one thread, interleaved."""
    query = RelateQuery(where=CONDITION, universe=u.name, relate=fields, limit=20, exclude_condition_fields=False)
    relates = interleaved_ms(lambda: relate(snap, query), repeat, (None, 1))
    bits = evaluate(snap, u, CONDITION)
    n_c = int(_kernels.popcount(bits))
    counts = interleaved_ms(lambda: count_features(u, bits, n_c, fids), repeat, (None, 1))
    # the service's answer itself: every feature's support (direction all, no floor) against the counts
    every = relate(snap, RelateQuery(where=CONDITION, universe=u.name, relate=fields, limit=MAX_LIMIT,
                                     direction="all", min_support=0, exclude_condition_fields=False))
    supports = {int(h.feature_id): int(h.support) for h in every.hits}
    sides = []
    for (relate_ms, res), (counts_ms, (n_cf, plan)) in zip(relates, counts):
        sides.append({"relate_ms": relate_ms, "counts_ms": counts_ms, "counts": np.asarray(n_cf, dtype=np.int64),
                      "n_condition": n_c, "plan": plan, "relate_plan": res.plan, "relate_supports": supports})
    return sides[0], sides[1]


# --- the (row, feature) pairs ------------------------------------------------------------------


def pairs_parquet(snap, u) -> tuple[Path, int]:
    """Every (row, feature) of the universe's CSR, sorted by feature then row, as Parquet (cached)."""
    out = DATA_ROOT / f"relate-anchors-{u.n_rows}" / f"pairs-by-feature-{snap.version}.parquet"
    if out.exists():
        return out, int(len(u.csr_indices))
    import pyarrow as pa
    import pyarrow.parquet as pq

    indptr = np.asarray(u.csr_indptr, dtype=np.int64)
    rows = np.repeat(np.arange(u.n_rows, dtype=np.uint32), np.diff(indptr))
    feats = np.asarray(u.csr_indices, dtype=np.uint32)
    order = np.lexsort((rows, feats))
    rows, feats = rows[order], feats[order]
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob("pairs-*.parquet"):
        old.unlink()
    tmp = out.with_suffix(".tmp")
    pq.write_table(pa.table({"row": rows, "feature": feats}), tmp, row_group_size=1 << 20)
    tmp.rename(out)
    return out, int(len(feats))


def pairs_sql(u, fids: np.ndarray, semi_join: str = "join") -> str:
    """Per-feature counts among the condition's rows, over the (row, feature) table `pairs`: the condition's
    rows (those having all its features) as a CTE, joined (DuckDB's faster form) or IN (ClickHouse's)."""
    cond_ids = sorted({u.feature_id(t.field, t.value) for t in _terms(CONDITION)})
    cond = (f"SELECT row FROM pairs WHERE feature IN ({', '.join(map(str, cond_ids))}) "
            f"GROUP BY row HAVING count(*) = {len(cond_ids)}")
    feats = f"p.feature IN ({', '.join(map(str, fids.tolist()))})"
    if semi_join == "join":
        return (f"WITH cond AS ({cond}) SELECT p.feature, count(*) AS n FROM pairs p JOIN cond USING (row) "
                f"WHERE {feats} GROUP BY p.feature")
    return (f"WITH cond AS ({cond}) SELECT p.feature, count(*) AS n FROM pairs p "
            f"WHERE {feats} AND p.row IN (SELECT row FROM cond) GROUP BY p.feature")


def bitmap_sql(u, fids: np.ndarray) -> str:
    cond_ids = sorted({u.feature_id(t.field, t.value) for t in _terms(CONDITION)})
    return (
        f"WITH (SELECT groupBitmapAndState(bm) FROM fbm WHERE feature IN ({', '.join(map(str, cond_ids))})) AS cond "
        f"SELECT feature, bitmapAndCardinality(bm, cond) AS n FROM fbm "
        f"WHERE feature IN ({', '.join(map(str, fids.tolist()))})"
    )


def by_fid(pairs, fids: np.ndarray) -> np.ndarray:
    """[(feature id, count)] -> counts in the order of fids (absent: 0)."""
    pos = {int(f): i for i, f in enumerate(fids)}
    out = np.zeros(len(fids), dtype=np.int64)
    for f, n in pairs:
        out[pos[int(f)]] = int(n)
    return out


# --- DuckDB -------------------------------------------------------------------------------------


def duckdb_pairs(parquet: Path, u, fids, repeat: int) -> dict:
    import duckdb

    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"CREATE TABLE pairs AS SELECT row::UINTEGER AS row, feature::UINTEGER AS feature "
                f"FROM read_parquet({_lit(parquet)}) ORDER BY feature, row")
    setup = time.perf_counter() - t
    sql = pairs_sql(u, fids)
    ms, res = median_ms(lambda: con.execute(sql).fetchall(), repeat)
    floor_ms, _ = median_ms(lambda: con.execute("SELECT 1").fetchall(), 50)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.close()
    return {"ms": ms, "counts": by_fid(res, fids), "setup_s": setup, "threads": int(threads), "sql": sql,
            "floor_ms": floor_ms}


def source_branch(u, field: str) -> tuple[str, str, str] | None:
    """(FROM, customer id, value expression) of a field of the customers universe, or None."""
    prefix, _, column = field.rpartition(".")
    if prefix not in SOURCE_PATHS:
        return None
    src, cid, alias = SOURCE_PATHS[prefix]
    f = u.fields[field]
    col = f'{alias}."{column}"'
    if f.kind == "categorical":
        value = f"CAST({col} AS VARCHAR)"
    elif f.kind == "multi":
        value = f"trim(unnest(string_split(CAST({col} AS VARCHAR), '|')))"
    elif f.kind == "numeric" and f.edges:
        x = f"TRY_CAST({col} AS DOUBLE)"
        whens = " ".join(f"WHEN {x} < {e!r} THEN {_lit(lab)}" for e, lab in zip(f.edges, f.values))
        value = f"CASE {whens} ELSE {_lit(f.values[-1])} END"
    else:
        return None
    return src, cid, value


def _branch_select(u, field: str, where_cid: str | None) -> str:
    src, cid, value = source_branch(u, field)
    prefix, _, column = field.rpartition(".")
    alias = SOURCE_PATHS[prefix][2]
    filt = f'{alias}."{column}" IS NOT NULL' + (f" AND {cid} IN (SELECT cid FROM {where_cid})" if where_cid else "")
    # the value is computed in an inner select so that unnest and CASE are filtered alike
    return (f"SELECT cid, v FROM (SELECT {cid} AS cid, {value} AS v FROM {src} WHERE {filt}) "
            f"WHERE v IS NOT NULL AND v <> ''")


def source_sql(u, fields: list[str]) -> str:
    terms = _terms(CONDITION)
    cond = " INTERSECT ".join(
        f"SELECT cid FROM ({_branch_select(u, t.field, None)}) WHERE v = {_lit(t.value)}" for t in terms)
    cond += " INTERSECT SELECT customer_id FROM customers"
    feats = " UNION ALL ".join(
        f"SELECT {_lit(f)} AS f, v, cid FROM ({_branch_select(u, f, 'cond')})" for f in fields)
    return f"WITH cond AS ({cond}) SELECT f, v, count(DISTINCT cid) AS n FROM ({feats}) GROUP BY f, v"


def duckdb_source(tables_dir: Path, u, fields: list[str], repeat: int) -> dict:
    import duckdb

    con = duckdb.connect()
    t = time.perf_counter()
    for name in ("customers", "orders", "order_lines", "products", "events"):
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet({_lit(tables_dir / (name + '.parquet'))})")
    setup = time.perf_counter() - t
    sql = source_sql(u, fields)
    ms, res = median_ms(lambda: con.execute(sql).fetchall(), repeat)
    con.close()
    fids = np.concatenate([u.fields[f].feature_ids for f in fields])
    pos = {int(fid): i for i, fid in enumerate(fids)}
    counts = np.zeros(len(fids), dtype=np.int64)
    unknown = []
    for f, v, n in res:
        if not u.fields[f].has_value(v):
            unknown.append((f, v, n))  # a value the snapshot does not know: a disagreement, reported
            continue
        counts[pos[u.feature_id(f, v)]] = int(n)
    return {"ms": ms, "counts": counts, "fids": fids, "setup_s": setup, "unknown_values": unknown, "sql": sql}


# --- ClickHouse (chdb) ----------------------------------------------------------------------------


def chdb_anchors(parquet: Path, u, fids, repeat: int) -> dict:
    from chdb import session

    def rows(text: str):
        return [tuple(int(x) for x in line.split(",")) for line in text.strip().splitlines() if line]

    def timed(sql: str) -> dict:
        ms, res = median_ms(lambda: rows(str(sess.query(sql, "CSV"))), repeat)
        return {"ms": ms, "counts": by_fid(res, fids), "sql": sql}

    path = tempfile.mkdtemp(prefix="relate-anchors-chdb-", dir=DATA_ROOT)
    sess = session.Session(path)
    out = {}
    try:
        t = time.perf_counter()
        sess.query("CREATE TABLE pairs (row UInt32, feature UInt32) ENGINE = MergeTree ORDER BY (feature, row)")
        # the Parquet columns arrive nullable; MergeTree refuses nullable sort keys
        sess.query(f"INSERT INTO pairs SELECT assumeNotNull(row), assumeNotNull(feature) "
                   f"FROM file({_lit(parquet)}, Parquet)")
        sess.query("OPTIMIZE TABLE pairs FINAL")
        pairs_setup = time.perf_counter() - t
        bsql = bitmap_sql(u, fids)
        for engine, key in (("Memory", "chdb bitmaps"), ("MergeTree ORDER BY feature", "chdb bitmaps (MergeTree)")):
            t = time.perf_counter()
            sess.query("DROP TABLE IF EXISTS fbm")
            sess.query(f"CREATE TABLE fbm (feature UInt32, bm AggregateFunction(groupBitmap, UInt32)) "
                       f"ENGINE = {engine}")
            sess.query("INSERT INTO fbm SELECT feature, groupBitmapState(row) FROM pairs GROUP BY feature")
            out[key] = {**timed(bsql), "setup_s": time.perf_counter() - t}
        out["chdb pairs"] = {**timed(pairs_sql(u, fids, "in")), "setup_s": pairs_setup}
        floor_ms, _ = median_ms(lambda: str(sess.query("SELECT 1", "CSV")), 50)
        version = str(sess.query("SELECT version()", "CSV")).strip().strip('"')
        threads = int(str(sess.query("SELECT getSetting('max_threads')", "CSV")).strip().strip('"'))
    finally:
        sess.close()
        shutil.rmtree(path, ignore_errors=True)
    return {"version": version, "max_threads": threads, "floor_ms": floor_ms, "anchors": out}


# --- the machine ----------------------------------------------------------------------------------


def git_state() -> dict:
    """HEAD and the uncommitted changes to the engine and kernels: what segsrv's figures measured."""
    from common import REPO

    def git(*cmd):
        return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=30).stdout

    try:
        changed = [line[3:] for line in git("status", "--porcelain", "--", "segsrv", "kernels").splitlines()]
        return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_engine_changes": changed}
    except (OSError, subprocess.SubprocessError):
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each anchor (median; after one warm-up)")
    ap.add_argument("--repeat-ours", type=int, default=200, help="timed runs of segsrv's relate and counts")
    args = ap.parse_args()
    try:
        import chdb  # noqa: F401
    except ImportError:
        sys.exit("relate_anchors: chdb is missing (a bench extra): .venv/bin/pip install chdb, "
                 "or .venv/bin/pip install -e '.[bench]'")

    t_run = time.perf_counter()
    load_before = os.getloadavg()
    busy_before = busy_processes()
    tables_dir = demo_tables(args.customers).parent
    snap = open_snapshot(demo_snapshot(args.customers))
    u = snap.universes["customers"]
    fields = pick_fields(u)
    for t in _terms(CONDITION):
        u.feature_id(t.field, t.value)  # an unknown field or value fails here, with its message
    fids = np.concatenate([u.fields[f].feature_ids for f in fields])
    source_fields = [f for f in fields if source_branch(u, f) is not None]
    print(f"relate anchors on {u.n_rows:,} customers (snapshot {snap.version}), {len(fids)} features over "
          f"{len(fields)} fields, condition {CONDITION}; {os.cpu_count()} cores, {cpu_model()}, "
          f"load average {load_before[0]:.2f}", flush=True)

    # the default kernel threads and one thread (no OpenMP team to wait for on a busy box), call by call
    ours, one = segsrv_sides(snap, u, fields, fids, args.repeat_ours)
    assert np.array_equal(one["counts"], ours["counts"])
    print(f"  segsrv: {ours['n_condition']:,} customers in the condition, counts plan {ours['plan']}", flush=True)
    t = time.perf_counter()
    parquet, n_pairs = pairs_parquet(snap, u)
    print(f"  pairs: {n_pairs:,} (row, feature) entries, sorted by feature ({time.perf_counter() - t:.1f} s)",
          flush=True)

    anchors = {}
    anchors["duckdb pairs"] = duckdb_pairs(parquet, u, fids, args.repeat)
    print(f"  duckdb pairs {anchors['duckdb pairs']['ms']:.1f} ms", flush=True)
    src = duckdb_source(tables_dir, u, source_fields, args.repeat)
    anchors["duckdb source"] = src
    print(f"  duckdb source {src['ms']:.1f} ms", flush=True)
    ch = chdb_anchors(parquet, u, fids, args.repeat)
    anchors.update(ch["anchors"])
    print("  " + ", ".join(f"{k} {a['ms']:.1f} ms" for k, a in ch["anchors"].items()), flush=True)

    # same answers: every anchor's counts against ours, feature by feature
    problems = []
    pos = {int(f): i for i, f in enumerate(fids)}
    for name, a in anchors.items():
        a_fids = a.get("fids", fids)
        mine = ours["counts"][[pos[int(f)] for f in a_fids]]
        differ = np.flatnonzero(mine != a["counts"])
        if len(differ):
            problems.append(f"{name}: {len(differ)} features differ, e.g. " + ", ".join(
                f"{u.feature_name(int(a_fids[i]))} ours {mine[i]} theirs {a['counts'][i]}" for i in differ[:5]))
        if a.get("unknown_values"):
            problems.append(f"{name}: values the snapshot does not know: {a['unknown_values'][:5]}")
    # the service's own answer: the support of every hit (one per tested feature) against the counts
    sup = ours["relate_supports"]
    n_f = np.asarray(u.feature_count[fids])
    tested = {int(f) for f in fids[(n_f > 0) & (n_f < u.n_rows)]}
    if set(sup) != tested or any(sup[f] != ours["counts"][pos[f]] for f in sup):
        problems.append(f"segsrv relate's supports ({len(sup)} hits, {len(tested)} tested) differ from its counts")
    same = not problems
    print(f"same answers: {'yes' if same else 'NO'}")
    for p in problems:
        print(f"  {p}")
    assert same, "the anchors disagree with segsrv (above)"

    base, counts_ms = ours["relate_ms"], ours["counts_ms"]
    threads = _kernels.get_num_threads()
    # "default": up to `threads` threads, as segsrv._kernels' policy picks per call for its work
    rows = [(f"segsrv relate (default, {threads} CPUs)", base, len(fids)),
            (f"segsrv counts (default, {threads} CPUs)", counts_ms, len(fids)),
            ("segsrv relate (1t)", one["relate_ms"], len(fids)), ("segsrv counts (1t)", one["counts_ms"], len(fids))]
    rows += [(name, a["ms"], len(a.get("fids", fids))) for name, a in anchors.items()]
    print(f"\n{'method':36s}{'features':>9s}{'median ms':>12s}{'/ relate':>10s}{'/ counts':>10s}{'set-up s':>10s}")
    for name, ms, nf in rows:
        a = anchors.get(name, {})
        setup = f"{a['setup_s']:10.1f}" if "setup_s" in a else ""
        print(f"{name:36s}{nf:9d}{ms:12.3f}{ms / base:10.1f}{ms / counts_ms:10.1f}{setup}")
    meets = {name: a["ms"] / base >= TARGET_RATIO for name, a in anchors.items()}
    print(f"\ntarget: segsrv relate >= {TARGET_RATIO:.0f}x faster than DuckDB and ClickHouse: "
          + ("met" if all(meets.values()) else "NOT met")
          + " (" + ", ".join(f"{n} {anchors[n]['ms'] / base:.1f}x" for n in anchors) + "; on one kernel thread "
          + ", ".join(f"{anchors[n]['ms'] / one['relate_ms']:.1f}x" for n in anchors) + ")")
    floors = {"duckdb": anchors["duckdb pairs"]["floor_ms"], "chdb": ch["floor_ms"]}
    print(f"per-query floor (SELECT 1, from Python): duckdb {floors['duckdb']:.3f} ms, chdb {floors['chdb']:.3f} ms")
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other busy processes: "
          + ("; ".join(busy_before) or "none seen"))

    result = {
        "command": "python bench/relate_anchors.py " + " ".join(sys.argv[1:]),
        "customers": u.n_rows,
        "snapshot_version": snap.version,
        "condition": str(CONDITION),
        "n_condition": ours["n_condition"],
        "fields": fields,
        "n_features": int(len(fids)),
        "source_fields": source_fields,
        "source_fields_not_expressed": [f for f in fields if f not in source_fields],
        "pairs": n_pairs,
        "repeat": args.repeat,
        "repeat_ours": args.repeat_ours,
        "git": git_state(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "segsrv_threads": _kernels.get_num_threads(),
        "cpu_path": _kernels.cpu_path(),
        "duckdb_threads": anchors["duckdb pairs"]["threads"],
        "chdb_version": ch["version"],
        "chdb_max_threads": ch["max_threads"],
        "select_1_floor_ms": {k: round(v, 3) for k, v in floors.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "other_busy_processes": busy_before,
        "omp_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                "SEGSRV_NUM_THREADS") if k in os.environ},
        "segsrv": {"relate_median_ms": round(base, 3), "counts_median_ms": round(counts_ms, 3),
                   "counts_plan": ours["plan"], "relate_plan": ours["relate_plan"]},
        "segsrv_one_thread": {"relate_median_ms": round(one["relate_ms"], 3),
                              "counts_median_ms": round(one["counts_ms"], 3)},
        "anchors": {name: {"median_ms": round(a["ms"], 3), "ratio_over_relate": round(a["ms"] / base, 1),
                           "ratio_over_counts": round(a["ms"] / counts_ms, 1),
                           "ratio_over_relate_one_thread": round(a["ms"] / one["relate_ms"], 1),
                           "setup_s": round(a["setup_s"], 2),
                           "n_features": len(a.get("fids", fids)), "sql": a["sql"]}
                    for name, a in anchors.items()},
        "same_answers": same,
        "target_ratio": TARGET_RATIO,
        "meets_target": meets,
        "meets_target_one_thread": {name: a["ms"] / one["relate_ms"] >= TARGET_RATIO for name, a in anchors.items()},
        "wall_s": round(time.perf_counter() - t_run, 1),
    }
    print(f"results: {write_result('relate_anchors', result)}")


if __name__ == "__main__":
    main()
