"""Logging of the server: text or JSON lines, with the request id of the RPC being served.

Every RPC of SegmentationService gets a request id (the client's ``x-request-id``
metadata when it is a plain token of 1..64 characters ``[A-Za-z0-9._:-]``, a
new random one otherwise), returned as trailing metadata ``x-request-id`` and
added to every log record written while the RPC runs. ``--log-format json``
writes one JSON object per line:

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "segsrv.access",
     "message": "Count OK 1.2 ms", "pid": 123, "worker": 0, "request_id": "9f2c...",
     "method": "Count", "code": "OK", "duration_ms": 1.2, "peer": "ipv4:127.0.0.1:50000", ...}

Extra keys come from ``extra={"fields": {...}}`` of the logging call. This
module imports no gRPC (the multi-process supervisor uses it before forking).
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import json
import logging
import os
import random
import re
import sys

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("segsrv_request_id", default=None)
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
LOG_FORMATS = ("text", "json")

_ids = random.Random(os.urandom(16))  # request ids are labels, not secrets
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))  # workers never repeat each other's ids
_worker: int | None = None  # index of this worker process in multi-process mode


def new_request_id(client_value: str | None = None) -> str:
    """The client's id when it is a safe token, else a new random 16-hex-digit one."""
    if client_value and _CLIENT_ID_RE.match(client_value):
        return client_value
    # not os.urandom: its getrandom call releases the GIL, a handoff per RPC under load
    return f"{_ids.getrandbits(64):016x}"


def set_request_id(request_id: str | None) -> contextvars.Token:
    return _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    """The id of the RPC running in this context (None outside an RPC)."""
    return _REQUEST_ID.get()


def set_worker(index: int | None) -> None:
    global _worker
    _worker = index


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _REQUEST_ID.get()
        record.worker = _worker
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, pid, worker, request_id, and `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        worker = getattr(record, "worker", _worker)
        if worker is not None:
            out["worker"] = worker
        rid = getattr(record, "request_id", None) or _REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: message [request_id]`; `LEVEL wN LOGGER` in multi-process mode."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._with_worker = logging.Formatter("%(asctime)s %(levelname)s w%(worker)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        worker = getattr(record, "worker", _worker)
        if worker is not None:
            record.worker = worker
            text = self._with_worker.format(record)
        else:
            text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid:
            first, nl, rest = text.partition("\n")
            text = f"{first} [{rid}]{nl}{rest}"
        return text


def configure_logging(log_format: str = "text", level: str | int = "INFO", stream=None,
                      worker: int | None = None) -> logging.Handler:
    """Route the root logger to `stream` (stderr) in `log_format`; replaces earlier handlers."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    set_worker(worker)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def context_filter() -> logging.Filter:
    """A filter adding request_id and worker to records (for handlers set up elsewhere, e.g. tests)."""
    return _ContextFilter()
