"""Snapshots: the build spec, the builder, the on-disk format and the reader."""

from .reader import Snapshot, Universe, FieldInfo, open_snapshot

__all__ = ["Snapshot", "Universe", "FieldInfo", "open_snapshot", "build_snapshot"]


def build_snapshot(*args, **kwargs):
    """See segsrv.snapshot.builder.build_snapshot (imported lazily: it pulls in DuckDB)."""
    from .builder import build_snapshot as _build

    return _build(*args, **kwargs)
