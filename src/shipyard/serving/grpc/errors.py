"""The one table from shipyard errors to gRPC status codes, and the metadata an error carries.

The status message is the error's own message, exactly what REST puts in
``{"error": ...}``. Trailing metadata adds what REST puts beside it: the field
at fault and the error class, so a client (``shipyard.Client``) can raise the
same exception the server raised.
"""

from __future__ import annotations

import grpc

from shipyard import errors
from shipyard.protocol.grpc.metadata import FIELD_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY, TYPE_KEY

# Most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[errors.ShipyardError], grpc.StatusCode], ...] = (
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnsupportedMediaType, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidOption, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.IdenticalVersion, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.RequestTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.ArtifactIntegrityError, grpc.StatusCode.INTERNAL),
    (errors.InferenceError, grpc.StatusCode.INTERNAL),
    (errors.MissingDependency, grpc.StatusCode.INTERNAL),
    (errors.ShipyardError, grpc.StatusCode.INTERNAL),
)


def status_for(exc: errors.ShipyardError) -> grpc.StatusCode:
    """The gRPC status code for a shipyard error."""
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_metadata(exc: errors.ShipyardError, request_id: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for a failed call: request id, error class, the field when known and,
    for UNAVAILABLE, ``retry-after`` seconds (as REST's Retry-After header)."""
    out = [(REQUEST_ID_KEY, request_id), (TYPE_KEY, type(exc).__name__)]
    field = getattr(exc, "field", None)
    if field is not None:
        out.append((FIELD_KEY, str(field)))
    if isinstance(exc, errors.ModelNotReady):
        retry_after = getattr(exc, "retry_after", None)
        out.append((RETRY_AFTER_KEY, f"{1.0 if retry_after is None else float(retry_after):g}"))
    return tuple(out)
