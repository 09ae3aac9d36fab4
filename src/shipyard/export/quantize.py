"""Smaller, faster ONNX graphs: int8 quantization (dynamic or static) and float16.

* ``dynamic``: weights stored as int8, activations quantized on the fly per
  batch (``onnxruntime.quantization.quantize_dynamic``). No calibration data.
* ``static``: weights and activations int8 with scales fixed ahead of time from
  calibration rows (``quantize_static``, QDQ format); the rows are the check
  data, i.e. the signature sample plus the user's file when given.
* ``fp16``: float32 weights halved to float16 (``onnxconverter-common``), inputs
  and outputs kept float32 so callers send what they always sent.

Quantization only touches matrix operators (MatMul, Gemm, Conv, ...); tree
ensembles keep their float thresholds. A graph with nothing to quantize is
refused with ``NotExportable`` rather than written out as a "quantized" copy of
itself.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, NotExportable

logger = logging.getLogger(__name__)

EXTRA = "export"
METHODS = ("dynamic", "static", "fp16")
#: Operators onnxruntime quantizes (the int8 kernels that exist for CPU).
QUANTIZABLE = frozenset(
    {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"}
)
_FLOAT = 1  # onnx.TensorProto.FLOAT


def quantizable_ops(proto: Any) -> list[str]:
    """Names of the graph's nodes that int8 quantization would change."""
    return [n.op_type for n in proto.graph.node if n.op_type in QUANTIZABLE]


def float_weights(proto: Any) -> int:
    """How many float32 weight values (initializers) the graph holds."""
    onnx = require("onnx", EXTRA)
    total = 0
    for init in proto.graph.initializer:
        if init.data_type == _FLOAT:
            total += int(np.prod(onnx.numpy_helper.to_array(init).shape))
    return total


def quantize(src: Path, dest: Path, method: str, calibration: Mapping[str, np.ndarray[Any, Any]] | None = None) -> None:
    """Write the ``method`` variant of the ONNX file ``src`` to ``dest``.

    Args:
        src: the exported float32 ONNX graph.
        dest: where to write the quantized graph.
        method: ``dynamic``, ``static`` or ``fp16``.
        calibration: named input arrays (graph input name -> rows), needed for ``static``.

    Raises:
        NotExportable: the graph has nothing this method would change.
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown quantization '{method}'; use one of {', '.join(METHODS)}", field="quantize")
    onnx = require("onnx", EXTRA)
    proto = onnx.load_model(str(src))
    if method == "fp16":
        if not float_weights(proto):
            raise NotExportable(
                "nothing to convert to float16: the graph has no float32 weights (tree ensembles keep their "
                "thresholds in float32 attributes, which float16 conversion leaves alone)"
            )
        float16 = require("onnxconverter_common.float16", EXTRA, "onnxconverter-common")
        half = float16.convert_float_to_float16(proto, keep_io_types=True)
        onnx.save_model(half, str(dest))
        return
    if not quantizable_ops(proto):
        ops = sorted({n.op_type for n in proto.graph.node})
        raise NotExportable(
            f"nothing to quantize: int8 quantization changes {', '.join(sorted(QUANTIZABLE))}, and this graph "
            f"has only {', '.join(ops)} (tree ensembles stay float)"
        )
    q = require("onnxruntime.quantization", EXTRA, "onnxruntime")
    with tempfile.TemporaryDirectory(prefix="shipyard-quantize-") as tmp:
        prepared = _prepare(src, Path(tmp) / "prepared.onnx")
        if method == "dynamic":
            q.quantize_dynamic(str(prepared), str(dest), weight_type=q.QuantType.QInt8)
            return
        if not calibration:
            raise InvalidInput("static quantization needs calibration rows", field="check_data")
        reader = _reader(q.CalibrationDataReader, calibration)
        q.quantize_static(str(prepared), str(dest), reader, quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)


def _prepare(src: Path, dest: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph clean-up) before quantizing."""
    shape_inference = require("onnxruntime.quantization.shape_inference", EXTRA, "onnxruntime")
    try:
        shape_inference.quant_pre_process(str(src), str(dest))
    except Exception as exc:  # it gives up on some graphs; quantizing the graph as it is still works
        logger.info("quantization pre-processing skipped (%s: %s)", type(exc).__name__, exc)
        return src
    return dest


def _reader(base: type, arrays: Mapping[str, np.ndarray[Any, Any]], batch: int = 16) -> Any:
    """A ``CalibrationDataReader`` (``base``, imported lazily) feeding the rows in small batches."""
    rows = len(next(iter(arrays.values())))
    feeds = [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in arrays.items()} for i in range(0, rows, batch)]

    class Reader(base):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
            return next(self.it, None)

    return Reader()
