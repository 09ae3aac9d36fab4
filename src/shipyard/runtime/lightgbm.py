"""LightGBM Boosters and scikit-learn-API estimators, stored as LightGBM text models.

Only the booster is written (``booster.save_model("model.txt")``, no pickle).
A bare Booster's ``predict`` gives probabilities for classification, so for an
``LGBMClassifier`` the classes are stored with the version and labels are
rebuilt exactly as ``LGBMClassifier.predict`` does: argmax of the class
probabilities, mapped through ``classes_``.

Files: LightGBM text models (first line ``tree``), whatever their suffix. An
imported file predicts raw Booster output unless ``classes=[...]`` is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime

MODEL_FILE = "model.txt"


def _from_lightgbm(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "lightgbm" for c in type(obj).__mro__)


class LightGBMRuntime(Runtime):
    flavor = "lightgbm"
    extra = "lightgbm"
    packages = ("lightgbm", "numpy", "pandas")
    option_specs = (
        Option("methods", list[str], "outputs: predict, and predict_proba for classifiers", default=["predict"]),
        Option("classes", list[int | float | str],
               "class labels of a classifier's booster file, so predict gives labels, not probabilities",
               applies_to="file"),
    )

    def __init__(self, booster: Any, classes: np.ndarray[Any, Any] | None, methods: list[str]) -> None:
        self.booster = booster
        self.classes = classes
        self.methods = methods
        self.feature_names: list[str] = list(booster.feature_name())
        self.categorical = bool(getattr(booster, "pandas_categorical", None))

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        if not _from_lightgbm(obj):
            return False
        lgb = require("lightgbm", cls.extra)
        return isinstance(obj, (lgb.Booster, lgb.LGBMModel))

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        lgb = require("lightgbm", cls.extra)
        classes = None
        if isinstance(obj, lgb.LGBMModel):
            if callable(obj.objective):
                # LGBMClassifier.predict returns raw scores for custom objectives; so do we.
                classes = None
            elif isinstance(obj, lgb.LGBMClassifier):
                classes = np.asarray(obj.classes_)
            booster = obj.booster_
        else:
            booster = obj
        booster.save_model(str(dest / MODEL_FILE))
        return _meta(classes, options.get("methods"))

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        return path.is_file() and _is_lightgbm_text(path)

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        if not _is_lightgbm_text(src):
            raise ModelFormatError(f"'{src}' is not a LightGBM text model (its first line is not 'tree')")
        lgb = require("lightgbm", cls.extra)
        try:
            booster = lgb.Booster(model_file=str(src))
        except lgb.basic.LightGBMError as exc:
            raise ModelFormatError(f"LightGBM cannot read '{src}': {exc}") from exc
        classes = None
        if options.get("classes") is not None:
            classes = np.asarray(options["classes"])
            n = max(2, booster.num_model_per_iteration())
            if classes.ndim != 1 or len(classes) != n:
                raise ModelFormatError(f"classes= must list the model's {n} classes, got {classes.tolist()}")
        shutil.copyfile(src, dest / MODEL_FILE)
        return _meta(classes, options.get("methods"))

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> LightGBMRuntime:
        lgb = require("lightgbm", cls.extra)
        booster = lgb.Booster(model_file=str(path / meta["file"]))
        classes = None
        if meta.get("classes") is not None:
            classes = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        return cls(booster, classes, list(meta.get("methods", ["predict"])))

    def predict(self, inputs: Arrays) -> Arrays:
        raw = np.asarray(self.booster.predict(self._features(inputs)))
        if self.classes is None:
            return {"predict": raw}
        # exactly LGBMClassifier.predict_proba / predict
        proba = np.vstack((1.0 - raw, raw)).transpose() if raw.ndim == 1 else raw
        out: Arrays = {}
        for m in self.methods:
            out[m] = proba if m == "predict_proba" else self.classes[np.argmax(proba, axis=1)]
        return out

    def _features(self, inputs: Arrays) -> Any:
        names = self.feature_names
        if len(names) == len(inputs) and all(n in inputs for n in names):
            cols = {n: inputs[n] for n in names}
        elif any(a.ndim != 1 for a in inputs.values()):
            return np.column_stack(list(inputs.values()))
        else:
            cols = dict(inputs)  # positional, as LightGBM reads a DataFrame
        if not self.categorical and all(a.dtype.kind != "O" for a in cols.values()):
            return np.column_stack(list(cols.values()))
        # string columns of a model trained on pandas categoricals: LightGBM maps them
        # to the categories it stored, but only from a DataFrame of 'category' columns
        pd = require("pandas", self.extra)
        frame = pd.DataFrame(cols)
        for c in frame.columns:
            if frame[c].dtype == object:
                frame[c] = frame[c].astype("category")
        return frame


def _meta(classes: np.ndarray[Any, Any] | None, requested: Any) -> dict[str, Any]:
    allowed = ["predict", "predict_proba"] if classes is not None else ["predict"]
    methods = ["predict"]
    if requested:
        methods = [requested] if isinstance(requested, str) else list(requested)
        bad = [m for m in methods if m not in allowed]
        if bad:
            raise ModelFormatError(f"this LightGBM model offers {' and '.join(allowed)}, not {bad[0]!r}")
    meta: dict[str, Any] = {"file": MODEL_FILE, "methods": methods, "classes": None}
    if classes is not None:
        meta["classes"] = classes.tolist()
        meta["classes_dtype"] = classes.dtype.str
    meta["predict_returns"] = "labels" if classes is not None else "values"
    return meta


def _is_lightgbm_text(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.readline(16).strip() == b"tree"
    except OSError:
        return False
