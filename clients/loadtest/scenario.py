"""Load-test scenarios: a TOML file describing a weighted mix of segsrv requests.

    name = "default"
    seed = 1
    universe = "customers"          # default: "customers" if the snapshot has it, else its first universe
    pool_size = 500                 # distinct requests generated per method

    [ids]                           # ids for Predict (evidence = a customer) and Assign
    pattern = "{n}"                 # str.format pattern over an integer n (the demo shop: 1..N)
    first = 1
    last = "row_count"              # an integer, or "row_count": the universe's rows

    [methods.relate]
    weight = 4
    terms = [1, 3]
    ...

Every key is documented in docs/loadtest.md. `load_scenario(path)` parses and checks the
file on its own (ScenarioError names the key at fault); the request generator checks the
parts that need the snapshot (universe, fields, targets) once it has fetched
GetSnapshotInfo.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("relate", "count", "predict", "assign")
# full gRPC method names
RPC_NAMES = {"relate": "Relate", "count": "Count", "predict": "Predict", "assign": "Assign"}
SERVICE = "segsrv.v1.SegmentationService"
MAX_TERMS = 8          # terms of a generated conjunction
MAX_POOL = 100_000     # distinct requests per method
MAX_BATCH = 10_000     # ids of one Assign request
VALUE_CHOICES = ("weighted", "uniform")
PREDICT_METHODS = ("", "conjunction", "factorized", "logistic")
RELATE_ORDERS = ("", "lift_low", "lift_high", "lift_smoothed", "lift", "support", "p_value", "q_value",
                 "mutual_information", "p", "leverage", "conviction", "jaccard", "certainty", "kulczynski", "zhang",
                 "support_ratio", "p_base", "p_not", "n_feature")  # "": the default; the rest: segsrv.ops.relate


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key at fault."""


@dataclass
class RelateSpec:
    weight: float = 0.0
    terms: tuple[int, int] = (1, 3)
    fields: list[str] = field(default_factory=list)
    limit: int = 20
    order_by: str = ""


@dataclass
class CountSpec:
    weight: float = 0.0
    terms: tuple[int, int] = (1, 3)


@dataclass
class PredictSpec:
    weight: float = 0.0
    targets: list[str] = field(default_factory=list)
    max_target_values: int = 8
    segment_terms: tuple[int, int] = (0, 1)
    evidence_terms: tuple[int, int] = (1, 3)
    id_fraction: float = 0.5
    method: str = ""


@dataclass
class AssignSpec:
    weight: float = 0.0
    batch: tuple[int, int] = (1, 20)
    include_propensities: bool = True


@dataclass
class IdSpec:
    pattern: str | None = "{n}"
    first: int = 1
    last: int | str = "row_count"
    ids: list[str] | None = None      # explicit list (ids.list or the lines of ids.file)
    file: Path | None = None

    def resolve(self, row_count: int) -> "IdSource":
        if self.ids is not None:
            return IdSource(ids=list(self.ids))
        last = row_count if self.last == "row_count" else int(self.last)
        if last < self.first:
            raise ScenarioError(f"ids: last ({last}) is below first ({self.first})"
                                + (" (the universe is empty)" if self.last == "row_count" else ""))
        return IdSource(pattern=self.pattern, first=self.first, last=last)


@dataclass
class IdSource:
    ids: list[str] | None = None
    pattern: str | None = None
    first: int = 1
    last: int = 1

    def draw(self, rng) -> str:
        if self.ids is not None:
            return self.ids[rng.randrange(len(self.ids))]
        return self.pattern.format(n=rng.randint(self.first, self.last))

    def describe(self) -> str:
        if self.ids is not None:
            return f"{len(self.ids)} listed ids"
        return f"{self.pattern!r} for n in {self.first}..{self.last}"


@dataclass
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    universe: str | None = None
    snapshot: str = ""
    pool_size: int = 500
    timeout_s: float = 10.0
    value_choice: str = "weighted"
    exclude_fields: list[str] = field(default_factory=list)
    ids: IdSpec = field(default_factory=IdSpec)
    relate: RelateSpec = field(default_factory=RelateSpec)
    count: CountSpec = field(default_factory=CountSpec)
    predict: PredictSpec = field(default_factory=PredictSpec)
    assign: AssignSpec = field(default_factory=AssignSpec)
    path: Path | None = None

    def spec(self, method: str):
        return getattr(self, method)

    @property
    def weights(self) -> dict[str, float]:
        """The methods with a positive weight, in METHODS order."""
        return {m: self.spec(m).weight for m in METHODS if self.spec(m).weight > 0}

    @property
    def shares(self) -> dict[str, float]:
        w = self.weights
        total = sum(w.values())
        return {m: v / total for m, v in w.items()}

    def with_weights(self, overrides: dict[str, float]) -> "Scenario":
        """A copy with some weights replaced (the --weights flag); checks the result."""
        import copy

        out = copy.deepcopy(self)
        for m, w in overrides.items():
            if m not in METHODS:
                raise ScenarioError(f"weights: unknown method {m!r} (known: {', '.join(METHODS)})")
            _check_weight(w, f"weights.{m}")
            out.spec(m).weight = float(w)
        if not out.weights:
            raise ScenarioError("weights: every method has weight 0; nothing to send")
        return out

    def to_json(self) -> dict:
        out = {
            "name": self.name, "description": self.description, "path": str(self.path) if self.path else None,
            "seed": self.seed, "universe": self.universe, "snapshot": self.snapshot, "pool_size": self.pool_size,
            "timeout_s": self.timeout_s, "value_choice": self.value_choice, "exclude_fields": self.exclude_fields,
            "weights": self.weights,
            "ids": ({"list": len(self.ids.ids)} if self.ids.ids is not None
                    else {"pattern": self.ids.pattern, "first": self.ids.first, "last": self.ids.last}),
        }
        for m in METHODS:
            spec = self.spec(m)
            out[m] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(spec).items()}
        return out


# --- parsing ------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "seed", "universe", "snapshot", "pool_size", "timeout_s", "value_choice",
             "exclude_fields", "ids", "methods"}
_ID_KEYS = {"pattern", "first", "last", "list", "file"}
_METHOD_KEYS = {
    "relate": {"weight", "terms", "fields", "limit", "order_by"},
    "count": {"weight", "terms"},
    "predict": {"weight", "targets", "max_target_values", "segment_terms", "evidence_terms", "id_fraction", "method"},
    "assign": {"weight", "batch", "include_propensities"},
}


def _unknown(obj: dict, allowed: set, where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ScenarioError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} "
                            f"(allowed: {', '.join(sorted(allowed))})")


def _int(v, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ScenarioError(f"{where}: expected an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ScenarioError(f"{where}: must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise ScenarioError(f"{where}: must be at most {hi}, got {v}")
    return v


def _num(v, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ScenarioError(f"{where}: expected a number, got {v!r}")
    v = float(v)
    if v != v:
        raise ScenarioError(f"{where}: must not be NaN")
    if lo is not None and v < lo:
        raise ScenarioError(f"{where}: must be at least {lo}, got {v}")
    if hi is not None and v > hi:
        raise ScenarioError(f"{where}: must be at most {hi}, got {v}")
    return v


def _check_weight(v, where: str) -> float:
    return _num(v, where, lo=0.0, hi=1e6)


def _str(v, where: str) -> str:
    if not isinstance(v, str):
        raise ScenarioError(f"{where}: expected a string, got {v!r}")
    return v


def _strs(v, where: str) -> list[str]:
    if not isinstance(v, list):
        raise ScenarioError(f"{where}: expected a list of strings, got {v!r}")
    out = []
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s:
            raise ScenarioError(f"{where}[{i}]: expected a non-empty string, got {s!r}")
        out.append(s)
    return out


def _range(v, where: str, lo: int, hi: int) -> tuple[int, int]:
    """[min, max] (or a single integer meaning [n, n]) within lo..hi."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    if not isinstance(v, list) or len(v) != 2:
        raise ScenarioError(f"{where}: expected [min, max] or an integer, got {v!r}")
    a = _int(v[0], f"{where}[0]", lo, hi)
    b = _int(v[1], f"{where}[1]", lo, hi)
    if a > b:
        raise ScenarioError(f"{where}: min {a} is above max {b}")
    return a, b


def parse_scenario(obj: dict, *, name: str = "scenario", base_dir: Path | None = None,
                   path: Path | None = None) -> Scenario:
    """A Scenario from the parsed TOML table; raises ScenarioError."""
    if not isinstance(obj, dict):
        raise ScenarioError("a scenario is a TOML table")
    _unknown(obj, _TOP_KEYS, "scenario")
    sc = Scenario(name=_str(obj.get("name", name), "name"), path=path)
    sc.description = _str(obj.get("description", ""), "description")
    sc.seed = _int(obj.get("seed", 1), "seed", 0, 2**63 - 1)
    if "universe" in obj:
        sc.universe = _str(obj["universe"], "universe") or None
    sc.snapshot = _str(obj.get("snapshot", ""), "snapshot")
    sc.pool_size = _int(obj.get("pool_size", 500), "pool_size", 1, MAX_POOL)
    sc.timeout_s = _num(obj.get("timeout_s", 10.0), "timeout_s", 0.001, 600.0)
    sc.value_choice = _str(obj.get("value_choice", "weighted"), "value_choice")
    if sc.value_choice not in VALUE_CHOICES:
        raise ScenarioError(f"value_choice: expected one of {', '.join(VALUE_CHOICES)}, got {sc.value_choice!r}")
    sc.exclude_fields = _strs(obj.get("exclude_fields", []), "exclude_fields")

    ids = obj.get("ids", {})
    if not isinstance(ids, dict):
        raise ScenarioError("ids: expected a table")
    _unknown(ids, _ID_KEYS, "ids")
    sources = [k for k in ("pattern", "list", "file") if k in ids]
    if len(sources) > 1:
        raise ScenarioError(f"ids: give one of pattern, list or file, not {' and '.join(sources)}")
    spec = IdSpec()
    if "list" in ids:
        spec.ids = _strs(ids["list"], "ids.list")
        if not spec.ids:
            raise ScenarioError("ids.list: empty")
        spec.pattern = None
    elif "file" in ids:
        f = Path(_str(ids["file"], "ids.file"))
        if not f.is_absolute() and base_dir is not None:
            f = base_dir / f
        try:
            lines = f.read_text().splitlines()
        except OSError as exc:
            raise ScenarioError(f"ids.file: cannot read {f}: {exc.strerror or exc}") from None
        spec.ids = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
        if not spec.ids:
            raise ScenarioError(f"ids.file: {f} holds no ids")
        spec.file = f
        spec.pattern = None
    else:
        spec.pattern = _str(ids.get("pattern", "{n}"), "ids.pattern")
        try:
            a, b = spec.pattern.format(n=1), spec.pattern.format(n=2)
        except (KeyError, IndexError, ValueError) as exc:
            raise ScenarioError(f"ids.pattern: {spec.pattern!r} is not a format over n: {exc}") from None
        if a == b:
            raise ScenarioError(f"ids.pattern: {spec.pattern!r} does not use {{n}}")
    for k in ("first", "last"):
        if k in ids and spec.ids is not None:
            raise ScenarioError(f"ids.{k}: only with ids.pattern")
    spec.first = _int(ids.get("first", 1), "ids.first", 0)
    last = ids.get("last", "row_count")
    if last != "row_count":
        last = _int(last, "ids.last", 0)
        if last < spec.first:
            raise ScenarioError(f"ids.last: {last} is below ids.first {spec.first}")
    spec.last = last
    sc.ids = spec

    methods = obj.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ScenarioError("methods: expected a table of [methods.NAME] sections (relate, count, predict, assign)")
    _unknown(methods, set(METHODS), "methods")
    for m, body in methods.items():
        where = f"methods.{m}"
        if not isinstance(body, dict):
            raise ScenarioError(f"{where}: expected a table")
        _unknown(body, _METHOD_KEYS[m], where)
        spec = sc.spec(m)
        spec.weight = _check_weight(body.get("weight", 1.0), f"{where}.weight")
        if m in ("relate", "count"):
            spec.terms = _range(body.get("terms", [1, 3]), f"{where}.terms", 1, MAX_TERMS)
        if m == "relate":
            spec.fields = _strs(body.get("fields", []), f"{where}.fields")
            spec.limit = _int(body.get("limit", 20), f"{where}.limit", 1, 10_000)
            spec.order_by = _str(body.get("order_by", ""), f"{where}.order_by")
            if spec.order_by not in RELATE_ORDERS:
                raise ScenarioError(f"{where}.order_by: unknown order {spec.order_by!r} "
                                    f"(known: {', '.join(o for o in RELATE_ORDERS if o)})")
        elif m == "predict":
            spec.targets = _strs(body.get("targets", []), f"{where}.targets")
            spec.max_target_values = _int(body.get("max_target_values", 8), f"{where}.max_target_values", 2, 64)
            spec.segment_terms = _range(body.get("segment_terms", [0, 1]), f"{where}.segment_terms", 0, MAX_TERMS)
            spec.evidence_terms = _range(body.get("evidence_terms", [1, 3]), f"{where}.evidence_terms", 0, MAX_TERMS)
            spec.id_fraction = _num(body.get("id_fraction", 0.5), f"{where}.id_fraction", 0.0, 1.0)
            spec.method = _str(body.get("method", ""), f"{where}.method")
            if spec.method not in PREDICT_METHODS:
                raise ScenarioError(f"{where}.method: unknown method {spec.method!r} "
                                    f"(known: {', '.join(x for x in PREDICT_METHODS if x)})")
            if spec.evidence_terms[1] == 0 and spec.id_fraction == 0.0:
                raise ScenarioError(f"{where}: no evidence (evidence_terms is [0, 0] and id_fraction is 0)")
        elif m == "assign":
            spec.batch = _range(body.get("batch", [1, 20]), f"{where}.batch", 1, MAX_BATCH)
            v = body.get("include_propensities", True)
            if not isinstance(v, bool):
                raise ScenarioError(f"{where}.include_propensities: expected true or false, got {v!r}")
            spec.include_propensities = v
    if not sc.weights:
        raise ScenarioError("methods: every method has weight 0; nothing to send")
    return sc


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_scenario(obj, name=path.stem, base_dir=path.parent, path=path)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def parse_weights(text: str) -> dict[str, float]:
    """"relate=4,count=3,assign=0" -> {"relate": 4.0, ...} (the --weights flag)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ScenarioError(f"weights: expected METHOD=WEIGHT, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ScenarioError(f"weights: {value!r} is not a number") from None
    return out
