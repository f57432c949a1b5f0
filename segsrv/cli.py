"""Command line: segsrv demo-data | build | info | verify | query | discover | export | segments | assign | serve | diff
| report | prune.

Every command prints errors as one line `segsrv: error: ...` on stderr and
exits 1 for bad input or a failed build, 2 for bad usage. Every command and flag:
README.md ("Command line") and the docs/ page of each command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from .errors import SegsrvError


def _load_query(text: str, flag: str = "--json") -> dict:
    """QUERY is inline JSON, a path to a JSON file, or - for standard input."""
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip().startswith("{"):
        raw = text
    else:
        path = Path(text)
        if not path.exists():
            raise SegsrvError(f"{flag}: {text!r} is neither inline JSON (starting with '{{') nor an existing file")
        raw = path.read_text()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SegsrvError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SegsrvError(f"{flag}: the query must be a JSON object")
    return obj


def _print_json(obj, stream=None) -> None:
    stream = stream or sys.stdout
    json.dump(obj, stream, indent=2, ensure_ascii=False)
    stream.write("\n")


def _output_format(args, stream=None) -> str:
    """--format table|json, else table on a terminal and json when piped (what scripts read)."""
    fmt = {"text": "table"}.get(args.format, args.format)  # discover's earlier --format text
    if fmt in ("table", "json"):
        return fmt
    return "table" if (stream or sys.stdout).isatty() else "json"


def _format_argument(p: argparse.ArgumentParser, extra: tuple[str, ...] = ()) -> None:
    p.add_argument("--format", choices=["table", "json", *extra],
                   help="table: aligned columns (default on a terminal); json: the JSON answer (default when "
                        "piped, what scripts read)")


def _print_answer(args, answer, render) -> None:
    """The JSON answer as JSON or, rendered by `render` (segsrv.tables), as a table."""
    if _output_format(args) == "json":
        _print_json(answer)
    else:
        sys.stdout.write(render(answer))


def cmd_demo_data(args) -> int:
    from .demo.generate import generate_demo

    t0 = time.perf_counter()
    spec = generate_demo(
        args.out, n_customers=args.customers, seed=args.seed,
        progress=None if args.quiet else (lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True)),
    )
    if not args.quiet:
        print(f"[demo] wrote {spec.parent} in {time.perf_counter() - t0:.1f} s; build it with: "
              f"segsrv build {spec} --out ROOT", file=sys.stderr)
    print(spec)
    return 0


def cmd_build(args) -> int:
    from .engine.predict.models import fit_declared_models
    from .engine.rebuild import build_version

    progress = (lambda m: None) if args.quiet else None
    if args.shards is not None:  # docs/scale.md
        from .engine.rebuild import build_sharded_version

        given = [flag for flag, on in [("--version", args.version), ("--band-tolerance", args.band_tolerance is not None)]
                 if on]
        if given:
            raise SegsrvError(f"{given[0]}: not with --shards (a shard's version is its content hash; shards fix their "
                              f"band edges over the whole data: docs/scale.md)")
        executor = {}
        if args.ray is not None:  # docs/scale.md, "On a Ray cluster": one Ray task per shard
            from .ray.build import ray_map_shards

            if args.threads is not None and args.threads < 1:
                raise SegsrvError(f"--threads: expected at least 1, got {args.threads}")
            args.threads = args.threads or 1  # the CPUs each shard's task reserves: its DuckDB threads
            executor["map_shards"] = ray_map_shards(args.ray, args.threads)
        print(build_sharded_version(args.spec, args.out, args.shards, progress=progress, threads=args.threads,
                                    fit_models=fit_declared_models, carry_catalog=not args.no_catalog,
                                    drop_unresolved=args.drop_unresolved_segments,
                                    fit_propensities=not args.no_propensity_models, **executor))
        return 0
    if args.ray is not None:
        raise SegsrvError("--ray: only with --shards (a single snapshot is built in this process)")
    tolerance = {} if args.band_tolerance is None else {"band_tolerance": args.band_tolerance}
    path = build_version(args.spec, args.out, version=args.version, progress=progress, threads=args.threads,
                         fit_models=fit_declared_models, **tolerance,
                         carry_catalog=not args.no_catalog, drop_unresolved=args.drop_unresolved_segments,
                         fit_propensities=not args.no_propensity_models)
    print(path)
    return 0


def cmd_prune(args) -> int:
    from .snapshot.prune import prune_versions

    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[prune] {msg}", file=sys.stderr, flush=True))
    result = prune_versions(args.snapshot, args.keep, dry_run=args.dry_run, progress=say)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{result.snapshot_dir.name}: {verb} {len(result.removed)} version(s), kept {len(result.kept)} "
          f"(CURRENT {result.current})")
    return 0


def cmd_info(args) -> int:
    from .engine.sharded import MergedUniverseInfo, is_sharded, open_sharded
    from .snapshot.reader import open_snapshot

    sharded = is_sharded(args.snapshot)
    if sharded:  # ROOT/NAME holding SHARDS: the shards' rows and value counts summed (docs/scale.md)
        if args.version:
            raise SegsrvError(f"--version: not with a sharded snapshot ({args.snapshot}): its SHARDS manifest "
                              f"names each shard's version")
        snap = open_sharded(args.snapshot)
        universes = [MergedUniverseInfo.of(snap.universe(name)) for name in snap.schema.universes]
    else:
        snap = open_snapshot(args.snapshot, version=args.version)
        universes = list(snap.universes.values())
    info = {
        "name": snap.name,
        "version": snap.version,
        "path": str(snap.path),
        "description": snap.description,
        "universes": {},
    }
    if sharded:
        info["shards"] = snap.shard_count
    for u in universes:
        if args.universe and u.name != args.universe:
            continue
        fields = {}
        for f in u.fields.values():
            entry = {"kind": f.kind, "semantics": f.semantics, "n_values": len(f.values)}
            if args.values:
                entry["values"] = dict(zip(f.values, (int(c) for c in f.counts)))
            if f.edges is not None:
                entry["edges"] = f.edges
            fields[f.name] = entry
        entry = {"table": u.table, "key": u.key, "n_rows": u.n_rows, "n_features": u.n_features}
        if not sharded:  # dense or sparse is decided per shard: a storage matter, not summed
            entry.update(n_dense=len(u.dense_features), n_sparse=len(u.sparse_features))
        info["universes"][u.name] = dict(entry, fields=fields)
    _print_json(info)
    return 0


def cmd_verify(args) -> int:
    from .snapshot.reader import open_snapshot

    t0 = time.perf_counter()
    snap = open_snapshot(args.snapshot, version=args.version, verify="strong")
    n_files = len(snap.manifest["files"])
    size = sum(f["bytes"] for f in snap.manifest["files"].values())
    fast = sum(1 for f in snap.manifest["files"].values() if f.get("xxh3"))
    print(f"ok: {snap.name}/{snap.version}: {n_files} files, {size / 1e6:,.1f} MB, checksums match "
          f"(sha256 of every file, xxh3 of {fast}; {time.perf_counter() - t0:.2f} s)")
    return 0


def _write_scores(answer: dict, csv_path: str | None, fmt: str) -> None:
    """`query score`: id,score rows to CSV_PATH, else JSON lines (json) or a ranked table (table) on stdout;
    the summary on stderr (one JSON line, or a sentence)."""
    import csv

    from . import tables

    scores = answer.pop("scores")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "score"])
            w.writerows([s["id"], s["score"]] for s in scores)
    elif fmt == "json":
        for s in scores:
            sys.stdout.write(json.dumps(s) + "\n")
    else:
        sys.stdout.write(tables.scores(scores))
    print(json.dumps(answer) if fmt == "json" else tables.score_summary(answer).rstrip(), file=sys.stderr)


def _say_progress(command: str):
    """What a ScoreSegment / ranked export says before a long fit, on stderr as it comes."""
    return lambda line: print(f"segsrv {command}: {line}", file=sys.stderr, flush=True)


QUERY_KINDS = ("relate", "count", "predict", "score", "evaluate", "profile", "discover")


@contextlib.contextmanager
def _backend(args, snapshot_name: str | None = None):
    """What answers a command: the in-process service over --local, or the server at --addr through
    the Python client. Both have `call(query)` -> result (segsrv.service / segsrv.client)."""
    if args.addr:
        from .client import SegsrvClient

        if args.timeout is not None and not args.timeout > 0:
            raise SegsrvError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
        with SegsrvClient(args.addr, timeout=args.timeout, snapshot=snapshot_name or "",
                          version=args.version or "") as client:
            yield client
        return
    if snapshot_name:
        raise SegsrvError("--snapshot names a snapshot of a server (--addr); with --local give ROOT/NAME")
    from .service import local_service

    yield local_service(args.local, version=args.version)


def cmd_query(args) -> int:
    if args.csv and args.kind != "score":
        raise SegsrvError("--csv is for `segsrv query score`")
    from . import tables
    from .ops import QUERY_TYPES, render
    from .ops.discover import render_text

    query = QUERY_TYPES[args.kind].from_json(_load_query(args.json))
    with _backend(args, args.snapshot) as backend:
        result = backend.call(query, progress=_say_progress("query score"))
    answer, fmt = render(query, result), _output_format(args)
    if args.kind == "score":
        _write_scores(answer, args.csv, fmt)
    elif fmt == "json":
        _print_json(answer)
    elif args.kind == "discover":
        sys.stdout.write(render_text(result))
    else:
        sys.stdout.write(getattr(tables, args.kind)(answer))  # the renderer of each kind bears its name
    return 0


EXPORT_PROGRESS_MIN = 100_000  # exports with at least this many ids report progress on stderr
EXPORT_MAX_CHUNK = 100_000


def _export_format(out: str, fmt: str | None) -> str:
    """--ids-format, else from OUT's extension (.csv; .jsonl / .ndjson / .json); stdout: csv."""
    if fmt:
        return fmt
    if out == "-":
        return "csv"
    ext = Path(out).suffix.lower()
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise SegsrvError(f"--out {out!r}: cannot tell the format from the extension {ext or '(none)'!r}; "
                      "give --ids-format csv or --ids-format jsonl")


def _write_export(out: str, fmt: str, expected: int, ranked: bool, chunks, quiet: bool) -> int:
    """Write `chunks` ((ids, scores or None) lists) as CSV (header id[,score]) or JSON lines to OUT
    (- = stdout); a file appears only when complete (written to a temporary name, then renamed).
    Progress on stderr for large exports. Returns the rows written."""
    import csv

    last = time.perf_counter()
    progress = not quiet and expected >= EXPORT_PROGRESS_MIN
    if out == "-":
        path = tmp = None
        f = sys.stdout
    else:
        path = Path(out)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            f = open(tmp, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise SegsrvError(f"--out: cannot write {out!r}: {exc.strerror or exc}") from None
    written = 0
    try:
        if fmt == "csv":
            w = csv.writer(f)
            w.writerow(["id", "score"] if ranked else ["id"])
        for ids, scores in chunks:
            if scores is not None and not isinstance(scores, list):  # in-process: a numpy array
                scores = scores.tolist()
            if fmt == "csv":
                w.writerows(zip(ids, scores) if ranked else ([i] for i in ids))
            elif ranked:
                f.write("".join(f'{{"id": {json.dumps(i)}, "score": {json.dumps(s)}}}\n'
                                for i, s in zip(ids, scores)))
            else:
                f.write("".join(f'{{"id": {json.dumps(i)}}}\n' for i in ids))
            written += len(ids)
            if progress and time.perf_counter() - last >= 1.0:
                last = time.perf_counter()
                print(f"segsrv export: {written:,} / {expected:,} rows written", file=sys.stderr, flush=True)
        f.flush()
    except BaseException:
        if tmp is not None:
            f.close()
            tmp.unlink(missing_ok=True)
        raise
    if tmp is not None:
        f.close()
        os.replace(tmp, path)
    return written


def _ids_format(args) -> str | None:
    """--ids-format; `--format csv|jsonl` is its earlier spelling, still accepted."""
    if args.format in ("csv", "jsonl"):
        if args.ids_format and args.ids_format != args.format:
            raise SegsrvError(f"--format {args.format} (the ids' format) disagrees with --ids-format "
                              f"{args.ids_format}; give --ids-format alone")
        return args.format
    return args.ids_format


def cmd_export(args) -> int:
    from . import tables
    from .ops.export import DEFAULT_CHUNK_SIZE, ExportQuery

    t0 = time.perf_counter()  # the summary's time includes the ranking (a model fit) before the first id
    query = ExportQuery.from_json(_load_query(args.json))
    fmt = _export_format(args.out, _ids_format(args))
    if args.chunk_size is not None and not 1 <= args.chunk_size <= EXPORT_MAX_CHUNK:
        raise SegsrvError(f"--chunk-size: expected 1..{EXPORT_MAX_CHUNK:,}, got {args.chunk_size}")
    query.chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    with _backend(args, args.snapshot) as backend:
        export = backend.call(query, progress=None if args.quiet else _say_progress("export"))
        total = export.total
        expected = min(total, query.top_k) if query.top_k else total
        written = _write_export(args.out, fmt, expected, export.ranked, export.chunks(), args.quiet)
    if not args.quiet:
        summary = {"out": "-" if args.out == "-" else str(Path(args.out)), "format": fmt, "rows": written,
                   "matching": total, "ranked": bool(export.ranked), "elapsed_s": round(time.perf_counter() - t0, 3)}
        # with --out - the ids are on stdout: the summary goes to stderr
        stream = sys.stderr if args.out == "-" else sys.stdout
        if _output_format(args, stream) == "json":
            _print_json(summary, stream)
        else:
            stream.write("segsrv export: " + tables.export_summary(summary))
    return 0


def _discover_query(args):
    """--json (if any) with the flags laid over it."""
    from .ops.discover import DiscoverQuery, parse_weight

    obj = _load_query(args.json) if args.json else {}
    for key, value in (("from", args.universe), ("target", args.target), ("direction", args.direction),
                       ("k", args.k), ("limit", args.limit), ("max_length", args.max_length),
                       ("min_support", args.min_support), ("min_lift", args.min_lift),
                       ("max_overlap", args.max_overlap), ("describe", args.describe)):
        if value is not None:
            obj[key] = value
    if args.fields:
        obj["fields"] = args.fields
    if args.within:
        obj["within"] = _load_query(args.within)
    if args.weight:
        weights = dict(obj.get("field_weights") or {})
        for text in args.weight:
            pattern, weight = parse_weight(text)
            weights[pattern] = weight
        obj["field_weights"] = weights
    return DiscoverQuery.from_json(obj)


def cmd_discover(args) -> int:
    from .ops.discover import render_text

    query = _discover_query(args)
    if args.personas_only and not query.k:
        raise SegsrvError("--personas-only saves the personas of a segmentation: give --k too")
    if not args.quiet:
        what = f"target {args.target}" if query.target is not None else "co-occurrence"
        print(f"[discover] searching ({what}, conjunctions of up to {query.max_length} features)...",
              file=sys.stderr, flush=True)
    with _backend(args, args.snapshot_name) as backend:
        result = backend.call(query)
    _print_answer(args, result.to_json(), lambda answer: render_text(result))
    if args.save:
        text = result.to_catalog(personas_only=args.personas_only)
        out = Path(args.save)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
        count = len(result.segmentation.personas) if args.personas_only and result.segmentation else len(result.segments)
        target = args.local or "ROOT/NAME"
        print(f"[discover] saved {count} segments to {out}; publish them with: segsrv segments apply "
              f"{target} {out}", file=sys.stderr)
    return 0


def cmd_segments_apply(args) -> int:
    from .engine.catalog import apply_segments
    from .engine.sharded import apply_sharded_segments, is_sharded

    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[segments] {msg}", file=sys.stderr, flush=True))
    if is_sharded(args.snapshot):  # every shard gets the catalog, then SHARDS names them (docs/scale.md)
        path, _ = apply_sharded_segments(args.snapshot, args.catalog, version=args.version, progress=say,
                                         fit_propensities=not args.no_propensity_models)
        print(path)
        return 0
    vdir, changed = apply_segments(args.snapshot, args.catalog, version=args.version, progress=say,
                                   fit_propensities=not args.no_propensity_models)
    print(vdir.name)
    return 0


def cmd_segments_list(args) -> int:
    from . import tables
    from .ops import SegmentsQuery

    with _backend(args, args.snapshot_name) as backend:
        result = backend.call(SegmentsQuery(universe=args.universe or None))
    _print_answer(args, result.to_json(), tables.segments)
    return 0


def _read_ids(args) -> list[str]:
    ids = list(args.id or [])
    if args.ids_file:
        try:
            with open(args.ids_file, encoding="utf-8") if args.ids_file != "-" else sys.stdin as fh:
                ids.extend(line.strip() for line in fh if line.strip())
        except OSError as exc:
            raise SegsrvError(f"--ids-file: cannot read {args.ids_file!r}: {exc.strerror or exc}") from None
    return ids


def cmd_assign(args) -> int:
    from . import tables
    from .ops import AssignQuery

    ids = _read_ids(args)
    obj = {"ids": ids, "include_propensities": args.propensities}
    if args.features:
        obj["features"] = _load_query(args.features)
    if not ids and "features" not in obj:
        raise SegsrvError("give customer ids (--id / --ids-file) or --features '{\"field\": \"value\", ...}'")
    if args.universe:
        obj["from"] = args.universe
    if args.propensity_method is not None:
        obj["propensity_method"] = args.propensity_method
    if args.propensity_l2 is not None:
        obj["propensity_l2"] = args.propensity_l2
    query = AssignQuery.from_json(obj)
    with _backend(args, args.snapshot_name) as backend:
        result = backend.call(query)
    _print_answer(args, result.to_json(), tables.assign)
    return 0


def default_workers() -> int:
    """`segsrv serve`'s default --workers: the CPUs this process may run on (one Python process serves
    about one core: the GIL)."""
    from .cpus import usable_cpus

    return usable_cpus()


def cmd_serve(args) -> int:
    # no grpc / numpy import here: with --workers N they must load in the forked workers only
    from .server.options import MIB, Keepalive

    if args.workers is None:
        args.workers = default_workers()

    _check_flags((
        ("--workers", args.workers, args.workers >= 1, "at least 1"),
        ("--max-workers", args.max_workers, args.max_workers >= 1, "at least 1"),
        ("--max-concurrent-rpcs", args.max_concurrent_rpcs, args.max_concurrent_rpcs >= 1, "at least 1"),
        ("--max-message-mb", args.max_message_mb, args.max_message_mb >= 1 / 1024, "at least 1/1024 (1 KiB)"),
        ("--grace", args.grace, args.grace >= 0, "0 or more seconds"),
        ("--reload-interval", args.reload_interval, args.reload_interval >= 0, "0 (never) or more seconds"),
        ("--verify-interval", args.verify_interval, args.verify_interval >= 0, "0 (never) or more seconds"),
        ("--keep-versions", args.keep_versions, args.keep_versions >= 0, "0 or more"),
        ("--privacy-k", args.privacy_k, args.privacy_k >= 0, "0 or more (0 or 1: no floor)"),
        ("--max-discover-candidates", args.max_discover_candidates, args.max_discover_candidates >= 2, "at least 2"),
        ("--metrics-port", args.metrics_port, args.metrics_port is None or 0 <= args.metrics_port < 65536,
         "a port number"),
        ("--max-connection-age", args.max_connection_age, args.max_connection_age >= 0, "0 (never) or more seconds"),
        ("--max-concurrent-streams", args.max_concurrent_streams, args.max_concurrent_streams >= 1, "at least 1"),
        ("--stream-write-timeout", args.stream_write_timeout, args.stream_write_timeout >= 0,
         "0 (never) or more seconds"),
        ("--probe-interval", args.probe_interval, args.probe_interval > 0, "more than 0 seconds"),
        ("--probe-timeout", args.probe_timeout, args.probe_timeout > 0, "more than 0 seconds"),
        ("--probe-failures", args.probe_failures, args.probe_failures >= 1, "at least 1"),
    ))
    kwargs = dict(
        grace_seconds=args.grace, max_workers=args.max_workers, max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_receive_message_bytes=int(args.max_message_mb * MIB), kernel_threads=args.kernel_threads,
        reload_interval=None if args.reload_interval == 0 else args.reload_interval,
        verify_interval=None if args.verify_interval == 0 else args.verify_interval,
        keep_versions=args.keep_versions, warm=not args.no_warm, privacy_k=args.privacy_k,
        max_discover_candidates=args.max_discover_candidates, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, tokens=args.tokens, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, access_log=not args.no_access_log,
        max_concurrent_streams=args.max_concurrent_streams,
        stream_write_timeout=args.stream_write_timeout or None,
        keepalive=Keepalive(time=args.keepalive_time, timeout=args.keepalive_timeout,
                            max_connection_age=args.max_connection_age or None,
                            max_connection_age_grace=args.grace if args.max_connection_age else None),
    )
    kwargs["keepalive"].check()
    if args.workers > 1:
        from .server.workers import run_workers

        return run_workers(args.workers, snapshot_root=args.snapshots, host=args.host, port=args.port,
                           log_format=args.log_format, log_level=args.log_level, probe_interval=args.probe_interval,
                           probe_timeout=args.probe_timeout, probe_failures=args.probe_failures, **kwargs)
    from .server.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    from .server.app import serve

    return serve(args.snapshots, args.host, args.port, **kwargs)


def _check_flags(checks) -> None:
    """(flag, value, ok, what is expected): the first flag not ok is an error naming it."""
    for flag, value, ok, expected in checks:
        if not ok:
            raise SegsrvError(f"{flag}: expected {expected}, got {value}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_serve_ray(args) -> int:
    """docs/scale.md, "On a Ray cluster"."""
    from .ray import connect

    _check_flags((
        ("--shards-per-replica", args.shards_per_replica, args.shards_per_replica >= 1, "at least 1"),
        ("--replicas", args.replicas, args.replicas >= 1, "at least 1"),
        ("--privacy-k", args.privacy_k, args.privacy_k >= 0, "0 or more (0 or 1: no floor)"),
        ("--max-discover-candidates", args.max_discover_candidates, args.max_discover_candidates >= 2, "at least 2"),
        ("--reload-interval", args.reload_interval, args.reload_interval >= 0, "0 (never) or more seconds"),
        ("--replica-cpus", args.replica_cpus, args.replica_cpus >= 0, "0 or more"),
        ("--request-timeout", args.request_timeout, args.request_timeout is None or args.request_timeout > 0,
         "more than 0 seconds"),
    ))
    ray = connect(args.address)
    from .ray.serve import deploy, sharded_locations

    served = sharded_locations(args.snapshots)  # fails before anything is deployed when there is nothing to serve
    deploy(args.snapshots, shards_per_replica=args.shards_per_replica, replicas=args.replicas, port=args.port,
           service_options={"privacy_k": args.privacy_k, "max_discover_candidates": args.max_discover_candidates},
           tokens=args.tokens, reload_interval=args.reload_interval, replica_cpus=args.replica_cpus,
           request_timeout=args.request_timeout)
    print(f"[serve-ray] serving {', '.join(sorted(served))} over gRPC on port {args.port} (Ray Serve application "
          f"'segsrv'); Ctrl-C to stop", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C: the application removed, a local Ray stopped
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.delete("segsrv")
        ray.shutdown()
        print("[serve-ray] stopped", file=sys.stderr)
    return 0


def cmd_diff(args) -> int:
    from .engine.diff import diff_versions, open_versions
    from .ops.diff import write_id_lists

    snap_a, snap_b = open_versions(args.snapshot, args.version_a, args.version_b)
    result = diff_versions(snap_a, snap_b, segments=args.segment, top_features=args.top,
                           min_support=args.min_support, fields=args.field,
                           include_condition_fields=args.include_condition_fields, keep_ids=bool(args.ids_out))
    if args.ids_out:
        paths = write_id_lists(result, args.ids_out)
        print(f"[diff] wrote {len(paths)} id lists to {args.ids_out}", file=sys.stderr)
    if args.json:
        args.format = "json"
    _print_answer(args, result.to_json(), lambda answer: result.report())
    return 0


def cmd_report(args) -> int:
    from .report.gather import ReportOptions, gather_report
    from .report.render import write_report

    if bool(args.snapshot) == bool(args.addr):
        raise SegsrvError("report: give the snapshot as ROOT[/NAME] or a server as --addr HOST:PORT (one of them)")
    args.local = args.snapshot
    limits = {key: getattr(args, key) for key in ("max_segments", "max_fields", "values_per_field")
              if getattr(args, key) is not None}  # unset: the defaults of segsrv.report.gather
    options = ReportOptions(
        universe=args.universe, segments=args.segments, declared_models=not args.no_declared_models,
        evaluate=[_load_query(text, "--evaluate") for text in args.evaluate or ()], compare=args.compare, title=args.title,
        discover=_load_query(args.discover, "--discover") if args.discover else {}, **limits)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"[report] {msg}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    with _backend(args, args.snapshot_name) as backend:
        data = gather_report(backend, options, location=args.snapshot, say=say)
    say("rendering...")
    out = write_report(data, args.out)
    say(f"wrote {out} ({len(data['segments'])} segments, {len(data['models'])} models"
        f"{', drift' if data['drift'] else ''}) in {time.perf_counter() - t0:.1f} s")
    return 0


# the universe is `from` in a JSON query and `universe` in a request message; these commands' flag is --universe
UNIVERSE_FLAG = {"from": "--universe", "universe": "--universe"}


def _backend_arguments(p: argparse.ArgumentParser, local_help: str = "read a snapshot in-process (or a sharded ROOT/NAME: docs/scale.md)") -> None:
    """--local | --addr, and what a remote call takes (segments list, assign)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", metavar="ROOT[/NAME]", help=local_help)
    where.add_argument("--addr", metavar="HOST:PORT", help="ask a running server")
    p.add_argument("--snapshot", dest="snapshot_name", help="snapshot name (--addr, when the server has several)")
    p.add_argument("--version", help="snapshot version (default: CURRENT)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (--addr; default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segsrv", description="Exact, interpretable behavioural segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the synthetic demo shop (tables + spec.toml)")
    p.add_argument("--customers", type=int, default=100_000, help="number of customers (default 100000)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("build", help="build a snapshot from a TOML spec")
    p.add_argument("spec", help="the spec file (see docs/spec.md)")
    p.add_argument("--out", required=True, help="snapshot root; writes ROOT/NAME/VERSION and ROOT/NAME/CURRENT")
    p.add_argument("--version", help="version name (default: content hash)")
    p.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--no-catalog", action="store_true",
                   help="do not carry the CURRENT version's segment catalog over (docs/segments.md)")
    p.add_argument("--drop-unresolved-segments", action="store_true",
                   help="carry the catalog over without the segments that no longer resolve (a warning each) "
                        "instead of failing")
    p.add_argument("--no-propensity-models", action="store_true",
                   help="carry the catalog over without fitting its segments' propensity models")
    p.add_argument("--band-tolerance", type=float, metavar="X",
                   help="keep the CURRENT version's quantile band edges when each is within X (a share of "
                        "the values, 0..1) of the new quantile's rank (default 0.02; docs/spec.md)")
    p.add_argument("--shards", type=int, metavar="N",
                   help="write N customer shards and ROOT/NAME/SHARDS instead of one snapshot; the spec names "
                        "the entity in [shards] (docs/scale.md)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="with --shards: build each shard as a Ray task of --threads CPUs (default 1) on the cluster "
                        "at ADDRESS (auto, ray://HOST:10001, or local: a Ray instance started for this build); ROOT "
                        "must be shared storage every node sees at the same path; needs pip install segsrv[ray] "
                        "(docs/scale.md)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("prune", help="remove old versions of a snapshot, never the CURRENT one "
                                     "(see docs/server.md)")
    p.add_argument("snapshot", metavar="ROOT/NAME", help="the snapshot directory")
    p.add_argument("--keep", type=int, required=True, metavar="N", help="keep the newest N versions (N >= 1)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument("--quiet", action="store_true", help="no line per version")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="describe a snapshot: universes, fields, values")
    p.add_argument("snapshot", help="ROOT, ROOT/NAME or ROOT/NAME/VERSION, or a sharded ROOT/NAME (docs/scale.md)")
    p.add_argument("--version", help="version to open (default: CURRENT)")
    p.add_argument("--universe", help="only this universe")
    p.add_argument("--values", action="store_true", help="list every value with its count")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="check every file of a snapshot against its manifest checksums, SHA-256 included (every other open checks the fast xxh3 checksums)")
    p.add_argument("snapshot", help="ROOT, ROOT/NAME or ROOT/NAME/VERSION")
    p.add_argument("--version", help="version to check (default: CURRENT)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "query", help="run a JSON query", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="JSON keys of the answer (--format json; every kind: snapshot, version, from, elapsed_ms):\n"
               "  relate    n_rows, n_condition, n_candidates, n_matching, plan, hits [$field, $value, then the\n"
               "            selected columns: $support $p $p_base $lift $lift_smoothed $p_value by default]\n"
               "  count     n_rows, count\n"
               "  predict   target, method, multi_valued, n_segment, evidence, probabilities [value, probability,\n"
               "            base_probability, normalizer, factors, no_effect], regularisation\n"
               "  score     JSON lines {id, score} on stdout; on stderr target, value, n_members, returned,\n"
               "            mean_score, regularisation\n"
               "  evaluate  target, method, values, n_train, n_test, accuracy, baseline_accuracy, baseline_value,\n"
               "            log_loss, auc, positive_value, mean_rank, geometric_mean_probability, calibration\n"
               "  profile   n_rows, n_segment, fields [field, strength, over, under], numeric\n"
               "  discover  as `segsrv discover --help`\n"
               "--format table prints the same answer as aligned columns (docs/query.md).\n\n"
               "Example:\n"
               "  segsrv query relate --local demo/snapshots-100000 --format table \\\n"
               "    --json '{\"from\": \"customers\", \"where\": {\"churned\": true}, \"limit\": 5}'")
    p.add_argument("kind", choices=QUERY_KINDS, help="query kind")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", metavar="ROOT[/NAME]",
                       help="answer in-process from a snapshot directory (or a sharded ROOT/NAME: the operations "
                            "answered over shards are listed in docs/scale.md)")
    where.add_argument("--addr", metavar="HOST:PORT", help="ask a running segsrv server")
    p.add_argument("--json", required=True, metavar="QUERY", help="inline JSON, a JSON file, or - for stdin")
    p.add_argument("--version", help="snapshot version (default: CURRENT); with --addr, pins the version")
    p.add_argument("--snapshot", metavar="NAME",
                   help="with --addr: the snapshot to ask when the server serves several")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="deadline of the call with --addr (default 10)")
    p.add_argument("--csv", metavar="OUT",
                   help="score only: write id,score rows to OUT (default: JSON lines on stdout); summary on stderr")
    _format_argument(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="write the ids of a condition's rows (optionally the top K by a score) "
                                      "as CSV or JSON lines (see docs/export.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="JSON keys of the summary (--format json; on stdout, or on stderr with --out -):\n"
                              "  out, format (of the ids), rows (written), matching, ranked, elapsed_s\n\n"
                              "Example:\n"
                              "  segsrv export --local demo/snapshots-100000 --out churned.csv \\\n"
                              "    --json '{\"from\": \"customers\", \"where\": {\"churned\": true}}'")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", metavar="ROOT[/NAME]",
                       help="answer in-process from a snapshot directory (a sharded ROOT/NAME: without a target; "
                            "docs/scale.md)")
    where.add_argument("--addr", metavar="HOST:PORT", help="ask a running segsrv server (ExportMembers)")
    p.add_argument("--json", required=True, metavar="QUERY",
                   help='{"from", "where", "top_k", "target", "value"}: inline JSON, a JSON file, or - for stdin')
    p.add_argument("--out", required=True, metavar="FILE", help="output file, or - for stdout")
    p.add_argument("--ids-format", choices=["csv", "jsonl"],
                   help="csv (header id[,score]) or jsonl; default from the extension of --out (stdout: csv)")
    p.add_argument("--format", choices=["table", "json", "csv", "jsonl"],
                   help="the summary: table (a sentence; default on a terminal) or json (default when piped); "
                        "csv / jsonl: the earlier spelling of --ids-format")
    p.add_argument("--chunk-size", type=int, metavar="N",
                   help=f"ids per chunk / streamed message (default 10000; at most {EXPORT_MAX_CHUNK})")
    p.add_argument("--version", help="snapshot version (default: CURRENT); with --addr, pins the version")
    p.add_argument("--snapshot", metavar="NAME",
                   help="with --addr: the snapshot to ask when the server serves several")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="deadline of the whole export with --addr (default 600)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("segments", help="the segment catalog: apply a catalog file, list segments "
                                         "(see docs/segments.md)")
    ssub = p.add_subparsers(dest="segments_command", required=True)
    q = ssub.add_parser("apply", help="validate a catalog file and publish it as a new snapshot version "
                                      "(data files hard-linked, nothing rebuilt)")
    q.add_argument("snapshot", help="ROOT/NAME (the catalog is applied to the CURRENT version; on a sharded ROOT/NAME "
                                    "to every shard, then SHARDS: docs/scale.md)")
    q.add_argument("catalog", help="catalog file: TOML [segments.NAME] tables (or .json)")
    q.add_argument("--version", help="name of the new version (default: a hash of the base version and catalog)")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.add_argument("--no-propensity-models", action="store_true",
                   help="do not fit and store the segments' default Assign propensity models (Assign then fits "
                        "them on demand, at its first call with propensities)")
    q.set_defaults(func=cmd_segments_apply)
    q = ssub.add_parser("list", help="the catalog with each segment's size and share",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="JSON keys (--format json): a list of segments [name, description, universe, where,\n"
                               "priority, tags, size, share].\n\n"
                               "Example:\n"
                               "  segsrv segments list --local demo/snapshots-100000 --format table")
    _backend_arguments(q)
    q.add_argument("--universe", help="only segments of this universe")
    _format_argument(q)
    q.set_defaults(flags=UNIVERSE_FLAG)
    q.set_defaults(func=cmd_segments_list)

    p = sub.add_parser(
        "discover", help="find the segments in the data: conjunctions that co-occur beyond what their parts "
                         "predict, or where a target over- or under-indexes (see docs/discover.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="JSON keys of the answer (--format json): snapshot, version, from, n_rows, candidates, tested,\n"
               "min_support, min_lift, elapsed_ms, segments [name, terms, where, support, share, lift,\n"
               "split_lift, adjusted_lift, p_value, q_value, score, description, related; with a target:\n"
               "target_support, target_rate, wracc, direction], target, target_count, segmentation\n"
               "[personas (segment, name, primary, gain), covered, coverage, overlap, other].\n\n"
               "Example:\n"
               "  segsrv discover --local demo/snapshots-100000 --k 5 --save segments.toml\n"
               "  segsrv discover --local demo/snapshots-100000 --target churned=true --limit 10")
    _backend_arguments(p, "read a snapshot in-process (also a sharded ROOT/NAME: every shard, merged; docs/scale.md)")
    p.add_argument("--json", metavar="QUERY", help="the discover query as JSON (inline, a file or -); "
                                                   "the flags below override its keys")
    p.add_argument("--from", dest="universe", metavar="UNIVERSE", help="universe (default: the only one)")
    p.add_argument("--target", metavar="FIELD=VALUE",
                   help="subgroup discovery: where the target's rate is high or low (e.g. churned=true)")
    p.add_argument("--direction", choices=["both", "high", "low"], help="with --target (default both)")
    p.add_argument("--fields", nargs="+", metavar="FIELD",
                   help="candidate fields, names or globs (default: every field but identifier-like ones)")
    p.add_argument("--weight", action="append", metavar="FIELD=W",
                   help="field priority: scales the ranking of segments with a feature of FIELD (repeatable)")
    p.add_argument("--within", metavar="JSON", help="search only the rows of this condition (where form)")
    p.add_argument("--k", type=int, help="also choose K personas among the segments (greedy cover)")
    p.add_argument("--limit", type=int, help="most segments listed (default 20)")
    p.add_argument("--max-length", type=int, help="most features in a conjunction (default 3)")
    p.add_argument("--min-support", type=int, help="fewest rows of a segment (default 1%% of the rows searched)")
    p.add_argument("--min-lift", type=float, help="smallest lift (default 1.25 without a target, 1.2 with one)")
    p.add_argument("--max-overlap", type=float, help="largest Jaccard index between two listed segments "
                                                     "(default 0.5)")
    p.add_argument("--describe", type=int, help="over-indexed other features per segment (default 3)")
    _format_argument(p, extra=("text",))  # text: the earlier name of table
    p.add_argument("--save", metavar="CATALOG.toml",
                   help="write the segments as a catalog for `segsrv segments apply`")
    p.add_argument("--personas-only", action="store_true", help="with --save and --k: save only the personas")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("assign", help="catalog segments of customers (ids) or of a new customer (--features)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="JSON keys (--format json): snapshot, version, universe, assignments [id, found,\n"
                              "primary_segment, segments [segment, member, propensity, segment_size, share, priority]],\n"
                              "suppressed_segments (the privacy floor).\n\n"
                              "Example:\n"
                              "  segsrv assign --local demo/snapshots-100000 --id 42 --propensities --format table")
    _backend_arguments(p)
    p.add_argument("--id", action="append", help="a customer id (repeatable)")
    p.add_argument("--ids-file", help="file with one id per line (- for standard input)")
    p.add_argument("--features", metavar="JSON", help='a new customer: {"field": "value", ...} (inline, file or -)')
    p.add_argument("--propensities", action="store_true", help="also the membership probability of the other segments")
    p.add_argument("--propensity-method", help="logistic (default) or factorized (docs/assign.md)")
    p.add_argument("--propensity-l2", type=float, help="L2 penalty of the logistic propensities "
                                                        "(default: chosen by cross-validation, the stored models)")
    p.add_argument("--universe", help="universe (default: the one the catalog is over)")
    _format_argument(p)
    p.set_defaults(func=cmd_assign, flags=UNIVERSE_FLAG | {
        "propensity_method": "--propensity-method", "propensity_l2": "--propensity-l2", "features": "--features"})

    p = sub.add_parser(
        "report", help="write one self-contained HTML report: segments, their profiles, models, drift "
                       "(see docs/report.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n"
               "  segsrv report demo/snapshots-100000 --out report.html\n"
               "  segsrv report --addr 127.0.0.1:50051 --from customers --segments discover --out report.html")
    p.add_argument("snapshot", nargs="?", metavar="ROOT[/NAME]", help="read a snapshot in-process (or --addr)")
    p.add_argument("--addr", metavar="HOST:PORT", help="ask a running server instead")
    p.add_argument("--snapshot", dest="snapshot_name", metavar="NAME",
                   help="with --addr: the snapshot to ask when the server serves several")
    p.add_argument("--version", help="snapshot version (default: CURRENT)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call with --addr (default 120)")
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write")
    p.add_argument("--from", dest="universe", metavar="UNIVERSE",
                   help="universe (default: the catalog's, or the only one)")
    p.add_argument("--segments", choices=["auto", "catalog", "discover"], default="auto",
                   help="the published catalog, or Discover (default auto: the catalog when there is one)")
    p.add_argument("--discover", metavar="QUERY", help="with discover segments: the Discover query's JSON "
                                                       "(inline, a file or -), e.g. a target")
    p.add_argument("--max-segments", type=int, metavar="N", help="segments shown (default 12)")
    p.add_argument("--max-fields", type=int, metavar="N",
                   help="fields profiled per segment, strongest first (default 6)")
    p.add_argument("--values-per-field", type=int, metavar="K",
                   help="over- and under-indexed values per field (default 5)")
    p.add_argument("--evaluate", action="append", metavar="QUERY",
                   help="also evaluate this Evaluate query (JSON; repeatable)")
    p.add_argument("--no-declared-models", action="store_true",
                   help="do not evaluate the snapshot's declared models")
    p.add_argument("--compare", metavar="VERSION", help="add catalog drift from VERSION to the reported version "
                                                        "(ROOT/NAME only)")
    p.add_argument("--title", help="page title (default: segsrv report: NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve every snapshot under ROOT over gRPC (see docs/server.md)")
    p.add_argument("--snapshots", required=True, metavar="ROOT",
                   help="snapshot root (ROOT/NAME/CURRENT; a sharded build: ROOT/NAME/SHARDS, docs/scale.md)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 = any free port)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="server processes sharing the port (SO_REUSEPORT) under a supervisor that restarts "
                        "crashed ones (default: one per CPU this process may run on; 1: one plain process)")
    p.add_argument("--probe-interval", type=float, default=1.0, metavar="SECONDS",
                   help="with --workers N: probe each worker's health this often (default 1)")
    p.add_argument("--probe-timeout", type=float, default=2.0, metavar="SECONDS",
                   help="with --workers N: a probe unanswered this long is missed (default 2)")
    p.add_argument("--probe-failures", type=int, default=3, metavar="N",
                   help="with --workers N: kill and restart a worker that missed this many probes in a row "
                        "(default 3)")
    p.add_argument("--max-workers", type=int, default=4,
                   help="request handler threads per process (default 4; more threads mostly contend for the "
                        "GIL: more cores need --workers)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=256,
                   help="RPCs in progress (running or waiting for a thread) per process before "
                        "RESOURCE_EXHAUSTED (default 256)")
    p.add_argument("--max-concurrent-streams", type=int, default=4, metavar="N",
                   help="ScoreSegment / ExportMembers streams at once per process, on threads of their own; more "
                        "are RESOURCE_EXHAUSTED (default 4)")
    p.add_argument("--stream-write-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="cancel a stream whose next message waited this long to be sent (the client stopped "
                        "reading; default 30; 0 = never)")
    p.add_argument("--max-message-mb", type=float, default=4.0,
                   help="largest request message in MiB (default 4)")
    p.add_argument("--kernel-threads", type=int, default=1,
                   help="threads per kernel call (default 1: concurrent requests already use the cores; "
                        "more processes, not threads, scale a server)")
    p.add_argument("--privacy-k", type=int, default=10, metavar="K",
                   help="privacy floor: counts of 1..K-1 rows are suppressed or refused in every answer "
                        "(default 10; 0 or 1 turns it off; see docs/server.md)")
    p.add_argument("--max-discover-candidates", type=int, default=2000, metavar="N",
                   help="most candidate features a Discover search may start from; more is RESOURCE_EXHAUSTED "
                        "(default 2000; see docs/discover.md)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight RPCs get to finish on SIGTERM/SIGINT (default 5)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often to check ROOT/NAME/CURRENT for a new version (default 1; 0 = never)")
    p.add_argument("--verify-interval", type=float, default=300.0, metavar="SECONDS",
                   help="how often to check every byte of the served versions again; a version whose files "
                        "changed on disk is withdrawn (default 300; 0 = never; needs --reload-interval > 0)")
    p.add_argument("--keep-versions", type=int, default=0, metavar="K",
                   help="retired versions kept served (pinnable) after a swap besides those still in use "
                        "(default 0)")
    p.add_argument("--no-warm", action="store_true",
                   help="serve a version without first compiling its segment catalog and loading its stored "
                        "Assign propensity models (faster start; the first Assign calls do that work)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (PEM); with --tls-key: TLS only")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="CA certificate(s) (PEM) that sign client certificates; clients must present one (mTLS)")
    p.add_argument("--tokens", metavar="FILE",
                   help="bearer tokens with scopes (TOML or JSON, see docs/server.md); without it no token is needed")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (worker i: PORT+i); "
                        "default: off")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (default 127.0.0.1)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log lines as text or one JSON object each (default text)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="default info (one access-log line per RPC)")
    p.add_argument("--no-access-log", action="store_true", help="no log line per RPC")
    p.add_argument("--keepalive-time", type=float, default=60.0, metavar="SECONDS",
                   help="ping a client connection idle this long (default 60)")
    p.add_argument("--keepalive-timeout", type=float, default=20.0, metavar="SECONDS",
                   help="close a connection whose ping is not answered within this (default 20)")
    p.add_argument("--max-connection-age", type=float, default=0, metavar="SECONDS",
                   help="close connections after this long (clients reconnect and spread over workers "
                        "again; default 0 = never)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("serve-ray", help="serve sharded snapshots on a Ray cluster: Ray Serve shard replicas and a "
                                         "router that speaks segsrv.v1 gRPC (docs/scale.md; pip install segsrv[ray])")
    p.add_argument("--snapshots", required=True, metavar="ROOT_OR_URI",
                   help="a sharded snapshot (ROOT/NAME holding SHARDS) or a root of them, on storage every Ray node "
                        "sees at the same path (a path, or file:///path)")
    p.add_argument("--shards-per-replica", type=int, required=True, metavar="K",
                   help="shards each shard-replica deployment holds (of every snapshot served): ceil(N / K) "
                        "deployments for N shards")
    p.add_argument("--replicas", type=int, default=1, metavar="R",
                   help="replicas of each shard deployment, for throughput (default 1)")
    p.add_argument("--port", type=int, default=50051, help="the gRPC port of Ray Serve's proxy on every node (default "
                                                            "50051; it listens on all interfaces)")
    p.add_argument("--address", default="auto", metavar="ADDRESS",
                   help="the Ray cluster: auto (the one this node belongs to; default), ray://HOST:10001, or local "
                        "(a Ray instance started by this command, stopped with it)")
    p.add_argument("--privacy-k", type=int, default=10, metavar="K",
                   help="privacy floor, as segsrv serve's (default 10; 0 or 1 turns it off)")
    p.add_argument("--max-discover-candidates", type=int, default=2000, metavar="N",
                   help="as segsrv serve's (default 2000)")
    p.add_argument("--tokens", metavar="FILE", help="bearer tokens with scopes, as segsrv serve's (docs/server.md)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often the router reads SHARDS for a new build (default 1; 0 = never)")
    p.add_argument("--replica-cpus", type=float, default=1.0, metavar="N",
                   help="CPUs Ray reserves for each replica, the router's included (default 1)")
    p.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                   help="Ray Serve's end-to-end limit per call, DEADLINE_EXCEEDED past it (default: none; a "
                        "client's own deadline always applies)")
    p.set_defaults(func=cmd_serve_ray)

    p = sub.add_parser("diff", help="drift of the segment catalog between two versions of a snapshot",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="JSON keys (--format json): snapshot, version_a, version_b, top_features, min_support,\n"
                              "universes {NAME: n_rows_a, n_rows_b, common, only_a, only_b}, segments [name, status,\n"
                              "universe, definition_changed, description, size_a, size_b, share_a, share_b, joined,\n"
                              "left, stayed, joined_new, left_gone, jaccard, n_features_compared, moved, new_features,\n"
                              "missing_features, note], elapsed_ms.\n\n"
                              "Example:\n"
                              "  segsrv diff demo/snapshots-100000/demo VERSION_A VERSION_B --top 5 --format table")
    p.add_argument("snapshot", metavar="ROOT/NAME", help="the snapshot directory (ROOT/NAME)")
    p.add_argument("version_a", metavar="VERSION_A", help="the earlier version (CURRENT = the served one)")
    p.add_argument("version_b", metavar="VERSION_B", help="the later version")
    p.add_argument("--segment", action="append", metavar="NAME", help="only this segment (repeatable)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="features listed per segment (default 10)")
    p.add_argument("--min-support", type=int, default=10, metavar="K",
                   help="skip features with fewer than K segment members in both versions (default 10)")
    p.add_argument("--field", action="append", metavar="PATTERN",
                   help="only features of these fields (names or globs; repeatable; default every field)")
    p.add_argument("--include-condition-fields", action="store_true",
                   help="also rank the fields the segment's definition uses")
    _format_argument(p)
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--ids-out", metavar="DIR", help="write DIR/<segment>.csv: id,change (joined|left),note (new|gone)")
    p.set_defaults(func=cmd_diff)
    return parser


def _name_flags(text: str, flags: dict[str, str]) -> str:
    """An error's request keys ('from', `propensity_method:`) named as the command's flags (--universe)."""
    for key, flag in flags.items():
        text = text.replace(f"'{key}'", flag)
        if text.startswith(f"{key}:"):
            text = flag + text[len(key):]
    return text


def remote_error_lines(exc, flags: dict[str, str] | None = None) -> list[str]:
    """A server's error: `segsrv: error: CODE: message`, then the field violations that say more than the
    message (a violation that repeats it only adds its field, in brackets)."""
    flags = {"snapshot.name": "--snapshot", "snapshot.version": "--version", **(flags or {})}
    message = _name_flags(exc.message, flags)
    extra, fields = [], []
    for field, description in exc.violations:
        field = flags.get(field, field)
        description = _name_flags(description, flags)
        if description == message or description.endswith(": " + message) or message.endswith(description):
            if field not in message:
                fields.append(field)
        else:
            extra.append(f"  {field}: {description.removeprefix(field + ': ')}")
    where = f" [{', '.join(fields)}]" if fields else ""
    return [f"segsrv: error: {exc.code.name}: {message}{where}"] + extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = getattr(args, "flags", {})  # request keys -> this command's flags, for its error messages
    try:
        return args.func(args)
    except SegsrvError as exc:
        print(f"segsrv: error: {_name_flags(exc.message, flags)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("segsrv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `segsrv query ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        client = sys.modules.get("segsrv.client")  # loaded only by --addr commands
        if client is None or not isinstance(exc, client.SegsrvRpcError):
            raise
        print("\n".join(remote_error_lines(exc, flags)), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
