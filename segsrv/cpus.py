"""The CPUs this process may run on: the one count behind the kernels' default thread team and `segsrv
serve`'s default worker count (imports nothing heavy: the serve supervisor forks workers without numpy)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """len(os.sched_getaffinity(0)), at least 1 (os.cpu_count() where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
