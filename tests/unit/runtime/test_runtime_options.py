"""Runtime options from Python: declared per runtime, anything else refused before anything is written."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tests.fixtures import plugins

import shipyard
from shipyard.config import Settings
from shipyard.errors import InvalidOption, UnknownOption, UnsupportedModel
from shipyard.registry import Registry
from shipyard.registry.registry import register_keywords
from shipyard.runtime import loader
from shipyard.runtime.loader import declared_options, get_runtime


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture(scope="module")
def model(iris: tuple[pd.DataFrame, pd.Series]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


@pytest.fixture
def plugin_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in runtimes plus the third-party-style ones of tests/fixtures/plugins.py."""
    targets = {**loader._targets(), **plugins.TARGETS}
    monkeypatch.setattr(loader, "_targets", lambda: targets)


def nothing_written(registry: Registry, settings: Settings) -> bool:
    artifacts = settings.home / "artifacts"
    return registry.models() == [] and (not artifacts.exists() or not any(artifacts.rglob("*")))


def test_an_unknown_option_is_refused_before_anything_is_written(
    registry: Registry, settings: Settings, model: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    with pytest.raises(UnknownOption) as info:
        registry.register(model, "iris", sample=iris[0].head(), bogus_option=1)
    assert str(info.value) == "unknown option 'bogus_option' for runtime sklearn; valid options: methods"
    assert nothing_written(registry, settings)


def test_trust_is_not_trust_pickle_and_says_so(
    registry: Registry, settings: Settings, model: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    with pytest.raises(UnknownOption) as info:
        registry.register(model, "iris", sample=iris[0].head(), trust=True)
    assert str(info.value) == "unknown option 'trust' for runtime sklearn; did you mean 'trust_pickle'?"
    assert info.value.field == "trust"
    assert nothing_written(registry, settings)


def test_the_top_level_register_refuses_the_same(
    settings: Settings, model: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    with pytest.raises(UnknownOption, match=re.escape("did you mean 'trust_pickle'?")):
        shipyard.register(model, name="iris", sample=iris[0].head(), settings=settings, trust=True)
    with pytest.raises(UnknownOption, match="'bogus_option'"):
        shipyard.register(model, name="iris", sample=iris[0].head(), settings=settings, bogus_option=1)


def test_a_mistyped_register_keyword_is_suggested_read_from_the_signature(
    registry: Registry, model: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    params = inspect.signature(Registry.register).parameters.values()
    own = [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    assert register_keywords() == tuple(own)  # so keywords added later are suggested too
    for keyword in own:
        typo = keyword[:-1]  # 'sampl', 'alia', 'trust_pickl', ...
        with pytest.raises(UnknownOption, match=re.escape(f"did you mean '{keyword}'?")):
            registry.register(model, "iris", sample=iris[0].head(), **{typo: 1})


def test_a_wrong_type_names_the_option_the_type_and_what_arrived(
    registry: Registry, settings: Settings, model: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    with pytest.raises(InvalidOption) as info:
        registry.register(model, "iris", sample=iris[0].head(), methods=3)
    assert str(info.value) == "option 'methods' for runtime sklearn must be a list of str, got int 3"
    assert nothing_written(registry, settings)


def test_declared_options_still_work(registry: Registry, model: Any, iris: tuple[pd.DataFrame, pd.Series]) -> None:
    mv = registry.register(model, "iris", sample=iris[0].head(), methods="predict_proba")
    assert mv.flavor_meta["methods"] == ["predict_proba"]
    assert [o.name for o in mv.signature.outputs] == ["predict_proba"]


def test_an_option_for_model_files_is_refused_for_an_in_memory_model(
    registry: Registry, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    X, y = iris
    clf = LGBMClassifier(n_estimators=2, verbose=-1).fit(X, y)
    with pytest.raises(InvalidOption, match="'classes' for runtime lightgbm applies to model files only"):
        registry.register(clf, "iris", sample=X.head(), classes=[0, 1, 2])


def test_onnx_threads_is_a_whole_number_of_at_least_one(
    registry: Registry, iris: tuple[pd.DataFrame, pd.Series], model: Any, tmp_path: Path
) -> None:
    X = iris[0].to_numpy(np.float32)
    proto = to_onnx(LogisticRegression(max_iter=1000).fit(X, iris[1]), X[:1], target_opset=17)
    with pytest.raises(InvalidOption, match="option 'threads' for runtime onnx must be an int, got str '2'"):
        registry.register(proto, "iris-onnx", threads="2")
    with pytest.raises(InvalidOption, match="option 'threads' for runtime onnx must be at least 1, got 0"):
        registry.register(proto, "iris-onnx", threads=0)  # 0 used to be dropped without a word
    assert registry.register(proto, "iris-onnx", threads=2).flavor_meta["threads"] == 2


def test_every_builtin_runtime_declares_its_options() -> None:
    declared = {flavor: [o.name for o in specs] for flavor, specs in declared_options().items()}
    assert declared == {
        "graph": [],
        "python": ["code_paths"],
        "mlflow": [],
        "onnx": ["threads"],
        "torch": [],
        "tensorflow": ["signature"],
        "tflite": ["signature", "threads"],
        "xgboost": ["methods"],
        "lightgbm": ["methods", "classes"],
        "sklearn": ["methods"],
    }
    for flavor in declared:
        for option in get_runtime(flavor).option_specs:
            assert option.doc and option.name not in register_keywords(), (flavor, option.name)


def test_the_readme_lists_every_builtin_option() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    for flavor, specs in declared_options().items():
        for option in specs:
            assert f"`{option.name}`" in readme, (flavor, option.name)


# -- third-party runtimes ---------------------------------------------------------------------------


@pytest.mark.usefixtures("plugin_runtimes")
def test_a_plugin_runtime_gets_its_declared_options_checked_and_typed(registry: Registry) -> None:
    sample = {"x": np.array([1.0, 2.0])}
    mv = registry.register(object(), "scaled", sample=sample, flavor="scale", gain=2)
    assert mv.flavor_meta == {"gain_type": "float"}  # the int arrived as the declared float
    np.testing.assert_array_equal(registry.load(mv).predict_arrays(sample)["y"], [2.0, 4.0])
    with pytest.raises(UnknownOption, match=re.escape("unknown option 'gian' for runtime scale; did you mean")):
        registry.register(object(), "scaled", sample=sample, flavor="scale", gian=2)
    with pytest.raises(InvalidOption, match="option 'gain' for runtime scale must be a float, got str 'two'"):
        registry.register(object(), "scaled", sample=sample, flavor="scale", gain="two")


@pytest.mark.usefixtures("plugin_runtimes")
def test_a_plugin_runtime_that_declares_nothing_takes_nothing(registry: Registry, settings: Settings) -> None:
    sample = {"x": np.array([1.0, 2.0])}
    # what used to reach its **options unchecked is refused, loudly
    with pytest.raises(UnknownOption, match="^unknown option 'gain' for runtime undeclared; it takes no options$"):
        registry.register(object(), "scaled", sample=sample, flavor="undeclared", gain=2.0)
    assert nothing_written(registry, settings)
    # without options it registers as before
    assert registry.register(object(), "scaled", sample=sample, flavor="undeclared").version == 1


def test_batch_predict_refuses_an_unknown_keyword_with_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(UnknownOption, match=re.escape("unknown option 'id_column' for batch_predict(); did you mean "
                                                      "'id_columns'?")):
        shipyard.batch_predict("iris", tmp_path / "in.parquet", tmp_path / "out", id_column="id")


def test_a_mistyped_flavor_names_the_nearest(registry: Registry, model: Any) -> None:
    with pytest.raises(UnsupportedModel, match=re.escape("unknown model flavor 'sklean'; did you mean 'sklearn'?")):
        registry.register(model, "iris", flavor="sklean")
    with pytest.raises(UnsupportedModel, match="unknown model flavor 'keras'; known: graph, python, mlflow, onnx"):
        registry.register(model, "iris", flavor="keras")


def test_one_code_path_given_as_a_string_is_one_file(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before options were declared, a string here was iterated letter by letter
    (tmp_path / "opt_helper.py").write_text("FACTOR = 3\n")
    (tmp_path / "opt_model.py").write_text(
        "import shipyard\n\nclass Triple(shipyard.Model):\n    def predict(self, inputs):\n"
        "        from opt_helper import FACTOR\n        return inputs['x'] * FACTOR\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # a relative path: letter by letter it named files that do not exist
    import importlib

    module = importlib.import_module("opt_model")
    try:
        mv = registry.register(module.Triple(), "triple", sample={"x": np.array([1.0])}, code_paths="opt_helper.py")
        assert "code/opt_helper.py" in mv.files
    finally:
        for name in ("opt_model", "opt_helper"):
            monkeypatch.delitem(sys.modules, name, raising=False)
