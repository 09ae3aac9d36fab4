"""Rebuild the server's exception from what a transport carries: a class name, a kind, a status.

The server names the exception class (REST body ``type``, gRPC metadata
``shipyard-error-type``) and its kind (``kind`` / ``shipyard-error-kind``). The
client raises that class when it is a shipyard error it knows, else the class
standing for the kind, else the kind the bare status stands for
(``shipyard.protocol.status``): never a guess from the message text.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from shipyard import errors
from shipyard.protocol.status import kind_for_grpc, kind_for_http

if TYPE_CHECKING:
    from collections.abc import Mapping

#: kind -> the class raised for it when the server's class is not known here (a newer server,
#: or an answer that has only a kind or a status).
CLASS_BY_KIND: Mapping[str, type[errors.ShipyardError]] = MappingProxyType({
    "invalid_input": errors.InvalidInput,
    "not_found": errors.ModelNotFound,
    "conflict": errors.VersionConflict,  # the plain one: IdenticalVersion builds its message from fields
    "too_large": errors.PayloadTooLarge,
    "unsupported_media_type": errors.UnsupportedMediaType,
    "unavailable": errors.ModelNotReady,
    "timeout": errors.RequestTimeout,
    "unauthenticated": errors.Unauthenticated,
    "forbidden": errors.PermissionDenied,
    "rate_limited": errors.RateLimited,
    "internal": errors.ShipyardError,
})


def error_class(type_name: str | None, kind: str | None) -> type[errors.ShipyardError] | None:
    """The class to raise: the server's own when it is a shipyard error, else the one for the kind.

    None when the answer names neither (it did not come from shipyard's error handling).
    """
    cls = getattr(errors, type_name or "", None)
    if isinstance(cls, type) and issubclass(cls, errors.ShipyardError):
        return cls
    return CLASS_BY_KIND.get(kind or "")


def error_class_for_status(
    type_name: object, kind: object, *, http: int | None = None, grpc: str | None = None
) -> tuple[type[errors.ShipyardError], bool]:
    """The class to raise for a failed call, and whether the answer was shipyard's own.

    From the server's class name, else its kind, else the kind the bare HTTP
    status or gRPC code name stands for; ``ShipyardError`` when none says more.
    """
    cls = error_class(type_name if isinstance(type_name, str) else None, kind if isinstance(kind, str) else None)
    if cls is not None:
        return cls, True
    bare = kind_for_http(http) if http is not None else kind_for_grpc(grpc or "")
    return CLASS_BY_KIND.get(bare or "internal", errors.ShipyardError), False


def server_error(
    cls: type[errors.ShipyardError] | None,
    message: str,
    *,
    field: str | None = None,
    model: str | None = None,
    version: str | None = None,
    retry_after: float | None = None,
) -> errors.ShipyardError:
    """An instance of ``cls`` (``ShipyardError`` when None) carrying the server's own message.

    The classes build their messages from structured arguments; here the message
    is already written, so the instance is made without calling the subclass
    constructor and its fields are filled in from what is known.
    """
    cls = cls or errors.ShipyardError
    exc = cls.__new__(cls)
    errors.ShipyardError.__init__(exc, message)
    if isinstance(exc, (errors.InvalidInput, errors.InvalidOption)):
        exc.field, exc.expected, exc.got = field, None, None
    if isinstance(exc, errors.InvalidOption):
        exc.option = field or ""
    if isinstance(exc, errors.ModelNotFound):
        exc.name, exc.version, exc.alias = model or "", version, None
    if retry_after is not None:
        setattr(exc, "retry_after", retry_after)  # noqa: B010 - not every class declares it
    return exc
