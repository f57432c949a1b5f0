"""Array files: round-trip, alignment, headers, and truncation never returning wrong data."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segsrv.errors import (
    CorruptSnapshotError,
    SnapshotError,
    SnapshotFormatTooNewError,
    SnapshotFormatTooOldError,
    TruncatedSnapshotError,
)
from segsrv.snapshot import format as fmt
from segsrv.snapshot import mapping

DTYPES = st.sampled_from(["<u8", "<u4", "<i8", "<f8"]) | st.integers(1, 40).map(lambda n: f"|S{n}")
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def arrays():
    return st.tuples(DTYPES, SHAPES).flatmap(
        lambda ds: hnp.arrays(np.dtype(ds[0]), ds[1], elements=_elements(ds[0]))
    )


def _elements(dtype):
    if dtype.startswith("|S"):
        # numpy drops trailing NULs of |S values, so leave them out of the examples
        n = int(dtype[2:])
        return st.binary(min_size=0, max_size=n).map(lambda b: b.rstrip(b"\0"))
    if dtype == "<f8":
        return st.floats(allow_nan=True, allow_infinity=True)
    return None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@SETTINGS
@given(arr=arrays())
def test_roundtrip(tmp_path_factory, arr):
    path = tmp_path_factory.mktemp("rt") / "a.bin"
    fmt.write_array(path, arr)
    raw = path.read_bytes()
    assert len(raw) == fmt.HEADER_BYTES + arr.nbytes
    assert raw[:8] == fmt.ARRAY_MAGIC
    assert raw[fmt.HEADER_BYTES:] == np.ascontiguousarray(arr).tobytes()  # data at offset 64
    back = fmt.open_array(path)
    assert _same(np.asarray(back), arr)
    dt, shape, nbytes = fmt.read_header(path)
    assert (dt, shape, nbytes) == (arr.dtype, arr.shape, arr.nbytes)
    if arr.nbytes:
        # memory-mapped (a plain ndarray view whose base chain ends at the map), read-only
        base = back
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, mapping._Mapping) and not back.flags.writeable
        assert back.ctypes.data % 64 == 0, "data must be 64-byte aligned when mapped"
    # writing is deterministic
    path2 = path.with_name("b.bin")
    fmt.write_array(path2, arr.copy())
    assert path2.read_bytes() == raw


@SETTINGS
@given(arr=arrays(), data=st.data())
def test_truncation_never_returns_wrong_data(tmp_path_factory, arr, data):
    path = tmp_path_factory.mktemp("tr") / "a.bin"
    fmt.write_array(path, arr)
    full = path.read_bytes()
    cut = data.draw(st.integers(0, len(full)), label="cut")
    path.write_bytes(full[:cut])
    if cut == len(full):
        assert _same(np.asarray(fmt.open_array(path)), arr)
    else:
        with pytest.raises(TruncatedSnapshotError):
            fmt.open_array(path)


@SETTINGS
@given(arr=arrays(), data=st.data())
def test_damaged_header_never_crashes(tmp_path_factory, arr, data):
    """Flip one header byte: a SnapshotError, or an array exactly as large as the header says
    (a checksum, not the header, catches e.g. '<u8' turned into '>u8'); never another exception."""
    path = tmp_path_factory.mktemp("hd") / "a.bin"
    fmt.write_array(path, arr)
    raw = bytearray(path.read_bytes())
    pos = data.draw(st.integers(0, fmt.HEADER_BYTES - 1), label="pos")
    raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(raw))
    try:
        back = fmt.open_array(path)
    except SnapshotError:
        return
    back = np.asarray(back)
    assert back.nbytes <= len(raw) - fmt.HEADER_BYTES
    if pos in (10, 11) or 24 + 8 * arr.ndim <= pos < 56:  # reserved / unused shape slots
        assert _same(back, arr)
    if pos < 8:
        pytest.fail("a damaged magic must be refused")


def test_header_layout(tmp_path):
    arr = np.arange(12, dtype="<u4").reshape(3, 4)
    fmt.write_array(tmp_path / "a.bin", arr)
    raw = (tmp_path / "a.bin").read_bytes()
    magic, version, reserved, dtype, ndim, d0, d1, d2, d3, nbytes = struct.unpack("<8sHH8sI4QQ", raw[:64])
    assert magic == b"\x93SEGARR\x00" and version == fmt.FORMAT_VERSION == 2 and reserved == 0
    assert dtype == b"<u4     " and ndim == 2 and (d0, d1, d2, d3) == (3, 4, 0, 0) and nbytes == 48


def _write_with(tmp_path: Path, **fields) -> Path:
    arr = np.arange(4, dtype="<i8")
    vals = dict(magic=fmt.ARRAY_MAGIC, version=fmt.FORMAT_VERSION, reserved=0, dtype=b"<i8     ", ndim=1,
                shape=(4, 0, 0, 0), nbytes=32)
    vals.update(fields)
    header = struct.pack("<8sHH8sI4QQ", vals["magic"], vals["version"], vals["reserved"], vals["dtype"],
                         vals["ndim"], *vals["shape"], vals["nbytes"])
    path = tmp_path / "x.bin"
    path.write_bytes(header + arr.tobytes())
    return path


@pytest.mark.parametrize("fields,cls,pattern", [
    ({"magic": b"\x93SEGARX\x00"}, CorruptSnapshotError, "bad magic"),
    ({"magic": b"\x93NUMPY\x01\x00"}, CorruptSnapshotError, "not a segsrv array file"),
    ({"version": fmt.FORMAT_VERSION + 1}, SnapshotFormatTooNewError, "newer than this segsrv reads"),
    ({"version": 0}, SnapshotFormatTooOldError, "older than this segsrv reads"),
    ({"dtype": b"<zz     "}, CorruptSnapshotError, "bad dtype"),
    # never map object pointers from a file (numpy would dereference them: a segfault)
    ({"dtype": b"|O      "}, CorruptSnapshotError, "unsupported dtype"),
    ({"dtype": b"<O8     "}, CorruptSnapshotError, "unsupported dtype"),
    ({"dtype": b"|V8     "}, CorruptSnapshotError, "unsupported dtype"),
    ({"dtype": b"<M8[D]  "}, CorruptSnapshotError, "unsupported dtype"),
    ({"dtype": b"|S0     ", "nbytes": 0}, CorruptSnapshotError, "unsupported dtype"),
    ({"ndim": 5}, CorruptSnapshotError, "bad ndim"),
    ({"shape": (5, 0, 0, 0)}, CorruptSnapshotError, r"!= data length"),
    ({"nbytes": 31}, CorruptSnapshotError, r"!= data length"),
    ({"shape": (8, 0, 0, 0), "nbytes": 64}, TruncatedSnapshotError, "truncated"),
])
def test_bad_headers(tmp_path, fields, cls, pattern):
    path = _write_with(tmp_path, **fields)
    with pytest.raises(cls, match=pattern):
        fmt.open_array(path)


def test_good_handmade_header(tmp_path):
    assert np.asarray(fmt.open_array(_write_with(tmp_path))).tolist() == [0, 1, 2, 3]


def test_error_classes_distinct():
    classes = [CorruptSnapshotError, TruncatedSnapshotError, SnapshotFormatTooNewError, SnapshotFormatTooOldError]
    for a in classes:
        for b in classes:
            assert (a is b) == issubclass(a, b)


def test_min_read_version(monkeypatch, tmp_path):
    monkeypatch.setattr(fmt, "MIN_READ_VERSION", 2)
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 3)
    with pytest.raises(SnapshotFormatTooOldError, match="rebuild the snapshot"):
        fmt.open_array(_write_with(tmp_path, version=1))
    fmt.check_format_version(2, "x")
    fmt.check_format_version(3, "x")
    with pytest.raises(SnapshotFormatTooNewError, match="upgrade segsrv"):
        fmt.check_format_version(4, "x")
    with pytest.raises(CorruptSnapshotError):
        fmt.check_format_version("1", "x")


def test_write_array_limits(tmp_path):
    with pytest.raises(ValueError):
        fmt.write_array(tmp_path / "a.bin", np.zeros((1,) * 5))
    with pytest.raises(ValueError):
        fmt.write_array(tmp_path / "a.bin", np.zeros(2, dtype="S123456789"))
    fmt.write_array(tmp_path / "sub" / "dir" / "a.bin", np.zeros((2, 3)).T)  # non-contiguous, parents made
    assert np.asarray(fmt.open_array(tmp_path / "sub" / "dir" / "a.bin")).shape == (3, 2)


def test_write_atomic_and_manifest_dump(tmp_path):
    p = tmp_path / "CURRENT"
    fmt.write_atomic(p, b"v1\n")
    fmt.write_atomic(p, b"v2\n")
    assert p.read_bytes() == b"v2\n"
    assert [x.name for x in tmp_path.iterdir()] == ["CURRENT"]  # no temporary left
    a = fmt.dumps_manifest({"b": 1, "a": {"z": "ä", "y": [1, 2]}})
    assert a == fmt.dumps_manifest({"a": {"y": [1, 2], "z": "ä"}, "b": 1})  # sorted keys
    assert a.decode("utf-8").index('"a"') < a.decode("utf-8").index('"b"') and "ä" in a.decode("utf-8")
    assert a.endswith(b"\n")


def test_the_sparse_csr_is_built_from_one_sparse_id_per_8_rows():
    assert fmt.SPARSE_CSR_MIN_IDS_PER_ROW == 1 / 8
    assert fmt.sparse_csr_pays(125, 1000) and not fmt.sparse_csr_pays(124, 1000)
    assert fmt.sparse_csr_pays(0, 0) and not fmt.sparse_csr_pays(0, 1)
