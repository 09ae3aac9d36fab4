"""The runtime inside a shipyard edge bundle: runs the bundled model with NumPy and one engine only.

The engine is onnxruntime for an ONNX model (``model.onnx``) and the LiteRT
interpreter (``ai-edge-litert``, or the older ``tflite-runtime``) for a TFLite
model (``model.tflite``); ``bundle.json`` says which (``engine``, ``model_file``).

This file is copied into every bundle as ``edge_model.py`` and must stay
self-contained: the standard library, NumPy and the engine, nothing from
shipyard, which the device does not have.

From a shell::

    python model.zip input.json          # or '-' to read standard input
    python model.zip --info              # the model's name, version and signature

``input.json`` holds rows ``{"instances": [{"col": 1.0, ...}]}``, columns
``{"inputs": {"col": [1.0, ...]}}``, a bare list of rows or a bare object of
columns. The answer is ``{"model_name", "model_version", "predictions": [...]}``,
as shipyard's ``/v1`` API gives it.

From Python::

    import sys; sys.path.insert(0, "model.zip")
    import edge_model
    model = edge_model.load()                  # the bundle it was imported from
    model.predict({"col": [1.0, 2.0]})         # -> {"predict": array([...]), ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
SIGNATURE_FILE = "signature.json"
META_FILE = "bundle.json"

_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


class BundleError(Exception):
    """The bundle is damaged, or the input does not fit the model."""


class _OnnxEngine:
    """An onnxruntime session on the CPU."""

    def __init__(self, model: bytes, meta: Mapping[str, Any], threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        results = self.session.run(None, feed)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results, strict=True)}


class _LiteEngine:
    """A LiteRT interpreter running one signature of a TFLite model (one call at a time)."""

    def __init__(self, model: bytes, meta: Mapping[str, Any], threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter  # the interpreter's older package
            except ImportError:
                raise BundleError("this bundle runs on the LiteRT interpreter: pip install ai-edge-litert") from None
        import threading

        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        key = meta.get("signature_key") or next(iter(self.interpreter.get_signature_list()), None)
        if key is None:
            raise BundleError("the bundled TFLite model has no signature to run")
        self.runner = self.interpreter.get_signature_runner(key)
        self.output_names = list(self.runner.get_output_details())
        self.lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        with self.lock:
            result = self.runner(**feed)
            return {name: np.array(value) for name, value in result.items()}


class EdgeModel:
    """The bundled model, loaded into its engine (onnxruntime or the LiteRT interpreter)."""

    def __init__(self, model: bytes, signature: Mapping[str, Any], meta: Mapping[str, Any], threads: int = 1) -> None:
        engine = _LiteEngine if meta.get("engine") == "litert" else _OnnxEngine
        self.engine: _OnnxEngine | _LiteEngine = engine(model, meta, threads)
        self.signature = dict(signature)
        self.meta = dict(meta)
        self.inputs = [(str(s["name"]), str(s["datatype"]), list(s["shape"])) for s in signature["inputs"]]
        self.output_names = self.engine.output_names

    @property
    def input_names(self) -> list[str]:
        return [name for name, _, _ in self.inputs]

    def predict(self, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Predict from columns ``{"name": values}`` or rows ``[{"name": value}, ...]``.

        Returns every output of the model by name, the batch first.
        """
        columns = _columns(data, self.input_names)
        unknown = [k for k in columns if k not in self.input_names]
        if unknown:
            raise BundleError(f"unexpected input '{unknown[0]}': this model takes {', '.join(self.input_names)}")
        feed: dict[str, np.ndarray[Any, Any]] = {}
        rows = None
        for name, datatype, shape in self.inputs:
            if name not in columns:
                raise BundleError(f"missing input '{name}': this model takes {', '.join(self.input_names)}")
            arr = _array(name, columns[name], datatype)
            if arr.ndim == len(shape) + 1 and arr.shape[-1] == 1:
                arr = arr.reshape(arr.shape[:-1])  # a column sent as [n, 1]
            if arr.ndim == 0:
                arr = arr.reshape(1)
            if arr.ndim != len(shape) or any(w not in (-1, g) for w, g in zip(shape, arr.shape, strict=True)):
                raise BundleError(f"input '{name}': expected shape {shape} (-1 = any), got {list(arr.shape)}")
            if rows is not None and arr.shape[0] != rows[1]:
                raise BundleError(f"input '{name}' has {arr.shape[0]} rows but '{rows[0]}' has {rows[1]}")
            rows = rows or (name, arr.shape[0])
            feed[name] = arr
        return self.engine.run(feed)

    def predict_json(self, doc: Any) -> dict[str, Any]:
        """The ``/v1`` answer for a decoded JSON request (see the module docstring)."""
        if isinstance(doc, dict) and "instances" in doc:
            doc = doc["instances"]
        elif isinstance(doc, dict) and "inputs" in doc:
            doc = doc["inputs"]
        if isinstance(doc, list) and doc and not isinstance(doc[0], dict) and len(self.inputs) == 1:
            doc = {self.inputs[0][0]: doc}  # one tensor input, sent as a nested list
        outputs = {k: _to_py(v) for k, v in self.predict(doc).items()}
        if len(outputs) == 1:
            predictions: list[Any] = next(iter(outputs.values()))
        else:
            n = len(next(iter(outputs.values())))
            predictions = [{k: v[i] for k, v in outputs.items()} for i in range(n)]
        return {
            "model_name": self.meta.get("name"),
            "model_version": str(self.meta.get("version")),
            "predictions": predictions,
        }


def bundle_path() -> str:
    """The zip (or unpacked folder) this module was loaded from."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    return str(archive) if archive else os.path.dirname(os.path.abspath(__file__))


def load(path: str | None = None, threads: int = 1) -> EdgeModel:
    """Load a bundle (a ``.zip`` or its unpacked folder), checking the model's sha256 first.

    Args:
        path: the bundle; the one this module came from when None.
        threads: the engine's threads.
    """
    where = path or bundle_path()
    files = _read(where, (SIGNATURE_FILE, META_FILE))
    meta = json.loads(files[META_FILE])
    model_file = str(meta.get("model_file", MODEL_FILE))
    if model_file not in (MODEL_FILE, TFLITE_FILE):
        raise BundleError(f"{where}: unknown model file {model_file!r} in {META_FILE}")
    model = _read(where, (model_file,))[model_file]
    digest = hashlib.sha256(model).hexdigest()
    if digest != meta.get("sha256"):
        raise BundleError(f"{where}: {model_file} has sha256 {digest[:12]}..., the bundle says "
                          f"{str(meta.get('sha256'))[:12]}...; refusing to run a changed model")
    return EdgeModel(model, json.loads(files[SIGNATURE_FILE]), meta, threads)


def main(argv: Sequence[str] | None = None) -> int:
    """``python model.zip input.json``: print the predictions as JSON; 1 on error, with one line why."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: python {os.path.basename(bundle_path())} INPUT.json|-  |  --info", file=sys.stderr)
        return 0 if args else 2
    try:
        model = load()
        if args[0] == "--info":
            print(json.dumps({**model.meta, "signature": model.signature}, indent=2))
            return 0
        if args[0] == "-":
            text = sys.stdin.read()
        else:
            with open(args[0], encoding="utf-8") as f:
                text = f.read()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{args[0]} is not valid JSON: {exc}") from None
        print(json.dumps(model.predict_json(doc)))
        return 0
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _read(where: str, names: Sequence[str]) -> dict[str, bytes]:
    try:
        if os.path.isdir(where):
            out = {}
            for n in names:
                with open(os.path.join(where, n), "rb") as f:
                    out[n] = f.read()
            return out
        with zipfile.ZipFile(where) as zf:
            return {n: zf.read(n) for n in names}
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{where} is not a complete shipyard bundle: {exc}") from exc


def _columns(data: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and data and all(
        isinstance(r, Mapping) for r in data
    ):
        keys = list(data[0])
        for i, r in enumerate(data):
            if list(r) != keys and set(r) != set(keys):
                raise BundleError(f"row {i} has fields {sorted(r)}, row 0 has {sorted(keys)}")
        return {k: [r[k] for r in data] for k in keys}
    raise BundleError(f"expected rows [{{...}}] or columns {{name: [...]}} for the inputs {', '.join(names)}")


def _array(name: str, values: Any, datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        arr = np.asarray(values, dtype=object)
        flat = [x.decode() if isinstance(x, bytes) else str(x) for x in arr.ravel()]
        return np.array(flat, dtype=object).reshape(arr.shape)
    try:
        arr = np.asarray(values)
    except ValueError:
        raise BundleError(f"input '{name}': ragged nested lists") from None
    if arr.dtype.kind in ("U", "S", "O"):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            first = arr.ravel()[:1].tolist()
            raise BundleError(f"input '{name}': expected numbers ({datatype}), got {first}") from None
    if arr.dtype.kind == "b" and datatype != "BOOL":
        raise BundleError(f"input '{name}': expected numbers ({datatype}), got true/false")
    if arr.dtype.kind == "f" and datatype not in ("FP16", "FP32", "FP64") and not np.all(np.mod(arr, 1) == 0):
        raise BundleError(f"input '{name}': expected whole numbers ({datatype})")
    return arr.astype(_DTYPES.get(datatype, np.float32))


def _to_py(arr: np.ndarray[Any, Any]) -> list[Any]:
    if arr.dtype.kind in ("O", "S"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in arr.tolist()]
    return arr.tolist()  # type: ignore[no-any-return]


if __name__ == "__main__":  # pragma: no cover - the bundle's __main__.py calls main()
    sys.exit(main())
