"""The dashboard's pages and actions: each one reads the JSON API in-process and renders a Jinja2 template.

How the browser authenticates (when the server has ``security.auth`` on): ``/ui/login`` takes an
API key (or a JWT) once, checks it against ``GET /v1/whoami``, and keeps it in the cookie
``shipyard_ui_token`` (``HttpOnly``: page scripts cannot read it; ``SameSite=Strict``: no other
site's page can make the browser send it; ``Path=/ui``; ``Secure`` under TLS; no expiry, so it
ends with the browser session). Each page sends it as ``Authorization: Bearer`` to the API, whose
scope checks decide what the page may show; a request that already carries ``Authorization``
(a proxy in front) is forwarded as it is. Actions are ``POST`` forms carrying a random CSRF token
that must equal the ``shipyard_ui_csrf`` cookie (double submit: works across workers and replicas
without shared state), and a ``POST`` whose ``Origin`` names another host is refused. Pages are
sent with a Content-Security-Policy that allows only the server's own scripts and styles (every
script, style and chart library is shipped in ``static/``; nothing is fetched from the internet).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from shipyard._extras import require
from shipyard.dashboard import PREFIX

__all__ = ["Dashboard"]

TOKEN_COOKIE = "shipyard_ui_token"
CSRF_COOKIE = "shipyard_ui_csrf"
HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024
REFRESH_SECONDS = 5

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store", "X-Frame-Options": "DENY"}


class ApiError(Exception):
    """The JSON API refused or failed a request the page needed."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class Api:
    """The server's JSON API, asked in-process with the browser's credential and address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def call(self, request: Request, method: str, path: str, params: Mapping[str, Any] | None = None,
                   body: Any = None, *, authorization: str | None = None) -> Any:
        client = request.client
        transport = httpx.ASGITransport(app=self.app, client=(client.host, client.port) if client else ("127.0.0.1", 0))
        headers = {}
        auth = authorization if authorization is not None else _authorization(request)
        if auth:
            headers["Authorization"] = auth
        if body is not None:
            headers["Content-Type"] = "application/json"
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.internal") as http:
            answer = await http.request(method, path, params=clean, headers=headers,
                                        content=None if body is None else orjson.dumps(body))
        try:
            doc = answer.json()
        except ValueError:
            doc = {"error": answer.text[:500]}
        if answer.status_code >= 400:
            raise ApiError(answer.status_code, str(doc.get("error") if isinstance(doc, dict) else doc))
        return doc

    async def maybe(self, request: Request, path: str,
                    params: Mapping[str, Any] | None = None) -> tuple[Any, str | None]:
        """``(document, None)``, or ``(None, why)`` when the API refused (off, no scope, not found)."""
        try:
            return await self.call(request, "GET", path, params), None
        except ApiError as exc:
            return None, exc.message


def _authorization(request: Request) -> str | None:
    given = request.headers.get("authorization")
    if given:
        return given
    token = request.cookies.get(TOKEN_COOKIE)
    return f"Bearer {token}" if token else None


def _fmt(value: Any) -> str:
    """A number exactly as the API gave it (the API rounds), a dash for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return str(value)


def _when(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value))) + "Z"
    return str(value).replace("T", " ")[:19] + "Z"


def _json_script(value: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element."""
    return orjson.dumps(value).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Dashboard:
    """The ``/ui`` application over ``api`` (the server's REST app)."""

    def __init__(self, api: ASGIApp, *, secure_cookies: bool = False, read_only: bool = False) -> None:
        jinja2 = require("jinja2", "ui")
        self.api = Api(api)
        self.secure_cookies = secure_cookies
        self.read_only = read_only
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=jinja2.select_autoescape(default=True), trim_blocks=True,
                                      lstrip_blocks=True, undefined=jinja2.ChainableUndefined)
        self.env.filters.update(fmt=_fmt, when=_when, json_script=_json_script)
        self.env.globals.update(prefix=PREFIX, refresh_seconds=REFRESH_SECONDS)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(PREFIX, lambda r: RedirectResponse(PREFIX + "/", 307)),
            Route(PREFIX + "/", self.overview),
            Route(PREFIX + "/fragments/overview", self.overview_rows),
            Route(PREFIX + "/models/{name}", self.model),
            Route(PREFIX + "/audit", self.audit),
            Route(PREFIX + "/login", self.login, methods=["GET", "POST"]),
            Route(PREFIX + "/logout", self.logout, methods=["POST"]),
            Route(PREFIX + "/models/{name}/aliases/{alias}/rollback", self.rollback, methods=["POST"]),
            Route(PREFIX + "/models/{name}/aliases/{alias}/set", self.set_alias, methods=["POST"]),
            Route(PREFIX + "/models/{name}/rollout/{action}", self.rollout, methods=["POST"]),
        ], exception_handlers={404: self._not_found})

    # -- rendering ----------------------------------------------------------------------------

    def _page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        html = self.env.get_template(template).render(csrf=csrf, path=request.url.path, **context)
        response = HTMLResponse(html, status, headers=_HEADERS)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, path=PREFIX, httponly=True, samesite="strict",
                                secure=self.secure_cookies)
        return response

    async def _whoami(self, request: Request) -> dict[str, Any] | Response:
        """The caller as the API sees it, or the login page's redirect when the API wants a credential."""
        try:
            me: dict[str, Any] = await self.api.call(request, "GET", "/v1/whoami")
        except ApiError as exc:
            if exc.status == 401:
                return RedirectResponse(f"{PREFIX}/login?next={urllib.parse.quote(request.url.path)}", 303)
            raise
        me["admin"] = "admin" in me["scopes"] and not self.read_only
        return me

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self._page(request, "error.html", 404, me=None, message=f"no page at {request.url.path}")

    # -- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        # both at once: the caller and the rows (the rows are refused too without a credential)
        window = {"window": request.query_params.get("window")}
        me, (doc, why) = await asyncio.gather(self._whoami(request), self.api.maybe(request, "/v1/overview", window))
        if isinstance(me, Response):
            return me
        return self._page(request, "overview.html", me=me, doc=doc, why=why, done=request.query_params.get("done"))

    async def overview_rows(self, request: Request) -> Response:
        me = await self._whoami(request)
        if isinstance(me, Response):
            return Response("", 286)  # htmx: stop polling; the next full load goes to the login page
        doc, why = await self.api.maybe(request, "/v1/overview", {"window": request.query_params.get("window")})
        return self._page(request, "overview_rows.html", me=me, doc=doc, why=why)

    async def model(self, request: Request) -> Response:
        me = await self._whoami(request)
        if isinstance(me, Response):
            return me
        name = request.path_params["name"]
        q = request.query_params
        quoted = urllib.parse.quote(name, safe="@:")
        filters = {"version": q.get("version"), "outcome": q.get("outcome"), "since": q.get("since"),
                   "limit": q.get("limit") or "50"}
        calls = {
            "versions": (f"/v1/models/{quoted}/versions", None),
            "summary": (f"/v1/models/{quoted}/summary", {"window": q.get("window") or "3600", "buckets": "60"}),
            "experiment": (f"/v1/experiments/{quoted}", None),
            "drift": (f"/v1/models/{quoted}/drift", None),
            "quality": (f"/v1/models/{quoted}/quality", {"since": q.get("window_since") or "1d"}),
            "retrains": ("/v1/retrains", {"model": name}),
            "alerts": ("/v1/alerts", {"model": name, "state": "all"}),
        }
        if me["admin"] or "admin" in me["scopes"]:
            calls["aliases"] = (f"/v1/models/{quoted}/aliases", None)
            calls["predictions"] = (f"/v1/models/{quoted}/predictions", filters)
        answers = await asyncio.gather(*(self.api.maybe(request, p, params) for p, params in calls.values()))
        data = {k: a[0] for k, a in zip(calls, answers, strict=True)}
        why = {k: a[1] for k, a in zip(calls, answers, strict=True)}
        if data["versions"] is None:
            return self._page(request, "error.html", 404, me=me, message=why["versions"])
        realized = await self._realized(request, name, data["summary"]) if data["quality"] is not None else None
        distributions = await self._distributions(request, name, data["drift"])
        graph = next((v for v in reversed(data["versions"]["versions"]) if v["flavor"] == "graph"), None)
        steps = await self._steps(request, graph, calls["summary"][1])
        return self._page(request, "model.html", me=me, name=name, data=data, why=why, filters=filters,
                          graph=graph, steps=steps, realized=realized, distributions=distributions,
                          done=q.get("done"), error=q.get("error"))

    async def _realized(self, request: Request, name: str, summary: dict[str, Any] | None) -> dict[str, Any] | None:
        """The realized metric per version over the traffic chart's window, in 12 slices (``/quality`` each)."""
        if not summary:
            return None
        start, end, slices = float(summary["start"]), float(summary["end"]), 12
        width = (end - start) / slices
        bounds = [(start + i * width, start + (i + 1) * width) for i in range(slices)]
        answers = await asyncio.gather(*(self.api.maybe(request, f"/v1/models/{_q(name)}/quality",
                                                        {"since": _iso(a), "until": _iso(b)}) for a, b in bounds))
        metric: str | None = None
        per_version: dict[str, list[float | None]] = {}
        for i, (doc, _) in enumerate(answers):
            for group in (doc or {}).get("groups", []):
                values = group.get("metrics") or {}
                if metric is None:
                    metric = next((m for m in ("accuracy", "mae") if values.get(m) is not None),
                                  next((m for m, v in values.items() if v is not None), None))
                if metric is not None and values.get(metric) is not None:
                    per_version.setdefault(f"v{group['version']}", [None] * slices)[i] = values[metric]
        if metric is None:
            return None
        return {"metric": metric, "t": [round(a, 3) for a, _ in bounds], "versions": per_version}

    async def _distributions(self, request: Request, name: str,
                             drift: dict[str, Any] | None) -> dict[str, Any] | None:
        """Reference and window shares per feature (``/drift/distributions``) for the newest report's window,
        or the newest window when there is no report yet."""
        if drift is None:
            return None
        reports = drift.get("reports") or []
        params = ({"version": str(reports[0]["version"]), "arm": reports[0]["arm"], "start": str(reports[0]["start"])}
                  if reports else None)
        doc, _ = await self.api.maybe(request, f"/v1/models/{_q(name)}/drift/distributions", params)
        return doc if isinstance(doc, dict) else None

    async def _steps(self, request: Request, graph: dict[str, Any] | None,
                     window: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """A graph version's steps with each step version's traffic (its events are logged under its own name)."""
        if graph is None:
            return []
        steps = [(step, str(ref)) for step, ref in ((graph.get("lineage") or {}).get("steps") or {}).items()]
        models = [ref.split(":")[0].split("@")[0] for _, ref in steps]
        answers = await asyncio.gather(*(self.api.maybe(request, f"/v1/models/{_q(m)}/summary",
                                                        {"window": (window or {}).get("window")}) for m in models))
        out = []
        for (step, ref), (doc, why) in zip(steps, answers, strict=True):
            version = ref.split(":")[1] if ":" in ref else None
            numbers = (doc or {}).get("versions", {}).get(version) if version else doc
            out.append({"step": step, "ref": ref, "traffic": numbers, "why": why})
        return out

    async def audit(self, request: Request) -> Response:
        me = await self._whoami(request)
        if isinstance(me, Response):
            return me
        q = request.query_params
        filters = {k: q.get(k) for k in ("action", "target", "actor", "since")}
        doc, why = await self.api.maybe(request, "/v1/audit", {**filters, "limit": q.get("limit") or "200"})
        verify, _ = await self.api.maybe(request, "/v1/audit/verify")
        return self._page(request, "audit.html", me=me, doc=doc, why=why, verify=verify, filters=filters)

    # -- signing in -------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next") or PREFIX + "/"
        if not target.startswith(PREFIX + "/") or target.startswith("//"):
            target = PREFIX + "/"  # never send the browser elsewhere after signing in
        if request.method == "GET":
            return self._page(request, "login.html", me=None, next=target, message=None)
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        token = form.get("token", "").strip()
        try:
            me = await self.api.call(request, "GET", "/v1/whoami", authorization=f"Bearer {token}")
        except ApiError as exc:
            return self._page(request, "login.html", 401, me=None, next=target, message=exc.message)
        response = RedirectResponse(target, 303)
        if me.get("authentication"):
            response.set_cookie(TOKEN_COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                                secure=self.secure_cookies)
        return response

    async def logout(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        response = RedirectResponse(PREFIX + "/login", 303)
        response.delete_cookie(TOKEN_COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=self.secure_cookies)
        return response

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The posted form once its origin and CSRF token check out, else the refusal page."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            return self._page(request, "error.html", 403, me=None, message="refused: the form came from another site")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return self._page(request, "error.html", 413, me=None, message="form too large")
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        expected = request.cookies.get(CSRF_COOKIE) or ""
        given = form.get("csrf", "")
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return self._page(request, "error.html", 403, me=None,
                              message="refused: the form's CSRF token does not match (reload the page and try again)")
        return form

    # -- actions --------------------------------------------------------------------------------

    async def _act(self, request: Request, path: str, body: Any, done: str) -> Response:
        name = request.path_params["name"]
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        if self.read_only:
            return self._page(request, "error.html", 403, me=None, message="this dashboard is read-only")
        page = f"{PREFIX}/models/{urllib.parse.quote(name, safe='@:')}"
        try:
            await self.api.call(request, "PUT" if body is not None else "POST", path, body=body)
        except ApiError as exc:
            return RedirectResponse(f"{page}?{urllib.parse.urlencode({'error': exc.message[:300]})}", 303)
        return RedirectResponse(f"{page}?{urllib.parse.urlencode({'done': done})}", 303)

    async def rollback(self, request: Request) -> Response:
        p = request.path_params
        return await self._act(request, f"/v1/models/{_q(p['name'])}/aliases/{_q(p['alias'])}/rollback", None,
                               f"rolled back {p['name']}@{p['alias']}")

    async def set_alias(self, request: Request) -> Response:
        p = request.path_params
        body = await request.body()  # Starlette keeps it: the CSRF check reads it again
        version = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("version", [""])[-1]
        if not version.isdigit():
            return self._page(request, "error.html", 400, me=None, message="version: a version number")
        return await self._act(request, f"/v1/models/{_q(p['name'])}/aliases/{_q(p['alias'])}",
                               {"version": int(version)}, f"moved {p['name']}@{p['alias']} to version {version}")

    async def rollout(self, request: Request) -> Response:
        p = request.path_params
        if p["action"] not in ("pause", "resume", "abort", "promote"):
            return self._page(request, "error.html", 404, me=None, message=f"no rollout action {p['action']!r}")
        return await self._act(request, f"/v1/experiments/{_q(p['name'])}/{p['action']}", None,
                               f"rollout of {p['name']}: {p['action']}")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="@:")
