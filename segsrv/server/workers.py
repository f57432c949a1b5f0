"""Multi-process mode (``segsrv serve --workers N``): a supervisor and N forked workers on one port.

Python's GIL limits one process to about one core of request handling, so
more cores need processes. The supervisor (this module) never imports gRPC,
numpy or the kernels (their threads must not exist when it forks):

1. it checks the flags it can check without them (TLS files, tokens file,
   snapshot root) and that nobody listens on HOST:PORT (a busy port is an
   error, exit 1), then holds the port with a bound, never-listening socket
   with SO_REUSEPORT, so no other program can take it while workers
   restart;
2. it forks N workers; each imports gRPC, opens the snapshots (memory-mapped:
   the page cache is shared by all) and serves with ``grpc.so_reuseport`` on,
   so the kernel spreads incoming *connections* over the workers (one
   client channel stays on one worker: load tests need several);
3. once every worker is ready it prints ``serving ROOT on HOST:PORT``;
4. it restarts a worker that dies, after a back-off (0.5 s, doubling up to
   30 s while a restarted worker dies within 10 s of starting; a worker
   that lived longer restarts after 0.5 s again). A worker that fails before
   the server was ever ready stops everything (exit 1): that is a
   configuration error, not a crash;
5. it probes every ready worker's health on the worker's private port
   (``probe.py``, every ``probe_interval`` s) and SIGKILLs one that misses
   ``probe_failures`` probes in a row (stopped, wedged): a worker that stops
   answering would otherwise keep taking new connections on the shared port
   and hang them. The kill is logged; the restart is the usual one;
6. SIGTERM / SIGINT are forwarded to every worker, which sets health
   NOT_SERVING, stops accepting RPCs and drains in-flight ones for
   ``--grace`` seconds; the supervisor waits for them (SIGKILL after grace
   + 15 s) and exits 0 when every worker stopped cleanly. A stop signal
   ``FORCE_AFTER`` seconds or more after the first kills the workers at
   once; a burst (several within that second) is one request. Signal
   handlers do nothing but wake the loop (``signals.py``). Workers get
   SIGTERM if the supervisor dies.

Worker i serves metrics on ``--metrics-port + i``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegsrvError, SnapshotNotFoundError
from .auth import TokenStore
from .options import check_port_free, format_address, load_tls, reserve_port
from .probe import Prober
from .signals import StopSignals

log = logging.getLogger("segsrv.workers")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0  # a worker alive this long resets the back-off
STOP_MARGIN = 15.0  # beyond --grace before stragglers are killed
FORCE_AFTER = 1.0  # a stop signal this long after the first one kills the workers (a burst is one)
# liveness probes: a worker that misses 3 in a row is killed and restarted (measured: ~7 s after it stopped)
DEFAULT_PROBE_INTERVAL = 1.0
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_PROBE_FAILURES = 3


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    backoff: float = BACKOFF_START
    restart_at: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


def _set_parent_death_signal(parent: int) -> None:
    """Linux: SIGTERM this process when the supervisor dies (so workers never outlive it)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux: workers may outlive a killed supervisor
        return
    if os.getppid() != parent:  # the supervisor died before prctl
        os._exit(1)


def _worker_main(index: int, ready_fd: int, parent: int, serve_args: dict, inherited) -> None:
    """In the forked child: serve until SIGTERM; never returns. `inherited`: closers of the supervisor's
    descriptors (port reservation, pipes, probe sockets) that the fork copied."""
    code = 1
    try:
        for close in inherited:
            close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _set_parent_death_signal(parent)
        from .logs import configure_logging

        configure_logging(serve_args.pop("log_format"), serve_args.pop("log_level"), worker=index)
        from .app import serve  # grpc, numpy, kernels: only now, in the child

        def ready(server) -> None:
            os.write(ready_fd, f"{index} {os.getpid()} {server.health_port}\n".encode())

        code = serve(announce=False, ready=ready, reuse_port=True, health_port=0, **serve_args)
    except SegsrvError as exc:
        print(f"segsrv: error: worker {index}: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - report, then exit the child whatever happened
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_workers(workers: int, *, snapshot_root: str | Path, host: str, port: int, grace_seconds: float,
                log_format: str = "text", log_level: str = "INFO", metrics_port: int | None = None,
                tls_cert=None, tls_key=None, tls_client_ca=None, tokens=None,
                probe_interval: float = DEFAULT_PROBE_INTERVAL, probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
                probe_failures: int = DEFAULT_PROBE_FAILURES, **serve_kwargs) -> int:
    """Supervise `workers` forked servers sharing HOST:PORT until SIGTERM / SIGINT; returns the exit code.

    Each ready worker is probed every `probe_interval` s (answer within `probe_timeout` s); one that
    misses `probe_failures` probes in a row is killed and restarted."""
    from .logs import configure_logging

    if workers < 2:
        raise ValueError("run_workers is for 2 or more workers; one worker is the plain server")
    if "grpc" in sys.modules or "numpy" in sys.modules:
        # their threads would be copied half-alive into the children
        log.warning("grpc or numpy is imported before forking the workers; this is not safe")
    configure_logging(log_format, log_level)
    prober = Prober(probe_interval, probe_timeout, probe_failures)  # checks its settings
    # what can be checked without grpc, before forking (a bad flag fails once, not N times)
    if not Path(snapshot_root).is_dir():
        raise SnapshotNotFoundError(f"snapshot root {str(snapshot_root)!r} is not a directory")
    load_tls(tls_cert, tls_key, tls_client_ca)
    if tokens is not None:
        TokenStore.load(tokens)
    port = check_port_free(host, port)
    reservation = reserve_port(host, port)
    address = format_address(host, port)
    serve_args = dict(serve_kwargs, snapshot_root=snapshot_root, host=host, port=port, grace_seconds=grace_seconds,
                      tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, tokens=tokens)
    read_fd, ready_fd = os.pipe()
    parent = os.getpid()
    pool = [_Worker(i) for i in range(workers)]
    by_pid: dict[int, _Worker] = {}
    announced = False
    stop = StopSignals()

    def spawn(w: _Worker) -> None:
        args = dict(serve_args, log_format=log_format, log_level=log_level,
                    metrics_port=None if metrics_port is None else (metrics_port + w.index if metrics_port else 0))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _worker_main(w.index, ready_fd, parent, args,  # never returns
                         (reservation.close, lambda: os.close(read_fd), stop.close_fds, prober.close))
        w.pid, w.started, w.ready, w.restart_at = pid, time.monotonic(), False, None
        by_pid[pid] = w
        log.info("worker %d started (pid %d)", w.index, pid,
                 extra={"fields": {"event": "worker_started", "worker_index": w.index, "worker_pid": pid}})

    def reap() -> list[tuple[_Worker, int, int]]:  # (worker, exit code, its pid)
        out = []
        while by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            w = by_pid.pop(pid, None)
            if w is not None:
                code = os.waitstatus_to_exitcode(status)
                w.exit_codes.append(code)
                w.pid = 0
                out.append((w, code, pid))
        return out

    def describe(code: int) -> str:
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"

    exit_code = 0
    with stop:
        try:
            for w in pool:
                spawn(w)
            buffer = b""
            while not stop.received:
                probing, probe_writes = prober.waiting()
                readable, writable, _ = select.select([read_fd, stop, *probing], probe_writes, [],
                                                      min(0.2, prober.next_due(time.monotonic())))
                if stop in readable and stop.read():
                    break
                if read_fd in readable:
                    buffer += os.read(read_fd, 4096)
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        try:
                            index, pid, health_port = (int(x) for x in line.split())
                        except ValueError:
                            continue
                        w = by_pid.get(pid)
                        if w is not None and w.index == index:
                            w.ready = True
                            prober.watch(index, health_port, f"worker {index} (pid {pid})", time.monotonic())
                            log.info("worker %d ready (pid %d, health on 127.0.0.1:%d)", index, pid, health_port,
                                     extra={"fields": {"event": "worker_ready", "worker_index": index,
                                                       "worker_pid": pid, "health_port": health_port}})
                    if not announced and all(w.ready for w in pool):
                        announced = True
                        log.info("serving %s on %s with %d worker processes (supervisor pid %d)", snapshot_root,
                                 address, workers, parent)
                        print(f"serving {snapshot_root} on {address}", file=sys.stderr, flush=True)
                now = time.monotonic()
                for index, why in prober.step(readable, writable, now):
                    w = pool[index]
                    prober.forget(index)
                    if w.pid:
                        log.error("worker %d (pid %d) stopped answering: %s; killing it", index, w.pid, why,
                                  extra={"fields": {"event": "worker_unresponsive", "worker_index": index,
                                                    "worker_pid": w.pid}})
                        os.kill(w.pid, signal.SIGKILL)
                for w, code, pid in reap():
                    prober.forget(w.index)
                    if not announced:
                        log.error("worker %d failed while starting (%s); stopping", w.index, describe(code))
                        raise SegsrvError(f"worker {w.index} failed to start ({describe(code)}); see its error above")
                    lived = now - w.started
                    w.backoff = BACKOFF_START if lived >= STABLE_AFTER or w.restarts == 0 else min(w.backoff * 2,
                                                                                                    BACKOFF_MAX)
                    w.restart_at = now + w.backoff
                    w.restarts += 1
                    log.error("worker %d exited (%s) after %.1f s; restarting in %.1f s", w.index, describe(code),
                              lived, w.backoff, extra={"fields": {"event": "worker_exited", "worker_index": w.index,
                                                           "worker_pid": pid, "exit": code, "restart_in_s": w.backoff}})
                for w in pool:
                    if w.restart_at is not None and now >= w.restart_at and not stop.received:
                        spawn(w)
            log.info("received %s: stopping %d workers (grace %.1f s)", signal.Signals(stop.received[0][0]).name,
                     len(by_pid), grace_seconds)
        except SegsrvError:
            exit_code = 1
            raise
        finally:
            prober.close()
            exit_code = max(exit_code, _stop_all(by_pid, grace_seconds, stop, reap))
            reservation.close()
            os.close(read_fd)
            os.close(ready_fd)
    if exit_code == 0:
        log.info("stopped")
    return exit_code


def _stop_all(by_pid: dict, grace_seconds: float, stop: StopSignals, reap) -> int:
    """SIGTERM every worker, wait (SIGKILL after grace + margin, or on a stop signal FORCE_AFTER seconds
    after the first); 0 if all exited 0."""
    if not by_pid:
        return 0
    stop.read()
    first = stop.received[0][1] if stop.received else time.monotonic()
    for pid in list(by_pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_seconds + STOP_MARGIN
    code = 0
    killed = False
    while by_pid:
        for w, c, _ in reap():
            if c != 0:
                log.error("worker %d stopped with %s", w.index, f"exit code {c}" if c >= 0 else
                          f"signal {signal.Signals(-c).name}")
                code = 1
        if not by_pid:
            break
        forced = any(at >= first + FORCE_AFTER for _, at in stop.received)
        if not killed and (time.monotonic() > deadline or forced):
            log.error("killing %d workers that did not stop in time", len(by_pid))
            for pid in list(by_pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            code = 1
        stop.wait(0.05)
    return code
