"""One contract per operation: its query and result types, validation, JSON form and proto mapping.

    count, relate, predict, score, evaluate, assign, export, profile, segments, info, discover

Each module declares its parameters once (segsrv.ops.params), reads and writes the
JSON form (`from_json` / `to_json`) and the segsrv.v1 messages (`from_proto` /
`to_proto`); conditions are defined once in segsrv.ops.conditions. The service
(segsrv.service), the gRPC servicer, the Python client and the CLI all use these
types, so a new parameter touches its ops module and the proto, nothing else.

Light on purpose: numpy and protobuf only, no scipy, duckdb, compiled kernels or
engine (importing segsrv.client must stay cheap).
"""

from __future__ import annotations

from .assign import AssignQuery, AssignResult
from .count import CountQuery, CountResult
from .discover import DiscoverQuery, DiscoverResult
from .evaluate import EvaluateQuery, EvaluateResult
from .export import ExportQuery
from .info import InfoQuery, InfoResult
from .predict import PredictQuery, PredictResult
from .profile import ProfileQuery, ProfileResult
from .relate import RelateQuery, RelateResult
from .score import ScoreQuery, ScoreResult
from .segments import SegmentsQuery, SegmentsResult

# the JSON query kinds of `segsrv query KIND`, `segsrv.service.run_json` and the client's methods
QUERY_TYPES = {
    "count": CountQuery, "relate": RelateQuery, "predict": PredictQuery, "score": ScoreQuery,
    "evaluate": EvaluateQuery, "profile": ProfileQuery, "assign": AssignQuery, "export": ExportQuery,
    "segments": SegmentsQuery, "info": InfoQuery, "discover": DiscoverQuery,
}


def render(query, result) -> dict:
    """A result's JSON answer (Relate's columns are chosen by its query's `select`)."""
    return result.to_json(query.select) if isinstance(query, RelateQuery) else result.to_json()


__all__ = [
    "AssignQuery", "AssignResult", "CountQuery", "CountResult", "DiscoverQuery", "DiscoverResult", "EvaluateQuery", "EvaluateResult", "ExportQuery",
    "InfoQuery", "InfoResult", "PredictQuery", "PredictResult", "ProfileQuery", "ProfileResult", "RelateQuery",
    "RelateResult", "ScoreQuery", "ScoreResult", "SegmentsQuery", "SegmentsResult", "QUERY_TYPES", "render",
]
