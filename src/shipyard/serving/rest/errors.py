"""Shipyard errors as HTTP answers: the status (from ``shipyard.protocol.status``) and the JSON body."""

from __future__ import annotations

from shipyard import errors
from shipyard.protocol.status import kind_of, status_of


def status_for(exc: errors.ShipyardError) -> int:
    """The HTTP status for a shipyard error, from its kind."""
    return status_of(exc).http


def error_headers(exc: errors.ShipyardError) -> dict[str, str] | None:
    """Headers an error answer carries: ``Retry-After`` (whole seconds, at least 1) for errors that ask
    the client to come back, ``WWW-Authenticate`` on a 401 (RFC 6750: it names the scheme to use)."""
    kind = kind_of(exc)
    if kind == "unauthenticated":
        return {"WWW-Authenticate": 'Bearer realm="shipyard"'}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        if kind != "unavailable":
            return None
        retry_after = 1
    return {"Retry-After": str(max(1, round(retry_after)))}


def error_body(exc: errors.ShipyardError) -> dict[str, object]:
    """``{"error": message, "kind": kind, "type": class name}`` plus ``field`` when one is at fault.

    ``kind`` is one of ``shipyard.errors.KINDS``, stable across releases; ``type`` is
    the exception class, so ``shipyard.Client`` raises the one the server raised.
    """
    body: dict[str, object] = {"error": exc.message, "kind": kind_of(exc), "type": type(exc).__name__}
    field = getattr(exc, "field", None)
    if field is not None:
        body["field"] = field
    return body
