"""The GraphQL transport at ``/graphql`` (extra ``graphql``: strawberry-graphql).

``graphql_endpoints`` gives the route-table entry for the REST app, or nothing
when strawberry is not installed; strawberry is imported only then.
"""

from __future__ import annotations

import importlib.util

from shipyard.serving.dataplane import DataPlane
from shipyard.serving.rest.routes import HTML, JSON, Body, Endpoint, Param


def graphql_endpoints(dataplane: DataPlane, max_body_bytes: int) -> list[Endpoint]:
    """The ``/graphql`` endpoint when strawberry is installed, else ``[]``."""
    if importlib.util.find_spec("strawberry") is None:
        return []
    from shipyard.serving.graphql.app import GraphQLApp

    return [
        Endpoint(
            ("GET", "POST"),
            "/graphql",
            GraphQLApp(dataplane, max_body_bytes),
            "GraphQL: served models, versions, aliases, signatures and predict (GET in a browser: GraphiQL)",
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
