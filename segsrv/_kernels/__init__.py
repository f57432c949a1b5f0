"""Compiled kernels and the one place that decides thread counts.

Kernels: bitset algebra and AND-counts (.bitset), CSR histograms and scores
(.csr), all-pairs co-occurrence (.cooccur), hypergeometric tails (.hypergeom),
statistics of 2x2 tables (.tables), protobuf wire encoding of a page of
messages (.wire).

Thread policy
-------------
* ``set_num_threads(n)`` sets the process-wide default; ``set_num_threads(None)``
  restores the built-in default: env ``SEGSRV_NUM_THREADS`` if set, else
  ``len(os.sched_getaffinity(0))`` (the CPUs this process may run on), read at
  its first use and kept (a system call per kernel call cost ~1.5 us); call
  ``set_num_threads(None)`` again to read them anew.
* ``resolve_threads(n_threads, work_words)`` is what every kernel wrapper calls:
  an explicit ``n_threads >= 1`` wins; otherwise the default, scaled down for
  small work (1 thread below ``SMALL_WORK_WORDS`` words, at most one thread per
  ``SMALL_WORK_WORDS`` words), never more than the default.
* OpenMP's waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the
  environment sets a policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``): with
  libgomp's default spin a team member descheduled for a busy neighbour made a
  count's p90 16x its quiet one (bench/contention.py). The runtime reads it when
  it loads, i.e. at the first import of a kernel module (``WAIT_POLICY_SET``
  says whether this import set it; docs/kernels.md).

See docs/kernels.md.
"""
from __future__ import annotations

import os

# before any kernel module loads libgomp (it reads its environment once, at load)
WAIT_POLICY_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if WAIT_POLICY_SET:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ..cpus import usable_cpus
from .naive import __all__ as _KERNELS  # every kernel has its naive numpy twin, under the same name

__all__ = [
    "get_num_threads",
    "set_num_threads",
    "resolve_threads",
    "SMALL_WORK_WORDS",
    "GIL_RELEASE_WORDS",
    "releases_gil",
    # re-exported from .bitset / .csr / .cooccur / .hypergeom below
    "cpu_path",
    "available_cpu_paths",
    "set_cpu_path",
    "has_openmp",
    "TABLE_STATISTICS",
    "COMPACT_BLOCK_ROWS",
    "WireLayout",
    *_KERNELS,
]

#: Below this many 64-bit words of work (streamed-word equivalents: each kernel
#: weighs its random probes, gathers and elements by what they cost against a
#: streamed word) a kernel runs on one thread, and each further thread needs as
#: much again: waking a sleeping (passive) team member costs 15-60 us, so two
#: threads only win from ~1M words (~150 us) of work (measured, docs/kernels.md).
SMALL_WORK_WORDS = 1 << 20

#: A kernel call releases the GIL only from this many words of work (the same
#: streamed-word equivalents; ~40-80 us) or when it runs a team of threads. A shorter
#: call is cheaper with the GIL held: on a server whose handler threads queue for
#: the GIL, each release hands it to another thread, and getting it back costs two
#: context switches (~10 us each on a 2-core VM), measured as 23 switches per Relate
#: against 9 for an empty RPC (docs/server.md).
GIL_RELEASE_WORDS = 1 << 17

_num_threads: int | None = None
_default: int | None = None  # _default_num_threads(), read once (set_num_threads(None) reads it again)


def _default_num_threads() -> int:
    env = os.environ.get("SEGSRV_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"SEGSRV_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"SEGSRV_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return usable_cpus()


def get_num_threads() -> int:
    """The default number of threads kernels may use."""
    global _default
    if _num_threads is not None:
        return _num_threads
    if _default is None:
        _default = _default_num_threads()
    return _default


def set_num_threads(n: int | None) -> None:
    """Set the default thread count (``None``: env SEGSRV_NUM_THREADS or CPU affinity, read again)."""
    global _num_threads, _default
    if n is None:
        _num_threads = _default = None
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _num_threads = n


def resolve_threads(n_threads: int | None, work_words: int) -> int:
    """Thread count for a kernel call doing about ``work_words`` words of work."""
    if n_threads is not None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int):
            raise TypeError(f"n_threads must be an int or None, got {type(n_threads).__name__}")
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1 or None, got {n_threads}")
        return n_threads
    default = get_num_threads()
    if work_words < SMALL_WORK_WORDS:
        return 1
    return max(1, min(default, int(work_words) // SMALL_WORK_WORDS))


def releases_gil(work_words: int, n_threads: int = 1) -> bool:
    """Whether a kernel call of about ``work_words`` words of work on ``n_threads`` threads releases the GIL
    (GIL_RELEASE_WORDS)."""
    return n_threads > 1 or work_words >= GIL_RELEASE_WORDS


from .bitset import (  # noqa: E402  (the wrappers call resolve_threads above)
    and_count_dense,
    and_count_dense_many,
    and_count_ids,
    and_count_sparse,
    available_cpu_paths,
    bitset_and,
    bitset_andnot,
    bitset_or,
    bitset_to_ids,
    cpu_path,
    gather_present,
    has_openmp,
    histogram_codes_present,
    histogram_present,
    ids_to_bitset,
    popcount,
    read_bandwidth_probe,
    set_bits,
    set_cpu_path,
)
from .csr import (  # noqa: E402
    COMPACT_BLOCK_ROWS,
    PAIR_MAX_SLOTS,
    compact_csr_histogram,
    csr_histogram,
    csr_pair_scores,
    csr_row_scores,
)
from .cooccur import cooccurrence, cross_cooccurrence  # noqa: E402
from .hypergeom import hypergeom_log_tail, hypergeom_tail  # noqa: E402
from .tables import TABLE_STATISTICS, table_mutual_information, table_statistics, top_by_mutual_information  # noqa: E402
from .wire import WireLayout, encode_messages  # noqa: E402
