"""The snapshots a server serves, by name, their versions and who uses them.

``SnapshotRegistry(root)`` opens every snapshot ``ROOT/NAME`` (the version
``ROOT/NAME/CURRENT`` names; ``ROOT`` itself may also be one ``NAME``
directory). Every load, the first one and every hot reload after CURRENT
moved, checks every byte before the version is served (``verify="full"``:
the fast checksums, the required files, the manifest's numbers against the
data; segsrv.snapshot.reader). A snapshot that fails to open is logged with
the reason and skipped; the others, and the version already served under that
name, keep serving. CURRENT itself is read only when it is a small regular
file (segsrv.snapshot.location.read_current).

A sharded snapshot ``ROOT/NAME`` (a ``SHARDS`` manifest and its shards:
segsrv/engine/sharded/) is served next to ordinary ones, under its name and
version ("shards-..."): every shard is opened (its own memory maps, verified
as an ordinary version is) and answers are merged in-process. Its reload key
is the SHARDS file (a build writes it last): a new SHARDS is a new build,
opened and verified whole, then swapped in as one version, so a request
finishes on the build it resolved and no answer mixes builds. A build that
fails to open (a shard's CURRENT not the version SHARDS names, a corrupt
shard) is refused as a broken CURRENT is, and the old build keeps serving.

Scrubbing (``scrub()``, every ``--verify-interval`` by ``reload.Reloader``):
every served version's bytes are checked again. Published files are read-only
and must never be written (docs/server.md); if one is changed anyway, the
version that holds it is *withdrawn*: requests for it get DATA_LOSS
(``SnapshotWithdrawnError``) rather than answers from changed data, health
turns NOT_SERVING when nothing else is served, and the next version CURRENT
names is loaded (and fully verified) as usual.

Hot reload (``refresh()``, called every ``--reload-interval`` by
``reload.Reloader``): when CURRENT is replaced (new content, or the same
content in a new file), the version it names is opened and verified in the
calling (background) thread, without holding the lock requests take, then
swapped in atomically. A version that fails is refused with a logged reason
and not tried again until CURRENT changes again.

Versions and references: ``resolve(name, version)`` picks the snapshot of a
request. Inside a ``request_scope()`` (the server opens one per RPC) it also
takes a reference on that version, dropped when the RPC ends. A version
replaced by a reload is *retired*: it stays served (a request may pin it with
``snapshot.version``) while a request holds it, or while it is among the
``keep_versions`` most recently retired; after that the registry forgets it
and its memory maps are unmapped as soon as the last Python reference goes
(CPython frees them at once). A pin to any other version is
FAILED_PRECONDITION (``VersionNotServedError``).

Snapshot names and versions that come from requests, and the version
CURRENT names, must be one plain path component (``check_component``): no
``/`` or ``\\``, not starting with ``.`` (so never ``..``), no control
characters, at most 255 bytes; anything else is INVALID_ARGUMENT (requests)
or a refused version (CURRENT). Request names are only dictionary keys and
never reach the file system.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import (
    CorruptSnapshotError,
    NoSnapshotServedError,
    QueryError,
    SnapshotError,
    SnapshotNotFoundError,
    SnapshotWithdrawnError,
    VersionNotServedError,
)
from ..engine.sharded import ShardedSnapshot, is_sharded, open_sharded, sharded_version
from ..snapshot import format as fmt
from ..snapshot.location import read_current
from ..snapshot.reader import Snapshot, open_snapshot
from ..snapshot.shards import SHARDS, read_shard_manifest
from ..snapshot.spec import suggest

log = logging.getLogger("segsrv.server")

MAX_COMPONENT_BYTES = 255


def component_problem(value: str) -> str | None:
    """Why `value` is not a safe single path component (None when it is)."""
    if not value:
        return "is empty"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        return f"is longer than {MAX_COMPONENT_BYTES} bytes"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if value.startswith("."):
        return "starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    return None


def check_component(value: str, field_path: str, what: str) -> None:
    """QueryError (INVALID_ARGUMENT) unless `value` is a safe single path component."""
    problem = component_problem(value)
    if problem:
        raise QueryError(f"{field_path}: {what} {value[:80]!r} {problem}; it must be a plain name "
                         f"(no '/', '\\\\', leading '.', or control characters)",
                         [(field_path, f"invalid {what}: {problem}")])


@dataclass(eq=False)
class ServedVersion:
    """One open version of a snapshot and the requests that hold it."""

    snapshot: Snapshot | ShardedSnapshot
    loaded_at: float  # time.time() of the swap
    published_at: float | None  # mtime of the manifest: when the build finished
    refs: int = 0
    retired_at: float | None = None  # set when another version replaced it

    @property
    def version(self) -> str:
        return self.snapshot.version

    @property
    def shard_count(self) -> int | None:
        """The shards of a sharded build (None: an ordinary snapshot)."""
        return self.snapshot.shard_count if isinstance(self.snapshot, ShardedSnapshot) else None


@dataclass(eq=False)
class _Slot:
    """A snapshot name: its directory, current version and retired versions still served."""

    directory: Path
    current: ServedVersion
    retired: dict[str, ServedVersion] = field(default_factory=dict)  # oldest first


class RequestScope:
    """The versions one RPC resolved; released together when the RPC ends."""

    __slots__ = ("leases", "closed")

    def __init__(self) -> None:
        self.leases: list[tuple[SnapshotRegistry, str, ServedVersion]] = []
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        leases, self.leases = self.leases, []
        for registry, name, entry in leases:
            registry._release(name, entry)

    @property
    def versions(self) -> list[str]:
        """name@version of each version resolved (for logs)."""
        return [f"{name}@{entry.version}" for _, name, entry in self.leases]


# the request scope of the RPC running in this context (grpc runs each RPC in its own Context)
_SCOPE: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("segsrv_request_scope", default=None)


def _current_key(path: Path) -> tuple:
    """Identity of the CURRENT (or SHARDS) file: replacing it (even with the same text) changes the key."""
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)


class SnapshotRegistry:
    def __init__(self, root: str | Path, *, verify: str = "full", reload_verify: str = "full",
                 keep_versions: int = 0, load: bool = True,
                 prepare: Callable[[Snapshot], object] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SnapshotNotFoundError(f"snapshot root {str(self.root)!r} is not a directory")
        if keep_versions < 0:
            raise ValueError("keep_versions must be at least 0")
        self.verify = verify
        self.reload_verify = reload_verify
        self.keep_versions = int(keep_versions)
        self.prepare = prepare  # run on each opened version before it is served (e.g. warm caches)
        self._lock = threading.Lock()  # guards slots, refs, _snapshots (held briefly: never while opening)
        self._refresh_lock = threading.Lock()  # one refresh at a time (it opens outside _lock)
        self._slots: dict[str, _Slot] = {}
        self._snapshots: dict[str, Snapshot] = {}  # name -> current Snapshot; replaced, never mutated
        self._seen: dict[Path, tuple] = {}  # snapshot dir -> CURRENT key last acted on (loaded or refused)
        self._loaded_once = False
        self._listeners: list[Callable[[dict[str, Snapshot]], None]] = []
        self.loads: Counter = Counter()  # (name, "success" | "failure") -> count; name is the dir name
        self.last_error: dict[str, str] = {}  # directory name -> reason of the last refused version
        self.withdrawn: dict[str, str] = {}  # snapshot name -> why its current version was withdrawn
        if load:
            self.refresh()

    # -- loading ---------------------------------------------------------------

    def _snapshot_dirs(self) -> list[Path]:
        """ROOT itself when it is one snapshot (CURRENT) or one sharded snapshot (SHARDS), else each
        ROOT/NAME that is either, by name."""
        try:
            if (self.root / fmt.CURRENT).exists() or is_sharded(self.root):
                return [self.root]
            return sorted(p for p in self.root.iterdir()
                          if p.is_dir() and ((p / fmt.CURRENT).exists() or is_sharded(p)))
        except OSError as exc:
            log.error("cannot list snapshot root %s: %s", self.root, exc)
            return []

    def refresh(self) -> list[str]:
        """Open snapshots that are new or whose CURRENT was replaced; returns the names (re)loaded.

        The first call (at construction) verifies with `verify`, later calls with `reload_verify`
        (both "full" by default: every byte) before swapping a version in. Opening happens outside the lock
        requests take, so serving goes on meanwhile.
        """
        with self._refresh_lock:
            verify = self.reload_verify if self._loaded_once else self.verify
            self._loaded_once = True
            changed: list[str] = []
            for d in self._snapshot_dirs():
                name = self._refresh_one(d, verify)
                if name:
                    changed.append(name)
            if changed:
                self._notify()
            return changed

    def _refresh_one(self, d: Path, verify: str) -> str | None:
        sharded = is_sharded(d)
        current_file = d / (SHARDS if sharded else fmt.CURRENT)  # what names the version to serve
        try:
            key = _current_key(current_file)
        except OSError as exc:
            log.error("cannot read %s: %s", current_file, exc)
            return None
        if self._seen.get(d) == key:
            return None  # CURRENT unchanged since we last loaded or refused it
        try:
            version = sharded_version(read_shard_manifest(d)) if sharded else read_current(d)
        except (OSError, SnapshotError) as exc:
            reason = exc.message if isinstance(exc, SnapshotError) else str(exc)
            log.error("cannot read %s: %s", current_file, reason,
                      extra={"fields": {"event": "reload_refused", "snapshot": d.name, "reason": reason}})
            self._seen[d] = key  # not again until CURRENT is replaced
            self._count(d.name, "failure", reason)
            return None
        with self._lock:
            old = next((s for s in self._slots.values() if s.directory == d), None)
        if old is not None and old.current.version == version:
            self._seen[d] = key  # rewritten with the same version: nothing to do
            return None
        label = d.name if d != self.root else (old.current.snapshot.name if old else d.name)
        t0 = time.perf_counter()
        try:
            problem = component_problem(version)
            if problem:
                raise CorruptSnapshotError(f"{current_file} names version {version[:80]!r}, which {problem}")
            if sharded:  # opened whole from the SHARDS it reads: a newer one written meanwhile is a whole build too
                snap = open_sharded(d, verify=verify)
                version = snap.version
            else:
                snap = open_snapshot(d, version=version, verify=verify)
            if snap.version != version:
                raise CorruptSnapshotError(f"{snap.path}: its manifest says version {snap.version!r}, "
                                           f"but CURRENT names {version!r}")
            with self._lock:
                clash = self._slots.get(snap.name)
            if clash is not None and clash.directory != d:
                raise SnapshotError(f"two snapshots named {snap.name!r} ({clash.directory} and {d}); "
                                    f"keeping the first")
            if old is not None and snap.name != old.current.snapshot.name:
                raise CorruptSnapshotError(f"{snap.path}: holds snapshot {snap.name!r}, but {d} serves "
                                           f"{old.current.snapshot.name!r}")
        except SnapshotError as exc:
            log.error("refusing version %r of snapshot %s: %s%s", version[:80], d, exc.message,
                      f"; still serving version {old.current.version}" if old else "",
                      extra={"fields": {"event": "reload_refused", "snapshot": label, "version": version[:80],
                                        "reason": exc.message}})
            self._seen[d] = key
            self._count(label, "failure", exc.message)
            return None
        except Exception as exc:  # noqa: BLE001 - a bug or an OS error must not kill the reloader
            log.exception("refusing version %r of snapshot %s: unexpected error", version[:80], d)
            self._seen[d] = key
            self._count(label, "failure", repr(exc))
            return None
        if self.prepare is not None:
            t1 = time.perf_counter()
            try:
                info = self.prepare(snap)
            except Exception as exc:  # noqa: BLE001 - a failed warm-up only makes first requests slower
                log.warning("warming snapshot %s version %s failed (it is served anyway; its first requests "
                            "do the work): %r", snap.name, snap.version, exc,
                            extra={"fields": {"event": "warm_failed", "snapshot": snap.name, "version": snap.version}})
            else:
                if info:
                    log.info("warmed snapshot %s version %s: %s (%.0f ms)", snap.name, snap.version, info,
                             (time.perf_counter() - t1) * 1e3,
                             extra={"fields": {"event": "snapshot_warmed", "snapshot": snap.name,
                                               "version": snap.version}})
        if snap.name != d.name and d != self.root:
            log.warning("snapshot directory %s holds snapshot named %r; serving it as %r", d, snap.name, snap.name)
        try:  # a sharded build is published when its SHARDS is written
            published = (current_file if sharded else snap.path / fmt.MANIFEST).stat().st_mtime
        except OSError:
            published = None
        entry = ServedVersion(snap, loaded_at=time.time(), published_at=published)
        with self._lock:
            slot = self._slots.get(snap.name)
            if slot is None:
                self._slots[snap.name] = _Slot(d, entry)
                previous = None
            else:
                previous = slot.current
                previous.retired_at = time.time()
                slot.retired.pop(entry.version, None)
                slot.retired[previous.version] = previous
                slot.current = entry
                self._prune(snap.name, slot)
            self._snapshots = {n: s.current.snapshot for n, s in self._slots.items()}
            self.withdrawn.pop(snap.name, None)
        self._seen[d] = key
        self._count(snap.name, "success")
        took = (time.perf_counter() - t0) * 1e3
        shards = f"{entry.shard_count} shards, " if sharded else ""
        if previous is None:
            log.info("loaded snapshot %s version %s from %s (%s%s check, %.0f ms)", snap.name, snap.version,
                     snap.path, shards, verify, took,
                     extra={"fields": {"event": "snapshot_loaded", "snapshot": snap.name, "version": snap.version,
                                       **({"shards": entry.shard_count} if sharded else {})}})
        else:
            log.info("swapped snapshot %s to version %s (was %s; %sverified: %s, %.0f ms)", snap.name, snap.version,
                     previous.version, shards, verify, took,
                     extra={"fields": {"event": "snapshot_swapped", "snapshot": snap.name, "version": snap.version,
                                       "previous_version": previous.version,
                                       **({"shards": entry.shard_count} if sharded else {})}})
        return snap.name

    def scrub(self, threads: int | None = 1) -> list[str]:
        """Check every byte of every served version again; withdraw those whose files changed.

        Returns "name@version" of each version withdrawn. Runs outside the lock requests take."""
        with self._lock:
            served = [(name, entry) for name, slot in self._slots.items()
                      for entry in [*slot.retired.values(), slot.current]]
        withdrawn = []
        for name, entry in served:
            try:
                if isinstance(entry.snapshot, ShardedSnapshot):
                    entry.snapshot.verify("full", threads)  # every shard of the build
                else:
                    entry.snapshot.files.verify("full", threads)
            except SnapshotError as exc:
                self._withdraw(name, entry, exc.message)
                withdrawn.append(f"{name}@{entry.version}")
        if withdrawn:
            self._notify()
        return withdrawn

    def _withdraw(self, name: str, entry: ServedVersion, reason: str) -> None:
        log.error("withdrawing snapshot %s version %s: %s; its files changed after they were verified "
                  "(published files must never be modified); requests for it get DATA_LOSS until CURRENT "
                  "names a good version", name, entry.version, reason,
                  extra={"fields": {"event": "snapshot_withdrawn", "snapshot": name, "version": entry.version,
                                    "reason": reason}})
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                return
            if slot.current is entry:
                del self._slots[name]
                self.withdrawn[name] = (f"version {entry.version} of snapshot {name!r} was withdrawn: {reason}; "
                                        f"its files changed on disk after they were verified")
                self._snapshots = {n: s.current.snapshot for n, s in self._slots.items()}
                # the next CURRENT (even the same text in a new file) is loaded afresh
                self._seen.pop(slot.directory, None)
            else:
                slot.retired.pop(entry.version, None)
        self._count(name, "failure", reason)

    def _count(self, name: str, result: str, error: str | None = None) -> None:
        with self._lock:
            self.loads[(name, result)] += 1
            if error is None:
                self.last_error.pop(name, None)
            else:
                self.last_error[name] = error

    def load_counts(self) -> dict[tuple[str, str], int]:
        """{(name, "success" | "failure"): load attempts} (a copy)."""
        with self._lock:
            return dict(self.loads)

    def _prune(self, name: str, slot: _Slot) -> None:
        """Forget retired versions no request holds, beyond the `keep_versions` most recent (lock held)."""
        keep = set(list(slot.retired)[-self.keep_versions:]) if self.keep_versions else set()
        for version, entry in list(slot.retired.items()):
            if entry.refs == 0 and version not in keep:
                del slot.retired[version]
                log.info("released snapshot %s version %s (no request uses it)", name, version,
                         extra={"fields": {"event": "snapshot_released", "snapshot": name, "version": version}})

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
            snaps = self._snapshots
        for fn in listeners:
            fn(snaps)

    def add_listener(self, fn: Callable[[dict[str, Snapshot]], None]) -> None:
        """Call fn(snapshots) now and after every refresh that changed something (e.g. to update health)."""
        with self._lock:
            self._listeners.append(fn)
            snaps = self._snapshots
        fn(snaps)

    def close(self) -> None:
        """Forget every version (the server stopped); maps go with the last reference."""
        with self._lock:
            self._slots = {}
            self._snapshots = {}

    # -- references ------------------------------------------------------------

    @staticmethod
    def request_scope() -> RequestScope:
        """Open the scope of one RPC in the current context; close it (scope.close()) when the RPC ends."""
        scope = RequestScope()
        _SCOPE.set(scope)
        return scope

    def _acquire(self, name: str, entry: ServedVersion) -> None:
        scope = _SCOPE.get()
        if scope is None or scope.closed:
            return
        entry.refs += 1  # lock held by the caller
        scope.leases.append((self, name, entry))

    def _release(self, name: str, entry: ServedVersion) -> None:
        with self._lock:
            entry.refs -= 1
            slot = self._slots.get(name)
            if slot is not None and entry.refs == 0 and entry.retired_at is not None:
                self._prune(name, slot)

    # -- lookup ----------------------------------------------------------------

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        return self._snapshots  # an immutable-by-convention dict, replaced on every swap

    def names(self) -> list[str]:
        return sorted(self._snapshots)

    def served_versions(self, name: str) -> list[str]:
        """Versions of `name` a request may pin: the current one last, retired ones before it."""
        with self._lock:
            slot = self._slots.get(name)
            return [] if slot is None else [*slot.retired, slot.current.version]

    def describe(self) -> list[dict]:
        """Per served version: name, version, state (current / retired), refs, loaded_at, published_at,
        shards (a sharded build's shard count; None: an ordinary snapshot)."""
        out = []
        with self._lock:
            for name, slot in sorted(self._slots.items()):
                for state, entry in [*(("retired", e) for e in slot.retired.values()), ("current", slot.current)]:
                    out.append({"name": name, "version": entry.version, "state": state, "refs": entry.refs,
                                "loaded_at": entry.loaded_at, "published_at": entry.published_at,
                                "shards": entry.shard_count})
        return out

    def resolve(self, name: str = "", version: str = "") -> Snapshot:
        """The snapshot a request asks for (a reference is held until its request scope closes)."""
        if name:
            check_component(name, "snapshot.name", "snapshot name")
        if version:
            check_component(version, "snapshot.version", "snapshot version")
        with self._lock:
            slots = self._slots
            if not slots and len(self.withdrawn) == 1 and not name:
                raise SnapshotWithdrawnError(next(iter(self.withdrawn.values())))
            if not slots:
                raise NoSnapshotServedError(
                    f"no snapshot is loaded yet from {str(self.root)!r}; the server is not ready")
            if not name:
                if len(slots) == 1:
                    name, slot = next(iter(slots.items()))
                else:
                    raise QueryError(
                        f"the server serves several snapshots {sorted(slots)}; name one in snapshot.name",
                        [("snapshot.name", "required when the server serves several snapshots")],
                    )
            else:
                slot = slots.get(name)
                if slot is None and name in self.withdrawn:
                    raise SnapshotWithdrawnError(self.withdrawn[name])
                if slot is None:
                    raise SnapshotNotFoundError(
                        f"no snapshot {name!r} is served{suggest(name, slots)}; served: {sorted(slots)}",
                        [("snapshot.name", f"unknown snapshot {name!r}")],
                    )
            entry = slot.current
            if version and version != entry.version:
                entry = slot.retired.get(version)
                if entry is None:
                    served = [*slot.retired, slot.current.version]
                    raise VersionNotServedError(
                        f"version {version} of {name} is not served; serving {slot.current.version}"
                        + (f" (also still served: {', '.join(served[:-1])})" if len(served) > 1 else ""),
                        [("snapshot.version", f"version {version!r} is not served; serving "
                                              f"{slot.current.version!r}")],
                    )
            self._acquire(name, entry)
            return entry.snapshot
