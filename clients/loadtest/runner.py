"""Plan a load test, run it over several processes, merge their samples.

    from clients.loadtest.runner import LoadConfig, prepare, run_load

    cfg = LoadConfig(addr="127.0.0.1:50051", mode="closed", concurrency=8, duration_s=10)
    plan = prepare(cfg, load_scenario("clients/loadtest/scenarios/default.toml"))
    result = run_load(plan)          # .samples (merged, warm-up removed), .meta

With processes == 1 (and inline=True, the default) the load runs in this process;
otherwise every process is started with the "spawn" method (no gRPC state crosses a fork),
connects its own channels, and all start together at a wall-clock time the parent picks
once every process is connected.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field

from .gen import Catalog, RequestGenerator, fetch_catalog, rpc_path
from .scenario import Scenario
from .stats import DEFAULT_SAMPLE_CAP, Samples
from .worker import Job, process_main, run_worker


@dataclass
class LoadConfig:
    addr: str = "127.0.0.1:50051"
    mode: str = "closed"          # "open" (rate) or "closed" (concurrency)
    rate: float = 0.0             # requests/s, all processes together (open)
    concurrency: int = 16         # callers, all processes together (closed)
    duration_s: float = 10.0
    warmup_s: float = 0.0
    processes: int = 1
    connections: int = 1          # per process
    backend: str = "aio"
    timeout_s: float | None = None  # None: the scenario's
    max_inflight: int = 10_000    # per process (open)
    sample_cap: int = DEFAULT_SAMPLE_CAP
    inline: bool = True           # processes == 1: run in this process
    metadata: tuple = ()          # sent with every request (e.g. the bearer token)


@dataclass
class Plan:
    config: LoadConfig
    scenario: Scenario
    catalog: Catalog
    methods: list[str]
    pools: dict[str, list]            # proto messages
    jobs: list[Job] = field(default_factory=list)


@dataclass
class LoadResult:
    samples: Samples
    meta: dict


def prepare(config: LoadConfig, scenario: Scenario, catalog: Catalog | None = None) -> Plan:
    """Fetch the snapshot's fields (unless given), draw the request pools, split the load into jobs."""
    if catalog is None:
        catalog = fetch_catalog(config.addr, snapshot=scenario.snapshot, universe=scenario.universe,
                                metadata=config.metadata)
    gen = RequestGenerator(scenario, catalog)
    pools = gen.build_pools()
    weights = scenario.weights
    methods = list(weights)
    blobs = {m: [r.SerializeToString() for r in reqs] for m, reqs in pools.items()}
    timeout = config.timeout_s if config.timeout_s is not None else scenario.timeout_s
    P = config.processes
    jobs = []
    for i in range(P):
        job = Job(index=i, addr=config.addr, methods=methods, weights=[weights[m] for m in methods],
                  pools=blobs, paths={m: rpc_path(m) for m in methods}, mode=config.mode,
                  total_s=config.warmup_s + config.duration_s, connections=config.connections,
                  backend=config.backend, timeout_s=timeout, max_inflight=config.max_inflight,
                  seed=scenario.seed, sample_cap=config.sample_cap, metadata=tuple(config.metadata))
        if config.mode == "open":
            job.rate = config.rate / P
            # process i's requests fall between process i-1's: a fixed timeline across processes
            job.offset_s = i / config.rate
        else:
            job.concurrency = config.concurrency // P + (1 if i < config.concurrency % P else 0)
            if job.concurrency == 0:
                continue
        jobs.append(job)
    return Plan(config, scenario, catalog, methods, pools, jobs)


def _inline(job: Job) -> dict:
    def start_at(ready):
        ready()
        return time.perf_counter()

    return run_worker(job, lambda: None, start_at)


def run_load(plan: Plan, *, progress=None) -> LoadResult:
    """Run the plan's jobs; returns the merged samples (warm-up removed) and run metadata."""
    cfg = plan.config
    say = progress or (lambda msg: None)
    t_wall = time.time()
    if len(plan.jobs) == 1 and cfg.inline:
        say(f"running 1 process inline ({cfg.backend}), {cfg.connections} connection(s)")
        results = [_inline(plan.jobs[0])]
        started_at = t_wall
    else:
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        for job in plan.jobs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=process_main, args=(job, child), name=f"loadtest-{job.index}", daemon=True)
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        say(f"started {len(procs)} processes ({cfg.backend}), {cfg.connections} connection(s) each")
        try:
            deadline = time.monotonic() + 60
            for c in conns:  # every process connected
                if not c.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("a load process did not become ready within 60 s")
                msg = c.recv()
                if msg != "ready":
                    raise RuntimeError(f"load process failed before start: {msg[1] if isinstance(msg, tuple) else msg}")
            started_at = time.time() + 0.25
            for c in conns:
                c.send(started_at)
            results = []
            wait_s = cfg.warmup_s + cfg.duration_s + (cfg.timeout_s or plan.scenario.timeout_s) + 120
            for c in conns:
                if not c.poll(wait_s):
                    raise RuntimeError("a load process did not report within the expected time")
                status, payload = c.recv()
                if status != "ok":
                    raise RuntimeError(f"load process failed: {payload}")
                results.append(payload)
        except BaseException:
            for c in conns:
                try:
                    c.send("abort")
                except Exception:
                    pass
            for p in procs:
                p.join(2)
                if p.is_alive():
                    p.terminate()
            raise
        for p in procs:
            p.join(10)
    parts = [Samples.from_payload(r["samples"]) for r in results]
    merged = Samples.merge(parts)
    if cfg.warmup_s > 0:
        merged = merged.window(cfg.warmup_s, cfg.warmup_s + cfg.duration_s)
    metas = [r["meta"] for r in sorted(results, key=lambda r: r["index"])]
    meta = {
        "started_at": started_at,
        "processes": len(metas),
        "cpu_s": [round(m["cpu_s"], 3) for m in metas],
        "wall_s": [round(m["wall_s"], 3) for m in metas],
        "late_sends": sum(m.get("late_sends", 0) for m in metas),
        "sampled": any(p.sampled for p in parts),
    }
    return LoadResult(merged, meta)
