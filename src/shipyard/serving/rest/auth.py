"""The REST and GraphQL side of authentication: each route checks what its table entry needs.

``starlette_routes`` wraps every handler with ``authorized`` (and every ASGI endpoint, GraphQL,
with ``authorized_asgi``) when the server has an ``Authenticator``. The check runs before the
body is read; a route naming a model in its path also checks the principal may use it, and the
principal and client address are set for the data plane and the audit log.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.errors import ShipyardError
from shipyard.protocol.status import status_of
from shipyard.security.auth import Authenticator
from shipyard.security.principal import Principal, acting_as, principal_var, source_var
from shipyard.serving.rest.errors import error_body, error_headers, status_for
from shipyard.types import ModelRef

Handler = Any


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _principal(auth: Authenticator, scope: Scope, need: str) -> Principal | None:
    authorization = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            authorization = v.decode("latin-1")
            break
    principal = await auth.check(authorization, need)
    if principal is not None and principal.models is not None:  # a key for some models only
        name = scope.get("path_params", {}).get("name")
        if name:
            principal.require_model(_model_name(name))
    return principal


def _model_name(name: str) -> str:
    try:
        return ModelRef.parse(name).name
    except ShipyardError:
        return name  # a bad reference is the handler's to refuse, with its own message


def authorized(auth: Authenticator, need: str, handler: Handler) -> Handler:
    """``handler`` run only for a principal that may do ``need`` (errors raised for the route's guard)."""
    if auth.open(need):
        return handler

    async def checked(request: Request) -> Response:
        principal = await _principal(auth, request.scope, need)
        # set and reset by hand: a context manager costs more than the check on this path
        p, s = principal_var.set(principal), source_var.set(client_address(request.scope))
        try:
            response: Response = await handler(request)
        finally:
            principal_var.reset(p)
            source_var.reset(s)
        return response

    return checked


def authorized_asgi(auth: Authenticator, need: str, app: ASGIApp) -> ASGIApp:
    """An ASGI endpoint (GraphQL) behind the same check; a refusal is the JSON error body."""
    return app if auth.open(need) else _AuthorizedApp(auth, need, app)


class _AuthorizedApp:
    """An ASGI app behind the check (a class: Starlette routes a plain function as a request handler)."""

    def __init__(self, auth: Authenticator, need: str, app: ASGIApp) -> None:
        self.auth = auth
        self.need = need
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = await _principal(self.auth, scope, self.need)
        except ShipyardError as exc:
            body = error_body(exc)
            code = status_of(exc).graphql  # GraphQL clients read errors[].extensions.code
            body["errors"] = [{"message": exc.message, "extensions": {"code": code, "kind": body["kind"]}}]
            await Response(orjson.dumps(body), status_for(exc), error_headers(exc), "application/json")(
                scope, receive, send)
            return
        with acting_as(principal, client_address(scope)):
            await self.app(scope, receive, send)
