"""Protocol-agnostic serving logic: every transport (REST, gRPC, GraphQL) calls this.

One path for resolving a model, validating against its signature, predicting
and shaping the response; transports only decode bytes into an
``InferenceRequest`` and encode the ``InferenceResponse`` back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio.to_thread

from shipyard import __version__
from shipyard.batching.policy import BatchPolicy
from shipyard.batching.queue import Batcher
from shipyard.errors import Overloaded, RequestTimeout
from shipyard.registry import LoadedModel
from shipyard.registry.loaded import select_outputs
from shipyard.runtime.base import Arrays
from shipyard.serving.cache import ResponseCache, cache_key
from shipyard.serving.executor import Executor, InProcessExecutor
from shipyard.serving.repository import ModelRepository
from shipyard.types import InferenceRequest, InferenceResponse, Tensor

logger = logging.getLogger(__name__)

SERVER_NAME = "shipyard"
EXTENSIONS = ["binary_tensor_data", "model_repository_aliases"]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        *,
        executor: Executor | None = None,
        batching: dict[str, BatchPolicy | None] | None = None,
        default_batching: BatchPolicy | None = None,
        cache: ResponseCache | None = None,
        cached_models: set[str] | None = None,
        max_queue: int = 1024,
        request_timeout: float | None = None,
    ) -> None:
        """
        Args:
            repository: the models this server holds.
            executor: where model calls run (default: in this process).
            batching: per-model batch policy; a name mapped to None disables batching for it.
            default_batching: the policy of models not named in ``batching`` (None: no batching).
            cache: the response cache, used for the models in ``cached_models``.
            max_queue: requests per model version waiting or running before 503s.
            request_timeout: seconds a request may take in total before it gets 504.
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
        ref = self.repository.ref_for(name, version)
        return await self.repository.get_async(ref)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        ref = self.repository.ref_for(name, version)
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

    def models(self) -> list[dict[str, Any]]:
        out = []
        for name in self.repository.names():
            ref = self.repository.defaults[name]
            model = self.repository.cached(ref) if ref.version is not None or ref.alias is not None else None
            out.append({"name": name, "ref": str(ref), "loaded": model is not None or self.repository.ready})
        return out

    # -- inference --------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, request: InferenceRequest) -> InferenceResponse:
        """Validate, then predict through the cache, the batcher and the executor, within the deadline."""
        model = await self.resolve(name, version)
        if request.outputs:
            model.check_outputs(request.outputs)
        arrays = model.signature.validate({t.name: t.data for t in request.inputs})
        key = None
        if self.cache is not None and model.name in self.cached_models:
            key = cache_key(model.name, model.version.version, arrays, request.outputs)
            hit = self.cache.get(key)
            if hit is not None:
                return self._response(name, model, hit, request)
        if self.request_timeout is None:
            outputs = await self._predict(model, arrays)
        else:
            try:
                async with asyncio.timeout(self.request_timeout):  # in place; wait_for would add a task
                    outputs = await self._predict(model, arrays)
            except TimeoutError:
                raise RequestTimeout(self.request_timeout) from None
        outputs = select_outputs(outputs, request.outputs)
        if key is not None and self.cache is not None:
            self.cache.put(key, outputs)
        return self._response(name, model, outputs, request)

    async def _predict(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        """One model call, batched when the model has a batch policy; admission is bounded."""
        batcher = self._batcher_for(model)
        if batcher is not None:
            return await batcher.submit(arrays)
        key = model.version.ref
        queued = self._inflight.get(key, 0)
        if queued >= self.max_queue:
            raise Overloaded(key, queued)
        self._inflight[key] = queued + 1
        try:
            return await self.executor.run(model, arrays)
        finally:
            self._inflight[key] -= 1

    def _batcher_for(self, model: LoadedModel) -> Batcher | None:
        policy = self.batching.get(model.name, self.default_batching)
        if policy is None:
            return None
        key = (model.name, model.version.version)
        batcher = self._batchers.get(key)
        if batcher is None:
            executor = self.executor

            async def call(arrays: Arrays) -> Arrays:
                return await executor.run(model, arrays)

            batcher = Batcher(call, policy, name=model.version.ref, concurrency=executor.capacity,
                              max_queue=self.max_queue)
            self._batchers[key] = batcher
        return batcher

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        await self.executor.close()

    @staticmethod
    def _response(name: str, model: LoadedModel, outputs: Arrays, request: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(
            model_name=model.name,
            model_version=str(model.version.version),
            outputs=[Tensor(k, v) for k, v in outputs.items()],
            id=request.id,
        )
