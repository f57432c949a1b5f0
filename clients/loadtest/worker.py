"""One load-generating process: its own channels, its share of the load, its samples.

`run_worker(job, ready, start_at)` connects `job.connections` channels (each its own TCP
connection: grpc.use_local_subchannel_pool), reports ready, waits for the common start
time (wall clock, shared by every process), sends for `job.total_s` seconds and returns a
Samples payload.

Requests are sent as pre-serialised bytes and responses are not parsed (the harness
measures the server, not protobuf in the client). Each request: a method drawn by weight,
then a random request of that method's pool, on the next channel (round robin).

Modes
  open     `job.rate` requests per second on a fixed timeline: request i is due at
           offset + i / rate; its latency runs from that due time, so a slow server (or a
           late generator) shows up as latency instead of silently lowering the rate
           (no coordinated omission). `lag` records how late each send actually was.
           At most `job.max_inflight` requests are outstanding; past that the schedule
           waits (the wait counts in the latency).
  closed   `job.concurrency` callers, each sending its next request when the previous
           one is answered; latency from the actual send.

Backends
  aio      grpc.aio: one event loop; a task per request (open) or per caller (closed)
  threads  the sync API: a thread per caller (closed); future() + done-callbacks (open)
"""

from __future__ import annotations

import os
import random
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from .stats import Samples

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass
class Job:
    index: int
    addr: str
    methods: list[str]               # method names, index = the method number in the samples
    weights: list[float]
    pools: dict[str, list[bytes]]    # serialised requests per method
    paths: dict[str, str]            # gRPC method path per method
    mode: str                        # "open" | "closed"
    total_s: float                   # warm-up + measured duration
    rate: float = 0.0                # this process's requests/s (open)
    concurrency: int = 0             # this process's callers (closed)
    offset_s: float = 0.0            # first due time of this process (open): interleaves processes
    connections: int = 1
    backend: str = "aio"
    timeout_s: float = 10.0
    max_inflight: int = 10_000
    seed: int = 0
    sample_cap: int = 2_000_000
    connect_timeout_s: float = 15.0
    metadata: tuple = ()             # e.g. (("authorization", "Bearer ..."),)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Picker:
    """Seeded draws of (method index, request bytes)."""

    def __init__(self, job: Job):
        self.rng = random.Random(f"{job.seed}:proc{job.index}")
        self.cum = list(accumulate(job.weights))
        self.total = self.cum[-1]
        self.pools = [job.pools[m] for m in job.methods]

    def __call__(self):
        r = self.rng.random() * self.total
        mi = min(bisect_right(self.cum, r), len(self.cum) - 1)
        pool = self.pools[mi]
        return mi, pool[self.rng.randrange(len(pool))]


# --- grpc.aio -----------------------------------------------------------------------------


async def _aio_main(job: Job, ready, start_at) -> tuple[Samples, dict]:
    import asyncio

    import grpc

    samples = Samples(job.methods, cap=job.sample_cap, seed=job.index)
    channels = [grpc.aio.insecure_channel(job.addr, options=CHANNEL_OPTIONS) for _ in range(job.connections)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), job.connect_timeout_s)
    except asyncio.TimeoutError:
        for ch in channels:
            await ch.close()
        raise ConnectionError(f"cannot connect to {job.addr} within {job.connect_timeout_s:g} s") from None
    # calls[method][channel]: bytes in, bytes out
    calls = [[ch.unary_unary(job.paths[m]) for ch in channels] for m in job.methods]
    n_ch = len(channels)
    pick = _Picker(job)
    timeout = job.timeout_s
    perf = time.perf_counter
    add = samples.add
    md = tuple(job.metadata) or None

    t0 = start_at(ready)                     # perf_counter value of the common start
    end = t0 + job.total_s
    cpu0 = _cpu_seconds()
    meta = {"late_sends": 0}

    if job.mode == "closed":
        async def caller(k: int):
            ch = k % n_ch
            while True:
                t_send = perf()
                if t_send >= end:
                    return
                mi, body = pick()
                try:
                    await calls[mi][ch](body, timeout=timeout, metadata=md)
                    code = 0
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().value[0]
                done = perf()
                add(mi, t_send - t0, done - t_send, code)

        await asyncio.gather(*(caller(k) for k in range(job.concurrency)))
    else:
        inflight = 0
        idle = asyncio.Event()
        idle.set()
        room = asyncio.Event()
        room.set()
        late_threshold = 0.001

        async def one(mi: int, body: bytes, ch: int, due: float, sent: float):
            nonlocal inflight
            try:
                await calls[mi][ch](body, timeout=timeout, metadata=md)
                code = 0
            except grpc.aio.AioRpcError as exc:
                code = exc.code().value[0]
            except asyncio.CancelledError:
                code = 1
            except Exception:  # never leave the in-flight count behind
                code = 2
            done = perf()
            add(mi, due - t0, done - due, code, sent - due)
            inflight -= 1
            if inflight < job.max_inflight:
                room.set()
            if inflight == 0:
                idle.set()

        interval = 1.0 / job.rate
        i = 0
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            due = t0 + job.offset_s + i * interval
            if due >= end:
                break
            now = perf()
            if due > now:
                await asyncio.sleep(due - now)
            if inflight >= job.max_inflight:
                room.clear()
                await room.wait()
            mi, body = pick()
            sent = perf()
            if sent - due > late_threshold:
                meta["late_sends"] += 1
            inflight += 1
            idle.clear()
            t = loop.create_task(one(mi, body, i % n_ch, due, sent))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        if inflight:
            try:
                await asyncio.wait_for(idle.wait(), timeout + 5.0)
            except asyncio.TimeoutError:
                for t in list(tasks):
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    meta["cpu_s"] = _cpu_seconds() - cpu0
    meta["wall_s"] = perf() - t0
    for ch in channels:
        await ch.close()
    return samples, meta


def _run_aio(job: Job, ready, start_at):
    import asyncio

    return asyncio.run(_aio_main(job, ready, start_at))


# --- threads (sync API) --------------------------------------------------------------------


def _run_threads(job: Job, ready, start_at):
    import grpc

    samples = Samples(job.methods, cap=job.sample_cap, seed=job.index)
    channels = [grpc.insecure_channel(job.addr, options=CHANNEL_OPTIONS) for _ in range(job.connections)]
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=job.connect_timeout_s)
    except grpc.FutureTimeoutError:
        for ch in channels:
            ch.close()
        raise ConnectionError(f"cannot connect to {job.addr} within {job.connect_timeout_s:g} s") from None
    calls = [[ch.unary_unary(job.paths[m]) for ch in channels] for m in job.methods]
    n_ch = len(channels)
    pick = _Picker(job)
    lock = threading.Lock()
    timeout = job.timeout_s
    perf = time.perf_counter
    add = samples.add
    md = tuple(job.metadata) or None
    meta = {"late_sends": 0}

    t0 = start_at(ready)
    end = t0 + job.total_s
    cpu0 = _cpu_seconds()

    if job.mode == "closed":
        def caller(k: int):
            ch = k % n_ch
            while True:
                t_send = perf()
                if t_send >= end:
                    return
                with lock:
                    mi, body = pick()
                try:
                    calls[mi][ch](body, timeout=timeout, metadata=md)
                    code = 0
                except grpc.RpcError as exc:
                    code = exc.code().value[0]
                done = perf()
                with lock:
                    add(mi, t_send - t0, done - t_send, code)

        threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(job.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        inflight = 0
        cond = threading.Condition(lock)

        def finish(fut, mi, due, sent):
            nonlocal inflight
            try:
                exc = fut.exception()
                code = 0 if exc is None else exc.code().value[0]
            except Exception:  # cancelled, or not an RpcError
                code = 2

            done = perf()
            with cond:
                add(mi, due - t0, done - due, code, sent - due)
                inflight -= 1
                cond.notify_all()

        interval = 1.0 / job.rate
        i = 0
        while True:
            due = t0 + job.offset_s + i * interval
            if due >= end:
                break
            now = perf()
            if due > now:
                time.sleep(due - now)
            with cond:
                while inflight >= job.max_inflight:
                    cond.wait()
                mi, body = pick()
                inflight += 1
            sent = perf()
            if sent - due > 0.001:
                meta["late_sends"] += 1
            fut = calls[mi][i % n_ch].future(body, timeout=timeout, metadata=md)
            fut.add_done_callback(lambda f, mi=mi, due=due, sent=sent: finish(f, mi, due, sent))
            i += 1
        with cond:
            cond.wait_for(lambda: inflight == 0, timeout + 5.0)
    meta["cpu_s"] = _cpu_seconds() - cpu0
    meta["wall_s"] = perf() - t0
    for ch in channels:
        ch.close()
    with lock:
        return samples, meta


# --- entry points ----------------------------------------------------------------------------


def run_worker(job: Job, ready, start_at) -> dict:
    """Run one job in this process. `ready()` is called once connected; `start_at(ready)` blocks
    until the common start and returns it as a perf_counter value."""
    runner = _run_aio if job.backend == "aio" else _run_threads
    samples, meta = runner(job, ready, start_at)
    return {"index": job.index, "samples": samples.to_payload(), "meta": meta}


def process_main(job: Job, conn) -> None:
    """multiprocessing target: talks to the parent over a Pipe (ready -> start time -> result)."""
    try:
        def start_at(ready):
            ready()
            msg = conn.recv()
            if msg == "abort":
                raise SystemExit(0)
            wall_start = float(msg)
            # the common start, in this process's perf_counter
            t0 = time.perf_counter() + (wall_start - time.time())
            delay = t0 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            return t0

        result = run_worker(job, lambda: conn.send("ready"), start_at)
        conn.send(("ok", result))
    except SystemExit:
        pass
    except BaseException as exc:  # report, do not hang the parent
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
    finally:
        conn.close()
