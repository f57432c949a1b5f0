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
5. SIGTERM / SIGINT are forwarded to every worker, which sets health
   NOT_SERVING, stops accepting RPCs and drains in-flight ones for
   ``--grace`` seconds; the supervisor waits for them (SIGKILL after grace
   + 15 s) and exits 0 when every worker stopped cleanly. A second signal
   kills the workers at once. Workers get SIGTERM if the supervisor dies.

Worker i serves metrics on ``--metrics-port + i``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegsrvError, SnapshotNotFoundError
from .auth import TokenStore
from .options import check_port_free, format_address, load_tls, reserve_port

log = logging.getLogger("segsrv.workers")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0  # a worker alive this long resets the back-off
STOP_MARGIN = 15.0  # beyond --grace before stragglers are killed


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


def _worker_main(index: int, ready_fd: int, read_fd: int, reservation: socket.socket, parent: int,
                 serve_args: dict) -> None:
    """In the forked child: serve until SIGTERM; never returns."""
    code = 1
    try:
        reservation.close()
        os.close(read_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _set_parent_death_signal(parent)
        from .logs import configure_logging

        configure_logging(serve_args.pop("log_format"), serve_args.pop("log_level"), worker=index)
        from .app import serve  # grpc, numpy, kernels: only now, in the child

        def ready() -> None:
            os.write(ready_fd, f"{index} {os.getpid()}\n".encode())

        code = serve(announce=False, ready=ready, reuse_port=True, **serve_args)
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
                tls_cert=None, tls_key=None, tls_client_ca=None, tokens=None, **serve_kwargs) -> int:
    """Supervise `workers` forked servers sharing HOST:PORT until SIGTERM / SIGINT; returns the exit code."""
    from .logs import configure_logging

    if workers < 2:
        raise ValueError("run_workers is for 2 or more workers; one worker is the plain server")
    if "grpc" in sys.modules or "numpy" in sys.modules:
        # their threads would be copied half-alive into the children
        log.warning("grpc or numpy is imported before forking the workers; this is not safe")
    configure_logging(log_format, log_level)
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
    signals: list[int] = []
    announced = False

    def on_signal(signum, frame) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def spawn(w: _Worker) -> None:
        args = dict(serve_args, log_format=log_format, log_level=log_level,
                    metrics_port=None if metrics_port is None else (metrics_port + w.index if metrics_port else 0))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _worker_main(w.index, ready_fd, read_fd, reservation, parent, args)  # never returns
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
    try:
        for w in pool:
            spawn(w)
        buffer = b""
        while not signals:
            try:
                readable, _, _ = select.select([read_fd], [], [], 0.2)
            except InterruptedError:
                readable = []
            if readable:
                buffer += os.read(read_fd, 4096)
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    try:
                        index, pid = (int(x) for x in line.split())
                    except ValueError:
                        continue
                    w = by_pid.get(pid)
                    if w is not None and w.index == index:
                        w.ready = True
                        log.info("worker %d ready (pid %d)", index, pid,
                                 extra={"fields": {"event": "worker_ready", "worker_index": index, "worker_pid": pid}})
                if not announced and all(w.ready for w in pool):
                    announced = True
                    log.info("serving %s on %s with %d worker processes (supervisor pid %d)", snapshot_root,
                             address, workers, parent)
                    print(f"serving {snapshot_root} on {address}", file=sys.stderr, flush=True)
            now = time.monotonic()
            for w, code, pid in reap():
                if not announced:
                    log.error("worker %d failed while starting (%s); stopping", w.index, describe(code))
                    raise SegsrvError(f"worker {w.index} failed to start ({describe(code)}); see its error above")
                lived = now - w.started
                w.backoff = BACKOFF_START if lived >= STABLE_AFTER or w.restarts == 0 else min(w.backoff * 2,
                                                                                                BACKOFF_MAX)
                w.restart_at = now + w.backoff
                w.restarts += 1
                log.error("worker %d exited (%s) after %.1f s; restarting in %.1f s", w.index, describe(code), lived,
                          w.backoff, extra={"fields": {"event": "worker_exited", "worker_index": w.index,
                                                       "worker_pid": pid, "exit": code, "restart_in_s": w.backoff}})
            for w in pool:
                if w.restart_at is not None and now >= w.restart_at and not signals:
                    spawn(w)
        signum = signals[0]
        log.info("received %s: stopping %d workers (grace %.1f s)", signal.Signals(signum).name,
                 len(by_pid), grace_seconds)
    except SegsrvError:
        exit_code = 1
        raise
    finally:
        exit_code = max(exit_code, _stop_all(by_pid, grace_seconds, signals, reap))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reservation.close()
        os.close(read_fd)
        os.close(ready_fd)
    if exit_code == 0:
        log.info("stopped")
    return exit_code


def _stop_all(by_pid: dict, grace_seconds: float, signals: list[int], reap) -> int:
    """SIGTERM every worker, wait (SIGKILL after grace + margin or on a second signal); 0 if all exited 0."""
    if not by_pid:
        return 0
    seen = len(signals)
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
        if not killed and (time.monotonic() > deadline or len(signals) > seen):
            log.error("killing %d workers that did not stop in time", len(by_pid))
            for pid in list(by_pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            code = 1
        time.sleep(0.05)
    return code
