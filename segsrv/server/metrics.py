"""Prometheus metrics on a separate HTTP port (``--metrics-port``, ``GET /metrics``).

Each server has its own ``CollectorRegistry`` (several servers may run in one
process, e.g. in tests). In multi-process mode every worker serves its own
metrics on ``metrics_port + worker index`` (worker 0 on the port given, worker
1 on the next, ...): scrape every one (Prometheus adds the ``instance``
label); sum them for the server's totals. No shared multiprocess directory is
needed and a restarted worker simply starts its counters from zero, which
Prometheus' ``rate()`` handles as a counter reset.

Metrics (``method`` is the short name, e.g. ``Count``; only
SegmentationService calls are counted, not health or reflection):

- ``segsrv_requests_total{method, code}``: RPCs finished, by status code
  (calls refused by the concurrency limit are answered by gRPC before any
  segsrv code runs and are not counted here; see
  ``segsrv_requests_in_flight`` against ``segsrv_max_concurrent_rpcs``);
- ``segsrv_request_duration_seconds{method}``: histogram of handler time;
- ``segsrv_requests_in_flight``: RPCs being handled now;
- ``segsrv_max_concurrent_rpcs``: the configured limit;
- ``segsrv_snapshot_info{snapshot, version, state}``: 1 per served version
  (``state`` current or retired);
- ``segsrv_snapshot_loaded_timestamp_seconds{snapshot}``: when the current
  version was swapped in; ``segsrv_snapshot_age_seconds{snapshot}``: seconds
  since the current version was built (its manifest's modification time);
- ``segsrv_snapshot_refs{snapshot, version}``: RPCs holding each version;
- ``segsrv_snapshot_reloads_total{snapshot, result}``: load attempts
  (``success`` / ``failure``; the first load counts too); ``snapshot`` is the
  directory name for a version that never loaded;
- the standard ``process_*`` metrics (CPU, memory, open files).

The HTTP endpoint itself is ``metrics_http.py`` (one thread, bounded connections).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .metrics_http import MetricsHttp
from .registry import SnapshotRegistry

log = logging.getLogger("segsrv.server")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _SnapshotCollector:
    """Snapshot state, read from the registry at scrape time."""

    def __init__(self, snapshots: SnapshotRegistry):
        self.snapshots = snapshots

    def collect(self):
        info = GaugeMetricFamily("segsrv_snapshot_info", "Served snapshot versions (1 each)",
                                 labels=["snapshot", "version", "state"])
        loaded = GaugeMetricFamily("segsrv_snapshot_loaded_timestamp_seconds",
                                   "Unix time the current version was swapped in", labels=["snapshot"])
        age = GaugeMetricFamily("segsrv_snapshot_age_seconds",
                                "Seconds since the current version was built (manifest mtime)", labels=["snapshot"])
        refs = GaugeMetricFamily("segsrv_snapshot_refs", "RPCs holding each served version",
                                 labels=["snapshot", "version"])
        shards = GaugeMetricFamily("segsrv_snapshot_shards", "Shards of each served sharded build",
                                   labels=["snapshot", "version"])
        now = time.time()
        for row in self.snapshots.describe():
            if row["shards"] is not None:
                shards.add_metric([row["name"], row["version"]], row["shards"])
            info.add_metric([row["name"], row["version"], row["state"]], 1)
            refs.add_metric([row["name"], row["version"]], row["refs"])
            if row["state"] == "current":
                loaded.add_metric([row["name"]], row["loaded_at"])
                if row["published_at"] is not None:
                    age.add_metric([row["name"]], max(0.0, now - row["published_at"]))
        reloads = CounterMetricFamily("segsrv_snapshot_reloads", "Snapshot version load attempts",
                                      labels=["snapshot", "result"])
        for (name, result), n in sorted(self.snapshots.load_counts().items()):
            reloads.add_metric([name, result], n)
        return [info, loaded, age, refs, shards, reloads]


class Metrics:
    """The metrics of one server; `serve_http(host, port)` exposes them."""

    def __init__(self, snapshots: SnapshotRegistry | None = None, *, max_concurrent_rpcs: int | None = None,
                 process_metrics: bool = True):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("segsrv_requests", "SegmentationService RPCs finished", ["method", "code"],
                                registry=self.registry)
        self.latency = Histogram("segsrv_request_duration_seconds", "SegmentationService handler time",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("segsrv_requests_in_flight", "SegmentationService RPCs being handled",
                               registry=self.registry)
        limit = Gauge("segsrv_max_concurrent_rpcs", "Concurrent RPC limit (more: RESOURCE_EXHAUSTED)",
                      registry=self.registry)
        if max_concurrent_rpcs is not None:
            limit.set(max_concurrent_rpcs)
        if snapshots is not None:
            self.registry.register(_SnapshotCollector(snapshots))
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self._http = MetricsHttp(self.exposition, CONTENT_TYPE_LATEST)

    # -- recording (called by the request pipeline) ------------------------------------

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.dec()
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- HTTP ----------------------------------------------------------------------------

    def bind_http(self, host: str, port: int) -> int:
        """Bind the /metrics endpoint (not serving yet); returns the port (OSError when busy)."""
        return self._http.bind(host, port)

    def start_http(self) -> None:
        self._http.start()

    def stop_http(self) -> None:
        self._http.stop()
