"""TensorFlow Lite models (``.tflite`` flatbuffers), run by the LiteRT interpreter.

The interpreter comes from ``ai-edge-litert`` (extra ``tflite``), a small
package that needs NumPy only: serving a TFLite version never imports
TensorFlow. The file is stored as ``model.tflite``.

A model made by the TFLite converter from a SavedModel keeps its signatures;
the ``signature`` option picks one (``serving_default``, or the only one there
is), and its input and output names, dtypes and shapes (``shape_signature``:
-1 for a dynamic batch) become the default signature. A model without
signatures is run through its raw input and output tensors, named as the
converter named them.

Predict resizes the inputs to the batch that arrived and runs the interpreter.
One interpreter is not safe to call from two threads at once, so calls on one
loaded copy take turns behind a lock.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, InvalidOption, ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime
from shipyard.signature import Signature, TensorSpec
from shipyard.types import DATATYPE_TO_NUMPY, datatype_of

EXTRA = "tflite"
MODEL_FILE = "model.tflite"
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))
# The flatbuffer's file identifier, at bytes 4..8 of every TFLite model.
MAGIC = b"TFL3"


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter``, imported on first use."""
    module = require("ai_edge_litert.interpreter", EXTRA, "ai-edge-litert")
    return module.Interpreter


class TfliteRuntime(Runtime):
    flavor = "tflite"
    extra = EXTRA
    packages = ("ai-edge-litert", "numpy")
    option_specs = (
        Option("signature", str, "which signature of the model serves (default: serving_default, or the only one)"),
        Option("threads", int, "interpreter threads per loaded copy of the model (default: one per core, at most 4)"),
    )

    def __init__(self, interpreter: Any, signature: str | None) -> None:
        self.interpreter = interpreter
        self.signature = signature
        self.lock = threading.Lock()
        if signature is not None:
            self.runner = interpreter.get_signature_runner(signature)
            details = self.runner.get_input_details()
            self.inputs = [(name, np.dtype(d["dtype"])) for name, d in details.items()]
        else:
            self.runner = None
            self.inputs = [(_clean(d["name"]), np.dtype(d["dtype"])) for d in interpreter.get_input_details()]

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        return isinstance(obj, (bytes, bytearray)) and bytes(obj[4:8]) == MAGIC

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        (dest / MODEL_FILE).write_bytes(bytes(obj))
        return file_meta(dest / MODEL_FILE, options)

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        return path.is_file() and path.suffix == ".tflite"

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        with src.open("rb") as f:
            head = f.read(8)
        if head[4:8] != MAGIC:
            raise ModelFormatError(f"'{src}' is not a TensorFlow Lite model (no TFL3 identifier)")
        shutil.copyfile(src, dest / MODEL_FILE)
        return file_meta(dest / MODEL_FILE, options)

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        interpreter = _interpreter(path / meta["file"], 1)
        name = meta.get("signature")
        if name is not None:
            runner = interpreter.get_signature_runner(name)
            ins = list(runner.get_input_details().items())
            outs = list(runner.get_output_details().items())
        else:
            ins = [(_clean(d["name"]), d) for d in interpreter.get_input_details()]
            outs = [(_clean(d["name"]), d) for d in interpreter.get_output_details()]
        inputs = tuple(_spec(n, d) for n, d in ins)
        outputs = tuple(_spec(n, d) for n, d in outs)
        return Signature(inputs=inputs, outputs=outputs, format="tensors")

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> TfliteRuntime:
        interpreter = _interpreter(path / meta["file"], int(meta.get("threads", DEFAULT_THREADS)))
        return cls(interpreter, meta.get("signature"))

    def predict(self, inputs: Arrays) -> Arrays:
        names = [n for n, _ in self.inputs]
        if all(n in inputs for n in names):
            values = [inputs[n] for n in names]
        elif len(inputs) == len(names):  # differently named inputs: take them in order
            values = list(inputs.values())
        else:
            missing = next(n for n in names if n not in inputs)
            raise InvalidInput(f"the TFLite model needs an input named '{missing}'", field=missing)
        feed = {}
        for (name, dtype), arr in zip(self.inputs, values, strict=True):
            if arr.dtype.kind in ("O", "U", "S") and dtype.kind not in ("O", "S"):
                raise InvalidInput.for_field(name, f"a numeric tensor ({dtype})", "strings")
            feed[name] = np.ascontiguousarray(arr, dtype=dtype)
        with self.lock:
            if self.runner is not None:
                result = self.runner(**feed)
                return {str(k): np.array(v) for k, v in result.items()}
            return self._run_raw(feed)

    def _run_raw(self, feed: dict[str, np.ndarray[Any, Any]]) -> Arrays:
        """A model without signatures: resize, set, invoke, read each output tensor."""
        it = self.interpreter
        details = it.get_input_details()
        resized = False
        for d, (name, _) in zip(details, self.inputs, strict=True):
            if tuple(d["shape"]) != feed[name].shape:
                it.resize_tensor_input(d["index"], list(feed[name].shape))
                resized = True
        if resized:
            it.allocate_tensors()
        for d, (name, _) in zip(it.get_input_details(), self.inputs, strict=True):
            it.set_tensor(d["index"], feed[name])
        it.invoke()
        return {_clean(d["name"]): np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}

    def unload(self) -> None:
        self.runner = None
        self.interpreter = None


def file_meta(file: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The flavor metadata of a TFLite file: its name, the signature that serves, the threads."""
    meta: dict[str, Any] = {"file": file.name}
    threads = options.get("threads")
    if threads is not None:
        if threads < 1:
            raise InvalidOption(f"option 'threads' for runtime tflite must be at least 1, got {threads}",
                                option="threads", expected=">= 1", got=threads)
        meta["threads"] = threads
    interpreter = _interpreter(file, 1)
    signatures = list(interpreter.get_signature_list())
    name = options.get("signature")
    if name is not None and name not in signatures:
        known = ", ".join(signatures) or "none"
        raise ModelFormatError(f"the TFLite model has no signature '{name}' (it has: {known})")
    if name is None and signatures:
        name = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in signatures else signatures[0]
        if len(signatures) > 1 and DEFAULT_SIGNATURE not in signatures:
            raise ModelFormatError(
                f"the TFLite model has several signatures ({', '.join(signatures)}) and none is "
                f"{DEFAULT_SIGNATURE}; pick one with --option signature=NAME"
            )
    if name is not None:
        meta["signature"] = name
    return meta


def _interpreter(file: Path, threads: int) -> Any:
    Interpreter = interpreter_class()  # noqa: N806 - a class
    try:
        interpreter = Interpreter(model_path=str(file), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"the LiteRT interpreter cannot load {file.name}: {exc}") from exc
    return interpreter


def _clean(name: str) -> str:
    """'serving_default_x:0' -> 'x' where the converter prefixed it; any other name as it is, minus ':0'."""
    name = re.sub(r":\d+$", "", name)
    return name.removeprefix("serving_default_")


def _spec(name: str, details: dict[str, Any]) -> TensorSpec:
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    dtype = np.dtype(details["dtype"])
    datatype = datatype_of(np.empty(0, dtype=dtype)) if dtype in DATATYPE_TO_NUMPY.values() else "BYTES"
    return TensorSpec(str(name), datatype, tuple(int(d) for d in shape))
