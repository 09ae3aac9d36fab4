"""REST routes of Triton's extensions: model configuration, statistics, repository index.

What tritonclient.http's ``get_model_config``, ``get_inference_statistics`` and
``get_model_repository_index`` call (and perf_analyzer before it sends anything):

* ``GET /v2/models/{name}[/versions/{version}]/config``: the version's
  configuration derived from its signature (``serving/model_config.py``);
* ``GET /v2/models/stats``, ``GET /v2/models/{name}[/versions/{version}]/stats``:
  ``{"model_stats": [...]}`` (``serving/statistics.py``); ``/v2/models/stats``
  is routed before ``/v2/models/{name}``, so a model named ``stats`` has no
  REST metadata route (as on Triton);
* ``POST /v2/repository/index`` with an optional ``{"ready": true}`` body: every
  registered version of the served models, READY or UNAVAILABLE.

The documents are the data plane's, the same ones gRPC answers with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput
from shipyard.protocol.json_body import parse_json
from shipyard.serving.rest.body import check_json_type, read_body
from shipyard.serving.rest.routes import BODY_ERRORS, JSON, MODEL_ERRORS, Body, Endpoint

if TYPE_CHECKING:
    from shipyard.serving.rest.app import RestApp


def _json(content: object) -> Response:
    return Response(orjson.dumps(content), 200, media_type=JSON)


def extension_endpoints(app: RestApp) -> list[Endpoint]:
    """The endpoints, in the order they must be routed (before ``/v2/models/{name}``)."""
    dp = app.dp

    async def config(request: Request) -> Response:
        p = request.path_params
        return _json(await dp.model_config(p["name"], p.get("version")))

    async def stats(request: Request) -> Response:
        p = request.path_params
        return _json(await dp.model_statistics(p.get("name"), p.get("version")))

    async def index(request: Request) -> Response:
        body = await read_body(request, app.max_body_bytes)
        ready = False
        if body:  # tritonclient sends none (whitespace alone is not JSON: 400, as anywhere else)
            check_json_type(request, False)
            doc = parse_json(body)
            if not isinstance(doc, dict):
                raise InvalidInput("the repository index request must be a JSON object such as {\"ready\": true}",
                                   field="body", got=type(doc).__name__)
            ready = doc.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput(f"'ready' must be true or false, got {ready!r}"[:200], field="ready",
                                   expected="true or false", got=ready)
        return _json(await dp.repository_index(ready_only=ready))

    lookup_errors = (400, 404, 500)  # statistics never load a model: no 503
    return [
        Endpoint(("GET",), "/v2/models/stats", stats, "Inference statistics of every loaded or used version",
                 Body("ModelStatistics"), scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/config", config,
                 "Model configuration (Triton's layout), derived from the signature", Body("ModelConfig"),
                 errors=MODEL_ERRORS, scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/versions/{version}/config", config, "Version configuration",
                 Body("ModelConfig"), errors=MODEL_ERRORS, scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/stats", stats,
                 "Inference statistics of a model (every version; one for name@alias or name:VERSION)",
                 Body("ModelStatistics"), errors=lookup_errors, scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/versions/{version}/stats", stats, "Inference statistics of a version",
                 Body("ModelStatistics"), errors=lookup_errors, scope="read"),
        Endpoint(("POST",), "/v2/repository/index", index,
                 "Registered versions of the served models: READY (loaded) or UNAVAILABLE",
                 Body("RepositoryIndex"),
                 Body("RepositoryIndexRequest", description="an empty body is {\"ready\": false}", optional=True),
                 errors=tuple(s for s in BODY_ERRORS if s not in (404, 503, 504)), scope="read"),
    ]
