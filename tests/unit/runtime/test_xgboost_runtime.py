"""The XGBoost runtime: native .ubj/.json storage, wrappers rebuilt, predictions unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_diabetes, load_iris

from shipyard.errors import MissingDependency, ModelFormatError, UnsupportedModel
from shipyard.registry import Registry
from shipyard.runtime.loader import runtime_for_object
from shipyard.runtime.xgboost import XGBoostRuntime


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


@pytest.fixture(scope="module")
def classifier(iris: tuple[pd.DataFrame, np.ndarray]) -> xgb.XGBClassifier:
    X, y = iris
    return xgb.XGBClassifier(n_estimators=8, max_depth=2, random_state=0, n_jobs=1).fit(X, y)


def test_xgb_classifier_is_matched_before_sklearn(classifier: xgb.XGBClassifier) -> None:
    assert runtime_for_object(classifier) is XGBoostRuntime


def test_xgb_classifier_round_trip_returns_the_original_labels(
    registry: Registry, iris: tuple[pd.DataFrame, np.ndarray], classifier: xgb.XGBClassifier
) -> None:
    X, _ = iris
    mv = registry.register(classifier, "iris-xgb", sample=X.head(10))

    assert mv.flavor == "xgboost"
    assert mv.flavor_meta["wrapper"] == "XGBClassifier"
    assert mv.flavor_meta["predict_returns"] == "labels"
    assert "model.ubj" in mv.files
    sig = mv.signature
    assert sig.format == "columns"
    assert sig.input_names == list(X.columns)
    assert {s.datatype for s in sig.inputs} == {"FP64"}
    assert [(o.name, o.datatype, o.shape) for o in sig.outputs] == [("predict", "INT64", (-1,))]

    loaded = registry.load("iris-xgb")
    got = loaded.predict_arrays({c: X[c].to_numpy() for c in X.columns})
    np.testing.assert_array_equal(got["predict"], classifier.predict(X))


def test_xgb_columns_are_reordered_to_the_model_features(
    registry: Registry, iris: tuple[pd.DataFrame, np.ndarray], classifier: xgb.XGBClassifier
) -> None:
    X, _ = iris
    shuffled = X[list(reversed(X.columns))]
    registry.register(classifier, "iris-xgb", sample=shuffled.head(5))
    got = registry.load("iris-xgb").predict(shuffled)
    np.testing.assert_array_equal(got["predict"].to_numpy(), classifier.predict(X))


def test_xgb_classifier_can_also_return_probabilities(
    registry: Registry, iris: tuple[pd.DataFrame, np.ndarray], classifier: xgb.XGBClassifier
) -> None:
    X, _ = iris
    mv = registry.register(
        classifier, "iris-xgb", sample=X.head(5), methods=["predict", "predict_proba"]
    )
    assert [o.name for o in mv.signature.outputs] == ["predict", "predict_proba"]
    got = registry.load("iris-xgb").predict_arrays({c: X[c].to_numpy() for c in X.columns})
    np.testing.assert_array_equal(got["predict"], classifier.predict(X))
    np.testing.assert_allclose(got["predict_proba"], classifier.predict_proba(X), rtol=1e-6)


def test_xgb_regressor_on_a_2d_tensor(registry: Registry) -> None:
    X, y = load_diabetes(return_X_y=True)
    reg = xgb.XGBRegressor(n_estimators=10, max_depth=3, random_state=0, n_jobs=1).fit(X, y)
    mv = registry.register(reg, "diabetes", sample=X[:4])

    assert mv.flavor_meta["wrapper"] == "XGBRegressor"
    assert mv.flavor_meta["predict_returns"] == "values"
    assert mv.signature.format == "tensors"
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("input", "FP64", (-1, 10))]
    got = registry.load("diabetes").predict_arrays({"input": X})
    np.testing.assert_allclose(got["predict"], reg.predict(X), rtol=1e-6)


def test_xgb_regressor_refuses_predict_proba(registry: Registry) -> None:
    X, y = load_diabetes(return_X_y=True)
    reg = xgb.XGBRegressor(n_estimators=2, n_jobs=1).fit(X, y)
    with pytest.raises(ModelFormatError, match="predict_proba"):
        registry.register(reg, "diabetes", sample=X[:4], methods=["predict_proba"])


def test_xgb_booster_predicts_like_booster_predict_on_a_dmatrix(
    registry: Registry, iris: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = iris
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1},
        xgb.DMatrix(X, label=y),
        num_boost_round=5,
    )
    mv = registry.register(booster, "iris-booster", sample=X.head(5))
    assert mv.flavor_meta["wrapper"] is None

    loaded = registry.load("iris-booster")
    expected = booster.predict(xgb.DMatrix(X))
    got = loaded.predict_arrays({c: X[c].to_numpy() for c in X.columns})
    np.testing.assert_allclose(got["predict"], expected, rtol=1e-6)
    # a plain 2-D array works too: the model's feature names are put back on it
    mv2 = registry.register(booster, "iris-booster-2d", sample=X.to_numpy()[:5])
    assert mv2.signature.format == "tensors"
    got2 = registry.load("iris-booster-2d").predict_arrays({"input": X.to_numpy()})
    np.testing.assert_allclose(got2["predict"], expected, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgb_file_import_keeps_the_wrapper_it_was_saved_from(
    registry: Registry,
    tmp_path: Path,
    iris: tuple[pd.DataFrame, np.ndarray],
    classifier: xgb.XGBClassifier,
    suffix: str,
) -> None:
    X, _ = iris
    path = tmp_path / f"iris{suffix}"
    classifier.save_model(path)

    mv = registry.register(path, "iris-file", sample=X.head(5))
    assert mv.flavor == "xgboost"
    assert mv.flavor_meta["file"] == f"model{suffix}"
    assert mv.flavor_meta["wrapper"] == "XGBClassifier"
    got = registry.load("iris-file").predict_arrays({c: X[c].to_numpy() for c in X.columns})
    np.testing.assert_array_equal(got["predict"], classifier.predict(X))


def test_a_json_file_that_is_not_xgboost_is_not_claimed(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"learning_rate": 0.1}))
    assert not XGBoostRuntime.accepts_path(path)
    with pytest.raises(UnsupportedModel, match="cannot tell the model format"):
        registry.register(path, "not-a-model")


def test_missing_xgboost_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # makes `import xgboost` fail
    with pytest.raises(MissingDependency, match=r"pip install 'shipyard\[xgboost\]'"):
        XGBoostRuntime.load(tmp_path, {"file": "model.ubj", "wrapper": None})
