"""Importing a runtime module never imports its framework; that waits for the first use."""

from __future__ import annotations

import importlib
import sys

import pytest

from shipyard.runtime.loader import flavors, get_runtime

HEAVY = ("xgboost", "lightgbm", "onnx", "onnxruntime", "torch", "mlflow", "sklearn", "skops", "pandas",
         "tensorflow", "keras", "ai_edge_litert", "tf2onnx")
MODULES = {
    "xgboost": "shipyard.runtime.xgboost",
    "lightgbm": "shipyard.runtime.lightgbm",
    "onnx": "shipyard.runtime.onnx",
    "torch": "shipyard.runtime.torch",
    "mlflow": "shipyard.runtime.mlflow",
    "tensorflow": "shipyard.runtime.tensorflow",
    "tflite": "shipyard.runtime.tflite",
}


@pytest.mark.parametrize("flavor", sorted(MODULES))
def test_runtime_module_imports_without_its_framework(monkeypatch: pytest.MonkeyPatch, flavor: str) -> None:
    for name in HEAVY:  # None in sys.modules makes any import of it fail
        monkeypatch.setitem(sys.modules, name, None)
    package, _, attr = MODULES[flavor].rpartition(".")
    # re-import from scratch; both handles on the module are put back afterwards
    monkeypatch.delitem(sys.modules, MODULES[flavor], raising=False)
    monkeypatch.delattr(importlib.import_module(package), attr, raising=False)
    module = importlib.import_module(MODULES[flavor])
    assert module.__name__ == MODULES[flavor]


def test_builtin_flavors_are_ordered_specific_before_generic() -> None:
    names = flavors()
    # a graph (made of other versions) is checked first: no other runtime takes one
    builtin = ["graph", "python", "mlflow", "onnx", "torch", "tensorflow", "tflite", "xgboost", "lightgbm", "sklearn"]
    assert names[:10] == builtin
    for flavor in names[:10]:
        assert get_runtime(flavor).flavor == flavor
