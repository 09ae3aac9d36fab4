"""Shipyard errors as gRPC answers: the status code (from ``shipyard.protocol.status``) and metadata.

The status message is the error's own message, exactly what REST puts in
``{"error": ...}``. Trailing metadata adds what REST puts beside it: the
error's kind, its class and the field at fault, so a client (``shipyard.Client``)
can raise the same exception the server raised.
"""

from __future__ import annotations

import grpc

from shipyard import errors
from shipyard.protocol.grpc.metadata import FIELD_KEY, KIND_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY, TYPE_KEY
from shipyard.protocol.status import kind_of, status_of


def status_for(exc: errors.ShipyardError) -> grpc.StatusCode:
    """The gRPC status code for a shipyard error, from its kind."""
    return grpc.StatusCode[status_of(exc).grpc]


def error_metadata(exc: errors.ShipyardError, request_id: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for a failed call: request id, kind, error class, the field when known and,
    for the ``unavailable`` and ``rate_limited`` kinds, ``retry-after`` seconds (as REST's Retry-After header)."""
    kind = kind_of(exc)
    out = [(REQUEST_ID_KEY, request_id), (KIND_KEY, kind), (TYPE_KEY, type(exc).__name__)]
    field = getattr(exc, "field", None)
    if field is not None:
        out.append((FIELD_KEY, str(field)))
    if kind in ("unavailable", "rate_limited"):
        retry_after = getattr(exc, "retry_after", None)
        out.append((RETRY_AFTER_KEY, f"{1.0 if retry_after is None else float(retry_after):g}"))
    return tuple(out)
