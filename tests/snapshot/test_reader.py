"""Opening snapshots: location resolution, versions, and a distinct error for each kind of damage.

Every damaging test works on a private copy (``tiny_copy``) of the session's tiny snapshot.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from segsrv.errors import (
    CorruptSnapshotError,
    SnapshotError,
    SnapshotFormatTooNewError,
    SnapshotFormatTooOldError,
    SnapshotNotFoundError,
    TruncatedSnapshotError,
    UnknownFieldError,
    UnknownUniverseError,
    UnknownValueError,
)
from segsrv.snapshot import format as fmt
from segsrv.snapshot.builder import build_snapshot
from segsrv.snapshot.reader import open_snapshot, resolve_version_dir
from support import quiet

FILE = "universes/customers/csr_indices.bin"


def vdir_of(root: Path) -> Path:
    return root / "tiny" / (root / "tiny" / "CURRENT").read_text().strip()


def raises(cls, fn, *args, match=None, **kwargs):
    with pytest.raises(SnapshotError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    if match:
        assert match in str(info.value), str(info.value)
    return info.value


def rewrite_manifest(vdir: Path, **changes) -> None:
    m = json.loads((vdir / fmt.MANIFEST).read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(m))


# --- resolution ------------------------------------------------------------------


def test_open_root_name_version(tiny_root):
    v = vdir_of(tiny_root)
    for loc in (tiny_root, tiny_root / "tiny", v, str(v)):
        snap = open_snapshot(loc)
        assert snap.path == v and snap.name == "tiny" and snap.version == v.name
    assert resolve_version_dir(tiny_root, v.name) == v
    assert resolve_version_dir(tiny_root / "tiny", v.name) == v
    snap = open_snapshot(tiny_root, verify="full")
    assert sorted(snap.universes) == ["customers", "orders"]
    assert snap.description == "tiny test shop"
    assert snap.segments == {}


def test_versions_selection(tiny, tmp_path):
    root = tmp_path / "root"
    build_snapshot(tiny, root, version="v1", progress=quiet)
    with open(tiny.parent / "customers.csv", "a") as fh:
        fh.write("6,Fay,west,50\n")
    build_snapshot(tiny, root, version="v2", progress=quiet)
    assert open_snapshot(root).version == "v2"
    assert open_snapshot(root).universes["customers"].n_rows == 6
    for loc in (root, root / "tiny"):
        s1 = open_snapshot(loc, version="v1")
        assert s1.version == "v1" and s1.universes["customers"].n_rows == 5
    raises(SnapshotNotFoundError, open_snapshot, root / "tiny", version="v3", match="version 'v3' does not exist")
    # CURRENT names the version to serve
    (root / "tiny" / "CURRENT").write_text("v1\n")
    assert open_snapshot(root).version == "v1"
    (root / "tiny" / "CURRENT").write_text("gone\n")
    raises(SnapshotNotFoundError, open_snapshot, root, match="version 'gone' does not exist")


def test_not_found(tmp_path, tiny_copy):
    raises(SnapshotNotFoundError, open_snapshot, tmp_path / "nothing", match="does not exist")
    (tmp_path / "empty").mkdir()
    raises(SnapshotNotFoundError, open_snapshot, tmp_path / "empty", match="no snapshot here")
    # several snapshots under ROOT: the error asks to name one
    shutil.copytree(tiny_copy / "tiny", tiny_copy / "other")
    e = raises(SnapshotNotFoundError, open_snapshot, tiny_copy)
    assert "several snapshots ['other', 'tiny']" in str(e) and "name one as ROOT/NAME" in str(e)
    assert open_snapshot(tiny_copy / "other").path.parent.name == "other"


def test_missing_manifest(tiny_copy):
    v = vdir_of(tiny_copy)
    (v / fmt.MANIFEST).unlink()
    raises(SnapshotNotFoundError, open_snapshot, v)  # no longer recognisable as a version directory
    raises(SnapshotNotFoundError, open_snapshot, tiny_copy, match="no manifest.json")
    raises(SnapshotNotFoundError, open_snapshot, tiny_copy / "tiny", match="no manifest.json")


# --- damage ------------------------------------------------------------------------


def test_flipped_data_byte(tiny_copy):
    v = vdir_of(tiny_copy)
    path = v / FILE
    raw = bytearray(path.read_bytes())
    raw[fmt.HEADER_BYTES] ^= 0x01
    path.write_bytes(bytes(raw))
    # sizes match; this byte is a feature id of the row -> features index, which the recount of
    # every feature catches even without checksums
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, verify="sizes", match="disagrees with the feature bitsets")
    e = raises(CorruptSnapshotError, open_snapshot, tiny_copy, match="checksum mismatch")  # the default
    assert "xxh3" in str(e)
    e = raises(CorruptSnapshotError, open_snapshot, tiny_copy, verify="strong", match="checksum mismatch")


@pytest.mark.parametrize("verify", ["sizes", "full", "strong"])
def test_bad_magic(tiny_copy, verify):
    path = vdir_of(tiny_copy) / FILE
    raw = bytearray(path.read_bytes())
    raw[1] ^= 0xFF
    path.write_bytes(bytes(raw))
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, verify=verify)
    if verify == "sizes":
        raises(CorruptSnapshotError, open_snapshot, tiny_copy, verify=verify, match="bad magic")


@pytest.mark.parametrize("verify", ["sizes", "full", "strong"])
@pytest.mark.parametrize("keep", [0, 10, 64, -1])
def test_truncated(tiny_copy, verify, keep):
    path = vdir_of(tiny_copy) / FILE
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    raises(TruncatedSnapshotError, open_snapshot, tiny_copy, verify=verify)


def test_longer_than_manifest(tiny_copy):
    path = vdir_of(tiny_copy) / FILE
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, match="manifest says")


@pytest.mark.parametrize("verify", ["sizes", "full", "strong"])
def test_missing_file(tiny_copy, verify):
    (vdir_of(tiny_copy) / FILE).unlink()
    raises(TruncatedSnapshotError, open_snapshot, tiny_copy, verify=verify, match="missing")


def test_manifest_format_too_new(tiny_copy):
    rewrite_manifest(vdir_of(tiny_copy), format_version=fmt.FORMAT_VERSION + 1)
    raises(SnapshotFormatTooNewError, open_snapshot, tiny_copy, match="upgrade segsrv")


def test_manifest_format_too_old(tiny_copy, monkeypatch):
    v = vdir_of(tiny_copy)
    rewrite_manifest(v, format_version=0)
    raises(SnapshotFormatTooOldError, open_snapshot, tiny_copy, match="rebuild the snapshot")
    # a reader that no longer accepts version 1
    rewrite_manifest(v, format_version=1)
    monkeypatch.setattr(fmt, "MIN_READ_VERSION", 2)
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 2)
    raises(SnapshotFormatTooOldError, open_snapshot, tiny_copy, match="older than this segsrv reads")


def test_array_header_version_too_new(tiny_copy):
    path = vdir_of(tiny_copy) / FILE
    raw = bytearray(path.read_bytes())
    raw[8:10] = struct.pack("<H", fmt.FORMAT_VERSION + 1)
    path.write_bytes(bytes(raw))
    e = raises(SnapshotFormatTooNewError, open_snapshot, tiny_copy)
    assert "csr_indices.bin" in str(e)


@pytest.mark.parametrize("change,match", [
    ({"format": "something-else"}, "not a segsrv snapshot manifest"),
    ({"format_version": "1"}, "is not an integer"),
    ({"format_version": None}, "is not an integer"),
    ({"files": None}, "lacks 'files'"),
    ({"universes": None}, "lacks 'universes'"),
])
def test_bad_manifest(tiny_copy, change, match):
    rewrite_manifest(vdir_of(tiny_copy), **change)
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, match=match)


def test_unreadable_manifest(tiny_copy):
    (vdir_of(tiny_copy) / fmt.MANIFEST).write_text('{"format": ')
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, match="unreadable manifest")
    (vdir_of(tiny_copy) / fmt.MANIFEST).write_text("[1, 2]")
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, match="not a segsrv snapshot manifest")


def test_inconsistent_arrays(tiny_copy):
    """A well-formed file of the wrong length (manifest updated to match) is still refused."""
    v = vdir_of(tiny_copy)
    rel = "universes/customers/row_ids.bin"
    fmt.write_array(v / rel, np.arange(3, dtype=np.int64))
    m = json.loads((v / fmt.MANIFEST).read_text())
    m["files"][rel] = {"bytes": (v / rel).stat().st_size, "sha256": fmt.file_sha256(v / rel)}
    (v / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(m))
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, verify="full", match="inconsistent arrays")


def test_malformed_universe_meta(tiny_copy):
    v = vdir_of(tiny_copy)
    m = json.loads((v / fmt.MANIFEST).read_text())
    del m["universes"]["customers"]["n_rows"]
    (v / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(m))
    raises(CorruptSnapshotError, open_snapshot, tiny_copy, match="malformed snapshot")


def test_bad_verify_mode(tiny_root):
    with pytest.raises(ValueError):
        open_snapshot(tiny_root, verify="quick")


def test_error_classes_distinct():
    classes = [SnapshotNotFoundError, CorruptSnapshotError, TruncatedSnapshotError,
               SnapshotFormatTooNewError, SnapshotFormatTooOldError]
    for a in classes:
        assert issubclass(a, SnapshotError)
        for b in classes:
            assert (a is b) == issubclass(a, b)


# --- the API over an opened snapshot ----------------------------------------------


def test_universe_api(tiny_root):
    snap = open_snapshot(tiny_root)
    u = snap.universe("customers")
    assert (u.table, u.key, u.key_kind, u.n_rows) == ("customers", "cust_id", "int", 5)
    fid = u.feature_id("region", "north")
    assert u.feature_name(fid) == ("region", "north")
    assert u.feature_values[fid] == "north"
    rows = [r for r in range(u.n_rows) if fid in u.csr_indices[u.csr_indptr[r]:u.csr_indptr[r + 1]]]
    assert u.ids_for_rows(rows) == [1, 3]
    assert u.field("age").edges == [30.0, 50.0]
    assert u.field("orders.tags").values == ["a", "b", "c"]
    assert u.field("orders.channel").semantics == "exists"
    with pytest.raises(UnknownFieldError, match=r"no field 'regoin' \(did you mean 'region'"):
        u.field("regoin")
    with pytest.raises(UnknownValueError, match=r"field 'region' has no value 'nort' \(did you mean 'north'"):
        u.feature_id("region", "nort")
    with pytest.raises(UnknownUniverseError, match="several universes"):
        snap.universe(None)
    with pytest.raises(UnknownUniverseError, match=r"no universe 'customer' \(did you mean 'customers'"):
        snap.universe("customer")
    for uu in snap.universes.values():
        for name in ("dense", "csr_indices", "row_ids", "feature_slot"):
            arr = getattr(uu, name)
            assert not arr.flags.writeable
