"""TensorFlow to TensorFlow Lite (LiteRT), quantized or not, and the XLA-compiled SavedModel.

TFLite conversion (``tf.lite.TFLiteConverter.from_saved_model``, one signature):

* no method: float32, every operator as it is;
* ``dynamic``: weights stored as int8, activations float (dynamic range
  quantization). TFLite leaves weight tensors under 1,024 values in float, so a
  small model may come out unchanged: that is refused with ``NotExportable``
  rather than written as a "quantized" copy of itself, as for ONNX;
* ``int8``: weights and activations int8, scales calibrated on the check rows
  (the converter's representative dataset); inputs and outputs stay float32,
  so callers send what they always sent;
* ``fp16``: float32 weights halved to float16.

``to_xla`` writes a SavedModel whose serving signature wraps the source's in a
``tf.function(jit_compile=True)``: XLA compiles the whole function (once per
input shape) when it first runs. It loads and serves through the tensorflow
runtime like the source.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, NotExportable
from shipyard.runtime.tensorflow import DEFAULT_SIGNATURE, import_tensorflow

METHODS = ("dynamic", "int8", "fp16")
#: Rows of the check data the int8 calibration reads, one at a time.
CALIBRATION_ROWS = 300


def to_tflite(saved_model: Path, dest: Path, *, signature: str = DEFAULT_SIGNATURE, method: str | None = None,
              calibration: Mapping[str, np.ndarray[Any, Any]] | None = None, base: Path | None = None) -> None:
    """Convert the SavedModel folder ``saved_model`` to the TFLite file ``dest``.

    Args:
        saved_model: the source version's SavedModel folder.
        dest: the ``.tflite`` file to write.
        signature: the signature to convert (it keeps its name in the TFLite model).
        method: None (float32), ``dynamic``, ``int8`` or ``fp16``.
        calibration: named input rows, needed for ``int8``.
        base: the float32 conversion; a quantized result identical to it is refused.

    Raises:
        NotExportable: the converter failed, or the method changed nothing.
    """
    if method is not None and method not in METHODS:
        raise InvalidInput(f"unknown TFLite quantization '{method}'; use one of {', '.join(METHODS)}",
                           field="quantize")
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])
    if method is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if method == "int8":
        if not calibration:
            raise InvalidInput("int8 quantization needs calibration rows", field="check_data")
        converter.representative_dataset = lambda: _rows(calibration)
    elif method == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        with warnings.catch_warnings():
            # the calibrator runs TensorFlow's own (deprecated) tf.lite.Interpreter, which warns
            warnings.simplefilter("ignore")
            data = converter.convert()
    except Exception as exc:  # ConverterError and friends
        detail = str(exc).strip().splitlines()
        raise NotExportable(f"the TFLite converter failed: {detail[-1] if detail else type(exc).__name__}") from exc
    if base is not None and base.is_file() and base.read_bytes() == data:
        raise NotExportable(
            f"nothing to quantize: {method} changed no tensor (TFLite quantizes only weight tensors of "
            "1,024 values or more, and this model has none)"
        )
    dest.write_bytes(data)


def _rows(arrays: Mapping[str, np.ndarray[Any, Any]]) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
    """One row at a time: the converted model's inputs have batch 1 until they are resized."""
    n = min(CALIBRATION_ROWS, len(next(iter(arrays.values()))))
    for i in range(n):
        yield {k: np.ascontiguousarray(v[i:i + 1]) for k, v in arrays.items()}


def to_xla(saved_model: Path, dest: Path, *, signature: str = DEFAULT_SIGNATURE) -> None:
    """Write ``saved_model`` again with its ``signature`` compiled by XLA (``jit_compile=True``).

    The new SavedModel's ``serving_default`` (also under ``signature``'s own name) takes and
    returns what the source's signature does.
    """
    tf = import_tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = tf.saved_model.load(str(saved_model))
    fn = source.signatures[signature]
    _, kwargs = fn.structured_input_signature
    names = list(kwargs)
    specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in kwargs.items()]

    def call(*args: Any) -> Any:
        return fn(**dict(zip(names, args, strict=True)))

    compiled = tf.function(call, jit_compile=True, input_signature=specs)
    holder = tf.Module()
    holder.source = source  # keeps the variables the wrapped function reads
    holder.serve = compiled
    concrete = compiled.get_concrete_function()
    signatures = {DEFAULT_SIGNATURE: concrete}
    if signature != DEFAULT_SIGNATURE:
        signatures[signature] = concrete
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf.saved_model.save(holder, str(dest), signatures=signatures)
    except (ValueError, TypeError) as exc:
        raise NotExportable(f"TensorFlow cannot save the XLA-compiled function: {exc}") from exc
