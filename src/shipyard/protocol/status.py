"""The one table from an error's kind to what each transport answers.

Every shipyard error has a ``kind`` (``shipyard.errors.KINDS``). REST, gRPC and
GraphQL derive their statuses from ``STATUSES`` below, and the client reads the
same table backwards when an answer carries no kind. It lives in ``protocol/``
rather than ``serving/`` because the client needs it and must not import the
server; the gRPC code is a ``grpc.StatusCode`` name, so nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from shipyard.errors import KINDS, Kind, ShipyardError

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class Status:
    """How one kind of error is answered on each transport."""

    http: int
    """The HTTP status code (REST, and GraphQL requests refused before they run)."""
    grpc: str
    """The name of a ``grpc.StatusCode`` member, e.g. ``INVALID_ARGUMENT``."""
    graphql: str
    """The GraphQL error's ``extensions.code``."""


#: kind -> its statuses. Where two kinds share a status, the first listed is the one the
#: client assumes when an answer has only the status.
STATUSES: Mapping[str, Status] = MappingProxyType({
    "invalid_input": Status(400, "INVALID_ARGUMENT", "BAD_USER_INPUT"),
    "not_found": Status(404, "NOT_FOUND", "NOT_FOUND"),
    "conflict": Status(409, "ALREADY_EXISTS", "CONFLICT"),
    "too_large": Status(413, "RESOURCE_EXHAUSTED", "BAD_USER_INPUT"),
    "unsupported_media_type": Status(415, "INVALID_ARGUMENT", "BAD_USER_INPUT"),
    "unavailable": Status(503, "UNAVAILABLE", "UNAVAILABLE"),
    "timeout": Status(504, "DEADLINE_EXCEEDED", "TIMEOUT"),
    "unauthenticated": Status(401, "UNAUTHENTICATED", "UNAUTHENTICATED"),
    "forbidden": Status(403, "PERMISSION_DENIED", "FORBIDDEN"),
    "rate_limited": Status(429, "RESOURCE_EXHAUSTED", "RATE_LIMITED"),
    "internal": Status(500, "INTERNAL", "INTERNAL_SERVER_ERROR"),
})

if set(STATUSES) != KINDS:  # pragma: no cover - a kind added to errors.py without a row here
    raise AssertionError(f"protocol/status.py and errors.KINDS differ: {sorted(set(STATUSES) ^ KINDS)}")


def kind_of(exc: ShipyardError) -> Kind:
    """The error's kind (``internal`` for a subclass that set something unknown)."""
    kind = type(exc).kind
    return kind if kind in STATUSES else "internal"


def status_of(exc: ShipyardError) -> Status:
    """Every transport's status for this error."""
    return STATUSES[kind_of(exc)]


def _first_kind_by(key: str) -> Mapping[object, str]:
    out: dict[object, str] = {}
    for kind, status in STATUSES.items():
        out.setdefault(getattr(status, key), kind)
    return MappingProxyType(out)


#: HTTP status -> kind, and gRPC code name -> kind, for answers that carry no kind.
KIND_BY_HTTP: Mapping[object, str] = _first_kind_by("http")
KIND_BY_GRPC: Mapping[object, str] = _first_kind_by("grpc")


def kind_for_http(status: int) -> str | None:
    """The kind a bare HTTP status stands for, if it is one shipyard answers."""
    return KIND_BY_HTTP.get(status)


def kind_for_grpc(code: str) -> str | None:
    """The kind a bare gRPC status code name stands for, if it is one shipyard answers."""
    return KIND_BY_GRPC.get(code)
