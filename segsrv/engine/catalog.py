"""The segment catalog: named segments kept inside a snapshot, and publishing a new catalog.

A catalog is a mapping ``{name: entry}``; an entry (as stored in the manifest's
``segments``) is::

    where        the condition, in the JSON `where` form (docs/query.md); may refer to
                 other segments with {"$segment": "name"}
    universe     the universe the condition is over (may be omitted when the snapshot
                 has exactly one universe; stored resolved)
    description  free text ("" by default)
    priority     integer, higher first when choosing a customer's primary segment (0)
    tags         list of strings ([])

A catalog file is TOML with one ``[segments.NAME]`` table per segment and an optional
top-level ``universe = "..."`` (the default for entries without one), or the same as JSON.

``apply_segments(ROOT/NAME, catalog)`` validates every condition against the current
version's fields and values (unknown fields, values, segment references and reference
cycles are all reported together, each naming its segment) and publishes a new version
whose data files are hard links to the current version's files: nothing big is copied
or rebuilt, and the new version is an ordinary immutable version (a running server picks
it up like any other; segsrv.snapshot.publish writes it). Applying replaces the whole catalog (it is declarative: the file
is the catalog). Before publishing, the default Assign propensity model of every segment is fitted (or, unchanged
since the base version, reused by a hard link) and stored in the new version as data files
(segsrv.engine.catalog_models; docs/assign.md). See docs/segments.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import tomllib
from pathlib import Path
from typing import Callable

from ..errors import SegsrvError, SpecError
from ..ops.conditions import segment_refs
from ..snapshot import format as fmt
from ..snapshot.location import resolve_version_dir
from ..snapshot.publish import discard, entries_of, link_files, new_staging_dir, point_current, publish_version
from ..snapshot.reader import Snapshot, catalog_model_files, open_snapshot
from . import catalog_models as cm
from .conditions import Evaluator, parse_where

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
ENTRY_KEYS = {"where", "universe", "description", "priority", "tags"}
MAX_SEGMENTS = 10_000


def _fail(msg: str, violations: list[tuple[str, str]]):
    raise SpecError(msg, violations)


def normalize_catalog(raw, where: str = "segments") -> dict[str, dict]:
    """Check the shape of a catalog mapping and fill the defaults (no snapshot needed)."""
    if not isinstance(raw, dict):
        _fail(f"{where}: expected a table of segments, got {type(raw).__name__}", [(where, "expected a table")])
    if len(raw) > MAX_SEGMENTS:
        _fail(f"{where}: {len(raw)} segments, more than the limit {MAX_SEGMENTS}", [(where, "too many segments")])
    out: dict[str, dict] = {}
    problems: list[tuple[str, str]] = []
    for name, entry in raw.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            problems.append((at, "a segment name is 1-128 characters of letters, digits, '_', '.', '-' "
                                 "and does not start with '.' or '-'"))
            continue
        if not isinstance(entry, dict):
            problems.append((at, f"expected a table, got {type(entry).__name__}"))
            continue
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            problems.append((at, f"unknown keys {unknown}; allowed: {sorted(ENTRY_KEYS)}"))
            continue
        cond = entry.get("where")
        if isinstance(cond, str):  # JSON text is accepted too
            try:
                cond = json.loads(cond)
            except json.JSONDecodeError as exc:
                problems.append((f"{at}.where", f"not valid JSON: {exc}"))
                continue
        if not isinstance(cond, dict) or not cond:
            problems.append((f"{at}.where", "required: a non-empty condition in the JSON where form"))
            continue
        prio = entry.get("priority", 0)
        if isinstance(prio, bool) or not isinstance(prio, int) or not -(2 ** 31) <= prio < 2 ** 31:
            problems.append((f"{at}.priority", f"expected a 32-bit integer, got {prio!r}"))
            continue
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            problems.append((f"{at}.tags", f"expected a list of non-empty strings, got {tags!r}"))
            continue
        desc = entry.get("description", "")
        if not isinstance(desc, str):
            problems.append((f"{at}.description", f"expected a string, got {desc!r}"))
            continue
        universe = entry.get("universe")
        if universe is not None and (not isinstance(universe, str) or not universe):
            problems.append((f"{at}.universe", f"expected a universe name, got {universe!r}"))
            continue
        try:
            parse_where(cond, f"{at}.where")
        except SegsrvError as exc:
            problems.extend(exc.violations or [(f"{at}.where", exc.message)])
            continue
        out[name] = {"where": cond, "universe": universe, "description": desc, "priority": int(prio),
                     "tags": list(tags)}
    if problems:
        _report(problems)
    return out


def _report(problems: list[tuple[str, str]]):
    lines = "\n".join(f"  {path}: {why}" for path, why in problems)
    _fail(f"segment catalog rejected ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}",
          problems)


def load_catalog_file(path: str | Path) -> dict[str, dict]:
    """Read a catalog file: TOML with [segments.NAME] tables (or JSON {"segments": {...}})."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"{p}: cannot read the catalog file: {exc.strerror or exc}", [(str(p), "unreadable")])
    try:
        doc = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        _fail(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {exc}", [(str(p), "syntax")])
    if not isinstance(doc, dict) or set(doc) - {"segments", "universe"}:
        extra = sorted(set(doc) - {"segments", "universe"}) if isinstance(doc, dict) else []
        _fail(f"{p}: expected a [segments] table and optionally a default universe (found {extra})",
              [(str(p), "unexpected top-level keys")])
    default_universe = doc.get("universe")
    if default_universe is not None and (not isinstance(default_universe, str) or not default_universe):
        _fail(f"{p}: universe: expected a universe name, got {default_universe!r}", [("universe", "not a name")])
    segments = doc.get("segments", {})
    if default_universe and isinstance(segments, dict):
        for entry in segments.values():
            if isinstance(entry, dict):
                entry.setdefault("universe", default_universe)
    return normalize_catalog(segments, "segments")


def validate_catalog(snapshot: Snapshot, catalog: dict[str, dict]) -> dict[str, dict]:
    """Resolve universes and evaluate every segment against the snapshot with this catalog.

    Returns the catalog with universes filled in; raises SpecError listing every problem
    (unknown universe, field, value or segment, reference cycles, cross-universe references)."""
    resolved, problems = _check_catalog(snapshot, catalog)
    if problems:
        _report([p for name in problems for p in problems[name]])
    return resolved


def resolvable_catalog(snapshot: Snapshot, catalog: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """The segments of `catalog` that resolve on the snapshot (universes filled in), and the others by
    name with the reason; a segment referring to a dropped one is dropped too."""
    kept = copy.deepcopy(catalog)
    dropped: dict[str, str] = {}
    while True:
        resolved, problems = _check_catalog(snapshot, kept)
        if not problems:
            return resolved, dropped
        for name, found in problems.items():
            refs = sorted(segment_refs(parse_where(kept[name]["where"])) & (set(problems) | set(dropped)))
            # a segment failing through a reference says so rather than repeat the referent's problem
            dropped[name] = (f"it refers to {', '.join(map(repr, refs))}, dropped" if refs
                             else "; ".join(why for _, why in found))
        for name in problems:
            del kept[name]


def _check_catalog(snapshot: Snapshot, catalog: dict[str, dict]) -> tuple[dict, dict[str, list[tuple[str, str]]]]:
    """(the catalog with universes filled in, segment name -> its problems as (path, why))."""
    resolved = copy.deepcopy(catalog)
    problems: dict[str, list[tuple[str, str]]] = {}
    names = sorted(snapshot.universes)
    for name, entry in resolved.items():
        if entry.get("universe") is None:
            if len(names) != 1:
                problems[name] = [(f"segments.{name}.universe",
                                   f"required: the snapshot has {len(names)} universes {names}")]
                continue
            entry["universe"] = names[0]
        elif entry["universe"] not in snapshot.universes:
            problems[name] = [(f"segments.{name}.universe",
                               f"unknown universe {entry['universe']!r}; known: {names}")]
    if problems:
        return resolved, problems
    probe = CatalogView(snapshot, resolved)
    for name, entry in sorted(resolved.items()):
        universe = snapshot.universe(entry["universe"])
        try:
            Evaluator(probe, universe).evaluate(parse_where(entry["where"], f"segments.{name}.where"))
        except SegsrvError as exc:
            problems[name] = [(f"segments.{name}", exc.message)]
    return resolved, problems


class CatalogView:
    """The snapshot as the evaluator sees it, with a candidate catalog in place of its own."""

    def __init__(self, snapshot: Snapshot, catalog: dict):
        self._snapshot = snapshot
        self.segments = catalog

    def __getattr__(self, name):
        return getattr(self._snapshot, name)


def _compiled(view: "CatalogView") -> dict:
    """universe -> the CompiledCatalog of the view's catalog (not cached: the view must outlive it)."""
    from .assign import CompiledCatalog

    return {name: CompiledCatalog(view, view.universe(name)) for name in sorted({e["universe"] for e in view.segments.values()})}


def catalog_version(base_version: str, catalog: dict, propensity_models: bool = False) -> str:
    doc = {"base": base_version, "segments": catalog}
    if propensity_models:  # a version with stored models is another version than one without, and one
        # with the models of another definition (catalog_models.CV_MARK: the pairs tried since Dec 2026)
        doc["propensity_models"] = cm.CV_MARK
    payload = json.dumps(doc, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def read_catalog(catalog: dict | str | Path) -> dict[str, dict]:
    """A catalog given as a mapping or as the path of a catalog file, checked and normalised."""
    return load_catalog_file(catalog) if isinstance(catalog, (str, Path)) else normalize_catalog(catalog)


def resolve_entries(snap, entries: dict, drop_unresolved: bool, say: Callable[[str], None]) -> dict[str, dict]:
    """validate_catalog, or with drop_unresolved resolvable_catalog with a warning per dropped segment."""
    if not drop_unresolved:
        return validate_catalog(snap, entries)
    resolved, dropped = resolvable_catalog(snap, entries)
    for name, why in sorted(dropped.items()):
        say(f"warning: segment {name!r} dropped: it does not resolve on {snap.name}/{snap.version}: {why}")
    return resolved


def apply_segments(location: str | Path, catalog: dict | str | Path, *, version: str | None = None,
                   progress: Callable[[str], None] | None = None,
                   fit_propensities: bool = True, drop_unresolved: bool = False) -> tuple[Path, bool]:
    """Validate `catalog` against ROOT/NAME's current version and publish it as a new version.

    `catalog` is a mapping or the path of a catalog file. Returns (version directory, changed);
    when the catalog equals the current one nothing is published and changed is False.
    fit_propensities: fit (or reuse, when unchanged) and store the default propensity model of every
    segment (segsrv.engine.catalog_models); False stores none (Assign then fits them on demand).
    drop_unresolved: publish the segments that resolve, leaving out (with a warning through `progress`) those
    that do not, instead of refusing the catalog (a rebuild carrying a catalog over, segsrv.engine.rebuild)."""
    say = progress or (lambda msg: None)
    entries = read_catalog(catalog)
    vdir = resolve_version_dir(location)
    snap = open_snapshot(vdir)  # every byte: a damaged base must not be linked into a new version
    resolved = resolve_entries(snap, entries, drop_unresolved, say)
    fit = bool(fit_propensities and resolved)
    # the same catalog is "unchanged" unless its models are to be stored and the current version lacks
    # them: none stored, or stored by an older segsrv under another definition (another content key)
    same = resolved == (snap.segments or {})
    if same and fit:
        view = CatalogView(snap, resolved)  # held while its compiled catalogs are in use
        same = all(c.stored_default() for c in _compiled(view).values())
    if same:
        say(f"catalog unchanged: {snap.name}/{snap.version} already has these {len(resolved)} segments")
        return vdir, False
    manifest, new_version = catalog_manifest(vdir, resolved, fit, version)

    def fill(staging: Path) -> tuple[dict, list]:
        t0 = time.perf_counter()
        view = CatalogView(snap, resolved)  # held: the compiled catalogs refer to it weakly
        section, written = cm.fit_catalog_models(_compiled(view), staging, snap, say)
        say(f"propensity models of {len(resolved)} segments stored ({time.perf_counter() - t0:.1f} s)")
        return section, sorted(written)

    n_bytes = sum(int(meta["bytes"]) for meta in manifest["files"].values())
    final, published = publish_catalog_version(vdir, manifest, new_version, fill if fit else None)
    point_current(vdir.parent, new_version)
    if published:
        say(f"published {snap.name}/{new_version}: {len(resolved)} segments; {len(manifest['files'])} data files "
            f"({n_bytes / 1e6:,.1f} MB) hard-linked from {vdir.name}, nothing copied")
    else:
        say(f"version {new_version} already published; CURRENT points at it")
    return final, True


def catalog_manifest(vdir: Path, resolved: dict, fit: bool, version: str | None = None,
                     models_of: str | None = None) -> tuple[dict, str]:
    """(the manifest of the version that gives the version `vdir` the catalog `resolved`, without propensity
    models yet, and its version name: `version`, or a hash of the data version and the catalog, and with
    models (`fit`) of `models_of`, what they are fitted on when that is more than this version's data: a
    sharded build's shards)."""
    manifest = json.loads((vdir / fmt.MANIFEST).read_text(encoding="utf-8"))
    # the version of the data files, through any number of catalog changes: the same data and
    # catalog always give the same version name
    data_version = manifest.get("data_version", manifest["version"])
    base = data_version if not (fit and models_of) else f"{data_version} with models of {models_of}"
    new_version = version or catalog_version(base, resolved, fit)
    if not new_version or "/" in new_version or new_version.startswith(".") or new_version == fmt.CURRENT:
        _fail(f"version {new_version!r} is not a valid directory name", [("version", "invalid")])
    manifest.update(version=new_version, segments=resolved, data_version=data_version)
    # the data files stay; the base's propensity models are replaced by the new catalog's
    old_models = {rel for _, _, _, rel in catalog_model_files(manifest)}
    manifest.pop(cm.SECTION, None)
    manifest["files"] = {rel: meta for rel, meta in manifest["files"].items() if rel not in old_models}
    return manifest, new_version


def publish_catalog_version(vdir: Path, manifest: dict, new_version: str,
                            fill: Callable[[Path], tuple[dict, list]] | None) -> tuple[Path, bool]:
    """Publish `manifest` (catalog_manifest's) as ROOT/NAME/NEW_VERSION beside `vdir`, its data files hard-linked
    from `vdir` and its propensity models written into the staging directory by fill(staging) -> (the
    manifest's catalog_models section, the files written); CURRENT is not moved. -> (the version directory,
    whether this call published it: False when the identical version exists already)."""
    snapshot_dir = vdir.parent
    final = snapshot_dir / new_version
    if final.exists():
        # a published version is immutable: only the identical catalog may reuse its name (its stored
        # propensity models are the catalog's, over the same data)
        there = json.loads((final / fmt.MANIFEST).read_text(encoding="utf-8"))
        mine = {k: v for k, v in manifest.items() if k != "files"}
        theirs = {k: v for k, v in there.items() if k not in ("files", cm.SECTION)}
        if mine != theirs or not set(manifest["files"]) <= set(there.get("files", {})):
            _fail(f"version {new_version!r} of {snapshot_dir.name!r} exists with different content; "
                  "choose another version", [("version", "exists")])
        return final, False
    tmp = new_staging_dir(snapshot_dir, "segments")
    try:
        link_files(vdir, tmp, manifest["files"])
        if fill is not None:
            section, written = fill(tmp)
            manifest[cm.SECTION] = section
            manifest["files"].update(entries_of(tmp, written))
        publish_version(tmp, snapshot_dir, new_version, fmt.dumps_manifest(manifest))
    except OSError as exc:
        discard(tmp)
        raise SpecError(f"cannot publish {snapshot_dir.name}/{new_version}: {exc}", [("location", str(exc))]) from exc
    except BaseException:
        discard(tmp)
        raise
    return final, True
