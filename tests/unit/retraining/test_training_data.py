"""What a training function gets (``TrainingData``) and the incremental mode's ``partial_fit`` update."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression, SGDClassifier

from shipyard.retraining._worker import TrainingData, _incremental, import_function

FEATURES = ["f0", "f1", "f2"]


def shifted(rng: np.random.Generator, rows: int) -> tuple[pd.DataFrame, pd.Series]:
    x = pd.DataFrame(rng.normal(size=(rows, 3)), columns=FEATURES)
    return x, (x["f0"] - x["f1"] > 0).astype(int)


def data_of(x: pd.DataFrame, y: pd.Series, model: object = None) -> TrainingData:
    return TrainingData(pa.table({**{f: x[f].to_numpy() for f in FEATURES}, "label": y.to_numpy()}), FEATURES,
                        "label", model=model)


def test_training_data_gives_a_frame_a_matrix_labels_and_named_inputs() -> None:
    x, y = shifted(np.random.default_rng(0), 10)
    data = data_of(x, y)
    assert data.X.shape == (10, 3) and np.array_equal(data.X, x.to_numpy())
    assert list(data.frame().columns) == [*FEATURES, "label"] and np.array_equal(data.y, y.to_numpy())
    assert set(data.inputs) == set(FEATURES)
    list_table = TrainingData(pa.table({"input": [[1.0, 2.0], [3.0, 4.0]], "label": [0, 1]}), ["input"], "label")
    assert list_table.X.shape == (2, 2)


def test_incremental_mode_updates_a_copy_of_the_current_model() -> None:
    rng = np.random.default_rng(3)
    old = pd.DataFrame(rng.normal(size=(400, 3)), columns=FEATURES)
    current = SGDClassifier(random_state=0).fit(old, (old["f0"] + old["f1"] > 0).astype(int))
    x, y = shifted(rng, 2_000)
    updated = current
    for _ in range(20):
        updated = _incremental(updated, data_of(x, y, updated))
    assert updated is not current and (current.predict(x) == y).mean() < 0.8
    assert (updated.predict(x) == y).mean() > 0.9


def test_incremental_mode_needs_partial_fit() -> None:
    x, y = shifted(np.random.default_rng(1), 50)
    with pytest.raises(TypeError, match="partial_fit"):
        _incremental(LogisticRegression().fit(x, y), data_of(x, y))


def test_a_training_function_is_imported_by_its_reference() -> None:
    assert import_function("json:dumps") is __import__("json").dumps
    with pytest.raises(AttributeError):
        import_function("json:nothing_here")
