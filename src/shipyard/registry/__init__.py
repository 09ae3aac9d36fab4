"""The versioned model registry: SQL metadata plus content-addressed artifact files."""

from shipyard.registry.loaded import LoadedModel
from shipyard.registry.model import AliasMove, ModelVersion
from shipyard.registry.registry import Registry

__all__ = ["AliasMove", "LoadedModel", "ModelVersion", "Registry"]
