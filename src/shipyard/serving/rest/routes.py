"""The route table: every HTTP endpoint the server answers, declared once.

An ``Endpoint`` names its methods, path, handler, summary, request and
response bodies (a schema of ``openapi.SCHEMAS`` and the media types) and the
statuses it answers with the error body. ``starlette_routes`` builds the
Starlette routes from the table and ``openapi.openapi_spec`` the OpenAPI
document, so what is served and what is documented cannot disagree; a test
pins that every handler's statuses and media types are declared here.

To add an endpoint, add an entry to ``rest_endpoints`` (or return entries from
another transport, as ``serving/graphql`` does) and its schemas to
``openapi.SCHEMAS``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInput
from shipyard.security.principal import NEEDS

if TYPE_CHECKING:
    from shipyard.security.auth import Authenticator
    from shipyard.serving.rest.app import RestApp

JSON = "application/json"
OCTETS = "application/octet-stream"
TEXT = "text/plain"
HTML = "text/html"
CSV = "text/csv"

Handler = Callable[[Request], Awaitable[Response]]

#: Statuses of an endpoint that only reads server state.
SERVER_ERRORS: tuple[int, ...] = (500,)
#: Statuses of an endpoint that names a model (bad name, unknown model, not loaded yet).
MODEL_ERRORS: tuple[int, ...] = (400, 404, 500, 503)
#: Statuses of an endpoint that takes a body for a model.
BODY_ERRORS: tuple[int, ...] = (400, 404, 413, 415, 500, 503, 504)


@dataclass(frozen=True)
class Body:
    """A request or response body: a schema of ``openapi.SCHEMAS`` (None: any) in these media types."""

    schema: str | None
    media_types: tuple[str, ...] = (JSON,)
    description: str = ""
    optional: bool = False
    """A request body the endpoint also takes empty (OpenAPI ``required: false``)."""


@dataclass(frozen=True)
class Param:
    """A query parameter (path parameters come from the path; their schemas from ``openapi``)."""

    name: str
    description: str
    schema: str = "string"


@dataclass(frozen=True)
class Endpoint:
    """One path, its methods and handler, what it takes and answers, and who may call it."""

    methods: tuple[str, ...]
    path: str
    handler: Any
    """``async def (Request) -> Response``, or an ASGI app when ``asgi`` (it shapes its own errors)."""
    summary: str
    response: Body
    """The success body, at ``status``."""
    request: Body | None = None
    status: int = 200
    errors: tuple[int, ...] = SERVER_ERRORS
    """Statuses answered with the ``Error`` body."""
    replies: tuple[tuple[int, Body], ...] = ()
    """Other statuses with a body of their own (e.g. 503 ``{"ready": false}``)."""
    query: tuple[Param, ...] = ()
    asgi: bool = False
    hot: bool = False
    """A prediction route: matched before the rest of the table, on the shortest way to its handler."""
    scope: str = ""
    """What a caller needs (``security.principal.NEEDS``): ``open``, ``metrics``, ``authenticated`` or a
    scope. Every endpoint must say; an endpoint without one is refused when the table is built."""

    def __post_init__(self) -> None:
        if self.scope not in NEEDS:
            raise ValueError(f"endpoint {'|'.join(self.methods)} {self.path} must declare its scope, one of "
                             f"{', '.join(NEEDS)}; got {self.scope!r}")

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    @property
    def allow(self) -> str:
        """The ``Allow`` header of a 405 on this path (Starlette answers HEAD wherever GET is)."""
        methods = list(self.methods)
        if "GET" in methods and "HEAD" not in methods:
            methods.append("HEAD")
        return ", ".join(methods)


def starlette_routes(endpoints: Iterable[Endpoint], guard: Callable[[Handler], Handler],
                     auth: Authenticator | None = None) -> list[Route]:
    """The Starlette routes of ``endpoints``; request handlers are wrapped by ``guard`` (errors as JSON).

    With ``auth``, each checks the caller's credential against its ``scope`` before anything else.
    An endpoint that declares query parameters refuses any other (400 naming it): a misspelt
    ``?verison=3`` must not quietly answer for every version.
    """
    from shipyard.serving.rest.auth import authorized, authorized_asgi

    routes = []
    for e in endpoints:
        if e.asgi:
            app = e.handler if auth is None else authorized_asgi(auth, e.scope, e.handler)
            routes.append(Route(e.path, app, methods=list(e.methods)))
            continue
        handler = _only_declared(e) if e.query else e.handler
        if auth is not None:
            handler = authorized(auth, e.scope, handler)
        routes.append(Route(e.path, guard(handler), methods=list(e.methods)))
    return routes


def _only_declared(endpoint: Endpoint) -> Handler:
    known = [p.name for p in endpoint.query]
    handler = endpoint.handler

    async def checked(request: Request) -> Response:
        for name in request.query_params:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; it takes {', '.join(known)}"
                raise InvalidInput(f"unknown query parameter '{name[:50]}'{hint}", field=name[:50],
                                   expected=known, got=name[:50])
        response: Response = await handler(request)
        return response

    return checked


def rest_endpoints(app: RestApp) -> list[Endpoint]:
    """The REST API of ``app``: Open Inference Protocol v2, the simple JSON API, jobs, metrics, docs."""
    name_errors = MODEL_ERRORS
    infer = Body("InferenceRequest", (JSON, OCTETS),
                 "JSON, or with the binary tensor extension a JSON header of Inference-Header-Content-Length "
                 "bytes followed by the tensors")
    infer_reply = Body("InferenceResponse", (JSON, OCTETS),
                       "JSON, or with binary outputs a JSON header of Inference-Header-Content-Length bytes "
                       "followed by the tensors")
    not_ready = Body("Ready", description="the server is still loading its models")
    mlflow = Body("MLflowRequest", (JSON, CSV), "one of dataframe_split, dataframe_records, instances or "
                  "inputs (optionally params), or CSV with a header row")
    model_not_ready = Body("ModelReady", description="the model is not loaded (yet)")
    endpoints = [
        Endpoint(("GET",), "/v2/health/live", app.live, "Server is alive", Body("Live"), scope="open"),
        Endpoint(("GET",), "/v2/health/ready", app.ready, "Server has loaded its models", Body("Ready"),
                 replies=((503, not_ready),), scope="open"),
        Endpoint(("GET",), "/v2", app.server_metadata, "Server metadata", Body("ServerMetadata"), scope="read"),
        Endpoint(("GET",), "/v2/models/{name}", app.model_metadata, "Model metadata (signature)",
                 Body("ModelMetadata"), errors=name_errors, scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/ready", app.model_ready, "Model readiness", Body("ModelReady"),
                 errors=(400, 404, 500), replies=((503, model_not_ready),), scope="read"),
        Endpoint(("POST",), "/v2/models/{name}/infer", app.infer, "Infer", infer_reply, infer,
                 errors=BODY_ERRORS, scope="predict", hot=True),
        Endpoint(("GET",), "/v2/models/{name}/versions/{version}", app.model_metadata, "Version metadata",
                 Body("ModelMetadata"), errors=name_errors, scope="read"),
        Endpoint(("GET",), "/v2/models/{name}/versions/{version}/ready", app.model_ready, "Version readiness",
                 Body("ModelReady"), errors=(400, 404, 500), replies=((503, model_not_ready),), scope="read"),
        Endpoint(("POST",), "/v2/models/{name}/versions/{version}/infer", app.infer, "Infer on a version",
                 infer_reply, infer, errors=BODY_ERRORS, scope="predict", hot=True),
        Endpoint(("GET",), "/v1/models", app.list_models, "Models this server serves", Body("ModelList"), scope="read"),
        Endpoint(("POST",), "/v1/models/{name}:predict", app.predict, "Predict from records or columns",
                 Body("PredictResponse"), Body("PredictRequest"), errors=BODY_ERRORS, scope="predict", hot=True),
        Endpoint(("POST",), "/invocations", app.invocations,
                 "MLflow scoring (as `mlflow models serve`) with the server's only model; "
                 "a server with several answers 400 naming /v1/models/NAME/invocations",
                 Body("MLflowResponse"), mlflow, errors=BODY_ERRORS, scope="predict"),
        Endpoint(("POST",), "/v1/models/{name}/invocations", app.model_invocations,
                 "MLflow scoring (as `mlflow models serve`) with a named model", Body("MLflowResponse"), mlflow,
                 errors=BODY_ERRORS, scope="predict"),
        Endpoint(("GET",), "/ping", app.ready, "MLflow's health probe: 200 once the models are loaded",
                 Body("Ready"), replies=((503, not_ready),), scope="open"),
        Endpoint(("GET",), "/health", app.ready, "MLflow's health probe (same as /ping)", Body("Ready"),
                 replies=((503, not_ready),), scope="open"),
        Endpoint(("GET",), "/version", app.version, "shipyard's version (MLflow clients read it as text)",
                 Body(None, (TEXT,)), scope="read"),
        Endpoint(("GET",), "/metrics", app.metrics, "Prometheus metrics of the server and its async consumers",
                 Body(None, (TEXT,)), scope="metrics"),
        Endpoint(("GET",), "/openapi.json", app.openapi, "This document", Body("OpenAPI"), scope="read"),
        Endpoint(("GET",), "/docs", app.docs, "The API as a page", Body(None, (HTML,)), scope="read"),
    ]
    if app.async_requests is not None:  # off: the routes do not exist (404), and the document says so
        endpoints += [
            Endpoint(("POST",), "/v1/models/{name}/jobs", app.submit_job,
                     "Queue an asynchronous request (202 with a job id; ?callback=URL to get the result "
                     "POSTed there)", Body("Job"), Body("PredictRequest"), status=202, errors=BODY_ERRORS,
                     query=(Param("callback", "http(s) URL the finished job is POSTed to (or header "
                                  "X-Callback-URL)"),), scope="predict"),
            Endpoint(("GET",), "/v1/jobs/{job_id}", app.get_job,
                     "An asynchronous request: queued, done (result) or failed (error)", Body("Job"),
                     errors=(404, 500), scope="predict"),
        ]
    return endpoints
