"""Checksums of snapshot files: a fast one every open verifies, a strong one for audits.

Fast (``xxh3`` in a manifest's file entry): the xxh3-64 tree digest of the file's bytes. The file
is cut into chunks of ``CHUNK_BYTES`` (16 MiB; the last one shorter, an empty file has no chunk);
each chunk's xxh3-64 digest is written as 8 little-endian bytes, and the file's digest is the
xxh3-64 of that concatenation, as 16 lowercase hex digits. Chunks are independent, so one large
file is verified on every core; xxhash releases the GIL while it hashes. xxh3 detects accidental
damage (flipped bits, zeroed pages, torn writes); it is not a defence against someone who can
write the files and the manifest alike.

Strong (``sha256``): the SHA-256 of the whole file, kept for audits (``segsrv verify``).

Both run over the bytes the server will serve: the memory maps of segsrv.snapshot.mapping.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xxhash

CHUNK_BYTES = 16 << 20
FAST = "xxh3"
STRONG = "sha256"


def _chunks(data: np.ndarray) -> list[memoryview]:
    view = memoryview(data).cast("B")
    return [view[i:i + CHUNK_BYTES] for i in range(0, len(view), CHUNK_BYTES)]


def _combine(chunk_digests: list[int]) -> str:
    return xxhash.xxh3_64_hexdigest(b"".join(d.to_bytes(8, "little") for d in chunk_digests))


def xxh3_tree(data) -> str:
    """The fast digest of a buffer (one thread)."""
    return _combine([xxhash.xxh3_64_intdigest(c) for c in _chunks(np.asarray(data))])


def sha256(data) -> str:
    return hashlib.sha256(memoryview(np.asarray(data)).cast("B")).hexdigest()


def digests(buffers: dict[str, np.ndarray], algorithms: dict[str, tuple[str, ...]],
            threads: int = 1) -> dict[str, dict[str, str]]:
    """{name: {algorithm: digest}} of every buffer, each with the algorithms asked for it.

    The fast digest's chunks of every buffer and the strong digests are spread over `threads`
    threads (largest first, so one big file does not finish last alone)."""
    tasks: list[tuple[str, str, int, memoryview]] = []  # (name, algorithm, chunk index, bytes)
    for name, data in buffers.items():
        for algorithm in algorithms[name]:
            if algorithm == FAST:
                tasks.extend((name, FAST, i, c) for i, c in enumerate(_chunks(data)))
            elif algorithm == STRONG:
                tasks.append((name, STRONG, 0, memoryview(np.asarray(data)).cast("B")))
            else:
                raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    tasks.sort(key=lambda t: -len(t[3]))

    def run(task):
        name, algorithm, index, chunk = task
        if algorithm == FAST:
            return xxhash.xxh3_64_intdigest(chunk)
        return hashlib.sha256(chunk).hexdigest()

    if threads > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="segsrv-verify") as pool:
            results = list(pool.map(run, tasks))
    else:
        results = [run(t) for t in tasks]
    chunk_digests: dict[str, dict[int, int]] = {}
    out: dict[str, dict[str, str]] = {name: {} for name in buffers}
    for (name, algorithm, index, _), value in zip(tasks, results):
        if algorithm == FAST:
            chunk_digests.setdefault(name, {})[index] = value
        else:
            out[name][STRONG] = value
    for name, algos in algorithms.items():
        if FAST in algos:
            parts = chunk_digests.get(name, {})
            out[name][FAST] = _combine([parts[i] for i in range(len(parts))])
    return out
