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
* Profile: per shard, the segment's count, each value's count in it and each numeric field's values in
  the segment, sorted; the summed counts go through the unsharded ``rank_profile_counts``, the merged
  values through its ``numeric_stats`` (exact order statistics; mean and std over the ascending values).
* Info: the shared dictionary with each universe's rows and each value's rows summed.
* Export: without a target each shard's matching rows, shard after shard, ids made per chunk by the
  shards the chunk spans; with a target ranked as ScoreSegment ranks (``sharded_ranked_rows``).
* Assign: each id routed to the shard holding it (``ShardedSnapshot.route_ids``), its membership
  evaluated there, every shard asked in one round (``ShardedSnapshot.map_each``); segments ranked by their
  summed sizes and scored with the merged propensity model.
* ListSegments: each segment's size is the sum of its sizes in the shards.
* The segment catalog (``apply_sharded_segments``): published into every shard, then SHARDS; its
  propensity models fitted as Predict's logistic models are, from the shards' evidence patterns and
  their members and non-members per fold (``catalog``, ``patterns``).
* Discover: the unsharded search (segsrv.engine.discover.search) on counts summed over the shards, one
  ``map`` per batch of counts it asks for (pairs, activity strata, each level's extensions, each batch of
  the redundancy check, ...): the same segments, statistics and segmentation.

A universe of a replicated table (every shard holds it whole) is answered from shard 0 alone: its
rows would otherwise count N times. It is recognised exactly: a partitioned universe's shards hold
disjoint ids, a replicated one's the same ids in every shard.

* Predict, and the models of ScoreSegment and Evaluate (``predict``): every count of every model is a sum
  over shards; the conjunction grows one round per evidence that joins; the logistic fit merges the
  shards' distinct evidence patterns with their rows per fold and class and runs the unsharded fit
  (``patterns``: shared with the catalog's models);
  a Predict by id reads the row's evidence from the one shard holding it (``ShardedSnapshot.shard_of``).
* ScoreSegment (``score``): the model fitted once over shards; each shard scores its members and answers
  its count, its scores' sum and its top K by id; the merge keeps the global top K (score, then id:
  the row order). ``sharded_ranked_rows`` ranks a targeted Export the same way.
* Evaluate (``evaluate``): the holdout goes by the id's hash, so each shard knows its test rows; the model
  is fitted over shards on the training rows; each shard sends its test rows' (id, true value,
  probabilities) and every statistic (AUC, calibration, ...) is computed on them in row order.

Every operation is written as functions over one shard (``*_part``: a module-level function of the
shard's snapshot and picklable arguments, answering counts) and a merge, run through
``ShardedSnapshot.map`` (the same arguments for every shard) or ``map_each`` (each shard's own, in one
round): in-process over the open shards, or on Ray shard replicas by the router, with the same merge.

Modules: ``open`` (opening the shards, ``map``, the merged universe, routing ids), one module per operation,
``catalog`` (the catalog over shards: merged sizes and models, ``segments apply``), ``patterns`` (the
logistic fit from the shards' pattern counts).
"""

from .assign import assign_part, sharded_assign
from .catalog import MergedCatalog, apply_sharded_segments, merged_catalog
from .count import count_part, sharded_count
from .discover import ShardedCounts, discover_part, sharded_discover
from .evaluate import sharded_evaluate
from .export import ShardedExportResult, ShardedRankedExportResult, export_part, ids_part, sharded_export
from .info import MergedUniverseInfo, sharded_info
from .open import (
    MergedUniverse, ShardedSnapshot, is_sharded, open_shard, open_sharded, sharded_version, universe_summary,
)
from .predict import sharded_predict
from .profile import population_values_part, profile_part, sharded_profile
from .relate import relate_part, sharded_relate
from .score import sharded_pending_fits, sharded_ranked_rows, sharded_score_segment

# the operations answered over shards (docs/scale.md, "Answers over shards"): every one
SHARDED_OPERATIONS = (
    "Count",
    "Relate",
    "Assign",
    "ListSegments",
    "Profile",
    "Info",
    "Export",
    "Discover",
    "Predict",
    "ScoreSegment",
    "Evaluate",
)

__all__ = ["SHARDED_OPERATIONS", "MergedCatalog", "MergedUniverse", "MergedUniverseInfo", "ShardedCounts",
           "ShardedExportResult", "ShardedRankedExportResult", "ShardedSnapshot", "apply_sharded_segments", "assign_part", "count_part",
           "discover_part", "export_part", "ids_part", "is_sharded", "merged_catalog", "open_shard", "open_sharded",
           "population_values_part", "profile_part", "relate_part", "sharded_assign",
           "sharded_count", "sharded_discover", "sharded_evaluate", "sharded_export", "sharded_info",
           "sharded_pending_fits", "sharded_predict", "sharded_profile", "sharded_ranked_rows", "sharded_relate",
           "sharded_score_segment", "sharded_version", "universe_summary"]
