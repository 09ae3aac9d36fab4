"""Composition root of the online server: wires registry, repository, data plane and REST.

Nothing else builds these objects. ``build_app`` gives the ASGI app (tests drive
it in-process); ``serve`` runs it under uvicorn until SIGINT/SIGTERM, letting
in-flight requests finish before exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard._extras import require
from shipyard.batching.policy import BatchPolicy
from shipyard.config import Settings
from shipyard.hosting.compiled import CompiledCache
from shipyard.hosting.repository import ModelRepository
from shipyard.hosting.workers import WorkerPool, preload_modules, remote_model
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.registry import Registry
from shipyard.serving.async_requests import AsyncRequests
from shipyard.serving.cache import CachePolicy, ResponseCache
from shipyard.serving.connections import http_protocol
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.rest.app import RestApp
from shipyard.serving.rest.routes import Endpoint

if TYPE_CHECKING:
    from shipyard.serving.grpc.server import GrpcServer

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """Everything one server process holds."""

    settings: Settings
    registry: Registry
    repository: ModelRepository
    dataplane: DataPlane
    app: ASGIApp
    endpoints: list[Endpoint] = field(default_factory=list)
    """The HTTP route table (what the app routes and /openapi.json documents)."""


class _Lifespan:
    """Loads models at startup (readiness stays false until done) and releases them at exit."""

    def __init__(self, app: ASGIApp, repository: ModelRepository, on_ready: Callable[[], Any] | None) -> None:
        self.app = app
        self.repository = repository
        self.on_ready = on_ready
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        """Coroutines run at shutdown, after in-flight requests finished, before models unload."""
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        """Coroutines run once the models are loaded, before the server reports started (gRPC)."""

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
                try:
                    for start in self.on_startup:
                        await start()
                except Exception as exc:
                    logger.error("could not start: %s", exc)
                    for stop in self.on_shutdown:  # undo what did start (worker processes), best effort
                        with contextlib.suppress(Exception):
                            await stop()
                    self.repository.close()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.on_ready is not None:
                    self.on_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for stop in self.on_shutdown:
                    try:
                        await stop()
                    except Exception:
                        logger.exception("error while shutting down")
                self.repository.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def batch_policy(settings: Settings) -> BatchPolicy | None:
    """The batch policy the settings ask for, or None when batching is off."""
    if not settings.batching:
        return None
    return BatchPolicy(
        max_batch_size=settings.batch_max_size,
        max_wait_ms=settings.batch_max_wait_ms,
        latency_target_ms=settings.batch_latency_target_ms or None,
    )


def build_server(
    settings: Settings,
    models: list[str] | None = None,
    *,
    registry: Registry | None = None,
    on_ready: Callable[[], Any] | None = None,
    grpc_port: int | None = None,
) -> Server:
    """Wire a server for ``models`` (references); no models means every registered model.

    ``grpc_port`` adds the gRPC listener (extra ``grpc``) on the same data plane.
    """
    reg = registry or Registry.from_settings(settings)
    repo = ModelRepository(
        reg,
        models,
        alias_refresh_seconds=settings.alias_refresh_seconds,
        runtime_mode=settings.runtime,
        compiled=CompiledCache(settings.cache_dir / "compiled") if settings.runtime != "native" else None,
        extra_fields=settings.extra_fields_overrides,
    )
    pool = WorkerPool(settings, settings.worker_count) if settings.worker_count > 1 else None
    if pool is not None:
        repo.loader = remote_model  # the server process keeps signatures; workers hold the models
    dp = DataPlane(
        repo,
        executor=pool,
        default_batching=batch_policy(settings),
        cache=ResponseCache(CachePolicy(settings.cache_size, settings.cache_ttl_seconds))
        if settings.cache_size
        else None,
        cached_models=set(repo.defaults) if settings.cache_size else None,
        max_queue=settings.max_queue,
        request_timeout=settings.request_timeout_seconds or None,
    )
    if dp.cache is not None:
        repo.on_alias_move = dp.cache.invalidate
    async_requests = AsyncRequests(dp, reg, settings) if settings.async_broker else None
    metrics = ServingMetrics(settings.monitoring.metrics)
    rest_app = RestApp(dp, max_body_bytes=settings.max_body_bytes, async_requests=async_requests, metrics=metrics)
    lifespan = _Lifespan(rest_app.build(), repo, on_ready)
    lifespan.on_shutdown.append(dp.close)
    if async_requests is not None:
        lifespan.on_startup.append(async_requests.start)
        lifespan.on_shutdown.insert(0, async_requests.stop)  # finish read requests while models are loaded
    if pool is not None:

        async def start_workers() -> None:
            versions = repo.loaded_versions()
            pool.preload(preload_modules({mv.flavor for mv in versions}, settings.runtime))
            await pool.start(versions)

        lifespan.on_startup.insert(0, start_workers)
    if grpc_port is not None:
        grpc_server = _grpc_server(dp, settings, grpc_port)
        lifespan.on_startup.append(grpc_server.start)
        lifespan.on_shutdown.insert(0, grpc_server.stop)  # drain gRPC calls before the data plane closes
    return Server(settings, reg, repo, dp, lifespan, rest_app.endpoints)


def _grpc_server(dp: DataPlane, settings: Settings, port: int) -> GrpcServer:
    """The gRPC listener, imported only when asked for (MissingDependency without the extra)."""
    require("grpc", "grpc", "grpcio")
    from shipyard.serving.grpc.server import GrpcServer

    return GrpcServer(dp, host=settings.host, port=port, max_message_bytes=settings.max_body_bytes)


@contextlib.asynccontextmanager
async def started(server: Server) -> AsyncIterator[Server]:
    """Run the lifespan startup/shutdown around a block (for in-process use and tests)."""
    await server.repository.start()
    for start in getattr(server.app, "on_startup", ()):
        await start()
    try:
        yield server
    finally:
        for stop in getattr(server.app, "on_shutdown", [server.dataplane.close]):
            await stop()
        server.repository.close()


def serve(
    settings: Settings,
    models: list[str] | None = None,
    *,
    access_log: bool = False,
    on_ready: Callable[[], Any] | None = None,
    grpc_port: int | None = None,
) -> None:
    """Serve until interrupted. Blocks. ``grpc_port`` also serves gRPC, in the same process."""
    server = build_server(settings, models, on_ready=on_ready, grpc_port=grpc_port)
    config = uvicorn.Config(
        server.app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=access_log,
        log_config=None,  # the CLI configures logging once, for the whole process
        timeout_graceful_shutdown=30,
        timeout_keep_alive=int(settings.keep_alive_seconds),
        server_header=False,
        http=http_protocol(settings.header_timeout_seconds, settings.max_connections),
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
