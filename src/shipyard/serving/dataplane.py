"""Protocol-agnostic serving logic: every transport (REST, gRPC, GraphQL) calls this.

One path for resolving a model, validating against its signature, predicting
and shaping the response; transports only decode bytes into an
``InferenceRequest`` and encode the ``InferenceResponse`` back.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import anyio.to_thread

from shipyard import __version__
from shipyard.registry import LoadedModel
from shipyard.serving.repository import ModelRepository
from shipyard.types import InferenceRequest, InferenceResponse, ModelRef, Tensor

logger = logging.getLogger(__name__)

SERVER_NAME = "shipyard"
EXTENSIONS = ["binary_tensor_data", "model_repository_aliases"]


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    # -- health and metadata -----------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS,
                "python": platform.python_version()}

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
        """Validate and predict; the model runs in a worker thread so the loop stays free."""
        model = await self.resolve(name, version)
        arrays = {t.name: t.data for t in request.inputs}
        outputs = await anyio.to_thread.run_sync(model.predict_arrays, arrays, request.outputs)
        return InferenceResponse(
            model_name=ModelRef.parse(name).name,
            model_version=str(model.version.version),
            outputs=[Tensor(k, v) for k, v in outputs.items()],
            id=request.id,
        )
