"""``POST /v1/models/{name}:explain``: feature attributions of each row (``shipyard.explain``, extra ``explain``).

The work is ``serving/explanations.py``'s (shared with GraphQL's ``explain`` field): the
body is a ``:predict`` body, at most ``explain_max_rows`` rows per request (400 above it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.serving.rest.body import check_json_type, read_body
from shipyard.serving.rest.routes import BODY_ERRORS, JSON, Body, Endpoint

if TYPE_CHECKING:
    from shipyard.serving.explanations import Explanations

__all__ = ["explain_endpoints"]


def explain_endpoints(explanations: Explanations, *, max_body_bytes: int) -> list[Endpoint]:
    """The explain endpoint over ``explanations`` (its data plane's models and row limit)."""

    async def explain(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        check_json_type(request, False)
        content = await explanations.explain(request.path_params["name"], body)
        return Response(orjson.dumps(content), 200, media_type=JSON)

    return [
        Endpoint(("POST",), "/v1/models/{name}:explain", explain,
                 "Feature attributions (SHAP) of each row: base value plus attributions equal the explained value",
                 Body("ExplainResponse"), Body("PredictRequest"), errors=BODY_ERRORS, scope="predict"),
    ]
