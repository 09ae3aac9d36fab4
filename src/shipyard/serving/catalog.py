"""Read-only registry questions about the models a server serves: their versions and aliases.

The data plane answers what a request needs (resolve, metadata, infer); the
GraphQL API also lists every version and alias of a served model, which only
the registry knows. Names the server does not serve are refused as the data
plane refuses them (``ModelNotServed``); registry calls run in a worker thread.
"""

from __future__ import annotations

import anyio.to_thread

from shipyard.hosting.repository import ModelRepository
from shipyard.registry import ModelVersion
from shipyard.security.principal import require_model


class ModelCatalog:
    """Versions and aliases of served models, straight from the registry."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def served_name(self, name: str) -> str:
        """The bare model name of ``name`` (ModelNotServed if this server does not serve it; PermissionDenied
        if the request's principal may not use it)."""
        bare = self.repository.ref_for(name).name
        require_model(bare)
        return bare

    async def versions(self, name: str) -> list[ModelVersion]:
        """Every registered version of ``name``, oldest first."""
        return await anyio.to_thread.run_sync(self.repository.registry.versions, self.served_name(name))

    async def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number of ``name``."""
        return await anyio.to_thread.run_sync(self.repository.registry.aliases, self.served_name(name))

    async def version(self, name: str, version: int | None = None) -> ModelVersion:
        """One version's record; None: the version a bare ``name`` means on this server."""
        ref = self.repository.ref_for(name, None if version is None else str(version))
        require_model(ref.name)
        return await anyio.to_thread.run_sync(self.repository.registry.get, ref)
