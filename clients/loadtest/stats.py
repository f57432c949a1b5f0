"""Samples of a load test and their statistics: percentiles, per-method summaries, time series.

A `Samples` holds one row per request: method index, send time (seconds since the common
start; for open-loop runs the *scheduled* send time), latency (seconds, measured from that
send time), gRPC status code (its number) and send lag (actual minus scheduled send time;
0 for closed-loop). It keeps at most `cap` rows; past the cap it keeps a uniform reservoir
sample (Algorithm R) of the latencies while the counters (requests and errors per method
and code, per-second completions and errors, max latency) stay exact.

`percentile(sorted, q)` is numpy's default ("linear") method, written out so that it is
checked against numpy by the tests and can run on samples merged from several processes.
"""

from __future__ import annotations

import math
import random
from array import array
from dataclasses import dataclass, field

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
DEFAULT_SAMPLE_CAP = 2_000_000  # per process; 25 bytes a row (~50 MB)

# grpc.StatusCode names by number (without importing grpc here)
STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
STATUS_NUMBERS = {v: k for k, v in STATUS_NAMES.items()}


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's _lerp: a + t (b - a), computed from the nearer end for accuracy."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def percentile(sorted_values, q: float) -> float:
    """The q-th percentile (0..100) of ascending values, numpy's "linear" method; nan when empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    h = (n - 1) * (q / 100.0)
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    return _lerp(a, b, h - lo)


def latency_summary(latencies_s, *, exact_max: float | None = None) -> dict:
    """min / mean / p50 / p90 / p99 / p99.9 / max in milliseconds of latencies in seconds."""
    import numpy as np

    arr = np.sort(np.asarray(latencies_s, dtype=np.float64))
    out = {"min": None, "mean": None}
    if arr.size == 0:
        out.update({k: None for k in PERCENTILES})
        out["max"] = None if exact_max is None else round(exact_max * 1e3, 4)
        return out
    out["min"] = round(float(arr[0]) * 1e3, 4)
    out["mean"] = round(float(arr.mean()) * 1e3, 4)
    for name, q in PERCENTILES.items():
        out[name] = round(percentile(arr, q) * 1e3, 4)
    mx = float(arr[-1]) if exact_max is None else max(exact_max, float(arr[-1]))
    out["max"] = round(mx * 1e3, 4)
    return out


@dataclass
class Samples:
    """The requests of one run (or of several processes merged)."""

    methods: list[str]
    cap: int = DEFAULT_SAMPLE_CAP
    seed: int = 0
    method: array = field(default_factory=lambda: array("B"))
    t_send: array = field(default_factory=lambda: array("d"))
    latency: array = field(default_factory=lambda: array("d"))
    code: array = field(default_factory=lambda: array("B"))
    lag: array = field(default_factory=lambda: array("d"))
    # exact counters, whatever the cap
    seen: int = 0
    counts: dict = field(default_factory=dict)       # (method index, code) -> requests
    max_latency: dict = field(default_factory=dict)  # method index -> seconds
    bins: dict = field(default_factory=dict)         # (second of completion, method index, ok?) -> requests

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def add(self, m: int, t_send: float, latency: float, code: int, lag: float = 0.0) -> None:
        key = (m, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        if latency > self.max_latency.get(m, -1.0):
            self.max_latency[m] = latency
        bkey = (int(t_send + latency), m, code == 0)
        self.bins[bkey] = self.bins.get(bkey, 0) + 1
        n = self.seen
        self.seen = n + 1
        if n < self.cap:
            self.method.append(m)
            self.t_send.append(t_send)
            self.latency.append(latency)
            self.code.append(code)
            self.lag.append(lag)
        else:  # reservoir: keep each of the n+1 rows seen so far with probability cap/(n+1)
            j = self._rng.randrange(n + 1)
            if j < self.cap:
                self.method[j] = m
                self.t_send[j] = t_send
                self.latency[j] = latency
                self.code[j] = code
                self.lag[j] = lag

    @property
    def sampled(self) -> bool:
        return self.seen > len(self.latency)

    # --- transport between processes ----------------------------------------------

    def to_payload(self) -> dict:
        return {
            "methods": list(self.methods), "seen": self.seen,
            "method": self.method.tobytes(), "t_send": self.t_send.tobytes(), "latency": self.latency.tobytes(),
            "code": self.code.tobytes(), "lag": self.lag.tobytes(),
            "counts": dict(self.counts), "max_latency": dict(self.max_latency), "bins": dict(self.bins),
        }

    @classmethod
    def from_payload(cls, payload: dict, cap: int | None = None) -> "Samples":
        s = cls(list(payload["methods"]), cap=cap if cap is not None else max(DEFAULT_SAMPLE_CAP, payload["seen"]))
        for name, typecode in (("method", "B"), ("t_send", "d"), ("latency", "d"), ("code", "B"), ("lag", "d")):
            a = array(typecode)
            a.frombytes(payload[name])
            setattr(s, name, a)
        s.seen = payload["seen"]
        s.counts = dict(payload["counts"])
        s.max_latency = dict(payload["max_latency"])
        s.bins = dict(payload["bins"])
        return s

    @classmethod
    def merge(cls, parts: list["Samples"]) -> "Samples":
        """All rows of every part (each part already bounded by its own cap), counters summed."""
        if not parts:
            raise ValueError("nothing to merge")
        methods = parts[0].methods
        out = cls(list(methods), cap=sum(len(p.latency) for p in parts) or 1)
        for p in parts:
            if p.methods != methods:
                raise ValueError("cannot merge samples of different method lists")
            out.method.extend(p.method)
            out.t_send.extend(p.t_send)
            out.latency.extend(p.latency)
            out.code.extend(p.code)
            out.lag.extend(p.lag)
            out.seen += p.seen
            for k, v in p.counts.items():
                out.counts[k] = out.counts.get(k, 0) + v
            for k, v in p.max_latency.items():
                out.max_latency[k] = max(v, out.max_latency.get(k, v))
            for k, v in p.bins.items():
                out.bins[k] = out.bins.get(k, 0) + v
        return out

    def window(self, start: float, end: float) -> "Samples":
        """Rows sent within [start, end), times shifted so that `start` is 0 (warm-up removal).

        Counters are recomputed from the kept rows, so they are exact only when nothing was
        sampled away; callers that trim a sampled run get sampled counters (flagged by `sampled`)."""
        out = Samples(list(self.methods), cap=len(self.latency) or 1)
        sampled = self.sampled
        scale = self.seen / max(1, len(self.latency)) if sampled else 1.0
        for i in range(len(self.latency)):
            t = self.t_send[i]
            if start <= t < end:
                out.add(self.method[i], t - start, self.latency[i], self.code[i], self.lag[i])
        if sampled:  # scale the counters back up to estimates of the true counts
            out.counts = {k: int(round(v * scale)) for k, v in out.counts.items()}
            out.bins = {k: int(round(v * scale)) for k, v in out.bins.items()}
            out.seen = int(round(out.seen * scale))
        return out

    # --- numpy views --------------------------------------------------------------

    def arrays(self):
        import numpy as np

        return (np.frombuffer(self.method, dtype=np.uint8) if len(self.method) else np.zeros(0, np.uint8),
                np.asarray(self.t_send, dtype=np.float64), np.asarray(self.latency, dtype=np.float64),
                np.frombuffer(self.code, dtype=np.uint8) if len(self.code) else np.zeros(0, np.uint8),
                np.asarray(self.lag, dtype=np.float64))


def summarize(samples: Samples, duration_s: float) -> dict:
    """{"overall": {...}, "methods": {name: {...}}}: requests, ok, errors, throughput, latency, errors by code."""
    import numpy as np

    m_arr, _t, lat, _c, _lag = samples.arrays()
    methods = {}
    total_codes: dict[str, int] = {}
    for mi, name in enumerate(samples.methods):
        codes = {STATUS_NAMES.get(c, str(c)): n for (m, c), n in sorted(samples.counts.items()) if m == mi}
        requests = sum(codes.values())
        ok = codes.get("OK", 0)
        errors = {k: v for k, v in codes.items() if k != "OK"}
        for k, v in codes.items():
            total_codes[k] = total_codes.get(k, 0) + v
        methods[name] = {
            "requests": requests,
            "ok": ok,
            "errors": requests - ok,
            "throughput_rps": round(requests / duration_s, 3) if duration_s > 0 else None,
            "ok_rps": round(ok / duration_s, 3) if duration_s > 0 else None,
            "latency_ms": latency_summary(lat[m_arr == mi], exact_max=samples.max_latency.get(mi)),
            "errors_by_code": errors,
        }
    requests = sum(total_codes.values())
    ok = total_codes.get("OK", 0)
    overall = {
        "requests": requests,
        "ok": ok,
        "errors": requests - ok,
        "throughput_rps": round(requests / duration_s, 3) if duration_s > 0 else None,
        "ok_rps": round(ok / duration_s, 3) if duration_s > 0 else None,
        "latency_ms": latency_summary(lat, exact_max=max(samples.max_latency.values(), default=None)),
        "errors_by_code": {k: v for k, v in total_codes.items() if k != "OK"},
    }
    return {"overall": overall, "methods": methods}


def timeseries(samples: Samples, duration_s: float, interval_s: float = 1.0) -> dict:
    """Per-interval throughput (completions, exact) and latency p50/p99 (by send time) per method."""
    import numpy as np

    n_bins = max(1, int(math.ceil(duration_s / interval_s)))
    t = [round(i * interval_s, 6) for i in range(n_bins)]
    per = int(round(interval_s)) if interval_s >= 1 else None
    thr = {name: [0.0] * n_bins for name in samples.methods}
    err = {name: [0.0] * n_bins for name in samples.methods}
    if per:  # exact per-second counters, regrouped
        for (sec, mi, ok), n in samples.bins.items():
            b = sec // per
            if 0 <= b < n_bins:
                thr[samples.methods[mi]][b] += n
                if not ok:
                    err[samples.methods[mi]][b] += n
    m_arr, t_send, lat, code, _lag = samples.arrays()
    if not per:
        done = t_send + lat
        for mi, name in enumerate(samples.methods):
            sel = m_arr == mi
            idx = np.floor(done[sel] / interval_s).astype(np.int64)
            ok = code[sel] == 0
            keep = (idx >= 0) & (idx < n_bins)
            thr[name] = np.bincount(idx[keep], minlength=n_bins)[:n_bins].astype(float).tolist()
            err[name] = np.bincount(idx[keep & ~ok], minlength=n_bins)[:n_bins].astype(float).tolist()
    overall = [sum(thr[name][i] for name in samples.methods) for i in range(n_bins)]
    lat_series = {}
    for mi, name in enumerate(samples.methods):
        sel = m_arr == mi
        idx = np.floor(t_send[sel] / interval_s).astype(np.int64)
        lm = lat[sel]
        order = np.argsort(idx, kind="stable")
        idx, lm = idx[order], lm[order]
        bounds = np.searchsorted(idx, np.arange(n_bins + 1))
        p50, p99 = [], []
        for b in range(n_bins):
            chunk = np.sort(lm[bounds[b]:bounds[b + 1]])
            p50.append(None if chunk.size == 0 else round(percentile(chunk, 50) * 1e3, 4))
            p99.append(None if chunk.size == 0 else round(percentile(chunk, 99) * 1e3, 4))
        lat_series[name] = {"p50": p50, "p99": p99}
    scale = 1.0 / interval_s
    return {
        "interval_s": interval_s,
        "t": t,
        "throughput_rps": {"overall": [round(v * scale, 3) for v in overall],
                           **{k: [round(v * scale, 3) for v in vs] for k, vs in thr.items()}},
        "errors_per_s": {k: [round(v * scale, 3) for v in vs] for k, vs in err.items()},
        "latency_ms": lat_series,
    }
