"""The GraphQL endpoint: strawberry's ASGI app over the schema, with shipyard's error handling."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult
from strawberry.types.execution import ExecutionContext
from strawberry.utils.logging import StrawberryLogger

from shipyard.serving.catalog import ModelCatalog
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.graphql.errors import format_error, is_expected
from shipyard.serving.graphql.schema import Context, Query


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # bad input and unknown models are the caller's business, not the server log's
        for error in errors:
            if not is_expected(error):
                StrawberryLogger.error(error, execution_context)


SCHEMA = _Schema(query=Query)


class GraphQLApp(GraphQL[Context, None]):
    """``/graphql``: POST (or GET) a GraphQL document; GET in a browser opens GraphiQL."""

    def __init__(self, dataplane: DataPlane) -> None:
        super().__init__(SCHEMA)
        self.dataplane = dataplane
        self.catalog = ModelCatalog(dataplane.repository)

    async def get_context(self, request: Any, response: Any) -> Context:
        return Context(self.dataplane, self.catalog, request, response)

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        doc: GraphQLHTTPResponse = {"data": result.data}
        if result.errors:
            doc["errors"] = [format_error(e) for e in result.errors]
        if result.extensions:
            doc["extensions"] = result.extensions
        return doc
