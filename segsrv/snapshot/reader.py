"""Open a published snapshot: memory-map its arrays, expose universes and features.

Opening checks the manifest's format and version, every file's presence,
header and size (cheap). ``verify="full"`` also recomputes every checksum
(reads every byte; the server does this before swapping versions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import (
    CorruptSnapshotError,
    SnapshotError,
    SnapshotNotFoundError,
    TruncatedSnapshotError,
    UnknownFieldError,
    UnknownUniverseError,
    UnknownValueError,
    Violation,
)
from . import format as fmt
from .location import resolve_version_dir
from .spec import suggest

VERIFY_MODES = ("none", "sizes", "full")


@dataclass
class FieldInfo:
    name: str
    kind: str  # categorical | multi | numeric
    semantics: str  # own | forward | exists
    values: list[str]
    counts: np.ndarray
    feature_offset: int
    edges: list[float] | None = None
    numeric: np.ndarray | None = None  # raw values [n_rows], NaN = missing
    _value_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._value_index = {v: i for i, v in enumerate(self.values)}

    @property
    def feature_ids(self) -> np.ndarray:
        return np.arange(self.feature_offset, self.feature_offset + len(self.values), dtype=np.int64)

    def has_value(self, value: str) -> bool:
        return value in self._value_index

    def value_index(self, value: str) -> int:
        try:
            return self._value_index[value]
        except KeyError:
            shown = self.values[:20]
            more = f" and {len(self.values) - 20} more" if len(self.values) > 20 else ""
            raise UnknownValueError(
                f"field {self.name!r} has no value {value!r}{suggest(value, self.values)}; "
                f"values: {shown}{more}",
                [Violation(self.name, f"unknown value {value!r}", "value", value)],
            ) from None


class Universe:
    """One indexed table: features over its rows, memory-mapped."""

    def __init__(self, name: str, meta: dict, vdir: Path):
        self.name = name
        self.table = meta["table"]
        self.key = meta["key"]
        self.key_kind = meta["key_kind"]
        self.n_rows = int(meta["n_rows"])
        self.n_words = (self.n_rows + 63) // 64
        self.n_features = int(meta["n_features"])
        self.dense_threshold = meta["dense_threshold"]
        udir = vdir / "universes" / name
        self.dir = udir
        self.dense = fmt.open_array(udir / "dense.bin")
        self.sparse_ids = fmt.open_array(udir / "sparse_ids.bin")
        self.sparse_offsets = fmt.open_array(udir / "sparse_offsets.bin")
        self.feature_slot = fmt.open_array(udir / "feature_slot.bin")
        self.feature_count = fmt.open_array(udir / "feature_count.bin")
        self.csr_indptr = fmt.open_array(udir / "csr_indptr.bin")
        self.csr_indices = fmt.open_array(udir / "csr_indices.bin")
        self.row_ids = fmt.open_array(udir / "row_ids.bin")
        self._check_shapes(udir)
        self.fields: dict[str, FieldInfo] = {}
        for f in meta["fields"]:
            numeric = fmt.open_array(vdir / f["numeric_file"]) if f.get("numeric_file") else None
            self.fields[f["name"]] = FieldInfo(
                name=f["name"],
                kind=f["kind"],
                semantics=f["semantics"],
                values=list(f["values"]),
                counts=np.asarray(f["counts"], dtype=np.int64),
                feature_offset=int(f["feature_offset"]),
                edges=f.get("edges"),
                numeric=numeric,
            )
        # feature id -> field, value
        self.feature_field = np.empty(self.n_features, dtype=np.int32)
        self.field_names = list(self.fields)
        for i, f in enumerate(self.fields.values()):
            self.feature_field[f.feature_offset : f.feature_offset + len(f.values)] = i
        self.dense_features = np.flatnonzero(self.feature_slot >= 0)
        self.sparse_features = np.flatnonzero(self.feature_slot < 0)

    def _check_shapes(self, udir: Path) -> None:
        n, nf = self.n_rows, self.n_features
        problems = []
        if self.dense.ndim != 2 or self.dense.shape[1] != self.n_words:
            problems.append(f"dense.bin shape {self.dense.shape}, expected (*, {self.n_words})")
        if self.feature_slot.shape != (nf,) or self.feature_count.shape != (nf,):
            problems.append("feature_slot/feature_count length differs from n_features")
        if self.csr_indptr.shape != (n + 1,):
            problems.append(f"csr_indptr.bin length {self.csr_indptr.shape}, expected {n + 1}")
        elif n and int(self.csr_indptr[-1]) != len(self.csr_indices):
            problems.append("csr_indptr does not end at len(csr_indices)")
        if self.row_ids.shape != (n,):
            problems.append(f"row_ids.bin length {self.row_ids.shape}, expected {n}")
        if len(self.sparse_offsets) and int(self.sparse_offsets[-1]) != len(self.sparse_ids):
            problems.append("sparse_offsets does not end at len(sparse_ids)")
        if problems:
            raise CorruptSnapshotError(f"{udir}: inconsistent arrays: {'; '.join(problems)}")

    # -- fields and features ---------------------------------------------------

    def field(self, name: str) -> FieldInfo:
        try:
            return self.fields[name]
        except KeyError:
            raise UnknownFieldError(
                f"universe {self.name!r} has no field {name!r}{suggest(name, self.fields)}",
                [(name, "unknown field")],
            ) from None

    def feature_id(self, field_name: str, value: str) -> int:
        f = self.field(field_name)
        return f.feature_offset + f.value_index(value)

    def feature_name(self, fid: int) -> tuple[str, str]:
        f = self.fields[self.field_names[self.feature_field[fid]]]
        return f.name, f.values[fid - f.feature_offset]

    @cached_property
    def feature_values(self) -> list[str]:
        out: list[str] = []
        for f in self.fields.values():
            out.extend(f.values)
        return out

    def sparse_feature_ids(self, fid: int) -> np.ndarray:
        s = -int(self.feature_slot[fid]) - 1
        return self.sparse_ids[self.sparse_offsets[s] : self.sparse_offsets[s + 1]]

    def is_dense(self, fid: int) -> bool:
        return int(self.feature_slot[fid]) >= 0

    # -- rows (CSR: row -> feature ids, ascending) --------------------------------

    def row_features(self, row: int) -> np.ndarray:
        """int64 feature ids of one row."""
        return np.asarray(self.csr_indices[int(self.csr_indptr[row]): int(self.csr_indptr[row + 1])], dtype=np.int64)

    def rows_features(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(owner, features): the feature ids of many rows in one gather, flattened row by row;
        owner[j] is the index into `rows` of the row features[j] belongs to (both int64)."""
        rows = np.asarray(rows, dtype=np.int64)
        indptr = np.asarray(self.csr_indptr)
        starts = indptr[rows].astype(np.int64)
        lens = indptr[rows + 1].astype(np.int64) - starts
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
        # position j of the gather reads csr_indices[start of its row + j - first j of that row]
        offs = np.arange(len(owner), dtype=np.int64) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return owner, np.asarray(self.csr_indices)[offs].astype(np.int64)

    # -- ids -------------------------------------------------------------------

    def rows_for_ids(self, ids) -> np.ndarray:
        """Row of each external id, -1 when the id is not in the universe."""
        valid = None
        if self.key_kind == "int":
            try:
                arr = np.asarray(ids)
            except (TypeError, ValueError, OverflowError):
                arr = None
            if arr is not None and arr.dtype.kind == "i":
                q = arr.astype(np.int64)
            else:  # strings, floats, huge ints, mixtures: one by one, never truncating
                q = np.asarray([_as_int(i) for i in ids], dtype=np.int64)
        else:
            encoded = [str(i).encode("utf-8") for i in ids]
            # numpy would silently cut ids longer than the stored width (and ignore trailing NULs),
            # making e.g. "CUST-000011" match "CUST-00001": such ids are never keys
            width = self.row_ids.dtype.itemsize
            valid = np.array([len(e) <= width and not e.endswith(b"\0") for e in encoded], dtype=bool)
            q = np.asarray(encoded, dtype=self.row_ids.dtype if len(ids) else "S1")
        q = np.atleast_1d(q)
        pos = np.searchsorted(self.row_ids, q)
        pos_c = np.minimum(pos, max(self.n_rows - 1, 0))
        found = (pos < self.n_rows) & (self.row_ids[pos_c] == q) if self.n_rows else np.zeros(len(q), bool)
        if valid is not None:
            found &= valid
        return np.where(found, pos, -1).astype(np.int64)

    def ids_for_rows(self, rows) -> list:
        vals = self.row_ids[np.asarray(rows, dtype=np.int64)]
        if self.key_kind == "int":
            return [int(v) for v in vals]
        return [bytes(v).decode("utf-8") for v in vals]


def _as_int(value) -> int:
    missing = -(2**63)  # never a key: reported as not found
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return missing  # 5.5 is not the id 5
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        return missing
    return v if -(2**63) < v < 2**63 else missing


class Snapshot:
    """A read-only, memory-mapped snapshot version."""

    def __init__(self, vdir: Path, manifest: dict):
        self.path = vdir
        self.manifest = manifest
        self.name = manifest["name"]
        self.version = manifest["version"]
        self.description = manifest.get("description", "")
        self.universes = {n: Universe(n, m, vdir) for n, m in sorted(manifest["universes"].items())}
        self.segments = manifest.get("segments", {})

    def universe(self, name: str | None) -> Universe:
        if not name:
            if len(self.universes) == 1:
                return next(iter(self.universes.values()))
            raise UnknownUniverseError(
                f"snapshot {self.name!r} has several universes {sorted(self.universes)}; name one ('from')",
                [("from", "required when the snapshot has several universes")],
            )
        try:
            return self.universes[name]
        except KeyError:
            raise UnknownUniverseError(
                f"snapshot {self.name!r} has no universe {name!r}{suggest(name, self.universes)}; "
                f"universes: {sorted(self.universes)}",
                [("from", f"unknown universe {name!r}")],
            ) from None


def read_manifest(vdir: Path) -> dict:
    mpath = vdir / fmt.MANIFEST
    if not mpath.exists():
        raise SnapshotNotFoundError(f"{vdir}: no {fmt.MANIFEST}; not a snapshot version directory (or its build did not finish)")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSnapshotError(f"{mpath}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT_NAME:
        raise CorruptSnapshotError(f"{mpath}: not a segsrv snapshot manifest")
    fmt.check_format_version(manifest.get("format_version"), str(mpath))
    for key in ("name", "version", "universes", "files"):
        if key not in manifest:
            raise CorruptSnapshotError(f"{mpath}: manifest lacks {key!r}")
    return manifest


def verify_files(vdir: Path, manifest: dict, mode: str = "sizes") -> None:
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}")
    if mode == "none":
        return
    for rel, info in sorted(manifest["files"].items()):
        path = vdir / rel
        if not path.exists():
            raise TruncatedSnapshotError(f"{vdir}: file {rel} listed in the manifest is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            cls = TruncatedSnapshotError if size < info["bytes"] else CorruptSnapshotError
            raise cls(f"{path}: {size} bytes on disk, manifest says {info['bytes']}")
        if mode == "full" and fmt.file_sha256(path) != info["sha256"]:
            raise CorruptSnapshotError(f"{path}: checksum mismatch (sha256 differs from the manifest)")


def open_snapshot(location: str | Path, version: str | None = None, verify: str = "sizes") -> Snapshot:
    vdir = resolve_version_dir(location, version)
    manifest = read_manifest(vdir)
    verify_files(vdir, manifest, verify)
    try:
        return Snapshot(vdir, manifest)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptSnapshotError(f"{vdir}: malformed snapshot: {exc!r}") from None
    except FileNotFoundError as exc:
        raise TruncatedSnapshotError(f"{vdir}: missing file {exc.filename}") from None
    except SnapshotError:
        raise
