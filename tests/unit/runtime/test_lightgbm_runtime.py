"""The LightGBM runtime: text-model storage with the classes kept, labels as the original gave."""

from __future__ import annotations

import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris, make_classification

from shipyard.errors import MissingDependency, ModelFormatError, UnsupportedModel
from shipyard.registry import Registry
from shipyard.runtime.lightgbm import LightGBMRuntime
from shipyard.runtime.loader import runtime_for_object

PARAMS = {"n_estimators": 10, "num_leaves": 7, "random_state": 0, "n_jobs": 1, "verbose": -1}


@pytest.fixture(scope="module")
def binary() -> tuple[pd.DataFrame, np.ndarray]:
    Xa, ya = make_classification(n_samples=300, n_features=5, n_informative=3, random_state=0)
    X = pd.DataFrame(Xa, columns=[f"f{i}" for i in range(5)])
    return X, np.where(ya == 1, "spam", "ham")


def columns(X: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: X[c].to_numpy() for c in X.columns}


def test_lgbm_classifier_is_matched_before_sklearn(binary: tuple[pd.DataFrame, np.ndarray]) -> None:
    clf = lgb.LGBMClassifier(**PARAMS).fit(*binary)
    assert runtime_for_object(clf) is LightGBMRuntime


def test_lgbm_binary_classifier_returns_the_original_string_labels(
    registry: Registry, binary: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = binary
    clf = lgb.LGBMClassifier(**PARAMS).fit(X, y)
    mv = registry.register(clf, "spam", sample=X.head(5), methods=["predict", "predict_proba"])

    assert mv.flavor == "lightgbm"
    assert mv.flavor_meta["classes"] == ["ham", "spam"]
    assert "model.txt" in mv.files
    assert mv.signature.format == "columns"
    assert mv.signature.input_names == list(X.columns)
    outputs = {o.name: (o.datatype, o.shape) for o in mv.signature.outputs}
    assert outputs == {"predict": ("BYTES", (-1,)), "predict_proba": ("FP64", (-1, 2))}

    got = registry.load("spam").predict_arrays(columns(X))
    np.testing.assert_array_equal(got["predict"], clf.predict(X))
    assert got["predict"].dtype == clf.predict(X).dtype
    np.testing.assert_allclose(got["predict_proba"], clf.predict_proba(X), rtol=1e-6)


def test_lgbm_multiclass_on_feature_names_with_spaces(registry: Registry) -> None:
    X, y = load_iris(return_X_y=True, as_frame=True)  # LightGBM renames 'sepal length (cm)'
    clf = lgb.LGBMClassifier(**PARAMS).fit(X, y)
    mv = registry.register(clf, "iris-lgbm", sample=X.head(5))
    assert mv.signature.input_names == list(X.columns)
    assert mv.flavor_meta["classes"] == [0, 1, 2]

    got = registry.load("iris-lgbm").predict_arrays(columns(X))
    np.testing.assert_array_equal(got["predict"], clf.predict(X))


def test_lgbm_regressor_on_a_2d_tensor(registry: Registry) -> None:
    X, y = load_diabetes(return_X_y=True)
    reg = lgb.LGBMRegressor(**PARAMS).fit(X, y)
    mv = registry.register(reg, "diabetes-lgbm", sample=X[:5])
    assert mv.flavor_meta["predict_returns"] == "values"
    assert [(s.name, s.shape) for s in mv.signature.inputs] == [("input", (-1, 10))]

    got = registry.load("diabetes-lgbm").predict_arrays({"input": X})
    np.testing.assert_allclose(got["predict"], reg.predict(X), rtol=1e-6)


def test_lgbm_booster_predicts_what_booster_predict_gives(
    registry: Registry, binary: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = binary
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, label=(y == "spam").astype(int)),
        num_boost_round=5,
    )
    registry.register(booster, "spam-booster", sample=X.head(5))
    got = registry.load("spam-booster").predict_arrays(columns(X))
    np.testing.assert_allclose(got["predict"], booster.predict(X), rtol=1e-6)


def test_lgbm_text_file_import_is_detected_by_content(
    registry: Registry, tmp_path: Path, binary: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = binary
    clf = lgb.LGBMClassifier(**PARAMS).fit(X, y)
    path = tmp_path / "spam.model"  # any suffix: the first line says 'tree'
    clf.booster_.save_model(str(path))

    mv = registry.register(path, "spam-file", sample=X.head(5))
    assert mv.flavor == "lightgbm"
    got = registry.load("spam-file").predict_arrays(columns(X))
    np.testing.assert_allclose(got["predict"], clf.predict_proba(X)[:, 1], rtol=1e-6)

    # with the classes given, the imported booster returns labels again
    registry.register(path, "spam-labels", sample=X.head(5), classes=["ham", "spam"])
    labels = registry.load("spam-labels").predict_arrays(columns(X))
    np.testing.assert_array_equal(labels["predict"], clf.predict(X))


def test_lgbm_import_checks_the_number_of_classes(
    registry: Registry, tmp_path: Path, binary: tuple[pd.DataFrame, np.ndarray]
) -> None:
    clf = lgb.LGBMClassifier(**PARAMS).fit(*binary)
    path = tmp_path / "model.txt"
    clf.booster_.save_model(str(path))
    with pytest.raises(ModelFormatError, match="2 classes"):
        registry.register(path, "spam", sample=binary[0].head(5), classes=["a", "b", "c"])


def test_a_text_file_that_is_not_lightgbm_is_not_claimed(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("trees are nice\n")
    assert not LightGBMRuntime.accepts_path(path)
    with pytest.raises(UnsupportedModel):
        registry.register(path, "notes")


def test_missing_lightgbm_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(MissingDependency, match=r"pip install 'shipyard\[lightgbm\]'"):
        LightGBMRuntime.load(tmp_path, {"file": "model.txt"})


def test_lgbm_pandas_categorical_column_arrives_as_strings(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    color = rng.choice(["red", "green", "blue"], size=300)
    X = pd.DataFrame({"color": pd.Categorical(color), "size": rng.normal(size=300)})
    y = (color == "red") ^ (X["size"].to_numpy() > 0.5)
    clf = lgb.LGBMClassifier(**PARAMS).fit(X, y)
    mv = registry.register(clf, "colors", sample=X.head(8))
    assert {s.name: s.datatype for s in mv.signature.inputs} == {"color": "BYTES", "size": "FP64"}

    got = registry.load("colors").predict_arrays({"color": color.astype(object), "size": X["size"].to_numpy()})
    np.testing.assert_array_equal(got["predict"], clf.predict(X))
