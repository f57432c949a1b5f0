"""Evaluate: a prediction method tested on a deterministic holdout of a segment.

JSON keys: from, segment, target, evidence_fields, holdout_fraction, seed, prior_strength,
min_support, min_support_fraction, max_p_value, method, l2 (logistic; absent: chosen by
cross-validation over the training rows). Answer: {"snapshot", "version",
"from", "target", "method", "values", "n_train", "n_test", "accuracy",
"baseline_accuracy", "baseline_value", "log_loss", "auc", "positive_value", "mean_rank",
"geometric_mean_probability", "calibration_of", "calibration": [...], "elapsed_ms",
"regularisation" (logistic: {"l2", "cross_validated", "value", "interaction_pairs"};
factorized: {"prior_strength", "cross_validated", "value"})}.
See docs/predict.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..v1 import segsrv_pb2 as pb
from . import conditions as cond
from .base import ANY_SNAPSHOT, Selector, response_info
from .conditions import All, Condition
from .params import Integer, Options, Param, Real, check_keys, check_params, json_number, read_json
from .predict import (
    COMMON_PARAMS, CONJUNCTION_PARAMS, DEFAULT_BULK_METHOD, DEFAULT_L2, DEFAULT_MAX_CORRELATION,
    DEFAULT_MAX_P_VALUE, DEFAULT_MAX_TARGET_VALUES, DEFAULT_MIN_SUPPORT, DEFAULT_MIN_SUPPORT_FRACTION,
    DEFAULT_PRIOR_STRENGTH, METHODS, evidence_fields_from_proto, given_keys, method_from_proto, method_to_proto,
    Regularisation, name_from_proto, optionals_from_proto, optionals_to_proto, read_target, request_paths,
    segment_from_proto, sent,
)

KEYS = {"from", "segment", "target", "evidence_fields", "holdout_fraction", "seed", "prior_strength",
        "min_support", "min_support_fraction", "max_p_value", "method", "l2"}
DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_MAX_TEST_ROWS_CONJUNCTION = 10_000
N_CALIBRATION_BINS = 10

PARAMS = COMMON_PARAMS + CONJUNCTION_PARAMS + (
    Param("method", Options(METHODS)),
    Param("holdout_fraction", Real(0, 1, open="both")),
    Param("seed", Integer(-(2 ** 63), 2 ** 63 - 1)),
    Param("max_test_rows", Integer(low=1), none=True),
)
_OPTIONAL = ("holdout_fraction", "prior_strength", "min_support", "min_support_fraction", "max_p_value", "method",
             "l2")


@dataclass
class EvaluateQuery:
    target: str
    universe: str | None = None
    segment: Condition = field(default_factory=All)
    evidence_fields: list[str] | None = None
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = 0
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    min_support: int = DEFAULT_MIN_SUPPORT
    min_support_fraction: float = DEFAULT_MIN_SUPPORT_FRACTION
    max_p_value: float = DEFAULT_MAX_P_VALUE
    max_correlation: float = DEFAULT_MAX_CORRELATION
    max_target_values: int = DEFAULT_MAX_TARGET_VALUES
    method: str = DEFAULT_BULK_METHOD  # "logistic" (default), "factorized" or "conjunction"
    max_test_rows: int | None = None  # None: every test row (logistic, factorized), 10,000 (conjunction)
    l2: float | None = DEFAULT_L2  # None: chosen by cross-validation over the training rows (logistic)
    given: frozenset = field(default=frozenset(), compare=False, repr=False)  # optional keys the caller gave

    def validate(self) -> None:
        check_params(self, PARAMS)

    # -- JSON --------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: dict) -> "EvaluateQuery":
        """`segment` may also be a condition tree or a proto Condition (Python callers)."""
        check_keys(obj, KEYS, "evaluate")
        q = cls(target=read_target(obj), segment=cond.to_condition(obj.get("segment"), "segment"))
        read_json(obj, q, PARAMS)
        q.given = given_keys(obj, _OPTIONAL)
        q.validate()
        return q

    # -- proto -------------------------------------------------------------------------

    def to_proto(self, at: Selector = ANY_SNAPSHOT) -> pb.EvaluateRequest:
        req = pb.EvaluateRequest(
            snapshot=at.to_proto(), universe=self.universe or "", segment=cond.to_proto(self.segment),
            target_field=self.target, evidence_fields=list(self.evidence_fields or ()),
            holdout_fraction=(float(self.holdout_fraction)
                              if sent(self, "holdout_fraction", DEFAULT_HOLDOUT_FRACTION) else 0.0),
            seed=int(self.seed),
            method=method_to_proto(self.method) if sent(self, "method", DEFAULT_BULK_METHOD) else 0,
        )
        optionals_to_proto(self, req)
        return req

    @staticmethod
    def paths(req: pb.EvaluateRequest) -> cond.RequestPaths:
        return request_paths(req)

    @classmethod
    def from_proto(cls, req: pb.EvaluateRequest, paths: cond.RequestPaths,
                   max_target_values: int = DEFAULT_MAX_TARGET_VALUES) -> "EvaluateQuery":
        q = cls(target=req.target_field, universe=req.universe or None, segment=segment_from_proto(req, paths),
                evidence_fields=evidence_fields_from_proto(req), seed=int(req.seed),
                max_target_values=max_target_values, method=method_from_proto(req.method, DEFAULT_BULK_METHOD))
        given = {"method"} if req.method else set()
        if req.holdout_fraction != 0:  # 0 means the default
            q.holdout_fraction = req.holdout_fraction
            given.add("holdout_fraction")
        q.given = frozenset(given | optionals_from_proto(req, q))
        return q


# --- the result ---------------------------------------------------------------------------


@dataclass
class CalibrationBin:
    predicted_low: float
    predicted_high: float
    mean_predicted: float
    observed_rate: float
    count: int

    def to_json(self) -> dict:
        return {"predicted_low": json_number(float(self.predicted_low)),
                "predicted_high": json_number(float(self.predicted_high)),
                "mean_predicted": json_number(float(self.mean_predicted)),
                "observed_rate": json_number(float(self.observed_rate)), "count": int(self.count)}

    def to_proto(self) -> pb.CalibrationBin:
        return pb.CalibrationBin(predicted_low=self.predicted_low, predicted_high=self.predicted_high,
                                 mean_predicted=self.mean_predicted, observed_rate=self.observed_rate,
                                 count=int(self.count))

    @classmethod
    def from_proto(cls, msg: pb.CalibrationBin) -> "CalibrationBin":
        return cls(msg.predicted_low, msg.predicted_high, msg.mean_predicted, msg.observed_rate, msg.count)


def _empty_rows() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class EvaluateResult:
    snapshot: str
    version: str
    universe: str
    target: str
    method: str
    values: list[str]
    n_train: int
    n_test: int
    accuracy: float
    baseline_accuracy: float
    baseline_value: str
    log_loss: float
    auc: float | None
    positive_value: str | None
    mean_rank: float
    geometric_mean_probability: float
    calibration: list[CalibrationBin]
    calibration_of: str  # what the calibration bins: P(positive) (binary) or top-1 confidence
    test_rows: np.ndarray  # int64 rows of the test set (in row order); empty when it came over gRPC
    true_index: np.ndarray  # index into `values` of each test row's value; empty over gRPC
    probabilities: np.ndarray  # [n_test, K]; [0, K] over gRPC
    elapsed_ms: float
    calibration_merged: bool = False  # the privacy floor merged adjacent calibration bins
    regularisation: Regularisation | None = None  # logistic: its penalty; factorized: its prior strength

    def to_json(self) -> dict:
        out = {
            "snapshot": self.snapshot, "version": self.version, "from": self.universe, "target": self.target,
            "method": self.method, "values": list(self.values), "n_train": int(self.n_train),
            "n_test": int(self.n_test), "accuracy": json_number(float(self.accuracy)),
            "baseline_accuracy": json_number(float(self.baseline_accuracy)), "baseline_value": self.baseline_value,
            "log_loss": json_number(float(self.log_loss)),
            "auc": None if self.auc is None else json_number(float(self.auc)),
            "positive_value": self.positive_value, "mean_rank": json_number(float(self.mean_rank)),
            "geometric_mean_probability": json_number(float(self.geometric_mean_probability)),
            "calibration_of": self.calibration_of, "calibration": [b.to_json() for b in self.calibration],
            "elapsed_ms": round(self.elapsed_ms, 3),
        }
        if self.calibration_merged:  # the server's privacy floor (docs/server.md)
            out["calibration_merged"] = True
        if self.regularisation is not None:  # logistic
            out["regularisation"] = self.regularisation.to_json()
        return out

    def to_proto(self, server_ms: float) -> pb.EvaluateResponse:
        resp = pb.EvaluateResponse(
            info=response_info(self, server_ms), test_count=int(self.n_test), train_count=int(self.n_train),
            accuracy=self.accuracy, baseline_accuracy=self.baseline_accuracy, log_loss=self.log_loss,
            mean_rank=self.mean_rank, geometric_mean_probability=self.geometric_mean_probability,
            calibration=[b.to_proto() for b in self.calibration], universe=self.universe,
            target_field=self.target, method=method_to_proto(self.method), values=list(self.values),
            baseline_value=self.baseline_value, calibration_of=self.calibration_of,
            calibration_merged=self.calibration_merged,
        )
        if self.auc is not None:
            resp.auc = self.auc
        if self.positive_value is not None:
            resp.positive_value = self.positive_value
        if self.regularisation is not None:
            resp.regularisation.CopyFrom(self.regularisation.to_proto())
        return resp

    @classmethod
    def from_proto(cls, resp: pb.EvaluateResponse) -> "EvaluateResult":
        """No per-row arrays: test_rows, true_index and probabilities come back empty."""
        return cls(
            snapshot=resp.info.snapshot_name, version=resp.info.snapshot_version, universe=resp.universe,
            target=resp.target_field, method=name_from_proto(pb.PredictMethod, "PREDICT_METHOD_", resp.method),
            values=list(resp.values), n_train=resp.train_count, n_test=resp.test_count, accuracy=resp.accuracy,
            baseline_accuracy=resp.baseline_accuracy, baseline_value=resp.baseline_value, log_loss=resp.log_loss,
            auc=resp.auc if resp.HasField("auc") else None,
            positive_value=resp.positive_value if resp.HasField("positive_value") else None,
            mean_rank=resp.mean_rank, geometric_mean_probability=resp.geometric_mean_probability,
            calibration=[CalibrationBin.from_proto(b) for b in resp.calibration],
            calibration_of=resp.calibration_of,
            test_rows=_empty_rows(), true_index=_empty_rows(),
            probabilities=np.zeros((0, len(resp.values)), dtype=np.float64),
            elapsed_ms=resp.info.server_time_ms, calibration_merged=resp.calibration_merged,
            regularisation=Regularisation.from_proto(resp.regularisation) if resp.HasField("regularisation") else None,
        )
