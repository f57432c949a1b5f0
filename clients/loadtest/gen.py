"""The request generator: seeded random requests whose conditions come from the snapshot itself.

`fetch_catalog(addr, ...)` asks the server for GetSnapshotInfo (with every value and its
count) of the scenario's universe; `RequestGenerator(scenario, catalog)` checks the scenario
against it and draws requests:

  relate / count   a conjunction of `terms` terms on distinct fields (one term: a bare Term)
  predict          target = a field with 2..max_target_values values (or one of `targets`);
                   segment = `segment_terms` terms; evidence = a random id (with probability
                   `id_fraction`) or `evidence_terms` terms; never on the target field
  assign           a batch of `batch` random ids

Values are drawn in proportion to their row counts (value_choice = "weighted") or uniformly.
`build_pools()` draws `pool_size` requests per method, deterministic for a given seed and
catalog; the load workers and the ghz data files use the same pools.
"""

from __future__ import annotations

import fnmatch
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from .scenario import METHODS, RPC_NAMES, SERVICE, Scenario, ScenarioError


@dataclass
class FieldValues:
    name: str
    kind: str                    # categorical / multi / numeric
    values: list[str]
    counts: list[int]
    cum: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.cum = list(accumulate(max(0, c) for c in self.counts))


@dataclass
class Catalog:
    """What the server said about one universe of one snapshot."""

    snapshot_name: str
    snapshot_version: str
    universe: str
    key: str
    row_count: int
    fields: dict[str, FieldValues]
    universes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"snapshot": self.snapshot_name, "version": self.snapshot_version, "universe": self.universe,
                "key": self.key, "row_count": self.row_count, "fields": len(self.fields),
                "features": sum(len(f.values) for f in self.fields.values())}


_KINDS = {1: "categorical", 2: "multi", 3: "numeric"}


def catalog_from_response(resp, universe: str | None) -> Catalog:
    """The Catalog of `universe` (None: "customers" if present, else the first) from a GetSnapshotInfoResponse."""
    names = [u.name for u in resp.universes]
    if not names:
        raise ScenarioError(f"snapshot {resp.info.snapshot_name!r} has no universes")
    if universe is None:
        universe = "customers" if "customers" in names else names[0]
    if universe not in names:
        raise ScenarioError(f"universe: the snapshot has no universe {universe!r} (it has: {', '.join(names)})")
    u = next(x for x in resp.universes if x.name == universe)
    fields = {}
    for f in u.fields:
        vals = [(v.value, int(v.count)) for v in f.values]
        if not vals:
            continue
        fields[f.name] = FieldValues(f.name, _KINDS.get(f.kind, "categorical"), [v for v, _ in vals],
                                     [c for _, c in vals])
    return Catalog(resp.info.snapshot_name, resp.info.snapshot_version, u.name, u.key, int(u.row_count),
                   fields, names)


def fetch_info(addr: str, *, snapshot: str = "", universe: str | None = None, timeout: float = 30.0,
               metadata=()):
    """GetSnapshotInfo (every value with its count) of `universe` (None: every universe)."""
    import grpc

    from segsrv.v1 import segsrv_pb2 as pb
    from segsrv.v1 import segsrv_pb2_grpc as pb_grpc

    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.SegmentationServiceStub(channel)
        req = pb.GetSnapshotInfoRequest(snapshot=pb.SnapshotSelector(name=snapshot), universe=universe or "",
                                        include_values=True)
        return stub.GetSnapshotInfo(req, timeout=timeout, wait_for_ready=True, metadata=tuple(metadata) or None)


def fetch_catalog(addr: str, *, snapshot: str = "", universe: str | None = None, timeout: float = 30.0,
                  metadata=()) -> Catalog:
    return catalog_from_response(fetch_info(addr, snapshot=snapshot, universe=universe, timeout=timeout,
                                            metadata=metadata), universe)


def info_to_json(resp) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None)


def info_from_json(text: str):
    """A GetSnapshotInfoResponse saved by info_to_json (OUT/snapshot-info.json; the --snapshot-info flag)."""
    from google.protobuf import json_format

    from segsrv.v1 import segsrv_pb2 as pb

    return json_format.Parse(text, pb.GetSnapshotInfoResponse())


def _glob_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class RequestGenerator:
    """Draws requests for a scenario over a catalog; raises ScenarioError when the scenario does not fit it."""

    def __init__(self, scenario: Scenario, catalog: Catalog):
        from segsrv.v1 import condition_pb2, segsrv_pb2

        self.pb = segsrv_pb2
        self.cpb = condition_pb2
        self.sc = scenario
        self.cat = catalog
        self.cond_fields = sorted(n for n in catalog.fields if not _glob_any(n, scenario.exclude_fields))
        need_terms = 0
        for m in ("relate", "count"):
            if scenario.spec(m).weight > 0:
                need_terms = max(need_terms, scenario.spec(m).terms[1])
        p = scenario.predict
        if p.weight > 0:
            need_terms = max(need_terms, p.segment_terms[1] + 1, p.evidence_terms[1] + 1)
        if need_terms and len(self.cond_fields) < need_terms:
            raise ScenarioError(f"universe {catalog.universe!r} has {len(self.cond_fields)} usable fields "
                                f"(after exclude_fields); the scenario needs {need_terms} distinct ones")
        self.targets: list[str] = []
        if p.weight > 0:
            if p.targets:
                for t in p.targets:
                    if t not in catalog.fields:
                        raise ScenarioError(f"methods.predict.targets: universe {catalog.universe!r} has no field {t!r}")
                    n = len(catalog.fields[t].values)
                    if n > p.max_target_values:
                        raise ScenarioError(f"methods.predict.targets: {t!r} has {n} values, above "
                                            f"max_target_values {p.max_target_values}")
                self.targets = list(p.targets)
            else:
                self.targets = sorted(n for n, f in catalog.fields.items()
                                      if 2 <= len(f.values) <= p.max_target_values and n in self.cond_fields)
                if not self.targets:
                    raise ScenarioError(f"methods.predict: universe {catalog.universe!r} has no field with 2.."
                                        f"{p.max_target_values} values to predict")
        self.ids = None
        if scenario.assign.weight > 0 or (p.weight > 0 and p.id_fraction > 0):
            self.ids = scenario.ids.resolve(catalog.row_count)
        self.selector = segsrv_pb2.SnapshotSelector(name=scenario.snapshot)

    # --- pieces ------------------------------------------------------------------------

    def value(self, rng: random.Random, f: str) -> str:
        fv = self.cat.fields[f]
        if self.sc.value_choice == "uniform" or fv.cum[-1] <= 0:
            return fv.values[rng.randrange(len(fv.values))]
        return fv.values[bisect_right(fv.cum, rng.randrange(fv.cum[-1]))]

    def terms(self, rng: random.Random, n: int, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        pool = [f for f in self.cond_fields if f not in exclude] if exclude else self.cond_fields
        return [(f, self.value(rng, f)) for f in rng.sample(pool, n)]

    def condition(self, terms: list[tuple[str, str]]):
        c = self.cpb
        if len(terms) == 1:
            return c.Condition(term=c.Term(field=terms[0][0], value=terms[0][1]))
        return c.Condition(all_of=c.ConditionList(conditions=[
            c.Condition(term=c.Term(field=f, value=v)) for f, v in terms]))

    # --- requests ----------------------------------------------------------------------

    def relate(self, rng: random.Random):
        s = self.sc.relate
        req = self.pb.RelateRequest(snapshot=self.selector, universe=self.cat.universe,
                                    condition=self.condition(self.terms(rng, rng.randint(*s.terms))),
                                    fields=s.fields, limit=s.limit)
        if s.order_by:
            req.order_by = self.pb.RelateOrder.Value(f"RELATE_ORDER_{s.order_by.upper()}")
        return req

    def count(self, rng: random.Random):
        s = self.sc.count
        return self.pb.CountRequest(snapshot=self.selector, universe=self.cat.universe,
                                    condition=self.condition(self.terms(rng, rng.randint(*s.terms))))

    def predict(self, rng: random.Random):
        s = self.sc.predict
        target = self.targets[rng.randrange(len(self.targets))]
        req = self.pb.PredictRequest(snapshot=self.selector, universe=self.cat.universe, target_field=target)
        n_seg = rng.randint(*s.segment_terms)
        seg = self.terms(rng, n_seg, exclude=(target,)) if n_seg else []
        if seg:
            req.segment.CopyFrom(self.condition(seg))
        if self.ids is not None and rng.random() < s.id_fraction:
            req.id = self.ids.draw(rng)
        else:
            n_ev = max(1, rng.randint(*s.evidence_terms))
            used = (target,) + tuple(f for f, _ in seg)
            for f, v in self.terms(rng, min(n_ev, len(self.cond_fields) - len(used)), exclude=used):
                req.evidence.add(field=f, value=v)
        if s.method:
            req.method = self.pb.PredictMethod.Value(f"PREDICT_METHOD_{s.method.upper()}")
        return req

    def assign(self, rng: random.Random):
        s = self.sc.assign
        n = rng.randint(*s.batch)
        return self.pb.AssignRequest(snapshot=self.selector, universe=self.cat.universe,
                                     ids=[self.ids.draw(rng) for _ in range(n)],
                                     include_propensities=s.include_propensities)

    def build_pools(self, pool_size: int | None = None) -> dict[str, list]:
        """{method: [request, ...]} for the methods with a positive weight; one seeded stream per method."""
        n = pool_size or self.sc.pool_size
        pools = {}
        for i, m in enumerate(METHODS):
            if self.sc.spec(m).weight <= 0:
                continue
            rng = random.Random(f"{self.sc.seed}:{m}")
            draw = getattr(self, m)
            pools[m] = [draw(rng) for _ in range(n)]
        return pools


def rpc_path(method: str) -> str:
    return f"/{SERVICE}/{RPC_NAMES[method]}"


def pools_to_json(pools: dict[str, list]) -> dict[str, list[dict]]:
    """The pools as protobuf JSON (field names as in the .proto), e.g. for ghz --data-file."""
    from google.protobuf import json_format

    return {m: [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in reqs]
            for m, reqs in pools.items()}
