"""The /metrics HTTP endpoint: one thread, bounded connections, timeouts.

``http.server.ThreadingHTTPServer`` (the first version) spent a thread per
connection for as long as the client kept it open: 200 idle or slowloris
connections were 200 threads, forever. Here one asyncio loop on one thread
serves every connection; a connection must send its request head (at most
``MAX_HEAD_BYTES``) within ``READ_TIMEOUT`` seconds and take the answer within
``WRITE_TIMEOUT``; each answer closes the connection (a scrape every few
seconds does not need keep-alive). At most ``MAX_CONNECTIONS`` are open: the
next one closes the oldest, so idle connections cannot lock a scraper out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Callable

log = logging.getLogger("segsrv.server")

MAX_CONNECTIONS = 64
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_HEAD_BYTES = 16 * 1024


class MetricsHttp:
    """GET /metrics (or /) answers `body()` with `content_type`; bind(), start(), stop()."""

    def __init__(self, body: Callable[[], bytes], content_type: str):
        self.body = body
        self.content_type = content_type
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[asyncio.StreamWriter, None] = {}  # open connections, oldest first

    def bind(self, host: str, port: int) -> int:
        """Listen on HOST:PORT (not serving yet); returns the port (OSError when busy)."""
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return sock.getsockname()[1]

    def start(self) -> None:
        if self._sock is None or self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="segsrv-metrics", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        loop, thread, self._thread = self._loop, self._thread, None
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve, sock=self._sock, limit=MAX_HEAD_BYTES))
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            # abort the connections and let their handlers end on their own (cancelling the handlers
            # makes 3.11's stream protocol log a spurious error for each)
            for writer in list(self._open):
                writer.transport.abort()
            tasks = asyncio.all_tasks(loop)
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=2))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = None
        if len(self._open) > MAX_CONNECTIONS:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, body = self._answer(head)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, b"OK" if status == 200 else b"Error",
                            (self.content_type if status == 200 else "text/plain").encode(), len(body)) + body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # slow, idle, oversized or gone: just close
        except Exception:  # noqa: BLE001 - a scrape must never take the endpoint down
            log.exception("metrics endpoint: request failed")
        finally:
            self._open.pop(writer, None)
            writer.close()

    def _answer(self, head: bytes) -> tuple[int, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, b"bad request\n"
        if parts[0] != b"GET":
            return 405, b"only GET is served here\n"
        if parts[1].split(b"?")[0] not in (b"/metrics", b"/"):
            return 404, b"only /metrics is served here\n"
        return 200, self.body()
