"""Command line of the load-test harness (clients/loadtest/run.py); see docs/loadtest.md."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
from pathlib import Path

from .report import (ReportError, build_report, comparison, comparison_table, summary_table, validate_report,
                     write_report)
from .scenario import ScenarioError, load_scenario, parse_weights

HERE = Path(__file__).resolve().parent
DEFAULT_SCENARIO = HERE / "scenarios" / "default.toml"
DEFAULT_ADDR = "127.0.0.1:50051"

# bounds; --override-limits lifts them
MAX_DURATION_S = 3600.0
MAX_WARMUP_S = 600.0
MAX_RATE = 20_000.0
MAX_CONCURRENCY = 1024
MAX_PROCESSES = 16
MAX_CONNECTIONS = 64       # per process
DEFAULT_CONCURRENCY = 16
DEFAULT_BACKEND = "aio"    # measured faster than threads on this box (docs/loadtest.md)


class UsageError(Exception):
    pass


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--addr: expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a name: every address it resolves to must be loopback
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", description="Load test a segsrv server with a weighted mix of requests drawn from its snapshot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT (the only address traffic goes to)")
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario TOML")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of load before the measured window (not reported)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="open loop: requests per second (all processes together)")
    load.add_argument("--concurrency", type=int, help=f"closed loop: callers (all processes together; default {DEFAULT_CONCURRENCY})")
    p.add_argument("--processes", type=int, default=1, help="load-generating processes (each with its own channels)")
    p.add_argument("--connections", type=int, default=1, help="channels (TCP connections) per process")
    p.add_argument("--backend", choices=("aio", "threads"), default=DEFAULT_BACKEND, help="gRPC client API")
    p.add_argument("--timeout", type=float, help="per-request deadline in seconds (default: the scenario's)")
    p.add_argument("--max-inflight", type=int, default=10_000, help="open loop: outstanding requests per process")
    p.add_argument("--weights", help="override the scenario weights, e.g. assign=0 or relate=4,count=3")
    p.add_argument("--seed", type=int, help="override the scenario seed")
    p.add_argument("--snapshot", help="override the scenario's snapshot name")
    p.add_argument("--universe", help="override the scenario's universe")
    p.add_argument("--out", required=True, help="output directory (report.json, report.png, summary.txt)")
    p.add_argument("--ghz", action="store_true", help="also run ghz with the same scenario afterwards and compare")
    p.add_argument("--ghz-only", action="store_true", help="run only ghz")
    p.add_argument("--ghz-bin", help="ghz binary (default: clients/loadtest/bin/ghz, installed on first use)")
    p.add_argument("--snapshot-info", metavar="FILE",
                   help="use this saved GetSnapshotInfo (an earlier run's OUT/snapshot-info.json) instead of asking "
                        "the server, e.g. to load a trivial server with real requests")
    p.add_argument("--dry-run", action="store_true", help="fetch the snapshot, write the request pools, send no load")
    p.add_argument("--fail-on-errors", action="store_true", help="exit 3 if any request failed")
    p.add_argument("--token-file", metavar="FILE",
                   help="bearer token for a server run with --tokens (first line of FILE; default: $SEGSRV_TOKEN)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --addr")
    p.add_argument("--override-limits", action="store_true",
                   help=f"lift the bounds (duration {MAX_DURATION_S:g} s, rate {MAX_RATE:g}/s, concurrency "
                        f"{MAX_CONCURRENCY}, processes {MAX_PROCESSES}, connections {MAX_CONNECTIONS})")
    p.add_argument("--no-plot", action="store_true", help="skip report.png (saves importing matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def check_args(a) -> None:
    host, _port = split_addr(a.addr)
    if not a.allow_remote and not is_loopback(host):
        raise UsageError(f"--addr {a.addr}: not a loopback address; pass --allow-remote to load a remote server")
    if a.concurrency is None and a.rate is None:
        a.concurrency = DEFAULT_CONCURRENCY
    checks = [
        ("--duration", a.duration, 0.0, MAX_DURATION_S, False),
        ("--warmup", a.warmup, 0.0, MAX_WARMUP_S, True),
        ("--processes", a.processes, 1, MAX_PROCESSES, True),
        ("--connections", a.connections, 1, MAX_CONNECTIONS, True),
    ]
    if a.rate is not None:
        checks.append(("--rate", a.rate, 0.0, MAX_RATE, False))
    else:
        checks.append(("--concurrency", a.concurrency, 1, MAX_CONCURRENCY, True))
    for name, v, lo, hi, lo_ok in checks:
        if v != v or (v < lo if lo_ok else v <= lo):
            raise UsageError(f"{name}: must be {'at least' if lo_ok else 'above'} {lo}, got {v}")
        if v > hi and not a.override_limits:
            raise UsageError(f"{name}: {v:g} is above the limit {hi:g}; pass --override-limits to allow it")
    if a.timeout is not None and not 0 < a.timeout <= 600:
        raise UsageError(f"--timeout: must be within (0, 600] seconds, got {a.timeout}")
    if a.max_inflight < 1:
        raise UsageError("--max-inflight: must be at least 1")
    if a.rate is not None and a.concurrency is None and a.rate < a.processes:
        raise UsageError(f"--rate {a.rate:g} is below one request per second per process ({a.processes} processes)")
    if a.rate is None and a.concurrency < a.processes:
        a.processes = a.concurrency


def auth_metadata(args) -> tuple:
    """(("authorization", "Bearer T"),) from --token-file or $SEGSRV_TOKEN; () without a token."""
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise UsageError(f"--token-file: cannot read a token from {args.token_file}: {exc}") from None
    elif os.environ.get("SEGSRV_TOKEN"):
        token = os.environ["SEGSRV_TOKEN"].strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[loadtest] {m}", file=sys.stderr, flush=True))
    try:
        check_args(args)
        scenario = load_scenario(args.scenario)
        if args.weights:
            scenario = scenario.with_weights(parse_weights(args.weights))
        if args.seed is not None:
            scenario.seed = args.seed
        if args.snapshot is not None:
            scenario.snapshot = args.snapshot
        if args.universe is not None:
            scenario.universe = args.universe
    except (UsageError, ScenarioError) as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, scenario, say)
    except (UsageError, ScenarioError) as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # server unreachable, a load process failed, ghz failed ...
        import grpc

        if isinstance(exc, grpc.RpcError):
            msg = f"{exc.code().name}: {exc.details()}"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        print(f"run.py: error: {msg}", file=sys.stderr)
        return 1


def _run(args, scenario, say) -> int:
    from .gen import catalog_from_response, fetch_info, info_from_json, info_to_json, pools_to_json
    from .runner import LoadConfig, prepare, run_load

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "open" if args.rate is not None else "closed"
    metadata = auth_metadata(args)
    cfg = LoadConfig(metadata=metadata, addr=args.addr, mode=mode, rate=args.rate or 0.0, concurrency=args.concurrency or 0,
                     duration_s=args.duration, warmup_s=args.warmup, processes=args.processes,
                     connections=args.connections, backend=args.backend, timeout_s=args.timeout,
                     max_inflight=args.max_inflight)
    if args.snapshot_info:
        try:
            info = info_from_json(Path(args.snapshot_info).read_text())
        except Exception as exc:  # OSError, json_format.ParseError
            raise UsageError(f"--snapshot-info: cannot read {args.snapshot_info}: {exc}") from None
    else:
        say(f"fetching snapshot info from {args.addr}")
        info = fetch_info(args.addr, snapshot=scenario.snapshot, universe=scenario.universe, metadata=metadata)
    (out / "snapshot-info.json").write_text(info_to_json(info) + "\n")
    plan = prepare(cfg, scenario, catalog_from_response(info, scenario.universe))
    cat = plan.catalog
    say(f"snapshot {cat.snapshot_name} {cat.snapshot_version}, universe {cat.universe} ({cat.row_count:,} rows, "
        f"{len(cat.fields)} fields); mix " + ", ".join(f"{m} {s:.0%}" for m, s in scenario.shares.items()))
    if plan.jobs and plan.jobs[0].connections > 1 and mode == "closed":
        for job in plan.jobs:  # a connection without a caller would idle
            job.connections = max(1, min(job.connections, job.concurrency))
    req_dir = out / "requests"
    req_dir.mkdir(exist_ok=True)
    for m, reqs in pools_to_json(plan.pools).items():
        (req_dir / f"{m}.json").write_text(json.dumps(reqs, indent=None) + "\n")
    if args.dry_run:
        say(f"dry run: request pools written to {req_dir}")
        return 0
    timeout = args.timeout if args.timeout is not None else scenario.timeout_s
    config = {"mode": mode, "rate": cfg.rate if mode == "open" else None,
              "concurrency": cfg.concurrency if mode == "closed" else None, "duration_s": cfg.duration_s,
              "warmup_s": cfg.warmup_s, "processes": len(plan.jobs), "connections": cfg.connections,
              "backend": cfg.backend, "timeout_s": timeout, "max_inflight": cfg.max_inflight if mode == "open" else None,
              "cpus": os.cpu_count(), "auth": bool(metadata)}
    snapshot = cat.to_json()
    scen = scenario.to_json()
    reports = {}
    failed = 0
    if not args.ghz_only:
        say(f"{'open loop at %g req/s' % cfg.rate if mode == 'open' else 'closed loop at concurrency %d' % cfg.concurrency}"
            f" for {cfg.warmup_s + cfg.duration_s:g} s (warm-up {cfg.warmup_s:g} s)")
        t0 = time.time()
        result = run_load(plan, progress=say)
        say(f"done in {time.time() - t0:.1f} s")
        gen = {"cpu_s": result.meta["cpu_s"], "wall_s": result.meta["wall_s"],
               "late_sends": result.meta["late_sends"], "sampled": result.meta["sampled"]}
        rep = build_report(result.samples, tool="segsrv-loadtest", target=args.addr, duration_s=cfg.duration_s,
                           scenario=scen, snapshot=snapshot, config=config, generator=gen)
        _emit(rep, out, say, args)
        reports["segsrv-loadtest"] = rep
        failed += rep["overall"]["errors"]
    if args.ghz or args.ghz_only:
        from .ghz import find_ghz, run_ghz

        ghz = find_ghz(args.ghz_bin, progress=say)
        gdir = out / "ghz" if not args.ghz_only else out
        say(f"running ghz ({ghz}) for {cfg.warmup_s + cfg.duration_s:g} s, one process per method")
        samples, meta = run_ghz(ghz=ghz, addr=args.addr, pools=plan.pools, shares=scenario.shares, mode=mode,
                                rate=cfg.rate, concurrency=cfg.concurrency or DEFAULT_CONCURRENCY,
                                connections=cfg.connections * len(plan.jobs), duration_s=cfg.duration_s,
                                warmup_s=cfg.warmup_s, timeout_s=timeout, workdir=gdir / "work", progress=say,
                                metadata=dict(metadata),
                                mean_latency_ms=_mean_latencies(reports.get("segsrv-loadtest")))
        gconfig = dict(config, backend="ghz", processes=len(scenario.shares), ghz=meta)
        grep_ = build_report(samples, tool="ghz", target=args.addr, duration_s=cfg.duration_s, scenario=scen,
                             snapshot=snapshot, config=gconfig, generator={})
        _emit(grep_, gdir, say, args)
        reports["ghz"] = grep_
        failed += grep_["overall"]["errors"]
    if len(reports) == 2:
        cmp = comparison(reports)
        (out / "comparison.json").write_text(json.dumps(cmp, indent=1) + "\n")
        table = comparison_table(cmp)
        (out / "comparison.txt").write_text(table + "\n")
        if not args.quiet:
            print("\nsegsrv-loadtest vs ghz\n" + table)
    if args.fail_on_errors and failed:
        print(f"run.py: {failed:,} requests failed", file=sys.stderr)
        return 3
    return 0


def _mean_latencies(rep: dict | None) -> dict | None:
    """Our run's mean latency per method (splits ghz's callers so that its mix matches ours)."""
    if not rep:
        return None
    return {m: s["latency_ms"]["mean"] for m, s in rep["methods"].items() if s["latency_ms"]["mean"]}


def _emit(rep: dict, out: Path, say, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_report(rep, out / "report.json")
    written = [out / "report.json"]
    if not args.no_plot:
        from .plot import plot_report

        written.append(plot_report(rep, out / "report.png"))
    table = summary_table(rep)
    (out / "summary.txt").write_text(table + "\n")
    written.append(out / "summary.txt")
    if not args.quiet:
        print(table)
    say("wrote " + ", ".join(map(str, written)))


def validate_main(argv=None) -> int:
    """validate.py REPORT [--max-errors N] [--methods m1,m2] [--min-requests N]: exit 1 if it fails."""
    p = argparse.ArgumentParser(prog="validate.py", description="Check a load-test report against the schema.")
    p.add_argument("report")
    p.add_argument("--max-errors", type=int, help="fail if more requests failed")
    p.add_argument("--methods", help="comma-separated methods that must be in the report with requests > 0")
    p.add_argument("--min-requests", type=int, default=1, help="fail if fewer requests in total")
    a = p.parse_args(argv)
    try:
        rep = json.loads(Path(a.report).read_text())
        validate_report(rep)
    except (OSError, ValueError, ReportError) as exc:
        print(f"validate: {a.report}: {exc}", file=sys.stderr)
        return 1
    problems = []
    o = rep["overall"]
    if o["requests"] < a.min_requests:
        problems.append(f"{o['requests']} requests, expected at least {a.min_requests}")
    if a.max_errors is not None and o["errors"] > a.max_errors:
        problems.append(f"{o['errors']} failed requests (" + ", ".join(
            f"{m}: {s['errors_by_code']}" for m, s in rep["methods"].items() if s["errors"]) + ")")
    for m in filter(None, (a.methods or "").split(",")):
        if rep["methods"].get(m, {}).get("requests", 0) <= 0:
            problems.append(f"no {m} requests")
    if problems:
        print(f"validate: {a.report}: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"validate: {a.report}: ok ({o['requests']:,} requests, {o['throughput_rps']:,.1f} req/s, "
          f"p99 {o['latency_ms']['p99']} ms, {o['errors']} errors)")
    return 0
