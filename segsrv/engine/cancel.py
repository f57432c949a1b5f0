"""Cooperative cancellation of long engine work (no gRPC here).

The server installs a check for the duration of a call (``checking(fn)``); long loops in
the engine call ``check()`` between units of work (each pass of a logistic fit over the
rows, each test row of a conjunction Evaluate, each propensity model of Assign). The
check raises when the caller's deadline passed or it cancelled, so the work stops early
instead of finishing for nobody. Outside a call (the CLI, in-process use) ``check()`` does
nothing.
"""

from __future__ import annotations

import contextvars
from typing import Callable

_CHECK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("segsrv_check", default=None)


def check() -> None:
    """Raise (whatever the installed check raises) when the current call is over."""
    fn = _CHECK.get()
    if fn is not None:
        fn()


class checking:
    """``with checking(fn):`` installs fn as the check of the current call (a class, not
    contextlib.contextmanager: every RPC enters one, and a generator costs ~2 us more)."""

    __slots__ = ("fn", "token")

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def __enter__(self) -> None:
        self.token = _CHECK.set(self.fn)

    def __exit__(self, *exc) -> None:
        _CHECK.reset(self.token)
