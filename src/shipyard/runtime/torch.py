"""PyTorch models that carry their own code: TorchScript and ``torch.export`` programs.

A plain ``nn.Module`` is refused: storing it means pickling the object, and
loading it back needs the exact class on the server. TorchScript
(``torch.jit.script``/``trace``, saved as ``model.pt``) and exported programs
(``torch.export.export``, saved as ``model.pt2``) hold the graph themselves.

Predict turns the inputs, in signature order, into tensors, calls the model
under ``torch.inference_mode()`` and names the result ``predict`` (one tensor)
or ``output_0``, ``output_1``... (a tuple). An exported program also declares
its input names, dtypes and dynamic dimensions, which become the default
signature, and its inputs are cast to the dtypes it was exported with.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput, ModelFormatError
from shipyard.runtime.base import Arrays, Runtime, as_outputs
from shipyard.signature import Signature, TensorSpec

SCRIPT_FILE = "model.pt"
EXPORT_FILE = "model.pt2"

_DATATYPES = {
    "torch.float16": "FP16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.uint8": "UINT8",
    "torch.bool": "BOOL",
}


def _from_torch(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "torch" for c in type(obj).__mro__)


class TorchRuntime(Runtime):
    flavor = "torch"
    extra = "torch"
    packages = ("torch", "numpy")

    def __init__(self, fn: Any, dtypes: list[Any] | None = None) -> None:
        self.fn = fn
        self.dtypes = dtypes

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        if not _from_torch(obj):
            return False
        torch = require("torch", cls.extra)
        # plain modules are accepted here only so that save() can say what to do instead
        return isinstance(obj, (torch.export.ExportedProgram, torch.nn.Module))

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        torch = require("torch", cls.extra)
        if isinstance(obj, torch.export.ExportedProgram):
            torch.export.save(obj, str(dest / EXPORT_FILE))
            return {"file": EXPORT_FILE, "kind": "export"}
        if isinstance(obj, torch.jit.ScriptModule):
            torch.jit.save(obj, str(dest / SCRIPT_FILE))
            return {"file": SCRIPT_FILE, "kind": "torchscript"}
        raise ModelFormatError(
            f"a plain torch.nn.Module ({type(obj).__qualname__}) cannot be stored without pickling "
            "its class: register torch.export.export(model, (example_input,)) or "
            "torch.jit.script(model) instead"
        )

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        return path.is_file() and path.suffix in (".pt", ".pt2")

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        if src.suffix == ".pt2":
            shutil.copyfile(src, dest / EXPORT_FILE)
            return {"file": EXPORT_FILE, "kind": "export"}
        if src.suffix != ".pt":
            raise ModelFormatError(f"'{src}' is not a TorchScript (.pt) or exported (.pt2) model")
        if not _is_torchscript(src):
            raise ModelFormatError(
                f"'{src}' is not a TorchScript archive; it looks like a torch.save() pickle (weights "
                "or a whole module), which cannot be loaded without the model's Python class. "
                "Save torch.jit.script(model) with torch.jit.save, or torch.export.export(model, ...) "
                "with torch.export.save, and register that"
            )
        shutil.copyfile(src, dest / SCRIPT_FILE)
        return {"file": SCRIPT_FILE, "kind": "torchscript"}

    @classmethod
    def default_signature(cls, path: Path, meta: dict[str, Any]) -> Signature | None:
        if meta.get("kind") != "export":
            return None  # TorchScript keeps no shapes or dtypes
        program = _load_program(path / meta["file"])
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        inputs = []
        for name in program.graph_signature.user_inputs:
            spec = _spec(name, placeholders[name].meta.get("val"))
            if spec is None:
                return None  # a non-tensor argument: let the sample describe the inputs
            inputs.append(spec)
        outs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
        names = ["predict"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
        outputs = [_spec(name, getattr(o, "meta", {}).get("val")) for name, o in zip(names, outs, strict=True)]
        return Signature(
            inputs=tuple(inputs),
            outputs=tuple(o for o in outputs if o is not None) if all(outputs) else (),
            format="tensors",
        )

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> TorchRuntime:
        torch = require("torch", cls.extra)
        file = path / meta["file"]
        if meta.get("kind") == "export":
            program = _load_program(file)
            placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
            vals = [placeholders[n].meta.get("val") for n in program.graph_signature.user_inputs]
            dtypes = [getattr(v, "dtype", None) for v in vals]
            return cls(program.module(), dtypes)
        try:
            module = torch.jit.load(str(file), map_location="cpu")
        except RuntimeError as exc:
            raise ModelFormatError(f"cannot load TorchScript model {file}: {exc}") from exc
        module.eval()  # serving is inference: dropout off, batch-norm running statistics on
        return cls(module)

    def predict(self, inputs: Arrays) -> Arrays:
        torch = require("torch", self.extra)
        args = []
        for i, (name, arr) in enumerate(inputs.items()):
            if arr.dtype.kind in ("O", "U", "S"):
                raise InvalidInput.for_field(name, "a numeric tensor", "strings")
            if not arr.flags.writeable:
                arr = arr.copy()  # torch.from_numpy warns on read-only buffers
            t = torch.from_numpy(arr)
            if self.dtypes and i < len(self.dtypes) and self.dtypes[i] is not None:
                t = t.to(self.dtypes[i])
            args.append(t)
        with torch.inference_mode():
            result = self.fn(*args)
        return as_outputs(_to_numpy(torch, result))


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold the model's code; torch.save() archives only data.pkl."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _load_program(file: Path) -> Any:
    torch = require("torch", "torch")
    try:
        return torch.export.load(str(file))
    except Exception as exc:  # torch raises assorted errors for foreign or corrupt archives
        raise ModelFormatError(f"cannot load exported program {file}: {exc}") from exc


def _spec(name: str, val: Any) -> TensorSpec | None:
    datatype = _DATATYPES.get(str(getattr(val, "dtype", "")))
    if datatype is None:
        return None
    shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)  # SymInt = dynamic
    return TensorSpec(name, datatype, shape)


def _to_numpy(torch: Any, result: Any) -> Any:
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    if isinstance(result, dict):
        return {k: _to_numpy(torch, v) for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return [_to_numpy(torch, v) for v in result]
    return np.asarray(result)
