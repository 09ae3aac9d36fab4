"""MLflow model folders (the ones with an ``MLmodel`` file), copied whole.

``MLmodel`` is read here with PyYAML, so its signature becomes the version's
default signature without the ``mlflow`` package. Two flavors load:

* ``sklearn``: the estimator file named by ``pickled_model``. With
  ``serialization_format: skops`` it loads through skops, trusting
  scikit-learn/NumPy/SciPy types only (others need ``trust_pickle``); a
  ``pickle``/``cloudpickle`` file needs ``trust_pickle=True``. No ``mlflow``.
* ``tensorflow``: the Keras file (``model_type: keras``, ``data/model.keras``
  or a SavedModel folder) or the SavedModel of a ``tf.Module``
  (``model_type: tf2-module``), served by shipyard's tensorflow runtime
  (stored beside the folder as ``saved_model/``). No ``mlflow``.
* ``python_function`` (anything else): ``mlflow.pyfunc.load_model``, which
  unpickles the model with cloudpickle, so it needs ``trust_pickle=True`` and
  the ``mlflow`` (or ``mlflow-skinny``) package.

The folder is stored under ``mlflow/`` in the version, so shipyard's own files
(the input example) never overwrite MLflow's. Outputs are named ``predict``,
or after the output columns the ``MLmodel`` signature names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shipyard._extras import require
from shipyard.errors import InvalidInput, ModelFormatError, UnsafeFormat
from shipyard.runtime.base import Arrays, Runtime, as_outputs
from shipyard.runtime.sklearn import SAFE_PREFIXES, SklearnRuntime, import_skops
from shipyard.signature import Signature, TensorSpec
from shipyard.types import datatype_of

MLMODEL = "MLmodel"
MODEL_DIR = "mlflow"

# MLflow column types (mlflow.types.DataType) -> Open Inference Protocol datatypes
_COLUMN_TYPES = {
    "boolean": "BOOL",
    "integer": "INT32",
    "long": "INT64",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "binary": "BYTES",
}


class MlflowRuntime(Runtime):
    flavor = "mlflow"
    extra = "mlflow"
    packages = ("mlflow", "mlflow-skinny", "scikit-learn", "skops", "pandas", "numpy")

    def __init__(self, predictor: Any, loader: str, mlmodel: dict[str, Any]) -> None:
        self.predictor = predictor
        self.loader = loader
        self.signature = _signature(mlmodel)
        self.output_names = _output_names(mlmodel)

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        if path.is_file() and path.name == MLMODEL:
            return True
        return path.is_dir() and (path / MLMODEL).is_file()

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        if src.is_file() and src.name == MLMODEL:
            src = src.parent
        if not (src / MLMODEL).is_file():
            raise ModelFormatError(f"'{src}' is not an MLflow model folder: it has no {MLMODEL} file")
        mlmodel = _read_mlmodel(src)
        flavors = mlmodel.get("flavors") or {}
        skip: Path | None = None
        if "sklearn" in flavors:
            meta = _sklearn_meta(src, flavors["sklearn"], flavors.get("python_function") or {}, trust_pickle)
        elif "tensorflow" in flavors:
            from shipyard.runtime.tensorflow import TensorflowRuntime

            skip = _tensorflow_artifact(src, flavors["tensorflow"])
            inner = TensorflowRuntime.import_path(skip, dest, trust_pickle=trust_pickle, **options)
            meta = {"loader": "tensorflow", "tensorflow": inner}
        elif "python_function" in flavors:
            if not trust_pickle:
                raise UnsafeFormat(str(src), "an MLflow python_function model, stored with cloudpickle")
            require("mlflow.pyfunc", cls.extra, "mlflow")
            meta = {"loader": "pyfunc"}
        else:
            raise ModelFormatError(
                f"the MLflow model '{src}' has flavors {', '.join(flavors) or 'none'}; shipyard loads "
                "the sklearn, tensorflow and python_function flavors"
            )
        patterns = shutil.ignore_patterns("__pycache__", "*.pyc")

        def ignore(folder: str, names: list[str]) -> set[str]:
            # the TensorFlow model is stored once, as the SavedModel beside this folder
            left_out = set(patterns(folder, names))
            if skip is not None and Path(folder).resolve() == skip.parent.resolve():
                left_out.add(skip.name)
            return left_out

        shutil.copytree(src, dest / MODEL_DIR, ignore=ignore)
        return {"dir": MODEL_DIR, **meta}

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        declared = _signature(_read_mlmodel(path / meta["dir"]))
        if declared is None and meta.get("loader") == "tensorflow":
            from shipyard.runtime.tensorflow import TensorflowRuntime

            return TensorflowRuntime.default_signature(path, meta["tensorflow"])
        return declared

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> MlflowRuntime:
        folder = path / meta["dir"]
        mlmodel = _read_mlmodel(folder)
        if meta["loader"] == "sklearn":
            inner: dict[str, Any] = {k: meta[k] for k in ("file", "methods", "trusted_types", "pickle") if k in meta}
            return cls(SklearnRuntime.load(folder, inner), "sklearn", mlmodel)
        if meta["loader"] == "tensorflow":
            from shipyard.runtime.tensorflow import TensorflowRuntime

            return cls(TensorflowRuntime.load(path, meta["tensorflow"]), "tensorflow", mlmodel)
        # Trust was given explicitly at registration and every file's sha256 was checked.
        pyfunc = require("mlflow.pyfunc", cls.extra, "mlflow")
        return cls(pyfunc.load_model(str(folder)), "pyfunc", mlmodel)

    def predict(self, inputs: Arrays) -> Arrays:
        if self.loader == "tensorflow":
            outputs = self.predictor.predict(inputs)
            return self._name(outputs) if len(outputs) == 1 else outputs
        if self.loader == "sklearn":
            result: Any = next(iter(self.predictor.predict(inputs).values()))
        else:
            result = self.predictor.predict(self._pyfunc_input(inputs))
        return self._name(as_outputs(result))

    def _pyfunc_input(self, inputs: Arrays) -> Any:
        if self.signature is None or self.signature.format == "columns" or all(
            a.ndim == 1 for a in inputs.values()
        ):
            pd = require("pandas", self.extra)
            return pd.DataFrame(dict(inputs), columns=list(inputs))
        if len(inputs) == 1:
            return next(iter(inputs.values()))
        return dict(inputs)

    def _name(self, outputs: Arrays) -> Arrays:
        names = self.output_names
        if len(outputs) != 1:
            return outputs
        arr = next(iter(outputs.values()))
        if len(names) == 1:
            return {names[0]: arr}
        if len(names) > 1 and arr.ndim == 2 and arr.shape[1] == len(names):
            return {n: arr[:, i] for i, n in enumerate(names)}
        return {"predict": arr}


def _read_mlmodel(folder: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((folder / MLMODEL).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelFormatError(f"cannot read {folder / MLMODEL}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{folder / MLMODEL} is not an MLflow model description")
    return data


def _tensorflow_artifact(src: Path, flavor: dict[str, Any]) -> Path:
    """The Keras file or SavedModel folder an MLflow ``tensorflow`` flavor keeps its model in."""
    model_type = flavor.get("model_type", "keras")
    if model_type == "tf2-module":
        folder = src / str(flavor.get("saved_model_dir", "tf2model"))
        if (folder / "saved_model.pb").is_file():
            return folder
        raise ModelFormatError(f"the MLflow tensorflow model in '{src}' has no SavedModel at {folder.name}/")
    if model_type != "keras":
        raise ModelFormatError(
            f"the MLflow tensorflow model in '{src}' is a {model_type!r}; shipyard loads Keras models and "
            "TF2 modules (TF1 estimators are not supported)"
        )
    base = src / str(flavor.get("data", "data")) / "model"
    for candidate in (base.with_suffix(".keras"), base):
        if candidate.is_file() or (candidate / "saved_model.pb").is_file():
            return candidate
    raise ModelFormatError(
        f"the MLflow Keras model in '{src}' keeps neither {base.name}.keras nor a SavedModel folder in "
        f"{base.parent.name}/ (a legacy .h5 file is not supported: save the model again as .keras)"
    )


def _sklearn_meta(
    src: Path, flavor: dict[str, Any], pyfunc: dict[str, Any], trust_pickle: bool
) -> dict[str, Any]:
    file = flavor.get("pickled_model")
    if not file or not (src / file).is_file():
        raise ModelFormatError(f"the MLflow sklearn model in '{src}' names no model file ({file!r})")
    # pyfunc serving calls predict_fn (e.g. predict_proba when logged so); keep that meaning
    meta: dict[str, Any] = {"loader": "sklearn", "file": file, "methods": [pyfunc.get("predict_fn") or "predict"]}
    fmt = flavor.get("serialization_format", "cloudpickle")
    if fmt == "skops":
        sio = import_skops()
        untrusted = [t for t in sio.get_untrusted_types(file=src / file) if not t.startswith(SAFE_PREFIXES)]
        if untrusted and not trust_pickle:
            raise ModelFormatError(
                f"'{src / file}' holds types skops does not trust: {', '.join(untrusted)}; "
                "pass --trust-pickle (trust_pickle=True) if you trust where it came from"
            )
        meta["trusted_types"] = untrusted
        return meta
    if fmt not in ("pickle", "cloudpickle"):
        raise ModelFormatError(f"unknown MLflow sklearn serialization_format {fmt!r} in '{src}'")
    if not trust_pickle:
        raise UnsafeFormat(str(src), f"an MLflow scikit-learn model stored as a {fmt} file ({file})")
    meta["pickle"] = True
    return meta


def _signature(mlmodel: dict[str, Any]) -> Signature | None:
    sig = mlmodel.get("signature")
    if not isinstance(sig, dict) or not sig.get("inputs"):
        return None
    inputs = _specs(sig["inputs"], "input")
    fmt = "columns" if all(s.get("type") != "tensor" for s in _parse(sig["inputs"])) else "tensors"
    outputs = _specs(sig["outputs"], "predict") if sig.get("outputs") else ()
    return Signature(inputs=inputs, outputs=outputs, format=fmt)


def _parse(specs: Any) -> list[dict[str, Any]]:
    parsed = json.loads(specs) if isinstance(specs, str) else specs
    if not isinstance(parsed, list):
        raise ModelFormatError(f"unreadable MLmodel signature: {specs!r}")
    return parsed


def _specs(specs: Any, default: str) -> tuple[TensorSpec, ...]:
    """MLflow colspecs or tensor specs -> TensorSpecs; unnamed ones get ``default``(_i)."""
    parsed = _parse(specs)
    out = []
    for i, s in enumerate(parsed):
        name = s.get("name") or (default if len(parsed) == 1 else f"{default}_{i}")
        if s.get("type") == "tensor":
            t = s.get("tensor-spec") or {}
            shape = tuple(int(d) for d in t.get("shape", [-1]))
            out.append(TensorSpec(name, _tensor_datatype(t.get("dtype")), shape))
            continue
        datatype = _COLUMN_TYPES.get(str(s.get("type")))
        if datatype is None:
            raise ModelFormatError(f"MLflow column '{name}' has type {s.get('type')!r}, which shipyard cannot serve")
        optional = not s.get("required", True)
        out.append(TensorSpec(name, datatype, (-1,), allow_nan=optional and datatype.startswith("FP")))
    return tuple(out)


def _tensor_datatype(dtype: Any) -> str:
    """A NumPy dtype name from a tensor spec ('float64') -> 'FP64'; strings/objects -> BYTES."""
    try:
        return datatype_of(np.empty(0, dtype=np.dtype(str(dtype))))
    except (TypeError, ValueError, InvalidInput):
        return "BYTES"


def _output_names(mlmodel: dict[str, Any]) -> list[str]:
    """The output column names the signature gives, if it names every output."""
    sig = mlmodel.get("signature")
    if not isinstance(sig, dict) or not sig.get("outputs"):
        return []
    names = [s.get("name") for s in _parse(sig["outputs"])]
    return [str(n) for n in names] if all(names) else []
