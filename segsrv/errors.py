"""Domain exceptions shared by the snapshot, the engine and the front ends.

Every error a user can cause derives from SegsrvError. The server maps these
classes to gRPC status codes in one table (segsrv/server/errors.py) and to the
machine-readable ErrorInfo reasons of ``REASONS`` below; the CLI prints the
message and exits non-zero. Errors that concern a request field carry
`violations`: ``Violation`` pairs (field, description) that also say, as data,
what the violation is about (``kind`` and ``item``: the unknown value, the
pattern that matched nothing, the segment name), so a front end can point at
the request part without parsing the description.
"""

from __future__ import annotations

import difflib


def suggest(name: str, candidates, n: int = 3) -> str:
    """" (did you mean 'x', 'y'?)" for the candidates close to `name`, else ""."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class Violation(tuple):
    """(field, description), plus what it is about: kind ("value", "pattern", "segment", "range" or
    None) and item (the value, pattern or segment name). Unpacks as the pair."""

    kind: str | None
    item: object

    def __new__(cls, field: str, description: str, kind: str | None = None, item: object = None):
        self = super().__new__(cls, (field, description))
        self.kind = kind
        self.item = item
        return self

    def __reduce__(self):  # pickles whole: errors travel from Ray shard replicas to the router (segsrv/ray)
        return Violation, (self[0], self[1], self.kind, self.item)

    @property
    def field(self) -> str:
        return self[0]

    @property
    def description(self) -> str:
        return self[1]


def as_violation(v) -> Violation:
    return v if isinstance(v, Violation) else Violation(*v)


class SegsrvError(Exception):
    """Base class of every error segsrv raises on purpose."""

    def __init__(self, message: str, violations: list | None = None):
        super().__init__(message)
        self.message = message
        self.violations = [as_violation(v) for v in violations or []]


# --- building snapshots -------------------------------------------------------


class SpecError(SegsrvError):
    """The build spec (TOML) is malformed or names things that do not exist."""


class BuildError(SegsrvError):
    """The input tables violate the spec (duplicate key, dangling link, ...)."""


# --- reading snapshots --------------------------------------------------------


class SnapshotError(SegsrvError):
    """Base class of the errors raised when opening a snapshot."""


class SnapshotNotFoundError(SnapshotError):
    """No snapshot (or no such name / version) at the given location."""


class CorruptSnapshotError(SnapshotError):
    """A file's checksum or header does not match the manifest."""


class TruncatedSnapshotError(SnapshotError):
    """A file is shorter than the manifest or its header says it is."""


class SnapshotFormatTooNewError(SnapshotError):
    """The snapshot was written by a newer segsrv than this one can read."""


class SnapshotFormatTooOldError(SnapshotError):
    """The snapshot's format is older than the oldest this segsrv reads."""


class VersionNotServedError(SnapshotError):
    """A request pins a snapshot version other than the one being served."""


class NoSnapshotServedError(SnapshotError):
    """The server has not loaded any snapshot yet (it is not ready)."""


class SnapshotWithdrawnError(SnapshotError):
    """A served version's files changed on disk after it was verified: it is no longer served."""


class ShardUnavailableError(SegsrvError):
    """A shard replica of `segsrv serve-ray` died or could not be reached while answering (Ray replaces it;
    the call is worth a retry)."""


# --- queries ------------------------------------------------------------------


class QueryError(SegsrvError):
    """A request is malformed or refers to unknown fields, values or universes."""


class UnknownFieldError(QueryError):
    """A condition or relate list names a field the universe does not have."""


class UnknownValueError(QueryError):
    """A term names a value the field never takes."""


class UnknownUniverseError(QueryError):
    """The request names a universe the snapshot does not index."""


class UnknownSegmentError(QueryError):
    """A condition references a segment the snapshot's catalog does not hold."""


class LimitExceededError(QueryError):
    """A request exceeds a documented limit (condition size, result size...)."""


class UnknownIdError(QueryError):
    """A request names a row id (customer id, ...) the universe does not hold."""


class PrivacyFloorError(QueryError):
    """The answer would describe fewer rows than the privacy floor allows (segsrv/engine/privacy.py)."""


class NoCatalogError(QueryError):
    """A version being compared (segsrv diff) has no segment catalog."""


class NotBuiltYetError(SegsrvError):
    """The feature is part of the contract but not implemented yet."""


# --- access (server) ------------------------------------------------------------


class UnauthenticatedError(SegsrvError):
    """The call carries no valid credentials (missing, malformed or unknown bearer token)."""


class PermissionDeniedError(SegsrvError):
    """The credentials are valid but lack the scope the method needs."""


# --- the end of a call ------------------------------------------------------------


class DeadlineExpired(Exception):
    """The caller's deadline passed while the server was working (checked between steps)."""


class RequestCancelled(Exception):
    """The caller cancelled the call (or its connection went away)."""


# --- machine-readable reasons (google.rpc.ErrorInfo.reason, domain segsrv.dev) --------------------
# Part of the contract: the Python, Go, Java and Node clients branch on these. An exception's reason is
# that of the first class of its MRO listed here; docs/server.md has the same table.
REASONS: dict[type[BaseException], str] = {
    QueryError: "INVALID_REQUEST",
    UnknownFieldError: "UNKNOWN_FIELD",
    UnknownValueError: "UNKNOWN_VALUE",
    UnknownUniverseError: "UNKNOWN_UNIVERSE",
    UnknownSegmentError: "UNKNOWN_SEGMENT",
    LimitExceededError: "LIMIT_EXCEEDED",
    UnknownIdError: "UNKNOWN_ID",
    PrivacyFloorError: "PRIVACY_FLOOR",
    SnapshotError: "SNAPSHOT",
    SnapshotNotFoundError: "SNAPSHOT_NOT_FOUND",
    CorruptSnapshotError: "CORRUPT_SNAPSHOT",
    TruncatedSnapshotError: "TRUNCATED_SNAPSHOT",
    SnapshotFormatTooNewError: "SNAPSHOT_FORMAT_TOO_NEW",
    SnapshotFormatTooOldError: "SNAPSHOT_FORMAT_TOO_OLD",
    VersionNotServedError: "VERSION_NOT_SERVED",
    NoSnapshotServedError: "NO_SNAPSHOT_SERVED",
    SnapshotWithdrawnError: "SNAPSHOT_WITHDRAWN",
    ShardUnavailableError: "SHARD_UNAVAILABLE",
    NoCatalogError: "NO_CATALOG",
    NotBuiltYetError: "NOT_BUILT_YET",
    DeadlineExpired: "DEADLINE_EXPIRED",
    RequestCancelled: "REQUEST_CANCELLED",
    UnauthenticatedError: "UNAUTHENTICATED",
    PermissionDeniedError: "PERMISSION_DENIED",
    SpecError: "SPEC",
    BuildError: "BUILD",
}


def reason_for(exc: BaseException, default: str = "INTERNAL") -> str:
    """The ErrorInfo reason of `exc` (REASONS, by MRO); `default` for exceptions not in the table."""
    for cls in type(exc).__mro__:
        if cls in REASONS:
            return REASONS[cls]
    return default
