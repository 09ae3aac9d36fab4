"""The tensorflow and tflite runtimes without their frameworks: what they recognise, and the
error that names the extra to install. (Registering, serving and exporting real models is in
tests/integration/test_tensorflow.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shipyard.errors import MissingDependency, ModelFormatError
from shipyard.runtime.loader import runtime_for_path
from shipyard.runtime.tensorflow import TensorflowRuntime
from shipyard.runtime.tflite import TfliteRuntime


def test_missing_tensorflow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependency, match=r"tensorflow-cpu is not installed.*shipyard\[tensorflow\]"):
        TensorflowRuntime.load(tmp_path, {"dir": "saved_model"})


def test_missing_litert_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingDependency, match=r"ai-edge-litert is not installed.*shipyard\[tflite\]"):
        TfliteRuntime.load(tmp_path, {"file": "model.tflite"})


def test_saved_model_folders_keras_files_and_tflite_files_are_recognised(tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"")
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"")
    assert runtime_for_path(folder) is TensorflowRuntime
    assert runtime_for_path(folder / "saved_model.pb") is TensorflowRuntime
    assert runtime_for_path(keras_file) is TensorflowRuntime
    assert runtime_for_path(tflite) is TfliteRuntime


def test_a_file_without_the_tflite_identifier_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x00\x00\x00\x00ONNX and more")
    with pytest.raises(ModelFormatError, match="not a TensorFlow Lite model"):
        TfliteRuntime.import_path(path, tmp_path)


def test_objects_of_other_libraries_are_not_tensorflow_models() -> None:
    assert not TensorflowRuntime.accepts_object(object())
    assert not TensorflowRuntime.accepts_object([1, 2])
    assert TfliteRuntime.accepts_object(b"\x1c\x00\x00\x00TFL3rest")
    assert not TfliteRuntime.accepts_object(b"\x1c\x00\x00\x00ONNXrest")
