"""Shipyard errors as GraphQL errors: the code (from ``shipyard.protocol.status``) and how one is shown.

A resolver's ``ShipyardError`` becomes a GraphQL error whose message is the
error's own (as REST's ``{"error": ...}``) and whose ``extensions`` carry
``code``, the HTTP ``status`` REST would answer, the error's ``kind`` and
``type`` (as REST's body) and, for bad input, ``field``. Anything else is logged
and shown only as an internal error with the request id.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError

from shipyard import errors
from shipyard.context import request_id_var
from shipyard.protocol.status import STATUSES, kind_of, status_of


def code_for(exc: errors.ShipyardError) -> str:
    """The GraphQL ``extensions.code`` for a shipyard error, from its kind."""
    return status_of(exc).graphql


def extensions_for(exc: errors.ShipyardError) -> dict[str, Any]:
    """``code``, ``status``, ``kind``, ``type`` and, when one is at fault, ``field``."""
    status = status_of(exc)
    extensions: dict[str, Any] = {"code": status.graphql, "status": status.http, "kind": kind_of(exc),
                                  "type": type(exc).__name__}
    field = getattr(exc, "field", None)
    if field is not None:
        extensions["field"] = field
    return extensions


def is_expected(error: GraphQLError) -> bool:
    """A caller's mistake or a known condition (nothing to log): a shipyard error other than an internal
    one, or a GraphQL syntax/validation error (no original error)."""
    original = error.original_error
    if original is None:
        return True
    return isinstance(original, errors.ShipyardError) and kind_of(original) != "internal"


def format_error(error: GraphQLError) -> dict[str, Any]:
    """The error as it goes into the response's ``errors`` list."""
    doc: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if isinstance(original, errors.ShipyardError):
        doc["message"] = original.message
        doc["extensions"] = {**(doc.get("extensions") or {}), **extensions_for(original)}
    elif original is not None:
        internal = STATUSES["internal"]
        doc["message"] = f"internal server error (request id {request_id_var.get()})"
        doc["extensions"] = {"code": internal.graphql, "status": internal.http, "kind": "internal"}
    return doc
