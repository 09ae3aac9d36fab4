"""The MLflow runtime: real model folders written by mlflow, read without it where possible."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.errors import MissingDependency, UnsafeFormat
from shipyard.registry import Registry
from shipyard.runtime.mlflow import MlflowRuntime

pytestmark = [
    # mlflow's own noise when importing it and saving a python_function model
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

FAST = {"pip_requirements": ["scikit-learn"]}  # skip mlflow's slow requirements inference


def _mlflow() -> Any:
    from tests.fixtures.models import import_mlflow

    return import_mlflow()


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


@pytest.fixture(scope="module")
def clf(iris: tuple[pd.DataFrame, np.ndarray]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


@pytest.fixture(scope="module")
def model_dirs(
    tmp_path_factory: pytest.TempPathFactory, iris: tuple[pd.DataFrame, np.ndarray], clf: LogisticRegression
) -> dict[str, Path]:
    """One MLflow folder per case, written once by the real mlflow package."""
    mlflow = _mlflow()
    X, y = iris
    root = tmp_path_factory.mktemp("mlflow")
    columns_sig = mlflow.models.infer_signature(X, clf.predict(X))
    mlflow.sklearn.save_model(clf, str(root / "skops"), signature=columns_sig, serialization_format="skops", **FAST)
    mlflow.sklearn.save_model(
        clf, str(root / "cloudpickle"), signature=columns_sig, serialization_format="cloudpickle", **FAST
    )
    Xn = X.to_numpy()
    tensor_clf = LogisticRegression(max_iter=1000).fit(Xn, y)
    mlflow.sklearn.save_model(
        tensor_clf,
        str(root / "tensor"),
        signature=mlflow.models.infer_signature(Xn, tensor_clf.predict(Xn)),
        serialization_format="skops",
        **FAST,
    )

    class Scale(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
            return pd.DataFrame({"double": model_input["a"] * 2, "sum": model_input["a"] + model_input["b"]})

    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    mlflow.pyfunc.save_model(
        str(root / "pyfunc"),
        python_model=Scale(),
        signature=mlflow.models.infer_signature(frame, Scale().predict(None, frame)),
        input_example=frame,  # mlflow writes input_example.json, as shipyard does: no clash
        pip_requirements=[],
    )
    return {p.name: p for p in root.iterdir()}


def columns(X: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: X[c].to_numpy() for c in X.columns}


def test_mlflow_writes_what_this_runtime_reads(model_dirs: dict[str, Path]) -> None:
    mlmodel = yaml.safe_load((model_dirs["skops"] / "MLmodel").read_text())
    assert mlmodel["flavors"]["sklearn"]["serialization_format"] == "skops"
    assert (model_dirs["skops"] / mlmodel["flavors"]["sklearn"]["pickled_model"]).is_file()
    assert MlflowRuntime.accepts_path(model_dirs["skops"])


def test_sklearn_flavor_signature_comes_from_mlmodel_and_mlflow_is_not_needed(
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    model_dirs: dict[str, Path],
    iris: tuple[pd.DataFrame, np.ndarray],
    clf: LogisticRegression,
) -> None:
    X, _ = iris
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "mlflow", None)

    mv = registry.register(model_dirs["skops"], "iris-mlflow")  # no sample: MLmodel has one
    assert mv.flavor == "mlflow"
    assert mv.flavor_meta["loader"] == "sklearn"
    assert "mlflow/MLmodel" in mv.files
    sig = mv.signature
    assert sig.format == "columns"
    assert sig.input_names == list(X.columns)
    assert {s.datatype for s in sig.inputs} == {"FP64"}
    assert [(o.name, o.datatype, o.shape) for o in sig.outputs] == [("predict", "INT64", (-1,))]

    got = registry.load("iris-mlflow").predict_arrays(columns(X))
    np.testing.assert_array_equal(got["predict"], clf.predict(X))


def test_pickled_sklearn_flavor_needs_trust(
    registry: Registry, model_dirs: dict[str, Path], iris: tuple[pd.DataFrame, np.ndarray], clf: LogisticRegression
) -> None:
    X, _ = iris
    with pytest.raises(UnsafeFormat, match="--trust-pickle") as info:
        registry.register(model_dirs["cloudpickle"], "iris-pickle")
    assert "cloudpickle" in str(info.value)

    registry.register(model_dirs["cloudpickle"], "iris-pickle", trust_pickle=True, sample=X.head(5))
    got = registry.load("iris-pickle").predict_arrays(columns(X))
    np.testing.assert_array_equal(got["predict"], clf.predict(X))


def test_tensor_signature_becomes_a_tensors_signature(
    registry: Registry, model_dirs: dict[str, Path], iris: tuple[pd.DataFrame, np.ndarray], clf: LogisticRegression
) -> None:
    X, _ = iris
    mv = registry.register(model_dirs["tensor"], "iris-tensor")
    assert mv.signature.format == "tensors"
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("input", "FP64", (-1, 4))]

    got = registry.load("iris-tensor").predict_arrays({"input": X.to_numpy()})
    np.testing.assert_array_equal(got["predict"], clf.predict(X))


def test_python_function_flavor_needs_trust_and_keeps_output_names(
    registry: Registry, model_dirs: dict[str, Path]
) -> None:
    with pytest.raises(UnsafeFormat, match="--trust-pickle"):
        registry.register(model_dirs["pyfunc"], "scale")

    mv = registry.register(model_dirs["pyfunc"], "scale", trust_pickle=True)
    assert mv.flavor_meta["loader"] == "pyfunc"
    assert [o.name for o in mv.signature.outputs] == ["double", "sum"]
    got = registry.load("scale").predict_arrays({"a": np.array([1.0, 5.0]), "b": np.array([0.5, 1.0])})
    np.testing.assert_array_equal(got["double"], [2.0, 10.0])
    np.testing.assert_array_equal(got["sum"], [1.5, 6.0])


def test_python_function_without_mlflow_names_the_extra(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, model_dirs: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.pyfunc", None)
    with pytest.raises(MissingDependency, match=r"mlflow is not installed.*shipyard\[mlflow\]"):
        registry.register(model_dirs["pyfunc"], "scale", trust_pickle=True)


def test_a_folder_without_mlmodel_is_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"")
    assert not MlflowRuntime.accepts_path(tmp_path)
