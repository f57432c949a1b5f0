"""What every open of a snapshot trusts, and what it no longer does (issue 14, items 1, 2, 7, 8, 9).

Every open checks every byte (fast checksum), that the manifest lists every file the format
requires, that nothing outside the version directory is read, and that the manifest's numbers
are what the data says; CURRENT is read only as a small regular file; maps hold no descriptor;
published files are read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv.engine.catalog import apply_segments
from segsrv.engine.relate import count_features
from segsrv.errors import CorruptSnapshotError, SnapshotError, SnapshotNotFoundError
from segsrv.snapshot import checksum
from segsrv.snapshot import format as fmt
from segsrv.snapshot.builder import file_entries
from segsrv.snapshot.location import read_current
from segsrv.snapshot.reader import (SPARSE_CSR_FILES, UNIVERSE_FILES, UNIVERSE_FILES_V1, open_snapshot,
                                    required_files)
from support import as_format_version_1

U = "customers"


def vdir_of(root: Path) -> Path:
    return root / "tiny" / (root / "tiny" / "CURRENT").read_text().strip()


def manifest_of(vdir: Path) -> dict:
    return json.loads((vdir / fmt.MANIFEST).read_text())


def write_manifest(vdir: Path, manifest: dict) -> None:
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps_manifest(manifest))


def refused(root, match: str, cls=CorruptSnapshotError, **kwargs) -> str:
    with pytest.raises(SnapshotError) as info:
        open_snapshot(root, **kwargs)
    assert type(info.value) is cls and match in str(info.value), f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


def relist(vdir: Path, manifest: dict, rel: str) -> None:
    """Give `rel` a manifest entry that matches its (rewritten) bytes."""
    manifest["files"][rel] = file_entries(vdir)[rel]
    write_manifest(vdir, manifest)


# -- 1. every byte, at every open -------------------------------------------------------------------


@pytest.mark.parametrize("rel", [f"universes/{U}/{f}" for f in UNIVERSE_FILES])
def test_a_flipped_byte_in_any_file_is_refused_by_a_plain_open(tiny_copy, rel):
    path = vdir_of(tiny_copy) / rel
    raw = bytearray(path.read_bytes())
    if len(raw) == fmt.HEADER_BYTES:
        pytest.skip(f"{rel} holds no data in the tiny snapshot")
    raw[-1] ^= 0x10
    path.write_bytes(bytes(raw))
    refused(tiny_copy, "checksum mismatch (xxh3")


def test_zeroed_bitsets_are_refused(tiny_copy):
    """The restarted worker of the adversarial test served zeroed bitsets: Count 0 for every feature."""
    path = vdir_of(tiny_copy) / f"universes/{U}/dense.bin"
    raw = bytearray(path.read_bytes())
    raw[fmt.HEADER_BYTES:] = bytes(len(raw) - fmt.HEADER_BYTES)
    path.write_bytes(bytes(raw))
    refused(tiny_copy, "checksum mismatch")


def test_a_snapshot_without_fast_checksums_is_checked_by_sha256(tiny_copy):
    """Snapshots built before the fast checksum existed still have every byte checked."""
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    for entry in m["files"].values():
        del entry[checksum.FAST]
    write_manifest(v, m)
    assert open_snapshot(tiny_copy).version == v.name
    path = v / f"universes/{U}/csr_indices.bin"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    refused(tiny_copy, "checksum mismatch (sha256")


def test_strong_verification_recomputes_sha256_too(tiny_copy):
    """A manifest whose sha256 lies (xxh3 right) passes a plain open but not `strong` (segsrv verify)."""
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    rel = f"universes/{U}/row_ids.bin"
    m["files"][rel][checksum.STRONG] = "0" * 64
    write_manifest(v, m)
    open_snapshot(tiny_copy)
    refused(tiny_copy, "checksum mismatch (sha256", verify="strong")


# -- 2. the manifest is not trusted -------------------------------------------------------------------


@pytest.mark.parametrize("rel", [f"universes/{U}/{f}" for f in UNIVERSE_FILES] + [f"universes/{U}/numeric/age.bin"])
def test_every_required_file_must_be_listed(tiny_copy, rel):
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    assert rel in required_files(m)
    del m["files"][rel]
    write_manifest(v, m)
    msg = refused(tiny_copy, "does not list 1 required file")
    assert rel in msg
    # ... and the file left out is then never opened unchecked, whatever is done to it
    (v / rel).write_bytes(b"\0" * (v / rel).stat().st_size)
    refused(tiny_copy, "does not list", verify="sizes")


def test_manifest_counts_must_match_the_data(tiny_copy):
    v = vdir_of(tiny_copy)
    good = manifest_of(v)
    field = next(f for f in good["universes"][U]["fields"] if f["name"] == "region")
    cases = []
    m = json.loads(json.dumps(good))
    next(f for f in m["universes"][U]["fields"] if f["name"] == "region")["counts"][0] += 1
    cases.append((m, "value counts in the manifest differ"))
    m = json.loads(json.dumps(good))
    m["universes"][U]["n_dense"] += 1
    cases.append((m, "dense and"))
    m = json.loads(json.dumps(good))
    next(f for f in m["universes"][U]["fields"] if f["name"] == "region")["feature_offset"] += 1
    cases.append((m, "do not tile the features"))
    for manifest, match in cases:
        write_manifest(v, manifest)
        refused(tiny_copy, match)
    write_manifest(v, good)
    # feature_count.bin rewritten (and re-listed with matching checksums) to disagree with the bitsets
    rel = f"universes/{U}/feature_count.bin"
    counts = np.array(fmt.open_array(v / rel))
    fid = field["feature_offset"]
    counts[fid] += 3
    (v / rel).unlink()
    fmt.write_array(v / rel, counts)
    m = json.loads(json.dumps(good))
    m["universes"][U]["fields"][m["universes"][U]["fields"].index(field)]["counts"][0] += 3
    relist(v, m, rel)
    msg = refused(tiny_copy, "feature counts in feature_count.bin differ from their rows")
    assert f"feature {fid}:" in msg


def _rewrite(v: Path, m: dict, rel: str, array: np.ndarray) -> None:
    """Replace array file `rel` by `array`, its manifest entry matching (checksums consistent)."""
    (v / rel).unlink()
    fmt.write_array(v / rel, array)
    relist(v, m, rel)


# the tiny customers' sparse CSR is indptr [0, 2, 2, 2, 4, 5], indices [0, 4, 2, 9, 3] (features 0, 2, 3, 4, 9
# sparse; 1 dense; 12 features): each case rewrites (indptr, indices) and names the file it must blame
SPARSE_CSR_DAMAGE = {
    "not ascending": (None, [4, 0, 2, 9, 3], "sparse_csr_indices.bin: a row's features are not strictly ascending"),
    "a dense feature": (None, [0, 1, 2, 9, 3], "sparse_csr_indices.bin names features stored dense"),
    "past n_features": (None, [0, 4, 2, 12, 3], "sparse_csr_indices.bin names features past n_features"),
    "counts per feature": (None, [0, 3, 2, 9, 3], "sparse_csr_indices.bin (rows -> sparse features) disagrees"),
    "rows moved": ([0, 1, 1, 1, 4, 5], [0, 4, 2, 9, 3], "sparse_csr_indptr.bin's rows are not those of sparse_ids"),
    "not from 0": ([1, 2, 2, 2, 4, 5], [0, 4, 2, 9, 3], "sparse_csr_indptr.bin does not rise from 0"),
    "short indptr": ([0, 2, 2, 2, 5], [0, 4, 2, 9, 3], "sparse_csr_indptr.bin length (5,), expected 6"),
    "ends early": ([0, 2, 2, 2, 4, 4], [0, 4, 2, 9, 3], "sparse_csr_indptr.bin does not end at len(sparse_csr_indices"),
    "an entry lost": ([0, 2, 2, 2, 4, 4], [0, 4, 2, 9], "sparse_csr_indices.bin length (4,), expected len(sparse_ids"),
    # empty means "not built" only when both files are (format.sparse_csr_pays)
    "indptr emptied": ([], [0, 4, 2, 9, 3], "sparse_csr_indptr.bin length (0,), expected 6"),
    "indices emptied": (None, [], "sparse_csr_indices.bin length (0,), expected len(sparse_ids"),
}


def test_a_sparse_csr_left_empty_is_not_built(tiny_copy):
    """Both files empty (what the builder writes where too few sparse ids make it pay): the universe opens
    without it and its rare features are probed, with the same counts."""
    v = vdir_of(tiny_copy)
    before = open_snapshot(tiny_copy).universes[U]
    fids = np.arange(before.n_features, dtype=np.int64)
    bits = np.zeros(before.n_words, dtype=np.uint64)
    bits[0] = 0b10110
    want = count_features(before, bits, 3, fids, "scan", sparse="rows")[0]
    m = manifest_of(v)
    _rewrite(v, m, f"universes/{U}/sparse_csr_indptr.bin", np.zeros(0, dtype=np.int64))
    _rewrite(v, m, f"universes/{U}/sparse_csr_indices.bin", np.zeros(0, dtype=np.uint32))
    u = open_snapshot(tiny_copy).universes[U]
    assert u.sparse_csr_indptr is None and u.sparse_csr_indices is None
    assert np.array_equal(count_features(u, bits, 3, fids, "scan")[0], want)


@pytest.mark.parametrize("case", list(SPARSE_CSR_DAMAGE))
def test_a_sparse_csr_that_disagrees_with_the_data_is_refused(tiny_copy, case):
    """Checksums consistent, the sparse CSR (format version 2) wrong: the open names the file."""
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    u = open_snapshot(tiny_copy).universes[U]
    assert u.sparse_csr_indptr.tolist() == [0, 2, 2, 2, 4, 5] and u.sparse_csr_indices.tolist() == [0, 4, 2, 9, 3]
    assert u.sparse_features.tolist() == [0, 2, 3, 4, 9] and u.n_features == 12
    indptr, indices, match = SPARSE_CSR_DAMAGE[case]
    if indptr is not None:
        _rewrite(v, m, f"universes/{U}/sparse_csr_indptr.bin", np.array(indptr, dtype=np.int64))
    if indices != u.sparse_csr_indices.tolist():
        _rewrite(v, m, f"universes/{U}/sparse_csr_indices.bin", np.array(indices, dtype=np.uint32))
    refused(tiny_copy, match)


def test_a_version_1_snapshot_requires_no_sparse_csr(tiny_copy):
    """Format version 1 has eight files per universe: it opens without the sparse CSR (None), and its
    manifest leaving out one of the eight is refused as before."""
    v = vdir_of(tiny_copy)
    as_format_version_1(v)
    m = manifest_of(v)
    assert m["format_version"] == 1 and not any("sparse_csr" in rel for rel in m["files"])
    required = required_files(m)
    assert not any("sparse_csr" in rel for rel in required)
    assert {rel for rel in required if rel.startswith(f"universes/{U}/") and "numeric" not in rel} == {
        f"universes/{U}/{f}" for f in UNIVERSE_FILES_V1}
    snap = open_snapshot(tiny_copy)
    assert all(u.sparse_csr_indptr is None and u.sparse_csr_indices is None for u in snap.universes.values())
    del m["files"][f"universes/{U}/csr_indices.bin"]
    write_manifest(v, m)
    assert f"universes/{U}/csr_indices.bin" in refused(tiny_copy, "does not list 1 required file")


def test_a_version_2_manifest_requires_the_sparse_csr(tiny_copy):
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    assert m["format_version"] == 2 and set(UNIVERSE_FILES) == set(UNIVERSE_FILES_V1) | set(SPARSE_CSR_FILES)
    assert {f"universes/{U}/{f}" for f in SPARSE_CSR_FILES} <= set(required_files(m))
    del m["files"][f"universes/{U}/sparse_csr_indptr.bin"]
    del m["files"][f"universes/{U}/sparse_csr_indices.bin"]
    write_manifest(v, m)
    msg = refused(tiny_copy, "does not list 2 required file")
    assert "sparse_csr_indptr.bin" in msg and "sparse_csr_indices.bin" in msg


@pytest.mark.parametrize("numeric_file", ["../../../etc/passwd", "/etc/passwd", "universes/customers/../../x.bin",
                                          "universes/orders/numeric/total.bin"])
def test_numeric_file_outside_its_universe_is_refused(tiny_copy, numeric_file):
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    next(f for f in m["universes"][U]["fields"] if f.get("numeric_file"))["numeric_file"] = numeric_file
    write_manifest(v, m)
    refused(tiny_copy, "is not a file of universe 'customers'")


def test_listed_paths_outside_the_version_are_refused(tiny_copy):
    v = vdir_of(tiny_copy)
    m = manifest_of(v)
    m["files"]["../CURRENT"] = {"bytes": 1, "sha256": "0" * 64}
    write_manifest(v, m)
    refused(tiny_copy, "leaves the version directory")


def test_a_symlink_out_of_the_version_is_never_followed(tiny_copy, tmp_path):
    v = vdir_of(tiny_copy)
    rel = f"universes/{U}/numeric/age.bin"
    outside = tmp_path / "outside.bin"
    shutil.copy(v / rel, outside)
    (v / rel).unlink()
    (v / rel).symlink_to(outside)
    refused(tiny_copy, "symbolic link")
    # a directory on the way that links out
    (v / rel).unlink()
    shutil.copy(outside, v / rel)
    moved = tmp_path / "numeric"
    shutil.move(v / f"universes/{U}/numeric", moved)
    (v / f"universes/{U}/numeric").symlink_to(moved)
    refused(tiny_copy, "leads outside the version directory")


def test_a_version_directory_that_is_a_symlink_is_refused(tiny_copy, tmp_path):
    v = vdir_of(tiny_copy)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(v, elsewhere)
    m = manifest_of(elsewhere)
    m["version"] = "linked"
    write_manifest(elsewhere, m)
    (tiny_copy / "tiny" / "linked").symlink_to(elsewhere)
    (tiny_copy / "tiny" / "CURRENT").write_text("linked\n")
    refused(tiny_copy, "version directory is a symbolic link")
    refused(tiny_copy / "tiny", "version directory is a symbolic link", version="linked")


# -- 8. CURRENT ------------------------------------------------------------------------------------------


def _bounded(fn, seconds: float = 10.0):
    """fn() on a thread; fails the test (instead of hanging it) when it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked"
    return out


def test_current_as_a_fifo_does_not_block(tiny_copy):
    current = tiny_copy / "tiny" / "CURRENT"
    current.unlink()
    os.mkfifo(current)
    got = _bounded(lambda: read_current(tiny_copy / "tiny"))
    assert isinstance(got.get("error"), CorruptSnapshotError) and "not a regular file" in str(got["error"])
    got = _bounded(lambda: open_snapshot(tiny_copy))
    assert isinstance(got.get("error"), SnapshotError)


def test_current_as_a_link_to_dev_zero_or_a_huge_file_is_refused(tiny_copy):
    current = tiny_copy / "tiny" / "CURRENT"
    current.unlink()
    current.symlink_to("/dev/zero")
    got = _bounded(lambda: read_current(tiny_copy / "tiny"))
    assert isinstance(got.get("error"), CorruptSnapshotError) and "symbolic link" in str(got["error"])
    current.unlink()
    current.write_bytes(b"x" * (1 << 20))
    with pytest.raises(CorruptSnapshotError, match="longer than 4096 bytes"):
        read_current(tiny_copy / "tiny")
    current.unlink()
    with pytest.raises(SnapshotNotFoundError):
        read_current(tiny_copy / "tiny")


# -- 9. no descriptor per map ------------------------------------------------------------------------------


def test_open_versions_hold_no_file_descriptors(tiny_root):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    snaps = [open_snapshot(tiny_root) for _ in range(30)]
    assert fds() - before <= 2, "a loaded version must not keep a descriptor per file"
    assert all(s.universe(U).n_rows == 5 for s in snaps)
    assert int(np.asarray(snaps[-1].universe(U).dense).sum()) > 0  # the maps still read after the closes


# -- 7. published files are read-only ---------------------------------------------------------------------


def _writable(vdir: Path) -> list[str]:
    return [p.relative_to(vdir).as_posix() for p in vdir.rglob("*")
            if p.is_file() and p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)]


def test_published_files_are_read_only(tiny_copy):
    v = vdir_of(tiny_copy)
    assert _writable(v) == []
    new, changed = apply_segments(tiny_copy / "tiny", {"north": {"where": {"region": "north"}, "universe": U}})
    assert changed and _writable(new) == []
    # the catalog version shares the data files (hard links) and their checksums; it adds the segments'
    # propensity models (checksummed data files too)
    assert os.stat(new / f"universes/{U}/dense.bin").st_ino == os.stat(v / f"universes/{U}/dense.bin").st_ino
    files = manifest_of(new)["files"]
    models = {rel for rel in files if rel.startswith("models/catalog/")}
    assert len(models) == 1 and {k: x for k, x in files.items() if k not in models} == manifest_of(v)["files"]


def test_segments_apply_on_a_version_1_base_keeps_its_format(tiny_copy):
    """A catalog version shares its base's files: a version-1 base gives a version-1 catalog version (no
    sparse CSR required), which opens and counts as its base does."""
    v = vdir_of(tiny_copy)
    as_format_version_1(v)
    new, changed = apply_segments(tiny_copy / "tiny", {"north": {"where": {"region": "north"}, "universe": U}})
    assert changed and manifest_of(new)["format_version"] == 1
    assert not any("sparse_csr" in rel for rel in manifest_of(new)["files"])
    snap = open_snapshot(tiny_copy)
    assert snap.version == new.name and snap.universe(U).sparse_csr_indptr is None
    assert snap.segments["north"]["where"] == {"region": "north"}


def test_segments_apply_refuses_a_damaged_base(tiny_copy):
    v = vdir_of(tiny_copy)
    path = v / f"universes/{U}/row_ids.bin"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshotError, match="checksum mismatch"):
        apply_segments(tiny_copy / "tiny", {"north": {"where": {"region": "north"}, "universe": U}})
    assert sorted(p.name for p in (tiny_copy / "tiny").iterdir()) == sorted(["CURRENT", v.name])


# -- the checksum's definition ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), chunk=st.integers(1, 64), flip=st.integers(0, 10_000))
def test_tree_digest_is_its_definition_on_any_thread_count(data, chunk, flip):
    import xxhash

    old = checksum.CHUNK_BYTES
    checksum.CHUNK_BYTES = chunk
    try:
        parts = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        expected = xxhash.xxh3_64_hexdigest(b"".join(xxhash.xxh3_64_intdigest(p).to_bytes(8, "little")
                                                     for p in parts))
        buf = np.frombuffer(data, dtype=np.uint8)
        assert checksum.xxh3_tree(buf) == expected
        for threads in (1, 2, 3):
            got = checksum.digests({"a": buf, "b": buf[::-1].copy()}, {"a": (checksum.FAST, checksum.STRONG),
                                                                        "b": (checksum.FAST,)}, threads=threads)
            assert got["a"][checksum.FAST] == expected
            assert got["b"][checksum.FAST] == checksum.xxh3_tree(buf[::-1].copy())
            assert got["a"][checksum.STRONG] == checksum.sha256(buf)
        if data:
            flipped = bytearray(data)
            flipped[flip % len(data)] ^= 0x01
            assert checksum.xxh3_tree(np.frombuffer(bytes(flipped), dtype=np.uint8)) != expected
    finally:
        checksum.CHUNK_BYTES = old
