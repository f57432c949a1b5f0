"""Command line: segsrv demo-data | build | info | verify | query | serve.

Every command prints errors as one line `segsrv: error: ...` on stderr and
exits 1 for bad input or a failed build, 2 for bad usage. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import SegsrvError


def _load_query(text: str) -> dict:
    """QUERY is inline JSON, a path to a JSON file, or - for standard input."""
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip().startswith("{"):
        raw = text
    else:
        path = Path(text)
        if not path.exists():
            raise SegsrvError(f"--json: {text!r} is neither inline JSON (starting with '{{') nor an existing file")
        raw = path.read_text()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SegsrvError(f"--json: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SegsrvError("--json: the query must be a JSON object")
    return obj


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def cmd_demo_data(args) -> int:
    from .demo.generate import generate_demo

    t0 = time.perf_counter()
    spec = generate_demo(
        args.out, n_customers=args.customers, seed=args.seed,
        progress=None if args.quiet else (lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True)),
    )
    print(f"[demo] wrote {spec.parent} in {time.perf_counter() - t0:.1f} s; build it with: "
          f"segsrv build {spec} --out ROOT", file=sys.stderr)
    print(spec)
    return 0


def cmd_build(args) -> int:
    from .snapshot.builder import build_snapshot

    progress = (lambda m: None) if args.quiet else None
    path = build_snapshot(args.spec, args.out, version=args.version, progress=progress, threads=args.threads)
    print(path)
    return 0


def cmd_info(args) -> int:
    from .snapshot.reader import open_snapshot

    snap = open_snapshot(args.snapshot, version=args.version)
    info = {
        "name": snap.name,
        "version": snap.version,
        "path": str(snap.path),
        "description": snap.description,
        "universes": {},
    }
    for u in snap.universes.values():
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
        info["universes"][u.name] = {
            "table": u.table, "key": u.key, "n_rows": u.n_rows, "n_features": u.n_features,
            "n_dense": len(u.dense_features), "n_sparse": len(u.sparse_features), "fields": fields,
        }
    _print_json(info)
    return 0


def cmd_verify(args) -> int:
    from .snapshot.reader import open_snapshot

    t0 = time.perf_counter()
    snap = open_snapshot(args.snapshot, version=args.version, verify="full")
    n_files = len(snap.manifest["files"])
    size = sum(f["bytes"] for f in snap.manifest["files"].values())
    print(f"ok: {snap.name}/{snap.version}: {n_files} files, {size / 1e6:,.1f} MB, checksums match "
          f"({time.perf_counter() - t0:.2f} s)")
    return 0


def _write_scores(answer: dict, csv_path: str | None) -> None:
    """`query score`: id,score rows to CSV_PATH (or JSON lines to stdout); the summary on stderr."""
    import csv

    scores = answer.pop("scores")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "score"])
            w.writerows([s["id"], s["score"]] for s in scores)
    else:
        for s in scores:
            sys.stdout.write(json.dumps(s) + "\n")
    print(json.dumps(answer), file=sys.stderr)


def cmd_query(args) -> int:
    from .engine.predict_query import run_evaluate_json, run_predict_json, run_score_json
    from .engine.query import run_count_json, run_relate_json
    from .snapshot.reader import open_snapshot

    if args.csv and args.kind != "score":
        raise SegsrvError("--csv is for `segsrv query score`")
    query = _load_query(args.json)
    emit = (lambda a: _write_scores(a, args.csv)) if args.kind == "score" else _print_json
    if args.addr:  # the same JSON as --local, answered by a server through SegsrvClient
        from .client import SegsrvClient, SegsrvRpcError

        if args.timeout is not None and not args.timeout > 0:
            raise SegsrvError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
        with SegsrvClient(args.addr, timeout=args.timeout, snapshot=args.snapshot or "",
                          version=args.version or "") as client:
            try:
                answer = {"relate": client.relate, "count": client.count, "predict": client.predict,
                          "score": client.score_segment, "evaluate": client.evaluate}[args.kind](query)
            except SegsrvRpcError as exc:
                print(f"segsrv: error: {exc.code.name}: {exc.message}", file=sys.stderr)
                for field, description in exc.violations:
                    print(f"  {field}: {description}", file=sys.stderr)
                return 1
        emit(answer)
        return 0
    if args.snapshot:
        raise SegsrvError("--snapshot names a snapshot of a server (--addr); with --local give ROOT/NAME")
    snap = open_snapshot(args.local, version=args.version)
    runner = {"relate": run_relate_json, "count": run_count_json, "predict": run_predict_json,
              "score": run_score_json, "evaluate": run_evaluate_json}[args.kind]
    emit(runner(snap, query))
    return 0


def cmd_serve(args) -> int:
    from .server.app import MIB, serve

    return serve(
        args.snapshots, args.host, args.port, grace_seconds=args.grace, max_workers=args.max_workers,
        max_concurrent_rpcs=args.max_concurrent_rpcs, max_receive_message_bytes=int(args.max_message_mb * MIB),
        kernel_threads=args.kernel_threads,
    )


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
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", help="describe a snapshot: universes, fields, values")
    p.add_argument("snapshot", help="ROOT, ROOT/NAME or ROOT/NAME/VERSION")
    p.add_argument("--version", help="version to open (default: CURRENT)")
    p.add_argument("--universe", help="only this universe")
    p.add_argument("--values", action="store_true", help="list every value with its count")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="check every file of a snapshot against its manifest checksums")
    p.add_argument("snapshot", help="ROOT, ROOT/NAME or ROOT/NAME/VERSION")
    p.add_argument("--version", help="version to check (default: CURRENT)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("query", help="run a JSON query")
    p.add_argument("kind", choices=["relate", "count", "predict", "score", "evaluate"], help="query kind")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", metavar="ROOT[/NAME]", help="answer in-process from a snapshot directory")
    where.add_argument("--addr", metavar="HOST:PORT", help="ask a running segsrv server")
    p.add_argument("--json", required=True, metavar="QUERY", help="inline JSON, a JSON file, or - for stdin")
    p.add_argument("--version", help="snapshot version (default: CURRENT); with --addr, pins the version")
    p.add_argument("--snapshot", metavar="NAME",
                   help="with --addr: the snapshot to ask when the server serves several")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="deadline of the call with --addr (default 10)")
    p.add_argument("--csv", metavar="OUT",
                   help="score only: write id,score rows to OUT (default: JSON lines on stdout); summary on stderr")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("serve", help="serve every snapshot under ROOT over gRPC (see docs/server.md)")
    p.add_argument("--snapshots", required=True, metavar="ROOT", help="snapshot root (ROOT/NAME/CURRENT)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 = any free port)")
    p.add_argument("--max-workers", type=int, default=8, help="request handler threads (default 8)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=64,
                   help="RPCs in progress before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--max-message-mb", type=float, default=4.0,
                   help="largest request message in MiB (default 4)")
    p.add_argument("--kernel-threads", type=int, default=1,
                   help="threads per kernel call (default 1: concurrent requests already use the cores; "
                        "more processes, not threads, scale a server)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight RPCs get to finish on SIGTERM/SIGINT (default 5)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SegsrvError as exc:
        print(f"segsrv: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("segsrv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `segsrv query ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
