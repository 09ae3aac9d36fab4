"""ONNX models, run with ONNX Runtime on the CPU.

An ``onnx.ModelProto`` object or a ``.onnx`` file (with any external-data files
it names next to it) is stored as ``model.onnx``. The graph declares its own
inputs and outputs, so no sample is needed: ``default_signature`` reads them
from the session (dynamic dimensions become -1).

Predict feeds each input by name, cast to the dtype the graph wants, and
returns every graph output by name. A ZipMap output (what skl2onnx makes of
``predict_proba`` unless converted with ``zipmap=False``) is a list of
``{class: probability}`` dicts; it is returned as a 2-D float array with one
column per class, in class order.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, InvalidOption, ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime
from shipyard.signature import Signature, TensorSpec
from shipyard.types import DATATYPE_TO_NUMPY

MODEL_FILE = "model.onnx"
# Serving runs several models and workers side by side; don't let one take every core.
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))

_ELEMENT_TYPES = {
    "float": "FP32",
    "double": "FP64",
    "float16": "FP16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "string": "BYTES",
}
_TENSOR = re.compile(r"^tensor\((\w+)\)$")
_ZIPMAP = re.compile(r"^seq\(map\((\w+),\s*tensor\((\w+)\)\)\)$")


class OnnxRuntime(Runtime):
    flavor = "onnx"
    extra = "onnx"
    packages = ("onnxruntime", "onnx", "numpy")
    option_specs = (
        # the default depends on the machine that loads the model, so it is said in words
        Option("threads", int, "ONNX Runtime intra-op threads per loaded copy of the model (default: one per "
               "core, at most 4)"),
    )

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [(i.name, _datatype(i.type)) for i in session.get_inputs()]
        self.outputs = [(o.name, o.type) for o in session.get_outputs()]

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        return type(obj).__module__.split(".")[0] == "onnx" and type(obj).__name__ == "ModelProto"

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        meta = _meta(options)
        onnx = require("onnx", cls.extra)
        # protobuf cannot serialise 2 GB or more in one message: put the weights beside it
        large = obj.ByteSize() >= 2**31 - 1
        onnx.save_model(obj, str(dest / MODEL_FILE), save_as_external_data=large, location=f"{MODEL_FILE}.data")
        return meta

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        return path.is_file() and path.suffix == ".onnx"

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        meta = _meta(options)
        onnx = require("onnx", cls.extra)
        try:
            proto = onnx.load_model(str(src), load_external_data=False)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ModelFormatError(f"'{src}' is not a readable ONNX model: {exc}") from exc
        shutil.copyfile(src, dest / MODEL_FILE)
        # Big models keep weights in files named by the graph, relative to the .onnx file.
        for location in _external_files(onnx, proto):
            target = (dest / location).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ModelFormatError(f"'{src}' names external data outside its folder: {location}")
            if not (src.parent / location).is_file():
                raise ModelFormatError(f"'{src}' keeps weights in '{location}', which is not next to it")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.parent / location, target)
        return meta

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        session = _session(path / meta["file"], 1)
        inputs = tuple(
            TensorSpec(i.name, _datatype(i.type), _shape(i.shape)) for i in session.get_inputs()
        )
        outputs = tuple(
            TensorSpec(o.name, _datatype(o.type), (-1, -1) if _ZIPMAP.match(o.type) else _shape(o.shape))
            for o in session.get_outputs()
        )
        return Signature(inputs=inputs, outputs=outputs, format="tensors")

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> OnnxRuntime:
        return cls(_session(path / meta["file"], int(meta.get("threads", DEFAULT_THREADS))))

    def predict(self, inputs: Arrays) -> Arrays:
        names = [n for n, _ in self.inputs]
        if all(n in inputs for n in names):
            values = [inputs[n] for n in names]
        elif len(inputs) == len(names):  # differently named inputs: take them in order
            values = list(inputs.values())
        else:
            missing = next(n for n in names if n not in inputs)
            raise InvalidInput(f"the ONNX graph needs an input named '{missing}'", field=missing)
        feed = {name: _cast(arr, dt) for (name, dt), arr in zip(self.inputs, values, strict=True)}
        results = self.session.run(None, feed)
        return {name: _output(value, typ) for (name, typ), value in zip(self.outputs, results, strict=True)}

    def unload(self) -> None:
        self.session = None


def _meta(options: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"file": MODEL_FILE}
    threads = options.get("threads")
    if threads is not None:
        if threads < 1:
            raise InvalidOption(f"option 'threads' for runtime onnx must be at least 1, got {threads}",
                                option="threads", expected=">= 1", got=threads)
        meta["threads"] = threads
    return meta


def _session(file: Path, threads: int) -> Any:
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; ORT's graph-optimiser notes are noise here
    try:
        return ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types per failure
        raise ModelFormatError(f"ONNX Runtime cannot load the model: {exc}") from exc


def _external_files(onnx: Any, proto: Any) -> list[str]:
    """The files the graph's tensors (initializers, constants, subgraphs) keep their data in."""
    files: list[str] = []
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location and location not in files:
                files.append(location)
    return files


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _datatype(ort_type: str) -> str:
    """'tensor(float)' -> 'FP32'; a ZipMap's 'seq(map(int64,tensor(float)))' -> its value type."""
    m = _TENSOR.match(ort_type) or _ZIPMAP.match(ort_type)
    if m is None:
        return "BYTES"
    return _ELEMENT_TYPES.get(m.groups()[-1], "BYTES")


def _shape(dims: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def _cast(arr: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        if arr.dtype.kind == "O":
            return np.array([x.decode() if isinstance(x, bytes) else x for x in arr.ravel()], dtype=object).reshape(
                arr.shape
            )
        return arr.astype(object)
    return arr.astype(DATATYPE_TO_NUMPY[datatype], copy=False)


def _output(value: Any, ort_type: str) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    m = _ZIPMAP.match(ort_type)
    if m is not None and isinstance(value, list):
        dtype = DATATYPE_TO_NUMPY[_ELEMENT_TYPES.get(m.group(2), "FP32")]
        if not value:
            return np.empty((0, 0), dtype=dtype)
        classes = sorted(value[0])  # ZipMap keys are the class labels, sorted like sklearn's classes_
        return np.array([[row[c] for c in classes] for row in value], dtype=dtype)
    return np.asarray(value)
