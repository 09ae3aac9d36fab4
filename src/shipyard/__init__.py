"""shipyard: register a model once, serve it online, in batch, on streams and at the edge.

The public API mirrors the CLI::

    import shipyard
    v = shipyard.register(model, name="fraud", sample=X[:5])
    m = shipyard.load("fraud@champion")
    m.predict(X)
"""

from __future__ import annotations

from typing import Any

from shipyard.config import Settings
from shipyard.errors import ShipyardError
from shipyard.registry import LoadedModel, ModelVersion, Registry
from shipyard.runtime.base import Model
from shipyard.signature import Signature, TensorSpec
from shipyard.types import ModelRef

__version__ = "0.1.0"

__all__ = [
    "LoadedModel",
    "Model",
    "ModelRef",
    "ModelVersion",
    "Registry",
    "Settings",
    "ShipyardError",
    "Signature",
    "TensorSpec",
    "__version__",
    "load",
    "register",
]


def register(model: Any, name: str, *, sample: Any = None, settings: Settings | None = None,
             **kwargs: Any) -> ModelVersion:
    """Register ``model`` (object or path) as the next version of ``name``.

    See ``Registry.register`` for every option. Uses ``SHIPYARD_HOME`` (default
    ``./.shipyard``) or ``SHIPYARD_REGISTRY_URL``/``SHIPYARD_ARTIFACTS``.
    """
    reg = Registry.from_settings(settings)
    try:
        return reg.register(model, name, sample=sample, **kwargs)
    finally:
        reg.close()


def load(ref: str, *, settings: Settings | None = None) -> LoadedModel:
    """Load ``name``, ``name@alias`` or ``name:VERSION`` after verifying its files."""
    reg = Registry.from_settings(settings)
    try:
        return reg.load(ref)
    finally:
        reg.close()
