"""The segment catalog over shards: its segments' sizes and propensity models from the merged counts, and
``segments apply`` on a sharded ROOT/NAME.

Every shard holds the same catalog (``apply_sharded_segments`` publishes it into each shard, then SHARDS).
``MergedCatalog`` is the unsharded engine's ``CompiledCatalog`` (segsrv.engine.assign) over the shards:
its programs are compiled on shard 0 (the shared dictionary), and every count it rests on is summed over
the shards holding the universe:

* a segment's size is the sum of the shards' sizes; its member digest (part of a stored model's content
  key) is the digest of the shards' digests in shard order;
* the factorized model and the privacy floor's cells: the members with each feature (or pair), summed;
* the logistic membership model (the default): fitted as Predict's logistic models are over shards
  (``patterns.fit_over_shards``, rows from ``member_rows``): classes member / non-member over every row
  of the universe; each shard sends its distinct evidence patterns, each one's first id and its rows per
  fold and class; the merge runs the unsharded fit (``logistic.fit_patterns``) on their union, in the
  unsharded order: the same model, bit for bit. No process holds the rows, except when the patterns
  are more than PATTERN_MAX_SHARE of them (the unsharded fit then runs on the rows, and so does the merge).

A merged model is stored in every shard (the same file), under its merged content key: the data version
of the shards (``merged_data_version``), the universe's rows over the shards and the merged member digest.
A shard opened on its own does not find it under its own key and fits its own model on demand (for its own
rows), as a snapshot without stored models does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import SpecError
from ...ops.conditions import SegmentRef
from ...snapshot import format as fmt
from ...snapshot.publish import discard, point_current, withdraw_version
from ...snapshot.reader import Snapshot
from ...snapshot.shards import SHARDS, name_version, read_shard_manifest, write_shard_manifest
from .. import catalog_models as cm
from ..assign import CompiledCatalog, compiled_catalog
from ..catalog import CatalogView, catalog_manifest, publish_catalog_version, read_catalog, resolve_entries
from ..conditions import Evaluator
from .open import MergedUniverse, ShardedSnapshot, open_sharded
from .patterns import fit_over_shards


# --- one shard -----------------------------------------------------------------------------------------------


def _shard_catalog(shard: Snapshot, universe: str, catalog: dict | None) -> tuple[object, CompiledCatalog]:
    """(what must stay referenced while the compiled catalog is used, the compiled catalog) of the shard's
    own catalog (cached with the shard) or of a candidate `catalog` (``segments apply``)."""
    if catalog is None:
        return shard, compiled_catalog(shard, shard.universe(universe))
    view = CatalogView(shard, catalog)
    return view, CompiledCatalog(view, view.universe(universe))


def segment_sizes_part(shard: Snapshot, universe: str, catalog: dict | None) -> tuple[str, dict[str, tuple[int, str]]]:
    """(the shard's data version, {segment: (its members in the shard, digest of its member bitset)})."""
    _, cat = _shard_catalog(shard, universe, catalog)
    return cm.data_version(shard), {s.name: (s.size, s.digest) for s in cat.segments}


def member_feature_counts_part(shard: Snapshot, universe: str, catalog: dict | None, segment: int) -> np.ndarray:
    """int64[n_features]: the shard's members of segment number `segment` with each feature."""
    _, cat = _shard_catalog(shard, universe, catalog)
    return cat.member_feature_counts(segment)


def member_pair_counts_part(shard: Snapshot, universe: str, catalog: dict | None, segment: int,
                            pairs: np.ndarray) -> np.ndarray:
    """int64[len(pairs)]: the shard's members of segment number `segment` with both features of each pair."""
    _, cat = _shard_catalog(shard, universe, catalog)
    return cat.member_pair_counts(segment, pairs)


def member_rows(shard: Snapshot, universe: str, catalog: dict | None, segment: str):
    """The membership fit's rows in this shard (segsrv.engine.sharded.patterns' `rows_of`): (universe, every
    row, 1 for a member of the segment named `segment` and 0 for the others, 2 classes). The segment is
    evaluated alone (the catalog is not compiled for one segment)."""
    u = shard.universe(universe)
    bits = Evaluator(shard if catalog is None else CatalogView(shard, catalog), u).evaluate(SegmentRef(segment))
    member = np.unpackbits(bits.view(np.uint8), bitorder="little")[: u.n_rows].astype(np.int64)
    return u, np.arange(u.n_rows, dtype=np.int64), member, 2


# --- the merge -----------------------------------------------------------------------------------------------


def merged_data_version(versions: list[str]) -> str:
    """The data version of a sharded build: 16 hex digits of the SHA-256 of its shards' data versions."""
    return "shards-" + hashlib.sha256("\n".join(versions).encode("utf-8")).hexdigest()[:16]


class MergedCatalog(CompiledCatalog):
    """A CompiledCatalog of a universe of a sharded snapshot: programs from shard 0, counts summed over
    the shards (module docstring). `catalog`: a candidate catalog (``segments apply``) instead of the
    shards' own."""

    def __init__(self, sharded: ShardedSnapshot, merged: MergedUniverse, catalog: dict | None = None):
        self.sharded = sharded
        self.catalog = catalog
        self.shard_ids = merged.shards
        self.unsharded_features = merged.unsharded_features()
        parts = sharded.map(segment_sizes_part, merged.name, catalog, shards=merged.shards)
        names = sorted(parts[0][1]) if parts else []
        sizes = {n: (sum(p[1][n][0] for p in parts), cm.digest(np.frombuffer(
            "".join(p[1][n][1] for p in parts).encode("ascii"), dtype=np.uint8))) for n in names}
        self.schema = sharded.schema if catalog is None else CatalogView(sharded.schema, catalog)  # held
        data_version = merged_data_version([p[0] for p in parts])
        super().__init__(self.schema, merged.schema, (merged.n_rows, merged.feature_count, sizes, data_version))

    def evidence_mask(self, i: int) -> np.ndarray:
        """The unsharded evidence mask, of the features the unsharded build holds (the same model columns)."""
        return super().evidence_mask(i) & self.unsharded_features

    def member_bits(self, i: int) -> np.ndarray:
        raise TypeError("a sharded catalog's members are in its shards: no one bitset holds them (the counts "
                        "methods sum the shards')")

    def _sum(self, fn, *args) -> np.ndarray:
        parts = self.sharded.map(fn, self.universe.name, self.catalog, *args, shards=self.shard_ids)
        return np.sum(parts, axis=0).astype(np.int64)

    def member_feature_counts(self, i: int) -> np.ndarray:
        return self._sum(member_feature_counts_part, i)

    def member_pair_counts(self, i: int, pairs: np.ndarray) -> np.ndarray:
        if len(pairs) == 0:
            return np.zeros(0, np.int64)
        return self._sum(member_pair_counts_part, i, np.asarray(pairs, dtype=np.int64))

    def membership_fit(self, i: int, l2: float | None) -> tuple:
        """catalog_models.fit_membership over the shards' rows: the unsharded fit from the shards' evidence
        patterns and their members and non-members per fold (segsrv.engine.sharded.patterns)."""
        def fit(fids: np.ndarray):
            return fit_over_shards(self.sharded, self.shard_ids, member_rows,
                                   (self.universe.name, self.catalog, self.segments[i].name), fids,
                                   np.arange(2), l2)

        return cm.membership_model(self.segments[i].size, self.n_rows, self.universe.n_features,
                                   self.evidence_mask(i), l2, fit)


_CACHE: "weakref.WeakKeyDictionary[ShardedSnapshot, dict[str, MergedCatalog]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()


def merged_catalog(sharded: ShardedSnapshot, universe: str | None) -> MergedCatalog:
    """The merged catalog of the shards' own catalog in a universe (made once per open sharded build)."""
    merged = sharded.universe(universe)
    with _BUILD_LOCK:
        with _CACHE_LOCK:
            hit = _CACHE.get(sharded, {}).get(merged.name)
        if hit is None:
            hit = MergedCatalog(sharded, merged)
            with _CACHE_LOCK:
                _CACHE.setdefault(sharded, {})[merged.name] = hit
    return hit


# --- segments apply ------------------------------------------------------------------------------------------


def apply_sharded_segments(location: str | Path, catalog: dict | str | Path, *, version: str | None = None,
                           progress: Callable[[str], None] | None = None, fit_propensities: bool = True,
                           drop_unresolved: bool = False) -> tuple[Path, bool]:
    """``apply_segments`` on a sharded ROOT/NAME (`publish_sharded_catalog`), then every shard's CURRENT
    pointed at its new version and SHARDS rewritten to name them (last, atomically). A failure withdraws
    the versions this call published: SHARDS, every CURRENT and every answer stay as they were.
    -> (the SHARDS path, changed)."""
    say = progress or (lambda msg: None)
    location = Path(location)
    sharded = open_sharded(location)  # every shard verified at the version SHARDS names
    versions, published = publish_sharded_catalog(sharded, read_catalog(catalog), version=version, say=say,
                                                  fit_propensities=fit_propensities, drop_unresolved=drop_unresolved)
    if not published and versions == [Path(s.path).name for s in sharded.shards]:
        return location / SHARDS, False
    with withdrawn_on_failure(published, f"point the shards of {location} at the new catalog"):
        write_applied(location, versions)
    say(f"wrote {location / SHARDS}: the {len(versions)} shards of {sharded.name} with the catalog")
    return location / SHARDS, True


@contextmanager
def withdrawn_on_failure(published: list[Path], what: str):
    """On a failure within, remove the versions this call published (`published`, nothing names them yet)
    and report an OSError as the SpecError "cannot WHAT"."""
    try:
        yield
    except BaseException as exc:
        for final in published:
            discard(withdraw_version(final.parent, final.name))
        written = isinstance(exc, SpecError) and any(v.field == "location" for v in exc.violations)
        if isinstance(exc, OSError) or written:  # a file system's refusal, not the catalog's problem
            why = exc.message if written else str(exc)
            raise SpecError(f"cannot {what}: {why}; SHARDS and every shard's CURRENT are unchanged",
                            [("location", why)]) from exc
        raise


def publish_sharded_catalog(sharded: ShardedSnapshot, entries: dict, *, version: str | None = None,
                            say: Callable[[str], None] = lambda m: None, fit_propensities: bool = True,
                            drop_unresolved: bool = False) -> tuple[list[str], list[Path]]:
    """Validate the catalog `entries` (normalised) against the shared dictionary (shard 0's; every shard has
    it), fit each segment's default propensity model from the merged counts (or reuse the stored one when its
    merged content key is unchanged) and publish the catalog and the models into every shard of `sharded` as a
    new version of the shard (CURRENT and SHARDS untouched). -> (the version each shard has the catalog at,
    the versions published by this call); on failure the versions it published are withdrawn."""
    schema = sharded.schema
    resolved = resolve_entries(schema, entries, drop_unresolved, say)
    fit = bool(fit_propensities and resolved)
    compiled = {u: MergedCatalog(sharded, sharded.universe(u), resolved)
                for u in sorted({e["universe"] for e in resolved.values()})}
    shard_dirs = [Path(s.path) for s in sharded.shards]
    same = all(s.segments == resolved for s in sharded.shards)
    if same and fit:
        same = all(c.stored_default() for c in compiled.values())
    if same:
        say(f"catalog unchanged: the {sharded.shard_count} shards of {sharded.name} already have these "
            f"{len(resolved)} segments")
        return [d.name for d in shard_dirs], []
    models_of = next(iter(compiled.values())).data_version if compiled else None
    published: list[Path] = []  # withdrawn on failure: nothing names them yet
    finals: list[Path] = []
    t0 = time.perf_counter()
    with withdrawn_on_failure(published, f"publish the catalog into the shards of {sharded.path}"):
        for index, vdir in enumerate(shard_dirs):
            manifest, new_version = catalog_manifest(vdir, resolved, fit, version, models_of)
            def fit_models(staging: Path) -> tuple[dict, list]:
                section, written = cm.fit_catalog_models(compiled, staging, schema, say)
                return section, sorted(written)

            # shard 0 fits the models; the other shards link its files
            fill = None if not fit else fit_models if index == 0 else _linked_models(finals[0])
            final, new = publish_catalog_version(vdir, manifest, new_version, fill)
            if new:
                published.append(final)
            finals.append(final)
            say(f"shard {index + 1}/{len(shard_dirs)} ({vdir.parent.name}): "
                f"{'published' if new else 'already published:'} version {new_version}")
    if fit:
        say(f"propensity models of {len(resolved)} segments stored in every shard ({time.perf_counter() - t0:.1f} s)")
    return [f.name for f in finals], published


def _linked_models(first: Path) -> Callable[[Path], tuple[dict, list]]:
    """fill() of a shard's version: the propensity models shard 0's new version stores, hard-linked (the same
    merged models, the same bytes in every shard)."""
    def fill(staging: Path) -> tuple[dict, list]:
        section = json.loads((first / fmt.MANIFEST).read_text(encoding="utf-8")).get(cm.SECTION, {})
        written = sorted({e["file"] for segs in section.values() for e in segs.values()})
        for rel in written:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(first / rel, staging / rel)
        return section, written

    return fill


def write_applied(location: Path, versions: list[str]) -> Path:
    """Point each shard's CURRENT at its new version, then rewrite SHARDS to name them (last, atomically).
    A failure puts back the CURRENTs already moved, so readers see the old build, whole."""
    manifest = read_shard_manifest(location)
    old = [e["version"] for e in manifest["shards"]]
    moved = []
    try:
        for entry, version in zip(manifest["shards"], versions):
            point_current(location / entry["dir"], version)
            moved.append(entry)
            name_version(location, entry, version)
        return write_shard_manifest(location, manifest)
    except BaseException:
        for entry, version in zip(moved, old):
            try:
                point_current(location / entry["dir"], version)
            except OSError:
                pass
        raise
