"""Running a loaded graph: its nodes in order, each step a call through a ``Host``.

One interpreter serves both ways a graph runs. In a server, the data plane is the
host: each step is a model call of its own (its own lane, batching and admission),
with a child span, a latency histogram and an error count (``graphs/host.py``), and
a fan-out's branches run concurrently. Everywhere else (``shipyard.load``, batch
jobs, registration) ``SyncHost`` calls the steps one after the other in the calling
thread, and the same coroutine is driven to its end without an event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from shipyard.config import secret_from_env
from shipyard.errors import (
    ConfigError,
    InferenceError,
    InvalidInput,
    ModelNotReady,
    PermissionDenied,
    RequestTimeout,
    ShipyardError,
    Unauthenticated,
)
from shipyard.graphs import joins
from shipyard.graphs.remote import RemoteStep
from shipyard.graphs.spec import Explain, FanOut, Graph, Node, Switch
from shipyard.graphs.wiring import ATTRIBUTION, BASE_VALUE, EXPLAINED_VALUE
from shipyard.registry.loaded import LoadedModel
from shipyard.runtime.base import Arrays

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Host(Protocol):
    """Where a graph's steps run."""

    def call(self, graph: str, step: str, model: LoadedModel, arrays: Arrays,
             remote: RemoteStep | None = None) -> Awaitable[Arrays]:
        """Run step ``step`` (the version ``model``) of ``graph`` on inputs its signature validated
        (on the server ``remote`` when the step is placed there)."""
        ...

    def gather(self, calls: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
        """Await the branches of a fan-out (concurrently where the host can)."""
        ...

    def offload(self, graph: str, step: str, ref: str, work: Callable[[Arrays], T], arrays: Arrays) -> Awaitable[T]:
        """Run step ``step``'s blocking ``work`` on ``arrays`` that is not a model call (an explanation of
        the version ``ref``), off the event loop where there is one."""
        ...


class SyncHost:
    """Steps called in the calling thread, one after another: never suspends."""

    async def call(self, graph: str, step: str, model: LoadedModel, arrays: Arrays,
                   remote: RemoteStep | None = None) -> Arrays:
        return remote.infer_sync(arrays) if remote is not None else model.run(arrays)

    async def gather(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        return [await c for c in calls]

    async def offload(self, graph: str, step: str, ref: str, work: Callable[[Arrays], T], arrays: Arrays) -> T:
        return work(arrays)


SYNC = SyncHost()

_SKIPPED = object()


def drive(coro: Coroutine[Any, Any, Arrays]) -> Arrays:
    """The result of a coroutine that never suspends (run with ``SyncHost``), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a graph step waited for an event loop while the graph ran synchronously")


class Plan:
    """A graph whose steps are loaded: ``run`` interprets it over a host."""

    def __init__(self, graph: Graph, models: Mapping[str, LoadedModel],
                 explainers: Mapping[str, Any] | None = None) -> None:
        """Args:
            graph: the graph.
            models: step name -> the loaded version it runs.
            explainers: explain step name -> its ``shipyard.explain.Explainer`` (of the step it explains).
        """
        self.graph = graph
        self.models = dict(models)
        self.explainers = dict(explainers or {})
        self.remotes: dict[str, Any] = {n.name: RemoteStep(n.remote_url, self.models[n.name].version,
                                                           token=_token(n), ca_file=n.ca_file)
                                        for n in graph.leaves if n.remote_url is not None}
        """Step name -> where it is called instead of in this process (``infer``, ``infer_sync``, ``close``)."""
        self.pooled = {n.name: n.pool_workers for n in graph.leaves if n.pool_workers is not None}
        """Step name -> the size of its own worker pool (run in-process until a server attaches the pool)."""

    @property
    def placements(self) -> dict[str, str]:
        """Step name -> the URL of the server it is placed on (steps on other servers only)."""
        return {n.name: n.remote_url for n in self.graph.leaves if n.remote_url is not None}

    def attach(self, pools: Mapping[str, Any]) -> None:
        """Route pooled steps to their pools' handles (a server's ``StepPools`` does; closed on unload)."""
        self.remotes.update(pools)

    async def run(self, inputs: Arrays, host: Host, graph_name: str = "graph") -> Arrays:
        current = inputs
        before = ""
        given = inputs  # what the last single step was given (an explain step explains it)
        for node in self.graph.steps:
            if isinstance(node, Node):
                given = current
                out = await self._step(node, current, before, host, graph_name)
                if out is not _SKIPPED:
                    current = out
                    before = node.name
            elif isinstance(node, Explain):
                current = await self._explain(node, given, current, host, graph_name)
            elif isinstance(node, FanOut):
                current, before = await self._fan_out(node, current, before, host, graph_name)
            else:
                current = await self._switch(node, current, before, host, graph_name)
                before = node.name
        return current

    async def _step(self, node: Node, available: Arrays, before: str, host: Host, graph_name: str) -> Any:
        """A step's outputs; ``_SKIPPED`` when it failed and may be skipped; its default when it has one."""
        model = self.models[node.name]
        try:
            try:
                wanted = {n: available[n] for n in model.signature.input_names if n in available}
                arrays = model.signature.validate(wanted)
            except InvalidInput as exc:  # the step before returned something this one cannot take
                source = f"what step '{before}' returned" if before else "the graph's inputs"
                raise InferenceError(f"step '{node.name}' ({model.version.ref}) cannot take {source}: {exc}") from exc
            remote = self.remotes.get(node.name)
            return await host.call(graph_name, node.name, model, arrays, remote)
        except Exception as exc:
            if node.on_error == "fail":
                raise step_error(node.name, model, exc, node.where if node.name in self.remotes else None) from exc
            logger.warning("graph %s: step '%s' failed (%s); %s", graph_name, node.name, exc,
                           "skipped" if node.on_error == "skip" else "answering its default")
            if node.on_error == "skip":
                return _SKIPPED
            return joins.constant(dict(node.default or {}), joins.rows_of(available))

    async def _explain(self, node: Explain, given: Arrays, outputs: Arrays, host: Host, graph_name: str) -> Arrays:
        """The explained step's ``outputs`` with the attributions of its prediction on ``given``."""
        model = self.models[str(node.step)]
        arrays = model.signature.validate({n: given[n] for n in model.signature.input_names if n in given})
        features = list(model.signature.input_names)
        rows = joins.rows_of(arrays)
        if rows == 0:
            empty = np.zeros(0, dtype=np.float64)
            return {**outputs, BASE_VALUE: empty, EXPLAINED_VALUE: empty, **{ATTRIBUTION + f: empty for f in features}}
        try:
            why = await host.offload(graph_name, node.name, model.version.ref, self.explainers[node.name].explain,
                                     arrays)
        except Exception as exc:
            raise step_error(node.name, model, exc) from exc
        attributions = np.asarray(why.attributions, dtype=np.float64)
        return {**outputs, BASE_VALUE: np.asarray(why.base_values, dtype=np.float64),
                EXPLAINED_VALUE: np.asarray(why.values, dtype=np.float64),
                **{ATTRIBUTION + f: np.ascontiguousarray(attributions[:, j]) for j, f in enumerate(features)}}

    async def _fan_out(self, node: FanOut, available: Arrays, before: str, host: Host,
                       graph_name: str) -> tuple[Arrays, str]:
        results = await host.gather([self._step(b, available, before, host, graph_name) for b in node.branches])
        kept = [(b, r) for b, r in zip(node.branches, results, strict=True) if r is not _SKIPPED]
        if not kept:
            raise InferenceError(f"every branch of '{node.name}' failed ({', '.join(b.name for b in node.branches)})")
        outputs = [r for _, r in kept]
        if isinstance(node.join, Node):
            joined = {f"{b.name}.{k}": v for b, r in kept for k, v in r.items()}
            out = await self._step(node.join, joined, node.name, host, graph_name)
            return out, node.join.name
        if node.join == "vote":
            return joins.vote(outputs), node.name
        if node.join == "weighted":
            assert node.weights is not None
            weights = dict(zip((b.name for b in node.branches), node.weights, strict=True))
            return joins.weighted(outputs, [weights[b.name] for b, _ in kept]), node.name
        return joins.mean(outputs), node.name

    async def _switch(self, node: Switch, available: Arrays, before: str, host: Host, graph_name: str) -> Arrays:
        values = available.get(node.field)
        if values is None:
            raise InvalidInput(f"switch '{node.name}' routes on '{node.field}', which is missing", field=node.field)
        keys = np.asarray([_text(v) for v in np.asarray(values).reshape(len(values), -1)[:, 0]], dtype=object)
        groups: list[tuple[np.ndarray[Any, Any], Node]] = []
        routed = np.zeros(len(keys), dtype=bool)
        for value, case in node.cases.items():
            idx = np.flatnonzero(keys == value)
            if idx.size:
                groups.append((idx, case))
                routed[idx] = True
        if not routed.all():
            if node.otherwise is None:
                bad = keys[~routed][0]
                raise InvalidInput(
                    f"'{node.field}' is {bad!r}, which switch '{node.name}' has no case for "
                    f"(cases: {', '.join(node.cases)})", field=node.field, expected=list(node.cases), got=bad)
            groups.append((np.flatnonzero(~routed), node.otherwise))
        if not groups:  # no rows: the first case answers them, so the outputs keep their names and shapes
            groups.append((np.arange(0), next(iter(node.cases.values()))))
        parts = await host.gather([self._step(case, joins.take(available, idx), before, host, graph_name)
                                   for idx, case in groups])
        return joins.reassemble([(idx, out) for (idx, _), out in zip(groups, parts, strict=True)])

    def unload(self) -> None:
        for remote in self.remotes.values():
            remote.close()
        seen: set[int] = set()
        for model in self.models.values():
            if id(model) not in seen:
                seen.add(id(model))
                model.close()


def _token(node: Node) -> str | None:
    """The credential a remote step sends: the value of its ``token_env`` variable, read as the graph loads."""
    if node.token_env is None:
        return None
    token = secret_from_env(node.token_env)
    if token is None:
        raise ConfigError(f"step '{node.name}' (placed on {node.remote_url}) sends the key in the environment "
                          f"variable {node.token_env} (placement.token_env), which is not set here")
    return token


def step_error(step: str, model: LoadedModel, exc: Exception, placement: str | None = None) -> ShipyardError:
    """The error a request gets when a step fails: of the same kind where that matters, naming the step.

    A step placed on another server that cannot be reached is unavailable (503), not failed.
    """
    lead = f"step '{step}' ({model.version.ref}{' at ' + placement if placement else ''})"
    if placement is not None and (type(exc) is ShipyardError or not isinstance(exc, ShipyardError)):
        return ModelNotReady(f"{lead} is unavailable: {exc}")
    if placement is not None and isinstance(exc, (Unauthenticated, PermissionDenied)):
        return ModelNotReady(f"{lead} is unavailable: that server refused this server's credentials "
                             f"({type(exc).__name__}: {exc})")
    if isinstance(exc, (RequestTimeout, InvalidInput)) or (isinstance(exc, ShipyardError)
                                                           and str(exc).startswith(f"step '{step}'")):
        return exc if isinstance(exc, ShipyardError) else InferenceError(str(exc))
    if isinstance(exc, ModelNotReady):
        return ModelNotReady(f"{lead} is unavailable: {exc}")
    detail = str(exc) if isinstance(exc, ShipyardError) else f"{type(exc).__name__}: {exc}"
    return InferenceError(f"{lead} failed: {detail}")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)
