"""The GraphQL transport at ``/graphql`` (extra ``graphql``: strawberry-graphql).

``graphql_endpoints`` gives the route-table entry for the REST app, or nothing
when strawberry is not installed. strawberry is imported, and the schema built,
when ``/graphql`` is first asked for: a server nobody queries over GraphQL never
pays for it (about 0.7 s and 10 MB at start).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import anyio.to_thread

from shipyard.serving.rest.routes import HTML, JSON, Body, Endpoint, Param

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from shipyard.serving.dataplane import DataPlane
    from shipyard.serving.explanations import Explanations


class _OnFirstUse:
    """``/graphql``'s ASGI app, built (strawberry imported, schema made) by its first request."""

    def __init__(self, dataplane: DataPlane, max_body_bytes: int, explanations: Explanations | None) -> None:
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.explanations = explanations
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            # imported off the event loop: other requests go on while the schema is built
            module = await anyio.to_thread.run_sync(importlib.import_module, "shipyard.serving.graphql.app")
            if self.app is None:
                self.app = module.GraphQLApp(self.dataplane, self.max_body_bytes, self.explanations)
        await self.app(scope, receive, send)


def graphql_endpoints(dataplane: DataPlane, max_body_bytes: int,
                      explanations: Explanations | None = None) -> list[Endpoint]:
    """The ``/graphql`` endpoint when strawberry is installed, else ``[]`` (``explain`` answers with
    ``explanations``; without them it refuses)."""
    if importlib.util.find_spec("strawberry") is None:
        return []
    return [
        Endpoint(
            ("GET", "POST"),
            "/graphql",
            _OnFirstUse(dataplane, max_body_bytes, explanations),
            "GraphQL: served models, versions, aliases, signatures, predict and explain (GET in a browser: GraphiQL)",
            Body("GraphQLResponse", (JSON, HTML), "a GraphQL response (errors of the query inside it), "
                 "or the GraphiQL page for a browser's GET without a query"),
            Body("GraphQLRequest"),
            errors=(400, 413, 415, 500),
            query=(
                Param("query", "the GraphQL document (GET)"),
                Param("variables", "its variables as a JSON object (GET)"),
                Param("operationName", "which operation of the document to run (GET)"),
            ),
            asgi=True, scope="authenticated")
    ]
