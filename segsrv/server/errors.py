"""The error model: one table from exception classes to gRPC status codes.

An exception's status is that of the first class of its MRO found in
``STATUS_TABLE`` (so subclasses can differ from their parent), INTERNAL when
none is. ``abort`` ends an RPC with a ``google.rpc.Status`` whose details
carry:

- ``google.rpc.BadRequest``: one field violation per (field, description)
  pair of the exception, the field being a path into the request message
  (e.g. ``condition.all_of.conditions[1].term.field``);
- ``google.rpc.ErrorInfo``: a machine-readable reason (``UNKNOWN_FIELD``,
  ``LIMIT_EXCEEDED``, ...) in domain ``segsrv.dev``;
- for INTERNAL: ``google.rpc.RequestInfo`` with a request id that is also
  logged with the traceback. The client never sees the traceback nor the
  exception's text.

Messages echo request strings (names, values, ids), and the status travels
in the trailers, which clients cap (grpc: 8 KiB soft, 16 KiB hard; a 5,000
character field name broke that). So ``build_status`` caps what it sends:
a word over ``MAX_WORD`` characters keeps its ends around a "more
characters" note, the message is at most ``MAX_MESSAGE_BYTES`` and each
violation ``MAX_DESCRIPTION_BYTES`` (UTF-8), and field violations beyond
``MAX_STATUS_BYTES`` of details are left out (their number is ErrorInfo
metadata ``omitted_violations``). Violation paths are the server's own
(``condition.negation.negation...`` is long and must stay exact): they are
only cut past ``MAX_PATH_BYTES``. The worst case, every byte percent-encoded
in ``grpc-message``, stays under 7 KiB of trailers.

See docs/server.md for the table in prose.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Callable, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import (
    DeadlineExpired,
    RequestCancelled,
    ShardUnavailableError,
    Violation,
    as_violation,
    reason_for,
    LimitExceededError,
    PrivacyFloorError,
    NoSnapshotServedError,
    NotBuiltYetError,
    PermissionDeniedError,
    QueryError,
    SnapshotNotFoundError,
    SnapshotWithdrawnError,
    UnknownIdError,
    UnauthenticatedError,
    UnknownSegmentError,
    VersionNotServedError,
)
from .logs import current_request_id

log = logging.getLogger("segsrv.server")

ERROR_DOMAIN = "segsrv.dev"

MAX_WORD = 80  # characters of one word (an echoed name, value or id) kept whole
MAX_MESSAGE_BYTES = 768
MAX_DESCRIPTION_BYTES = 384
MAX_PATH_BYTES = 1024  # a condition path 33 levels deep is ~850 bytes
MAX_STATUS_BYTES = 3072  # the serialized google.rpc.Status, message and details
_LONG_WORD = re.compile(r"\S{%d,}" % (MAX_WORD + 1))


# The table. Order does not matter: lookup follows the exception's MRO.
STATUS_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    # bad requests: malformed messages, unknown fields / values / universes
    QueryError: grpc.StatusCode.INVALID_ARGUMENT,
    # a request over a documented limit (hits > 10,000, depth > 32, terms > 1,024): RESOURCE_EXHAUSTED
    # as DESIGN.md section 5 specifies, with ErrorInfo reason LIMIT_EXCEEDED and field violations, so
    # clients can tell it from capacity exhaustion (message size, concurrent RPCs) and not retry it
    LimitExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnknownSegmentError: grpc.StatusCode.NOT_FOUND,
    # the answer would describe fewer than k rows (privacy floor): a valid request the server will not
    # answer in this state of the data; reason PRIVACY_FLOOR, not worth retrying
    PrivacyFloorError: grpc.StatusCode.FAILED_PRECONDITION,
    # a row id (customer id) the snapshot does not hold: the resource named by the request is absent
    UnknownIdError: grpc.StatusCode.NOT_FOUND,
    SnapshotNotFoundError: grpc.StatusCode.NOT_FOUND,
    VersionNotServedError: grpc.StatusCode.FAILED_PRECONDITION,
    NoSnapshotServedError: grpc.StatusCode.UNAVAILABLE,
    # a shard replica of serve-ray died mid-call (Ray replaces it): the clients retry UNAVAILABLE
    ShardUnavailableError: grpc.StatusCode.UNAVAILABLE,
    # its files changed on disk after they were verified: the data is not what was published
    SnapshotWithdrawnError: grpc.StatusCode.DATA_LOSS,
    NotBuiltYetError: grpc.StatusCode.UNIMPLEMENTED,
    # token authentication (server/auth.py): no valid token, or a token without the method's scope
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    RequestCancelled: grpc.StatusCode.CANCELLED,
}


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_TABLE:
            return STATUS_TABLE[cls]
    return grpc.StatusCode.INTERNAL


def _pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def bounded(text: str, max_bytes: int, *, shorten_words: bool = True) -> str:
    """`text` with long words shortened, cut to `max_bytes` of UTF-8 (on a character boundary)."""
    if shorten_words:
        text = _LONG_WORD.sub(lambda m: f"{m[0][:40]}...[{len(m[0]) - 44:,} more characters]...{m[0][-4:]}", text)
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes - 16].decode(errors="ignore") + " ...(truncated)"


def build_status(exc: BaseException, locate: Callable[[Violation], list[str]] | None = None,
                 method: str = "") -> tuple[status_pb2.Status, str | None]:
    """The google.rpc.Status answering `exc`, and the request id when it is an internal error."""
    code = status_code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        request_id = current_request_id() or uuid.uuid4().hex[:16]  # the RPC's x-request-id when known
        log.error("internal error in %s (request id %s)", method or "rpc", request_id,
                  exc_info=(type(exc), exc, exc.__traceback__))
        details = [
            _pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN,
                                              metadata={"request_id": request_id})),
            _pack(error_details_pb2.RequestInfo(request_id=request_id)),
        ]
        message = f"internal error (request id {request_id}); the server log has the details"
        return status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=details), request_id

    message = getattr(exc, "message", None) or str(exc) or code.name.lower().replace("_", " ")
    message = bounded(message, MAX_MESSAGE_BYTES)
    violations = [as_violation(v) for v in getattr(exc, "violations", []) or []]
    metadata = {}
    if isinstance(exc, LimitExceededError) and violations:
        metadata["limit"] = bounded(violations[0].description, MAX_DESCRIPTION_BYTES)
    info = error_details_pb2.ErrorInfo(reason=reason_for(exc), domain=ERROR_DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=code.value[0], message=message)
    bad = error_details_pb2.BadRequest()
    omitted = 0
    for v in violations:
        # one violation: the exception's message is the fuller text (it names the snapshot or
        # universe and suggests close matches)
        text = message if len(violations) == 1 else bounded(v.description, MAX_DESCRIPTION_BYTES)
        for path in (locate(v) if locate else [v.field]):
            bad.field_violations.add(field=bounded(path, MAX_PATH_BYTES, shorten_words=False), description=text)
            if status.ByteSize() + bad.ByteSize() + info.ByteSize() > MAX_STATUS_BYTES - 64:
                del bad.field_violations[-1]
                omitted += 1
    if omitted:
        info.metadata["omitted_violations"] = str(omitted)
    if bad.field_violations:
        status.details.append(_pack(bad))
    status.details.append(_pack(info))
    return status, None


def grpc_status(exc: BaseException, locate: Callable[[Violation], list[str]] | None = None,
                method: str = "") -> grpc.Status:
    """The status for `exc` as gRPC sends it: code, details and trailing metadata (the google.rpc.Status
    in ``grpc-status-details-bin``). A transport that has no ``abort_with_status`` (Ray Serve's gRPC
    context: segsrv/ray/serve.py) sets these three."""
    return rpc_status.to_status(build_status(exc, locate, method)[0])


def abort(context: grpc.ServicerContext, exc: BaseException,
          locate: Callable[[Violation], list[str]] | None = None, method: str = "") -> NoReturn:
    """End the RPC with the status for `exc` (raises, as grpc's abort does)."""
    context.abort_with_status(grpc_status(exc, locate, method))
    raise AssertionError("unreachable")  # abort_with_status raises
