"""Realized metrics: scikit-learn's numbers, and the NumPy fallback gives the same ones."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from shipyard.monitoring.quality import realized_metrics

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("use_sklearn", [True, False])
def test_binary_classifier_metrics_equal_sklearns(use_sklearn: bool) -> None:
    y = RNG.integers(0, 2, 500)
    score = np.clip(y * 0.3 + RNG.random(500) * 0.7, 0, 1)
    p = (score > 0.5).astype(int)
    out = realized_metrics(p.tolist(), y.tolist(), score.tolist(), use_sklearn=use_sklearn)
    assert (out["kind"], out["average"], out["positive_label"], out["n"]) == ("classifier", "binary", 1, 500)
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, p), abs=1e-12)
    assert m["precision"] == pytest.approx(sk.precision_score(y, p), abs=1e-12)
    assert m["recall"] == pytest.approx(sk.recall_score(y, p), abs=1e-12)
    assert m["f1"] == pytest.approx(sk.f1_score(y, p), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, score), abs=1e-12)


@pytest.mark.parametrize("use_sklearn", [True, False])
def test_multiclass_metrics_are_macro_averages(use_sklearn: bool) -> None:
    y = RNG.choice(["cat", "dog", "eel"], 300)
    p = np.where(RNG.random(300) < 0.7, y, RNG.choice(["cat", "dog", "eel", "fox"], 300))
    out = realized_metrics(p.tolist(), y.tolist(), use_sklearn=use_sklearn)
    assert out["average"] == "macro" and "roc_auc" not in out["metrics"]
    labels = sorted(set(y) | set(p))
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert out["metrics"][name] == pytest.approx(
            fn(y, p, average="macro", labels=labels, zero_division=0), abs=1e-12), name


@pytest.mark.parametrize("use_sklearn", [True, False])
def test_float_predictions_with_number_labels_are_a_regressor(use_sklearn: bool) -> None:
    y = RNG.normal(size=200)
    p = y + RNG.normal(scale=0.3, size=200)
    out = realized_metrics(p.tolist(), [int(v) if i % 2 else float(v) for i, v in enumerate(y.round())],
                           use_sklearn=use_sklearn)
    labels = np.asarray([int(v) if i % 2 else float(v) for i, v in enumerate(y.round())], dtype=float)
    assert out["kind"] == "regressor"
    assert out["metrics"]["mae"] == pytest.approx(sk.mean_absolute_error(labels, p), abs=1e-12)
    assert out["metrics"]["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(labels, p)), abs=1e-12)


def test_labels_match_predictions_as_classes_across_types() -> None:
    out = realized_metrics([1, 0, True, "yes"], [1.0, False, "1", "yes"])
    assert out["metrics"]["accuracy"] == 1.0
    assert out["average"] == "macro"  # three classes: 0, 1 and "yes"


def test_no_roc_auc_with_one_class_or_missing_scores() -> None:
    assert "roc_auc" not in realized_metrics([1, 1], [1, 1], [0.9, 0.8])["metrics"]
    assert "roc_auc" not in realized_metrics([1, 0], [1, 0], [0.9, None])["metrics"]
    assert realized_metrics([], []) == {"kind": None, "n": 0, "metrics": {}}
