"""`segsrv build` over a snapshot that has a segment catalog: the new data, then the same catalog on it.

A build writes a new data version (segsrv.snapshot.builder). When the version it replaces (ROOT/NAME's
CURRENT) has a segment catalog, the catalog is carried over as ``segments apply`` would carry it: the
definitions are validated against the new data, each segment's propensity model is fitted for it and
stored (segsrv.engine.catalog_models), and the catalog version, hard-linked to the data version, is
published; only then does CURRENT move, so a server never serves the new data without its catalog and
the first Assign after a rebuild fits nothing. A segment that no longer resolves fails the build
(naming it; the new data version is withdrawn, CURRENT is unchanged) unless ``drop_unresolved`` leaves
it out with a warning. ``carry_catalog=False`` builds the data version alone. docs/segments.md
"The catalog across rebuilds".
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SegsrvError, SpecError
from ..snapshot import format as fmt
from ..snapshot.bands import DEFAULT_TOLERANCE
from ..snapshot.builder import FitModels, Progress, build_snapshot, default_progress
from ..snapshot.location import list_versions, read_current
from ..snapshot.publish import discard, point_current, withdraw_version
from ..snapshot.spec import Spec, load_spec
from .catalog import apply_segments


def current_catalog(snapshot_dir: Path) -> tuple[str | None, dict]:
    """(the CURRENT version of ROOT/NAME, its segment catalog); (None, {}) when there is no snapshot yet."""
    if not (snapshot_dir / fmt.CURRENT).exists():
        return None, {}
    try:
        version = read_current(snapshot_dir)
        manifest = json.loads((snapshot_dir / version / fmt.MANIFEST).read_text(encoding="utf-8"))
        return version, dict(manifest.get("segments") or {})
    except (OSError, ValueError, SegsrvError) as exc:
        why = exc.message if isinstance(exc, SegsrvError) else str(exc)
        raise SpecError(f"cannot read the segment catalog of {snapshot_dir}'s CURRENT version to carry it over: "
                        f"{why}; build with --no-catalog to build without it") from None


def build_version(spec_path: str | Path | Spec, out_root: str | Path, *, version: str | None = None,
                  progress: Progress | None = None, threads: int | None = None,
                  fit_models: FitModels | None = None, band_tolerance: float = DEFAULT_TOLERANCE,
                  carry_catalog: bool = True, drop_unresolved: bool = False,
                  fit_propensities: bool = True, map_shards=map) -> Path:
    """Build the spec under OUT_ROOT/NAME, carrying the CURRENT version's catalog over (module docstring).

    `version` names the version CURRENT ends at (with a carried catalog: the catalog version; the data
    version it shares its files with keeps its content-hash name). `fit_propensities=False` carries the
    catalog without stored propensity models (as `segments apply --no-propensity-models`). Returns the
    published version directory."""
    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    snapshot_dir = Path(out_root) / spec.name
    base, catalog = current_catalog(snapshot_dir) if carry_catalog else (None, {})
    build = dict(progress=progress, threads=threads, fit_models=fit_models, band_tolerance=band_tolerance)
    if not catalog:
        return build_snapshot(spec, out_root, version=version, **build)
    existed = set(list_versions(snapshot_dir))
    data_dir = build_snapshot(spec, out_root, set_current=False, **build)
    say = progress or default_progress
    say(f"carrying the catalog of version {base} ({len(catalog)} segments) over to {spec.name}/{data_dir.name}")
    try:
        vdir, _ = apply_segments(data_dir, catalog, version=version, progress=say, fit_propensities=fit_propensities,
                                 drop_unresolved=drop_unresolved)
    except BaseException as exc:
        if data_dir.name not in existed:  # published by this build, never served: withdraw it
            discard(withdraw_version(snapshot_dir, data_dir.name))
        if isinstance(exc, SpecError) and any(v.field.startswith("segments.") for v in exc.violations):
            raise SpecError(
                f"the segment catalog of {spec.name}/{base} does not carry over to the new data; nothing was "
                f"published, CURRENT still names {base}. {exc.message}\nRebuild with --drop-unresolved-segments "
                f"to publish without these segments (each dropped with a warning), or with --no-catalog and then "
                f"`segsrv segments apply` a corrected catalog.", exc.violations) from None
        raise
    point_current(snapshot_dir, vdir.name)  # also when the catalog left nothing to publish on the data
    return vdir


def build_sharded_version(spec_path: str | Path | Spec, out_root: str | Path, count: int, *,
                          progress: Progress | None = None, threads: int | None = None,
                          fit_models: FitModels | None = None, carry_catalog: bool = True,
                          drop_unresolved: bool = False, fit_propensities: bool = True, map_shards=map) -> Path:
    """`segsrv build SPEC --shards N` carrying the segment catalog of the build SHARDS names over, as
    `build_version` carries an unsharded one: once every shard is built (or reused), the catalog is applied
    to the new shards (segsrv.engine.sharded.catalog.publish_sharded_catalog: validated, its models fitted
    from the merged counts, a catalog version of each shard published) before any CURRENT moves and SHARDS
    is written; a catalog that does not carry over fails the build (SHARDS unchanged) unless
    `drop_unresolved`. Without `carry_catalog` the shards end without a catalog (a reused shard that had one
    gets a version without it). map_shards: the executor of the shard builds (shardbuild.MapShards; Ray's
    in segsrv/ray/build.py). Returns the SHARDS path."""
    from ..snapshot.shardbuild import build_shards, previous_catalog
    from .sharded.catalog import publish_sharded_catalog
    from .sharded.open import open_versions

    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    say = progress or default_progress
    catalog = previous_catalog(Path(out_root) / spec.name) if carry_catalog else {}

    def finish(snapshot_dir: Path, entries: list[dict]) -> list[str]:
        # read from the manifests: opening the shards to ask would map and check every byte of every shard
        # in this process (its peak memory the whole data's, not a shard's)
        if not catalog and not any(_manifest(snapshot_dir / e["dir"] / e["version"]).get("segments")
                                   for e in entries):
            return [e["version"] for e in entries]
        # the shards this build just wrote or reused: their sizes are checked, not every byte again (above)
        sharded = open_versions(snapshot_dir, spec.name, [e["version"] for e in entries], entity=None,
                                verify="sizes")
        if catalog:
            say(f"carrying the catalog ({len(catalog)} segments) over to the {len(entries)} shards")
        try:
            versions, _ = publish_sharded_catalog(sharded, catalog, say=say, fit_propensities=fit_propensities,
                                                  drop_unresolved=drop_unresolved)
        except SpecError as exc:
            if any(v.field.startswith("segments.") for v in exc.violations):
                raise SpecError(
                    f"the segment catalog of {spec.name} does not carry over to the new shards; SHARDS not written, "
                    f"it still names the previous build. {exc.message}\nRebuild with --drop-unresolved-segments to "
                    f"publish without these segments (each dropped with a warning), or with --no-catalog and then "
                    f"`segsrv segments apply` a corrected catalog.", exc.violations) from None
            raise
        return versions

    return build_shards(spec, out_root, count, progress=progress, threads=threads, fit_models=fit_models,
                        finish=finish, map_shards=map_shards)


def _manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / fmt.MANIFEST).read_text("utf-8"))
