"""Domain exceptions shared by the snapshot, the engine and the front ends.

Every error a user can cause derives from SegsrvError. The server maps these
classes to gRPC status codes in one table; the CLI prints the message and
exits non-zero. Errors that concern a request field carry `violations`:
(field, description) pairs, so clients can point at the bad input.
"""

from __future__ import annotations


class SegsrvError(Exception):
    """Base class of every error segsrv raises on purpose."""

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.violations = list(violations or [])


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


class NotBuiltYetError(SegsrvError):
    """The feature is part of the contract but not implemented yet."""


# --- access (server) ------------------------------------------------------------


class UnauthenticatedError(SegsrvError):
    """The call carries no valid credentials (missing, malformed or unknown bearer token)."""


class PermissionDeniedError(SegsrvError):
    """The credentials are valid but lack the scope the method needs."""
