"""Bearer-token authentication with per-method scopes.

``segsrv serve --tokens FILE`` turns it on. FILE is TOML (``.toml``) or JSON
(``.json``; other names: tried as JSON, then TOML)::

    # tokens.toml
    [[tokens]]
    name = "dashboard"                  # who: shown in logs, never the token
    token = "f6c1...at least 16 chars"  # the bearer token itself, or
    scopes = ["query"]

    [[tokens]]
    name = "crm-export"
    sha256 = "9b1d..."                  # ... its SHA-256 in hex, so the file holds no secret
    scopes = ["query", "export"]

    {"tokens": [{"name": "dashboard", "token": "...", "scopes": ["query"]}]}

Clients send ``authorization: Bearer <token>`` metadata. Scopes:

- ``query``: every SegmentationService method except the two under ``export``;
  answers about groups of rows, under the privacy floor (segsrv/engine/privacy.py);
- ``rows``: reading one customer's row by its id, in addition to ``query``:
  Predict with ``id`` (the answer states the customer's features as its
  evidence) and Assign with ``ids`` (their segment memberships). Without it
  Predict takes explicit ``evidence`` and Assign a new customer's ``features``;
- ``export``: ScoreSegment and ExportMembers, which reveal customer ids.
  No scope implies another: give each a token needs.

Health (``grpc.health.v1.Health``) and reflection stay open: no token needed,
so load balancers and grpcurl work. A missing or unknown token is
UNAUTHENTICATED; a valid token without the method's scope PERMISSION_DENIED,
naming the scope. Any SegmentationService method not listed in
``METHOD_SCOPES`` needs ``query``. The method's scope is checked by
``authorize`` (the request pipeline, before the request is read); ``rows``,
which depends on the request, by ``check_row_reads`` in the handler, against
the principal ``authorize`` recorded for the call (each RPC runs in its own
contextvars.Context; without tokens nothing is recorded and nothing checked).

This module imports no gRPC: the multi-process supervisor loads the file
before forking so that a bad file fails at once.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import PermissionDeniedError, SegsrvError, UnauthenticatedError

log = logging.getLogger("segsrv.server")

SCOPES = ("query", "rows", "export")
# methods of segsrv.v1.SegmentationService needing another scope than "query"
METHOD_SCOPES = {"ScoreSegment": "export", "ExportMembers": "export"}
DEFAULT_SCOPE = "query"
ROWS_SCOPE = "rows"
# methods that read customers' rows by id when a request field is set: method -> (field, what it reveals)
ROW_READS = {"Predict": ("id", "states the customer's features as its evidence"),
             "Assign": ("ids", "states the customers' segment memberships")}
# services that need no token
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
MIN_TOKEN_CHARS = 16


class TokenFileError(SegsrvError):
    """The tokens file is unreadable or malformed."""


def scope_for(method: str) -> str:
    """The scope a SegmentationService method needs (`method` is the short name, e.g. 'Count')."""
    return METHOD_SCOPES.get(method, DEFAULT_SCOPE)


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to."""

    name: str
    scopes: frozenset[str]


# the principal `authorize` admitted for the current call (None: no tokens, nothing to check)
_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("segsrv_principal", default=None)


def reads_rows(method: str, request) -> str | None:
    """The request field by which `request` (a SegmentationService request message, or anything with its
    attributes) reads customers' rows by id, or None."""
    entry = ROW_READS.get(method)
    if entry is None:
        return None
    field = entry[0]
    return field if getattr(request, field, None) else None


def check_row_reads(method: str, request) -> None:
    """PermissionDeniedError when the call's principal lacks ``rows`` and the request reads rows by id
    (nothing to check when the server has no tokens)."""
    principal = _PRINCIPAL.get()
    field = reads_rows(method, request)
    if principal is None or field is None or ROWS_SCOPE in principal.scopes:
        return
    raise PermissionDeniedError(
        f"token {principal.name!r} lacks scope {ROWS_SCOPE!r}, which {method} with `{field}` needs (it "
        f"{ROW_READS[method][1]}; it has: {', '.join(sorted(principal.scopes))})")


class TokenStore:
    """Token digests -> principals; `authorize(metadata, method)` checks one call."""

    def __init__(self, entries: Iterable[tuple[str, bytes, Iterable[str]]], source: str = "tokens"):
        self.source = source
        self._by_digest: dict[bytes, Principal] = {}
        for name, digest, scopes in entries:
            if digest in self._by_digest:
                raise TokenFileError(f"{source}: tokens {self._by_digest[digest].name!r} and {name!r} are the same")
            self._by_digest[digest] = Principal(name, frozenset(scopes))

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_tokens(cls, tokens: dict[str, tuple[str, Iterable[str]]]) -> "TokenStore":
        """{name: (token, scopes)} (for tests and embedding)."""
        return cls([(n, _digest(t), s) for n, (t, s) in tokens.items()], "tokens")

    @classmethod
    def load(cls, path: str | Path) -> "TokenStore":
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TokenFileError(f"--tokens: cannot read {str(path)!r}: {exc.strerror or exc}") from None
        data = _parse(raw, path)
        items = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(data, dict) or set(data) - {"tokens"} or not isinstance(items, list) or not items:
            raise TokenFileError(f"{path}: expected a non-empty list 'tokens' (see docs/server.md)")
        entries, names = [], set()
        for i, item in enumerate(items):
            where = f"{path}: tokens[{i}]"
            if not isinstance(item, dict):
                raise TokenFileError(f"{where}: expected a table / object")
            unknown = set(item) - {"name", "token", "sha256", "scopes"}
            if unknown:
                raise TokenFileError(f"{where}: unknown keys {sorted(unknown)}")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise TokenFileError(f"{where}: 'name' must be a non-empty string")
            if name in names:
                raise TokenFileError(f"{where}: name {name!r} is used twice")
            names.add(name)
            scopes = item.get("scopes")
            if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
                raise TokenFileError(f"{where} ({name}): 'scopes' must be a non-empty list of {list(SCOPES)}")
            bad = [s for s in scopes if s not in SCOPES]
            if bad:
                raise TokenFileError(f"{where} ({name}): unknown scopes {bad}; known: {list(SCOPES)}")
            if ("token" in item) == ("sha256" in item):
                raise TokenFileError(f"{where} ({name}): give exactly one of 'token' and 'sha256'")
            if "token" in item:
                token = item["token"]
                if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or token != token.strip():
                    raise TokenFileError(f"{where} ({name}): 'token' must be a string of at least "
                                         f"{MIN_TOKEN_CHARS} characters without surrounding spaces")
                digest = _digest(token)
            else:
                hexd = item["sha256"]
                try:
                    digest = bytes.fromhex(hexd) if isinstance(hexd, str) else b""
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise TokenFileError(f"{where} ({name}): 'sha256' must be 64 hex digits")
            entries.append((name, digest, scopes))
        try:
            if os.name == "posix" and path.stat().st_mode & 0o004:
                log.warning("tokens file %s is readable by every user; chmod o-r it", path)
        except OSError:
            pass
        return cls(entries, str(path))

    # -- checking ----------------------------------------------------------------

    def authenticate(self, metadata) -> Principal:
        """The principal of the call's `authorization: Bearer` metadata; UnauthenticatedError otherwise."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise UnauthenticatedError("missing credentials: send metadata 'authorization: Bearer <token>'")
        if len(values) > 1:
            raise UnauthenticatedError("several 'authorization' metadata entries; send one")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("malformed 'authorization' metadata: expected 'Bearer <token>'")
        digest = _digest(token.strip())
        # looked up by SHA-256: timing can only tell about a digest the caller cannot steer, not the token
        principal = self._by_digest.get(digest)
        if principal is None:
            raise UnauthenticatedError("invalid token")
        return principal

    def authorize(self, metadata, method: str) -> Principal:
        """Authenticate, then check the scope `method` (short name) needs; raises the auth errors."""
        principal = self.authenticate(metadata)
        needed = scope_for(method)
        if needed not in principal.scopes:
            raise PermissionDeniedError(
                f"token {principal.name!r} lacks scope {needed!r}, which {method} needs "
                f"(it has: {', '.join(sorted(principal.scopes))})")
        _PRINCIPAL.set(principal)  # for check_row_reads in the handler (this call's context only)
        return principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _parse(raw: bytes, path: Path):
    text = raw.decode("utf-8", errors="replace")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TokenFileError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{path}: neither JSON nor TOML ({exc})") from None
