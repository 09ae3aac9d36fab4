"""Which model versions a server holds in memory, and what each name points to.

A server is started with references (``fraud@champion``, ``iris:3``, ``demo``);
each name's *default* target is the reference it was started with. Requests
may also address another alias or a fixed version of a served name: those are
loaded on first use and kept. Alias targets are re-read from the registry
after ``alias_refresh_seconds``, so a ``shipyard alias`` move reaches running
servers without a restart.

A server may override a version's ``extra_fields`` policy (``--extra-fields``) and, per
model name, the runtime mode (``models:`` in shipyard.yaml):
a model is loaded with its signature carrying the policy it is served with, so
every record surface (REST ``/v1``, GraphQL, streams, asynchronous requests)
reads one value from ``model.signature``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import anyio.to_thread

from shipyard.errors import InvalidInput, ModelNotFound, ModelNotReady, ModelNotServed
from shipyard.hosting.compiled import CompiledCache, load_for_serving
from shipyard.registry import LoadedModel, ModelVersion, Registry
from shipyard.types import ModelRef, is_version_number

logger = logging.getLogger(__name__)


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
        loader: Callable[[ModelVersion], LoadedModel] | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_fields: Mapping[str, str] | None = None,
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
        self.loader = loader
        self._clock = clock
        self.extra_fields = dict(extra_fields or {})
        """Model name (``"*"``: every model) -> the policy it is served with instead of the version's own."""
        self.runtimes = dict(runtimes or {})
        """Model name -> the runtime mode it is served with instead of ``runtime_mode``."""
        self._resolved: dict[ModelRef, _Resolved] = {}
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._guard = threading.Lock()
        self.ready = False
        self.on_alias_move: Callable[[str], None] | None = None
        """Called with the model name when an alias is seen pointing somewhere new."""

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

    def close(self) -> None:
        for model in self._loaded.values():
            model.close()
        self._loaded.clear()

    # -- resolution ---------------------------------------------------------------

    def loaded_versions(self) -> list[ModelVersion]:
        return [m.version for m in self._loaded.values()]

    def names(self) -> list[str]:
        return sorted(self.defaults)

    def ref_for(self, name: str, version: str | None = None) -> ModelRef:
        """Turn a URL's model name (``demo``, ``demo@alias``) and optional version into a ref."""
        ref = ModelRef.parse(name)
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
        if hit is not None and now - hit.at < self.alias_refresh_seconds:
            return hit.version
        version = self.registry.resolve(ref)
        self._resolved[ref] = _Resolved(version, now)
        if hit is not None and hit.version != version:
            logger.info("%s moved from version %d to %d", ref, hit.version, version)
            if self.on_alias_move is not None:
                self.on_alias_move(ref.name)
        return version

    def cached(self, ref: ModelRef) -> LoadedModel | None:
        """The loaded model for ``ref`` if it is in memory and its alias is fresh (no I/O)."""
        if ref.version is not None:
            return self._loaded.get((ref.name, ref.version))
        hit = self._resolved.get(ref)
        if hit is None or self._clock() - hit.at >= self.alias_refresh_seconds:
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
                logger.info("loaded %s:%d in %.2fs", ref.name, version, time.perf_counter() - started)
        return model

    def _load(self, mv: ModelVersion) -> LoadedModel:
        policy = self.extra_fields.get(mv.name, self.extra_fields.get("*"))
        if policy is not None and policy != mv.signature.extra_fields:
            logger.info("%s: extra fields %s (the version says %s)", mv.ref, policy, mv.signature.extra_fields)
            mv = replace(mv, signature=mv.signature.with_extra_fields(policy))
        if self.loader is not None:
            return self.loader(mv)
        return load_for_serving(self.registry, mv, self.runtimes.get(mv.name, self.runtime_mode), self.compiled)

    async def get_async(self, ref: ModelRef) -> LoadedModel:
        model = self.cached(ref)
        if model is not None:
            return model
        return await anyio.to_thread.run_sync(self.get, ref)

    def is_ready(self, ref: ModelRef) -> bool:
        if not self.ready and ref.name in self.defaults:
            return False
        try:
            version = self._version_of(ref)
        except ModelNotFound:
            raise
        return (ref.name, version) in self._loaded

    def require_ready(self) -> None:
        if not self.ready:
            raise ModelNotReady("the server is still loading its models")
