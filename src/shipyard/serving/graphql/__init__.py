"""The GraphQL transport at ``/graphql`` (extra ``graphql``: strawberry-graphql).

``graphql_routes`` gives the route for the REST app, or nothing when strawberry
is not installed; strawberry is imported only then.
"""

from __future__ import annotations

import importlib.util

from starlette.routing import BaseRoute, Route

from shipyard.serving.dataplane import DataPlane


def graphql_routes(dataplane: DataPlane) -> list[BaseRoute]:
    """``[Route("/graphql", ...)]`` when strawberry is installed, else ``[]``."""
    if importlib.util.find_spec("strawberry") is None:
        return []
    from shipyard.serving.graphql.app import GraphQLApp

    return [Route("/graphql", GraphQLApp(dataplane), methods=["GET", "POST"])]
