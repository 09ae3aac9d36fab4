"""The one table from shipyard errors to GraphQL error codes, and how an error is shown.

A resolver's ``ShipyardError`` becomes a GraphQL error whose message is the
error's own (as REST's ``{"error": ...}``) and whose ``extensions`` carry
``code``, the HTTP ``status`` REST would answer and, for bad input, ``field``.
Anything else is logged and shown only as an internal error with the request id.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError

from shipyard import errors
from shipyard.context import request_id_var
from shipyard.serving.rest.errors import status_for

# Most specific first: the first matching class wins.
CODE_TABLE: tuple[tuple[type[errors.ShipyardError], str], ...] = (
    (errors.InvalidInput, "BAD_USER_INPUT"),
    (errors.InvalidOption, "BAD_USER_INPUT"),
    (errors.ModelNotFound, "NOT_FOUND"),
    (errors.ModelNotReady, "UNAVAILABLE"),
    (errors.RequestTimeout, "TIMEOUT"),
    (errors.ShipyardError, "INTERNAL_SERVER_ERROR"),
)


def code_for(exc: errors.ShipyardError) -> str:
    """The GraphQL ``extensions.code`` for a shipyard error."""
    for cls, code in CODE_TABLE:
        if isinstance(exc, cls):
            return code
    return "INTERNAL_SERVER_ERROR"


def is_expected(error: GraphQLError) -> bool:
    """A caller's mistake or a known condition (nothing to log): a shipyard error other than an internal
    one, or a GraphQL syntax/validation error (no original error)."""
    original = error.original_error
    if original is None:
        return True
    return isinstance(original, errors.ShipyardError) and code_for(original) != "INTERNAL_SERVER_ERROR"


def format_error(error: GraphQLError) -> dict[str, Any]:
    """The error as it goes into the response's ``errors`` list."""
    doc: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if isinstance(original, errors.ShipyardError):
        extensions: dict[str, Any] = {"code": code_for(original), "status": status_for(original)}
        field = getattr(original, "field", None)
        if field is not None:
            extensions["field"] = field
        doc["message"] = original.message
        doc["extensions"] = {**(doc.get("extensions") or {}), **extensions}
    elif original is not None:
        doc["message"] = f"internal server error (request id {request_id_var.get()})"
        doc["extensions"] = {"code": "INTERNAL_SERVER_ERROR", "status": 500}
    return doc
