"""The requests and results of Predict and ScoreSegment, their defaults and their parameter checks.

Self-contained on purpose (numpy and segsrv.errors only): the request layer can hold these
types without loading the kernels or scipy. The default segment (every row) is the condition
tree's ``All``, imported when a query is made without a segment.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...errors import QueryError

if TYPE_CHECKING:
    from ...snapshot.reader import Universe
    from ..conditions import Condition

METHODS = ("conjunction", "factorized", "logistic")
BULK_METHODS = ("factorized", "logistic")  # the models ScoreSegment applies to every member
DEFAULT_PRIOR_STRENGTH = 1.0
DEFAULT_L2 = 1.0  # L2 penalty of the logistic method (scikit-learn's C = 1 / l2)
DEFAULT_BULK_METHOD = "logistic"  # ScoreSegment and Evaluate
DEFAULT_MIN_SUPPORT = 30
DEFAULT_MAX_CORRELATION = 0.9
DEFAULT_MIN_SUPPORT_FRACTION = 0.005
DEFAULT_MAX_P_VALUE = 0.001
DEFAULT_MAX_TARGET_VALUES = 64


def every_row():
    """The default segment. Imported on use: the condition evaluator loads the kernels."""
    from ..conditions import All

    return All()


# ----------------------------------------------------------------------------
# requests and results
# ----------------------------------------------------------------------------


@dataclass
class PredictQuery:
    target: str
    universe: str | None = None
    segment: Condition = field(default_factory=every_row)
    row_id: object = None
    evidence: list[tuple[str, str]] = field(default_factory=list)
    evidence_fields: list[str] | None = None
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    min_support: int = DEFAULT_MIN_SUPPORT
    min_support_fraction: float = DEFAULT_MIN_SUPPORT_FRACTION
    max_p_value: float = DEFAULT_MAX_P_VALUE
    max_correlation: float = DEFAULT_MAX_CORRELATION
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    method: str = "conjunction"
    train_mask: np.ndarray | None = None
    l2: float = DEFAULT_L2


@dataclass
class Factor:
    evidence: list[tuple[str, str]]
    factor: float
    support: int
    kind: str  # "conjunction" | "lift"
    note: str = ""


@dataclass
class ValueProbability:
    value: str
    probability: float
    base_probability: float
    factors: list[Factor]
    normalizer: float


@dataclass
class PredictResult:
    snapshot: str
    version: str
    universe: str
    target: str
    multi_valued: bool
    method: str
    n_segment: int
    evidence: list[tuple[str, str]]
    probabilities: list[ValueProbability]
    elapsed_ms: float


@dataclass
class ScoreQuery:
    target: str
    value: str
    universe: str | None = None
    segment: Condition = field(default_factory=every_row)
    top_k: int = 0
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    evidence_fields: list[str] | None = None
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    train_mask: np.ndarray | None = None
    method: str = DEFAULT_BULK_METHOD  # "logistic" or "factorized"
    l2: float = DEFAULT_L2


@dataclass
class ScoreResult:
    snapshot: str
    version: str
    universe: str
    target: str
    value: str
    rows: np.ndarray  # int64 row numbers (top_k: best first; else every member in row order)
    scores: np.ndarray  # float64 probability of `value`
    n_members: int
    mean_score: float  # over every member (not only the top K)
    elapsed_ms: float
    _universe: Universe | None = field(default=None, repr=False)

    @property
    def ids(self) -> list:
        return self._universe.ids_for_rows(self.rows) if self._universe is not None else []


# ----------------------------------------------------------------------------
# parameter checks
# ----------------------------------------------------------------------------


def bad_parameter(name: str, msg: str):
    raise QueryError(f"{name}: {msg}", [(name, msg)])


def check_common_params(q) -> None:
    """The parameters every method has (Predict, ScoreSegment, Evaluate)."""
    a = q.prior_strength
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a) or a <= 0:
        bad_parameter("prior_strength", f"must be a finite number > 0, got {a!r}")
    m = q.max_target_values
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        bad_parameter("max_target_values", f"must be an integer >= 2, got {m!r}")
    if q.evidence_fields is not None and (
        not isinstance(q.evidence_fields, (list, tuple)) or not all(isinstance(f, str) for f in q.evidence_fields)
    ):
        bad_parameter("evidence_fields", "expected a list of field names or globs")
    l2 = getattr(q, "l2", DEFAULT_L2)
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not math.isfinite(l2) or l2 <= 0:
        bad_parameter("l2", f"must be a finite number > 0, got {l2!r}")


def check_conjunction_params(q) -> None:
    f = q.min_support_fraction
    if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f <= 1:
        bad_parameter("min_support_fraction", f"must be a number within [0, 1], got {f!r}")
    p = q.max_p_value
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        bad_parameter("max_p_value", f"must be a number within (0, 1], got {p!r}")


def check_predict_query(q: PredictQuery) -> None:
    check_common_params(q)
    if q.method not in METHODS:
        bad_parameter("method", f"must be one of {list(METHODS)}, got {q.method!r}")
    ms = q.min_support
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 1:
        bad_parameter("min_support", f"must be an integer >= 1, got {ms!r}")
    mc = q.max_correlation
    if isinstance(mc, bool) or not isinstance(mc, numbers.Real) or not 0 < mc <= 1:
        bad_parameter("max_correlation", f"must be a number within (0, 1], got {mc!r}")
    check_conjunction_params(q)
    if not isinstance(q.evidence, (list, tuple)):
        bad_parameter("evidence", "expected a list of (field, value) pairs")
    for item in q.evidence:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            bad_parameter("evidence", f"expected (field, value) pairs, got {item!r}")


def check_score_query(q: ScoreQuery) -> None:
    check_common_params(q)
    k = q.top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        bad_parameter("top_k", f"must be a non-negative integer (0 = every member), got {k!r}")
    if q.method not in BULK_METHODS:
        bad_parameter("method", f"must be 'logistic' or 'factorized', got {q.method!r}")
