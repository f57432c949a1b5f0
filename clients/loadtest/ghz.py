"""Drive ghz (github.com/bojand/ghz) with the same scenario, for comparison.

ghz sends one gRPC method per run, so the mix is split: one ghz process per method, all
started together, each with that method's request pool as a JSON array (ghz sends the
array's messages round robin), the concurrency or rate split by the method weights, the
same duration, timeout and connections. ghz's JSON output carries every request
(`details`: end timestamp, latency, status), which is turned into the same Samples and
report as our own runs.

Differences worth knowing:
  * ghz runs each method at a fixed share of the load; our generator draws the method per
    request, so the shares match on average.
  * Rate mode: ghz --rps with --async sends on a ticker without waiting for answers, but
    measures latency from the actual send, not from the scheduled one; ours counts from
    the schedule (no coordinated omission), so under overload the two differ.
  * ghz parses every response (dynamic protobuf); ours does not.

ghz is installed by `clients/loadtest/install_ghz.sh` (go install, pinned version) into
clients/loadtest/bin/ (gitignored).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .gen import pools_to_json
from .scenario import RPC_NAMES, SERVICE
from .stats import STATUS_NUMBERS, Samples

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GHZ_VERSION = "v0.121.0"
GHZ_BIN = HERE / "bin" / "ghz"
INSTALL_SCRIPT = HERE / "install_ghz.sh"
PROTO = REPO / "proto" / "segsrv" / "v1" / "segsrv.proto"

# ghz reports codes.Code.String(): "OK", "Unimplemented", ... -> grpc.StatusCode names
GO_CODE_NAMES = {
    "OK": "OK", "Canceled": "CANCELLED", "Unknown": "UNKNOWN", "InvalidArgument": "INVALID_ARGUMENT",
    "DeadlineExceeded": "DEADLINE_EXCEEDED", "NotFound": "NOT_FOUND", "AlreadyExists": "ALREADY_EXISTS",
    "PermissionDenied": "PERMISSION_DENIED", "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION", "Aborted": "ABORTED", "OutOfRange": "OUT_OF_RANGE",
    "Unimplemented": "UNIMPLEMENTED", "Internal": "INTERNAL", "Unavailable": "UNAVAILABLE",
    "DataLoss": "DATA_LOSS", "Unauthenticated": "UNAUTHENTICATED",
}


class GhzError(RuntimeError):
    pass


def find_ghz(explicit: str | None = None, *, install: bool = True, progress=None) -> Path:
    """The ghz binary: `explicit`, else clients/loadtest/bin/ghz (installed on first use if Go is there)."""
    if explicit:
        p = Path(explicit)
        if not p.exists():
            raise GhzError(f"ghz binary {p} does not exist")
        return p
    if GHZ_BIN.exists():
        return GHZ_BIN
    if install and shutil.which("go"):
        if progress:
            progress(f"installing ghz {GHZ_VERSION} into {GHZ_BIN.parent} (go install; once)")
        r = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
        if r.returncode != 0 or not GHZ_BIN.exists():
            raise GhzError(f"installing ghz failed:\n{r.stderr[-2000:]}")
        return GHZ_BIN
    raise GhzError(f"ghz not found at {GHZ_BIN}: run bash {INSTALL_SCRIPT.relative_to(REPO)} (needs Go)")


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_go_time(s: str) -> float:
    """RFC 3339 with up to nanoseconds (Go's time.Time JSON) -> Unix seconds."""
    import datetime as dt

    m = _TS.match(s)
    if not m:
        raise GhzError(f"cannot parse ghz timestamp {s!r}")
    base, frac, tz = m.groups()
    tz = "+00:00" if tz == "Z" else tz
    whole = dt.datetime.fromisoformat(base + tz).timestamp()
    return whole + (int(frac) / 10 ** len(frac) if frac else 0.0)


def split_integer(total: int, parts: dict[str, float], minimum: int = 1) -> dict[str, int]:
    """`total` split in proportion to `parts` (largest remainders), each at least `minimum`."""
    weight = sum(parts.values())
    if weight <= 0:
        parts, weight = {k: 1.0 for k in parts}, float(len(parts))
    exact = {k: total * v / weight for k, v in parts.items()}
    out = {k: max(minimum, int(x)) for k, x in exact.items()}
    rest = sorted(parts, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    i = 0
    while sum(out.values()) < total and rest:
        out[rest[i % len(rest)]] += 1
        i += 1
    return out


def method_loads(shares: dict[str, float], *, mode: str, rate: float, concurrency: int, connections: int,
                 mean_latency_ms: dict[str, float] | None = None) -> dict[str, dict]:
    """Per method: concurrency, rps (open loop), connections.

    Open loop: rps = rate x share. Closed loop: the callers are split by share x mean latency
    when our own run's latencies are known (Little's law: then each method's throughput
    follows the mix), else by share alone (then fast methods get more than their share)."""
    if mode == "closed" and mean_latency_ms and all(mean_latency_ms.get(m) for m in shares):
        conc = split_integer(concurrency, {m: s * mean_latency_ms[m] for m, s in shares.items()})
    else:
        conc = split_integer(concurrency, shares)
    out = {}
    for m, s in shares.items():
        c = conc[m]
        rps = max(1, int(round(rate * s))) if mode == "open" else 0
        out[m] = {"concurrency": c, "rps": rps, "connections": max(1, min(c, int(math.ceil(connections * s))))}
    return out


def ghz_command(ghz: Path, *, addr: str, method: str, data_file: Path, out_file: Path, load: dict,
                duration_s: float, timeout_s: float, async_: bool, metadata_file: Path | None = None) -> list[str]:
    cmd = [str(ghz), "--insecure", "--proto", str(PROTO), "--import-paths", str(REPO / "proto"),
           "--call", f"{SERVICE}/{RPC_NAMES[method]}", "--data-file", str(data_file),
           "-c", str(load["concurrency"]), "--connections", str(load["connections"]),
           "-z", f"{duration_s:g}s", "--duration-stop", "wait", "-t", f"{timeout_s:g}s",
           "--disable-template-functions", "--disable-template-data",
           "-O", "json", "-o", str(out_file)]
    if metadata_file:
        cmd += ["--metadata-file", str(metadata_file)]
    if load["rps"]:
        cmd += ["--rps", str(load["rps"])]
        if async_:
            cmd.append("--async")
    cmd.append(addr)
    return cmd


def run_ghz(*, ghz: Path, addr: str, pools: dict[str, list], shares: dict[str, float], mode: str, rate: float,
            concurrency: int, connections: int, duration_s: float, warmup_s: float, timeout_s: float,
            workdir: Path, progress=None, metadata: dict | None = None,
            mean_latency_ms: dict[str, float] | None = None) -> tuple[Samples, dict]:
    """Run one ghz per method concurrently; returns the merged Samples (warm-up removed) and metadata."""
    say = progress or (lambda m: None)
    workdir.mkdir(parents=True, exist_ok=True)
    data = pools_to_json(pools)
    loads = method_loads(shares, mode=mode, rate=rate, concurrency=concurrency, connections=connections,
                         mean_latency_ms=mean_latency_ms)
    total = warmup_s + duration_s
    md_dir = None
    if metadata:  # a private temporary file: the token stays off the command line and out of workdir
        md_dir = Path(tempfile.mkdtemp(prefix="segsrv-ghz-"))
        md_file = md_dir / "metadata.json"
        md_file.write_text(json.dumps(metadata))
        md_file.chmod(0o600)
    try:
        samples, meta = _run_ghz(ghz, addr, data, loads, shares, total, duration_s, warmup_s, timeout_s, workdir,
                                 say, md_dir / "metadata.json" if md_dir else None)
        meta["split"] = ("rate x share" if mode == "open" else
                         "share x our mean latency" if mean_latency_ms and all(mean_latency_ms.get(m) for m in shares)
                         else "share")
        return samples, meta
    finally:
        if md_dir:
            shutil.rmtree(md_dir, ignore_errors=True)


def _run_ghz(ghz, addr, data, loads, shares, total, duration_s, warmup_s, timeout_s, workdir, say, md_file):
    procs = {}
    for m in shares:
        data_file = workdir / f"data-{m}.json"
        data_file.write_text(json.dumps(data[m]))
        out_file = workdir / f"ghz-{m}.json"
        if out_file.exists():
            out_file.unlink()
        cmd = ghz_command(ghz, addr=addr, method=m, data_file=data_file, out_file=out_file, load=loads[m],
                          duration_s=total, timeout_s=timeout_s, async_=True, metadata_file=md_file)
        (workdir / f"cmd-{m}.txt").write_text(" ".join(cmd) + "\n")
        procs[m] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out_file)
    say("ghz: " + ", ".join(f"{m} c={loads[m]['concurrency']}" + (f" rps={loads[m]['rps']}" if loads[m]["rps"] else "")
                            for m in shares))
    raw = {}
    errors = []
    for m, (p, out_file) in procs.items():
        try:
            _out, err = p.communicate(timeout=total + timeout_s + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            _out, err = p.communicate()
            errors.append(f"{m}: ghz did not finish")
            continue
        if p.returncode != 0 or not out_file.exists():
            errors.append(f"{m}: ghz exited {p.returncode}: {err.strip()[-1500:]}")
            continue
        raw[m] = json.loads(out_file.read_text())
    if errors:
        raise GhzError("; ".join(errors))
    methods = list(shares)
    samples = samples_from_ghz(raw, methods, warmup_s=warmup_s, duration_s=duration_s)
    meta = {
        "ghz_version": GHZ_VERSION,
        "loads": loads,
        "ghz_count": {m: raw[m].get("count") for m in methods},
        "ghz_rps": {m: raw[m].get("rps") for m in methods},
        "details_truncated": {m: len(raw[m].get("details") or []) < (raw[m].get("count") or 0) for m in methods},
        "workdir": str(workdir),
        "cpus": os.cpu_count(),
    }
    return samples, meta


def samples_from_ghz(raw: dict[str, dict], methods: list[str], *, warmup_s: float = 0.0,
                     duration_s: float | None = None) -> Samples:
    """Samples from ghz JSON reports (one per method, with `details`): send time = end timestamp
    minus latency, relative to the earliest send of all; the warm-up window removed."""
    sends = {}
    t0 = math.inf
    for m in methods:
        rows = []
        for d in raw[m].get("details") or []:
            lat = d["latency"] / 1e9
            t_send = parse_go_time(d["timestamp"]) - lat
            rows.append((t_send, lat, d.get("status") or ("OK" if not d.get("error") else "Unknown")))
            t0 = min(t0, t_send)
        sends[m] = rows
    samples = Samples(methods, cap=max(1, sum(len(r) for r in sends.values())))
    for mi, m in enumerate(methods):
        for t_send, lat, status in sends[m]:
            code = STATUS_NUMBERS.get(GO_CODE_NAMES.get(status, "UNKNOWN"), 2)
            samples.add(mi, t_send - t0, lat, code)
    if warmup_s > 0:
        samples = samples.window(warmup_s, warmup_s + (duration_s if duration_s is not None else math.inf))
    return samples
