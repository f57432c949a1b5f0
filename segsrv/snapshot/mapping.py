"""Read-only memory maps of snapshot files that hold no file descriptor.

``np.memmap`` (through Python's ``mmap.mmap``) keeps a duplicate of the file's descriptor open for
as long as the map lives: about two dozen per served version, so ``--keep-versions 100`` ran out of
descriptors under a 1,024 limit. Here the file is opened, checked, mapped with ``mmap(2)`` through
ctypes and closed at once; the map stays valid after the close (POSIX), and is unmapped when the
last numpy view of it goes.

``map_file(path)`` refuses what a snapshot file must not be, before mapping: a symbolic link as the
last component (``O_NOFOLLOW``), and anything but a regular file (a FIFO would block, a device
could be endless). The open never blocks (``O_NONBLOCK``).

A mapped file that another process truncates raises SIGBUS on access: published files are
read-only (segsrv.snapshot.publish) and must never be written or truncated (docs/server.md).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import CorruptSnapshotError, TruncatedSnapshotError

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class _Mapping:
    """Owner of one mapping: numpy reads it through __array_interface__; unmapped on collection."""

    __slots__ = ("address", "size", "__array_interface__", "__weakref__")

    def __init__(self, address: int, size: int):
        self.address = address
        self.size = size
        self.__array_interface__ = {"data": (address, True), "shape": (size,), "typestr": "|u1", "version": 3}

    def __del__(self) -> None:
        if self.address:
            _munmap(self.address, self.size)
            self.address = 0


def open_regular(path: Path, what: str = "file") -> int:
    """A read-only descriptor of `path`, which must be a regular file and not a symbolic link."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise TruncatedSnapshotError(f"{path}: {what} is missing") from None
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40):
            raise CorruptSnapshotError(f"{path}: {what} is a symbolic link; it must be a regular file") from None
        raise CorruptSnapshotError(f"{path}: cannot open {what}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CorruptSnapshotError(f"{path}: {what} is not a regular file")
    return fd


def map_file(path: Path) -> np.ndarray:
    """The bytes of a regular file as a read-only uint8 array backed by a shared map (no fd kept)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return np.zeros(0, dtype=np.uint8)
        # MAP_POPULATE: the kernel maps every cached page at once, which costs far less than one
        # fault per page while verifying (and the first requests then take no faults either)
        address = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_POPULATE, fd, 0)
        if address in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise CorruptSnapshotError(f"{path}: cannot map the file: {os.strerror(err)}")
    finally:
        os.close(fd)
    view = np.asarray(_Mapping(address, size))  # base: the _Mapping; read-only
    return view
