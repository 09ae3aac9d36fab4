"""The ONNX runtime: signature from the graph, inputs cast by name, ZipMap flattened."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from shipyard.errors import MissingDependency, ModelFormatError
from shipyard.registry import Registry
from shipyard.runtime.loader import runtime_for_object
from shipyard.runtime.onnx import OnnxRuntime


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def classifier(iris: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


def convert(clf: Any, X: np.ndarray, *, zipmap: bool) -> Any:
    options = None if zipmap else {id(clf): {"zipmap": False}}
    return to_onnx(clf, X[:1], options=options, target_opset=17)


def run_directly(proto: Any, X: np.ndarray) -> list[Any]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})


def test_onnx_signature_comes_from_the_graph_without_a_sample(
    registry: Registry, iris: tuple[np.ndarray, np.ndarray], classifier: LogisticRegression
) -> None:
    X, _ = iris
    proto = convert(classifier, X, zipmap=False)
    assert runtime_for_object(proto) is OnnxRuntime
    mv = registry.register(proto, "iris-onnx")

    assert mv.flavor == "onnx"
    assert "model.onnx" in mv.files
    sig = mv.signature
    assert sig.format == "tensors"
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("X", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("label", "INT64", (-1,)),
        ("probabilities", "FP32", (-1, 3)),
    ]

    got = registry.load("iris-onnx").predict_arrays({"X": X})
    label, proba = run_directly(proto, X)
    np.testing.assert_array_equal(got["label"], classifier.predict(X))
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_allclose(got["probabilities"], proba, rtol=1e-6)


def test_onnx_zipmap_output_becomes_a_probability_matrix_in_class_order(
    registry: Registry, iris: tuple[np.ndarray, np.ndarray], classifier: LogisticRegression
) -> None:
    X, _ = iris
    proto = convert(classifier, X, zipmap=True)
    mv = registry.register(proto, "iris-zipmap")
    outputs = {s.name: (s.datatype, s.shape) for s in mv.signature.outputs}
    assert outputs["output_probability"] == ("FP32", (-1, -1))

    got = registry.load("iris-zipmap").predict_arrays({"X": X})
    _, zipped = run_directly(proto, X)
    expected = np.array([[row[c] for c in (0, 1, 2)] for row in zipped], dtype=np.float32)
    np.testing.assert_array_equal(got["output_label"], classifier.predict(X))
    assert got["output_probability"].shape == (len(X), 3)
    np.testing.assert_allclose(got["output_probability"], expected, rtol=1e-6)
    np.testing.assert_allclose(got["output_probability"], classifier.predict_proba(X), rtol=1e-4)


def test_onnx_file_import_with_a_float64_array_sample(
    registry: Registry, tmp_path: Path
) -> None:
    X, y = load_diabetes(return_X_y=True)
    reg = LinearRegression().fit(X, y)
    proto = to_onnx(reg, X[:1].astype(np.float32), target_opset=17)
    path = tmp_path / "diabetes.onnx"
    path.write_bytes(proto.SerializeToString())

    # the sample is float64 and unnamed: it takes the graph's input name, and is cast to FP32
    mv = registry.register(path, "diabetes-onnx", sample=X[:5])
    assert mv.flavor == "onnx"
    assert mv.signature.input_names == ["X"]
    got = registry.load("diabetes-onnx").predict_arrays({"X": X})
    (expected,) = run_directly(proto, X.astype(np.float32))
    np.testing.assert_allclose(got["variable"], expected, rtol=1e-6)
    np.testing.assert_allclose(got["variable"][:, 0], reg.predict(X), rtol=1e-4)


def test_a_corrupt_onnx_file_is_a_format_error(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not protobuf")
    with pytest.raises(ModelFormatError, match="ONNX"):
        registry.register(path, "broken")


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"onnxruntime is not installed.*shipyard\[onnx\]"):
        OnnxRuntime.load(tmp_path, {"file": "model.onnx"})


def test_onnx_external_data_files_are_copied_with_the_model(registry: Registry, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "matmul.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)

    mv = registry.register(path, "matmul")
    assert set(mv.files) == {"model.onnx", "weights.bin"}
    assert [(s.name, s.shape) for s in mv.signature.outputs] == [("Y", (-1, 3))]
    X = rng.normal(size=(6, 4)).astype(np.float32)
    got = registry.load("matmul").predict_arrays({"X": X})
    np.testing.assert_allclose(got["Y"], X @ W, rtol=1e-6)
