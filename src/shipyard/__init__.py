"""shipyard: register a model once, serve it online, in batch, on streams and at the edge.

The public API mirrors the CLI::

    import shipyard
    v = shipyard.register(model, name="fraud", sample=X[:5])
    m = shipyard.load("fraud@champion")
    m.predict(X)
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from shipyard.config import Settings
from shipyard.errors import ShipyardError
from shipyard.graphs import Graph, Step
from shipyard.options import check_names
from shipyard.registry import LoadedModel, ModelVersion, Registry
from shipyard.runtime.base import Model
from shipyard.signature import Signature, TensorSpec
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.client import AsyncClient, Client
    from shipyard.jobs.batch import BatchResult

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Graph",
    "LoadedModel",
    "Model",
    "ModelRef",
    "ModelVersion",
    "Registry",
    "Settings",
    "ShipyardError",
    "Signature",
    "Step",
    "TensorSpec",
    "__version__",
    "batch_predict",
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


def batch_predict(model: str, input: Any, output: Any, **options: Any) -> BatchResult:
    """Predict every row of ``input`` (Parquet, CSV or JSON Lines files) into the folder ``output``.

    Options: ``format``, ``id_columns``, ``keep_input``, ``engine`` (local, dask, spark),
    ``workers``, ``max_reject_ratio``, ``batch_rows``; see ``shipyard.jobs.batch.batch_predict``.
    Rerunning the same call after a crash resumes where it stopped.
    """
    from shipyard.jobs.batch import batch_predict as run  # pyarrow and the engines load only when used

    # refused with the nearest name (a TypeError would only say "unexpected keyword argument")
    keywords = [p.name for p in inspect.signature(run).parameters.values() if p.kind is p.KEYWORD_ONLY]
    check_names(options, keywords, owner="batch_predict()")
    return run(model, input, output, **options)


# Imported on first use, so `import shipyard` does not import httpx (or grpc).
_LAZY = {"AsyncClient": "shipyard.client", "Client": "shipyard.client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shipyard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
