"""segsrv.service: the transport-neutral service that the gRPC servicer, the CLI and the client share."""

from __future__ import annotations

import pytest

from segsrv import ops
from segsrv.errors import LimitExceededError, PrivacyFloorError, SnapshotNotFoundError
from segsrv.ops.base import Selector
from segsrv.ops.conditions import Term
from segsrv.service import OneSnapshot, SegmentationService, run_json
from support import expect_count


@pytest.fixture(scope="module")
def service(petnord_snapshot):
    return SegmentationService(OneSnapshot(petnord_snapshot), max_result_hits=50)


def test_every_query_type_has_an_operation(service):
    assert set(ops.QUERY_TYPES.values()) <= set(service._methods)  # noqa: SLF001 - the dispatch table itself
    assert all(callable(m) for m in service._methods.values())  # noqa: SLF001


def test_relate_limit_defaults_to_the_smaller_of_100_and_the_maximum(service):
    q = ops.RelateQuery(universe="customers", where=Term("region", "oulu"), min_support=0)
    result = service.call(q)
    assert q.limit == 50 and len(result.hits) <= 50 and result.n_matching >= len(result.hits)
    with pytest.raises(LimitExceededError) as err:
        service.relate(ops.RelateQuery(universe="customers", limit=51))
    assert err.value.violations[0].field == "limit"


def test_a_source_of_one_snapshot_refuses_another_name(service, petnord_snapshot):
    assert service.call(ops.CountQuery(universe="customers"), Selector(petnord_snapshot.name)).count > 0
    with pytest.raises(SnapshotNotFoundError):
        service.call(ops.CountQuery(universe="customers"), Selector("elsewhere"))


def test_privacy_floor_is_the_service_s(petnord_snapshot, oracle):
    where = {"region": "oulu", "churned": True}
    query = {"from": "customers", "where": where}
    answer = run_json("count", petnord_snapshot, query)
    expect_count(answer, query, oracle)
    n = answer["count"]
    floored = SegmentationService(OneSnapshot(petnord_snapshot), privacy_k=n + 1)
    q = ops.CountQuery.from_json({"from": "customers", "where": where})
    result = floored.call(q)
    assert (result.count, result.suppressed) == (0, True)
    with pytest.raises(PrivacyFloorError):
        floored.call(ops.ExportQuery.from_json({"from": "customers", "where": where}))


def test_run_json_is_what_the_cli_prints(petnord_snapshot):
    out = run_json("relate", petnord_snapshot, {"from": "customers", "where": {"region": "oulu"},
                                                 "select": ["$field", "$value", "$support"], "limit": 3})
    assert [sorted(h) for h in out["hits"]] == [["$field", "$support", "$value"]] * len(out["hits"])
    assert "suppressed" not in out  # in-process: no floor
