"""The transport-neutral service: one method per operation, ops types in, ops types out.

    transport (gRPC servicer, CLI, tests) -> SegmentationService -> engine -> snapshot -> kernels

Every front end calls these methods (the gRPC servicer wraps them as FeatureBase's
HTTP and gRPC handlers wrap its API; `segsrv ... --local` calls them on a snapshot
directory, or on a sharded ROOT/NAME for the operations answered over shards: segsrv/engine/sharded/),
so a rule that is not about the transport lives here once: which snapshot answers
(``Selector``), the server's limits (largest Relate answer, most target values), the
privacy floor (segsrv/engine/privacy.py) and the checks between expensive steps
(segsrv/engine/cancel.py: the transport installs what "the caller is gone" means;
in-process nothing is installed and the checks do nothing).

``call(query, at)`` dispatches on the query's type, so a backend is anything with
``call``: this service (in-process) or segsrv.client.SegsrvClient (remote).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from .engine import cancel, privacy
from .engine.assign import assign
from .engine.count import count
from .engine.discover import DEFAULT_MAX_CANDIDATES, discover
from .engine.evaluate import evaluate
from .engine.export import export_members, ranking_query
from .engine.predict import pending_fits, predict, score_segment
from .engine.predict.target import is_multi_valued
from .engine.profile import profile
from .engine.relate import relate
from .engine.sharded import (
    ShardedSnapshot, is_sharded, open_sharded, sharded_assign, sharded_count,
    sharded_discover, sharded_evaluate, sharded_export, sharded_info, sharded_pending_fits, sharded_predict,
    sharded_profile, sharded_relate, sharded_score_segment,
)
from .errors import LimitExceededError, SegsrvError, SnapshotNotFoundError
from .ops import (
    QUERY_TYPES, AssignQuery, CountQuery, DiscoverQuery, EvaluateQuery, ExportQuery, InfoQuery, PredictQuery,
    ProfileQuery, RelateQuery, ScoreQuery, SegmentsQuery, render,
)
from .ops.base import ANY_SNAPSHOT, Selector
from .ops.conditions import SegmentRef
from .ops.info import InfoResult
from .ops.predict import DEFAULT_MAX_TARGET_VALUES, row_id_from_text
from .ops.relate import DEFAULT_LIMIT, MAX_LIMIT
from .ops.segments import SegmentsResult
from .snapshot.reader import Snapshot


@dataclass
class PendingHeader:
    """What a stream can say before a long fit: what answers, the total and the fits to come."""

    snapshot: str
    version: str
    pending: list[str]  # one sentence per model to fit (engine.predict.pending_fits)
    total: int | None = None  # an export's rows matching its condition


def _announce_then_run(header: PendingHeader | None, run, progress: Callable[[str], None] | None):
    """Tell `progress` what is fitted first (if anything), then answer."""
    for message in header.pending if progress is not None and header is not None else ():
        progress(message)
    return run()


class SnapshotSource(Protocol):
    def resolve(self, name: str = "", version: str = "") -> Snapshot: ...

    def names(self) -> list[str]: ...


class OneSnapshot:
    """A source of one open snapshot (the CLI's --local): a request may not name another."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def resolve(self, name: str = "", version: str = "") -> Snapshot:
        if name and name != self.snapshot.name:
            raise SnapshotNotFoundError(f"snapshot.name: only {self.snapshot.name!r} is open here, not {name!r}",
                                        [("snapshot.name", f"unknown snapshot {name!r}")])
        return self.snapshot

    def names(self) -> list[str]:
        return [self.snapshot.name]


class OneShardedSnapshot(OneSnapshot):
    """A source of one open sharded snapshot (the CLI's --local on ROOT/NAME holding SHARDS)."""

    def __init__(self, snapshot: ShardedSnapshot):
        self.snapshot = snapshot


class SegmentationService:
    """The operations over a source of snapshots.

    privacy_k          the privacy floor (0 or 1: off; the server's default is 10, in-process 0)
    max_result_hits    the most Relate hits one answer may hold (Relate's `limit` "0 / unset" means
                       min(100, this))
    max_target_values  the most values a Predict / Score / Evaluate / Export target may have
    max_discover_candidates  the most candidate features a Discover search may start from
    """

    def __init__(self, snapshots: SnapshotSource, *, privacy_k: int = 0, max_result_hits: int = MAX_LIMIT,
                 max_target_values: int = DEFAULT_MAX_TARGET_VALUES,
                 max_discover_candidates: int = DEFAULT_MAX_CANDIDATES):
        if privacy_k < 0:
            raise ValueError(f"privacy_k must be >= 0 (0 or 1: no floor), got {privacy_k}")
        if not 1 <= max_result_hits <= MAX_LIMIT:
            raise ValueError(f"max_result_hits must be within 1..{MAX_LIMIT}, got {max_result_hits}")
        if max_target_values < 2:
            raise ValueError(f"max_target_values must be at least 2, got {max_target_values}")
        if max_discover_candidates < 2:
            raise ValueError(f"max_discover_candidates must be at least 2, got {max_discover_candidates}")
        self.snapshots = snapshots
        self.privacy_k = int(privacy_k)
        self.max_result_hits = max_result_hits
        self.max_target_values = max_target_values
        self.max_discover_candidates = max_discover_candidates
        self._methods = {
            CountQuery: self.count, RelateQuery: self.relate, PredictQuery: self.predict,
            ScoreQuery: self.score_segment, EvaluateQuery: self.evaluate, AssignQuery: self.assign,
            ExportQuery: self.export_members, ProfileQuery: self.profile, SegmentsQuery: self.list_segments,
            InfoQuery: self.snapshot_info, DiscoverQuery: self.discover,
        }

    def call(self, query, at: Selector = ANY_SNAPSHOT, progress: Callable[[str], None] | None = None):
        """The operation of `query`'s type. progress: told what a ScoreSegment or ranked export fits
        before it fits (engine.predict.pending_fits); other operations never call it."""
        if progress is not None and isinstance(query, (ScoreQuery, ExportQuery)):
            return self._methods[type(query)](query, at, progress=progress)
        return self._methods[type(query)](query, at)

    def _any_snapshot(self, at: Selector) -> Snapshot | ShardedSnapshot:
        snap = self.snapshots.resolve(at.name, at.version)
        cancel.check()
        return snap

    def _refuse_small_rows(self, snap: Snapshot | ShardedSnapshot, universe: str | None, condition, what: str,
                           field: str) -> None:
        """The privacy floor's refusal of a segment / condition of 1..k-1 rows, or of all rows but 1..k-1,
        before the operation runs (so no other answer about those rows, an error included, comes first)."""
        if self.privacy_k > 1:
            c = (sharded_count if isinstance(snap, ShardedSnapshot) else count)(snap, universe, condition)
            privacy.refuse_small(c.count, self.privacy_k, what, field, total=c.n_rows)

    # -- operations ------------------------------------------------------------------

    def count(self, query: CountQuery, at: Selector = ANY_SNAPSHOT):
        snap = self._any_snapshot(at)
        answer = sharded_count if isinstance(snap, ShardedSnapshot) else count
        return privacy.floor_count(answer(snap, query.universe, query.where), self.privacy_k)

    def relate(self, query: RelateQuery, at: Selector = ANY_SNAPSHOT):
        if query.limit is None:  # "unset means 100", but never more than this service returns
            query.limit = min(DEFAULT_LIMIT, self.max_result_hits)
        if query.limit > self.max_result_hits:
            raise LimitExceededError(f"limit: {query.limit} exceeds the maximum {self.max_result_hits}",
                                     [("limit", f"at most {self.max_result_hits}")])
        if self.privacy_k > 1:  # hits below the floor are never candidates, so `limit` still fills up
            query.min_support = max(query.min_support, self.privacy_k)
        snap = self._any_snapshot(at)
        result = (sharded_relate if isinstance(snap, ShardedSnapshot) else relate)(snap, query)
        cancel.check()
        return privacy.floor_relate(result, self.privacy_k)

    def predict(self, query: PredictQuery, at: Selector = ANY_SNAPSHOT):
        query.max_target_values = self.max_target_values
        snap = self._any_snapshot(at)
        self._refuse_small_rows(snap, query.universe, query.segment, "the segment", "segment")
        if self.privacy_k > 1:  # a conjunction of fewer rows would be a factor resting on a small count
            query.min_support = max(query.min_support, self.privacy_k)
        sharded = isinstance(snap, ShardedSnapshot)
        if isinstance(query.row_id, str):  # ids travel as text; integer-keyed universes want an int
            u = snap.universe(query.universe).schema if sharded else snap.universe(query.universe)
            query.row_id = row_id_from_text(query.row_id, u.key_kind, u.name, u.key)
        answer = sharded_predict if sharded else predict
        result = privacy.floor_predict(answer(snap, query, self.privacy_k), self.privacy_k)
        cancel.check()
        return result

    def score_segment(self, query: ScoreQuery, at: Selector = ANY_SNAPSHOT,
                      progress: Callable[[str], None] | None = None):
        """progress: called with each pending fit's sentence (`pending_fits`) before fitting."""
        return _announce_then_run(*self.score_segment_steps(query, at), progress)

    def score_segment_steps(self, query: ScoreQuery, at: Selector = ANY_SNAPSHOT):
        """(None, or a PendingHeader when answering must fit first (the fits as sentences:
        engine.predict.pending_fits), the call that answers): a stream says what it will fit before
        it fits. The snapshot is resolved and the query checked (the privacy floor included) before
        this returns."""
        query.max_target_values = self.max_target_values
        snap = self._any_snapshot(at)
        self._refuse_small_rows(snap, query.universe, query.segment, "the segment", "segment")
        sharded = isinstance(snap, ShardedSnapshot)
        pending = (sharded_pending_fits if sharded else pending_fits)(snap, query)
        header = PendingHeader(snap.name, snap.version, pending) if pending else None

        def run():
            result = (sharded_score_segment if sharded else score_segment)(snap, query)
            privacy.refuse_small(result.n_members, self.privacy_k, "the segment", "segment")
            return result

        return header, run

    def evaluate(self, query: EvaluateQuery, at: Selector = ANY_SNAPSHOT):
        query.max_target_values = self.max_target_values
        snap = self._any_snapshot(at)
        self._refuse_small_rows(snap, query.universe, query.segment, "the segment", "segment")
        answer = sharded_evaluate if isinstance(snap, ShardedSnapshot) else evaluate
        result = privacy.floor_evaluate(answer(snap, query), self.privacy_k)
        cancel.check()
        return result

    def assign(self, query: AssignQuery, at: Selector = ANY_SNAPSHOT):
        snap = self._any_snapshot(at)
        result = (sharded_assign if isinstance(snap, ShardedSnapshot) else assign)(snap, query, self.privacy_k)
        result = privacy.floor_assign(result, self.privacy_k, snap.universe(result.universe).n_rows)
        cancel.check()
        return result

    def export_members(self, query: ExportQuery, at: Selector = ANY_SNAPSHOT,
                       progress: Callable[[str], None] | None = None):
        """progress: called with each pending fit's sentence of a ranked export before fitting."""
        return _announce_then_run(*self.export_members_steps(query, at), progress)

    def export_members_steps(self, query: ExportQuery, at: Selector = ANY_SNAPSHOT):
        """(None, or a PendingHeader when ranking must fit first, the call that answers). The header
        (snapshot, version, total: the rows matching the condition, pending: the fits as sentences)
        lets a stream send its first message before the fit; the export's total is the same."""
        query.max_target_values = self.max_target_values
        snap = self._any_snapshot(at)
        sharded = isinstance(snap, ShardedSnapshot)
        self._refuse_small_rows(snap, query.universe, query.condition, "the condition", "condition")
        header = None
        if query.target is not None:
            query.validate()
            pending = (sharded_pending_fits if sharded else pending_fits)(snap, ranking_query(query))
            if pending:
                total = (sharded_count if sharded else count)(snap, query.universe, query.condition).count
                privacy.refuse_small(total, self.privacy_k, "the condition", "condition")
                header = PendingHeader(snap.name, snap.version, pending, int(total))

        def run():
            result = (sharded_export if sharded else export_members)(snap, query)
            privacy.refuse_small(result.total, self.privacy_k, "the condition", "condition")
            cancel.check()
            return result

        return header, run

    def profile(self, query: ProfileQuery, at: Selector = ANY_SNAPSHOT):
        snap = self._any_snapshot(at)
        sharded = isinstance(snap, ShardedSnapshot)
        result = (sharded_profile if sharded else profile)(snap, query)
        u = (snap.schema if sharded else snap).universe(result.universe)  # the fields' kinds
        result = privacy.floor_profile(result, self.privacy_k,
                                       lambda f: f in u.fields and not is_multi_valued(u.fields[f]))
        cancel.check()
        return result

    def list_segments(self, query: SegmentsQuery, at: Selector = ANY_SNAPSHOT) -> SegmentsResult:
        snap = self._any_snapshot(at)
        if query.universe:
            snap.universe(query.universe)  # an unknown universe is an error, not an empty list
        counter = sharded_count if isinstance(snap, ShardedSnapshot) else count

        def size_of(name: str, universe: str | None) -> tuple[int, int]:
            cancel.check()
            size = counter(snap, universe, SegmentRef(name))
            return privacy.floor_size(size.count, self.privacy_k, size.n_rows), size.n_rows

        return SegmentsResult.from_snapshot(snap, query.universe, size_of)

    def snapshot_info(self, query: InfoQuery, at: Selector = ANY_SNAPSHOT) -> InfoResult:
        snap = self._any_snapshot(at)
        if isinstance(snap, ShardedSnapshot):
            info = sharded_info(snap, query, self.snapshots.names())
        else:
            universes = [snap.universe(query.universe)] if query.universe else list(snap.universes.values())
            info = InfoResult.from_snapshot(snap, universes, query.include_values, self.snapshots.names())
        return privacy.floor_info(info, self.privacy_k)

    def discover(self, query: DiscoverQuery, at: Selector = ANY_SNAPSHOT):
        snap = self._any_snapshot(at)
        search = sharded_discover if isinstance(snap, ShardedSnapshot) else discover
        result = search(snap, query, privacy_k=self.privacy_k, max_candidates=self.max_discover_candidates)
        cancel.check()
        return privacy.floor_discover(result, self.privacy_k)


def warm_version(snapshot: Snapshot | ShardedSnapshot, **options) -> dict:
    """What a server does to a version before serving it (segsrv.engine.warm.warm_snapshot; a sharded build:
    warm_sharded), its warm
    queries answered by a service over that version with the server's `options` (privacy floor, limits):
    the path a request takes, so the first request runs warm code in this layer too."""
    from .engine.warm import warm_sharded, warm_snapshot

    source = OneShardedSnapshot if isinstance(snapshot, ShardedSnapshot) else OneSnapshot
    served = SegmentationService(source(snapshot), **options)
    plain = SegmentationService(source(snapshot))

    def answer(query):
        try:
            return served.call(query)
        except SegsrvError:  # e.g. the privacy floor refuses the warm query: its code ran all the same
            return plain.call(query)

    if isinstance(snapshot, ShardedSnapshot):
        return warm_sharded(snapshot, answer)
    return warm_snapshot(snapshot, answer)


def local_service(location, version: str | None = None) -> SegmentationService:
    """The service over one snapshot directory (ROOT[/NAME[/VERSION]], or a sharded ROOT/NAME), as `--local`
    uses it."""
    from .snapshot.reader import open_snapshot

    if is_sharded(location):
        if version:
            raise SegsrvError(f"--version: not with a sharded snapshot ({location}): its SHARDS manifest names "
                              f"each shard's version")
        return SegmentationService(OneShardedSnapshot(open_sharded(location)))

    return SegmentationService(OneSnapshot(open_snapshot(location, version=version)))


def run_json(kind: str, snapshot: Snapshot, obj: dict) -> dict:
    """The JSON answer to a JSON query of `kind` (segsrv.ops.QUERY_TYPES) over an open snapshot, in-process:
    what `segsrv query KIND --local` prints."""
    query = QUERY_TYPES[kind].from_json(obj)
    return render(query, SegmentationService(OneSnapshot(snapshot)).call(query))
