"""TensorFlow SavedModels and Keras models, served through one SavedModel signature.

Every version holds a SavedModel folder (``saved_model/``), the format TensorFlow
Serving, the TFLite converter and tf2onnx all read:

* a SavedModel folder (the one with ``saved_model.pb``) is copied as it is;
* a Keras ``.keras`` file is loaded with Keras (``safe_mode``: a ``Lambda``
  layer's Python code is refused unless ``trust_pickle``) and exported with
  ``model.export``, so serving needs neither the Keras file nor the Python
  classes of its custom layers;
* a Keras model object is exported the same way; a ``tf.Module`` is saved with
  ``tf.saved_model.save`` (its ``tf.function`` with an ``input_signature``
  becomes ``serving_default``).

The option ``signature`` picks which of the SavedModel's signatures serves
(``serving_default`` unless named). The signature declares input and output
names, dtypes and shapes, so no sample is needed; unknown dimensions become -1.

Predict calls the signature with one tensor per input, cast to the dtype the
signature wants, and returns every output by name. TensorFlow is imported only
when a TensorFlow version is registered, loaded or exported (extra
``tensorflow``, which installs ``tensorflow-cpu``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime
from shipyard.signature import Signature, TensorSpec

EXTRA = "tensorflow"
MODEL_DIR = "saved_model"
DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"

# tf.DType.name -> Open Inference Protocol datatype
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}
_KERAS_ROOTS = ("keras", "tf_keras")


def import_tensorflow() -> Any:
    """``tensorflow``, imported on first use, or MissingDependency naming the extra."""
    # TensorFlow's C++ start-up notes (oneDNN, CPU features) are noise in a server's log;
    # a user who set the variable keeps their own level
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", EXTRA, "tensorflow-cpu")


def _roots(obj: Any) -> set[str]:
    return {c.__module__.split(".")[0] for c in type(obj).__mro__}


def _is_keras(obj: Any) -> bool:
    return bool(_roots(obj) & set(_KERAS_ROOTS)) and hasattr(obj, "export")


class TensorflowRuntime(Runtime):
    flavor = "tensorflow"
    extra = EXTRA
    packages = ("tensorflow-cpu", "tensorflow", "keras", "numpy")
    option_specs = (
        Option("signature", str, "which SavedModel signature serves", DEFAULT_SIGNATURE),
    )

    def __init__(self, holder: Any, fn: Any, signature: str) -> None:
        self.holder = holder  # the loaded object owns the variables the signature function reads
        self.fn = fn
        self.signature = signature
        _, kwargs = fn.structured_input_signature
        self.inputs: list[tuple[str, Any]] = [(name, spec.dtype) for name, spec in kwargs.items()]

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        roots = _roots(obj)
        if roots & set(_KERAS_ROOTS):
            return _is_keras(obj)
        if "tensorflow" not in roots:
            return False
        tf = import_tensorflow()
        return isinstance(obj, tf.Module)

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        target = dest / MODEL_DIR
        if _is_keras(obj):
            _export_keras(obj, target)
            source = "keras"
        else:
            tf = import_tensorflow()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tf.saved_model.save(obj, str(target))
            except (ValueError, TypeError) as exc:
                raise ModelFormatError(f"TensorFlow cannot save this {type(obj).__qualname__}: {exc}") from exc
            source = "module"
        return _meta(target, options, source)

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        if path.is_dir():
            return (path / SAVED_MODEL_FILE).is_file()
        return path.is_file() and (path.suffix == ".keras" or path.name == SAVED_MODEL_FILE)

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        target = dest / MODEL_DIR
        if src.is_file() and src.name == SAVED_MODEL_FILE:
            src = src.parent
        if src.is_dir():
            if not (src / SAVED_MODEL_FILE).is_file():
                raise ModelFormatError(f"'{src}' is not a SavedModel folder: it has no {SAVED_MODEL_FILE}")
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            return _meta(target, options, "saved_model")
        if src.suffix != ".keras":
            raise ModelFormatError(f"'{src}' is neither a SavedModel folder nor a Keras .keras file")
        import_tensorflow()
        keras = require("keras", EXTRA)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = keras.saving.load_model(str(src), compile=False, safe_mode=not trust_pickle)
        except ValueError as exc:
            if "safe_mode" in str(exc):
                raise ModelFormatError(
                    f"'{src}' holds Python code (a Lambda layer), which runs when it is loaded; pass "
                    "--trust-pickle (trust_pickle=True) only if you trust where it came from"
                ) from exc
            raise ModelFormatError(f"Keras cannot load '{src}': {exc}") from exc
        except (TypeError, OSError) as exc:  # an unknown custom class, a damaged zip
            raise ModelFormatError(
                f"Keras cannot load '{src}': {exc}. A custom layer's class must be importable "
                "(registered with keras.saving.register_keras_serializable) when the file is registered"
            ) from exc
        _export_keras(model, target)
        return {**_meta(target, options, "keras"), "keras_file": src.name}

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        holder, fn = _load(path / meta["dir"], meta.get("signature", DEFAULT_SIGNATURE))
        del holder
        return signature_of(fn)

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> TensorflowRuntime:
        name = meta.get("signature", DEFAULT_SIGNATURE)
        holder, fn = _load(path / meta["dir"], name)
        return cls(holder, fn, name)

    def predict(self, inputs: Arrays) -> Arrays:
        tf = import_tensorflow()
        names = [n for n, _ in self.inputs]
        if all(n in inputs for n in names):
            values = [inputs[n] for n in names]
        elif len(inputs) == len(names):  # differently named inputs: take them in order
            values = list(inputs.values())
        else:
            missing = next(n for n in names if n not in inputs)
            raise InvalidInput(f"the SavedModel signature '{self.signature}' needs an input named '{missing}'",
                               field=missing)
        feed = {}
        for (name, dtype), arr in zip(self.inputs, values, strict=True):
            if dtype == tf.string:
                feed[name] = tf.constant(np.vectorize(_as_bytes, otypes=[object])(arr) if arr.size else arr,
                                         dtype=tf.string)
            elif arr.dtype.kind in ("O", "U", "S"):
                raise InvalidInput.for_field(name, f"a numeric tensor ({dtype.name})", "strings")
            else:
                feed[name] = tf.convert_to_tensor(np.asarray(arr, dtype=dtype.as_numpy_dtype))
        result = self.fn(**feed)
        if not isinstance(result, dict):  # signatures return dicts; a bare tensor is named like shipyard's
            result = {"predict": result}
        return {str(k): np.asarray(v.numpy()) for k, v in result.items()}

    def unload(self) -> None:
        self.fn = None
        self.holder = None


def _as_bytes(x: Any) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode()


def _export_keras(model: Any, target: Path) -> None:
    """Keras's own SavedModel export: the model's call as ``serving_default`` (and ``serve``)."""
    import_tensorflow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(target), format="tf_saved_model", verbose=False)
    except (ValueError, TypeError, AttributeError) as exc:  # an unbuilt model, a non-TensorFlow backend
        raise ModelFormatError(f"Keras cannot export {type(model).__qualname__} as a SavedModel: {exc}") from exc


def _meta(target: Path, options: dict[str, Any], source: str) -> dict[str, Any]:
    """The flavor metadata, once the chosen signature is known to exist."""
    name = options.get("signature") or DEFAULT_SIGNATURE
    _load(target, name)
    return {"dir": MODEL_DIR, "signature": name, "source": source}


def _load(folder: Path, name: str) -> tuple[Any, Any]:
    """The loaded SavedModel and its signature function ``name``."""
    tf = import_tensorflow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            holder = tf.saved_model.load(str(folder))
    except Exception as exc:  # TensorFlow raises assorted errors for foreign or damaged folders
        raise ModelFormatError(f"TensorFlow cannot load the SavedModel {folder}: {exc}") from exc
    signatures = dict(holder.signatures)
    if name not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise ModelFormatError(
            f"the SavedModel has no signature '{name}' (it has: {known}); pick one with --option signature=NAME"
        )
    return holder, signatures[name]


def signature_of(fn: Any) -> Signature | None:
    """Names, datatypes and shapes of a signature function's inputs and outputs."""
    _, kwargs = fn.structured_input_signature
    inputs = [_spec(name, spec) for name, spec in kwargs.items()]
    outputs_struct = fn.structured_outputs
    if not isinstance(outputs_struct, dict):
        outputs_struct = {"predict": outputs_struct}
    outputs = [_spec(str(name), spec) for name, spec in outputs_struct.items()]
    if not inputs or any(s is None for s in inputs):
        return None  # unknown rank or a dtype shipyard cannot carry: let the sample describe the inputs
    return Signature(
        inputs=tuple(s for s in inputs if s is not None),
        outputs=tuple(s for s in outputs if s is not None) if all(outputs) else (),
        format="tensors",
    )


def _spec(name: str, spec: Any) -> TensorSpec | None:
    datatype = DATATYPES.get(getattr(getattr(spec, "dtype", None), "name", ""))
    shape = getattr(spec, "shape", None)
    if datatype is None or shape is None or shape.rank is None:
        return None
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in shape.as_list()))
