"""Per-prediction feature attributions with SHAP (extra ``explain``: the ``shap`` library).

Which explainer, and what it explains (the attributions of a row plus its base value
add up to that number):

* a scikit-learn tree ensemble or tree (RandomForest, ExtraTrees, GradientBoosting,
  DecisionTree): ``shap.TreeExplainer``, exact; a classifier's *probability* of the
  class it predicts for the row, a regressor's prediction;
* a scikit-learn linear model (LogisticRegression, LinearRegression, Ridge, ...):
  ``shap.LinearExplainer`` over the version's check set; a classifier's *margin*
  (``decision_function``, the log-odds) of the class it predicts, a regressor's prediction;
* anything else with tabular inputs (a Pipeline, a custom model, a graph):
  ``shap.SamplingExplainer`` over up to ``BACKGROUND_ROWS`` rows of the check set, on the
  first output (for a 2-D output such as probabilities, the column of the row's largest value);
  its attributions are estimates.

Inputs must be numeric columns (a ``columns`` signature of 1-D inputs): one attribution
per input. Cost is bounded by the caller (``explain_max_rows`` per request).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import InvalidInput
from shipyard.registry.loaded import LoadedModel
from shipyard.runtime.base import Arrays

EXTRA = "explain"
BACKGROUND_ROWS = 100
"""Rows of the check set a linear or sampling explainer takes as its background data."""


@dataclass(frozen=True)
class Explanation:
    """The attributions of each row: ``base_values[i] + sum(attributions[f][i]) == values[i]``."""

    method: str
    """``tree``, ``linear`` or ``sampling``."""
    output: str
    """What is explained: ``probability``, ``margin`` or an output's name."""
    features: list[str]
    base_values: np.ndarray[Any, Any]
    attributions: np.ndarray[Any, Any]
    """(rows, features)."""
    values: np.ndarray[Any, Any]
    """The explained number of each row."""
    classes: list[Any] | None = None
    """A classifier's class of each row (whose probability or margin is explained)."""

    def to_json(self) -> dict[str, Any]:
        rows = []
        for i in range(len(self.values)):
            row: dict[str, Any] = {
                "value": float(self.values[i]),
                "base_value": float(self.base_values[i]),
                "attributions": {f: float(self.attributions[i, j]) for j, f in enumerate(self.features)},
            }
            if self.classes is not None:
                c = self.classes[i]
                row["class"] = c.item() if hasattr(c, "item") else c
            rows.append(row)
        return {"method": self.method, "output": self.output, "explanations": rows}


class Explainer:
    """Explains one loaded version; built once per version (a tree explainer walks the trees once)."""

    def __init__(self, model: LoadedModel, background: Arrays | None) -> None:
        shap = require("shap", EXTRA, "shap")
        sig = model.signature
        if sig.format != "columns" or any(len(s.shape) != 1 or s.datatype in ("BYTES", "BOOL") for s in sig.inputs):
            raise InvalidInput(f"{model.version.ref} takes {', '.join(s.name + ' ' + s.describe() for s in sig.inputs)}"
                               "; explanations need numeric columns, one value per feature", field="model")
        self.model = model
        self.features = [s.name for s in sig.inputs]
        self._lock = threading.Lock()  # shap explainers are not documented as thread-safe
        estimator = getattr(model.runtime, "model", None) if model.version.flavor == "sklearn" else None
        bg = None if background is None else self._matrix(background)[:BACKGROUND_ROWS]
        self.estimator = estimator
        self.classifier = estimator is not None and hasattr(estimator, "classes_")
        if estimator is not None and _is_tree(estimator):
            self.method = "tree"
            self._shap = shap.TreeExplainer(estimator)
        elif estimator is not None and _is_linear(estimator) and bg is not None:
            self.method = "linear"
            self._shap = shap.LinearExplainer(estimator, bg)
        else:
            if bg is None:
                raise InvalidInput(f"{model.version.ref} has no check set to explain against; register it "
                                   "with a sample or check_data", field="model")
            self.method = "sampling"
            self.estimator = None
            self.classifier = False
            self._output = next(iter(s.name for s in sig.outputs), None)
            self._shap = shap.SamplingExplainer(self._predict_first, bg)

    def _matrix(self, arrays: Arrays) -> np.ndarray[Any, Any]:
        return np.column_stack([np.asarray(arrays[f], dtype=np.float64) for f in self.features])

    def _predict_first(self, X: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = self.model.run(self.model.signature.validate({f: X[:, j] for j, f in enumerate(self.features)}))
        values = np.asarray(out[self._output] if self._output in out else next(iter(out.values())), dtype=np.float64)
        return values

    def explain(self, inputs: Arrays) -> Explanation:
        """Attributions for validated ``inputs`` (blocking: run it off the event loop)."""
        X = self._matrix(inputs)
        with self._lock:
            if self.method == "sampling":
                return self._sampled(X)
            raw = self._shap.shap_values(X)
            expected = np.atleast_1d(np.asarray(self._shap.expected_value, dtype=np.float64))
        sv = np.asarray(raw, dtype=np.float64)
        assert self.estimator is not None
        if not self.classifier:
            base = np.full(len(X), expected[0])
            att = sv.reshape(len(X), len(self.features))
            return Explanation(self.method, "prediction", self.features, base, att, base + att.sum(axis=1))
        predicted = np.asarray(self.estimator.predict(self._named(X)))
        index = np.searchsorted(self.estimator.classes_, predicted)
        if sv.ndim == 3:  # (rows, features, classes)
            att = sv[np.arange(len(X)), :, index]
            base = expected[index]
        elif len(expected) == 1:  # one margin (binary linear): the margin of class 1; class 0's is its negative
            sign = np.where(index == 1, 1.0, -1.0)
            att = sv * sign[:, None]
            base = expected[0] * sign
        else:
            raise InvalidInput(f"cannot read the explainer's output for {self.model.version.ref}", field="model")
        output = "probability" if self.method == "tree" else "margin"
        return Explanation(self.method, output, self.features, base, att, base + att.sum(axis=1), list(predicted))

    def _named(self, X: np.ndarray[Any, Any]) -> Any:
        """``X`` as the estimator was fitted: a frame with its feature names when it has them (else sklearn warns)."""
        names = getattr(self.estimator, "feature_names_in_", None)
        if names is None:
            return X
        import pandas as pd  # the estimator was fitted on a frame: pandas is there

        return pd.DataFrame(X, columns=self.features)[list(names)]

    def _sampled(self, X: np.ndarray[Any, Any]) -> Explanation:
        values = self._predict_first(X)
        raw = np.asarray(self._shap.shap_values(X, silent=True), dtype=np.float64)
        expected = np.atleast_1d(np.asarray(self._shap.expected_value, dtype=np.float64))
        if values.ndim == 2:
            index = values.argmax(axis=1)
            att = raw[np.arange(len(X)), :, index] if raw.ndim == 3 else raw
            base = expected[index]
            explained = values[np.arange(len(X)), index]
        else:
            att, base, explained = raw.reshape(len(X), -1), np.full(len(X), expected[0]), values
        return Explanation("sampling", str(self._output), self.features, base, att, explained)


def _is_tree(estimator: Any) -> bool:
    name = type(estimator).__name__
    return type(estimator).__module__.startswith("sklearn.") and (
        "Forest" in name or "Trees" in name or name.startswith("DecisionTree")
        or name.startswith("GradientBoosting"))


def _is_linear(estimator: Any) -> bool:
    return type(estimator).__module__.startswith("sklearn.linear_model") and hasattr(estimator, "coef_")
