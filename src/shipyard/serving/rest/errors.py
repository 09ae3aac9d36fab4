"""The one table from shipyard errors to HTTP status codes, and the JSON error body."""

from __future__ import annotations

from shipyard import errors

# Most specific first: the first matching class wins.
STATUS_TABLE: tuple[tuple[type[errors.ShipyardError], int], ...] = (
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidInput, 400),
    (errors.InvalidOption, 400),
    (errors.ModelNotFound, 404),
    (errors.JobNotFound, 404),
    (errors.IdenticalVersion, 409),
    (errors.ModelNotReady, 503),
    (errors.RequestTimeout, 504),
    (errors.ArtifactIntegrityError, 500),
    (errors.InferenceError, 500),
    (errors.BrokerError, 503),
    (errors.MissingDependency, 500),
    (errors.ShipyardError, 500),
)


def status_for(exc: errors.ShipyardError) -> int:
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def retry_headers(exc: errors.ShipyardError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds, at least 1) for errors that ask the client to come back."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        if isinstance(exc, errors.ModelNotReady):
            retry_after = 1
        else:
            return None
    return {"Retry-After": str(max(1, round(retry_after)))}


def error_body(exc: errors.ShipyardError) -> dict[str, object]:
    """The protocol's ``{"error": message}`` plus the structured fields when known."""
    body: dict[str, object] = {"error": exc.message}
    field = getattr(exc, "field", None)
    if field is not None:
        body["field"] = field
    return body
