"""The dashboard at ``/ui``: server-rendered pages over the server's own JSON API.

Every number a page shows is read from a ``/v1/...`` or ``/v2/...`` route of the same
server, asked in-process (``httpx.ASGITransport``) with the browser's credential, so the
pages show exactly what the API answers and every scope check is the API's. Actions
(promote, pause/abort a rollout, roll back an alias) are forms posted to ``/ui`` that call
the admin routes; they are shown only to a principal with the ``admin`` scope.

``with_dashboard`` routes ``/ui`` to the dashboard and everything else to the API. The
dashboard's modules (and Jinja2, extra ``ui``) are imported on the first ``/ui`` request,
so a server nobody browses never loads them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from shipyard.config import Settings

__all__ = ["PREFIX", "STATIC", "with_dashboard"]

PREFIX = "/ui"
STATIC = PREFIX + "/static/"
"""Scripts, styles and vendored libraries (the dashboard's and GraphiQL's): served even without the pages."""


class _WithDashboard:
    """``/ui`` and below to the dashboard (built on first use), the rest to ``api``."""

    def __init__(self, api: ASGIApp, pages: bool, secure_cookies: bool, read_only: bool) -> None:
        self.api = api
        self.pages = pages
        self.secure_cookies = secure_cookies
        self.read_only = read_only
        self._ui: ASGIApp | None = None
        self._static: ASGIApp | None = None
        self._lock = asyncio.Lock()

    async def _dashboard(self) -> ASGIApp:
        if self._ui is None:
            async with self._lock:
                if self._ui is None:
                    from shipyard.dashboard.app import Dashboard

                    self._ui = Dashboard(self.api, secure_cookies=self.secure_cookies,
                                         read_only=self.read_only).app()
        return self._ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(STATIC):
                if self._static is None:
                    from pathlib import Path

                    from starlette.routing import Mount
                    from starlette.staticfiles import StaticFiles

                    self._static = Mount(STATIC.rstrip("/"), StaticFiles(directory=Path(__file__).parent / "static"))
                await self._static(scope, receive, send)
                return
            if self.pages and (path == PREFIX or path.startswith(PREFIX + "/")):
                await (await self._dashboard())(scope, receive, send)
                return
        await self.api(scope, receive, send)


def with_dashboard(api: ASGIApp, settings: Settings, *, secure_cookies: bool = False,
                   read_only: bool = False) -> ASGIApp:
    """``api`` with the dashboard at ``/ui`` (``read_only``: no action forms, for ``shipyard ui``).

    With ``settings.dashboard`` off only ``/ui/static/`` is served (GraphiQL's files live there).
    """
    return _WithDashboard(api, settings.dashboard, secure_cookies, read_only)
