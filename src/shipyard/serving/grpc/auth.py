"""The gRPC side of authentication: an interceptor checking each call against ``METHOD_SCOPES``.

The ``authorization`` metadata (``Bearer KEY``) goes to the same ``Authenticator.check`` REST
uses. A refused call is answered UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED with
shipyard's error metadata (kind, class, retry-after), before the request is read; an allowed
call runs with its principal and peer address set, so the data plane refuses models the
principal may not use and the audit log can say who acted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from shipyard.errors import ShipyardError
from shipyard.protocol.grpc.metadata import REQUEST_ID_KEY
from shipyard.security.auth import Authenticator
from shipyard.security.principal import Principal, principal_var, source_var
from shipyard.serving.grpc.errors import error_metadata, status_for
from shipyard.serving.grpc.service import METHOD_SCOPES

logger = logging.getLogger(__name__)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks every call's credentials against what its method needs."""

    def __init__(self, auth: Authenticator, scopes: dict[str, str] = METHOD_SCOPES) -> None:
        self.auth = auth
        self.scopes = scopes

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        method = str(details.method).rsplit("/", 1)[-1]
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
            return None
        need = self.scopes.get(method)
        if need is None:  # a method served but missing from the table: refused, never open by accident
            logger.error("gRPC method %s has no scope in METHOD_SCOPES; refusing it", details.method)
            need = "admin"
        if self.auth.open(need):
            return handler
        metadata = details.invocation_metadata or ()
        authorization = next((str(v) for k, v in metadata if k == "authorization"), None)
        request_id = next((str(v)[:128] for k, v in metadata if k == REQUEST_ID_KEY), "")
        try:
            principal = await self.auth.check(authorization, need)
        except ShipyardError as exc:
            return _refusing(handler, exc, request_id)
        return _as(handler, principal)


def _replace(handler: Any, behavior: Any) -> Any:
    """A handler of the same shape as ``handler`` with another behaviour."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, **kw)
    return grpc.stream_stream_rpc_method_handler(behavior, **kw)


def _refusing(handler: Any, exc: ShipyardError, request_id: str) -> Any:
    async def refuse(request: Any, context: Any) -> None:
        await context.abort(status_for(exc), exc.message, trailing_metadata=error_metadata(exc, request_id))

    return _replace(handler, refuse)


def _as(handler: Any, principal: Principal | None) -> Any:
    """``handler`` run with ``principal`` and the peer set. Each call runs in a task of its own,
    so the context variables set here end with it (no reset across a streaming call's yields)."""
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if handler.unary_stream is not None or handler.stream_stream is not None:

        async def streaming(request: Any, context: Any) -> Any:
            principal_var.set(principal)
            source_var.set(str(context.peer()))
            async for reply in inner(request, context):
                yield reply

        return _replace(handler, streaming)

    async def unary(request: Any, context: Any) -> Any:
        principal_var.set(principal)
        source_var.set(str(context.peer()))
        return await inner(request, context)

    return _replace(handler, unary)
