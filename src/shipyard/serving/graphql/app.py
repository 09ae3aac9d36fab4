"""The GraphQL endpoint: strawberry's ASGI app over the schema, with shipyard's body handling and errors.

The body is read like every REST body (size limit, Content-Encoding) and
parsed by the one JSON parser (``protocol/json_body.py``, with its nesting
limit), and so are GET's ``variables``. A request refused before GraphQL runs
(not JSON, too deep, too large, no query) is answered as REST answers it, with
the status and ``{"error": ..., "field": ...}``, plus GraphQL's ``errors`` list
carrying the same message so GraphQL clients show it. Errors of the query
itself are GraphQL's business: 200 with ``errors`` (see ``errors.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import strawberry
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult
from strawberry.types.execution import ExecutionContext
from strawberry.utils.logging import StrawberryLogger

from shipyard.context import request_id_var
from shipyard.errors import InvalidInput, ShipyardError
from shipyard.protocol.json_body import parse_json
from shipyard.serving.catalog import ModelCatalog
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.explanations import Explanations
from shipyard.serving.graphql.errors import extensions_for, format_error, is_expected
from shipyard.serving.graphql.schema import Context, Query
from shipyard.serving.rest.body import check_json_type, media_type, read_body
from shipyard.serving.rest.errors import error_body, error_headers, status_for

logger = logging.getLogger(__name__)


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # bad input and unknown models are the caller's business, not the server log's
        for error in errors:
            if not is_expected(error):
                StrawberryLogger.error(error, execution_context)


SCHEMA = _Schema(query=Query)
_GRAPHIQL = Path(__file__).parents[2] / "dashboard" / "static" / "graphiql.html"


class GraphQLApp(GraphQL[Context, None]):
    """``/graphql``: POST (or GET) a GraphQL document; GET in a browser opens GraphiQL."""

    def __init__(self, dataplane: DataPlane, max_body_bytes: int, explanations: Explanations | None = None) -> None:
        super().__init__(SCHEMA)
        self.dataplane = dataplane
        self.explanations = explanations
        self.catalog = ModelCatalog(dataplane.repository)
        self.max_body_bytes = max_body_bytes

    @property
    def graphql_ide_html(self) -> str:
        """GraphiQL from the files the package ships (served at /ui/static/), never from a CDN."""
        return _GRAPHIQL.read_text()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self._respond(scope, receive)
        except ShipyardError as exc:
            response = _refusal(error_body(exc), status_for(exc), extensions_for(exc), error_headers(exc))
        except HTTPException as exc:  # strawberry's own refusals (no query, bad variables type, ...)
            response = _refusal({"error": exc.reason}, exc.status_code,
                                {"code": "BAD_REQUEST", "status": exc.status_code})
        except Exception:
            logger.exception("unexpected error on %s /graphql", scope.get("method"))
            response = _refusal({"error": f"internal server error (request id {request_id_var.get()})"}, 500,
                                {"code": "INTERNAL_SERVER_ERROR", "status": 500, "kind": "internal"})
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        request = Request(scope, receive)
        if request.method != "POST":
            return await self.run(request)
        if not media_type(request):  # as on REST: an undeclared body is read as JSON
            scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        else:
            check_json_type(request, False)
        body = await read_body(request, self.max_body_bytes)
        sent = False

        async def replay() -> Message:  # the body once more, already checked and decompressed
            nonlocal sent
            if sent:
                return await receive()  # only ever a disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.run(Request(scope, replay))

    def decode_json(self, data: str | bytes) -> object:
        doc = parse_json(data)
        if not isinstance(doc, (dict, list)):  # strawberry would call .get on it: a 500
            raise InvalidInput(
                'a GraphQL request body must be a JSON object like {"query": "...", "variables": {...}}',
                field="body",
                got=type(doc).__name__,
            )
        return doc

    def parse_query_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        parsed = dict(params)
        for key in ("variables", "extensions"):
            if parsed.get(key):
                parsed[key] = parse_json(parsed[key], f"query parameter '{key}'", key)
        return parsed

    async def get_context(self, request: Any, response: Any) -> Context:
        return Context(self.dataplane, self.catalog, request, response, self.explanations)

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        doc: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            doc["errors"] = [format_error(e) for e in result.errors]
        if result.extensions:
            doc["extensions"] = result.extensions
        return doc


def _refusal(
    body: dict[str, Any], status: int, extensions: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """REST's error body, plus the same error in GraphQL's ``errors`` list."""
    doc = {**body, "errors": [{"message": body["error"], "extensions": extensions}]}
    return Response(orjson.dumps(doc), status, dict(headers or {}), "application/json")
