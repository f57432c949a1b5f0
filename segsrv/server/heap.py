"""The garbage collector and a served version: what a server keeps alive is frozen out of its reach.

CPython's full collection walks every container object alive. A server holds a snapshot's names, field
tables, catalog and memos for as long as it serves the version, tens of thousands of objects (the 1M
demo: ~43,000, one of them a list of a million ids), and a full collection came every ~1,000 requests
and took 11-62 ms (measured in bench/grpc_relate.py's servers, December 2026): a stall of every request
of the process. ``freeze()`` is called after a version is opened and warmed: what is alive then moves to
the permanent generation (``gc.freeze``), which collections skip; objects made later, a request's, are
collected as before. Each call undoes the previous freeze and collects first, so a retired version's
reference cycles, if any, are freed at the next version's load instead of never.
"""

from __future__ import annotations

import gc


def freeze() -> int:
    """Collect, then freeze every object alive (module docstring) -> how many are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
