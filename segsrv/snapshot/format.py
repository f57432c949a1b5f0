"""On-disk format of a segsrv snapshot (format version 2). This docstring is the spec.

Layout
------
A snapshot lives in ``ROOT/NAME/VERSION/``; ``ROOT/NAME/CURRENT`` is a small
text file holding the VERSION to serve, replaced atomically (write a temporary
file, fsync, rename). A version directory is never modified after it is
published; a failed build leaves nothing behind (it writes into
``ROOT/NAME/.build-*`` and renames the directory into place only when done;
segsrv.snapshot.publish writes versions and CURRENT, segsrv.snapshot.location
resolves ROOT, ROOT/NAME and ROOT/NAME/VERSION).

``VERSION`` defaults to the first 16 hex digits of the SHA-256 of the manifest
body, so identical input gives an identical version name and identical bytes.

Inside a version directory::

    manifest.json                       written last (see below)
    universes/<universe>/dense.bin      uint64 [n_dense, n_words]   dense feature bitsets
    universes/<universe>/sparse_ids.bin uint32 [nnz_sparse]          sorted row ids of sparse features
    universes/<universe>/sparse_offsets.bin int64 [n_sparse + 1]
    universes/<universe>/feature_slot.bin int64 [n_features]         >= 0: row of dense.bin;
                                                                      < 0: sparse feature -slot - 1
    universes/<universe>/feature_count.bin int64 [n_features]        rows having each feature
    universes/<universe>/csr_indptr.bin  int64 [n_rows + 1]          row -> features index (CSR)
    universes/<universe>/csr_indices.bin uint32 [nnz]                feature ids, ascending per row
    universes/<universe>/sparse_csr_indptr.bin int64 [n_rows + 1]    row -> sparse features index (CSR;
                                                                      format version >= 2)
    universes/<universe>/sparse_csr_indices.bin uint32 [nnz_sparse] ids of the row's sparse-stored features
                                                                      (feature_slot < 0), ascending per row
    universes/<universe>/row_ids.bin     int64 [n_rows] or |S<w> [n_rows]  external id of each row
    universes/<universe>/numeric/<k>.bin float64 [n_rows]            raw numeric column (NaN = missing)

Rows of a universe are numbered 0..n_rows-1 in ascending order of the key, so
``row_ids.bin`` is sorted and is itself the id -> row index (binary search; for
byte-string ids the comparison is bytewise). Bit ``r`` of a bitset is bit
``r & 63`` of word ``r >> 6``; bits past n_rows are zero.

The sparse CSR is the transpose of ``sparse_ids.bin``: the part of ``csr_indices.bin`` that names
sparse-stored features, so ``nnz_sparse`` is ``len(sparse_ids.bin)`` and feature f (sparse) is
in row r's list exactly when r is among f's sorted ids. It lets a condition of few rows count the
rare features by histogramming its rows' lists rather than probing every id of every rare feature
(segsrv.engine.relate, "Counting plans"). Both files are empty (shape (0,)) in a universe
holding fewer than n_rows / 8 sparse ids (``sparse_csr_pays``): listing a condition's rows
alone passes over its n_rows / 64 words, which probing so few ids undercuts, and the index
would cost 8 bytes per row for nothing (the 1M demo's 10.3M order lines hold 11,665 sparse
ids: 82 MB); a reader then always probes that universe's rare features.

Array files
-----------
Every ``.bin`` file starts with a 64-byte header, then the data, which starts
at offset 64 so a read-only memory map is 64-byte aligned:

    offset  size  field
    0       8     magic  b"\\x93SEGARR\\x00"
    8       2     format version (uint16, little-endian)
    10      2     reserved, zero
    12      8     numpy dtype string, ASCII, space padded (e.g. "<u8", "|S12")
    20      4     ndim (uint32, 0..4)
    24      32    shape, 4 x uint64 (unused dims zero)
    56      8     data length in bytes (uint64)

A file shorter than 64 + data length is truncated; a wrong magic is corrupt.

Manifest
--------
``manifest.json`` is UTF-8 JSON with sorted keys. Top level::

    format          "segsrv-snapshot"
    format_version  2 (1: written before the sparse CSR existed; see Compatibility)
    name, version   snapshot name and version
    source          {"spec_sha256": ...} fingerprint of the build input
    universes       {universe: {table, key, key_kind ("int"|"bytes"), n_rows,
                     n_features, n_dense, n_sparse, dense_threshold,
                     fields: [{name, kind, semantics, hops, values, counts,
                               feature_offset, edges?, quantiles?, numeric_file?}]}}
    segments        the segment catalog ({} until segments are applied; see
                    segsrv/engine/catalog.py): {name: {where, universe, description,
                    priority, tags}}
    data_version    (catalog versions only) the version whose data files this one
                    shares: `segsrv segments apply` publishes a new version whose
                    files are hard links to the same data, with a new catalog
    files           {relative path: {"bytes": n, "xxh3": hex, "sha256": hex}}: every file of
                    the version but the manifest. "xxh3" is the fast digest every open
                    recomputes (an xxh3-64 tree over 16 MiB chunks, defined in
                    segsrv/snapshot/checksum.py; absent in snapshots written before it
                    existed, which opens check by "sha256" instead); "sha256" is the strong
                    digest `segsrv verify` also recomputes. Paths are relative, normalised,
                    inside the version directory. The list must name every file the
                    format requires: the ten array files of each universe (eight in
                    format version 1, which has no sparse_csr_*.bin) and each
                    numeric field's ``numeric_file`` (under ``universes/<universe>/``); a
                    reader refuses a manifest that leaves one out.

A field's features are ``feature_offset .. feature_offset + len(values) - 1``
in the order of ``values``. ``kind`` is categorical, multi or numeric (banded;
``edges`` gives the band edges, band i is [edges[i-1], edges[i]); ``quantiles`` the spec's
number of quantile bands when the edges are quantiles, which a rebuild compares its own with:
segsrv/snapshot/bands.py); semantics is
"own", "forward" (one value per row through forward links) or "exists"
(through at least one reverse link: a row has the feature when any linked row
has it).

Published files are read-only (mode without write bits) and never modified: a
catalog version hard-links its base's data files. Every number the manifest
states about the data (n_rows, n_features, n_dense, n_sparse, each field's
feature_offset and counts) is checked by readers against the arrays (every
feature recounted); a disagreement is a corrupt snapshot.

Compatibility: readers accept MIN_READ_VERSION <= format_version <=
FORMAT_VERSION and raise distinct errors for too-old and too-new snapshots.
Every array file's header carries the format version of the segsrv that wrote it.
Format version 2 added ``sparse_csr_indptr.bin`` and ``sparse_csr_indices.bin``; a
version-2 manifest must list them (a reader refuses one that leaves either out), a
version-1 manifest has neither, opens as before and answers identically (the engine
then counts rare features by probing their ids only). A catalog version
(`segsrv segments apply`) keeps its base's format version, since it shares its files.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import (
    CorruptSnapshotError,
    SnapshotFormatTooNewError,
    SnapshotFormatTooOldError,
    TruncatedSnapshotError,
)
from .mapping import map_file

FORMAT_NAME = "segsrv-snapshot"
FORMAT_VERSION = 2
MIN_READ_VERSION = 1
#: the format version that added the sparse CSR (sparse_csr_indptr.bin, sparse_csr_indices.bin)
SPARSE_CSR_VERSION = 2
#: a universe's sparse CSR is written only where it holds at least this many entries per row (module docstring)
SPARSE_CSR_MIN_IDS_PER_ROW = 1 / 8
ARRAY_MAGIC = b"\x93SEGARR\x00"
HEADER_BYTES = 64
MANIFEST = "manifest.json"
CURRENT = "CURRENT"

_HEADER = struct.Struct("<8sHH8sI4QQ")
assert _HEADER.size == HEADER_BYTES


def sparse_csr_pays(n_sparse_ids: int, n_rows: int) -> bool:
    """Whether a universe of n_rows rows and n_sparse_ids sparse ids has its sparse CSR (else both of its
    files are empty)."""
    return n_sparse_ids >= SPARSE_CSR_MIN_IDS_PER_ROW * n_rows


def check_format_version(version: int, where: str) -> None:
    """Raise the distinct too-new / too-old errors for a format version."""
    if not isinstance(version, int):
        raise CorruptSnapshotError(f"{where}: format version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise SnapshotFormatTooNewError(
            f"{where}: snapshot format version {version} is newer than this segsrv reads "
            f"(<= {FORMAT_VERSION}); upgrade segsrv"
        )
    if version < MIN_READ_VERSION:
        raise SnapshotFormatTooOldError(
            f"{where}: snapshot format version {version} is older than this segsrv reads "
            f"(>= {MIN_READ_VERSION}); rebuild the snapshot with `segsrv build`"
        )


def write_array(path: Path, array: np.ndarray) -> None:
    """Write `array` with the 64-byte header; data starts 64-byte aligned."""
    array = np.asarray(array)
    array = np.ascontiguousarray(array).reshape(array.shape)  # ascontiguousarray makes 0-d arrays 1-d
    if array.ndim > 4:
        raise ValueError("arrays of at most 4 dimensions")
    dtype = array.dtype.str.encode("ascii")
    if len(dtype) > 8:
        raise ValueError(f"dtype {array.dtype} string too long for the header")
    shape = list(array.shape) + [0] * (4 - array.ndim)
    header = _HEADER.pack(
        ARRAY_MAGIC, FORMAT_VERSION, 0, dtype.ljust(8), array.ndim, *shape, array.nbytes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(memoryview(array).cast("B") if array.nbytes else b"")


def parse_header(raw: bytes, where: str, size: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data length) from the first bytes of an array file of `size` bytes."""
    if size < HEADER_BYTES:
        raise TruncatedSnapshotError(f"{where}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, _, dtype, ndim, d0, d1, d2, d3, nbytes = _HEADER.unpack(bytes(raw[:HEADER_BYTES]))
    if magic != ARRAY_MAGIC:
        raise CorruptSnapshotError(f"{where}: bad magic {magic!r}, not a segsrv array file")
    check_format_version(version, where)
    try:
        dt = np.dtype(dtype.decode("ascii").strip())
    except (TypeError, UnicodeDecodeError) as exc:
        raise CorruptSnapshotError(f"{where}: bad dtype in header {dtype!r}") from exc
    if dt.kind not in "biufcS" or dt.hasobject or dt.itemsize == 0:
        # never map e.g. object pointers ("|O") from a file: numpy would dereference them
        raise CorruptSnapshotError(f"{where}: unsupported dtype {dt.str!r} in header")
    if ndim > 4:
        raise CorruptSnapshotError(f"{where}: bad ndim {ndim} in header")
    shape = (d0, d1, d2, d3)[:ndim]
    if any(d >= 1 << 48 for d in shape):
        raise CorruptSnapshotError(f"{where}: implausible shape {shape} in header")
    expected = math.prod(int(d) for d in shape) * dt.itemsize  # exact: no int64 overflow
    if expected != nbytes:
        raise CorruptSnapshotError(f"{where}: header shape {shape} x {dt} != data length {nbytes}")
    if size < HEADER_BYTES + nbytes:
        raise TruncatedSnapshotError(
            f"{where}: truncated, {size} bytes on disk, header needs {HEADER_BYTES + nbytes}"
        )
    return dt, shape, nbytes


def read_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_BYTES)
    return parse_header(raw, str(path), size)


def array_from_bytes(data: np.ndarray, where: str) -> np.ndarray:
    """The array an array file's bytes hold (`data`: uint8, e.g. a read-only map), as a view of them.

    The result is a plain read-only ndarray whose base chain ends at the map: the mapping lives as
    long as any view of it, and indexing skips np.memmap's Python-level hooks (microseconds per
    scalar lookup, which add up in per-request loops). An empty array is returned in memory."""
    dt, shape, nbytes = parse_header(data[:HEADER_BYTES], where, len(data))
    if nbytes == 0:
        return np.zeros(shape, dtype=dt)
    return data[HEADER_BYTES:HEADER_BYTES + nbytes].view(dt).reshape(shape)


def open_array(path: Path) -> np.ndarray:
    """Memory-map an array file read-only (see array_from_bytes; no file descriptor stays open)."""
    return array_from_bytes(map_file(path), str(path))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def dumps_manifest(manifest: dict) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
