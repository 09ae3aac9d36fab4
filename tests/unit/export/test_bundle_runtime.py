"""The runtime shipped inside bundles: self-contained, and strict about its input."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from shipyard.export import _bundle_runtime as rt
from shipyard.export.bundle import runtime_source


def test_the_bundle_runtime_imports_nothing_but_the_standard_library_numpy_and_its_engines() -> None:
    tree = ast.parse(runtime_source())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert modules <= {"__future__", "hashlib", "json", "os", "sys", "threading", "zipfile", "collections", "typing",
                       "numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime"}


def _bundle(tmp_path: Path, *, tamper: bool = False) -> Path:
    """A hand-made bundle around a graph computing y = x * 2 for x: FP32[-1, 2]."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    import hashlib

    meta = {"name": "double", "version": 3, "sha256": hashlib.sha256(model).hexdigest()}
    signature = {"format": "tensors", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}], "outputs": []}
    path = tmp_path / "double.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(rt.MODEL_FILE, model + (b"x" if tamper else b""))
        zf.writestr(rt.SIGNATURE_FILE, json.dumps(signature))
        zf.writestr(rt.META_FILE, json.dumps(meta))
    onnx.checker.check_model(onnx.load_model_from_string(model))
    return path


def test_a_bundle_predicts_from_columns_rows_and_nested_lists(tmp_path: Path) -> None:
    model = rt.load(str(_bundle(tmp_path)))
    assert model.predict({"x": [[1, 2], [3, 4]]})["y"].tolist() == [[2.0, 4.0], [6.0, 8.0]]
    assert model.predict([{"x": [1, 2]}])["y"].tolist() == [[2.0, 4.0]]
    answer = model.predict_json({"instances": [[0.5, 1.0]]})
    assert answer == {"model_name": "double", "model_version": "3", "predictions": [[1.0, 2.0]]}


@pytest.mark.parametrize(("data", "message"), [
    ({"x": [[1, 2]], "z": [1]}, "unexpected input 'z'"),
    ({}, "missing input 'x'"),
    ({"x": [[1, 2, 3]]}, r"expected shape \[-1, 2\]"),
    ({"x": [["a", "b"]]}, "expected numbers"),
    ({"x": [[True, False]]}, "true/false"),
    ("nonsense", "expected rows"),
])
def test_bad_input_is_refused_with_the_field_named(tmp_path: Path, data: object, message: str) -> None:
    model = rt.load(str(_bundle(tmp_path)))
    with pytest.raises(rt.BundleError, match=message):
        model.predict(data)  # type: ignore[arg-type]


def test_a_changed_model_file_is_refused_before_it_runs(tmp_path: Path) -> None:
    with pytest.raises(rt.BundleError, match="refusing to run a changed model"):
        rt.load(str(_bundle(tmp_path, tamper=True)))


def test_an_incomplete_bundle_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(rt.BundleError, match="not a complete shipyard bundle"):
        rt.load(str(path))


def test_main_prints_predictions_and_returns_one_on_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(tmp_path)
    monkeypatch.setattr(rt, "bundle_path", lambda: str(bundle))
    good = tmp_path / "in.json"
    good.write_text(json.dumps({"inputs": {"x": [[1, 1]]}}))
    assert rt.main([str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == [[2.0, 2.0]]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert rt.main([str(bad)]) == 1
    assert "is not valid JSON" in capsys.readouterr().err
