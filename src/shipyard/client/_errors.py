"""Rebuild the server's exception from what a transport carries: a status, a message, a field."""

from __future__ import annotations

from shipyard import errors

#: REST status -> the error class the server raised (the inverse of serving/rest/errors.py).
KIND_BY_STATUS: dict[int, str] = {
    400: "InvalidInput",
    404: "ModelNotFound",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    503: "ModelNotReady",
    504: "RequestTimeout",
}

#: gRPC status code name -> error class, for servers that send no shipyard-error-type.
KIND_BY_GRPC_CODE: dict[str, str] = {
    "INVALID_ARGUMENT": "InvalidInput",
    "NOT_FOUND": "ModelNotFound",
    "RESOURCE_EXHAUSTED": "PayloadTooLarge",
    "UNAVAILABLE": "ModelNotReady",
    "DEADLINE_EXCEEDED": "RequestTimeout",
}


def server_error(
    kind: str | None,
    message: str,
    *,
    field: str | None = None,
    model: str | None = None,
    version: str | None = None,
    retry_after: float | None = None,
) -> errors.ShipyardError:
    """An instance of ``shipyard.errors.<kind>`` carrying the server's own message.

    The classes build their messages from structured arguments; here the message
    is already written, so the instance is made without calling the subclass
    constructor and its fields are filled in from what is known.
    """
    cls = getattr(errors, kind or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ShipyardError)):
        cls = errors.ShipyardError
    exc = cls.__new__(cls)
    errors.ShipyardError.__init__(exc, message)
    if isinstance(exc, errors.InvalidInput):
        exc.field, exc.expected, exc.got = field, None, None
    if isinstance(exc, errors.ModelNotFound):
        exc.name, exc.version, exc.alias = model or "", version, None
    if retry_after is not None:
        setattr(exc, "retry_after", retry_after)  # noqa: B010 - not every class declares it
    return exc


def rest_kind(status: int, message: str) -> str | None:
    """The error class for a REST status (None: no better class than ShipyardError)."""
    if status == 404 and "not served here" in message:
        return "ModelNotServed"
    if status == 404 and message.startswith("no asynchronous request"):
        return "JobNotFound"
    if status == 404 and message.startswith("no route for"):
        return None
    return KIND_BY_STATUS.get(status)
