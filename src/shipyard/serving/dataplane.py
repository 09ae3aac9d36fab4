"""Protocol-agnostic serving logic: every transport (REST, gRPC, GraphQL) calls this.

One path for resolving a model, validating against its signature, predicting
and shaping the response; transports only decode bytes into an
``InferenceRequest`` and encode the ``InferenceResponse`` back.

Datatypes: an Open Inference Protocol tensor declares its datatype. One of
another numeric datatype is accepted only when it widens to the input's without
loss (``signature.WIDENS_TO``: FP32 for FP64, INT32 for INT64, INT16 for FP32,
...) and refused when narrower (FP64 for FP32, INT64 for FP64, floats for
integers), on REST JSON, the binary extension and gRPC raw or typed contents
alike. A request with the parameter ``convert_datatypes: true`` instead has its
values converted when they fit, as the simple API and GraphQL always do (their
JSON numbers have no declared width).

Every request that reaches a resolved model is counted in ``statistics``
(``serving/statistics.py``), here and nowhere else, whichever transport it came by.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio.to_thread

from shipyard import __version__
from shipyard.batching.policy import BatchPolicy
from shipyard.batching.queue import Batcher
from shipyard.config import Settings
from shipyard.context import RequestContext, new_request_id
from shipyard.errors import InvalidInput, Overloaded, RequestTimeout, ShipyardError
from shipyard.graphs.host import ServedSteps, graph_request
from shipyard.hosting.executor import Executor, InProcessExecutor
from shipyard.hosting.repository import ModelRepository
from shipyard.monitoring.events import Observers, PredictionEvent
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.monitoring.tracing import Tracing
from shipyard.protocol.status import kind_of
from shipyard.registry import LoadedModel
from shipyard.registry.loaded import select_outputs
from shipyard.rollout.router import AliasRouter, Route, Router
from shipyard.runtime.base import Arrays
from shipyard.security.principal import principal_var, require_model
from shipyard.serving.cache import ResponseCache, cache_key
from shipyard.serving.model_config import model_config
from shipyard.serving.statistics import InferenceStatistics, ModelStats
from shipyard.signature import Signature, check_declared_datatypes
from shipyard.types import InferenceRequest, InferenceResponse, ModelRef, Tensor

logger = logging.getLogger(__name__)

SERVER_NAME = "shipyard"
EXTENSIONS = ["binary_tensor_data", "model_repository_aliases", "model_configuration", "statistics"]

#: Request parameter: convert inputs to the model's datatypes when the values fit (see the module docstring).
CONVERT_DATATYPES = "convert_datatypes"


def request_flag(parameters: Mapping[str, Any], name: str) -> bool:
    """A true/false request parameter (absent: false); InvalidInput naming it for any other value."""
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"request parameter '{name}' must be true or false, got {value!r}"[:200],
            field=name,
            expected="true or false",
            got=value,
        )
    return value


#: Decodes a request body against the signature of the version the request was routed to.
Decoder = Callable[[Signature], InferenceRequest]


def outcome_of(exc: BaseException) -> str:
    """The outcome an event records for a failure: the error's kind (``internal`` for a non-shipyard error)."""
    return kind_of(exc) if isinstance(exc, ShipyardError) else "internal"


@dataclass
class _Done:
    """What a request got as far as (for its event): validated inputs, outputs, rows, whether cached."""

    inputs: Arrays | None = None
    outputs: Arrays | None = None
    rows: int = 0
    cached: bool = False
    wall: float = field(default_factory=time.time)
    """Wall-clock time the data plane took the request (for the event)."""
    started: int = field(default_factory=time.perf_counter_ns)
    """The monotonic clock then (for its latency)."""


def _field_key(request: InferenceRequest, name: str) -> str | None:
    """The first row's value of input ``name``: the unit key of sticky routing by a field (None: absent)."""
    for tensor in request.inputs:
        if tensor.name == name:
            data = tensor.data
            first = data.flat[0] if hasattr(data, "flat") and data.size else (data[0] if len(data) else None)
            return None if first is None else str(first.item() if hasattr(first, "item") else first)
    return None


def _rows(arrays: Arrays) -> int:
    first = next(iter(arrays.values()), None)
    return 1 if first is None or not first.ndim else int(first.shape[0])


class DataPlane:
    """Protocol-agnostic serving: metadata, health and the one request path every transport takes."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        executor: Executor | None = None,
        batching: dict[str, BatchPolicy | None] | None = None,
        default_batching: BatchPolicy | None = None,
        cache: ResponseCache | None = None,
        cached_models: set[str] | None = None,
        max_queue: int = Settings.max_queue,  # one default, in Settings
        request_timeout: float | None = None,
        router: Router | None = None,
        observers: Observers | None = None,
        metrics: ServingMetrics | None = None,
        tracing: Tracing | None = None,
        max_shadow_tasks: int | None = None,
    ) -> None:
        """
        Args:
            repository: the models this server holds.
            router: which version a request for a name goes to (default: ``AliasRouter``).
            observers: who sees every prediction once its response is decided (default: nobody).
            metrics: where batch sizes, queue times and in-flight counts go (what events do not carry).
            tracing: a span per request and its steps (default: off; ``monitoring/tracing.py``).
            executor: where model calls run (default: in this process).
            batching: per-model batch policy; a name mapped to None disables batching for it.
            default_batching: the policy of models not named in ``batching`` (None: no batching).
            cache: the response cache, used for the models in ``cached_models``.
            max_queue: requests per model version waiting or running before 503s.
            request_timeout: seconds a request may take in total before it gets 504.
            max_shadow_tasks: shadow copies running at once; more are dropped and counted (default: 16 in
                process, where slow calls take threads; half the worker processes otherwise, so shadows
                never hold every worker the callers need).
        """
        self.repository = repository
        self.executor: Executor = executor or InProcessExecutor()
        self.batching = dict(batching or {})
        self.default_batching = default_batching
        self.cache = cache
        self.cached_models = set(cached_models or ())
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._inflight: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.statistics = InferenceStatistics()
        self.router: Router = router or AliasRouter(repository)
        self.observers = observers or Observers([])
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        if max_shadow_tasks is None:
            in_process = isinstance(self.executor, InProcessExecutor)
            max_shadow_tasks = 16 if in_process else max(1, self.executor.capacity // 2)
        self.max_shadow_tasks = max_shadow_tasks
        self._shadows: set[asyncio.Task[None]] = set()
        self.shadows_dropped = 0
        """Shadow copies not made: ``max_shadow_tasks`` were running already."""
        self.shadow_failures = 0
        """Shadow copies that failed (logged as such, never seen by a caller)."""
        self._steps = ServedSteps(self._call_step, self.tracing, self.metrics, self.observers)
        """The host of inference graphs: each step a model call of this request path (``shipyard.graphs``)."""
        repository.on_release(self._released)
        repository.on_load(self._loaded)

    # -- health and metadata -----------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready

    def server_metadata(self) -> dict[str, Any]:
        # shipyard's own version only: the interpreter's and libraries' versions tell an attacker
        # which known holes to try, and this answers anyone
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    async def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        ref = self._ref_for(name, version)
        return await self.repository.get_async(ref)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        ref = self._ref_for(name, version)
        ready = await anyio.to_thread.run_sync(self.repository.is_ready, ref)
        if not ready and ref.version is not None:
            # is_ready only knows what is loaded: a version that does not exist is 404, not 503
            await anyio.to_thread.run_sync(self.repository.registry.resolve, ref)
        return ready

    async def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = await self.resolve(name, version)
        mv = model.version
        sig = mv.signature
        return {
            "name": name,
            "versions": [str(mv.version)],
            "platform": f"shipyard_{mv.flavor}",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in sig.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in sig.outputs],
            "parameters": {
                "signature_format": sig.format,
                "digest": mv.digest,
                "created_at": mv.created_at,
            },
        }

    def _ref_for(self, name: str, version: str | None) -> ModelRef:
        """The reference ``name`` and ``version`` mean, if the request's principal may use that model."""
        ref = self.repository.ref_for(name, version)
        require_model(ref.name)
        return ref

    def _visible(self) -> list[str]:
        """The served models the request's principal may use (all of them with authentication off)."""
        principal = principal_var.get()
        return [n for n in self.repository.names() if principal is None or principal.may_use(n)]

    def models(self) -> list[dict[str, Any]]:
        out = []
        for name in self._visible():
            ref = self.repository.defaults[name]
            model = self.repository.cached(ref) if ref.version is not None or ref.alias is not None else None
            out.append({"name": name, "ref": str(ref), "loaded": model is not None or self.repository.ready})
        return out

    # -- model configuration, repository index, statistics (Triton's extensions) ---------

    async def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The version's configuration in Triton's layout (``serving/model_config.py``)."""
        meta = await self.model_metadata(name, version)
        model = await self.resolve(name, version)
        return model_config(
            name,
            model.version.version,
            meta["platform"],
            model.signature,
            meta["parameters"],
            self.batching.get(model.name, self.default_batching),
        )

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every registered version of the served models: READY when loaded, else UNAVAILABLE."""
        registry = self.repository.registry
        loaded = {(mv.name, mv.version) for mv in self.repository.loaded_versions()}
        out: list[dict[str, Any]] = []
        for name in self._visible():
            for mv in await anyio.to_thread.run_sync(registry.versions, name):
                ready = (name, mv.version) in loaded
                if ready or not ready_only:
                    out.append({
                        "name": name,
                        "version": str(mv.version),
                        "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "not loaded; the first request for it loads it",
                    })
        return out

    async def model_statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """``{"model_stats": [...]}``: every loaded or used version; of one model; or of one version.

        A bare name means all its versions; ``name@alias``, ``name:N`` or ``version``
        mean that one version (which must exist; it is not loaded for this).
        """
        visible = set(self._visible())
        seen = sorted(k for k in {(mv.name, mv.version) for mv in self.repository.loaded_versions()}
                      | set(self.statistics.known()) if k[0] in visible)
        if not name:
            return self.statistics.document(seen)
        ref = self._ref_for(name, version)  # ModelNotServed, bad versions; a bare name: its default
        if not version and ModelRef.parse(name) == ModelRef(ref.name):
            mine = [k for k in seen if k[0] == ref.name]
            if mine:
                return self.statistics.document(mine)
        number = await anyio.to_thread.run_sync(self.repository.registry.resolve, ref)  # ModelNotFound
        return self.statistics.document([(ref.name, number)])

    # -- inference --------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferenceRequest | Decoder,
        ctx: RequestContext | None = None,
    ) -> InferenceResponse:
        """The one request path: route, decode, validate, predict (cache, batcher, executor), observe.

        Args:
            name: the served name as the caller wrote it (``demo``, ``demo@challenger``, ``demo:3``).
            version: the version a URL names, if any.
            request: the decoded request, or a function that decodes it against the routed
                version's signature (so the body is read with the signature that will answer it).
            ctx: who is asking; a Python call without one gets a new context.

        The model is routed and resolved once, before the body is decoded: an unknown model
        is the answer even when the body is also wrong. Counted in ``statistics`` and seen
        by every observer under the version it was routed to, success or failure.
        """
        if ctx is None:
            ctx = RequestContext.new("python", request.id if isinstance(request, InferenceRequest) else None)
        with self.tracing.request(ctx) as span:  # joins the transport's span when it opened one
            route = self.router.route(name, version, ctx)
            require_model(route.ref.name)
            model = await self.repository.get_async(route.ref)
            decoded: InferenceRequest | None = None
            if route.key_field is not None:  # sticky by an input field: read it, then route by its value
                with self.tracing.span("decode"):
                    decoded = request if isinstance(request, InferenceRequest) else request(model.signature)
                ctx = replace(ctx, route_key=_field_key(decoded, route.key_field))
                route = self.router.route(name, version, ctx)
                routed = await self.repository.get_async(route.ref)
                if routed.signature != model.signature and not isinstance(request, InferenceRequest):
                    decoded = None  # decode again with the signature that will answer
                model = routed
            span.routed(model.name, model.version.version, route.label)
            stats = self.statistics.of(model.name, model.version.version)
            done = _Done()
            if self.metrics is not None:
                self.metrics.inflight(model.name, 1)
            graph_token = graph_request.set(ctx)  # a graph's steps log their predictions under this request
            try:
                if decoded is None:
                    with self.tracing.span("decode"):
                        decoded = request if isinstance(request, InferenceRequest) else request(model.signature)
                if decoded.id is None:
                    decoded.id = ctx.request_id
                response = await self._infer(model, decoded, stats, done)
            except Exception as exc:
                span.finished(done.rows, self._account(ctx, model, route, stats, done, exc, span.trace_id))
                raise
            finally:
                graph_request.reset(graph_token)
                if self.metrics is not None:
                    self.metrics.inflight(model.name, -1)
            span.finished(done.rows, self._account(ctx, model, route, stats, done, None, span.trace_id))
            if route.shadows:
                self._shadow(ctx, route, model.signature, done.inputs, request if decoded is None else decoded)
            return response

    # -- shadow arms: copies of a request whose answers are logged, never returned -------------------

    def _shadow(self, ctx: RequestContext, route: Route, signature: Signature, inputs: Arrays | None,
                request: InferenceRequest | Decoder) -> None:
        """Start one task per shadow arm; past ``max_shadow_tasks`` running, the copy is dropped and counted."""
        for label, ref in route.shadows:
            if len(self._shadows) >= self.max_shadow_tasks:
                self.shadows_dropped += 1
                continue
            task = asyncio.get_running_loop().create_task(
                self._shadow_one(ctx, Route(ref, label, revision=route.revision), signature, inputs, request))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow_one(self, ctx: RequestContext, route: Route, signature: Signature, inputs: Arrays | None,
                          request: InferenceRequest | Decoder) -> None:
        # the caller's request id; a prediction id of its own (the log and feedback key on it)
        ctx = replace(ctx, prediction_id=new_request_id())
        done = _Done()
        try:
            model = await self.repository.get_async(route.ref)
        except Exception:
            logger.warning("shadow %s of %s: cannot resolve %s", route.label, route.ref.name, route.ref, exc_info=True)
            self.shadow_failures += 1
            return
        stats = self.statistics.of(model.name, model.version.version)
        try:
            if inputs is not None and model.signature == signature:
                arrays = inputs  # validated already, against the same signature
            else:
                decoded = request if isinstance(request, InferenceRequest) else request(model.signature)
                arrays = model.signature.validate({t.name: t.data for t in decoded.inputs})
            done.inputs, done.rows = arrays, _rows(arrays)
            done.outputs = await self._within_deadline(model, arrays, stats, done.rows, shadow=True)
        except Exception as exc:
            self.shadow_failures += 1
            self._account(ctx, model, route, stats, done, exc, shadow=True)
            return
        self._account(ctx, model, route, stats, done, None, shadow=True)

    def _account(self, ctx: RequestContext, model: LoadedModel, route: Route, stats: ModelStats, done: _Done,
                 exc: Exception | None, trace_id: str | None = None, shadow: bool = False) -> str:
        """Count a finished request in the statistics and hand its event to the observers; its outcome."""
        took = time.perf_counter_ns() - done.started
        outcome = "ok" if exc is None else outcome_of(exc)
        if exc is None:
            stats.succeeded(done.rows, took)
        else:
            stats.failed(took)
        if self.observers:
            self._emit(ctx, model, route, done, took, outcome, None if exc is None else str(exc), trace_id, shadow)
        return outcome

    def _emit(self, ctx: RequestContext, model: LoadedModel, route: Route, done: _Done,
              took_ns: int, outcome: str, error: str | None, trace_id: str | None = None,
              shadow: bool = False) -> None:
        self.observers.emit(PredictionEvent(
            context=ctx, model=model.name, version=model.version.version, route=route.label,
            inputs=done.inputs, outputs=done.outputs, started_at=done.wall, latency_s=took_ns / 1e9,
            outcome=outcome, rows=done.rows, cached=done.cached, error=error, trace_id=trace_id,
            shadow=shadow, revision=route.revision,
        ))

    async def _infer(
        self, model: LoadedModel, request: InferenceRequest, stats: ModelStats, done: _Done
    ) -> InferenceResponse:
        with self.tracing.span("validate"):
            if request.outputs:
                model.check_outputs(request.outputs)
            if request.declared_datatypes and not request_flag(request.parameters, CONVERT_DATATYPES):
                check_declared_datatypes(
                    model.signature,
                    {t.name: t.datatype for t in request.inputs},
                    hint=f"send that datatype, or set the request parameter {CONVERT_DATATYPES}=true "
                    "to have values converted when they fit",
                )
            arrays = model.signature.validate({t.name: t.data for t in request.inputs})
        done.inputs, done.rows = arrays, _rows(arrays)
        key = None
        if self.cache is not None and model.name in self.cached_models:
            looked_up = time.perf_counter_ns()
            key = cache_key(model.name, model.version.version, arrays, request.outputs)
            hit = self.cache.get(key)
            stats.cache(hit is not None, time.perf_counter_ns() - looked_up)
            if hit is not None:
                done.outputs, done.cached = hit, True
                return self._response(model, hit, request)
        outputs = await self._within_deadline(model, arrays, stats, done.rows)
        outputs = select_outputs(outputs, request.outputs)
        if key is not None and self.cache is not None:
            self.cache.put(key, outputs)
        done.outputs = outputs
        return self._response(model, outputs, request)

    async def _within_deadline(self, model: LoadedModel, arrays: Arrays, stats: ModelStats, rows: int,
                               shadow: bool = False) -> Arrays:
        if self.request_timeout is None or self._runs_inline(model):
            return await self._predict(model, arrays, stats, rows, shadow)
        try:
            async with asyncio.timeout(self.request_timeout):  # in place; wait_for would add a task
                return await self._predict(model, arrays, stats, rows, shadow)
        except TimeoutError:
            raise RequestTimeout(self.request_timeout) from None

    def _runs_inline(self, model: LoadedModel) -> bool:
        """Whether a call of ``model`` runs on the event loop, unbatched: nothing could time it out mid-way."""
        inline = getattr(self.executor, "runs_inline", None)
        return (inline is not None and self.batching.get(model.name, self.default_batching) is None
                and inline(model))

    async def predict_batch(self, model: LoadedModel, arrays: Arrays, ctx: RequestContext) -> Arrays:
        """A batch of validated rows from a stream (asynchronous requests): admission, deadline, observers.

        The stream consumer has decoded, validated and merged its messages already; this is
        the same model call, statistics and event as ``infer``, without a protocol request.
        """
        stats = self.statistics.of(model.name, model.version.version)
        route = Route(ModelRef(model.name, version=model.version.version), str(model.version.version))
        done = _Done(inputs=arrays, rows=_rows(arrays))
        try:
            outputs = await self._within_deadline(model, arrays, stats, done.rows)
        except Exception as exc:
            self._account(ctx, model, route, stats, done, exc)
            raise
        done.outputs = outputs
        self._account(ctx, model, route, stats, done, None)
        return outputs

    async def _predict(self, model: LoadedModel, arrays: Arrays, stats: ModelStats, rows: int,
                       shadow: bool = False) -> Arrays:
        """One model call, batched when the model has a batch policy; admission is bounded.

        A shadow copy is admitted only while its version's queue is under half full: it never
        takes the places the version's own callers need (it is dropped, counted, instead).
        """
        batcher = self._batcher_for(model, stats)
        if shadow and self._inflight.get(model.version.ref, 0) * 2 >= self.max_queue:
            raise Overloaded(model.version.ref, self._inflight.get(model.version.ref, 0))
        if batcher is not None:
            run = self.tracing.batch_run()  # None unless this request is traced
            try:
                return await batcher.submit(arrays, on_run=run)  # the batcher reports each call to stats
            finally:
                if run is not None:
                    self.tracing.batched(run)  # its queue and model spans, timed by the batcher
        key = model.version.ref
        queued = self._inflight.get(key, 0)
        if queued >= self.max_queue:
            raise Overloaded(key, queued)
        self._inflight[key] = queued + 1
        try:
            started = time.perf_counter_ns()
            with self.tracing.span("model"):
                outputs = await self._run(model, arrays)
            stats.executed(rows, time.perf_counter_ns() - started)
            return outputs
        finally:
            self._inflight[key] -= 1

    def _run(self, model: LoadedModel, arrays: Arrays) -> Awaitable[Arrays]:
        """The model call: on the executor; an inference graph's steps, each a call of its own."""
        graph = getattr(model.runtime, "run_graph", None)
        if graph is not None:
            return graph(arrays, self._steps, model.name)  # type: ignore[no-any-return]
        return self.executor.run(model, arrays)

    async def _call_step(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        """One step of a graph: admission, its own batcher or lane, its statistics (like any model call)."""
        return await self._predict(model, arrays, self.statistics.of(model.name, model.version.version),
                                   _rows(arrays))

    def _batcher_for(self, model: LoadedModel, stats: ModelStats) -> Batcher | None:
        policy = self.batching.get(model.name, self.default_batching)
        if policy is None:
            return None
        key = (model.name, model.version.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            executor = self.executor

            async def call(arrays: Arrays) -> Arrays:
                graph_request.set(None)  # a merged call answers several requests: a graph's steps log no events
                return await self._run(model, arrays)

            metrics = self.metrics

            def counted(requests: int, rows: int, queued: float, took: float) -> None:
                stats.executed(rows, int(took * 1e9), requests, int(queued * 1e9))
                if metrics is not None:
                    metrics.batch(model.name, model.version.version, rows, requests, queued, took)

            batcher = Batcher(call, policy, name=model.version.ref, concurrency=executor.capacity,
                              max_queue=self.max_queue, on_batch=counted)
            self._batchers[key] = batcher
        return batcher

    def _loaded(self, name: str, version: int, took: float) -> None:
        """A version was loaded (on the loading thread): a graph's step versions are noted, to go with it."""
        self._steps.versions.loaded((name, version), self.repository.cached(ModelRef(name, version=version)))

    def _released(self, name: str, version: int) -> None:
        """A version no reference reaches any more: its batcher and lane go (requests already in them finish),
        and so do those of a graph's steps that no loaded version runs any more."""
        loaded = {(mv.name, mv.version) for mv in self.repository.loaded_versions()}
        for step in self._steps.versions.released((name, version), loaded):
            self._release_one(*step)
        self._release_one(name, version)

    def _release_one(self, name: str, version: int) -> None:
        release = getattr(self.executor, "release", None)  # the worker pool holds nothing per version
        if release is not None:
            release(name, version)
        batcher = self._batchers.pop((name, version), None)
        if batcher is not None:
            task = asyncio.get_running_loop().create_task(batcher.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._shadows:  # copies already started finish (their events are logged), within the deadline
            await asyncio.wait(list(self._shadows), timeout=self.request_timeout or 30.0)
        for b in self._batchers.values():
            await b.close()
        for task in list(self._closing):
            await task
        await self.executor.close()

    @staticmethod
    def _response(model: LoadedModel, outputs: Arrays, request: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(
            model_name=model.name,
            model_version=str(model.version.version),
            outputs=[Tensor(k, v) for k, v in outputs.items()],
            id=request.id,
        )
