"""Pruning specs, the tree-count grid, choosing K from the accuracy curve, truncating forests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shipyard.errors import InvalidInput
from shipyard.export.onnx import Source
from shipyard.export.prune import PruneSpec, accuracy_curve, choose_k, k_grid, parse_prune, tree_count, truncate
from shipyard.signature import infer_signature


@pytest.mark.parametrize(("text", "spec"), [
    ("magnitude:0.5", PruneSpec("magnitude", amount=0.5)),
    ("structured:0.25", PruneSpec("structured", amount=0.25)),
    ("trees:20", PruneSpec("trees", trees=20)),
    ("trees", PruneSpec("trees")),
    ("trees:auto", PruneSpec("trees")),
])
def test_prune_specs_parse(text: str, spec: PruneSpec) -> None:
    assert parse_prune(text) == spec


@pytest.mark.parametrize("text", ["lottery:0.5", "magnitude:1.5", "magnitude:x", "trees:0", "trees:-3", "trees:2.5"])
def test_bad_prune_specs_say_what_is_accepted(text: str) -> None:
    with pytest.raises(InvalidInput, match="--prune"):
        parse_prune(text)


def test_labels_name_the_spec() -> None:
    assert PruneSpec("trees").label == "trees:auto"
    assert PruneSpec("magnitude", amount=0.5).label == "magnitude:0.5"


def test_k_grid_is_one_two_five_per_decade_and_ends_with_the_full_count() -> None:
    assert k_grid(100) == [1, 2, 5, 10, 20, 50, 100]
    assert k_grid(7) == [1, 2, 5, 7]
    assert k_grid(1) == [1]
    assert k_grid(0) == []


def test_choose_k_takes_the_smallest_count_within_the_allowed_drop() -> None:
    curve = [(1, 0.80), (2, 0.90), (5, 0.95), (10, 0.97), (20, 0.975), (100, 0.98)]
    assert choose_k(curve, max_drop=0.0) == 100
    assert choose_k(curve, max_drop=0.01) == 10
    assert choose_k(curve, max_drop=0.03) == 5
    assert choose_k(curve, max_drop=1.0) == 1


def test_choose_k_ignores_order_and_a_curve_that_is_not_monotone() -> None:
    assert choose_k([(100, 0.9), (1, 0.91), (10, 0.5)], max_drop=0.0) == 1


def test_choose_k_refuses_an_empty_curve() -> None:
    with pytest.raises(InvalidInput):
        choose_k([], 0.01)


@pytest.fixture(scope="module")
def forest_source() -> tuple[Source, np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=30, random_state=0)).fit(X, y)
    return Source("sklearn", model, infer_signature(X[:5])), X, y


def test_truncating_a_forest_keeps_the_first_k_trees_and_leaves_the_source_alone(
    forest_source: tuple[Source, np.ndarray, np.ndarray],
) -> None:
    source, X, _ = forest_source
    before = source.model.predict_proba(X)
    cut = truncate(source, 5)
    assert tree_count(source, cut) == 5
    assert tree_count(source) == 30
    assert cut.steps[-1][1].estimators_ == source.model.steps[-1][1].estimators_[:5]
    np.testing.assert_array_equal(source.model.predict_proba(X), before)


def test_truncating_beyond_the_ensemble_is_refused(forest_source: tuple[Source, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(InvalidInput, match="has 30 trees"):
        truncate(forest_source[0], 31)


def test_the_accuracy_curve_scores_each_tree_count(forest_source: tuple[Source, np.ndarray, np.ndarray]) -> None:
    source, X, y = forest_source
    curve = accuracy_curve(source, lambda m: m.predict(X), y, k_grid(30))
    assert [k for k, _ in curve] == [1, 2, 5, 10, 20, 30]
    assert all(0.5 < score <= 1.0 for _, score in curve)
    assert curve[-1][1] == pytest.approx(float((source.model.predict(X) == y).mean()))
