"""Custom Python models: subclasses of ``shipyard.Model``.

The version stores the source file that defines the class (plus any extra
``code_paths``) under ``code/`` and the model's own state under ``state/``.
Loading imports that stored source, never whatever happens to be installed,
so the version stays what was registered (its files are sha256-checked).
"""

from __future__ import annotations

import inspect
import shutil
import sys
import threading
import types
from pathlib import Path
from typing import Any

from shipyard.errors import ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Model, Runtime, as_outputs

_import_lock = threading.Lock()


class CustomRuntime(Runtime):
    flavor = "python"
    packages = ("numpy",)
    option_specs = (
        Option("code_paths", list[Path], "more .py files or folders stored beside the class's source "
               "(modules it imports)", default=[], applies_to="object"),
    )

    def __init__(self, model: Model) -> None:
        self.model = model

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        return isinstance(obj, Model)

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        klass = type(obj)
        try:
            source = Path(inspect.getfile(klass))
        except (TypeError, OSError):
            source = None
        if source is None or not source.is_file() or source.suffix != ".py":
            raise ModelFormatError(
                f"cannot find the source file of {klass.__qualname__}: define the class in a "
                ".py module (not an interactive session) so shipyard can store it with the version"
            )
        code = dest / "code"
        code.mkdir()
        shutil.copyfile(source, code / source.name)
        for extra in options.get("code_paths") or ():
            p = Path(extra)
            if p.is_dir():
                shutil.copytree(p, code / p.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copyfile(p, code / p.name)
        state = dest / "state"
        state.mkdir()
        obj.save(state)
        return {"module_file": source.name, "class": klass.__qualname__}

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> CustomRuntime:
        code = path / "code"
        module_file = code / meta["module_file"]
        # A unique module name per artifact, so two versions of one class can live side by side.
        mod_name = f"_shipyard_model_{abs(hash(str(path)))}_{module_file.stem}"
        with _import_lock:
            # Helper modules shipped in code/ that the model module imports at top level are
            # dropped from sys.modules afterwards, so two versions whose helpers differ never
            # share them. The folder stays on sys.path for imports made later, inside predict.
            before = set(sys.modules)
            if str(code) not in sys.path:
                sys.path.insert(0, str(code))
            try:
                # Compile the verified source ourselves: a stray .pyc beside it is never used.
                module = types.ModuleType(mod_name)
                module.__file__ = str(module_file)
                sys.modules[mod_name] = module
                source = module_file.read_text()
                exec(compile(source, str(module_file), "exec"), module.__dict__)
            finally:
                for name in set(sys.modules) - before:
                    file = getattr(sys.modules[name], "__file__", None) or ""
                    if name != mod_name and file.startswith(str(code)):
                        del sys.modules[name]
        target: Any = module
        for part in meta["class"].split("."):
            target = getattr(target, part)
        try:
            model = target()
        except TypeError as exc:
            raise ModelFormatError(
                f"{meta['class']} must be constructible without arguments to load; keep state in "
                f"save()/load() instead ({exc})"
            ) from exc
        model.load(path / "state")
        return cls(model)

    def predict(self, inputs: Arrays) -> Arrays:
        m = self.model
        return as_outputs(m.postprocess(m.predict(m.preprocess(inputs))))
