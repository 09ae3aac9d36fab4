"""Compiled forms of an ONNX graph for device runtimes.

* ``ort``: ONNX Runtime applies its graph optimisations (constant folding,
  node fusions; the "extended" level, which stays portable across CPUs) and
  saves the result in its flatbuffer ORT format, what ONNX Runtime Mobile and
  the minimal builds load. The same optimised graph is also saved as ONNX, which
  any ONNX Runtime (and so the registry's ONNX runtime) loads.
* ``openvino``: OpenVINO's intermediate representation (``model.xml`` +
  ``model.bin``) from ``openvino.convert_model``, for Intel CPUs, GPUs and NPUs.
  OpenVINO has no ONNX-ML operators, so tree ensembles converted by skl2onnx or
  onnxmltools cannot be compiled this way; that is reported as ``NotExportable``.

``OpenVinoRunner`` runs an IR on the CPU for checks and timings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, NotExportable
from shipyard.types import DATATYPE_TO_NUMPY

EXTRA = "export"
TARGETS = ("ort", "openvino")
IR_FILE = "model.xml"


def to_ort(src: Path, dest: Path, *, as_onnx: bool = False, level: str = "extended") -> None:
    """Optimise the ONNX graph ``src`` with ONNX Runtime and save it to ``dest``.

    Args:
        src: an ONNX file.
        dest: the output file (``.ort`` for the ORT format).
        as_onnx: save the optimised graph as ONNX instead of ORT format.
        level: ``basic`` (only standard ONNX operators, runs on any ONNX Runtime) or
            ``extended`` (adds ONNX Runtime's fused operators).
    """
    ort = require("onnxruntime", EXTRA)
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    if not as_onnx:
        opts.add_session_config_entry("session.save_model_format", "ORT")
    # Creating the session is what runs the optimiser and writes the file.
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])


def to_openvino(src: Path, dest: Path) -> None:
    """Convert the ONNX graph ``src`` to an OpenVINO IR folder ``dest`` (``model.xml`` + ``model.bin``)."""
    ov = require("openvino", EXTRA)
    try:
        model = ov.convert_model(str(src))
    except Exception as exc:  # OpConversionFailure and friends
        first = str(exc).strip().splitlines()
        detail = next((line.strip("- ") for line in first if "No conversion rule" in line), first[-1] if first else "")
        raise NotExportable(f"OpenVINO cannot convert this graph: {detail}") from exc
    dest.mkdir(parents=True, exist_ok=True)
    # keep float32 weights: the compiled model must answer like the source (fp16 is --quantize fp16's job)
    ov.save_model(model, str(dest / IR_FILE), compress_to_fp16=False)


class OpenVinoRunner:
    """An OpenVINO IR compiled for the CPU, predicting on named arrays like a shipyard runtime."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        ov = require("openvino", EXTRA)
        core = ov.Core()
        # f32 on every CPU: recent CPUs would otherwise run in bf16 and drift from the source
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(folder / IR_FILE), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [(p.get_any_name(), _numpy_dtype(p.get_element_type().to_dtype())) for p in self.compiled.inputs]
        self.outputs = [p.get_any_name() for p in self.compiled.outputs]

    def predict(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        feed = {}
        for name, dtype in self.inputs:
            if name not in inputs:
                raise InvalidInput(f"the OpenVINO model needs an input named '{name}'", field=name)
            feed[name] = np.ascontiguousarray(inputs[name], dtype=dtype)
        result = self.request.infer(feed)
        return {name: np.array(result[port]) for name, port in zip(self.outputs, self.compiled.outputs, strict=True)}

    def unload(self) -> None:
        self.request = None
        self.compiled = None


def _numpy_dtype(dtype: Any) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    return dt if dt in DATATYPE_TO_NUMPY.values() else np.dtype(np.float32)
