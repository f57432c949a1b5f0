"""Open a published snapshot: memory-map its arrays, expose universes and features.

Every open checks, before anything is served:

* the manifest: format, version, and that it lists every file the format requires (the array
  files of each universe and each numeric field's file) with a safe relative path inside the
  version directory (no ``..``, no absolute path, no symbolic link on the way: nothing outside the
  version directory is ever opened);
* every listed file: a regular file of the listed size, mapped read-only (no descriptor kept);
* every byte (``verify="full"``, the default): the fast checksum of every file (xxh3 tree,
  segsrv.snapshot.checksum), on every core, over the very maps that will be served; a snapshot
  written before the fast checksum existed is checked by its SHA-256 instead.
  ``verify="strong"`` also recomputes every SHA-256 (``segsrv verify``); ``verify="sizes"`` skips
  the checksums and is only for measuring what they cost (bench/verify.py);
* the numbers the manifest states about the data (row, feature, dense and sparse counts, each
  field's value counts and feature range) against the arrays they describe: every feature's
  count is recounted from its bitset or id list, and the row -> features indexes (the CSR, and
  from format version 2 the sparse features' CSR) are checked against those counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import (
    CorruptSnapshotError,
    SnapshotNotFoundError,
    TruncatedSnapshotError,
    UnknownFieldError,
    UnknownUniverseError,
    UnknownValueError,
    Violation,
)
from . import checksum
from . import format as fmt
from .location import resolve_version_dir
from .mapping import map_file, open_regular
from .spec import suggest

VERIFY_MODES = ("sizes", "full", "strong")
DEFAULT_VERIFY = "full"
#: The array files every universe has in format version 1 (universes/<universe>/<file>); see
#: segsrv.snapshot.format.
UNIVERSE_FILES_V1 = ("dense.bin", "sparse_ids.bin", "sparse_offsets.bin", "feature_slot.bin", "feature_count.bin",
                     "csr_indptr.bin", "csr_indices.bin", "row_ids.bin")
#: The row -> sparse features index, added by format version 2 (fmt.SPARSE_CSR_VERSION).
SPARSE_CSR_FILES = ("sparse_csr_indptr.bin", "sparse_csr_indices.bin")
#: The array files every universe has in the current format version.
UNIVERSE_FILES = UNIVERSE_FILES_V1 + SPARSE_CSR_FILES


def universe_files(format_version: int) -> tuple[str, ...]:
    """The array files every universe of a snapshot of `format_version` has."""
    return UNIVERSE_FILES if format_version >= fmt.SPARSE_CSR_VERSION else UNIVERSE_FILES_V1

MAX_MANIFEST_BYTES = 256 << 20


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

    def __init__(self, name: str, meta: dict, files: "VersionFiles"):
        self.name = name
        self.table = meta["table"]
        self.key = meta["key"]
        self.key_kind = meta["key_kind"]
        self.n_rows = int(meta["n_rows"])
        self.n_words = (self.n_rows + 63) // 64
        self.n_features = int(meta["n_features"])
        self.dense_threshold = meta["dense_threshold"]
        udir = files.vdir / "universes" / name
        self.dir = udir
        rel = f"universes/{name}/"
        self.dense = files.array(rel + "dense.bin")
        self.sparse_ids = files.array(rel + "sparse_ids.bin")
        self.sparse_offsets = files.array(rel + "sparse_offsets.bin")
        self.feature_slot = files.array(rel + "feature_slot.bin")
        self.feature_count = files.array(rel + "feature_count.bin")
        self.csr_indptr = files.array(rel + "csr_indptr.bin")
        self.csr_indices = files.array(rel + "csr_indices.bin")
        self.row_ids = files.array(rel + "row_ids.bin")
        # row -> sparse-stored features (format version >= 2; None before: rare features are then only probed)
        self.sparse_csr_indptr = self.sparse_csr_indices = None
        if files.format_version >= fmt.SPARSE_CSR_VERSION:
            indptr, indices = files.array(rel + "sparse_csr_indptr.bin"), files.array(rel + "sparse_csr_indices.bin")
            if indptr.shape != (0,) or indices.shape != (0,):  # both empty: not built (fmt.sparse_csr_pays)
                self.sparse_csr_indptr, self.sparse_csr_indices = indptr, indices
        self._check_shapes(udir)
        self.fields: dict[str, FieldInfo] = {}
        for f in meta["fields"]:
            numeric = files.array(f["numeric_file"]) if f.get("numeric_file") else None
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
        # models fitted at build time: content key (a tuple, see segsrv.engine.predict.models) ->
        # (coefficients float64[K, 1 + n_features], their manifest entry); filled by Snapshot
        self.stored_models: dict[tuple, tuple[np.ndarray, dict]] = {}
        self._check_against_data(meta, udir)

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
        if self.sparse_csr_indptr is not None:
            if self.sparse_csr_indptr.shape != (n + 1,):
                problems.append(f"sparse_csr_indptr.bin length {self.sparse_csr_indptr.shape}, expected {n + 1}")
            elif int(self.sparse_csr_indptr[-1]) != len(self.sparse_csr_indices):
                problems.append("sparse_csr_indptr.bin does not end at len(sparse_csr_indices.bin)")
            if self.sparse_csr_indices.shape != self.sparse_ids.shape:
                problems.append(f"sparse_csr_indices.bin length {self.sparse_csr_indices.shape}, expected "
                                f"len(sparse_ids.bin) {self.sparse_ids.shape}")
        if problems:
            raise CorruptSnapshotError(f"{udir}: inconsistent arrays: {'; '.join(problems)}")

    def _check_against_data(self, meta: dict, udir: Path) -> None:
        """The manifest's numbers about this universe must be what the arrays say (every feature is
        recounted): a manifest that disagrees with its data is corrupt, not served."""
        from .._kernels import and_count_dense, csr_histogram  # recounting features from their rows

        n, nf = self.n_rows, self.n_features
        slot = np.asarray(self.feature_slot)
        count = np.asarray(self.feature_count)
        problems: list[str] = []
        dense = slot >= 0
        n_dense, n_sparse = int(dense.sum()), int((~dense).sum())
        if int(meta.get("n_dense", n_dense)) != n_dense or int(meta.get("n_sparse", n_sparse)) != n_sparse:
            problems.append(f"manifest says {meta.get('n_dense')} dense and {meta.get('n_sparse')} sparse features, "
                            f"feature_slot.bin has {n_dense} and {n_sparse}")
        if not np.array_equal(np.sort(slot[dense]), np.arange(self.dense.shape[0])):
            problems.append("feature_slot.bin's dense slots are not one per row of dense.bin")
        if len(self.sparse_offsets) != n_sparse + 1 or not np.array_equal(np.sort(-slot[~dense] - 1),
                                                                         np.arange(n_sparse)):
            problems.append("feature_slot.bin's sparse slots are not one per sparse_offsets.bin entry")
        offsets = np.asarray(self.sparse_offsets)
        if len(offsets) and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)):
            problems.append("sparse_offsets.bin does not rise from 0")
        indptr = np.asarray(self.csr_indptr)
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            problems.append("csr_indptr.bin does not rise from 0")
        expected_offset = 0
        for f in sorted(meta["fields"], key=lambda f: int(f["feature_offset"])):
            n_values = len(f["values"])
            if int(f["feature_offset"]) != expected_offset or len(f["counts"]) != n_values:
                problems.append(f"field {f['name']!r}: feature_offset {f['feature_offset']} / {len(f['counts'])} "
                                f"counts do not tile the features (expected offset {expected_offset}, "
                                f"{n_values} counts)")
                break
            stated = np.asarray(f["counts"], dtype=np.int64)
            if not np.array_equal(stated, count[expected_offset:expected_offset + n_values]):
                problems.append(f"field {f['name']!r}: value counts in the manifest differ from feature_count.bin")
            expected_offset += n_values
        if expected_offset != nf:
            problems.append(f"the fields cover {expected_offset} features, manifest says n_features {nf}")
        if problems:
            raise CorruptSnapshotError(f"{udir}: manifest disagrees with the data: {'; '.join(problems)}")
        # recount every feature from its rows
        actual = np.empty(nf, dtype=np.int64)
        if n_dense:
            everyone = np.zeros(self.n_words, dtype=np.uint64)
            everyone[: n // 64] = ~np.uint64(0)
            if n % 64:
                everyone[n // 64] = (np.uint64(1) << np.uint64(n % 64)) - np.uint64(1)
            per_slot = and_count_dense(everyone, self.dense)
            actual[dense] = per_slot[slot[dense]]
            if n % 64 and np.any(self.dense[:, -1] & ~everyone[-1]):
                problems.append("dense.bin has bits set past the last row")
        if n_sparse:
            actual[~dense] = np.diff(offsets)[-slot[~dense] - 1]
            ids = np.asarray(self.sparse_ids)
            if len(ids):
                steps = np.diff(ids.astype(np.int64))
                starts = np.zeros(len(ids), dtype=bool)
                starts[offsets[:-1][offsets[:-1] < len(ids)]] = True
                if int(ids.max()) >= n or np.any(steps[~starts[1:]] <= 0):
                    problems.append("sparse_ids.bin holds rows out of range or not ascending per feature")
        wrong = np.flatnonzero(actual != count)
        if len(wrong):
            fid = int(wrong[0])
            problems.append(f"{len(wrong)} feature counts in feature_count.bin differ from their rows "
                            f"(feature {fid}: {int(actual[fid])} rows, stated {int(count[fid])})")
        indices = np.asarray(self.csr_indices)
        if len(indices) and int(indices.max()) >= nf:
            problems.append("csr_indices.bin names features past n_features")
        elif not np.array_equal(csr_histogram(self.csr_indptr, indices, np.arange(n, dtype=np.uint32), nf),
                                actual):
            problems.append("csr_indices.bin (rows -> features) disagrees with the feature bitsets")
        if self.sparse_csr_indptr is not None:
            problems.extend(self._sparse_csr_problems(actual, ~dense))
        for f in self.fields.values():
            if f.numeric is not None and (f.numeric.shape != (n,) or f.numeric.dtype != np.float64):
                problems.append(f"numeric file of field {f.name!r} holds {f.numeric.dtype} {f.numeric.shape}, "
                                f"expected float64 ({n},)")
        row_ids = self.row_ids
        if n > 1 and not np.all(row_ids[1:] > row_ids[:-1]):
            problems.append("row_ids.bin is not strictly ascending")
        if problems:
            raise CorruptSnapshotError(f"{udir}: manifest disagrees with the data: {'; '.join(problems)}")

    def _sparse_csr_problems(self, actual: np.ndarray, sparse: np.ndarray) -> list[str]:
        """What is wrong with the sparse CSR (format version 2): it must list, per row, ascending, the
        sparse-stored features the row has: its entries' rows those of sparse_ids.bin (their sum), and per
        sparse feature as many rows as it has (`actual`: every feature's recounted rows; `sparse`: mask).
        Each check is one pass over an array (on the 1M demo ~30 ms for the customers' 7.0M entries, as
        much for the order lines' 10.3M rows)."""
        from .._kernels import csr_histogram

        n, nf = self.n_rows, self.n_features
        indptr, indices = np.asarray(self.sparse_csr_indptr), np.asarray(self.sparse_csr_indices)
        name = "sparse_csr_indices.bin"
        per_row = np.diff(indptr)
        if indptr[0] != 0 or (n and per_row.min() < 0):
            return ["sparse_csr_indptr.bin does not rise from 0"]
        # the entries' rows add up to sparse_ids.bin's, modulo 2^64 (entries moved between rows show): the sum
        # over rows r of r x per_row[r] is n x len(indices) - sum(indptr[1:])
        wrap = 1 << 64
        rows_sum = (n * len(indices) - int(np.add.reduce(indptr[1:], dtype=np.uint64))) % wrap
        if rows_sum != int(np.add.reduce(np.asarray(self.sparse_ids), dtype=np.uint64)):
            return ["sparse_csr_indptr.bin's rows are not those of sparse_ids.bin's entries"]
        if not len(indices):
            return []
        if int(indices.max()) >= nf:
            return [f"{name} names features past n_features"]
        # csr_histogram over every row is the histogram of all the indices (indptr covers each once): one
        # "row" holding them all, the kernel's one pass
        hist = csr_histogram(np.array([0, len(indices)], dtype=np.int64), indices, np.zeros(1, np.uint32), nf)
        if hist[~sparse].any():
            return [f"{name} names features stored dense (feature_slot >= 0)"]
        if not np.array_equal(hist, np.where(sparse, actual, 0)):
            return [f"{name} (rows -> sparse features) disagrees with sparse_ids.bin's feature counts"]
        # strictly ascending per row: where the ids do not rise, a row must start
        falls = np.flatnonzero(indices[1:] <= indices[:-1]) + 1
        if len(falls) * 16 < n:
            ascending = np.array_equal(indptr[np.searchsorted(indptr, falls)], falls)
        else:
            starts = np.zeros(len(indices) + 1, dtype=bool)
            starts[indptr] = True
            ascending = bool(starts[falls].all())
        if not ascending:
            return [f"{name}: a row's features are not strictly ascending"]
        return []

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
                q = np.asarray([int_key(i) for i in ids], dtype=np.int64)
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

    def row_for_id(self, ident) -> int:
        """Row of one external id, -1 when it is not in the universe: `rows_for_ids([ident])[0]` without
        building arrays (the per-request Assign's lookup)."""
        n = self.n_rows
        if not n:
            return -1
        if self.key_kind == "int":
            # rows_for_ids takes an int64-representable integer as it is, anything else through int_key
            if isinstance(ident, (int, np.signedinteger)) and not isinstance(ident, bool) \
                    and -(2**63) <= ident < 2**63:
                key = int(ident)
            else:
                key = int_key(ident)
        else:
            key = str(ident).encode("utf-8")
            if len(key) > self.row_ids.dtype.itemsize or key.endswith(b"\0"):
                return -1  # numpy would cut it (or drop its NULs) and match another id: never a key
        pos = int(self.row_ids.searchsorted(key))
        return pos if pos < n and self.row_ids[pos] == key else -1

    def ids_for_rows(self, rows) -> list:
        vals = self.row_ids[np.asarray(rows, dtype=np.int64)]
        if self.key_kind == "int":
            return [int(v) for v in vals]
        return [bytes(v).decode("utf-8") for v in vals]


def int_key(value) -> int:
    missing = -(2**63)  # never a key: reported as not found
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        return missing  # 5.5 is not the id 5
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        return missing
    return v if -(2**63) < v < 2**63 else missing


class Snapshot:
    """A read-only, memory-mapped snapshot version (open it with open_snapshot, which verifies it)."""

    def __init__(self, vdir: Path, manifest: dict, files: "VersionFiles | None" = None):
        self.path = vdir
        self.manifest = manifest
        self.name = manifest["name"]
        self.version = manifest["version"]
        self.description = manifest.get("description", "")
        files = files if files is not None else VersionFiles(vdir, manifest)
        self.files = files  # the maps and checksums, to verify again later (SnapshotRegistry.scrub)
        self.universes = {n: Universe(n, m, files) for n, m in sorted(manifest["universes"].items())}
        self.segments = manifest.get("segments", {})
        self.models = manifest.get("models", {})
        for name, entry, rel in model_files(manifest):
            u = self.universes.get(self.models[name].get("universe"))
            coef = files.array(rel)
            pairs = _model_pairs(entry, u, f"{vdir / rel}: model {name!r}")
            if (u is None or coef.dtype != np.float64 or coef.ndim != 2
                    or coef.shape[1] != u.n_features + 1 + len(pairs)):
                raise CorruptSnapshotError(f"{vdir / rel}: model {name!r} does not fit its universe "
                                           f"(shape {coef.shape}, dtype {coef.dtype}, {len(pairs)} pairs)")
            u.stored_models[tuple(_frozen(entry["key"]))] = (coef, entry)
        self.catalog_models = manifest.get("catalog_models", {})
        for uname, seg, entry, rel in catalog_model_files(manifest):
            u = self.universes.get(uname)
            coef = files.array(rel)
            pairs = _model_pairs(entry, u, f"{vdir / rel}: propensity model of segment {seg!r}")
            if u is None or coef.dtype != np.float64 or coef.shape != (1, u.n_features + 1 + len(pairs)):
                raise CorruptSnapshotError(f"{vdir / rel}: propensity model of segment {seg!r} does not fit "
                                           f"universe {uname!r} (shape {coef.shape}, dtype {coef.dtype}, "
                                           f"{len(pairs)} pairs)")
            u.stored_models[tuple(_frozen(entry["key"]))] = (coef, entry)

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


def _model_pairs(entry: dict, u, where: str) -> list:
    """A stored question's interaction pairs ("pairs": [[a, b, support], ...], a < b feature ids of
    the universe, support >= 0), checked."""
    pairs = entry.get("pairs", [])
    ok = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 3 and all(type(x) is int for x in p) for p in pairs)
    if ok and u is not None:
        ok = all(0 <= a < b < u.n_features and n >= 0 for a, b, n in pairs)
    if not ok:
        raise CorruptSnapshotError(f"{where}: its 'pairs' are not [feature a, feature b, support] entries "
                                   f"with 0 <= a < b < the universe's features")
    return pairs


def _frozen(value):
    """JSON lists -> tuples, recursively (a stored model's key as the engine computes it)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def read_manifest(vdir: Path) -> dict:
    mpath = vdir / fmt.MANIFEST
    if not os.path.lexists(mpath):
        raise SnapshotNotFoundError(f"{vdir}: no {fmt.MANIFEST}; not a snapshot version directory (or its build did not finish)")
    fd = open_regular(mpath, "manifest")
    try:
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise CorruptSnapshotError(f"{mpath}: cannot read the manifest: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptSnapshotError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSnapshotError(f"{mpath}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT_NAME:
        raise CorruptSnapshotError(f"{mpath}: not a segsrv snapshot manifest")
    fmt.check_format_version(manifest.get("format_version"), str(mpath))
    for key in ("name", "version", "universes", "files"):
        if key not in manifest:
            raise CorruptSnapshotError(f"{mpath}: manifest lacks {key!r}")
    return manifest


def _relative_problem(rel: object) -> str | None:
    """Why `rel` is not a safe file path relative to a version directory (None when it is)."""
    if not isinstance(rel, str) or not rel:
        return "is not a relative path"
    path = PurePosixPath(rel)
    if path.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        return "leaves the version directory or is not normalised"
    if any(ord(c) < 32 for c in rel) or rel == fmt.MANIFEST:
        return "is not a data file name"
    return None


def required_files(manifest: dict) -> list[str]:
    """The files the format requires for `manifest`'s universes and fields (relative paths)."""
    out: list[str] = []
    version = manifest.get("format_version", fmt.FORMAT_VERSION)
    universes = manifest["universes"]
    if not isinstance(universes, dict):
        raise CorruptSnapshotError("manifest: 'universes' is not a mapping")
    for name, meta in universes.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or "\\" in name:
            raise CorruptSnapshotError(f"manifest: universe name {str(name)[:80]!r} is not a plain name")
        out.extend(f"universes/{name}/{f}" for f in universe_files(version))
        for f in meta.get("fields", []) if isinstance(meta, dict) else []:
            numeric = f.get("numeric_file") if isinstance(f, dict) else None
            if numeric is None:
                continue
            if _relative_problem(numeric) or not str(numeric).startswith(f"universes/{name}/"):
                raise CorruptSnapshotError(f"manifest: numeric_file {str(numeric)[:120]!r} of field "
                                           f"{f.get('name')!r} is not a file of universe {name!r}")
            out.append(numeric)
    out.extend(rel for _, _, rel in model_files(manifest))
    out.extend(rel for _, _, _, rel in catalog_model_files(manifest))
    return out


def catalog_model_files(manifest: dict) -> list[tuple[str, str, dict, str]]:
    """(universe, segment, entry, file) of every stored catalog propensity model (manifest
    "catalog_models": universe -> segment -> entry; segsrv.engine.catalog_models)."""
    section = manifest.get("catalog_models", {})
    if not isinstance(section, dict):
        raise CorruptSnapshotError("manifest: 'catalog_models' is not a mapping")
    out = []
    for uname, segs in section.items():
        if not isinstance(segs, dict):
            raise CorruptSnapshotError(f"manifest: catalog_models of {str(uname)[:80]!r} is not a mapping")
        for seg, entry in segs.items():
            rel = entry.get("file") if isinstance(entry, dict) else None
            if (_relative_problem(rel) or not str(rel).startswith(f"models/catalog/{uname}/")
                    or not isinstance(entry.get("key"), list)):
                raise CorruptSnapshotError(f"manifest: the propensity model of segment {str(seg)[:80]!r} names "
                                           f"file {str(rel)[:120]!r}, which is not one of universe {str(uname)[:80]!r}")
            out.append((uname, seg, entry, rel))
    return out


def model_files(manifest: dict) -> list[tuple[str, dict, str]]:
    """(model name, question entry, file) of every stored model question (manifest "models")."""
    models = manifest.get("models", {})
    if not isinstance(models, dict):
        raise CorruptSnapshotError("manifest: 'models' is not a mapping")
    out = []
    for name, model in models.items():
        questions = model.get("questions") if isinstance(model, dict) else None
        if not isinstance(questions, list):
            raise CorruptSnapshotError(f"manifest: model {str(name)[:80]!r} has no list of questions")
        for q in questions:
            rel = q.get("file") if isinstance(q, dict) else None
            if _relative_problem(rel) or not str(rel).startswith(f"models/{name}/"):
                raise CorruptSnapshotError(f"manifest: model {str(name)[:80]!r} names file {str(rel)[:120]!r}, "
                                           f"which is not one of its own")
            out.append((name, q, rel))
    return out


def listed_files(vdir: Path, manifest: dict) -> dict[str, dict]:
    """The manifest's file list, checked: safe paths, sizes and digests well-formed, and every file
    the format requires listed (a file left out of the list would go unverified)."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise CorruptSnapshotError(f"{vdir}: manifest 'files' is not a mapping")
    for rel, info in files.items():
        problem = _relative_problem(rel)
        if problem:
            raise CorruptSnapshotError(f"{vdir}: manifest lists file {str(rel)[:120]!r}, which {problem}")
        if (not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or info["bytes"] < 0
                or not isinstance(info.get(checksum.STRONG), str)
                or not isinstance(info.get(checksum.FAST, ""), str)):
            raise CorruptSnapshotError(f"{vdir}: manifest entry of {rel} lacks bytes / sha256")
    missing = [rel for rel in required_files(manifest) if rel not in files]
    if missing:
        raise CorruptSnapshotError(f"{vdir}: the manifest does not list {len(missing)} required file(s) "
                                   f"({', '.join(missing[:5])}); every data file must be listed and checked")
    return files


class VersionFiles:
    """Every listed file of a version directory, mapped read-only after checking where it is and
    its size; ``verify(mode)`` checks their bytes against the manifest's checksums."""

    def __init__(self, vdir: Path, manifest: dict):
        self.vdir = vdir
        self.format_version = int(manifest.get("format_version", fmt.FORMAT_VERSION))
        self.listed = listed_files(vdir, manifest)
        real = os.path.realpath(vdir)
        self.maps: dict[str, np.ndarray] = {}
        for rel, info in sorted(self.listed.items()):
            path = vdir / rel
            # no symbolic link anywhere below the version directory: nothing outside it is read
            if os.path.lexists(path) and os.path.realpath(path) != os.path.join(real, *rel.split("/")):
                raise CorruptSnapshotError(f"{path}: leads outside the version directory (a symbolic link); "
                                           f"snapshot files must be regular files inside it")
            data = map_file(path)
            if len(data) != info["bytes"]:
                cls = TruncatedSnapshotError if len(data) < info["bytes"] else CorruptSnapshotError
                raise cls(f"{path}: {len(data)} bytes on disk, manifest says {info['bytes']}")
            self.maps[rel] = data

    def check_headers(self) -> None:
        """Every array file's header (cheap; before the checksums, so a file from a newer segsrv
        is reported as such rather than as damage)."""
        for rel, data in sorted(self.maps.items()):
            if rel.endswith(".bin"):
                fmt.parse_header(data[:fmt.HEADER_BYTES], str(self.vdir / rel), len(data))

    def array(self, rel: str) -> np.ndarray:
        try:
            data = self.maps[rel]
        except KeyError:
            raise CorruptSnapshotError(f"{self.vdir}: {rel} is not listed in the manifest") from None
        return fmt.array_from_bytes(data, str(self.vdir / rel))

    def verify(self, mode: str, threads: int | None = None) -> None:
        """Recompute checksums ("full": the fast one of every file, or its SHA-256 when the manifest
        predates it; "strong": SHA-256 as well) on `threads` threads (default: the kernel default)."""
        if mode == "sizes":
            return
        if threads is None:
            from .._kernels import get_num_threads

            threads = get_num_threads()
        algorithms = {}
        for rel, info in self.listed.items():
            fast = (checksum.FAST,) if info.get(checksum.FAST) else (checksum.STRONG,)
            algorithms[rel] = tuple(sorted(set(fast) | ({checksum.STRONG} if mode == "strong" else set())))
        got = checksum.digests(self.maps, algorithms, threads=threads)
        for rel in sorted(self.listed):
            for algorithm, value in sorted(got[rel].items()):
                if value != self.listed[rel][algorithm]:
                    raise CorruptSnapshotError(f"{self.vdir / rel}: checksum mismatch ({algorithm} differs from "
                                               f"the manifest)")


def open_snapshot(location: str | Path, version: str | None = None, verify: str = DEFAULT_VERIFY,
                  threads: int | None = None) -> Snapshot:
    """Open and verify a snapshot version (see the module docstring for what is checked).

    verify: "full" (default: every byte, fast checksum), "strong" (also SHA-256), "sizes" (no
    checksum; for measurements only). threads: checksum threads (default: the kernel default)."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    vdir = resolve_version_dir(location, version)
    manifest = read_manifest(vdir)
    try:
        files = VersionFiles(vdir, manifest)
        files.check_headers()
        files.verify(verify, threads)
        return Snapshot(vdir, manifest, files)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CorruptSnapshotError(f"{vdir}: malformed snapshot: {exc!r}") from None
    except FileNotFoundError as exc:
        raise TruncatedSnapshotError(f"{vdir}: missing file {exc.filename}") from None
