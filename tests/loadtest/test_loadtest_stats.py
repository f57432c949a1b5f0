"""Percentiles equal numpy's; samples merge, trim and stay bounded with exact counters."""

from __future__ import annotations

import numpy as np
import pytest

from clients.loadtest.stats import Samples, latency_summary, percentile, summarize, timeseries

QS = [0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 100, 1001, 20_000])
@pytest.mark.parametrize("dist", ["lognormal", "ties", "uniform"])
def test_percentile_equals_numpy(n, dist):
    rng = np.random.default_rng(n)
    if dist == "lognormal":
        x = rng.lognormal(-5, 1.2, n)
    elif dist == "ties":
        x = rng.integers(0, 5, n).astype(float) / 1000
    else:
        x = rng.uniform(0, 1, n)
    s = np.sort(x)
    for q in QS:
        assert percentile(s, q) == np.percentile(x, q), (n, dist, q)
    # on a Python list too (what merged samples may be)
    assert percentile(list(s), 99.9) == np.percentile(x, 99.9)


def test_percentile_edges():
    assert np.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_in_ms_matches_numpy():
    rng = np.random.default_rng(3)
    lat = rng.exponential(0.004, 5000)
    s = latency_summary(lat)
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        assert s[name] == round(float(np.percentile(lat, q)) * 1e3, 4)
    assert s["max"] == round(float(lat.max()) * 1e3, 4) and s["min"] == round(float(lat.min()) * 1e3, 4)
    assert latency_summary([])["p50"] is None


def _fill(s: Samples, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        code = 12 if i % 10 == 0 else 0
        s.add(i % 2, i / n * 5.0, float(rng.exponential(0.01)), code)


def test_samples_exact_counters_and_reservoir_beyond_the_cap():
    s = Samples(["relate", "count"], cap=1000)
    _fill(s, 5000)
    assert s.seen == 5000 and len(s.latency) == 1000 and s.sampled
    assert sum(s.counts.values()) == 5000
    assert s.counts[(0, 12)] == 500 and s.counts[(0, 0)] == 2000 and s.counts[(1, 0)] == 2500
    summ = summarize(s, 5.0)
    assert summ["overall"]["requests"] == 5000 and summ["overall"]["errors_by_code"] == {"UNIMPLEMENTED": 500}
    assert summ["methods"]["relate"]["throughput_rps"] == 500.0
    # the reservoir is a fair sample: roughly the right method mix
    m = np.frombuffer(s.method, dtype=np.uint8)
    assert 400 < (m == 0).sum() < 600


def test_merge_and_payload_round_trip():
    parts = []
    for k in range(3):
        s = Samples(["relate", "count"])
        _fill(s, 300, seed=k)
        parts.append(Samples.from_payload(s.to_payload()))
    merged = Samples.merge(parts)
    assert merged.seen == 900 and len(merged.latency) == 900
    all_lat = np.concatenate([np.asarray(p.latency) for p in parts])
    assert summarize(merged, 5.0)["overall"]["latency_ms"]["p99"] == round(float(np.percentile(all_lat, 99)) * 1e3, 4)
    assert merged.max_latency[0] == max(p.max_latency[0] for p in parts)
    with pytest.raises(ValueError):
        Samples.merge([parts[0], Samples(["count"])])


def test_window_removes_warmup_and_shifts_time():
    s = Samples(["count"])
    for i in range(100):
        s.add(0, i * 0.1, 0.001, 0)   # 10 s at 10/s
    w = s.window(2.0, 7.0)
    assert w.seen == 50 and min(w.t_send) == pytest.approx(0.0) and max(w.t_send) < 5.0
    ts = timeseries(w, 5.0)
    assert ts["t"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sum(ts["throughput_rps"]["count"]) == 50
    assert ts["throughput_rps"]["overall"] == ts["throughput_rps"]["count"]


def test_timeseries_counts_add_up_and_latency_per_bin():
    s = Samples(["relate", "count"])
    _fill(s, 1000)
    ts = timeseries(s, 5.0, 1.0)
    total = sum(ts["throughput_rps"]["overall"])
    # completions after the window end (t_send + latency >= 5) fall outside
    assert 990 <= total <= 1000
    assert sum(ts["errors_per_s"]["relate"]) <= 100
    assert all(v is not None for v in ts["latency_ms"]["relate"]["p50"])
    half = timeseries(s, 5.0, 0.5)
    assert len(half["t"]) == 10 and sum(half["throughput_rps"]["overall"]) * 0.5 == pytest.approx(total)
