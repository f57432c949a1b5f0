"""The build spec: a TOML file describing tables, links and universes.

See docs/spec.md for the user documentation. Parsing checks the shape of the
spec (unknown keys, wrong types, links to undeclared tables); whether the
named files and columns exist is checked by the builder against the data.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import SpecError, suggest

FILE_FORMATS = ("csv", "tsv", "parquet", "json", "ndjson")
#: `key = "$row"`: the builder numbers a file table's rows 1..n in file order (docs/spec.md, "Keys")
ROW_KEY = "$row"
_GLOB_CHARS = set("*?[")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class NumericSpec:
    column: str
    edges: tuple[float, ...] | None = None  # explicit band edges, ascending
    quantiles: int | None = None  # or: number of quantile bands
    pin: bool = False  # quantile edges: keep the previous version's whatever the data (snapshot/bands.py)


@dataclass(frozen=True)
class LinkSpec:
    name: str  # the step name in field paths (forward)
    column: str
    table: str
    reverse: str | None  # the step name from the target back to this table


@dataclass
class TableSpec:
    name: str
    key: str
    file: Path | None = None
    format: str | None = None
    sql: str | None = None
    delimiter: str | None = None  # CSV/TSV override
    categorical: list[str] = field(default_factory=list)
    multi: dict[str, str] = field(default_factory=dict)  # column -> delimiter
    numeric: dict[str, NumericSpec] = field(default_factory=dict)
    links: dict[str, LinkSpec] = field(default_factory=dict)
    # missing-value markers: for every column, and per column (docs/spec.md, "Missing values")
    null_values: tuple[str, ...] = ()
    column_null_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    strings: list[str] = field(default_factory=list)  # columns (or globs) read as text, as written in the file

    def has_column_globs(self) -> bool:
        """Whether a categorical / multi / numeric / strings entry is a glob (expanded against the data)."""
        return any(is_glob(c) for c in [*self.categorical, *self.multi, *self.numeric, *self.strings])

    def feature_columns(self) -> dict[str, str]:
        """column -> kind (categorical, multi, numeric)."""
        out = {c: "categorical" for c in self.categorical}
        out.update({c: "multi" for c in self.multi})
        out.update({c: "numeric" for c in self.numeric})
        return out


@dataclass
class UniverseSpec:
    name: str
    table: str
    include: list[str]
    exclude: list[str] = field(default_factory=list)


@dataclass
class Spec:
    name: str
    description: str
    base_dir: Path
    tables: dict[str, TableSpec]
    universes: dict[str, UniverseSpec]
    dense_threshold: float
    max_hops: int
    fingerprint: str  # sha256 of the spec text
    # models fitted at build time ([models.NAME]): NAME -> a Predict query (JSON form) the engine fits
    models: dict[str, dict] = field(default_factory=dict)
    # [shards] entity: the root table a sharded build partitions by (segsrv/snapshot/shards.py)
    shard_entity: str | None = None


#: the keys of a [models.NAME] table: a Predict query without row data (docs/spec.md)
MODEL_KEYS = {"from", "target", "segment", "evidence_fields", "l2", "prior_strength"}


def _expect(obj, kind, where: str):
    if not isinstance(obj, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SpecError(f"{where}: expected {names}, got {type(obj).__name__} {obj!r}")
    return obj


def _check_keys(obj: dict, allowed: set[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}{suggest(key, allowed)}; allowed: {sorted(allowed)}")


def _parse_numeric(col: str, raw, where: str) -> NumericSpec:
    if raw is True or raw == {}:
        return NumericSpec(col, quantiles=4)
    _expect(raw, dict, where)
    _check_keys(raw, {"edges", "quantiles", "pin"}, where)
    pin = raw.get("pin", False)
    if not isinstance(pin, bool):
        raise SpecError(f"{where}.pin: expected true or false, got {pin!r}")
    if pin and "quantiles" not in raw:
        raise SpecError(f"{where}.pin: pins quantile edges; explicit 'edges' are always kept as written")
    if ("edges" in raw) == ("quantiles" in raw):
        raise SpecError(f"{where}: give exactly one of 'edges' (list of numbers) or 'quantiles' (int)")
    if "edges" in raw:
        edges = _expect(raw["edges"], list, f"{where}.edges")
        if not edges or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges):
            raise SpecError(f"{where}.edges: expected a non-empty list of numbers, got {edges!r}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise SpecError(f"{where}.edges: must be strictly ascending, got {edges!r}")
        return NumericSpec(col, edges=tuple(float(e) for e in edges))
    q = raw["quantiles"]
    if not isinstance(q, int) or isinstance(q, bool) or not 2 <= q <= 100:
        raise SpecError(f"{where}.quantiles: expected an integer 2..100, got {q!r}")
    return NumericSpec(col, quantiles=q, pin=pin)


def is_glob(column: str) -> bool:
    return bool(_GLOB_CHARS & set(column))


def _string_list(raw, where: str) -> list[str]:
    return [_expect(c, str, where) for c in _expect(raw, list, where)]


def _parse_null_values(table: TableSpec, raw, where: str) -> None:
    """`null_values = [...]` (every column) or `{ column = [...] }` (those columns)."""
    if isinstance(raw, list):
        table.null_values = tuple(_string_list(raw, where))
        return
    for col, values in _expect(raw, (list, dict), where).items():
        table.column_null_values[col] = tuple(_string_list(values, f"{where}.{col}"))


def _parse_table(name: str, raw: dict, base_dir: Path) -> TableSpec:
    where = f"tables.{name}"
    _expect(raw, dict, where)
    _check_keys(
        raw,
        {"file", "format", "sql", "key", "categorical", "multi", "numeric", "links", "delimiter", "null_values",
         "strings"},
        where,
    )
    if ("file" in raw) == ("sql" in raw):
        raise SpecError(f"{where}: give exactly one of 'file' or 'sql'")
    if "key" not in raw:
        raise SpecError(f"{where}: missing 'key' (the column that identifies a row)")
    table = TableSpec(name=name, key=_expect(raw["key"], str, f"{where}.key"))
    if "file" in raw:
        path = Path(_expect(raw["file"], str, f"{where}.file"))
        table.file = path if path.is_absolute() else base_dir / path
        fmt = raw.get("format")
        if fmt is None:
            fmt = infer_format(table.file)
            if fmt is None:
                raise SpecError(
                    f"{where}.file: cannot tell the format of {raw['file']!r} from its name; "
                    f"set format to one of {list(FILE_FORMATS)}"
                )
        if fmt not in FILE_FORMATS:
            raise SpecError(f"{where}.format: {fmt!r} is not one of {list(FILE_FORMATS)}")
        table.format = fmt
    else:
        table.sql = _expect(raw["sql"], str, f"{where}.sql")
        if table.key == ROW_KEY:
            raise SpecError(f"{where}.key: {ROW_KEY!r} numbers the rows of a file; a sql table's row order is not "
                            f"defined: number them in the query (row_number() OVER (ORDER BY ...)) and name that column")
    if "delimiter" in raw:
        table.delimiter = _expect(raw["delimiter"], str, f"{where}.delimiter")
    _parse_null_values(table, raw.get("null_values", []), f"{where}.null_values")
    table.strings = _string_list(raw.get("strings", []), f"{where}.strings")
    table.categorical = _string_list(raw.get("categorical", []), f"{where}.categorical")
    for col, delim in _expect(raw.get("multi", {}), dict, f"{where}.multi").items():
        if not isinstance(delim, str) or not delim:
            raise SpecError(f"{where}.multi.{col}: expected a non-empty delimiter string, got {delim!r}")
        table.multi[col] = delim
    for col, spec in _expect(raw.get("numeric", {}), dict, f"{where}.numeric").items():
        table.numeric[col] = _parse_numeric(col, spec, f"{where}.numeric.{col}")
    for link, spec in _expect(raw.get("links", {}), dict, f"{where}.links").items():
        lw = f"{where}.links.{link}"
        _expect(spec, dict, lw)
        _check_keys(spec, {"column", "table", "reverse"}, lw)
        for req in ("column", "table"):
            if req not in spec:
                raise SpecError(f"{lw}: missing '{req}'")
        reverse = spec.get("reverse")
        if reverse is not None:
            _expect(reverse, str, f"{lw}.reverse")
            if not _NAME_RE.match(reverse):
                raise SpecError(f"{lw}.reverse: reverse name {reverse!r} must be an identifier (no dots)")
        if not _NAME_RE.match(link):
            raise SpecError(f"{lw}: link name {link!r} must be an identifier (no dots)")
        table.links[link] = LinkSpec(link, spec["column"], spec["table"], reverse)
    _check_feature_columns(table, where, [c for c in table.feature_columns() if not is_glob(c)])
    return table


def _check_feature_columns(table: TableSpec, where: str, columns) -> None:
    seen: dict[str, str] = {}
    for col, kind in (
        [(c, "categorical") for c in table.categorical]
        + [(c, "multi") for c in table.multi]
        + [(c, "numeric") for c in table.numeric]
    ):
        if col in seen:
            raise SpecError(f"{where}: column {col!r} is declared both {seen[col]} and {kind}")
        seen[col] = kind
    for col in columns:
        if "." in col:
            raise SpecError(f"{where}: column name {col!r} contains a dot; rename it with a sql table")
        if col in table.links:
            raise SpecError(f"{where}: {col!r} is both a link name and a feature column")


def _expand(patterns, columns: list[str], taken: set[str], where: str, key_and_links_left_out: bool = True) -> list[str]:
    """Entries in order, each glob replaced by the columns it matches (file order) that no explicit entry
    names (`taken`); a glob matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        if not is_glob(pattern):
            names = [pattern]
        else:
            names = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
            if not names:
                raise SpecError(f"{where}: pattern {pattern!r} matches no column of the table; "
                                f"its columns{' (but the key and link columns)' if key_and_links_left_out else ''} are {columns}")
            names = [c for c in names if c not in taken]
        out += [c for c in names if c not in out]
    return out


def expand_column_globs(table: TableSpec, columns: list[str]) -> TableSpec:
    """TABLE with every glob of categorical / multi / numeric / strings replaced by the matching COLUMNS
    (the table's columns as loaded, in file order). Explicit entries win over globs; globs never match the
    key or a link column; a column two globs of different kinds match is an error."""
    where = f"tables.{table.name}"
    reserved = {table.key} | {link.column for link in table.links.values()}
    candidates = [c for c in columns if c not in reserved]
    explicit = {c for c in [*table.categorical, *table.multi, *table.numeric] if not is_glob(c)}
    categorical = _expand(table.categorical, candidates, explicit, f"{where}.categorical")
    multi_names = _expand(table.multi, candidates, explicit, f"{where}.multi")
    numeric_names = _expand(table.numeric, candidates, explicit, f"{where}.numeric")
    multi = {c: table.multi.get(c) or _glob_entry(table.multi, c) for c in multi_names}
    numeric = {c: replace(table.numeric.get(c) or _glob_entry(table.numeric, c), column=c) for c in numeric_names}
    strings = _expand(table.strings, columns, set(), f"{where}.strings", key_and_links_left_out=False)
    by_kind = {"categorical": categorical, "multi": list(multi), "numeric": list(numeric)}
    owner: dict[str, str] = {}
    for kind, names in by_kind.items():
        for c in names:
            if c in owner:
                raise SpecError(f"{where}: column {c!r} is matched by both {owner[c]} and {kind} "
                                f"(name it explicitly in one of them)")
            owner[c] = kind
    out = replace(table, categorical=categorical, multi=multi, numeric=numeric, strings=strings)
    _check_feature_columns(out, where, list(owner))
    return out


def _glob_entry(entries: dict, column: str):
    """The value of the first glob key of ENTRIES matching COLUMN."""
    return next(v for k, v in entries.items() if is_glob(k) and fnmatch.fnmatchcase(column, k))


def with_expanded_columns(spec: Spec, columns: dict[str, list[str]]) -> Spec:
    """SPEC with the column globs of every table expanded against COLUMNS (table -> loaded column names)."""
    tables = {name: expand_column_globs(t, columns[name]) if t.has_column_globs() else t
              for name, t in spec.tables.items()}
    return replace(spec, tables=tables)


def infer_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".pq", "parquet"),
                     (".ndjson", "ndjson"), (".jsonl", "ndjson"), (".json", "json")):
        if name.endswith(ext):
            return fmt
    return None


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise SpecError(f"spec file {str(path)!r} cannot be read: {exc}") from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(raw, path.resolve().parent, hashlib.sha256(text).hexdigest())


def parse_spec(raw: dict, base_dir: Path, fingerprint: str = "") -> Spec:
    _check_keys(raw, {"name", "description", "tables", "universes", "build", "models", "shards"}, "spec")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(f"spec.name: expected a snapshot name (letters, digits, _ and -), got {name!r}")
    build = _expect(raw.get("build", {}), dict, "build")
    _check_keys(build, {"dense_threshold", "max_hops"}, "build")
    dense_threshold = build.get("dense_threshold", 0.005)
    if not isinstance(dense_threshold, (int, float)) or isinstance(dense_threshold, bool):
        raise SpecError(f"build.dense_threshold: expected a fraction 0..1, got {dense_threshold!r}")
    dense_threshold = float(dense_threshold)
    if not 0.0 <= dense_threshold <= 1.0:
        raise SpecError(f"build.dense_threshold: expected a fraction 0..1, got {dense_threshold!r}")
    max_hops = build.get("max_hops", 4)
    if not isinstance(max_hops, int) or isinstance(max_hops, bool) or not 1 <= max_hops <= 8:
        raise SpecError(f"build.max_hops: expected an integer 1..8, got {max_hops!r}")
    tables_raw = _expect(raw.get("tables"), dict, "tables") if "tables" in raw else None
    if not tables_raw:
        raise SpecError("spec: no [tables.*] declared")
    tables = {}
    for tname, traw in tables_raw.items():
        if not _NAME_RE.match(tname):
            raise SpecError(f"tables.{tname}: table name must be an identifier")
        tables[tname] = _parse_table(tname, traw, base_dir)
    # links must point at declared tables; reverse names must not clash
    reverse_names: dict[tuple[str, str], str] = {}
    for t in tables.values():
        for link in t.links.values():
            if link.table not in tables:
                raise SpecError(
                    f"tables.{t.name}.links.{link.name}.table: unknown table {link.table!r}"
                    f"{suggest(link.table, tables)}"
                )
            if link.reverse:
                target = tables[link.table]
                k = (link.table, link.reverse)
                if k in reverse_names:
                    raise SpecError(
                        f"tables.{t.name}.links.{link.name}.reverse: {link.reverse!r} is already the "
                        f"reverse name of {reverse_names[k]} on table {link.table!r}"
                    )
                if link.reverse in target.links or link.reverse in target.feature_columns():
                    raise SpecError(
                        f"tables.{t.name}.links.{link.name}.reverse: {link.reverse!r} clashes with a "
                        f"link or column of table {link.table!r}"
                    )
                reverse_names[k] = f"{t.name}.{link.name}"
    universes_raw = _expect(raw.get("universes", {}), dict, "universes")
    if not universes_raw:
        raise SpecError("spec: no [universes.*] declared")
    universes = {}
    for uname, uraw in universes_raw.items():
        where = _named_table("universes", uname, uraw, {"table", "include", "exclude"})
        table = uraw.get("table", uname)
        if table not in tables:
            raise SpecError(f"{where}.table: unknown table {table!r}{suggest(table, tables)}")
        include = _expect(uraw.get("include", ["*"]), list, f"{where}.include")
        exclude = _expect(uraw.get("exclude", []), list, f"{where}.exclude")
        for p in include + exclude:
            _expect(p, str, f"{where}.include")
        universes[uname] = UniverseSpec(uname, table, list(include), list(exclude))
    models = _parse_models(_expect(raw.get("models", {}), dict, "models"), universes)
    shard_entity = _parse_shards(_expect(raw.get("shards", {}), dict, "shards"), tables)
    return Spec(
        name=name,
        description=str(raw.get("description", "")),
        base_dir=base_dir,
        tables=tables,
        universes=universes,
        dense_threshold=dense_threshold,
        max_hops=max_hops,
        fingerprint=fingerprint,
        models=models,
        shard_entity=shard_entity,
    )


def _parse_shards(raw: dict, tables: dict[str, TableSpec]) -> str | None:
    """[shards] entity = TABLE: the table whose key routes rows to shards (None: no [shards] section)."""
    if not raw:
        return None
    _check_keys(raw, {"entity"}, "shards")
    if "entity" not in raw:
        raise SpecError("shards.entity: missing (the table whose rows are partitioned, usually customers)")
    entity = _expect(raw["entity"], str, "shards.entity")
    if entity not in tables:
        raise SpecError(f"shards.entity: unknown table {entity!r}{suggest(entity, tables)}")
    if tables[entity].key == ROW_KEY:
        raise SpecError(f"shards.entity: table {entity!r} has no key column (key = {ROW_KEY!r} numbers the rows "
                        f"of a file, which differs from shard to shard); name a column that identifies a row")
    return entity


def _named_table(section: str, name: str, raw, allowed: set[str]) -> str:
    """Check [section.NAME]: an identifier naming a table of allowed keys; returns "section.NAME"."""
    where = f"{section}.{name}"
    if not _NAME_RE.match(name):
        raise SpecError(f"{where}: {section[:-1]} name must be an identifier")
    _expect(raw, dict, where)
    _check_keys(raw, allowed, where)
    return where


def _parse_models(raw: dict, universes: dict) -> dict[str, dict]:
    """[models.NAME] tables: their shape only; the engine checks fields and values when it fits them."""
    out = {}
    for mname, mraw in raw.items():
        where = _named_table("models", mname, mraw, MODEL_KEYS)
        query = dict(mraw)
        if "from" not in query:
            if len(universes) != 1:
                raise SpecError(f"{where}.from: name the universe (the spec declares {sorted(universes)})")
            query["from"] = next(iter(universes))
        if query["from"] not in universes:
            raise SpecError(f"{where}.from: unknown universe {query['from']!r}{suggest(str(query['from']), universes)}")
        if not isinstance(query.get("target"), str) or not query["target"]:
            raise SpecError(f"{where}.target: expected the name of the field to predict")
        out[mname] = query
    return out
