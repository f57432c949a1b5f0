"""The engine: conditions, relate (and later predict, assign, ...) over a snapshot.

Numpy in, dataclasses out; never imports grpc.
"""

from .._kernels import set_num_threads as set_kernel_threads
from .conditions import All, And, AnyOf, Not, Or, Range, SegmentRef, Term, evaluate, parse_where
from .evaluate import EvaluateQuery, EvaluateResult, evaluate
from .predict import PredictQuery, PredictResult, ScoreQuery, ScoreResult, predict, score_segment
from .relate import RelateHit, RelateQuery, RelateResult, relate

__all__ = [
    "All", "And", "AnyOf", "Not", "Or", "Range", "SegmentRef", "Term", "evaluate", "parse_where",
    "RelateHit", "RelateQuery", "RelateResult", "relate", "set_kernel_threads",
    "PredictQuery", "PredictResult", "ScoreQuery", "ScoreResult", "predict", "score_segment",
    "EvaluateQuery", "EvaluateResult", "evaluate",
]
