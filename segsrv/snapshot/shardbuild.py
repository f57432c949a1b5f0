"""`segsrv build SPEC --shards N`: the shared feature dictionary, then each shard's snapshot, then SHARDS.

The layout, the routing rule and the manifest are specified in segsrv/snapshot/shards.py; the memory and
freshness argument is in docs/scale.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import duckdb

from .. import __version__
from ..errors import BuildError, CorruptSnapshotError
from . import format as fmt
from .builder import Builder, FitModels, Progress, ShardRows, Vocabulary, build_snapshot, default_progress
from .publish import point_current
from .shards import (HASH_NAME, SHARDS_FORMAT, SHARDS_FORMAT_VERSION, check_shard_count, dictionary_sha256,
                     name_version, partition_plan, read_shard_manifest, shard_dir_name, write_shard_manifest)
from .spec import Spec, load_spec


def plan_vocabulary(spec: Spec, progress: Progress, threads: int | None = None) -> tuple[Vocabulary, dict[str, int]]:
    """Every feature column's values and band edges over the whole data, and each table's row count. Tables
    are loaded one at a time (peak memory: the largest table in DuckDB), unless a sql table reads others:
    then all stay loaded."""
    builder = Builder(spec, progress, threads)
    if any(t.sql is not None for t in spec.tables.values()):
        builder.load()
        vocabulary = {k: v for t in builder.spec.tables.values() for k, v in builder.column_vocabulary(t).items()}
        return vocabulary, dict(builder.n_rows)
    vocabulary: Vocabulary = {}
    for t in spec.tables.values():
        t = builder.load_table(t)
        vocabulary.update(builder.column_vocabulary(t))
        builder.drop_table(t.name)
    return vocabulary, dict(builder.n_rows)


def _vocabulary_sha256(vocabulary: Vocabulary) -> str:
    text = json.dumps({f"{t}.{c}": v for (t, c), v in vocabulary.items()}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _previous_shards(snapshot_dir: Path, progress: Progress) -> list[dict]:
    """The shard entries of the SHARDS manifest this build replaces ([] when there is none or it is unusable)."""
    if not (snapshot_dir / "SHARDS").exists():
        return []
    try:
        return read_shard_manifest(snapshot_dir)["shards"]
    except CorruptSnapshotError as exc:
        progress(f"previous shard manifest not reused, every shard is rebuilt: {exc}")
        return []


def previous_catalog(snapshot_dir: Path) -> dict:
    """The segment catalog of the sharded build SHARDS names (shard 0's; every shard has the same), {} when
    there is none (no build yet, an unusable SHARDS, or no catalog)."""
    previous = _previous_shards(snapshot_dir, lambda m: None)
    if not previous:
        return {}
    manifest = json.loads((snapshot_dir / previous[0]["dir"] / previous[0]["version"] / fmt.MANIFEST).read_text("utf-8"))
    return dict(manifest.get("segments") or {})


# map_shards(fn, indices) -> fn(index) for each index, in that order: the executor of the shard builds
# (`map` in this process; segsrv/ray/build.py runs each as a Ray task)
MapShards = Callable[[Callable[[int], dict], range], Iterable[dict]]


def build_shard(spec: Spec, snapshot_dir: Path, count: int, vocabulary: Vocabulary, vocab_sha: str,
                previous: list[dict], threads: int | None, fit_models: FitModels | None, progress: Progress,
                index: int) -> dict:
    """Build (or reuse) shard INDEX of COUNT under SNAPSHOT_DIR without pointing its CURRENT; returns its
    SHARDS entry, its rows per partitioned table, its dictionary's digest and whether it was reused."""
    name = shard_dir_name(index)
    outcome: dict = {}

    def reuse(content: str, rows: dict[str, int]) -> Path | None:
        outcome["rows"] = rows
        # the code that builds a shard is part of its input: an upgrade rebuilds every shard
        fingerprint = hashlib.sha256(f"{spec.fingerprint}\n{count}\n{vocab_sha}\n{content}\nsegsrv "
                                     f"{__version__}\nduckdb {duckdb.__version__}".encode("utf-8")).hexdigest()
        outcome["input_sha256"] = fingerprint
        old = previous[index] if len(previous) == count else None
        outcome["reused"] = old is not None and old.get("input_sha256") == fingerprint
        return snapshot_dir / name / old["version"] if outcome["reused"] else None

    vdir = build_snapshot(replace(spec, name=name), snapshot_dir, progress=lambda m: progress(f"{name}: {m}"),
                          threads=threads, fit_models=fit_models, vocabulary=vocabulary,
                          shard=ShardRows(partition_plan(spec), index, count), reuse=reuse, set_current=False)
    manifest_bytes = (vdir / fmt.MANIFEST).read_bytes()
    return {"entry": {"index": index, "dir": name, "version": vdir.name,
                      "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                      "input_sha256": outcome["input_sha256"]},
            "rows": outcome["rows"], "dictionary_sha256": dictionary_sha256(json.loads(manifest_bytes)),
            "reused": outcome["reused"]}


def build_shards(spec_path: str | Path | Spec, out_root: str | Path, count: int, *, progress: Progress | None = None,
                 threads: int | None = None, fit_models: FitModels | None = None,
                 finish: Callable[[Path, list[dict]], list[str]] | None = None, map_shards: MapShards = map) -> Path:
    """Build COUNT shard snapshots of the spec under OUT_ROOT/NAME/shard-III and write OUT_ROOT/NAME/SHARDS
    last; returns the SHARDS path. A shard whose input fingerprint matches the previous build's is reused.
    The dictionary pass and SHARDS are this process's; the shards are built by `map_shards` (default: one
    after the other here), which must return their results in shard order.
    finish(OUT_ROOT/NAME, entries) -> the version each shard ends at: called once every shard is built,
    before any CURRENT moves (segsrv.engine.rebuild carries the segment catalog over there: a version of
    each shard with the catalog, hard-linked to the one built)."""
    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    count = check_shard_count(count)
    plan = partition_plan(spec)
    say = progress or default_progress
    say(f"sharding {spec.name} by {plan.entity}.{plan.key} into {count} shards; partitioned: "
        f"{', '.join([plan.entity, *plan.parents])}; replicated: "
        f"{', '.join(t for t in spec.tables if not plan.partitioned(t)) or 'none'}")
    vocabulary, total_rows = plan_vocabulary(spec, lambda m: say(f"dictionary: {m}"), threads)
    snapshot_dir = Path(out_root) / spec.name
    previous = _previous_shards(snapshot_dir, say)
    entries, dictionaries = [], set()
    sharded_rows = dict.fromkeys(plan.parents, 0)  # every entity row hashes to a shard; linked rows may not
    # absolute: a Ray task may run in another directory
    one_shard = partial(build_shard, spec, snapshot_dir.resolve(), count, vocabulary, _vocabulary_sha256(vocabulary),
                        previous, threads, fit_models, say)
    for result in map_shards(one_shard, range(count)):
        entry = result["entry"]
        for table in sharded_rows:
            sharded_rows[table] += result["rows"][table]
        dictionaries.add(result["dictionary_sha256"])
        say(f"shard {entry['index'] + 1}/{count} ({entry['dir']}): "
            f"{'unchanged, reused' if result['reused'] else 'built'} version {entry['version']}")
        entries.append(entry)
    for table, n in sharded_rows.items():
        if n != total_rows[table]:
            column, parent = plan.parents[table]
            raise BuildError(
                f"table {table!r}: {total_rows[table] - n:,} of its {total_rows[table]:,} rows are in no shard: their "
                f"column {column!r} names no key of {parent!r} when compared as text (a link to a missing row, or "
                f"a float link column such as 3.0 for key 3; docs/scale.md); SHARDS not written")
    if len(dictionaries) != 1:
        raise BuildError(f"the {count} shards of {spec.name!r} do not share one feature dictionary; SHARDS not written")
    if finish is not None:
        for entry, version in zip(entries, finish(snapshot_dir, entries)):
            if version != entry["version"]:
                name_version(snapshot_dir, entry, version)
    for entry in entries:  # only once every shard is built: a failed build leaves the shards' CURRENT as it was
        point_current(snapshot_dir / entry["dir"], entry["version"])
    path = write_shard_manifest(snapshot_dir, {
        "format": SHARDS_FORMAT, "format_version": SHARDS_FORMAT_VERSION, "name": spec.name,
        "entity": plan.entity, "key": plan.key, "hash": HASH_NAME, "shard_count": count,
        "dictionary_sha256": dictionaries.pop(), "shards": entries,
    })
    say(f"wrote {path} ({count} shards)")
    return path
