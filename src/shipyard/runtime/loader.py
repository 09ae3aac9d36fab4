"""Finds the runtime for a flavor name, an in-memory object or a file on disk."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from shipyard.errors import MissingDependency, ShipyardError, UnsupportedModel
from shipyard.options import Option, nearest
from shipyard.runtime.base import Runtime

logger = logging.getLogger(__name__)

# Third-party runtimes register in this entry-point group (name = flavor, value = "module:Class").
ENTRY_POINT_GROUP = "shipyard.runtimes"

# Order matters when guessing: specific formats before the generic ones.
_BUILTIN = {
    "graph": "shipyard.graphs.runtime:GraphRuntime",
    "python": "shipyard.runtime.custom:CustomRuntime",
    "mlflow": "shipyard.runtime.mlflow:MlflowRuntime",
    "onnx": "shipyard.runtime.onnx:OnnxRuntime",
    "torch": "shipyard.runtime.torch:TorchRuntime",
    "tensorflow": "shipyard.runtime.tensorflow:TensorflowRuntime",
    "tflite": "shipyard.runtime.tflite:TfliteRuntime",
    # XGBoost/LightGBM estimators subclass scikit-learn's bases: match them before sklearn
    "xgboost": "shipyard.runtime.xgboost:XGBoostRuntime",
    "lightgbm": "shipyard.runtime.lightgbm:LightGBMRuntime",
    "sklearn": "shipyard.runtime.sklearn:SklearnRuntime",
}


@lru_cache(maxsize=1)
def _targets() -> dict[str, str]:
    targets = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def flavors() -> list[str]:
    """Every known flavor name, built-in first."""
    return list(_targets())


def get_runtime(flavor: str) -> type[Runtime]:
    """The runtime class registered for ``flavor``."""
    target = _targets().get(flavor)
    if target is None:
        near = nearest(flavor, flavors())
        hint = f"did you mean '{near}'?" if near else f"known: {', '.join(flavors())}"
        raise UnsupportedModel(f"unknown model flavor '{flavor}'; {hint}")
    module_name, _, attr = target.partition(":")
    import importlib

    module = importlib.import_module(module_name)
    cls: type[Runtime] = getattr(module, attr)
    return cls


def _first_runtime(accepts: Callable[[type[Runtime]], bool]) -> type[Runtime] | None:
    """The first runtime, in flavor order, that accepts; runtimes whose extra is missing are skipped."""
    for flavor in flavors():
        try:
            cls = get_runtime(flavor)
        except MissingDependency:
            continue
        if accepts(cls):
            return cls
    return None


def runtime_for_object(obj: Any) -> type[Runtime]:
    """Pick the runtime that can save this in-memory model."""
    cls = _first_runtime(lambda c: c.accepts_object(obj))
    if cls is None:
        raise UnsupportedModel(
            f"no runtime knows how to save a {type(obj).__module__}.{type(obj).__qualname__}; "
            "supported: scikit-learn, XGBoost, LightGBM, PyTorch (TorchScript/exported), ONNX, "
            "TensorFlow/Keras, TFLite, MLflow model folders and shipyard.Model subclasses"
        )
    return cls


def runtime_for_path(path: Path) -> type[Runtime]:
    """Pick the runtime that can import this file or folder."""
    cls = _first_runtime(lambda c: c.accepts_path(path))
    if cls is None:
        raise UnsupportedModel(f"cannot tell the model format of '{path}'; pass --flavor ({', '.join(flavors())})")
    return cls


def declared_options() -> dict[str, tuple[Option, ...]]:
    """Each flavor's options, for help texts; a plug-in that fails to import is left out."""
    out: dict[str, tuple[Option, ...]] = {}
    for flavor in flavors():
        try:
            out[flavor] = tuple(get_runtime(flavor).option_specs)
        except (ShipyardError, ImportError, AttributeError) as exc:
            logger.debug("runtime %s left out of the option list: %s", flavor, exc)
    return out


def runtime_for(model: Any, flavor: str | None = None) -> type[Runtime]:
    """The runtime that stores ``model`` (an object, or a path to a file or folder): the one
    registered for ``flavor`` when given, else the one that recognises the model."""
    if flavor:
        return get_runtime(flavor)
    if isinstance(model, (str, Path)):
        return runtime_for_path(Path(model).expanduser())
    return runtime_for_object(model)


# What a worker process of each flavor imports before it forks (see jobs/batch/worker.py),
# so each fork starts with the model's libraries already in memory.
# scikit-learn goes through the runtime's own skops import, which keeps torch and dask out.
_PRELOAD = {
    "sklearn": ["shipyard.runtime._sklearn_preload", "pandas", "sklearn.ensemble", "sklearn.linear_model"],
    "xgboost": ["xgboost", "pandas"],
    "lightgbm": ["lightgbm", "pandas"],
    "onnx": ["onnxruntime"],
    "torch": ["torch"],
    # TensorFlow itself is left out: its import is slow, and a forkserver that imported it
    # hands every fork a copy of state TensorFlow does not expect to share
    "tflite": ["ai_edge_litert.interpreter"],
    "mlflow": ["pandas"],
}


def preload_modules(flavor: str) -> list[str]:
    """Modules to import once in a forkserver before forking workers for this flavor."""
    runtime = f"shipyard.runtime.{'custom' if flavor == 'python' else flavor}"
    return [runtime, *_PRELOAD.get(flavor, [])]
