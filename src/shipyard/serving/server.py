"""Composition root of the online server: wires registry, repository, data plane, transports, services.

Nothing else builds these objects. ``build_server`` gives the ASGI app (tests
drive it in-process) and the ordered ``Services`` its lifespan starts and stops;
``serve`` runs it under uvicorn until SIGINT/SIGTERM: uvicorn stops accepting,
finishes in-flight HTTP requests, then the services stop in reverse order (gRPC
drains, asynchronous consumers finish what they read, batchers empty, observers
flush, models unload). With ``workers`` > 1 it runs N such processes instead,
sharing the listening sockets, under ``serving/supervisor.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from shipyard._extras import require
from shipyard.batching.policy import BatchPolicy
from shipyard.config import Settings
from shipyard.graphs.pool import StepPools
from shipyard.graphs.remote import HOSTS_SETTING, check_placements
from shipyard.hosting.compiled import CompiledCache
from shipyard.hosting.repository import ModelRepository
from shipyard.monitoring.alerts import AlertCollector, AlertService, AlertStore, MonitorSnapshot
from shipyard.monitoring.drift.null_cache import NullThresholdCache
from shipyard.monitoring.drift_monitor import DriftCollector, DriftMonitor, DriftRecorder
from shipyard.monitoring.events import Observers, PredictionObserver
from shipyard.monitoring.feedback_service import prune_loop
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.monitoring.predlog import prediction_log
from shipyard.monitoring.snapshots import monitor_snapshots, realized_reader
from shipyard.monitoring.tracing import Tracing
from shipyard.registry import Registry
from shipyard.rollout.arm_stats import ArmStatsRecorder
from shipyard.rollout.experiments import ExperimentCollector, Experiments
from shipyard.rollout.policy import TrafficPolicy, same_spec
from shipyard.rollout.router import PolicyRouter
from shipyard.rollout.store import TrafficStore
from shipyard.security.audit import record_config
from shipyard.security.auth import Authenticator, exposure_check
from shipyard.security.egress import HostAllowList
from shipyard.serving import deployment
from shipyard.serving.async_requests import AsyncRequests
from shipyard.serving.cache import ResponseCache
from shipyard.serving.connections import http_protocol
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.explanations import Explanations
from shipyard.serving.feedback import Feedback
from shipyard.serving.rest.app import RestApp
from shipyard.serving.rest.drift import drift_endpoints
from shipyard.serving.rest.explain import explain_endpoints
from shipyard.serving.rest.overview import overview_endpoints
from shipyard.serving.rest.retrains import retrain_endpoints
from shipyard.serving.rest.routes import Endpoint
from shipyard.serving.services import Hooks, Service, Services
from shipyard.types import ModelRef

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
    services: Services
    """Every part beside the request handlers, in start order (stopped in reverse)."""
    endpoints: list[Endpoint] = field(default_factory=list)
    """The HTTP route table (what the app routes and /openapi.json documents)."""


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process of ``--workers N`` learns from its supervisor."""

    index: int
    """0 to N-1; a replacement takes the index of the worker it replaces."""
    metrics_dir: str | None
    """The folder the workers' Prometheus values share (prometheus_client's multiprocess mode)."""


class _Lifespan:
    """The ASGI lifespan: starts the services (readiness stays false until the models are loaded), stops them."""

    def __init__(self, app: ASGIApp, services: Services, on_ready: Callable[[], Any] | None) -> None:
        self.app = app
        self.services = services
        self.on_ready = on_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.services.start()  # stops what did start when one fails
                except Exception as exc:
                    logger.error("could not start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Everything made so far (modules, models, the app) lives as long as the process: out of
                # the collector's reach, a full collection walks only what requests made since, instead of
                # pausing every request for the ~0.2 s it takes to walk a quarter million start-up objects.
                gc.freeze()
                if self.on_ready is not None:
                    self.on_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.services.stop()  # after uvicorn finished the in-flight HTTP requests
                await send({"type": "lifespan.shutdown.complete"})
                return


def batch_policy(settings: Settings) -> BatchPolicy | None:
    """The server-wide batch policy the settings ask for, or None when batching is off."""
    return deployment.batch_policy(settings)


def build_server(
    settings: Settings,
    models: list[str] | None = None,
    *,
    registry: Registry | None = None,
    on_ready: Callable[[], Any] | None = None,
    grpc_port: int | None = None,
    observers: list[PredictionObserver] | None = None,
    worker: WorkerContext | None = None,
    load_models: bool = True,
) -> Server:
    """Wire a server for ``models`` (references); no models means every registered model.

    ``grpc_port`` adds the gRPC listener (extra ``grpc``) on the same data plane;
    ``observers`` see every prediction (besides those the settings turn on);
    ``worker`` says this process is one worker of ``--workers N`` (shared metrics, shared gRPC port);
    ``load_models=False`` loads no model, follows no alias and steps no rollout (``shipyard ui``: the JSON
    API's registry and monitoring routes and a read-only dashboard).
    """
    exposure_check(settings)  # no listening beyond loopback without authentication
    reg = registry or Registry.from_settings(settings)
    record_config(reg.database, settings)  # the audit log notes the settings a server starts with, when changed
    auth = Authenticator.from_settings(settings, reg.database)
    policies = deployment.deployment_policies(settings, models or ())
    repo = ModelRepository(
        reg,
        models,
        alias_refresh_seconds=settings.alias_refresh_seconds,
        runtime_mode=settings.runtime,
        compiled=CompiledCache(settings.cache_dir / "compiled") if settings.runtimes_used != {"native"} else None,
        extra_fields=settings.extra_fields_overrides,
        release_after_seconds=settings.request_timeout_seconds or 30.0,
        runtimes=policies.runtimes,
    )
    metrics = ServingMetrics(settings.monitoring.metrics,
                             multiprocess_dir=worker.metrics_dir if worker is not None else None)
    predictions = prediction_log(settings, writer=f"w{worker.index}" if worker is not None else "")
    traffic = TrafficStore(reg.database)
    router = PolicyRouter(repo, traffic, refresh_seconds=settings.alias_refresh_seconds)
    # the fleet-wide per-arm counters canary gates, bandits and experiment reports read
    arm_counters = ArmStatsRecorder(reg.database, reward_of=router.reward_of)
    drift = _drift_monitor(settings, reg, traffic)
    feedback = (Feedback.build(settings, reg.database, reward_of=router.reward_of, models=repo.names)
                if settings.monitoring.feedback.enabled else None)
    watched = Observers([
        *([metrics] if settings.monitoring.metrics.enabled else []),
        *([predictions] if predictions is not None else []),
        arm_counters,
        *([drift.recorder] if drift is not None else []),
        *([feedback.recorder] if feedback is not None else []),
        *(observers or ()),
    ])
    metrics.watch(watched)
    repo.on_load(metrics.model_loaded)
    pools = StepPools(settings)
    step_hosts = HostAllowList(settings.security.model_url_hosts, setting=HOSTS_SETTING)
    repo.on_load(functools.partial(_start_pools, repo, pools, step_hosts))  # readiness waits for a graph's pools
    tracing = Tracing(settings.monitoring.tracing)
    declared = deployment.traffic_policies(settings)
    dp = DataPlane(
        repo,
        batching=policies.batching,
        default_batching=policies.default_batching,
        cache=ResponseCache(policies.cache) if policies.cache is not None else None,
        cached_models=policies.cached_models,
        max_queue=settings.max_queue,
        request_timeout=settings.request_timeout_seconds or None,
        observers=watched,
        metrics=metrics if settings.monitoring.metrics.enabled else None,
        tracing=tracing,
        router=router,
    )
    if dp.cache is not None:
        repo.on_alias_move(dp.cache.invalidate)
    async_requests = AsyncRequests(dp, reg, settings) if settings.async_broker else None
    experiments = Experiments(reg.database)
    if settings.monitoring.metrics.enabled:
        metrics.include(ExperimentCollector(experiments).registry())
        if drift is not None:
            metrics.include(DriftCollector(reg.database).registry())
        metrics.include(AlertCollector(AlertStore(reg.database)).registry())
        if feedback is not None:
            metrics.include(feedback.collector.registry())
    if feedback is not None:
        feedback.watch(watched)
    explanations = Explanations(dp, max_rows=settings.explain_max_rows)
    rest_app = RestApp(dp, max_body_bytes=settings.max_body_bytes, async_requests=async_requests, metrics=metrics,
                       experiments=experiments, auth=auth, explanations=explanations,
                       endpoints=[*(feedback.endpoints if feedback is not None else ()),
                                  *(drift_endpoints(reg.database, served=_with_graph_steps(repo),
                                                    profiles=drift.profiles,
                                                    window_seconds=settings.monitoring.drift.window_seconds)
                                    if drift is not None else ()),
                                  *explain_endpoints(explanations, max_body_bytes=settings.max_body_bytes),
                                  *retrain_endpoints(reg.database),
                                  *overview_endpoints(dp, experiments, settings, served=repo.names,
                                                      authentication=auth is not None)])

    # The order things start in; they stop in reverse. Models load first (readiness waits for them);
    # the gRPC listener opens last and drains first.
    services: list[Service] = []
    if auth is not None:  # keys and signing keys loaded before any request is taken
        services += [Hooks("authentication", auth.start), _Loop("credential refresh", auth.watch)]
    services.append(pools)  # stops after the models: every graph step's child process ends
    services.append(Hooks("models", repo.start if load_models else repo.start_unloaded, _async(repo.close)))

    async def start_traffic() -> None:
        for policy in declared:
            await anyio.to_thread.run_sync(_declare, traffic, policy)
        await router.refresh()  # every policy's arms loaded before the server is ready

    services.append(Hooks("traffic policies", start_traffic))
    if predictions is not None:  # stops after the observers flushed into it: writes what is buffered, closes
        services.append(Hooks("prediction log", on_stop=_async(predictions.close)))
    if tracing.enabled:  # stops after the data plane: exports its last spans, then shuts the provider down
        services.append(tracing)
    if drift is not None:  # stops after the observers: writes the windows of their last events
        services.append(drift)
    if feedback is not None:  # stops after the observers too: writes the last served rows
        services.append(Hooks("feedback recorder", _async(feedback.recorder.start_writer),
                              _async(feedback.recorder.stop_writer)))
    alerting = _alert_service(settings, reg, repo.names)
    if alerting is not None:
        services.append(alerting)
    services += [
        Hooks("observers", watched.start, watched.stop),  # stops after the data plane: sees every last event
        Hooks("data plane", on_stop=dp.close),  # stops batchers, then the executor
        *([_Loop("alias watcher", repo.watch)] if load_models else []),  # it preloads what an alias moves to
        _Loop("traffic-policy watcher", router.watch),
    ]
    if settings.rollout_tick_seconds > 0 and load_models:
        services.append(_RolloutControllerService(settings, reg, traffic))
    retraining = _retrain_service(settings, reg)
    if retraining is not None:  # scheduled and alert-started runs, one replica at a time (a lease)
        services.append(retraining)
    if async_requests is not None:
        services.append(Hooks("asynchronous requests", async_requests.start, async_requests.stop))
    if feedback is not None:
        services.append(_Loop("feedback pruning", functools.partial(prune_loop, feedback.store)))
        if feedback.stream is not None:  # stops before the observers: feedback it applies can still flush
            services.append(feedback.stream)
    if grpc_port is not None:
        grpc_server = _grpc_server(dp, settings, grpc_port, auth, reuse_port=worker is not None)
        services.append(Hooks("gRPC", grpc_server.start, grpc_server.stop))
    group = Services(services)
    # /ui: pages drawn from the JSON API above, asked in-process; /ui/static: their files and GraphiQL's
    from shipyard.dashboard import with_dashboard

    app = with_dashboard(rest_app.build(), settings, secure_cookies=settings.security.tls.enabled,
                         read_only=not load_models)
    return Server(settings, reg, repo, dp, _Lifespan(app, group, on_ready), group, rest_app.endpoints)


def _async(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    """A blocking close (unloading models, flushing a sink) as a service hook, run off the event loop."""

    async def call() -> None:
        await anyio.to_thread.run_sync(close)

    return call


def _replica() -> str:
    """This process's name in leases and per-replica rows."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Profiles:
    """Reference profiles of (model, version), read from the registry once each."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._known: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str, version: int) -> Any:
        key = (model, version)
        with self._lock:
            if key not in self._known:
                self._known[key] = self.registry.profile(self.registry.get(f"{model}:{version}"))
            return self._known[key]


def _start_pools(repo: ModelRepository, pools: StepPools, hosts: HostAllowList, name: str, version: int,
                 took: float) -> None:
    """After a version loads (on the loading thread): a graph's steps placed on other servers must be on
    allowed hosts (else the load fails), and its steps placed on worker pools get them."""
    model = repo.cached(ModelRef(name, version))
    if model is not None and model.version.flavor == "graph":
        check_placements(getattr(getattr(model.runtime, "plan", None), "placements", {}), hosts)
        pools.attach(model)


def _with_graph_steps(repo: ModelRepository) -> Callable[[], list[str]]:
    """The served names plus the models that loaded graphs run as steps (each step's drift is reported too)."""

    def names() -> list[str]:
        found = set(repo.names())
        for mv in repo.loaded_versions():
            for ref in dict(mv.lineage.get("steps") or {}).values() if mv.flavor == "graph" else ():
                found.add(ModelRef.parse(str(ref)).name)
        return sorted(found)

    return names


def _drift_monitor(settings: Settings, registry: Registry, traffic: TrafficStore) -> DriftMonitor | None:
    """The drift recorder (an observer) and monitor (a service) ``monitoring.drift`` asks for."""
    config = settings.monitoring.drift
    if not config.enabled:
        return None
    profiles = _Profiles(registry)
    recorder = DriftRecorder(profiles, window_seconds=config.window_seconds)
    thresholds = NullThresholdCache(settings.cache_dir / "drift-null-thresholds.sqlite")
    return DriftMonitor(registry.database, recorder, profiles, config, traffic, _replica(), thresholds=thresholds)


def _retrain_service(settings: Settings, registry: Registry) -> Service | None:
    """The retraining scheduler, when a ``models:`` entry has a schedule or alert rules to retrain on."""
    from shipyard.retraining.service import RetrainService, specs_from

    specs = {m: s for m, s in specs_from(settings).items() if s.schedule or s.on_alerts}
    if not specs:
        return None
    return RetrainService(registry, settings, specs, interval=settings.retrain_tick_seconds, holder=_replica())


def _alert_service(settings: Settings, registry: Registry, models: Callable[[], Any]) -> AlertService | None:
    """The alert rules' evaluator ``monitoring.alerts`` asks for (one replica at a time evaluates: a lease)."""
    config = settings.monitoring.alerts
    if config.evaluate_seconds <= 0 or not config.rules:
        return None
    database = registry.database
    signals = {rule.signal for rule in config.rule_set().rules}
    # realized metrics join every labelled prediction of the window: read only when a rule looks at them
    realized = (realized_reader(database, models, window_seconds=config.realized_window_seconds)
                if signals & {"realized_drop", "label_coverage"} else None)

    def snapshots() -> list[MonitorSnapshot]:
        return monitor_snapshots(database, registry, realized=realized)

    return AlertService.from_config(database, config, snapshots, holder=_replica())


def _declare(store: TrafficStore, policy: TrafficPolicy) -> None:
    """Store a policy shipyard.yaml declares, unless the stored one is the same experiment (maybe further on)."""
    stored = store.get(policy.model)
    if stored is None or not same_spec(stored, policy):
        store.put(policy, actor="shipyard.yaml", reason="declared in shipyard.yaml")


class _Loop:
    """A background loop as a service: ``run(stop)`` until stop is set (alias moves, policy changes)."""

    def __init__(self, name: str, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self.run = run
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(self._stop), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


class _RolloutControllerService:
    """The rollout controller of this replica, reading the fleet's per-arm counters.

    The controller brings SciPy, so it is imported and started in the background once the
    server is up: a server's cold start does not pay for it.
    """

    name = "rollout controller"

    def __init__(self, settings: Settings, registry: Registry, traffic: TrafficStore) -> None:
        self.settings = settings
        self.registry = registry
        self.traffic = traffic
        self.controller: Any = None
        self._starting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._starting = asyncio.get_running_loop().create_task(self._start(), name="rollout controller start")

    async def _start(self) -> None:
        try:
            self.controller = await anyio.to_thread.run_sync(self._build)
            await self.controller.start()
        except Exception:
            logger.exception("the rollout controller did not start; canaries and bandits will not move")

    def _build(self) -> Any:
        from shipyard.rollout.arm_stats import read_totals
        from shipyard.rollout.controller import RolloutController

        database = self.registry.database

        def totals(model: str, revision: int, since: float | None) -> Any:
            return read_totals(database, model, revision, since=since)

        tick = self.settings.rollout_tick_seconds
        return RolloutController(self.traffic, self.registry, totals,
                                 holder=_replica(),
                                 interval_seconds=tick, lease_seconds=3 * tick)

    async def stop(self) -> None:
        if self._starting is not None:
            await self._starting
        if self.controller is not None:
            await self.controller.stop()


def _grpc_server(dp: DataPlane, settings: Settings, port: int, auth: Authenticator | None, *,
                 reuse_port: bool = False) -> GrpcServer:
    """The gRPC listener, imported only when asked for (MissingDependency without the extra)."""
    require("grpc", "grpc", "grpcio")
    from shipyard.security.tls import ServerTls
    from shipyard.serving.grpc.auth import AuthInterceptor
    from shipyard.serving.grpc.server import GrpcServer

    tls = ServerTls.from_config(settings.security.tls)
    return GrpcServer(dp, host=settings.host, port=port, max_message_bytes=settings.max_body_bytes,
                      grace_seconds=settings.graceful_shutdown_seconds,
                      interceptors=[AuthInterceptor(auth)] if auth is not None else (),
                      credentials=tls.grpc_credentials() if tls is not None else None, reuse_port=reuse_port)


@contextlib.asynccontextmanager
async def started(server: Server) -> AsyncIterator[Server]:
    """Run the server's services around a block (for in-process use and tests)."""
    async with server.services.running():
        yield server


def serve(
    settings: Settings,
    models: list[str] | None = None,
    *,
    access_log: bool = False,
    on_ready: Callable[[], Any] | None = None,
    grpc_port: int | None = None,
    configure_logging: Callable[[], None] | None = None,
) -> None:
    """Serve until interrupted. Blocks. ``grpc_port`` also serves gRPC.

    With ``workers`` > 1 (``worker_count``) this process binds the sockets and supervises that many
    worker processes, each a whole server (``serving/supervisor.py``); ``configure_logging`` (picklable)
    sets their logging up as the caller did its own; ``on_ready`` runs once every worker is ready.
    With ``security.tls.certfile`` set both listeners speak TLS only; the certificate files are
    checked before anything loads (ConfigError naming the setting and the file).
    """
    from shipyard.security.tls import ServerTls

    tls = ServerTls.from_config(settings.security.tls)
    if settings.worker_count > 1:
        from shipyard.serving.supervisor import Supervisor

        exposure_check(settings)  # before any worker starts, as one process checks before it loads
        Supervisor(settings, models, access_log=access_log, grpc_port=grpc_port,
                   configure_logging=configure_logging, on_ready=on_ready).run()
        return
    server = build_server(settings, models, on_ready=on_ready, grpc_port=grpc_port)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logger.info("listening on %s://%s:%d%s", "https" if tls is not None else "http", host, settings.port,
                f" (client certificates: {tls.client_auth})" if tls is not None else "")
    run_uvicorn(server, access_log=access_log)


def run_uvicorn(server: Server, *, access_log: bool, sockets: list[socket.socket] | None = None) -> None:
    """Run ``server`` under uvicorn until SIGINT/SIGTERM, on ``sockets`` (bound elsewhere) or its settings' port.

    uvicorn drains in-flight requests on the signal, the lifespan stops the services; the process
    then exits 0 rather than dying by the signal.
    """
    from shipyard.security.tls import ServerTls

    settings = server.settings
    tls = ServerTls.from_config(settings.security.tls)
    config = uvicorn.Config(
        server.app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=access_log,
        log_config=None,  # the CLI configures logging once, for the whole process
        timeout_graceful_shutdown=round(settings.graceful_shutdown_seconds),
        timeout_keep_alive=int(settings.keep_alive_seconds),
        server_header=False,
        http=http_protocol(settings.header_timeout_seconds, settings.max_connections),
        **(tls.uvicorn_kwargs() if tls is not None else {}),
    )
    # uvicorn drains in-flight requests on SIGINT/SIGTERM, then re-raises the signal to
    # whatever handler was there before; make that a clean exit 0 rather than death by signal.
    previous = {sig: signal.signal(sig, _exit_cleanly) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.registry.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
