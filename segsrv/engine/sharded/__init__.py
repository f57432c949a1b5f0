"""Answers over a sharded snapshot (ROOT/NAME with a SHARDS manifest: segsrv/snapshot/shards.py), merged
in-process and exact.

``open_sharded`` opens every shard at the version SHARDS names, and refuses a shard whose CURRENT names
another version (a build in progress, or a shard changed since) or whose dictionary is not the shared
one, so no answer mixes builds. All shards share one feature dictionary, so counts add feature by
feature:

* Count: the sum of the shards' counts.
* Relate: per shard, the condition's count and each candidate's count in the condition and overall;
  summed, they go through the unsharded engine's ``rank_counts`` (every statistic, filter, order,
  q-value and limit). Identifier-like fields ("every field" leaves them out) are judged by the
  summed counts, as the unsharded engine judges them by its own.
* Discover: the unsharded search (segsrv.engine.discover.search) on counts summed over the shards, one
  ``map`` per batch of counts it asks for (pairs, activity strata, each level's extensions, each batch of
  the redundancy check, ...): the same segments, statistics and segmentation.

A universe of a replicated table (every shard holds it whole) is answered from shard 0 alone: its
rows would otherwise count N times. It is recognised exactly: a partitioned universe's shards hold
disjoint ids, a replicated one's the same ids in every shard.

Every operation is written as functions over one shard (``*_part``: a module-level function of the
shard's snapshot and picklable arguments, answering counts) and a merge, run through
``ShardedSnapshot.map``: in-process over the open shards, or on Ray shard replicas by the router, with
the same merge.

Modules: ``open`` (opening the shards, ``map``, the merged universe), one module per operation.
"""

from .count import count_part, sharded_count
from .discover import ShardedCounts, discover_part, sharded_discover
from .open import (
    MergedUniverse, ShardedSnapshot, is_sharded, open_sharded, sharded_version, universe_summary,
)
from .relate import relate_part, sharded_relate

# the operations answered over shards so far (docs/scale.md, "Answers over shards")
SHARDED_OPERATIONS = ("Count", "Relate", "Discover")

__all__ = ["SHARDED_OPERATIONS", "MergedUniverse", "ShardedCounts", "ShardedSnapshot", "count_part", "discover_part",
           "is_sharded", "open_sharded", "relate_part", "sharded_count", "sharded_discover", "sharded_relate",
           "sharded_version", "universe_summary"]
