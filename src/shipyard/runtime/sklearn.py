"""scikit-learn estimators and Pipelines, stored with skops (no pickle by default).

skops refuses to rebuild types it does not know. Types from scikit-learn, NumPy
and SciPy are trusted; any other type found at save time (say a custom
transformer) needs ``trust_pickle=True`` and is then recorded with the version,
so loading later trusts exactly that list and nothing more.

A pickle or joblib *file* is refused unless ``trust_pickle=True``; when
trusted, it is converted to skops on the way in when skops can hold it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import ModelFormatError, UnsafeFormat
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime

logger = logging.getLogger(__name__)

SAFE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav")
SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.pkl"


def _is_sklearn(obj: Any) -> bool:
    mod = type(obj).__module__
    if mod.startswith("sklearn."):
        return True
    # custom estimators built on sklearn's base classes
    return any(c.__module__.startswith("sklearn.base") for c in type(obj).__mro__[1:]) and hasattr(obj, "predict")


class SklearnRuntime(Runtime):
    flavor = "sklearn"
    extra = "sklearn"
    packages = ("scikit-learn", "skops", "numpy", "scipy", "pandas")
    option_specs = (
        Option("methods", list[str], "estimator methods whose results are the outputs, e.g. predict_proba",
               default=["predict"]),
    )

    def __init__(self, model: Any, methods: list[str]) -> None:
        self.model = model
        self.methods = methods
        self.feature_names = getattr(model, "feature_names_in_", None)
        if self.feature_names is not None:
            require("pandas", "sklearn")  # at load, not on the first request: frames are built per call

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        return _is_sklearn(obj)

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        sio = import_skops()
        methods = _methods(obj, options.get("methods"))
        data = sio.dumps(obj)
        untrusted = [t for t in sio.get_untrusted_types(data=data) if not t.startswith(SAFE_PREFIXES)]
        if untrusted and not trust_pickle:
            raise ModelFormatError(
                "the model contains types outside scikit-learn/NumPy/SciPy that skops will only "
                f"rebuild if you trust them: {', '.join(untrusted)}. Pass trust_pickle=True "
                "(--trust-pickle) if this code is yours"
            )
        (dest / SKOPS_FILE).write_bytes(data)
        return {"file": SKOPS_FILE, "methods": methods, "trusted_types": untrusted}

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        return path.is_file() and path.suffix in (".skops", *PICKLE_SUFFIXES)

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        if src.suffix == ".skops":
            sio = import_skops()
            untrusted = [t for t in sio.get_untrusted_types(file=src) if not t.startswith(SAFE_PREFIXES)]
            if untrusted and not trust_pickle:
                raise ModelFormatError(
                    f"'{src}' holds types skops does not trust: {', '.join(untrusted)}; "
                    "pass --trust-pickle if you trust where it came from"
                )
            obj = sio.load(src, trusted=sio.get_untrusted_types(file=src))
            shutil.copyfile(src, dest / SKOPS_FILE)
            return {"file": SKOPS_FILE, "methods": _methods(obj, options.get("methods")), "trusted_types": untrusted}
        if not trust_pickle:
            raise UnsafeFormat(str(src))
        joblib = require("joblib", "sklearn")
        obj = joblib.load(src)
        try:
            return cls.save(obj, dest, trust_pickle=True, **options)
        except Exception as exc:  # skops cannot hold every object; keep the trusted pickle
            logger.warning("could not convert %s to skops (%s); storing the trusted pickle", src, exc)
            for f in dest.iterdir():
                f.unlink()
            shutil.copyfile(src, dest / PICKLE_FILE)
            return {"file": PICKLE_FILE, "methods": _methods(obj, options.get("methods")), "pickle": True}

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> SklearnRuntime:
        if meta.get("pickle"):
            # Trust was given explicitly at registration and the file's sha256 was checked.
            joblib = require("joblib", "sklearn")
            model = joblib.load(path / meta["file"])
        else:
            sio = import_skops()
            file = path / meta["file"]
            allowed = set(meta.get("trusted_types", []))
            found = sio.get_untrusted_types(file=file)
            extra = [t for t in found if not t.startswith(SAFE_PREFIXES) and t not in allowed]
            if extra:
                raise ModelFormatError(f"{file} now holds untrusted types {extra}; refusing to load")
            model = sio.load(file, trusted=found)
        return cls(model, list(meta.get("methods", ["predict"])))

    def predict(self, inputs: Arrays) -> Arrays:
        X = self._features(inputs)
        return {m: np.asarray(getattr(self.model, m)(X)) for m in self.methods}

    def _features(self, inputs: Arrays) -> Any:
        if self.feature_names is not None:
            pd = require("pandas", "sklearn")
            values = list(inputs.values())
            first = values[0].dtype
            if first.kind != "O" and all(v.ndim == 1 and v.dtype == first for v in values):
                # One 2-D block is ~10x cheaper to build than a frame from many columns.
                return pd.DataFrame(np.column_stack(values), columns=list(inputs), copy=False)
            return pd.DataFrame(dict(inputs), columns=list(inputs))
        if len(inputs) == 1:
            return next(iter(inputs.values()))
        return np.column_stack(list(inputs.values()))


# skops lists scikit-learn's estimators at import time, and scikit-learn's listing walks every
# subpackage, importing array-API shims for torch and dask (and pytest, for test helpers) when
# they are installed: seconds and hundreds of MB that no model needs. While skops imports,
# those are made to look absent (the walk skips what fails to import); afterwards they import
# as usual. pandas too: scikit-learn imports it eagerly when installed (``sklearn.utils.fixes``,
# which keeps it in a name nothing reads) and checks ``sys.modules`` for it when given data, so a
# model fed NumPy arrays never needs it: 65 MB and a second of start-up. A model that needs
# column names imports it when it loads (``SklearnRuntime``).
_UNNEEDED_FOR_SKOPS = ("torch", "dask", "pytest", "pandas")


def _no_estimators(*args: Any, **kwargs: Any) -> list[tuple[str, type]]:
    return []


class _HideWhileImporting(importlib.abc.MetaPathFinder):
    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} is not imported while skops loads", name=fullname)
        return None


class _NoScipyListing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``skops.io._trusted_types`` without its listing of SciPy's ufuncs.

    skops names every public ufunc of ``scipy.special`` when it imports (a quarter to half a
    second of a server's start, looking each one's module up). Like the estimator listing, it
    only widens skops' default trust, which shipyard never uses: SciPy types pass shipyard's own
    check by name (SAFE_PREFIXES).
    """

    MODULE = "skops.io._trusted_types"

    def __init__(self) -> None:
        self._inner: Any = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._inner, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        utils: Any = importlib.import_module("skops.io._utils")
        listing = utils.get_public_type_names

        def public_type_names(module: Any, oftype: Any) -> list[str]:
            return [] if module.__name__.startswith("scipy") else listing(module, oftype)

        utils.get_public_type_names = public_type_names
        try:
            self._inner.exec_module(module)
        finally:
            utils.get_public_type_names = listing


def import_skops() -> Any:
    """``skops.io``, imported without dragging torch and dask in behind it."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    hide = tuple(n for n in _UNNEEDED_FOR_SKOPS if n not in sys.modules)
    finder, no_scipy_listing = _HideWhileImporting(hide), _NoScipyListing()
    sys.meta_path[:0] = [finder, no_scipy_listing]
    listing: Any = None
    try:
        sk_utils: Any = require("sklearn.utils", "sklearn", "scikit-learn")
        # skops lists every scikit-learn estimator as trusted when it imports (walking and importing
        # all of scikit-learn: half a second, 300 modules, 16 MB). shipyard never relies on that list:
        # it trusts scikit-learn, NumPy and SciPy types by name itself (SAFE_PREFIXES) and passes skops
        # the types it checked. So skops imports with an empty listing; its own default in this process
        # trusts fewer types (stricter), never more.
        listing, sk_utils.all_estimators = sk_utils.all_estimators, _no_estimators
        return require("skops.io", "sklearn", "skops")
    finally:
        if listing is not None:
            sk_utils.all_estimators = listing
        sys.meta_path.remove(finder)
        sys.meta_path.remove(no_scipy_listing)
        for name in [m for m in sys.modules if m.startswith("sklearn.externals.array_api_compat.")]:
            if name.split(".")[4:5] and name.split(".")[4] in hide:
                del sys.modules[name]  # half-imported shims; scikit-learn re-imports them on demand


def _methods(obj: Any, requested: Any) -> list[str]:
    if requested:
        methods = [requested] if isinstance(requested, str) else list(requested)
        missing = [m for m in methods if not hasattr(obj, m)]
        if missing:
            raise ModelFormatError(f"the model has no method {missing[0]!r}")
        return methods
    return ["predict"]
