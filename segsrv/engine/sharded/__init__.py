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

A universe of a replicated table (every shard holds it whole) is answered from shard 0 alone: its
rows would otherwise count N times. It is recognised exactly: a partitioned universe's shards hold
disjoint ids, a replicated one's the same ids in every shard.

* Predict, and the models of ScoreSegment and Evaluate (``predict``): every count of every model is a sum
  over shards; the conjunction grows one round per evidence that joins; the logistic fit merges the
  shards' distinct evidence patterns with their rows per fold and class and runs the unsharded fit;
  a Predict by id reads the row's evidence from the one shard holding it (``ShardedSnapshot.shard_of``).
* ScoreSegment (``score``): the model fitted once over shards; each shard scores its members and answers
  its count, its scores' sum and its top K by id; the merge keeps the global top K (score, then id:
  the row order). ``sharded_ranked_rows`` ranks a targeted Export the same way.
* Evaluate (``evaluate``): the holdout goes by the id's hash, so each shard knows its test rows; the model
  is fitted over shards on the training rows; each shard sends its test rows' (id, true value,
  probabilities) and every statistic (AUC, calibration, ...) is computed on them in row order.

Every operation is written as functions over one shard (``*_part``: a module-level function of the
shard's snapshot and picklable arguments, answering counts) and a merge, run through
``ShardedSnapshot.map``: in-process over the open shards, or on Ray shard replicas by the router, with
the same merge.

Modules: ``open`` (opening the shards, ``map``, the merged universe), one module per operation.
"""

from .count import count_part, sharded_count
from .evaluate import sharded_evaluate
from .open import (
    MergedUniverse, ShardedSnapshot, is_sharded, open_sharded, sharded_version, universe_summary,
)
from .predict import sharded_predict
from .relate import relate_part, sharded_relate
from .score import sharded_pending_fits, sharded_ranked_rows, sharded_score_segment

# the operations answered over shards so far (docs/scale.md, "Answers over shards")
SHARDED_OPERATIONS = ("Count", "Relate", "Predict", "ScoreSegment", "Evaluate")

__all__ = ["SHARDED_OPERATIONS", "MergedUniverse", "ShardedSnapshot", "count_part", "is_sharded", "open_sharded",
           "relate_part", "sharded_count", "sharded_evaluate", "sharded_pending_fits", "sharded_predict",
           "sharded_ranked_rows", "sharded_relate", "sharded_score_segment", "sharded_version", "universe_summary"]
