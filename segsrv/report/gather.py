"""What a report shows, gathered through a backend's `call(query)`: the in-process service (`--local`) or
the Python client (`--addr`), so both give the same numbers. Returns plain JSON-able data; rendering is
segsrv.report.render.

Segments come from the published catalog (ListSegments, then Profile of `{"$segment": NAME}`) or from
Discover (its segments' `where`), as `ReportOptions.segments` says ("auto": the catalog when the
snapshot has one). Each declared model of the snapshot (in-process only: no RPC lists them) and each
`--evaluate` query is run through Evaluate. Drift (`--compare VERSION`) is `segsrv diff`'s engine and
needs the snapshot's files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SegsrvError
from ..ops import DiscoverQuery, EvaluateQuery, InfoQuery, ProfileQuery, SegmentsQuery

SEGMENT_SOURCES = ("auto", "catalog", "discover")
DEFAULT_MAX_SEGMENTS = 12
DEFAULT_MAX_FIELDS = 6
DEFAULT_VALUES_PER_FIELD = 5
DEFAULT_DRIFT_FEATURES = 5
STACKED_FIELDS = 2  # fields per segment drawn as stacked proportions (seed 004's histograms)


@dataclass
class ReportOptions:
    universe: str | None = None
    segments: str = "auto"  # auto | catalog | discover
    discover: dict = field(default_factory=dict)  # a discover query's JSON, laid under universe and limit
    max_segments: int = DEFAULT_MAX_SEGMENTS
    max_fields: int = DEFAULT_MAX_FIELDS
    values_per_field: int = DEFAULT_VALUES_PER_FIELD
    declared_models: bool = True
    evaluate: list[dict] = field(default_factory=list)  # extra Evaluate queries (JSON form)
    compare: str | None = None  # drift from this version to the reported one
    title: str | None = None

    def validate(self) -> None:
        if self.segments not in SEGMENT_SOURCES:
            raise SegsrvError(f"--segments: expected one of {', '.join(SEGMENT_SOURCES)}, got {self.segments!r}")
        for name in ("max_segments", "max_fields", "values_per_field"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SegsrvError(f"--{name.replace('_', '-')}: expected a whole number >= 1, got {value!r}")


def _answer(result) -> dict:
    """A result's JSON form without its timing (the one thing two runs do not share)."""
    out = result.to_json()
    out.pop("elapsed_ms", None)
    return out


def _ratio(a, b) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def stackable(kind: str | None, values: list[dict]) -> bool:
    """A field's listed shares can be stacked into one bar when each row has at most one value."""
    return kind != "multi" and sum(v["segment_share"] for v in values) <= 1 + 1e-9


def _profile(call, universe: str, where, options: ReportOptions, kinds: dict[str, str]) -> dict:
    query = ProfileQuery.from_json({"from": universe, "segment": where, "values_per_field": options.values_per_field})
    answer = _answer(call(query))
    fields = answer["fields"][:options.max_fields]
    for f in fields:
        f["kind"] = kinds.get(f["field"])
    numeric = []
    for n in answer["numeric"]:
        seg, pop = n["segment"], n["population"]
        # relative compactness (seed 004): below 1, the segment's values are tighter than everyone's
        numeric.append({**n, "compactness": _ratio(seg["std"], pop["std"])})
    numeric.sort(key=lambda n: (n["compactness"] is None, n["compactness"] or 0.0, n["field"]))
    stacked = [f["field"] for f in fields if stackable(f["kind"], f["over"] + f["under"])]
    return {"n_rows": answer["n_rows"], "n_segment": answer["n_segment"], "suppressed": answer.get("suppressed", False),
            "fields": fields, "numeric": numeric, "stacked": stacked[:STACKED_FIELDS],
            "n_fields": len(answer["fields"])}


def _catalog_segments(call, universe: str | None, options: ReportOptions) -> tuple[list[dict], int]:
    listed = call(SegmentsQuery(universe=universe)).to_json()
    return [{"name": s["name"], "description": s["description"], "universe": s["universe"] or universe,
             "where": {"$segment": s["name"]}, "definition": s["where"], "size": s["size"], "share": s["share"],
             "lift": None} for s in listed[:options.max_segments]], len(listed)


def _discovered_segments(call, universe: str | None, options: ReportOptions) -> tuple[list[dict], dict]:
    obj = dict(options.discover)
    if universe:
        obj["from"] = universe
    obj.setdefault("limit", options.max_segments)
    answer = _answer(call(DiscoverQuery.from_json(obj)))
    segments = [{"name": s["name"], "description": s["description"], "universe": answer["from"],
                 "where": s["where"], "definition": s["where"], "size": s["support"], "share": s["share"],
                 "lift": s["lift"], "p_value": s["p_value"], "q_value": s["q_value"],
                 **({"target_rate": s["target_rate"]} if "target_rate" in s else {})}
                for s in answer["segments"][:options.max_segments]]
    search = {k: answer.get(k) for k in ("from", "n_rows", "candidates", "tested", "min_support", "min_lift",
                                         "target", "target_count")}
    return segments, search


def declared_model_queries(backend) -> list[tuple[str, dict]]:
    """(name, Evaluate query JSON) of each model declared in the snapshot. Only the in-process service
    can say: the manifest's models are not served over gRPC (give them with --evaluate over --addr)."""
    snapshots = getattr(backend, "snapshots", None)
    if snapshots is None:
        return []
    models = getattr(snapshots.resolve(), "models", None) or {}
    return [(name, dict(models[name]["declaration"])) for name in sorted(models)]


def _model(call, name: str, source: str, obj: dict) -> dict:
    answer = _answer(call(EvaluateQuery.from_json(obj)))
    return {"name": name, "source": source, "query": obj, "evaluation": answer}


def _drift(location, version_b: str, version_a: str, universe: str | None) -> dict:
    from ..engine.diff import diff_versions, open_versions

    snap_a, snap_b = open_versions(location, version_a, version_b)
    result = diff_versions(snap_a, snap_b, top_features=DEFAULT_DRIFT_FEATURES, keep_ids=False).to_json()
    result.pop("elapsed_ms", None)
    if universe:
        result["segments"] = [s for s in result["segments"]
                              if s["universe"] in (universe, None)]
    return result


def gather_report(backend, options: ReportOptions, location=None,
                  say: Callable[[str], None] = lambda _: None) -> dict:
    """Everything the report shows, as JSON-able data. `location` (ROOT[/NAME]) is needed for drift only."""
    options.validate()
    if options.compare and location is None:
        raise SegsrvError("--compare VERSION: drift is computed from the snapshot's files (`segsrv diff`'s engine), "
                          "which no RPC serves; give ROOT/NAME instead of --addr")
    call = backend.call
    info = _answer(call(InfoQuery(universe=options.universe)))
    universes = info["universes"]
    say(f"snapshot {info['name']}/{info['version']}: {', '.join(universes)}")

    source = options.segments
    segments, search, n_listed = [], None, 0
    if source in ("auto", "catalog"):
        segments, n_listed = _catalog_segments(call, options.universe, options)
        if source == "auto":
            source = "catalog" if n_listed else "discover"
        elif not n_listed:
            raise SegsrvError(f"--segments catalog: snapshot {info['name']!r} version {info['version']!r} has no "
                              "segment catalog; publish one with `segsrv segments apply`, or use --segments discover")
    if source == "discover":
        if not options.universe and not options.discover.get("from") and len(universes) > 1:
            raise SegsrvError(f"--from: snapshot {info['name']!r} has several universes {sorted(universes)}; "
                              f"name the one to discover segments in, e.g. --from {sorted(universes)[0]}")
        say("discovering segments...")
        segments, search = _discovered_segments(call, options.universe, options)
        n_listed = len(segments)
    universe = options.universe or (segments[0]["universe"] if segments else None)
    if universe is None and len(universes) == 1:
        universe = next(iter(universes))

    for i, seg in enumerate(segments):
        say(f"profile {i + 1}/{len(segments)}: {seg['name']}")
        seg_universe = seg["universe"] or universe
        if seg_universe is None:
            raise SegsrvError(f"--from: catalog segment {seg['name']!r} names no universe and the snapshot has "
                              f"several {sorted(universes)}; name the one to report on")
        kinds = {name: f["kind"] for name, f in universes[seg_universe]["fields"].items()}
        seg["profile"] = _profile(call, seg_universe, seg["where"], options, kinds)

    models = []
    if options.declared_models:
        for name, obj in declared_model_queries(backend):
            say(f"evaluate declared model {name}...")
            models.append(_model(call, name, "declared", obj))
    for i, obj in enumerate(options.evaluate):
        say(f"evaluate --evaluate #{i + 1} ({obj.get('target')})...")
        models.append(_model(call, f"evaluate #{i + 1}: {obj.get('target')}", "--evaluate", obj))

    drift = None
    if options.compare:
        say(f"drift from version {options.compare} to {info['version']}...")
        drift = _drift(location, info["version"], options.compare, universe)

    title = options.title or f"segsrv report: {info['name']}"
    return {"title": title, "snapshot": info["name"], "version": info["version"], "universe": universe,
            "description": info.get("description") or "", "segments_source": source,
            "segments_listed": n_listed, "discover_search": search, "segments": segments,
            "models": models, "drift": drift}
