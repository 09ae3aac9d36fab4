"""Which model versions a server holds in memory, and what each name points to.

A server is started with references (``fraud@champion``, ``iris:3``, ``demo``);
each name's *default* target is the reference it was started with. Requests
may also address another alias or a fixed version of a served name: those are
loaded on first use.

Alias moves (``shipyard alias``, ``rollback``) reach a running server without a
restart. A server runs ``watch``: every ``alias_refresh_seconds`` it re-reads
the aliases it follows, and when one moved it loads the new version *before*
switching the alias to it, so no request waits for a load and none fails. A version that
no reference reaches any more is released ``release_after_seconds`` later, once
requests that were already using it have finished. Without ``watch`` (stream
jobs, or ``alias_refresh_seconds=0``) an alias is re-read on the request path
when its last reading is older than ``alias_refresh_seconds``.

A server may override a version's ``extra_fields`` policy (``--extra-fields``) and, per
model name, the runtime mode (``models:`` in shipyard.yaml):
a model is loaded with its signature carrying the policy it is served with, so
every record surface (REST ``/v1``, GraphQL, streams, asynchronous requests)
reads one value from ``model.signature``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import anyio.to_thread

from shipyard._periodic import every
from shipyard.errors import InvalidInput, ModelNotFound, ModelNotServed
from shipyard.hosting.compiled import CompiledCache, load_for_serving
from shipyard.registry import LoadedModel, ModelVersion, Registry
from shipyard.types import ModelRef, is_version_number

logger = logging.getLogger(__name__)

# The names requests use are few: parse each once (a ModelRef is immutable; a refused name is not kept).
_parse_ref = functools.lru_cache(maxsize=1024)(ModelRef.parse)


@dataclass
class _Resolved:
    version: int
    at: float


class ModelRepository:
    """Loads, caches and resolves the models one server serves."""

    def __init__(
        self,
        registry: Registry,
        refs: list[str] | None,
        *,
        alias_refresh_seconds: float = 2.0,
        runtime_mode: str = "native",
        compiled: CompiledCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_fields: Mapping[str, str] | None = None,
        release_after_seconds: float = 30.0,
        runtimes: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.serve_all = not refs
        self.defaults: dict[str, ModelRef] = {}
        for text in refs or ():
            ref = ModelRef.parse(text)
            self.defaults[ref.name] = ref
        self.alias_refresh_seconds = alias_refresh_seconds
        self.runtime_mode = runtime_mode
        self.compiled = compiled
        self._clock = clock
        self.extra_fields = dict(extra_fields or {})
        """Model name (``"*"``: every model) -> the policy it is served with instead of the version's own."""
        self.runtimes = dict(runtimes or {})
        """Model name -> the runtime mode it is served with instead of ``runtime_mode``."""
        self._resolved: dict[ModelRef, _Resolved] = {}
        self._vanished: set[ModelRef] = set()  # aliases deleted while served: warned about once
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._guard = threading.Lock()
        self.ready = False
        self.release_after_seconds = release_after_seconds
        self._alias_listeners: list[Callable[[str], None]] = []
        self._release_listeners: list[Callable[[str, int], None]] = []
        self._load_listeners: list[Callable[[str, int, float], None]] = []
        self._watching = False
        self._releases: set[asyncio.Task[None]] = set()

    def on_alias_move(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(model_name)`` whenever an alias of a served model is switched to another version."""
        self._alias_listeners.append(listener)

    def on_load(self, listener: Callable[[str, int, float], None]) -> None:
        """Call ``listener(name, version, seconds)`` after a version is loaded in this process.

        A listener that raises refuses the version: it is closed, and the load fails with that error.
        """
        self._load_listeners.append(listener)

    def on_release(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(name, version)`` when a version is released (its batcher, its caches go)."""
        self._release_listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Load every model the server was started with; then the server is ready."""
        if self.serve_all:
            for m in await anyio.to_thread.run_sync(self.registry.models):
                self.defaults[m["name"]] = ModelRef(m["name"])
        for ref in list(self.defaults.values()):
            await self.get_async(ref)
        self.ready = True
        logger.info("serving %s", ", ".join(str(r) for r in self.defaults.values()) or "no models")

    async def start_unloaded(self) -> None:
        """Name the models (every registered one when none were given) and load none: the dashboard of
        ``shipyard ui`` reads the registry, the prediction log and the monitoring tables, not the models."""
        if self.serve_all:
            for m in await anyio.to_thread.run_sync(self.registry.models):
                self.defaults[m["name"]] = ModelRef(m["name"])
        self.ready = True

    def close(self) -> None:
        for task in self._releases:
            task.cancel()
        for model in self._loaded.values():
            model.close()
        self._loaded.clear()

    # -- alias moves: preload, then switch; release what nothing reaches --------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Follow alias moves until ``stop`` is set (see the module docstring). Never dies."""
        if self.alias_refresh_seconds <= 0:
            return  # every request re-reads its aliases
        self._watching = True
        try:
            await every(self.alias_refresh_seconds, stop, self.refresh, "re-reading aliases", logger)
        finally:
            self._watching = False

    async def refresh(self) -> None:
        """Re-read every alias followed; switch each that moved, once its new version is loaded everywhere."""
        for ref, hit in list(self._resolved.items()):
            try:
                version = await anyio.to_thread.run_sync(self.registry.resolve, ref)
            except ModelNotFound as exc:  # the alias was deleted: keep answering with what it last meant
                if ref not in self._vanished:
                    self._vanished.add(ref)
                    logger.warning("%s; still serving version %d for %s until the alias is set again",
                                   exc, hit.version, ref)
                continue
            self._vanished.discard(ref)
            if version == hit.version:
                self._resolved[ref] = _Resolved(version, self._clock())
                continue
            started = time.perf_counter()
            await self.ensure_loaded(ref.name, version)
            self._resolved[ref] = _Resolved(version, self._clock())
            logger.info("%s moved from version %d to %d (preloaded in %.2fs)", ref, hit.version, version,
                        time.perf_counter() - started)
            self._moved(ref.name)
            self._release_later(ref.name, hit.version)

    async def ensure_loaded(self, name: str, version: int) -> LoadedModel:
        """Load ``name:version`` (off the event loop); returns once it is loaded."""
        return await anyio.to_thread.run_sync(self.get, ModelRef(name, version=version))

    def reachable(self) -> set[tuple[str, int]]:
        """Versions a served reference leads to now (fixed versions, and aliases as last resolved)."""
        out = {(r.name, r.version) for r in self.defaults.values() if r.version is not None}
        out |= {(ref.name, hit.version) for ref, hit in list(self._resolved.items())}
        return out

    def _release_later(self, name: str, version: int) -> None:
        task = asyncio.get_running_loop().create_task(self._release(name, version))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, name: str, version: int) -> None:
        await asyncio.sleep(self.release_after_seconds)  # requests already holding it finish first
        if (name, version) in self.reachable():
            return  # moved back meanwhile
        model = self._loaded.pop((name, version), None)
        if model is None:
            return
        for listener in self._release_listeners:
            listener(name, version)
        model.close()
        logger.info("released %s:%d (no served reference reaches it)", name, version)

    def _moved(self, name: str) -> None:
        for listener in self._alias_listeners:
            try:
                listener(name)
            except Exception:
                logger.exception("alias-move listener failed")

    # -- resolution ---------------------------------------------------------------

    def loaded_versions(self) -> list[ModelVersion]:
        # list() copies at once: loads on worker threads may add to the dict meanwhile
        return [m.version for m in list(self._loaded.values())]

    def names(self) -> list[str]:
        return sorted(self.defaults)

    def ref_for(self, name: str, version: str | None = None) -> ModelRef:
        """Turn a URL's model name (``demo``, ``demo@alias``) and optional version into a ref."""
        ref = _parse_ref(name)
        if ref.name not in self.defaults and not self.serve_all:
            raise ModelNotServed(ref.name, self.names())
        if version is not None and version != "":
            if ref.alias is not None or ref.version is not None:
                raise InvalidInput(
                    f"'{name}' already names a version; use /v2/models/{ref.name}/versions/{version} "
                    f"or /v2/models/{name} but not both",
                    field="version",
                    got=version,
                )
            if not is_version_number(version):
                raise ModelNotFound(ref.name, version=version)
            return ModelRef(ref.name, version=int(version))
        if ref.alias is None and ref.version is None:
            return self.defaults.get(ref.name, ref)
        return ref

    def _version_of(self, ref: ModelRef) -> int:
        if ref.version is not None:
            return ref.version
        now = self._clock()
        hit = self._resolved.get(ref)
        if hit is not None and (self._watching or now - hit.at < self.alias_refresh_seconds):
            return hit.version
        version = self.registry.resolve(ref)
        self._resolved[ref] = _Resolved(version, now)
        if hit is not None and hit.version != version:
            logger.info("%s moved from version %d to %d", ref, hit.version, version)
            self._moved(ref.name)
        return version

    def cached(self, ref: ModelRef) -> LoadedModel | None:
        """The loaded model for ``ref`` if it is in memory and its alias is fresh (no I/O)."""
        if ref.version is not None:
            return self._loaded.get((ref.name, ref.version))
        hit = self._resolved.get(ref)
        if hit is None or (not self._watching and self._clock() - hit.at >= self.alias_refresh_seconds):
            return None
        return self._loaded.get((ref.name, hit.version))

    def get(self, ref: ModelRef) -> LoadedModel:
        """Resolve and, if needed, load (blocking: call from a worker thread)."""
        version = self._version_of(ref)
        key = (ref.name, version)
        model = self._loaded.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            model = self._loaded.get(key)
            if model is None:
                started = time.perf_counter()
                model = self._load(self.registry.store.get_version(ref.name, version))
                self._loaded[key] = model
                took = time.perf_counter() - started
                logger.info("loaded %s:%d in %.2fs", ref.name, version, took)
                try:
                    for listener in self._load_listeners:
                        listener(ref.name, version, took)
                except Exception:  # a listener refused the version (a graph step on a host not allowed)
                    self._loaded.pop(key, None)
                    model.close()
                    raise
        return model

    def _load(self, mv: ModelVersion) -> LoadedModel:
        policy = self.extra_fields.get(mv.name, self.extra_fields.get("*"))
        if policy is not None and policy != mv.signature.extra_fields:
            logger.info("%s: extra fields %s (the version says %s)", mv.ref, policy, mv.signature.extra_fields)
            mv = replace(mv, signature=mv.signature.with_extra_fields(policy))
        return load_for_serving(self.registry, mv, self.runtimes.get(mv.name, self.runtime_mode), self.compiled)

    async def get_async(self, ref: ModelRef) -> LoadedModel:
        model = self.cached(ref)
        if model is not None:
            return model
        return await anyio.to_thread.run_sync(self.get, ref)

    def is_ready(self, ref: ModelRef) -> bool:
        if not self.ready and ref.name in self.defaults:
            return False
        return (ref.name, self._version_of(ref)) in self._loaded
