"""The shared per-format fixtures register, load and predict what the original model predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.fixtures.models import EXPECTED_OUTPUT, FORMAT_CASES, predict_outputs

from shipyard.registry import Registry

FLAVORS = {
    "sklearn": "sklearn",
    "sklearn_pipeline": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnx",
    "torchscript": "torch",
    "torch_export": "torch",
    "mlflow_sklearn": "mlflow",
    "custom": "python",
}


def test_every_format_has_a_case_and_an_expected_output() -> None:
    assert set(FORMAT_CASES) == set(FLAVORS) == set(EXPECTED_OUTPUT)


@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
@pytest.mark.parametrize("fmt", sorted(FORMAT_CASES))
def test_format_case_round_trips_through_the_registry(registry: Registry, tmp_path: Path, fmt: str) -> None:
    model, sample, expected, kwargs = FORMAT_CASES[fmt](tmp_path)
    mv = registry.register(model, fmt, sample=sample, **kwargs)
    assert mv.flavor == FLAVORS[fmt]

    got = predict_outputs(registry.load(fmt), sample)[EXPECTED_OUTPUT[fmt]]
    assert got.shape == expected.shape
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    else:
        np.testing.assert_array_equal(got, expected)
