"""Routers: between a served name and the version(s) it can reach.

The data plane asks its router once per request, before anything else, and
uses the answer for decoding, validation, prediction and every observer. The
default ``AliasRouter`` keeps the behaviour of a server without traffic
policies; policy routers (splits, canaries, shadows) implement the same
protocol and read the same ``RequestContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shipyard.context import RequestContext
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.hosting.repository import ModelRepository


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    ref: ModelRef
    """The reference the repository resolves (an alias is followed to its current version)."""
    label: str
    """How the request reached it, for metrics and the prediction log: an alias, a version number or ``latest``."""


class Router(Protocol):
    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        """The route of a request for ``name`` (``demo``, ``demo@alias``, ``demo:3``) and an optional version.

        Raises ModelNotServed for a name the server does not serve, InvalidInput or
        ModelNotFound for a version that cannot exist. Never does I/O.
        """
        ...

    def live_refs(self) -> list[ModelRef]:
        """Every reference traffic can reach without naming a version: what must stay loaded."""
        ...


class AliasRouter:
    """A name goes to what the server was started with for it; an explicit alias or version goes there."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        ref = self.repository.ref_for(name, version)
        if ref.alias is not None:
            label = ref.alias
        elif ref.version is not None:
            label = str(ref.version)
        else:
            label = "latest"
        return Route(ref, label)

    def live_refs(self) -> list[ModelRef]:
        return list(self.repository.defaults.values())
