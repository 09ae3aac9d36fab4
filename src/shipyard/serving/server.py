"""Composition root of the online server: wires registry, repository, data plane and REST.

Nothing else builds these objects. ``build_app`` gives the ASGI app (tests drive
it in-process); ``serve`` runs it under uvicorn until SIGINT/SIGTERM, letting
in-flight requests finish before exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.repository import ModelRepository
from shipyard.serving.rest.app import RestApp

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """Everything one server process holds."""

    settings: Settings
    registry: Registry
    repository: ModelRepository
    dataplane: DataPlane
    app: ASGIApp


class _Lifespan:
    """Loads models at startup (readiness stays false until done) and releases them at exit."""

    def __init__(self, app: ASGIApp, repository: ModelRepository, on_ready: Callable[[], Any] | None) -> None:
        self.app = app
        self.repository = repository
        self.on_ready = on_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.repository.start()
                except Exception as exc:
                    logger.error("could not load models: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.on_ready is not None:
                    self.on_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.repository.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_server(
    settings: Settings,
    models: list[str] | None = None,
    *,
    registry: Registry | None = None,
    on_ready: Callable[[], Any] | None = None,
) -> Server:
    """Wire a server for ``models`` (references); no models means every registered model."""
    reg = registry or Registry.from_settings(settings)
    repo = ModelRepository(reg, models, alias_refresh_seconds=settings.alias_refresh_seconds)
    dp = DataPlane(repo)
    rest = RestApp(dp, max_body_bytes=settings.max_body_bytes).build()
    return Server(settings, reg, repo, dp, _Lifespan(rest, repo, on_ready))


@contextlib.asynccontextmanager
async def started(server: Server) -> AsyncIterator[Server]:
    """Run the lifespan startup/shutdown around a block (for in-process use and tests)."""
    await server.repository.start()
    try:
        yield server
    finally:
        server.repository.close()


def serve(
    settings: Settings,
    models: list[str] | None = None,
    *,
    access_log: bool = False,
    on_ready: Callable[[], Any] | None = None,
) -> None:
    """Serve until interrupted. Blocks."""
    server = build_server(settings, models, on_ready=on_ready)
    config = uvicorn.Config(
        server.app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=access_log,
        log_config=None,  # the CLI configures logging once, for the whole process
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    # uvicorn drains in-flight requests on SIGINT/SIGTERM, then re-raises the signal to
    # whatever handler was there before; make that a clean exit 0 rather than death by signal.
    previous = {sig: signal.signal(sig, _exit_cleanly) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.registry.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
