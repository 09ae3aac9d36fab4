"""Who is calling: scopes, the principal a credential stands for, and the actor admin actions record.

A transport's auth check (``serving/rest/auth.py``, ``serving/grpc/auth.py``) sets
``principal_var`` for the request it checked; the data plane reads it to refuse a model the
principal may not use, and the audit log reads ``current_actor`` to say who acted and from where.
Outside a request (the CLI) the actor is the OS user on this host.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from shipyard.errors import PermissionDenied

Scope = Literal["predict", "feedback", "read", "admin"]
#: Every scope a credential can hold. ``admin`` implies the others.
SCOPES: tuple[Scope, ...] = ("predict", "feedback", "read", "admin")

#: What a route or RPC needs, in the route tables: a scope, ``open`` (health probes: nothing),
#: ``metrics`` (``open`` or ``read``, as ``security.auth.metrics`` says) or ``authenticated`` (any
#: valid credential: GraphQL, whose fields each need their own scope).
Need = Literal["open", "metrics", "authenticated", "predict", "feedback", "read", "admin"]
NEEDS: tuple[Need, ...] = ("open", "metrics", "authenticated", "predict", "feedback", "read", "admin")


@dataclass(frozen=True)
class Principal:
    """What a checked credential may do.

    Args:
        name: the key's name or the token's subject: who, in logs and the audit log.
        kind: ``key``, ``jwt``, or ``anonymous`` (authentication is off).
        scopes: what it may do (``admin`` implies every scope).
        models: the models it may use; None: every model.
        key_id: the API key's id (its public part), or the token's ``jti``.
        rate_per_second: its own request rate, when it has one.
    """

    name: str
    kind: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    key_id: str | None = None
    rate_per_second: float | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def require_model(self, model: str) -> None:
        """PermissionDenied unless this principal may use ``model``."""
        if not self.may_use(model):
            raise PermissionDenied(f"{self.kind} '{self.name}' may not use model '{model[:128]}'")


#: The principal when authentication is off: anyone on the (loopback) listener may do anything.
ANONYMOUS = Principal("anonymous", "anonymous", frozenset(SCOPES))

#: The principal of the request being handled (None outside a request, or with authentication off).
principal_var: ContextVar[Principal | None] = ContextVar("shipyard_principal", default=None)
#: Where the request being handled came from (a client address), for the audit log.
source_var: ContextVar[str | None] = ContextVar("shipyard_source", default=None)


def require_model(model: str) -> None:
    """PermissionDenied unless the current request's principal may use ``model`` (no principal: allowed)."""
    principal = principal_var.get()
    if principal is not None:
        principal.require_model(model)


@dataclass(frozen=True)
class Actor:
    """Who did an admin action and from where, as the audit log records it."""

    name: str
    source: str


def current_actor() -> Actor:
    """The principal of the current request and its address; outside a request, the OS user on this host."""
    principal = principal_var.get()
    source = source_var.get()
    if principal is not None:
        return Actor(principal.name, source or "server")
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return Actor(user, source or f"cli@{socket.gethostname()}")


@contextlib.contextmanager
def acting_as(principal: Principal | None, source: str | None) -> Iterator[None]:
    """Run a block as ``principal`` from ``source`` (a request's handler, a test)."""
    p, s = principal_var.set(principal), source_var.set(source)
    try:
        yield
    finally:
        principal_var.reset(p)
        source_var.reset(s)
