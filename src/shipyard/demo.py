"""The demo model of ``shipyard quickstart``: a RandomForest on the iris data shipped with scikit-learn."""

from __future__ import annotations

from typing import Any

from shipyard._extras import require
from shipyard.registry import ModelVersion, Registry

DEMO_NAME = "demo"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]


def train_demo_model() -> tuple[Any, Any, float]:
    """Train a 100-tree RandomForest on iris; returns (model, features DataFrame, holdout accuracy)."""
    datasets = require("sklearn.datasets", "sklearn", "scikit-learn")
    ensemble = require("sklearn.ensemble", "sklearn", "scikit-learn")
    model_selection = require("sklearn.model_selection", "sklearn", "scikit-learn")
    X, y = datasets.load_iris(return_X_y=True, as_frame=True)
    X.columns = FEATURES
    X_train, X_test, y_train, y_test = model_selection.train_test_split(X, y, test_size=0.2, random_state=0)
    model = ensemble.RandomForestClassifier(n_estimators=100, random_state=0).fit(X_train, y_train)
    return model, X, float(model.score(X_test, y_test))


def register_demo(registry: Registry, name: str = DEMO_NAME) -> ModelVersion:
    """Train and register the demo model, pointing ``champion`` at it.

    All 150 iris rows are the sample, so the version's check set holds them all. Registered
    again (say ``shipyard quickstart`` run twice) with identical files, the existing version
    is reused.
    """
    model, X, accuracy = train_demo_model()
    return registry.register(
        model,
        name,
        sample=X,
        training_data=X,
        description="RandomForest on the iris flowers (scikit-learn's bundled data); predicts the species id "
        + ", ".join(f"{i}={s}" for i, s in enumerate(SPECIES)),
        tags={"source": "shipyard quickstart"},
        metrics={"accuracy": accuracy},
        alias="champion",
        if_identical="reuse",
    )
