"""Offline builder: tables (via DuckDB) -> an immutable snapshot directory.

Steps: load every table into an embedded DuckDB; check keys (present,
unique), links (every value exists in the target) and numeric columns
(parsable); number each table's rows by ascending key; for every field of
every universe, let DuckDB produce the (row, value) pairs along the field's
path; encode values into feature ids; write dense bitsets (frequent
features) or sorted id arrays (rare ones), the row -> features CSR index,
the id map and the raw numeric columns; write the manifest last; publish the
version directory and CURRENT atomically. See format.py for the file layout.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np

from .. import _kernels
from ..errors import BuildError, SpecError
from . import format as fmt
from .bands import DEFAULT_TOLERANCE, NONE, PreviousBands, band_labels, choose_edges, previous_bands
from .paths import FieldPath, resolve_universe_fields
from .publish import discard, entries_of, new_staging_dir, point_current, publish_version
from .shards import PartitionPlan, shard_of_keys
from .spec import ROW_KEY, Spec, TableSpec, expand_column_globs, load_spec, suggest

Progress = Callable[[str], None]
FitModels = Callable[[Path, dict, Progress], dict]

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"}
_NUM_TYPES = _INT_TYPES | {"FLOAT", "DOUBLE", "REAL"}
_EXAMPLES = 5


@dataclass(frozen=True)
class ShardRows:
    """The rows a shard build keeps: shard INDEX of COUNT under PLAN (segsrv/snapshot/shards.py)."""

    plan: PartitionPlan
    index: int
    count: int


#: {(table, column): {"values": [...], "edges": [...] or None}}: a feature dictionary fixed before the build
Vocabulary = dict[tuple[str, str], dict]


def _key_kind(sql_type: str) -> str:
    """How a key column is stored: "int" (int64) or "bytes" (its text)."""
    return "int" if sql_type in _INT_TYPES - {"UBIGINT", "HUGEINT"} else "bytes"


def _is_num(sql_type: str) -> bool:
    return sql_type in _NUM_TYPES or sql_type.startswith("DECIMAL")


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _label_sql(col: str, sql_type: str) -> str:
    """The text of a categorical value: integral floating-point numbers as integers (a DOUBLE 1.0 is '1', as
    a query's 1 or 1.0 is), everything else as DuckDB prints it."""
    if sql_type in ("DOUBLE", "FLOAT", "REAL") or sql_type.startswith("DECIMAL"):
        return (f"CASE WHEN {col} = trunc({col}) AND abs({col}) < 1e15 THEN CAST(CAST({col} AS BIGINT) AS VARCHAR) "
                f"ELSE CAST({col} AS VARCHAR) END")
    return f"CAST({col} AS VARCHAR)"


def default_progress(msg: str) -> None:
    print(f"[build] {msg}", file=sys.stderr, flush=True)


@dataclass
class _Leaf:
    """A feature column of one table, encoded once: value codes per row of that table."""

    values: list[str]
    codes: np.ndarray | None = None  # int32 [n_table], -1 = missing (single-valued columns)
    multi_offsets: np.ndarray | None = None  # int64 [n_table + 1] (multi-valued columns)
    multi_codes: np.ndarray | None = None  # int32, codes of each row, ascending
    raw: np.ndarray | None = None  # float64 [n_table] for numeric columns
    edges: list[float] | None = None


@dataclass
class _FieldData:
    path: FieldPath
    values: list[str]
    counts: np.ndarray  # int64 [n_values]
    codes_by_row: np.ndarray | None  # int32 [n_rows], -1 = none (at most one value per row)
    rows: np.ndarray | None  # uint32 pairs sorted by (row, code) (several values per row)
    codes: np.ndarray | None
    edges: list[float] | None = None
    raw: np.ndarray | None = None  # float64 [n_rows] for own/forward numeric fields

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if self.codes_by_row is not None:
            rows = np.flatnonzero(self.codes_by_row >= 0).astype(np.uint32)
            return rows, self.codes_by_row[rows].astype(np.uint32)
        return self.rows, self.codes


def _expand(counts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Concatenation of the ranges [starts[i], starts[i] + counts[i])."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(starts - (ends - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


class Builder:
    def __init__(self, spec: Spec, progress: Progress | None = None, threads: int | None = None,
                 previous: PreviousBands = NONE, band_tolerance: float = DEFAULT_TOLERANCE,
                 vocabulary: Vocabulary | None = None, shard: ShardRows | None = None):
        self.spec = spec
        self.vocabulary = vocabulary  # fixed values and edges of every feature column (a sharded build)
        self.shard = shard
        self.previous = previous  # the quantile edges of the version this build replaces
        self.band_tolerance = band_tolerance
        self.progress = progress or default_progress
        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads={int(threads)}")
        self.types: dict[str, dict[str, str]] = {}
        self.n_rows: dict[str, int] = {}
        self.key_kind: dict[str, str] = {}
        self.keys: dict[str, np.ndarray] = {}  # row -> key, sorted
        self.row_of_pos: dict[str, np.ndarray] = {}  # DuckDB rowid -> row
        self.pos_of_row: dict[str, np.ndarray] = {}
        self.links: dict[tuple[str, str], np.ndarray] = {}  # (table, link) -> target row or -1
        self._reverse: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._leaves: dict[tuple[str, str], _Leaf] = {}
        self._t0 = time.perf_counter()

    # -- helpers ---------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self.progress(f"{msg} ({time.perf_counter() - self._t0:.1f} s)")

    def _sql(self, sql: str, where: str, advice: str = ""):
        try:
            return self.con.execute(sql)
        except duckdb.Error as exc:
            self._raise(exc, where, advice)

    @staticmethod
    def _raise(exc: duckdb.Error, where: str, advice: str = ""):
        """A BuildError with DuckDB's whole message: its CSV errors list the line, the possible fixes and the
        options it detected (but not the position in our CREATE statement: it is not the user's text)."""
        lines = str(exc).rstrip().splitlines()
        detail = [ln for ln in lines[1:] if ln.strip() and not ln.startswith("LINE ") and set(ln.strip()) != {"^"}]
        raise BuildError("\n  ".join([f"{where}: {lines[0]}", *detail, *([advice] if advice else [])])) from None

    def _by_row(self, table: str, expr: str, dtype, fill, where: str = "TRUE") -> np.ndarray:
        """Column expression scattered into an array indexed by row (fill where NULL)."""
        res = self.con.execute(
            f"SELECT rowid AS p, {expr} AS x FROM {_q(table)} WHERE ({expr}) IS NOT NULL AND {where}"
        ).fetchnumpy()
        out = np.full(self.n_rows[table], fill, dtype=dtype)
        out[self._rows(table, res["p"])] = np.asarray(res["x"], dtype=dtype)
        return out

    def _examples(self, table: str, rows: np.ndarray, column: str, sep: str = ": ") -> str:
        t = self.spec.tables[table]
        rows = [int(r) for r in rows[:_EXAMPLES]]
        got = self.con.execute(
            f"SELECT {_q(t.key)}, {_q(column)} FROM {_q(table)} WHERE rowid IN "
            f"({', '.join(str(int(self.pos_of_row[table][r])) for r in rows)}) ORDER BY {_q(t.key)}"
        ).fetchall()
        return ", ".join(f"{t.key}={k!r}{sep}{v!r}" for k, v in got)

    # -- loading and checks ----------------------------------------------------

    def _reader(self, t: TableSpec, whole_file: bool = True) -> str:
        """The DuckDB table function reading T's file (CSV: types decided over every row, docs/spec.md)."""
        p = _lit(str(t.file))
        if t.format in ("csv", "tsv"):
            delim = t.delimiter or ("\t" if t.format == "tsv" else ",")
            options = f"header=true, delim={_lit(delim)}" + (", sample_size=-1" if whole_file else "")
            if t.null_values:  # before typing, so ' ' in a number column leaves it a number
                options += f", nullstr=[{', '.join(_lit(v) for v in ('', *t.null_values))}]"
            text = [*t.strings, *(c for c in t.column_null_values if c not in t.strings)]
            if text:
                options += ", types={" + ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in text) + "}"
            return f"read_csv({p}, {options})"
        if t.format == "parquet":
            return f"read_parquet({p})"
        if t.format == "json":
            return f"read_json_auto({p}, format='auto')"
        return f"read_json_auto({p}, format='newline_delimited')"

    def _file_columns(self, t: TableSpec) -> list[str]:
        """The columns of T's file or query (a CSV's from a sample: only the names count)."""
        plain = replace(t, strings=[], column_null_values={})
        source = t.sql if t.sql is not None else f"SELECT * FROM {self._reader(plain, whole_file=False)}"
        return [row[0] for row in self._sql(f"DESCRIBE {source}", self._read_failed(t)).fetchall()]

    def _read_failed(self, t: TableSpec) -> str:
        return f"table {t.name!r}: " + ("sql failed" if t.sql is not None else f"cannot read {str(t.file)!r}")

    def _load_table(self, t: TableSpec) -> TableSpec:
        """Load T as DuckDB table T.name; returns T with its column globs expanded."""
        where = f"table {t.name!r}"
        if t.file is not None and not t.file.exists():
            raise BuildError(f"{where}: file {str(t.file)!r} does not exist")
        if t.has_column_globs() or t.strings or t.column_null_values:
            columns = self._file_columns(t)
            t = expand_column_globs(t, columns)
            self._check_listed(t, columns)
        if t.sql is not None:
            self._sql(f"CREATE TABLE __load AS SELECT * FROM ({t.sql}) WHERE {self._shard_filter(t)}",
                      self._read_failed(t))
        else:
            self._read_file(t)
        self._finish_table(t)
        if self.shard is not None and t.name == self.shard.plan.entity:
            self._keep_entity_shard(t)
        desc = self.con.execute(f"DESCRIBE {_q(t.name)}").fetchall()
        self.types[t.name] = {row[0]: row[1] for row in desc}
        self.n_rows[t.name] = self.con.execute(f"SELECT count(*) FROM {_q(t.name)}").fetchone()[0]
        self._say(f"loaded {t.name}: {self.n_rows[t.name]:,} rows, {len(desc)} columns")
        return t

    def _read_file(self, t: TableSpec) -> None:
        try:
            self.con.execute(f"CREATE TABLE __load AS SELECT * FROM {self._reader(t)} WHERE {self._shard_filter(t)}")
            return
        except duckdb.Error as exc:
            if t.format not in ("csv", "tsv"):
                self._raise(exc, self._read_failed(t))
            if "Error when sniffing file" not in str(exc):
                self._raise(exc, self._read_failed(t), _CSV_FIXES)
        # no dialect fits every line: DuckDB's sample-based read names the line that breaks it
        self._sql(f"CREATE TABLE __load AS SELECT * FROM {self._reader(t, whole_file=False)} "
                  f"WHERE {self._shard_filter(t)}", self._read_failed(t), _CSV_FIXES)

    def _shard_filter(self, t: TableSpec) -> str:
        """SQL condition on T's raw rows keeping this shard's: a partitioned table's rows whose link (compared
        as text) names a row of its parent, already loaded and filtered; rows with an empty link in shard 0."""
        if self.shard is None or t.name not in self.shard.plan.parents:
            return "TRUE"
        column, parent = self.shard.plan.parents[t.name]
        pkey = self.spec.tables[parent].key
        empty = f" OR {_q(column)} IS NULL" if self.shard.index == 0 else ""
        return f"(CAST({_q(column)} AS VARCHAR) IN (SELECT CAST({_q(pkey)} AS VARCHAR) FROM {_q(parent)}){empty})"

    def _keep_entity_shard(self, t: TableSpec) -> None:
        """Keep the shard's rows of the entity table: those whose key hashes to this shard (shards.py)."""
        key = _q(t.key)
        if _key_kind(self.types_of(t.name)[t.key]) == "int":
            res = self.con.execute(f"SELECT rowid AS p, CAST({key} AS BIGINT) AS k FROM {_q(t.name)} "
                                   f"WHERE {key} IS NOT NULL").fetchnumpy()
            pos, keys = np.asarray(res["p"], dtype=np.int64), np.asarray(res["k"], dtype=np.int64)
        else:
            res = self.con.execute(f"SELECT rowid, CAST({key} AS VARCHAR) FROM {_q(t.name)} "
                                   f"WHERE {key} IS NOT NULL").fetchall()
            pos = np.fromiter((p for p, _ in res), dtype=np.int64, count=len(res))
            keys = np.array([k.encode("utf-8") for _, k in res], dtype=object)
        keep = pos[shard_of_keys(keys, self.shard.count) == self.shard.index]
        self.con.execute("CREATE TEMP TABLE __keep AS SELECT unnest(?::BIGINT[]) AS p", [keep.tolist()])
        # rows with an empty key stay, so the key check reports them as in an unsharded build
        self.con.execute(f"CREATE TABLE __shard AS SELECT * FROM {_q(t.name)} WHERE rowid IN (SELECT p FROM __keep) "
                         f"OR {key} IS NULL ORDER BY rowid")
        self.con.execute(f"DROP TABLE {_q(t.name)}; DROP TABLE __keep; ALTER TABLE __shard RENAME TO {_q(t.name)}")

    def types_of(self, table: str) -> dict[str, str]:
        """The SQL type of each column of a loaded table."""
        return {row[0]: row[1] for row in self.con.execute(f"DESCRIBE {_q(table)}").fetchall()}

    def _check_listed(self, t: TableSpec, columns: list[str]) -> None:
        for col, role in [*((c, "strings") for c in t.strings), *((c, "null_values") for c in t.column_null_values)]:
            if col not in columns:
                raise BuildError(f"table {t.name!r}: column {col!r} ({role}) not found{suggest(col, columns)}; "
                                 f"the table has columns {columns}")

    def _finish_table(self, t: TableSpec) -> None:
        """__load -> T.name: forced strings, missing-value markers, retyping, the generated row key."""
        types = {row[0]: row[1] for row in self.con.execute("DESCRIBE __load").fetchall()}
        from_csv = t.format in ("csv", "tsv")
        exprs, retype = [], []
        for col, sql_type in types.items():
            expr = _q(col)
            if col in t.strings and sql_type != "VARCHAR":
                expr, sql_type = f"CAST({expr} AS VARCHAR)", "VARCHAR"
            markers = (() if from_csv else t.null_values) + t.column_null_values.get(col, ())
            if markers:
                if sql_type == "JSON":  # a JSON field of mixed types: its text, unquoted
                    expr, sql_type = f"({expr} ->> '$')", "VARCHAR"
                expr = f"CASE WHEN CAST({expr} AS VARCHAR) IN ({', '.join(_lit(m) for m in markers)}) THEN NULL ELSE {expr} END"
                if sql_type == "VARCHAR" and col not in t.strings:
                    retype.append(col)
            exprs.append(f"{expr} AS {_q(col)}")
        if t.key == ROW_KEY:
            if ROW_KEY in types:
                raise BuildError(f"table {t.name!r}: key {ROW_KEY!r} numbers the rows, but the file has a column "
                                 f"named {ROW_KEY!r}; rename it")
            exprs.insert(0, f"rowid + 1 AS {_q(ROW_KEY)}")  # rowid: the file's row order (insertion order kept)
        if exprs == [f"{_q(c)} AS {_q(c)}" for c in types]:
            self.con.execute(f"ALTER TABLE __load RENAME TO {_q(t.name)}")
            return
        self.con.execute(f"CREATE TABLE __typed AS SELECT {', '.join(exprs)} FROM __load ORDER BY rowid")
        self.con.execute("DROP TABLE __load")
        casts = {col: self._number_type("__typed", col) for col in retype}
        if not any(casts.values()):
            self.con.execute(f"ALTER TABLE __typed RENAME TO {_q(t.name)}")
            return
        select = ", ".join(f"CAST({_q(c)} AS {casts[c]}) AS {_q(c)}" if casts.get(c) else _q(c)
                           for c, *_ in self.con.execute("DESCRIBE __typed").fetchall())
        self.con.execute(f"CREATE TABLE {_q(t.name)} AS SELECT {select} FROM __typed ORDER BY rowid")
        self.con.execute("DROP TABLE __typed")

    def _number_type(self, table: str, col: str) -> str | None:
        """BIGINT when every value of a text column reads back as the integer it writes, else DOUBLE when
        every one is a number, else None (it stays text)."""
        c = _q(col)
        not_int, not_num = self.con.execute(
            f"SELECT count(*) FILTER (WHERE CAST(TRY_CAST({c} AS BIGINT) AS VARCHAR) IS DISTINCT FROM trim({c})), "
            f"count(*) FILTER (WHERE TRY_CAST({c} AS DOUBLE) IS NULL) FROM {_q(table)} WHERE {c} IS NOT NULL"
        ).fetchone()
        return "BIGINT" if not not_int else "DOUBLE" if not not_num else None

    def _check_columns(self, t: TableSpec) -> None:
        cols = self.types[t.name]
        wanted = [(t.key, "key")]
        wanted += [(c, "categorical") for c in t.categorical]
        wanted += [(c, "multi") for c in t.multi]
        wanted += [(c, "numeric") for c in t.numeric]
        wanted += [(link.column, f"links.{link.name}.column") for link in t.links.values()]
        for col, role in wanted:
            if col not in cols:
                raise BuildError(
                    f"table {t.name!r}: column {col!r} ({role}) not found{suggest(col, cols)}; "
                    f"the table has columns {list(cols)}"
                )
        if "rowid" in cols:
            raise BuildError(f"table {t.name!r}: column name 'rowid' is reserved; rename it with a sql table")

    def _rows(self, table: str, positions) -> np.ndarray:
        """DuckDB rowids (insertion positions) -> our row numbers."""
        return self.row_of_pos[table][np.asarray(positions, dtype=np.int64)]

    def _index_table(self, t: TableSpec) -> None:
        """Number the rows of a table by ascending key (row_of_pos / pos_of_row); check the key."""
        key = _q(t.key)
        nulls = self.con.execute(f"SELECT count(*) FROM {_q(t.name)} WHERE {key} IS NULL").fetchone()[0]
        if nulls:
            raise BuildError(f"table {t.name!r}: key column {t.key!r} is empty in {nulls:,} rows")
        kind = _key_kind(self.types[t.name][t.key])
        self.key_kind[t.name] = kind
        n = self.n_rows[t.name]
        if kind == "int":
            res = self.con.execute(f"SELECT rowid AS p, CAST({key} AS BIGINT) AS k FROM {_q(t.name)}").fetchnumpy()
            pos = np.asarray(res["p"], dtype=np.int64)
            raw_keys = np.asarray(res["k"], dtype=np.int64)
        else:
            res = self.con.execute(f"SELECT rowid, CAST({key} AS VARCHAR) FROM {_q(t.name)}").fetchall()
            pos = np.fromiter((p for p, _ in res), dtype=np.int64, count=len(res))
            encoded = [k.encode("utf-8") for _, k in res]
            width = max((len(e) for e in encoded), default=1) or 1
            raw_keys = np.array(encoded, dtype=f"S{width}")
        if len(pos) != n or (n and (pos.min() < 0 or pos.max() >= n)):
            raise BuildError(f"table {t.name!r}: unexpected row positions from DuckDB")
        by_pos = np.empty(n, dtype=raw_keys.dtype)
        by_pos[pos] = raw_keys
        order = np.argsort(by_pos, kind="stable")  # row r is the r-th smallest key
        keys = by_pos[order]
        self.pos_of_row[t.name] = order
        row_of_pos = np.empty(n, dtype=np.int64)
        row_of_pos[order] = np.arange(n, dtype=np.int64)
        self.row_of_pos[t.name] = row_of_pos
        dup = np.flatnonzero(keys[1:] == keys[:-1]) if len(keys) > 1 else np.zeros(0, np.int64)
        if len(dup):
            values, counts = np.unique(keys[dup], return_counts=True)
            worst = sorted(zip(-counts, values.tolist()))[:_EXAMPLES]  # most repeated first
            shown = ", ".join(f"{_key_text(v)!r} ({1 - c} rows)" for c, v in worst)
            raise BuildError(
                f"table {t.name!r}: key column {t.key!r} has {len(values):,} duplicate values, e.g. {shown}"
            )
        if kind == "bytes" and len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            raise BuildError(
                f"table {t.name!r}: key values differ only in trailing NUL bytes or do not sort bytewise; "
                "use keys without NUL characters"
            )
        self.keys[t.name] = keys

    def _check_numeric(self, t: TableSpec, column: str) -> None:
        if _is_num(self.types[t.name][column]):
            return
        col = _q(column)
        bad = self.con.execute(
            f"SELECT rowid AS p FROM {_q(t.name)} WHERE {col} IS NOT NULL AND TRY_CAST({col} AS DOUBLE) IS NULL"
        ).fetchnumpy()["p"]
        bad = np.sort(self._rows(t.name, bad))
        if len(bad):
            raise BuildError(
                f"table {t.name!r}: numeric column {column!r} has {len(bad):,} unparsable values, e.g. "
                f"{self._examples(t.name, np.asarray(bad), column)} (values that mark a missing number go in "
                f"the table's null_values)"
            )

    def _resolve_link(self, t: TableSpec, link) -> None:
        """links[(t, link)]: target row of every row (-1 where the column is empty)."""
        target = self.spec.tables[link.table]
        tkeys = self.keys[target.name]
        col = _q(link.column)
        ltype = self.types[t.name][link.column]
        n = self.n_rows[t.name]
        if self.key_kind[target.name] == "int":
            if ltype in _INT_TYPES:
                expr = f"CAST({col} AS BIGINT)"
            elif _is_num(ltype):  # 3.0 matches key 3; 3.5 matches nothing
                expr = f"CASE WHEN {col} = floor({col}) THEN TRY_CAST({col} AS BIGINT) END"
            else:
                expr = f"TRY_CAST(trim(CAST({col} AS VARCHAR)) AS BIGINT)"
            res = self.con.execute(
                f"SELECT rowid AS p, COALESCE({expr}, 0) AS x, ({expr}) IS NOT NULL AS ok FROM {_q(t.name)} "
                f"WHERE {col} IS NOT NULL"
            ).fetchnumpy()
            rows = self._rows(t.name, res["p"])
            x = np.asarray(res["x"], dtype=np.int64)
            ok = np.asarray(res["ok"], dtype=bool)
        else:
            res = self.con.execute(
                f"SELECT rowid, CAST({col} AS VARCHAR) AS x FROM {_q(t.name)} WHERE {col} IS NOT NULL"
            ).fetchall()
            rows = self._rows(t.name, np.fromiter((r for r, _ in res), dtype=np.int64, count=len(res)))
            enc = [v.encode("utf-8") for _, v in res]
            ok = np.fromiter((len(e) <= tkeys.dtype.itemsize for e in enc), dtype=bool, count=len(enc))
            x = np.array([e if len(e) <= tkeys.dtype.itemsize else b"" for e in enc], dtype=tkeys.dtype)
        if self.key_kind[target.name] == "int" and len(tkeys) and int(tkeys[-1]) - int(tkeys[0]) == len(tkeys) - 1:
            pos = x - tkeys[0]  # contiguous integer keys: the position is an offset
            found = ok & (pos >= 0) & (pos < len(tkeys))
        else:
            pos = np.searchsorted(tkeys, x)
            found = ok & (pos < len(tkeys))
            found[found] = tkeys[pos[found]] == x[found]
        if not found.all():
            bad_rows = np.sort(rows[~found])
            raise BuildError(
                f"table {t.name!r}: column {link.column!r} (link {link.name!r} -> {link.table}.{target.key}) has "
                f"{len(bad_rows):,} values with no matching key in {link.table!r}, e.g. "
                f"{self._examples(t.name, bad_rows, link.column, ' -> ')}"
            )
        out = np.full(n, -1, dtype=np.int64)
        out[rows] = pos
        self.links[(t.name, link.name)] = out

    def load(self) -> None:
        """Load every table (a sql table after the tables it reads), check keys, links and numeric columns;
        self.spec becomes the spec with its column globs expanded."""
        # a shard loads a partitioned table after the table its rows are routed through
        order = sorted(self.spec.tables.values(), key=lambda t: self.shard.plan.depth(t.name) if self.shard else 0)
        later = {t.name for t in order if t.sql is not None or self._routed_through_sql(t.name)}
        loaded = {t.name: self._load_table(t) for t in order if t.name not in later}
        pending = [t for t in order if t.name in later]
        while pending:
            waiting = []
            for t in pending:
                missing = _later_tables(t, set(self.spec.tables) - set(loaded)) if t.sql is not None else set()
                if self.shard is not None and t.name in self.shard.plan.parents:
                    missing |= {self.shard.plan.parents[t.name][1]} - set(loaded)
                if missing:
                    waiting.append(t)
                else:
                    loaded[t.name] = self._load_table(t)
            if len(waiting) == len(pending):
                names = ", ".join(f"{t.name!r} reads {sorted(_later_tables(t, {w.name for w in waiting}))}"
                                  for t in waiting)
                raise BuildError(f"sql tables read each other in a cycle: {names}")
            pending = waiting
        self.spec = replace(self.spec, tables={name: loaded[name] for name in self.spec.tables})
        for t in self.spec.tables.values():
            self._check_columns(t)
        for t in self.spec.tables.values():
            self._index_table(t)
            for col in t.numeric:
                self._check_numeric(t, col)
        for t in self.spec.tables.values():
            for link in t.links.values():
                self._resolve_link(t, link)
        self._say("keys, links and numeric columns checked")

    def _routed_through_sql(self, table: str) -> bool:
        """Whether a shard routes TABLE's rows through a sql table (so it loads after the sql tables start)."""
        parents = self.shard.plan.parents if self.shard is not None else {}
        while table in parents:
            table = parents[table][1]
            if self.spec.tables[table].sql is not None:
                return True
        return False

    # -- leaves and paths ------------------------------------------------------

    def _quantile_edges(self, table: str, column: str, q: int) -> list[float]:
        probs = ", ".join(f"{i / q!r}" for i in range(1, q))
        row = self.con.execute(
            f"SELECT quantile_disc(TRY_CAST({_q(column)} AS DOUBLE), [{probs}]) FROM {_q(table)} "
            f"WHERE TRY_CAST({_q(column)} AS DOUBLE) IS NOT NULL"
        ).fetchone()[0]
        return sorted({float(f"{x:.6g}") for x in (row or []) if x is not None and math.isfinite(x)})

    def _leaf(self, table: str, column: str, kind: str) -> _Leaf:
        cached = self._leaves.get((table, column))
        if cached is not None:
            return cached
        ix = _q(table)
        col = _q(column)
        n = self.n_rows[table]
        fixed = self.vocabulary.get((table, column)) if self.vocabulary is not None else None
        if self.vocabulary is not None and fixed is None:
            raise BuildError(f"table {table!r}: column {column!r} is missing from the shared feature dictionary")
        if kind == "numeric":
            nspec = self.spec.tables[table].numeric[column]
            raw = self._by_row(table, f"TRY_CAST({col} AS DOUBLE)", np.float64, np.nan)
            raw[~np.isfinite(raw)] = np.nan
            if fixed is not None:
                edges = list(fixed["edges"])
            elif nspec.edges:
                edges = list(nspec.edges)
            else:
                edges, note = choose_edges(f"{table}.{column}", self._quantile_edges(table, column, nspec.quantiles),
                                           nspec.quantiles, nspec.pin, self.previous, np.sort(raw[~np.isnan(raw)]),
                                           self.band_tolerance)
                if note:
                    self._say(note)
            codes = np.full(n, -1, dtype=np.int32)
            if edges:
                ok = ~np.isnan(raw)
                codes[ok] = np.searchsorted(np.asarray(edges), raw[ok], side="right")
            leaf = _Leaf(band_labels(edges) if edges else [], codes=codes, raw=raw, edges=edges)
        elif kind == "multi":
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE __pairs AS {self._multi_pairs_sql(table, column)}")
            if fixed is not None:
                values = list(fixed["values"])
                self._fixed_dict(values)
            else:
                values = [v for (v,) in self.con.execute("SELECT DISTINCT v FROM __pairs ORDER BY v").fetchall()]
                self.con.execute(
                    "CREATE OR REPLACE TEMP TABLE __dict AS SELECT v, (row_number() OVER (ORDER BY v) - 1)::INTEGER "
                    "AS code FROM (SELECT DISTINCT v FROM __pairs)"
                )
            res = self.con.execute("SELECT p.r, d.code FROM __pairs p JOIN __dict d USING (v)").fetchnumpy()
            self.con.execute("DROP TABLE __pairs; DROP TABLE __dict")
            rows = self._rows(table, res["r"])
            key = np.sort(rows * max(len(values), 1) + np.asarray(res["code"], dtype=np.int64))
            rows, mcodes = np.divmod(key, max(len(values), 1))
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
            leaf = _Leaf(values, multi_offsets=offsets, multi_codes=mcodes.astype(np.int32))
        else:
            text = _label_sql(col, self.types[table][column])
            if fixed is not None:
                values = list(fixed["values"])
                self._fixed_dict(values)
            else:
                values = [v for (v,) in self.con.execute(
                    f"SELECT DISTINCT {text} AS v FROM {ix} WHERE {col} IS NOT NULL ORDER BY v").fetchall()]
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE __dict AS SELECT v, (row_number() OVER (ORDER BY v) - 1)::INTEGER "
                    f"AS code FROM (SELECT DISTINCT {text} AS v FROM {ix} WHERE {col} IS NOT NULL)"
                )
            res = self.con.execute(
                f"SELECT t.rowid AS p, d.code FROM {ix} t JOIN __dict d ON {_label_sql('t.' + col, self.types[table][column])} = d.v"
            ).fetchnumpy()
            self.con.execute("DROP TABLE __dict")
            codes = np.full(n, -1, dtype=np.int32)
            codes[self._rows(table, res["p"])] = np.asarray(res["code"], dtype=np.int32)
            leaf = _Leaf(values, codes=codes)
        self._leaves[(table, column)] = leaf
        return leaf

    def _multi_pairs_sql(self, table: str, column: str) -> str:
        """The distinct (rowid r, value v) pairs of a multi-valued column."""
        col = _q(column)
        if self.types[table][column].endswith("[]"):
            value = f"trim(CAST(unnest({col}) AS VARCHAR))"
        else:
            value = f"trim(unnest(string_split(CAST({col} AS VARCHAR), {_lit(self.spec.tables[table].multi[column])})))"
        return (f"SELECT DISTINCT r, v FROM (SELECT rowid AS r, {value} AS v FROM {_q(table)} WHERE {col} IS NOT NULL) "
                f"WHERE v <> ''")

    def _fixed_dict(self, values: list[str]) -> None:
        """__dict(v, code): the shared dictionary's values, coded by position."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE __dict AS SELECT unnest(?::VARCHAR[]) AS v, "
                         "unnest(range(?))::INTEGER AS code", [values, len(values)])

    def column_vocabulary(self, t: TableSpec) -> Vocabulary:
        """The values (and band edges) of every feature column of a loaded table, over all its rows: the
        dictionary a sharded build fixes before building any shard."""
        table = t.name
        out: Vocabulary = {}
        for column in t.categorical:
            text = _label_sql(_q(column), self.types[table][column])
            out[(table, column)] = {"values": [v for (v,) in self.con.execute(
                f"SELECT DISTINCT {text} AS v FROM {_q(table)} WHERE {_q(column)} IS NOT NULL ORDER BY v").fetchall()],
                "edges": None}
        for column in t.multi:
            out[(table, column)] = {"values": [v for (v,) in self.con.execute(
                f"SELECT DISTINCT v FROM ({self._multi_pairs_sql(table, column)}) ORDER BY v").fetchall()],
                "edges": None}
        for column, nspec in t.numeric.items():
            edges = list(nspec.edges) if nspec.edges else self._quantile_edges(table, column, nspec.quantiles)
            out[(table, column)] = {"values": band_labels(edges) if edges else [], "edges": edges}
        return out

    def load_table(self, t: TableSpec) -> TableSpec:
        """Load one table (as load() does, without the key and link checks); returns it with globs expanded."""
        t = self._load_table(t)
        self._check_columns(t)
        return t

    def drop_table(self, table: str) -> None:
        self.con.execute(f"DROP TABLE {_q(table)}")

    def content_fingerprint(self) -> str:
        """SHA-256 over every loaded table's row count and order-independent sum of row hashes."""
        digest = hashlib.sha256()
        for name in sorted(self.spec.tables):
            cols = ", ".join(_q(c) for c in self.types[name])
            n, total = self.con.execute(f"SELECT count(*), sum(hash({cols})::HUGEINT) FROM {_q(name)}").fetchone()
            digest.update(f"{name}\t{n}\t{total}\n".encode("utf-8"))
        return digest.hexdigest()

    def _reverse_index(self, owner: str, link: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `owner` grouped by the row their link points at: (order, offsets)."""
        cached = self._reverse.get((owner, link))
        if cached is None:
            lk = self.links[(owner, link)]
            target = self.spec.tables[owner].links[link].table
            valid = np.flatnonzero(lk >= 0)
            order = valid[np.argsort(lk[valid], kind="stable")]
            offsets = np.zeros(self.n_rows[target] + 1, dtype=np.int64)
            np.cumsum(np.bincount(lk[valid], minlength=self.n_rows[target]), out=offsets[1:])
            cached = self._reverse[(owner, link)] = (order, offsets)
        return cached

    def _walk(self, root: str, steps, cache: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """(root rows, rows reached, one-per-root?) pairs along `steps`, prefixes cached."""
        key = tuple((s.direction, s.owner, s.link.name) for s in steps)
        if key in cache:
            return cache[key]
        if not steps:
            rows = np.arange(self.n_rows[root], dtype=np.int64)
            state = (rows, rows, True)
        else:
            base, cur, unique = self._walk(root, steps[:-1], cache)
            step = steps[-1]
            if step.direction == "forward":
                nxt = self.links[(step.owner, step.link.name)][cur]
                keep = nxt >= 0
                state = (base, nxt, unique) if keep.all() else (base[keep], nxt[keep], unique)
            else:
                order, offsets = self._reverse_index(step.owner, step.link.name)
                counts = offsets[cur + 1] - offsets[cur]
                state = (np.repeat(base, counts), order[_expand(counts, offsets[cur])], False)
        cache[key] = state
        return state

    def _field(self, fp: FieldPath, universe_table: str, cache: dict) -> _FieldData:
        n = self.n_rows[universe_table]
        leaf = self._leaf(fp.table, fp.column, fp.kind)
        base, cur, unique = self._walk(universe_table, fp.steps, cache)
        k = max(len(leaf.values), 1)
        raw = None
        if leaf.codes is not None:
            c = leaf.codes[cur]
            keep = c >= 0
            rows, codes = base[keep], c[keep].astype(np.int64)
            if leaf.raw is not None and unique:
                raw = np.full(n, np.nan)
                raw[base] = leaf.raw[cur]
        else:
            counts = leaf.multi_offsets[cur + 1] - leaf.multi_offsets[cur]
            rows = np.repeat(base, counts)
            codes = leaf.multi_codes[_expand(counts, leaf.multi_offsets[cur])].astype(np.int64)
            unique = False
        if not unique:
            key = rows * k + codes
            key.sort()
            if len(key) > 1:
                key = key[np.concatenate(([True], key[1:] != key[:-1]))]
            rows, codes = np.divmod(key, k)
        values = list(leaf.values)
        counts = np.bincount(codes, minlength=len(values)).astype(np.int64)
        if fp.kind != "numeric" and len(values) and not counts.all() and self.vocabulary is None:
            # values of the column that no row of this universe reaches
            kept = counts > 0
            codes = (np.cumsum(kept) - 1)[codes]
            values = [v for v, kp in zip(values, kept) if kp]
            counts = counts[kept]
        if unique:
            by_row = np.full(n, -1, dtype=np.int32)
            by_row[rows] = codes
            return _FieldData(fp, values, counts, by_row, None, None, leaf.edges, raw)
        return _FieldData(fp, values, counts, None, rows.astype(np.uint32), codes.astype(np.uint32), leaf.edges, raw)

    # -- universes -------------------------------------------------------------

    def build_universe(self, name: str, out: Path) -> dict:
        uspec = self.spec.universes[name]
        fields = resolve_universe_fields(self.spec, name)
        n = self.n_rows[uspec.table]
        if n >= 2**32 - 1:
            raise BuildError(f"universe {name!r}: {n:,} rows exceed the 2^32-1 row limit")
        n_words = (n + 63) // 64
        udir = out / "universes" / name
        threshold = self.spec.dense_threshold
        # exact: 0.07 * 100 is 7.000000000000001 in floating point, yet 7 of 100 rows is 7%
        min_dense = max(1, math.ceil(Fraction(repr(float(threshold))) * n))

        field_meta, datas = [], []
        feature_offset = 0
        dense_blocks, sparse_ids_blocks, sparse_sizes = [], [], []
        slots, counts_all = [], []
        row_counts = np.zeros(n, dtype=np.int64)
        n_dense = n_sparse = 0
        cache: dict = {}
        for i, fp in enumerate(fields):
            fd = self._field(fp, uspec.table, cache)
            # drop cached walks no later field shares a prefix with
            later = {tuple((s.direction, s.owner, s.link.name) for s in f.steps[:j]) for f in fields[i + 1:]
                     for j in range(len(f.steps) + 1)}
            for key in [k for k in cache if k not in later]:
                del cache[key]
            k = len(fd.values)
            counts = fd.counts
            dense_mask = counts >= min_dense
            slot = np.empty(k, dtype=np.int64)
            d_idx = np.flatnonzero(dense_mask)
            s_idx = np.flatnonzero(~dense_mask)
            slot[d_idx] = n_dense + np.arange(len(d_idx))
            slot[s_idx] = -(n_sparse + np.arange(len(s_idx))) - 1
            rows, codes = fd.pairs()
            if len(d_idx):
                local = np.full(k, -1, dtype=np.int64)
                local[d_idx] = np.arange(len(d_idx))
                block = np.zeros((len(d_idx), n_words), dtype=np.uint64)
                sel = dense_mask[codes]
                _kernels.set_bits(block, local[codes[sel]], np.ascontiguousarray(rows[sel]))
                dense_blocks.append(block)
            if len(s_idx):
                sel = ~dense_mask[codes]
                r, c = rows[sel], codes[sel]
                order = np.argsort(c, kind="stable")  # pairs are row-sorted: ids come out ascending
                sparse_ids_blocks.append(r[order])
                sparse_sizes.append(counts[s_idx])
            n_dense += len(d_idx)
            n_sparse += len(s_idx)
            slots.append(slot)
            counts_all.append(counts)
            row_counts += np.bincount(rows, minlength=n)
            del rows, codes
            meta = {
                "name": fp.name,
                "kind": fp.kind,
                "semantics": fp.semantics,
                "hops": [s.name for s in fp.steps],
                "table": fp.table,
                "column": fp.column,
                "values": fd.values,
                "counts": counts.tolist(),
                "feature_offset": feature_offset,
            }
            if fd.edges is not None:
                meta["edges"] = fd.edges
                quantiles = self.spec.tables[fp.table].numeric[fp.column].quantiles
                if quantiles:  # what a rebuild's edges are compared with (bands.py)
                    meta["quantiles"] = quantiles
            if fd.raw is not None:
                rel = f"universes/{name}/numeric/{fp.name}.bin"
                fmt.write_array(out / rel, fd.raw)
                meta["numeric_file"] = rel
            field_meta.append(meta)
            fd.raw = None
            datas.append((fd, feature_offset))
            feature_offset += k
            self._say(f"universe {name}: field {fp.name} ({fp.semantics}): {k:,} values")
        n_features = feature_offset
        del cache
        self._say(f"universe {name}: {len(fields)} fields, {n_features:,} features ({n_dense} dense, {n_sparse} sparse)")

        dense = np.concatenate(dense_blocks) if dense_blocks else np.zeros((0, n_words), np.uint64)
        del dense_blocks
        fmt.write_array(udir / "dense.bin", dense)
        del dense
        sparse_ids = np.concatenate(sparse_ids_blocks).astype(np.uint32) if sparse_ids_blocks else np.zeros(0, np.uint32)
        del sparse_ids_blocks
        sizes = np.concatenate(sparse_sizes) if sparse_sizes else np.zeros(0, np.int64)
        fmt.write_array(udir / "sparse_ids.bin", sparse_ids)
        fmt.write_array(udir / "sparse_offsets.bin", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        slot_all = np.concatenate(slots) if slots else np.zeros(0, np.int64)
        fmt.write_array(udir / "feature_slot.bin", slot_all)
        fmt.write_array(udir / "feature_count.bin", np.concatenate(counts_all) if counts_all else np.zeros(0, np.int64))

        # CSR: fields are visited in feature-id order, so each row's ids come out ascending; the sparse CSR
        # (the transpose of sparse_ids.bin) is the same index restricted to the sparse-stored features, filled
        # in the same pass (a counting sort: each row's slots are reserved, then filled feature by feature)
        indices, cursor, indptr = _csr_slots(row_counts)
        del row_counts
        # ... where it can pay off: too few sparse ids and it is left empty (segsrv.snapshot.format)
        with_sparse_csr = fmt.sparse_csr_pays(len(sparse_ids), n)
        sparse_indices, sparse_cursor, sparse_indptr = _csr_slots(
            np.bincount(sparse_ids, minlength=n) if with_sparse_csr else np.zeros(0, np.int64))
        if not with_sparse_csr:
            sparse_indptr = np.zeros(0, np.int64)
        del sparse_ids
        is_sparse = slot_all < 0
        for fd, offset in datas:
            if fd.codes_by_row is not None:
                rows = np.flatnonzero(fd.codes_by_row >= 0)
                fids = fd.codes_by_row[rows].astype(np.uint32) + np.uint32(offset)
                unique_rows = True
            else:  # pairs sorted by (row, code)
                rows, fids = fd.rows.astype(np.int64), fd.codes + np.uint32(offset)
                unique_rows = False
            fd.codes_by_row = fd.rows = fd.codes = None
            _csr_fill(indices, cursor, rows, fids, unique_rows)
            keep = is_sparse[fids]
            if with_sparse_csr and keep.any():
                _csr_fill(sparse_indices, sparse_cursor, rows[keep], fids[keep], unique_rows)
            del rows, fids, keep
        del cursor, sparse_cursor
        fmt.write_array(udir / "csr_indptr.bin", indptr)
        fmt.write_array(udir / "csr_indices.bin", indices)
        fmt.write_array(udir / "sparse_csr_indptr.bin", sparse_indptr)
        fmt.write_array(udir / "sparse_csr_indices.bin", sparse_indices)
        fmt.write_array(udir / "row_ids.bin", self.keys[uspec.table])
        self._say(f"universe {name}: {n:,} rows, {len(indices):,} row-feature pairs written "
                  f"({len(sparse_indices):,} of sparse features)")
        return {
            "table": uspec.table,
            "key": self.spec.tables[uspec.table].key,
            "key_kind": self.key_kind[uspec.table],
            "n_rows": n,
            "n_features": n_features,
            "n_dense": n_dense,
            "n_sparse": n_sparse,
            "dense_threshold": threshold,
            "fields": field_meta,
        }


def _csr_slots(row_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices to fill, each row's next free position, indptr) of a CSR with `row_counts` entries per row."""
    indptr = np.zeros(len(row_counts) + 1, dtype=np.int64)
    np.cumsum(row_counts, out=indptr[1:])
    return np.empty(int(indptr[-1]), dtype=np.uint32), indptr[:-1].copy(), indptr


def _csr_fill(indices: np.ndarray, cursor: np.ndarray, rows: np.ndarray, fids: np.ndarray, unique_rows: bool) -> None:
    """Append feature ids `fids` to their `rows`' lists (rows ascending; unique_rows: each row at most once,
    else each row's ids contiguous and ascending) and advance the rows' cursors."""
    if unique_rows:
        indices[cursor[rows]] = fids
        cursor[rows] += 1
        return
    idx = np.arange(len(rows))
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    rank = idx - np.maximum.accumulate(np.where(first, idx, 0))  # position among the row's ids
    indices[cursor[rows] + rank] = fids
    cursor += np.bincount(rows, minlength=len(cursor))


#: after DuckDB's CSV fixes: which of them a spec sets, and how to apply the others (docs/spec.md)
_CSV_FIXES = ("In the spec: strings = [COLUMN] reads a column as text (DuckDB's types={...: 'VARCHAR'}), "
              "null_values lists missing-value markers (nullstr), delimiter sets delim; for any other read_csv "
              "option read the file in a sql table: sql = \"SELECT * FROM read_csv('FILE', OPTION)\"")


def _later_tables(t: TableSpec, not_loaded: set[str]) -> set[str]:
    """The tables of NOT_LOADED that T's sql reads (none when DuckDB cannot parse it: running it tells why)."""
    try:
        named = {n.lower() for n in duckdb.get_table_names(t.sql)}
    except duckdb.Error:
        return set()
    return {name for name in not_loaded if name.lower() in named and name != t.name}


def _key_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _publish(tmp: Path, snapshot_dir: Path, version: str, manifest: bytes, progress: Progress,
             set_current: bool = True) -> Path:
    final = snapshot_dir / version
    if final.exists():
        # a published version is immutable: only an identical rebuild may reuse its name
        old = final / fmt.MANIFEST
        if not old.exists() or old.read_bytes() != manifest:
            raise BuildError(f"version {version!r} of {snapshot_dir.name!r} exists with different content; "
                             "choose another --version")
        shutil.rmtree(tmp)
        progress(f"version {version} already published; identical content")
    else:
        publish_version(tmp, snapshot_dir, version, manifest)
    if set_current:
        point_current(snapshot_dir, version)
    return final


def file_entries(directory: Path, threads: int | None = None) -> dict[str, dict]:
    """The manifest's file list of a written version: {relative path: {bytes, xxh3, sha256}}."""
    rels = [p.relative_to(directory).as_posix() for p in sorted(p for p in directory.rglob("*") if p.is_file())]
    return entries_of(directory, rels, threads or _kernels.get_num_threads())


def build_snapshot(
    spec_path: str | Path | Spec,
    out_root: str | Path,
    *,
    version: str | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    fit_models: FitModels | None = None,
    band_tolerance: float = DEFAULT_TOLERANCE,
    set_current: bool = True,
    vocabulary: Vocabulary | None = None,
    shard: ShardRows | None = None,
    reuse: Callable[[str, dict[str, int]], Path | None] | None = None,
) -> Path:
    """Build the snapshot described by a spec under OUT_ROOT/NAME/VERSION and point CURRENT at it.

    A spec that declares models needs `fit_models(version_dir, declarations, progress)`: it opens the
    finished data in version_dir, writes the model files into it and returns the manifest's "models"
    section (segsrv.engine.predict.models.fit_declared_models; the builder does not fit, the engine
    does).

    Quantile band edges are kept from the CURRENT version of OUT_ROOT/NAME when the new data's quantiles
    are within `band_tolerance` of them (segsrv.snapshot.bands). `set_current=False` publishes the version
    without pointing CURRENT at it (a caller that publishes a catalog version on top points CURRENT).

    A shard build (segsrv.snapshot.shardbuild) passes the shared `vocabulary`, the `shard` whose rows to keep
    and `reuse(content_fingerprint, rows_per_table)`: called once the tables are loaded, it returns the version directory
    to keep instead of building (nothing is published then), or None to build.

    Returns the version directory. On any error nothing is left behind; a failure to write (a full
    disk, a file size limit, permissions) is a BuildError that says what failed.
    """
    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    say = progress or default_progress
    if version is not None and (not version or "/" in version or version.startswith(".")):
        raise SpecError(f"version {version!r} is not a valid directory name")
    if isinstance(band_tolerance, bool) or not isinstance(band_tolerance, (int, float)) or not 0 <= band_tolerance <= 1:
        raise SpecError(f"band tolerance (--band-tolerance): expected a share of rows 0..1, got {band_tolerance!r}")
    if spec.models and fit_models is None:
        raise BuildError(f"the spec declares models {sorted(spec.models)}, but this build cannot fit them "
                         f"(build with `segsrv build`, or pass fit_models)")
    snapshot_dir = Path(out_root) / spec.name
    current_before = (snapshot_dir / fmt.CURRENT).read_bytes() if (snapshot_dir / fmt.CURRENT).is_file() else None
    try:
        return _build(spec, snapshot_dir, version, say, threads, fit_models, float(band_tolerance), set_current,
                      vocabulary, shard, reuse)
    except (OSError, duckdb.IOException) as exc:
        what = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else str(exc)
        current_after = (snapshot_dir / fmt.CURRENT).read_bytes() if (snapshot_dir / fmt.CURRENT).is_file() else None
        left = ("nothing was published and the partial build was removed" if current_after == current_before
                else "CURRENT was changed before the failure")
        raise BuildError(f"cannot write the snapshot under {snapshot_dir}: {what}; {left}") from exc


def _build(spec: Spec, snapshot_dir: Path, version: str | None, say: Progress, threads: int | None,
           fit_models: FitModels | None, band_tolerance: float, set_current: bool,
           vocabulary: Vocabulary | None = None, shard: ShardRows | None = None,
           reuse: Callable[[str, dict[str, int]], Path | None] | None = None) -> Path:
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(snapshot_dir, "build")
    try:
        previous, note = previous_bands(snapshot_dir)
        if note:
            say(note)
        builder = Builder(spec, say, threads, previous, band_tolerance, vocabulary, shard)
        # resolve every universe's paths before the (slow) load, so spec errors come first; column globs
        # need the tables' columns, so with them the paths are resolved after the load
        globs = any(t.has_column_globs() for t in spec.tables.values())
        for uname in spec.universes if not globs else ():
            resolve_universe_fields(spec, uname)
        builder.load()
        for uname in spec.universes if globs else ():
            resolve_universe_fields(builder.spec, uname)
        kept = reuse(builder.content_fingerprint(), dict(builder.n_rows)) if reuse is not None else None
        if kept is not None:
            discard(tmp)
            return kept
        universes = {uname: builder.build_universe(uname, tmp) for uname in sorted(spec.universes)}
        files = file_entries(tmp, threads)
        manifest = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "name": spec.name,
            "description": spec.description,
            "version": None,
            "source": {"spec_sha256": spec.fingerprint},
            "universes": universes,
            "segments": {},
            "files": files,
        }
        if spec.models:
            # the data is complete: open it as a version (a provisional manifest), fit, add the model files
            manifest["version"] = "staging"
            (tmp / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(manifest))
            manifest["models"] = fit_models(tmp, spec.models, say)
            (tmp / fmt.MANIFEST).unlink()
            manifest["version"] = None
            manifest["files"] = files = file_entries(tmp, threads)
        if version is None:
            version = hashlib.sha256(fmt.dumps_manifest(manifest)).hexdigest()[:16]
        manifest["version"] = version
        final = _publish(tmp, snapshot_dir, version, fmt.dumps_manifest(manifest), say, set_current)
    except BaseException:
        discard(tmp)
        try:
            snapshot_dir.rmdir()  # only if we created it and it is empty
        except OSError:
            pass
        raise
    builder._say(f"published {spec.name}/{version} ({sum(f['bytes'] for f in files.values()) / 1e6:,.1f} MB)")
    return final
