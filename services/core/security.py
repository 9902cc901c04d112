"""Transport security (TLS, mutual TLS) and bearer-token roles.

Tokens come from a file named in settings (one ``token role [name]`` per line, ``#``
comments), never from code or logs. Comparison is constant-time. Two roles:
``reader`` may call read RPCs, ``admin`` may call everything. Read RPCs can be left
open to anonymous callers by config; admin RPCs never are once tokens are configured.
"""

from __future__ import annotations

import contextvars
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common.errors import InvalidArgument, PermissionDenied, Unauthenticated

ROLES = ("reader", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``name`` identifies the caller for job ownership."""

    name: str
    role: str
    # True for the one identity every token-less caller shares while auth is on: it may read
    # (when reads are open) but cannot own anything, e.g. cancel "its" jobs (they are everyone's).
    shared: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal("anonymous", "reader")  # auth off: everyone, and everything is allowed
SHARED_ANONYMOUS = Principal("anonymous", "reader", shared=True)  # auth on, no token, reads open
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The caller of the RPC being served on this thread (ANONYMOUS without auth)."""
    return _current.get()


def load_tokens(path: Path) -> list[tuple[bytes, Principal]]:
    """Parse a tokens file: ``<token> <role> [<name>]`` per line."""
    entries = []
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or parts[1] not in ROLES:
            raise InvalidArgument(f"{path}:{lineno}: expected '<token> <reader|admin> [name]'")
        name = parts[2] if len(parts) == 3 else f"{parts[1]}-{lineno}"
        entries.append((parts[0].encode(), Principal(name, parts[1])))
    return entries


class Authorizer:
    """Decides, per RPC, whether the bearer token in the metadata may call it."""

    def __init__(self, tokens: list[tuple[bytes, Principal]], admin_methods: frozenset[str],
                 open_reads: bool) -> None:
        self.tokens = tokens
        self.admin_methods = admin_methods
        self.open_reads = open_reads

    def _lookup(self, token: bytes) -> Principal | None:
        found = None
        for known, principal in self.tokens:  # check all: no early exit timing signal
            if hmac.compare_digest(known, token):
                found = principal
        return found

    def authorize(self, method: str, context: grpc.ServicerContext) -> Principal:
        """Return the caller, or raise Unauthenticated / PermissionDenied."""
        header = dict(context.invocation_metadata()).get("authorization", "")
        if isinstance(header, bytes):  # only "-bin" keys carry bytes; be strict anyway
            header = header.decode("utf-8", "replace")
        principal = None
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            principal = self._lookup(token.strip().encode())
            if principal is None:
                raise Unauthenticated("bearer token not recognised")
        if method in self.admin_methods:
            if principal is None:
                raise Unauthenticated(f"{method} needs an admin bearer token (metadata 'authorization')")
            if not principal.is_admin:
                raise PermissionDenied(f"{method} needs the admin role; token {principal.name!r} is a reader")
        elif principal is None and not self.open_reads:
            raise Unauthenticated(f"{method} needs a bearer token (metadata 'authorization')")
        return principal or SHARED_ANONYMOUS

    @staticmethod
    def bind(principal: Principal) -> Any:
        return _current.set(principal)

    @staticmethod
    def unbind(token: Any) -> None:
        _current.reset(token)


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate it signed (mTLS)."""
    ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
