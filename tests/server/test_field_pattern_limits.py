"""Globs in a request cost bounded CPU and memory (issue 14, item 4): Relate `fields`, Profile `fields`
and Predict `evidence_fields` with a 1 MB glob, or too many globs, are RESOURCE_EXHAUSTED at once."""

from __future__ import annotations

import resource
import time

import grpc
import pytest

from segsrv.engine.fields import MAX_GLOBS, MAX_PATTERN_CHARS
from segsrv.v1 import condition_pb2 as c
from segsrv.v1 import segsrv_pb2 as pb

SEGMENT = c.Condition(term=c.Term(field="segment", value="dog_owner"))


def _calls(patterns: list[str]):
    return {
        "Relate": lambda stub: stub.Relate(pb.RelateRequest(universe="customers", condition=SEGMENT, fields=patterns),
                                           timeout=30),
        "Profile": lambda stub: stub.Profile(pb.ProfileRequest(universe="customers", segment=SEGMENT, fields=patterns),
                                             timeout=30),
        "Predict": lambda stub: stub.Predict(pb.PredictRequest(universe="customers", target_field="churned",
                                                               evidence_fields=patterns), timeout=30),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.mark.parametrize("method", ["Relate", "Profile", "Predict"])
@pytest.mark.parametrize("patterns,what", [
    (["*a" * (1 << 19)], "characters exceeds the maximum"),  # a 1 MB glob took 10.7 s of CPU
    ([f"*{i}*" for i in range(MAX_GLOBS + 1)], "globs exceed the maximum"),
])
def test_oversized_globs_are_refused_at_once(stub, rpc_details, method, patterns, what):
    t0, cpu0 = time.monotonic(), _cpu()  # the server runs in this process
    with pytest.raises(grpc.RpcError) as info:
        _calls(patterns)[method](stub)
    code, message, violations, error_info = rpc_details(info.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and what in message, message
    assert error_info.reason == "LIMIT_EXCEEDED"
    assert len(message) < 1000  # the pattern is not echoed whole
    assert time.monotonic() - t0 < 2.0 and _cpu() - cpu0 < 1.0


def test_globs_within_the_limits_still_work(stub):
    worst = "r" + "*" * (MAX_PATTERN_CHARS - 2) + "n"  # matches region
    got = stub.Relate(pb.RelateRequest(universe="customers", condition=SEGMENT, fields=["regi*", worst, "**.category"]),
                      timeout=30)
    assert {h.field for h in got.hits} >= {"region"}
