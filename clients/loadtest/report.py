"""The load-test report: JSON document, its validation, the human summary table, comparisons.

Report (schema "segsrv.loadtest.report/v1"), every latency in milliseconds:

    {
      "schema": "segsrv.loadtest.report/v1",
      "tool": "segsrv-loadtest" | "ghz",
      "created_at": ISO time, "target": "127.0.0.1:50051",
      "snapshot": {"snapshot", "version", "universe", "key", "row_count", "fields", "features"},
      "scenario": {... the scenario, weights ...},
      "config": {"mode", "rate", "concurrency", "duration_s", "warmup_s", "processes", "connections",
                 "backend", "timeout_s", ...},
      "duration_s": measured window,
      "overall": SUMMARY,
      "methods": {"relate": SUMMARY, ...},
      "generator": {"cpu_s", "wall_s" (per process), "cpu_cores", "cpu_us_per_request", "late_sends",
                    "send_lag_ms" (open loop), "sampled", "samples_kept"},
      "timeseries": {"interval_s", "t", "throughput_rps": {"overall", method...}, "errors_per_s": {...},
                     "latency_ms": {method: {"p50": [...], "p99": [...]}}}
    }
    SUMMARY = {"requests", "ok", "errors", "throughput_rps", "ok_rps",
               "latency_ms": {"min", "mean", "p50", "p90", "p99", "p99.9", "max"},
               "errors_by_code": {"UNIMPLEMENTED": n, ...}}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np

from .stats import PERCENTILES, STATUS_NAMES, Samples, percentile, summarize, timeseries

SCHEMA = "segsrv.loadtest.report/v1"
LATENCY_KEYS = ("min", "mean", *PERCENTILES, "max")
SUMMARY_KEYS = ("requests", "ok", "errors", "throughput_rps", "ok_rps", "latency_ms", "errors_by_code")


class ReportError(ValueError):
    """A report that does not follow the schema."""


def build_report(samples: Samples, *, tool: str, target: str, duration_s: float, scenario: dict,
                 snapshot: dict, config: dict, generator: dict | None = None, interval_s: float = 1.0,
                 send_lag: bool | None = None) -> dict:
    """The report of a run. send_lag (default: open-loop runs of our own generator) adds the
    send-lag percentiles: how late sends were against their schedule."""
    summary = summarize(samples, duration_s)
    _m, _t, _lat, _code, lag = samples.arrays()
    gen = dict(generator or {})
    if send_lag is None:
        send_lag = tool == "segsrv-loadtest" and config.get("mode") == "open"
    if send_lag and lag.size:
        slag = np.sort(lag)
        gen["send_lag_ms"] = {"p50": round(percentile(slag, 50) * 1e3, 4), "p99": round(percentile(slag, 99) * 1e3, 4),
                              "max": round(float(slag[-1]) * 1e3, 4)}
    cpu = gen.get("cpu_s")
    if cpu is not None and summary["overall"]["requests"]:
        total_cpu = sum(cpu) if isinstance(cpu, list) else cpu
        # per request including the fixed cost of an idle client (polling threads): an upper bound at low rates
        gen["cpu_us_per_request"] = round(total_cpu / summary["overall"]["requests"] * 1e6, 2)
        wall = gen.get("wall_s")
        if wall:
            gen["cpu_cores"] = round(total_cpu / max(wall) if isinstance(wall, list) else total_cpu / wall, 3)
    gen["sampled"] = bool(gen.get("sampled", False) or samples.sampled)
    gen["samples_kept"] = len(samples.latency)
    return {
        "schema": SCHEMA,
        "tool": tool,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "snapshot": snapshot,
        "scenario": scenario,
        "config": config,
        "duration_s": round(duration_s, 3),
        "overall": summary["overall"],
        "methods": summary["methods"],
        "generator": gen,
        "timeseries": timeseries(samples, duration_s, interval_s),
    }


# --- validation -----------------------------------------------------------------------------


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ReportError(msg)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_summary(s, where: str) -> None:
    _need(isinstance(s, dict), f"{where}: expected an object")
    for k in SUMMARY_KEYS:
        _need(k in s, f"{where}: missing {k!r}")
    for k in ("requests", "ok", "errors"):
        _need(isinstance(s[k], int) and not isinstance(s[k], bool) and s[k] >= 0,
              f"{where}.{k}: expected a count, got {s[k]!r}")
    _need(s["ok"] + s["errors"] == s["requests"], f"{where}: ok + errors != requests")
    for k in ("throughput_rps", "ok_rps"):
        _need(_is_num(s[k]) and s[k] >= 0, f"{where}.{k}: expected a non-negative number")
    lat = s["latency_ms"]
    _need(isinstance(lat, dict), f"{where}.latency_ms: expected an object")
    for k in LATENCY_KEYS:
        _need(k in lat, f"{where}.latency_ms: missing {k!r}")
        _need(lat[k] is None or (_is_num(lat[k]) and lat[k] >= 0), f"{where}.latency_ms.{k}: bad value {lat[k]!r}")
    if s["requests"]:
        _need(all(lat[k] is not None for k in LATENCY_KEYS), f"{where}.latency_ms: empty with requests > 0")
        vals = [lat[k] for k in ("min", *PERCENTILES, "max")]
        _need(all(a <= b + 1e-9 for a, b in zip(vals, vals[1:])), f"{where}.latency_ms: percentiles not ascending")
    errs = s["errors_by_code"]
    _need(isinstance(errs, dict), f"{where}.errors_by_code: expected an object")
    for code, n in errs.items():
        _need(code in STATUS_NAMES.values() and code != "OK", f"{where}.errors_by_code: unknown code {code!r}")
        _need(isinstance(n, int) and n > 0, f"{where}.errors_by_code.{code}: expected a positive count")
    _need(sum(errs.values()) == s["errors"], f"{where}: errors_by_code does not add up to errors")


def validate_report(rep) -> None:
    """Raise ReportError unless `rep` follows the schema (and its counts add up)."""
    _need(isinstance(rep, dict), "report: expected a JSON object")
    _need(rep.get("schema") == SCHEMA, f"schema: expected {SCHEMA!r}, got {rep.get('schema')!r}")
    for k in ("tool", "created_at", "target", "snapshot", "scenario", "config", "duration_s", "overall", "methods",
              "generator", "timeseries"):
        _need(k in rep, f"report: missing {k!r}")
    _need(rep["tool"] in ("segsrv-loadtest", "ghz"), f"tool: unknown {rep['tool']!r}")
    _need(_is_num(rep["duration_s"]) and rep["duration_s"] > 0, "duration_s: expected a positive number")
    _check_summary(rep["overall"], "overall")
    methods = rep["methods"]
    _need(isinstance(methods, dict) and methods, "methods: expected a non-empty object")
    for m, s in methods.items():
        _check_summary(s, f"methods.{m}")
    for k in ("requests", "ok", "errors"):
        _need(sum(s[k] for s in methods.values()) == rep["overall"][k], f"overall.{k}: not the sum over methods")
    ts = rep["timeseries"]
    _need(isinstance(ts, dict), "timeseries: expected an object")
    for k in ("interval_s", "t", "throughput_rps", "errors_per_s", "latency_ms"):
        _need(k in ts, f"timeseries: missing {k!r}")
    n = len(ts["t"])
    _need(n >= 1, "timeseries.t: empty")
    _need(set(ts["throughput_rps"]) == {"overall", *methods}, "timeseries.throughput_rps: not overall + every method")
    for k, vs in ts["throughput_rps"].items():
        _need(isinstance(vs, list) and len(vs) == n, f"timeseries.throughput_rps.{k}: length differs from t")
    for m in methods:
        for q in ("p50", "p99"):
            vs = ts["latency_ms"].get(m, {}).get(q)
            _need(isinstance(vs, list) and len(vs) == n, f"timeseries.latency_ms.{m}.{q}: length differs from t")


def load_report(path: str | Path) -> dict:
    try:
        rep = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON: {exc}") from None
    validate_report(rep)
    return rep


REPO = Path(__file__).resolve().parents[2]


def relative_paths(doc, base: str | Path | None = None):
    """`doc` with this machine's absolute paths made relative, so a committed result names no machine:
    paths under `base` (the result's own directory) relative to it, paths under the repository
    relative to the repository root. Strings, lists and dicts are rewritten; other values kept."""
    prefixes = [f"{Path(base).resolve()}/"] if base is not None else []
    prefixes.append(f"{REPO}/")

    def fix(v):
        if isinstance(v, str):
            for p in prefixes:
                v = v.replace(p, "")
            return v
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(doc)


def write_report(rep: dict, path: str | Path) -> Path:
    validate_report(rep)
    path = Path(path)
    rep = relative_paths(rep, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


# --- text -----------------------------------------------------------------------------------


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def summary_table(rep: dict) -> str:
    """The human summary: one row per method and one overall, latencies in ms."""
    cfg = rep["config"]
    load = (f"open loop at {cfg.get('rate'):g} req/s" if cfg.get("mode") == "open"
            else f"closed loop at concurrency {cfg.get('concurrency')}")
    head = (f"{rep['tool']} -> {rep['target']}  snapshot {rep['snapshot'].get('snapshot')!s}"
            f"/{rep['snapshot'].get('universe')!s}  {load}  {rep['duration_s']:g} s"
            f"  processes {cfg.get('processes')} x connections {cfg.get('connections')}")
    cols = ("method", "requests", "req/s", "ok/s", "p50", "p90", "p99", "p99.9", "max", "errors")
    rows = []
    for name, s in [*rep["methods"].items(), ("overall", rep["overall"])]:
        lat = s["latency_ms"]
        errs = ", ".join(f"{k} {v:,}" for k, v in sorted(s["errors_by_code"].items())) or "0"
        rows.append((name, _fmt(s["requests"]), _fmt(s["throughput_rps"], 1), _fmt(s["ok_rps"], 1),
                     _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p99"]), _fmt(lat["p99.9"]), _fmt(lat["max"]), errs))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(v.ljust(w) if i in (0, 9) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    out = [head, "latency in ms", line(cols), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    gen = rep.get("generator", {})
    extra = []
    if gen.get("cpu_us_per_request") is not None:
        extra.append(f"generator CPU {gen.get('cpu_cores', 0):g} cores ({gen['cpu_us_per_request']:g} us/request)")
    if "send_lag_ms" in gen and cfg.get("mode") == "open":
        extra.append(f"send lag p99 {gen['send_lag_ms']['p99']:g} ms, {gen.get('late_sends', 0):,} sends >1 ms late")
    if gen.get("sampled"):
        extra.append(f"latencies from a sample of {gen.get('samples_kept'):,} requests")
    if extra:
        out.append("; ".join(extra))
    return "\n".join(out)


def comparison(reports: dict[str, dict]) -> dict:
    """{"tools": [...], "methods": {m: {tool: {rps, ok_rps, p50, p90, p99, p99.9, max, errors}}}} for the same scenario."""
    tools = list(reports)
    methods: list[str] = []
    for rep in reports.values():
        for m in rep["methods"]:
            if m not in methods:
                methods.append(m)
    out = {"tools": tools, "methods": {}}
    for m in [*methods, "overall"]:
        row = {}
        for tool, rep in reports.items():
            s = rep["overall"] if m == "overall" else rep["methods"].get(m)
            if s is None:
                continue
            row[tool] = {"requests": s["requests"], "rps": s["throughput_rps"], "ok_rps": s["ok_rps"],
                         **{k: s["latency_ms"][k] for k in (*PERCENTILES, "max")}, "errors": s["errors"],
                         "errors_by_code": s["errors_by_code"]}
        out["methods"][m] = row
    return out


def comparison_table(cmp: dict) -> str:
    tools = cmp["tools"]
    cols = ["method", "tool", "requests", "req/s", "p50", "p90", "p99", "p99.9", "max", "errors"]
    rows = []
    for m, row in cmp["methods"].items():
        for tool in tools:
            if tool not in row:
                continue
            r = row[tool]
            errs = ", ".join(f"{k} {v:,}" for k, v in sorted(r["errors_by_code"].items())) or "0"
            rows.append((m, tool, _fmt(r["requests"]), _fmt(r["rps"], 1), _fmt(r["p50"]), _fmt(r["p90"]),
                         _fmt(r["p99"]), _fmt(r["p99.9"]), _fmt(r["max"]), errs))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(v.ljust(w) if i in (0, 1, 9) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join(["latency in ms", line(cols), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)])
