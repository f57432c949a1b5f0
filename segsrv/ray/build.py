"""``segsrv build SPEC --shards N --ray ADDRESS``: each shard's build is a Ray task.

The driver (this process) runs the dictionary pass, hands every shard to a task that reserves ``cpus`` CPUs
(its DuckDB threads), gathers the results in shard order and writes SHARDS last, as the local build does
(segsrv/snapshot/shardbuild.py: only the executor differs). The tasks write their shard under the output
directory, which every node must see at the same path (a shared file system).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from ..errors import SegsrvError
from . import connect


def _run(fn: Callable[[int], dict], index: int) -> dict:
    return fn(index)


def ray_map_shards(address: str, cpus: int) -> Callable[[Callable[[int], dict], Iterable[int]], Iterator[dict]]:
    """A shardbuild executor: fn(index) for every index as Ray tasks of `cpus` CPUs each, results in order."""
    ray = connect(address)
    task = ray.remote(num_cpus=cpus, max_retries=0)(_run)  # a failed shard fails the build: no silent rerun

    def map_shards(fn, indices):
        fn_ref = ray.put(fn)  # the dictionary travels once, not once per task
        refs = [task.remote(fn_ref, i) for i in indices]
        try:
            for ref in refs:
                yield ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            for ref in refs:
                ray.cancel(ref)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SegsrvError):  # a data or spec error: the same message as a local build's
                raise cause from None
            raise

    return map_shards
