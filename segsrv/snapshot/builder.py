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
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np

from .. import _kernels
from ..errors import BuildError, SpecError
from . import format as fmt
from .paths import FieldPath, resolve_universe_fields
from .spec import Spec, TableSpec, load_spec, suggest

Progress = Callable[[str], None]

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"}
_NUM_TYPES = _INT_TYPES | {"FLOAT", "DOUBLE", "REAL"}
_EXAMPLES = 5


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fmt_num(x: float) -> str:
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def band_labels(edges: list[float]) -> list[str]:
    """Labels of the bands cut by ascending `edges`: <e0, e0-e1, ..., >=ek."""
    labels = [f"<{_fmt_num(edges[0])}"]
    for lo, hi in zip(edges, edges[1:]):
        if lo < 0 or hi < 0:
            labels.append(f"[{_fmt_num(lo)}, {_fmt_num(hi)})")
        else:
            labels.append(f"{_fmt_num(lo)}-{_fmt_num(hi)}")
    labels.append(f">={_fmt_num(edges[-1])}")
    return labels


def _default_progress(msg: str) -> None:
    print(f"[build] {msg}", file=sys.stderr, flush=True)


@dataclass
class _FieldData:
    path: FieldPath
    values: list[str]
    rows: np.ndarray  # uint32, row of each pair
    codes: np.ndarray  # uint32, value index of each pair
    unique_rows: bool  # at most one value per row
    edges: list[float] | None = None
    raw: np.ndarray | None = None  # float64 [n_rows] for own/forward numeric fields


class Builder:
    def __init__(self, spec: Spec, progress: Progress | None = None, threads: int | None = None):
        self.spec = spec
        self.progress = progress or _default_progress
        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads={int(threads)}")
        self.con.execute("SET preserve_insertion_order=false")
        self.types: dict[str, dict[str, str]] = {}
        self.n_rows: dict[str, int] = {}
        self.key_kind: dict[str, str] = {}
        self._t0 = time.perf_counter()

    # -- helpers ---------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self.progress(f"{msg} ({time.perf_counter() - self._t0:.1f} s)")

    def _sql(self, sql: str, where: str):
        try:
            return self.con.execute(sql)
        except duckdb.Error as exc:
            raise BuildError(f"{where}: {str(exc).splitlines()[0]}") from None

    # -- loading and checks ----------------------------------------------------

    def _load_table(self, t: TableSpec) -> None:
        where = f"table {t.name!r}"
        if t.sql is not None:
            self._sql(f"CREATE TABLE {_q(t.name)} AS {t.sql}", f"{where}: sql failed")
        else:
            path = t.file
            if not path.exists():
                raise BuildError(f"{where}: file {str(path)!r} does not exist")
            p = _lit(str(path))
            if t.format in ("csv", "tsv"):
                delim = t.delimiter or ("\t" if t.format == "tsv" else ",")
                reader = f"read_csv({p}, header=true, delim={_lit(delim)})"
            elif t.format == "parquet":
                reader = f"read_parquet({p})"
            elif t.format == "json":
                reader = f"read_json_auto({p}, format='auto')"
            else:
                reader = f"read_json_auto({p}, format='newline_delimited')"
            self._sql(f"CREATE TABLE {_q(t.name)} AS SELECT * FROM {reader}", f"{where}: cannot read {str(path)!r}")
        desc = self.con.execute(f"DESCRIBE {_q(t.name)}").fetchall()
        self.types[t.name] = {row[0]: row[1] for row in desc}
        self.n_rows[t.name] = self.con.execute(f"SELECT count(*) FROM {_q(t.name)}").fetchone()[0]
        self._say(f"loaded {t.name}: {self.n_rows[t.name]:,} rows, {len(desc)} columns")

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

    def _check_key(self, t: TableSpec) -> None:
        key = _q(t.key)
        nulls = self.con.execute(
            f"SELECT count(*) FROM {_q(t.name)} WHERE {key} IS NULL"
        ).fetchone()[0]
        if nulls:
            raise BuildError(f"table {t.name!r}: key column {t.key!r} is empty in {nulls:,} rows")
        dups = self.con.execute(
            f"SELECT {key}, count(*) AS n FROM {_q(t.name)} GROUP BY {key} HAVING count(*) > 1 "
            f"ORDER BY n DESC, {key} LIMIT {_EXAMPLES}"
        ).fetchall()
        if dups:
            total = self.con.execute(
                f"SELECT count(*) FROM (SELECT {key} FROM {_q(t.name)} GROUP BY {key} HAVING count(*) > 1)"
            ).fetchone()[0]
            shown = ", ".join(f"{k!r} ({n} rows)" for k, n in dups)
            raise BuildError(
                f"table {t.name!r}: key column {t.key!r} has {total:,} duplicate values, e.g. {shown}"
            )
        ktype = self.types[t.name][t.key]
        self.con.execute(
            f"CREATE TABLE {_q('__rows_' + t.name)} AS SELECT {key} AS __key, "
            f"(row_number() OVER (ORDER BY {key}) - 1)::BIGINT AS __row FROM {_q(t.name)}"
        )
        self.key_kind[t.name] = "int" if ktype in _INT_TYPES else "bytes"

    def _link_join(self, t: TableSpec, link) -> str:
        """The ON clause joining table alias s to the target's row table alias r."""
        target = self.spec.tables[link.table]
        same = self.types[t.name][link.column] == self.types[target.name][target.key]
        left = f"s.{_q(link.column)}"
        return f"{left} = r.__key" if same else f"CAST({left} AS VARCHAR) = CAST(r.__key AS VARCHAR)"

    def _check_link(self, t: TableSpec, link) -> None:
        on = self._link_join(t, link)
        col = _q(link.column)
        bad = self.con.execute(
            f"SELECT s.{_q(t.key)}, s.{col} FROM {_q(t.name)} s LEFT JOIN {_q('__rows_' + link.table)} r "
            f"ON {on} WHERE s.{col} IS NOT NULL AND r.__row IS NULL ORDER BY s.{_q(t.key)} LIMIT {_EXAMPLES}"
        ).fetchall()
        if bad:
            total = self.con.execute(
                f"SELECT count(*) FROM {_q(t.name)} s LEFT JOIN {_q('__rows_' + link.table)} r "
                f"ON {on} WHERE s.{col} IS NOT NULL AND r.__row IS NULL"
            ).fetchone()[0]
            shown = ", ".join(f"{t.key}={k!r} -> {v!r}" for k, v in bad)
            raise BuildError(
                f"table {t.name!r}: column {link.column!r} (link {link.name!r} -> "
                f"{link.table}.{self.spec.tables[link.table].key}) has {total:,} values with no matching "
                f"key in {link.table!r}, e.g. {shown}"
            )

    def _check_numeric(self, t: TableSpec, column: str) -> None:
        ctype = self.types[t.name][column]
        if ctype in _NUM_TYPES or ctype.startswith("DECIMAL"):
            return
        col = _q(column)
        bad = self.con.execute(
            f"SELECT {_q(t.key)}, {col} FROM {_q(t.name)} WHERE {col} IS NOT NULL AND "
            f"TRY_CAST({col} AS DOUBLE) IS NULL ORDER BY {_q(t.key)} LIMIT {_EXAMPLES}"
        ).fetchall()
        if bad:
            total = self.con.execute(
                f"SELECT count(*) FROM {_q(t.name)} WHERE {col} IS NOT NULL AND TRY_CAST({col} AS DOUBLE) IS NULL"
            ).fetchone()[0]
            shown = ", ".join(f"{t.key}={k!r}: {v!r}" for k, v in bad)
            raise BuildError(
                f"table {t.name!r}: numeric column {column!r} has {total:,} unparsable values, e.g. {shown}"
            )

    def _index_table(self, t: TableSpec) -> None:
        """__ix_<t>: the table with its own row number and the row number of every link target."""
        joins, cols = [], []
        for i, link in enumerate(t.links.values()):
            on = self._link_join(t, link).replace("r.__key", f"r{i}.__key")
            joins.append(f"LEFT JOIN {_q('__rows_' + link.table)} r{i} ON {on}")
            cols.append(f"r{i}.__row AS {_q('__lk_' + link.name)}")
        select = ", ".join(["rr.__row AS __row", *cols, "s.*"])
        self.con.execute(
            f"CREATE TABLE {_q('__ix_' + t.name)} AS SELECT {select} FROM {_q(t.name)} s "
            f"JOIN {_q('__rows_' + t.name)} rr ON s.{_q(t.key)} = rr.__key {' '.join(joins)}"
        )

    def load(self) -> None:
        for t in self.spec.tables.values():
            self._load_table(t)
        for t in self.spec.tables.values():
            self._check_columns(t)
        for t in self.spec.tables.values():
            self._check_key(t)
            for col in t.numeric:
                self._check_numeric(t, col)
        for t in self.spec.tables.values():
            for link in t.links.values():
                self._check_link(t, link)
        for t in self.spec.tables.values():
            self._index_table(t)
        self._say("keys, links and numeric columns checked")

    # -- fields ----------------------------------------------------------------

    def _path_from(self, fp: FieldPath) -> tuple[str, str]:
        """FROM ... JOIN ... clause of a field path and the leaf alias."""
        parts = [f"{_q('__ix_' + (fp.steps[0].source if fp.steps else fp.table))} t0"]
        for i, step in enumerate(fp.steps):
            nxt = f"t{i + 1}"
            tab = _q("__ix_" + step.target)
            lk = _q("__lk_" + step.link.name)
            if step.direction == "forward":
                parts.append(f"JOIN {tab} {nxt} ON {nxt}.__row = t{i}.{lk}")
            else:
                parts.append(f"JOIN {tab} {nxt} ON {nxt}.{lk} = t{i}.__row")
        return " ".join(parts), f"t{len(fp.steps)}"

    def _quantile_edges(self, table: str, column: str, q: int) -> list[float]:
        probs = ", ".join(f"{i / q!r}" for i in range(1, q))
        row = self.con.execute(
            f"SELECT quantile_disc(TRY_CAST({_q(column)} AS DOUBLE), [{probs}]) FROM {_q(table)} "
            f"WHERE TRY_CAST({_q(column)} AS DOUBLE) IS NOT NULL"
        ).fetchone()[0]
        edges = sorted({float(f"{x:.6g}") for x in (row or []) if x is not None and math.isfinite(x)})
        return edges

    def _field(self, fp: FieldPath, n_rows: int) -> _FieldData:
        frm, leaf = self._path_from(fp)
        col = f"{leaf}.{_q(fp.column)}"
        exists = fp.semantics == "exists"
        if fp.kind == "numeric":
            nspec = self.spec.tables[fp.table].numeric[fp.column]
            edges = list(nspec.edges) if nspec.edges else self._quantile_edges(fp.table, fp.column, nspec.quantiles)
            res = self.con.execute(
                f"SELECT t0.__row AS r, TRY_CAST({col} AS DOUBLE) AS x FROM {frm} WHERE {col} IS NOT NULL"
            ).fetchnumpy()
            rows = np.asarray(res["r"], dtype=np.int64)
            x = np.asarray(res["x"], dtype=np.float64)
            ok = ~np.isnan(x)
            rows, x = rows[ok], x[ok]
            raw = None
            if not exists:
                raw = np.full(n_rows, np.nan)
                raw[rows] = x
            if not edges:
                return _FieldData(fp, [], np.zeros(0, np.uint32), np.zeros(0, np.uint32), True, [], raw)
            bands = np.searchsorted(np.asarray(edges), x, side="right").astype(np.int64)
            if exists:
                pair = np.unique(rows * (len(edges) + 1) + bands)
                rows, bands = pair // (len(edges) + 1), pair % (len(edges) + 1)
            return _FieldData(
                fp, band_labels(edges), rows.astype(np.uint32), bands.astype(np.uint32), not exists, edges, raw
            )
        if fp.kind == "multi":
            ctype = self.types[fp.table][fp.column]
            if ctype.endswith("[]"):
                value = f"trim(CAST(unnest({col}) AS VARCHAR))"
            else:
                delim = self.spec.tables[fp.table].multi[fp.column]
                value = f"trim(unnest(string_split(CAST({col} AS VARCHAR), {_lit(delim)})))"
            inner = f"SELECT t0.__row AS r, {value} AS v FROM {frm} WHERE {col} IS NOT NULL"
            pairs = f"SELECT DISTINCT r, v FROM ({inner}) WHERE v <> ''"
            unique_rows = False
        else:
            pairs = f"SELECT {'DISTINCT ' if exists else ''}t0.__row AS r, CAST({col} AS VARCHAR) AS v FROM {frm} WHERE {col} IS NOT NULL"
            unique_rows = not exists
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE __pairs AS {pairs}")
        values = [v for (v,) in self.con.execute("SELECT DISTINCT v FROM __pairs ORDER BY v").fetchall()]
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE __codes AS SELECT v, (row_number() OVER (ORDER BY v) - 1)::UINTEGER AS code "
            "FROM (SELECT DISTINCT v FROM __pairs)"
        )
        res = self.con.execute("SELECT p.r::UINTEGER AS r, c.code FROM __pairs p JOIN __codes c USING (v)").fetchnumpy()
        self.con.execute("DROP TABLE __pairs; DROP TABLE __codes")
        return _FieldData(fp, values, np.asarray(res["r"], np.uint32), np.asarray(res["code"], np.uint32), unique_rows)

    # -- universes -------------------------------------------------------------

    def _row_ids(self, table: str) -> np.ndarray:
        res = self.con.execute(f"SELECT __key FROM {_q('__rows_' + table)} ORDER BY __row")
        if self.key_kind[table] == "int":
            ids = np.asarray(res.fetchnumpy()["__key"], dtype=np.int64)
        else:
            keys = [str(k) for (k,) in res.fetchall()]
            encoded = [k.encode("utf-8") for k in keys]
            width = max((len(e) for e in encoded), default=1) or 1
            ids = np.array(encoded, dtype=f"S{width}")
            if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
                raise BuildError(
                    f"table {table!r}: key values differ only in trailing NUL bytes or do not sort bytewise; "
                    "use keys without NUL characters"
                )
        return ids

    def build_universe(self, name: str, out: Path) -> dict:
        uspec = self.spec.universes[name]
        fields = resolve_universe_fields(self.spec, name)
        n = self.n_rows[uspec.table]
        if n >= 2**32 - 1:
            raise BuildError(f"universe {name!r}: {n:,} rows exceed the 2^32-1 row limit")
        n_words = (n + 63) // 64
        udir = out / "universes" / name
        threshold = self.spec.dense_threshold
        min_dense = max(1, math.ceil(threshold * n))

        field_meta, datas = [], []
        feature_offset = 0
        dense_blocks, sparse_ids_blocks, sparse_sizes = [], [], []
        slots, counts_all = [], []
        row_counts = np.zeros(n, dtype=np.int64)
        n_dense = n_sparse = 0
        for fp in fields:
            fd = self._field(fp, n)
            k = len(fd.values)
            counts = np.bincount(fd.codes, minlength=k).astype(np.int64) if k else np.zeros(0, np.int64)
            dense_mask = counts >= min_dense
            slot = np.empty(k, dtype=np.int64)
            d_idx = np.flatnonzero(dense_mask)
            s_idx = np.flatnonzero(~dense_mask)
            slot[d_idx] = n_dense + np.arange(len(d_idx))
            slot[s_idx] = -(n_sparse + np.arange(len(s_idx))) - 1
            if len(d_idx):
                local = np.full(k, -1, dtype=np.int64)
                local[d_idx] = np.arange(len(d_idx))
                block = np.zeros((len(d_idx), n_words), dtype=np.uint64)
                sel = dense_mask[fd.codes]
                _kernels.set_bits(block, local[fd.codes[sel]], np.ascontiguousarray(fd.rows[sel]))
                dense_blocks.append(block)
            if len(s_idx):
                sel = ~dense_mask[fd.codes]
                r, c = fd.rows[sel], fd.codes[sel]
                order = np.lexsort((r, c))
                sparse_ids_blocks.append(r[order])
                sparse_sizes.append(counts[s_idx])
            n_dense += len(d_idx)
            n_sparse += len(s_idx)
            slots.append(slot)
            counts_all.append(counts)
            row_counts += np.bincount(fd.rows, minlength=n)
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
            if fd.raw is not None:
                rel = f"universes/{name}/numeric/{fp.name}.bin"
                fmt.write_array(out / rel, fd.raw)
                meta["numeric_file"] = rel
            field_meta.append(meta)
            fd.raw = None
            datas.append((fd, feature_offset))
            feature_offset += k
        n_features = feature_offset
        self._say(f"universe {name}: {len(fields)} fields, {n_features:,} features ({n_dense} dense, {n_sparse} sparse)")

        dense = np.concatenate(dense_blocks) if dense_blocks else np.zeros((0, n_words), np.uint64)
        fmt.write_array(udir / "dense.bin", dense)
        del dense, dense_blocks
        sparse_ids = np.concatenate(sparse_ids_blocks).astype(np.uint32) if sparse_ids_blocks else np.zeros(0, np.uint32)
        sizes = np.concatenate(sparse_sizes) if sparse_sizes else np.zeros(0, np.int64)
        fmt.write_array(udir / "sparse_ids.bin", sparse_ids)
        fmt.write_array(udir / "sparse_offsets.bin", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        fmt.write_array(udir / "feature_slot.bin", np.concatenate(slots) if slots else np.zeros(0, np.int64))
        fmt.write_array(udir / "feature_count.bin", np.concatenate(counts_all) if counts_all else np.zeros(0, np.int64))

        # CSR: fields are visited in feature-id order, so each row's ids come out ascending
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(row_counts, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.uint32)
        cursor = indptr[:-1].copy()
        for fd, offset in datas:
            rows = fd.rows.astype(np.int64)
            fids = fd.codes.astype(np.uint32) + np.uint32(offset)
            if fd.unique_rows:
                indices[cursor[rows]] = fids
                cursor[rows] += 1
            else:
                order = np.lexsort((fids, rows))
                rows, fids = rows[order], fids[order]
                idx = np.arange(len(rows))
                first = np.ones(len(rows), dtype=bool)
                first[1:] = rows[1:] != rows[:-1]
                rank = idx - np.maximum.accumulate(np.where(first, idx, 0))
                indices[cursor[rows] + rank] = fids
                cursor += np.bincount(rows, minlength=n)
            fd.rows = fd.codes = None
        fmt.write_array(udir / "csr_indptr.bin", indptr)
        fmt.write_array(udir / "csr_indices.bin", indices)
        fmt.write_array(udir / "row_ids.bin", self._row_ids(uspec.table))
        self._say(f"universe {name}: {n:,} rows, {len(indices):,} row-feature pairs written")
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


def _publish(tmp: Path, snapshot_dir: Path, version: str, progress: Progress) -> Path:
    final = snapshot_dir / version
    if final.exists():
        # a published version is immutable: only an identical rebuild may reuse its name
        old = final / fmt.MANIFEST
        if not old.exists() or old.read_bytes() != (tmp / fmt.MANIFEST).read_bytes():
            raise BuildError(f"version {version!r} of {snapshot_dir.name!r} exists with different content; "
                             "choose another --version")
        shutil.rmtree(tmp)
        progress(f"version {version} already published; identical content")
    else:
        os.rename(tmp, final)
    fmt.write_atomic(snapshot_dir / fmt.CURRENT, (version + "\n").encode())
    return final


def build_snapshot(
    spec_path: str | Path | Spec,
    out_root: str | Path,
    *,
    version: str | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> Path:
    """Build the snapshot described by a spec under OUT_ROOT/NAME/VERSION and point CURRENT at it.

    Returns the version directory. On any error nothing is left behind.
    """
    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    say = progress or _default_progress
    if version is not None and (not version or "/" in version or version.startswith(".")):
        raise SpecError(f"version {version!r} is not a valid directory name")
    snapshot_dir = Path(out_root) / spec.name
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    tmp = snapshot_dir / f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        builder = Builder(spec, say, threads)
        # resolve every universe's paths before the (slow) load, so spec errors come first
        for uname in spec.universes:
            resolve_universe_fields(spec, uname)
        builder.load()
        universes = {uname: builder.build_universe(uname, tmp) for uname in sorted(spec.universes)}
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": fmt.file_sha256(path)}
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
        if version is None:
            version = hashlib.sha256(fmt.dumps_manifest(manifest)).hexdigest()[:16]
        manifest["version"] = version
        fmt.write_atomic(tmp / fmt.MANIFEST, fmt.dumps_manifest(manifest))
        final = _publish(tmp, snapshot_dir, version, say)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            snapshot_dir.rmdir()  # only if we created it and it is empty
        except OSError:
            pass
        raise
    builder._say(f"published {spec.name}/{version} ({sum(f['bytes'] for f in files.values()) / 1e6:,.1f} MB)")
    return final
