"""The ASGI application: Open Inference Protocol v2 routes, the simple JSON API, docs.

Handlers only decode, call the data plane and encode. Every response carries
``X-Request-ID`` (an incoming one is kept); every error is JSON with the
protocol's ``error`` field, its status chosen in ``rest/errors.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard import __version__
from shipyard.context import RequestContext, new_request_id, request_id_var
from shipyard.errors import InvalidInput, ShipyardError
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.monitoring.tracing import RequestSpan
from shipyard.protocol import mlflow_scoring, oip, simple
from shipyard.protocol.json_body import parse_json
from shipyard.serving.async_requests import AsyncRequests, job_view
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.graphql import graphql_endpoints
from shipyard.serving.rest.admin import admin_endpoints
from shipyard.serving.rest.body import check_json_type, read_body
from shipyard.serving.rest.errors import error_body, error_headers, status_for
from shipyard.serving.rest.experiments import experiment_endpoints
from shipyard.serving.rest.extensions import extension_endpoints
from shipyard.serving.rest.openapi import docs_html, openapi_spec
from shipyard.serving.rest.routes import Endpoint, Handler, rest_endpoints, starlette_routes
from shipyard.signature import Signature
from shipyard.types import InferenceRequest

if TYPE_CHECKING:
    from shipyard.rollout.experiments import Experiments
    from shipyard.security.auth import Authenticator
    from shipyard.serving.explanations import Explanations

logger = logging.getLogger(__name__)

JSON = "application/json"


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


class RequestIdMiddleware:
    """Keeps or creates the request id, exposes it in a contextvar and the response header.

    The ``hot`` routes (predictions) are matched here first and answered straight away: the same
    path pattern and guarded handler the app would reach, without Starlette's per-request wrappers
    around them (the exception middleware, the walk down the whole table, the response's own send);
    their handlers turn every error into a response themselves.
    """

    def __init__(self, app: ASGIApp, hot: Sequence[Route] = ()) -> None:
        self.app = app
        self.hot = [(r.path_regex, r.param_convertors, r.endpoint) for r in hot]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:128]
                break
        rid = rid or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        header = (b"x-request-id", rid.encode("latin-1"))
        try:
            if scope["method"] == "POST":
                path = scope["path"]
                for pattern, convertors, endpoint in self.hot:
                    match = pattern.match(path)
                    if match is not None:
                        scope["path_params"] = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                        scope["endpoint"] = endpoint
                        response = await endpoint(Request(scope, receive, send))
                        await send({"type": "http.response.start", "status": response.status_code,
                                    "headers": [*response.raw_headers, header]})
                        await send({"type": "http.response.body", "body": response.body})
                        return

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), header]
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _context(request: Request) -> RequestContext:
    """The request context of an HTTP request (its id was set by ``RequestIdMiddleware``)."""
    return RequestContext.new("rest", request.scope.get("state", {}).get("request_id") or request_id_var.get(),
                              traceparent=request.headers.get("traceparent"), headers=request.headers)


def _answered(ctx: RequestContext, span: RequestSpan) -> dict[str, str]:
    """Headers of a prediction's response: ``X-Prediction-ID`` (what feedback names) and, with tracing on,
    ``traceparent`` naming the request's span."""
    headers = {"X-Prediction-ID": ctx.prediction_id}
    traceparent = span.traceparent()
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return headers


def _guard(handler: Handler) -> Handler:
    """Turn shipyard errors into JSON error responses, and anything else into a logged 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ShipyardError as exc:
            status = status_for(exc)
            if status >= 500 and status != 503:  # 503s are load shedding, logged by count not line
                logger.error("%s %s failed: %s", request.method, request.url.path, exc)
            return json_response(error_body(exc), status, error_headers(exc))
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            rid = request_id_var.get()
            return json_response({"error": f"internal server error (request id {rid})", "kind": "internal"}, 500)

    return wrapped


class RestApp:
    """Builds the Starlette app around one DataPlane."""

    def __init__(
        self, dataplane: DataPlane, *, max_body_bytes: int, async_requests: AsyncRequests | None = None,
        metrics: ServingMetrics | None = None, experiments: Experiments | None = None,
        endpoints: Sequence[Endpoint] = (), auth: Authenticator | None = None,
        explanations: Explanations | None = None,
    ) -> None:
        self.dp = dataplane
        self.auth = auth
        """Checks every route's credentials against its scope; None: authentication is off."""
        self._experiments = experiments
        self.max_body_bytes = max_body_bytes
        self.async_requests = async_requests
        self.serving_metrics = metrics or ServingMetrics()
        """What ``/metrics`` serves: the server's series plus the asynchronous-request consumers'."""
        if async_requests is not None:
            self.serving_metrics.include(async_requests.metrics.registry)
        self.endpoints: list[Endpoint] = [
            *extension_endpoints(self),  # first: /v2/models/stats before /v2/models/{name}
            *rest_endpoints(self),
            *experiment_endpoints(self),
            *admin_endpoints(self),
            *endpoints,  # what the composition root contributes (feedback)
            *graphql_endpoints(dataplane, max_body_bytes, explanations),
        ]
        """The route table: what ``build`` routes and ``/openapi.json`` documents."""
        self._spec: dict[str, Any] | None = None

    # -- helpers -----------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.max_body_bytes)

    _check_json_type = staticmethod(check_json_type)

    def experiments(self) -> Experiments:
        """What the experiment routes read: the one given, else the registry database's (made when first asked)."""
        if self._experiments is None:
            from shipyard.rollout.experiments import Experiments  # statistics (scipy) only once asked for

            self._experiments = Experiments(self.dp.repository.registry.database)
        return self._experiments

    # -- health and metadata ---------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.dp.ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dp.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        p = request.path_params
        return json_response(await self.dp.model_metadata(p["name"], p.get("version")))

    async def model_ready(self, request: Request) -> Response:
        p = request.path_params
        ok = await self.dp.model_ready(p["name"], p.get("version"))
        return json_response({"name": p["name"], "ready": ok}, 200 if ok else 503)

    async def list_models(self, request: Request) -> Response:
        return json_response({"models": self.dp.models()})

    # -- inference ---------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        p = request.path_params
        body = await self._body(request)
        header_len = oip.parse_header_length(request.headers.get(oip.HEADER_LENGTH), len(body))
        self._check_json_type(request, header_len is not None)
        decoded: list[InferenceRequest] = []

        def decode(signature: Signature) -> InferenceRequest:
            decoded.append(oip.decode_request(body, header_len))
            return decoded[0]

        ctx = _context(request)
        with self.dp.tracing.request(ctx) as span:  # the data plane joins it; encode is its child too
            resp = await self.dp.infer(p["name"], p.get("version"), decode, ctx)
            with self.dp.tracing.span("encode"):
                content, json_len = oip.encode_response(resp, decoded[0])
        if json_len is None:
            return Response(content, 200, _answered(ctx, span), JSON)
        return Response(
            content,
            200,
            headers={"Inference-Header-Content-Length": str(json_len), **_answered(ctx, span)},
            media_type="application/octet-stream",
        )

    async def predict(self, request: Request) -> Response:
        body = await self._body(request)
        self._check_json_type(request, False)
        passthrough: list[Any] = []

        def decode(signature: Signature) -> InferenceRequest:
            req, extra = simple.decode_predict(body, signature)
            passthrough.append(extra)
            return req

        ctx = _context(request)
        with self.dp.tracing.request(ctx) as span:
            resp = await self.dp.infer(request.path_params["name"], None, decode, ctx)
            with self.dp.tracing.span("encode"):
                content = simple.encode_response(resp, passthrough[-1])
        return json_response(content, headers=_answered(ctx, span))

    # -- MLflow scoring protocol (clients of `mlflow models serve`) ---------------------------

    async def invocations(self, request: Request) -> Response:
        return await self._invocations(request, self._only_model())

    async def model_invocations(self, request: Request) -> Response:
        return await self._invocations(request, request.path_params["name"])

    async def _invocations(self, request: Request, name: str) -> Response:
        body = await self._body(request)
        content_type = request.headers.get("content-type", "")
        ctx = _context(request)

        def decode(signature: Signature) -> InferenceRequest:
            req = mlflow_scoring.decode_request(body, content_type, signature)
            req.id = ctx.request_id
            return req

        with self.dp.tracing.request(ctx) as span:
            resp = await self.dp.infer(name, None, decode, ctx)
            with self.dp.tracing.span("encode"):
                content = mlflow_scoring.encode_response(resp)
        return json_response(content, headers=_answered(ctx, span))

    def _only_model(self) -> str:
        """The model /invocations means: the only one served (it names none, as MLflow serves one)."""
        names = self.dp.repository.names()
        if len(names) == 1:
            return names[0]
        raise InvalidInput(
            f"/invocations answers for a server's only model, and this one serves {len(names)} "
            f"({', '.join(names) or 'none'}); POST /v1/models/NAME/invocations instead",
            field="model",
            expected="a server serving one model",
            got=len(names),
        )

    async def version(self, request: Request) -> Response:
        return Response(__version__, 200, media_type="text/plain")

    # -- asynchronous requests -----------------------------------------------------------

    def _jobs(self) -> AsyncRequests:
        assert self.async_requests is not None  # the job routes exist only when they are on
        return self.async_requests

    async def submit_job(self, request: Request) -> Response:
        body = await self._body(request)
        self._check_json_type(request, False)
        parse_json(body)  # refused as a request body (field 'body'), not later as a stream message
        callback = request.query_params.get("callback") or request.headers.get("x-callback-url")
        job = await self._jobs().submit(request.path_params["name"], body, callback)
        url = f"/v1/jobs/{job.id}"
        return json_response({**job_view(job), "url": url}, 202, {"Location": url})

    async def get_job(self, request: Request) -> Response:
        job = await self._jobs().get(request.path_params["job_id"])
        return json_response(job_view(job))

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition of the server's series and the asynchronous-request consumers'."""
        import anyio.to_thread

        # collecting reads every series (and /proc): off the event loop
        body, content_type = await anyio.to_thread.run_sync(self.serving_metrics.render, request.headers.get("accept"))
        return Response(body, 200, headers={"Content-Type": content_type})

    # -- docs ----------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The OpenAPI document of ``endpoints``."""
        if self._spec is None:
            self._spec = openapi_spec(self.endpoints, self.auth)
        return self._spec

    async def openapi(self, request: Request) -> Response:
        return json_response(self.spec())

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(docs_html(self.spec()))

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return json_response({"error": f"no route for {request.method} {request.url.path}", "kind": "not_found"}, 404)

    async def method_not_allowed(self, request: Request, exc: Exception) -> Response:
        # RFC 9110: a 405 names the methods the path does take (Starlette puts them on the exception)
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
        headers = {"Allow": ", ".join(sorted(m.strip() for m in allow.split(",") if m.strip()))}
        return json_response({"error": f"{request.method} is not allowed on {request.url.path}"}, 405, headers)

    def build(self) -> ASGIApp:
        routes = starlette_routes(self.endpoints, _guard, self.auth)
        app = Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.method_not_allowed})
        return RequestIdMiddleware(app, hot=[r for r, e in zip(routes, self.endpoints, strict=True) if e.hot])
