"""XGBoost Boosters and scikit-learn-API estimators, stored in XGBoost's own format.

An in-memory model is written with ``save_model("model.ubj")`` (UBJSON, no
pickle). For the scikit-learn wrappers (``XGBClassifier``, ``XGBRegressor``...)
the wrapper class is recorded, so loading rebuilds the same wrapper and
``predict`` returns exactly what the original returned: class labels for
classifiers, values for regressors. A bare ``Booster`` predicts the way
``booster.predict(xgboost.DMatrix(X))`` does.

Files: ``.ubj`` and ``.json`` models written by XGBoost. A ``.json`` file is
checked to really be an XGBoost model, since many formats share that suffix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import ModelFormatError
from shipyard.options import Option
from shipyard.runtime.base import Arrays, Runtime

MODEL_FILE = "model.ubj"
SUFFIXES = (".ubj", ".json")

# The scikit-learn wrappers a version may name; loading instantiates only these.
WRAPPERS = ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")
CLASSIFIERS = ("XGBClassifier", "XGBRFClassifier")
_BY_ESTIMATOR_TYPE = {"classifier": "XGBClassifier", "regressor": "XGBRegressor", "ranker": "XGBRanker"}


def _from_xgboost(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] == "xgboost" for c in type(obj).__mro__)


class XGBoostRuntime(Runtime):
    flavor = "xgboost"
    extra = "xgboost"
    packages = ("xgboost", "xgboost-cpu", "numpy", "pandas")
    option_specs = (
        Option("methods", list[str], "outputs: predict, and predict_proba for classifiers", default=["predict"]),
    )

    def __init__(self, model: Any, wrapper: str | None, methods: list[str]) -> None:
        self.model = model
        self.wrapper = wrapper
        self.methods = methods
        booster = model.get_booster() if wrapper else model
        self.feature_names: list[str] | None = booster.feature_names

    # -- registration ------------------------------------------------------

    @classmethod
    def accepts_object(cls, obj: Any) -> bool:
        if not _from_xgboost(obj):
            return False
        xgb = require("xgboost", cls.extra)
        return isinstance(obj, (xgb.Booster, xgb.XGBModel))

    @classmethod
    def save(cls, obj: Any, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        xgb = require("xgboost", cls.extra)
        wrapper = None
        if isinstance(obj, xgb.XGBModel):
            wrapper = next((c.__name__ for c in type(obj).__mro__ if c.__name__ in WRAPPERS), None)
            if wrapper is None:
                raise ModelFormatError(
                    f"unsupported XGBoost estimator {type(obj).__qualname__}; register its booster "
                    "(model.get_booster()) or one of " + ", ".join(WRAPPERS)
                )
        obj.save_model(str(dest / MODEL_FILE))
        return _meta(MODEL_FILE, wrapper, options.get("methods"))

    @classmethod
    def accepts_path(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix == ".ubj":
            return True
        return path.suffix == ".json" and _is_xgboost_json(path)

    @classmethod
    def import_path(cls, src: Path, dest: Path, *, trust_pickle: bool = False, **options: Any) -> dict[str, Any]:
        if src.suffix not in SUFFIXES:
            raise ModelFormatError(f"'{src}' is not an XGBoost model file ({', '.join(SUFFIXES)})")
        if src.suffix == ".json" and not _is_xgboost_json(src):
            raise ModelFormatError(f"'{src}' is a JSON file but not an XGBoost model")
        xgb = require("xgboost", cls.extra)
        booster = xgb.Booster()
        try:
            booster.load_model(str(src))
        except xgb.core.XGBoostError as exc:
            raise ModelFormatError(f"XGBoost cannot read '{src}': {exc}") from exc
        # The scikit-learn wrappers leave their estimator type in the model's attributes.
        sk = booster.attr("scikit_learn")
        wrapper = _BY_ESTIMATOR_TYPE.get(json.loads(sk).get("_estimator_type", "")) if sk else None
        name = "model" + src.suffix  # XGBoost picks the format from the suffix
        shutil.copyfile(src, dest / name)
        return _meta(name, wrapper, options.get("methods"))

    # -- serving -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> XGBoostRuntime:
        xgb = require("xgboost", cls.extra)
        file = str(path / meta["file"])
        wrapper = meta.get("wrapper")
        if wrapper:
            if wrapper not in WRAPPERS:
                raise ModelFormatError(f"unknown XGBoost wrapper {wrapper!r} in the version metadata")
            model = getattr(xgb, wrapper)()
            model.load_model(file)
        else:
            model = xgb.Booster()
            model.load_model(file)
        return cls(model, wrapper, list(meta.get("methods", ["predict"])))

    def predict(self, inputs: Arrays) -> Arrays:
        X = _features(inputs, self.feature_names, self.extra)
        if self.wrapper is None:
            xgb = require("xgboost", self.extra)
            return {"predict": np.asarray(self.model.predict(xgb.DMatrix(X)))}
        return {m: np.asarray(getattr(self.model, m)(X)) for m in self.methods}


def _meta(file: str, wrapper: str | None, requested: Any) -> dict[str, Any]:
    classifier = wrapper in CLASSIFIERS
    allowed = ["predict", "predict_proba"] if classifier else ["predict"]
    methods = ["predict"]
    if requested:
        methods = [requested] if isinstance(requested, str) else list(requested)
        bad = [m for m in methods if m not in allowed]
        if bad:
            what = f"an {wrapper}" if wrapper else "a Booster"
            raise ModelFormatError(f"{what} offers {' and '.join(allowed)}, not {bad[0]!r}")
    return {
        "file": file,
        "wrapper": wrapper,
        # what 'predict' returns, so clients know labels from scores
        "predict_returns": "labels" if classifier else "values",
        "methods": methods,
    }


def _is_xgboost_json(path: Path) -> bool:
    """XGBoost writes ``{"learner": ...`` first; reading the head avoids parsing big files."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"{") and b'"learner"' in head


def _features(inputs: Arrays, names: list[str] | None, extra: str) -> Any:
    """A DataFrame with the model's feature names when it has them, else a 2-D array."""
    if names and len(names) == len(inputs) and all(n in inputs for n in names):
        pd = require("pandas", extra)
        return pd.DataFrame({n: inputs[n] for n in names}, columns=names)
    X = np.column_stack(list(inputs.values()))
    if names and X.ndim == 2 and X.shape[1] == len(names):
        # a single 2-D tensor (or differently named columns), in the model's feature order
        pd = require("pandas", extra)
        return pd.DataFrame(X, columns=names)
    return X
