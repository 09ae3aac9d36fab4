"""Promotion gates: signature compatibility, holdout score against the champion, latency budget,
and ``shipyard alias`` refusing a failed move unless ``--force``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, root_mean_squared_error

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.registry import Registry
from shipyard.rollout import gates
from shipyard.rollout.gates import GateReport, promotion_gates, score, signature_gate
from shipyard.signature import Signature, TensorSpec


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["a", "b", "c", "d"]
    return X, y


@pytest.fixture(scope="module")
def split(iris: tuple[pd.DataFrame, pd.Series]) -> dict[str, Any]:
    """Every third row held out; the models learn on the rest."""
    X, y = iris
    held = np.zeros(len(X), dtype=bool)
    held[::3] = True
    return {"X": X[~held], "y": y[~held], "X_hold": X[held], "y_hold": y[held]}


@pytest.fixture(scope="module")
def logistic(split: dict[str, Any]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(split["X"], split["y"])


@pytest.fixture(scope="module")
def dummy(split: dict[str, Any]) -> DummyClassifier:
    return DummyClassifier(strategy="most_frequent").fit(split["X"], split["y"])


def register(registry: Registry, model: Any, X: pd.DataFrame, **kw: Any) -> int:
    return registry.register(model, "iris", sample=X.head(5), **kw).version


def results(report: GateReport) -> dict[str, gates.GateResult]:
    return {r.name: r for r in report.results}


# -- signature --------------------------------------------------------------------------------


def spec(name: str, datatype: str = "FP64", shape: tuple[int, ...] = (-1,), allow_nan: bool = False) -> TensorSpec:
    return TensorSpec(name, datatype, shape, allow_nan)


def sig(*inputs: TensorSpec, outputs: tuple[TensorSpec, ...] = (spec("predict", "INT64"),)) -> Signature:
    return Signature(inputs=inputs, outputs=outputs, format="columns")


def test_a_candidate_with_a_different_input_schema_is_refused_naming_the_input(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression
) -> None:
    X = split["X"]
    register(registry, logistic, X, alias="champion")
    renamed = X.rename(columns={"d": "petal_width"})
    other = LogisticRegression(max_iter=1000).fit(renamed, split["y"])
    v2 = register(registry, other, renamed)

    report = promotion_gates(registry, "iris", "champion", v2)

    assert not report.passed
    detail = results(report)["signature"].detail
    assert "input 'd'" in detail and "missing" in detail
    assert "new required input 'petal_width'" in detail


def test_inputs_that_widen_pass_and_narrowing_ones_fail() -> None:
    # callers send INT32; an INT64 (or FP64) candidate holds every such value exactly
    assert signature_gate(sig(spec("x", "INT32")), sig(spec("x", "INT64"))).passed
    assert signature_gate(sig(spec("x", "INT32")), sig(spec("x", "FP64"))).passed
    narrowed = signature_gate(sig(spec("x", "FP64")), sig(spec("x", "FP32")))
    assert not narrowed.passed and "'x' changes from FP64 to FP32" in narrowed.detail
    assert not signature_gate(sig(spec("x", "INT64")), sig(spec("x", "FP64"))).passed


def test_nan_shape_and_outputs_callers_rely_on_are_checked() -> None:
    nan = signature_gate(sig(spec("x", allow_nan=True)), sig(spec("x")))
    assert not nan.passed and "NaN" in nan.detail
    assert signature_gate(sig(spec("x")), sig(spec("x", allow_nan=True))).passed
    image = signature_gate(sig(spec("img", shape=(-1, 28, 28))), sig(spec("img", shape=(-1, 32, 32))))
    assert not image.passed and "[-1, 28, 28]" in image.detail
    lost = signature_gate(sig(spec("x"), outputs=(spec("predict", "INT64"), spec("predict_proba"))), sig(spec("x")))
    assert not lost.passed and "output 'predict_proba'" in lost.detail


def test_nothing_to_replace_passes_every_gate_it_cannot_run(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression
) -> None:
    v1 = register(registry, logistic, split["X"], holdout=(split["X_hold"], split["y_hold"]))

    report = promotion_gates(registry, "iris", "champion", v1)

    assert report.passed and report.current is None
    assert all(r.skipped for r in report.results)
    assert "nothing to replace" in results(report)["signature"].detail


# -- holdout ----------------------------------------------------------------------------------


def test_a_worse_model_on_the_holdout_is_refused_with_both_accuracies(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression, dummy: DummyClassifier
) -> None:
    X_hold, y_hold = split["X_hold"], split["y_hold"]
    register(registry, logistic, split["X"], holdout=(X_hold, y_hold), alias="champion")
    v2 = register(registry, dummy, split["X"])

    report = promotion_gates(registry, "iris", "champion", v2)

    champion = accuracy_score(y_hold, logistic.predict(X_hold))
    candidate = accuracy_score(y_hold, dummy.predict(X_hold))
    assert candidate < champion - 0.01  # the data really makes the dummy worse
    holdout = results(report)["holdout"]
    assert not report.passed and not holdout.passed
    assert f"candidate {candidate:.4g} < champion {champion:.4g} - margin 0.01" in holdout.detail
    assert f"the {len(y_hold)}-row holdout of iris:1" in holdout.detail
    assert report.reasons().startswith("holdout: accuracy")


def test_the_champion_itself_passes_its_own_holdout_gate_and_a_wide_margin_lets_a_worse_one_through(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression, dummy: DummyClassifier
) -> None:
    register(registry, logistic, split["X"], holdout=(split["X_hold"], split["y_hold"]), alias="champion")
    same = register(registry, logistic, split["X"], if_identical="new")
    worse = register(registry, dummy, split["X"])

    assert promotion_gates(registry, "iris", "champion", same).passed
    assert promotion_gates(registry, "iris", "champion", worse, accuracy_margin=1.0).passed


def test_the_candidates_holdout_is_used_when_the_champion_has_none(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression, dummy: DummyClassifier
) -> None:
    register(registry, dummy, split["X"], alias="champion")
    v2 = register(registry, logistic, split["X"], holdout=(split["X_hold"], split["y_hold"]))

    holdout = results(promotion_gates(registry, "iris", "champion", v2))["holdout"]

    assert holdout.passed and not holdout.skipped
    assert "holdout of iris:2" in holdout.detail


def test_no_holdout_skips_the_gate_and_says_why(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression, dummy: DummyClassifier
) -> None:
    register(registry, logistic, split["X"], alias="champion")
    v2 = register(registry, dummy, split["X"])

    report = promotion_gates(registry, "iris", "champion", v2)

    holdout = results(report)["holdout"]
    assert report.passed and holdout.skipped
    assert "neither iris:1 nor iris:2 was registered with a holdout set" in holdout.detail


def test_a_worse_regressor_is_refused_on_mae_with_the_error_margin_added(registry: Registry) -> None:
    rng = np.random.default_rng(7)
    X = pd.DataFrame({"u": rng.normal(size=300), "v": rng.normal(size=300)})
    y = 3.0 * X.u - 2.0 * X.v + rng.normal(scale=0.1, size=300)
    linear, flat = LinearRegression().fit(X[:200], y[:200]), DummyRegressor().fit(X[:200], y[:200])
    registry.register(linear, "price", sample=X.head(5), holdout=(X[200:], y[200:]), alias="champion")
    v2 = registry.register(flat, "price", sample=X.head(5)).version

    holdout = results(promotion_gates(registry, "price", "champion", v2))["holdout"]

    champion = mean_absolute_error(y[200:], linear.predict(X[200:]))
    candidate = mean_absolute_error(y[200:], flat.predict(X[200:]))
    assert not holdout.passed
    assert f"mae on the 100-row holdout of price:1: candidate {candidate:.4g} > champion {champion:.4g} + margin" \
        in holdout.detail
    rmse = results(promotion_gates(registry, "price", "champion", v2, metric="rmse", accuracy_margin=10.0))["holdout"]
    assert rmse.passed and "rmse" in rmse.detail


def test_scores_match_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=500)
    predicted = np.where(rng.random(500) < 0.8, labels, rng.integers(0, 3, size=500))
    assert score("accuracy", predicted, labels) == pytest.approx(accuracy_score(labels, predicted))
    words = np.array(["cat", "dog", "eel"], dtype=object)
    assert score("accuracy", words[predicted], words[labels]) == pytest.approx(accuracy_score(labels, predicted))
    truth, guess = rng.normal(size=500), rng.normal(size=500)
    assert score("mae", guess, truth) == pytest.approx(mean_absolute_error(truth, guess))
    assert score("rmse", guess[:, None], truth) == pytest.approx(root_mean_squared_error(truth, guess))
    with pytest.raises(InvalidInput, match="metric must be one of accuracy, mae, rmse"):
        score("f1", guess, truth)


def test_the_default_metric_follows_the_label_outputs_datatype() -> None:
    assert gates.metric_for(sig(spec("x"), outputs=(spec("predict_proba", shape=(-1, 3)), spec("predict", "INT64")))) \
        == "accuracy"
    assert gates.label_output(sig(spec("x"), outputs=(spec("predict_proba", shape=(-1, 3)), spec("predict")))) \
        == "predict"
    assert gates.metric_for(sig(spec("x"), outputs=(spec("predict", "FP32"),))) == "mae"
    assert gates.metric_for(sig(spec("x"), outputs=(spec("predict", "BYTES"),))) == "accuracy"


# -- latency ----------------------------------------------------------------------------------


def test_a_tiny_latency_budget_fails_and_a_generous_one_passes(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression
) -> None:
    register(registry, logistic, split["X"], alias="champion")
    v2 = register(registry, logistic, split["X"], if_identical="new")

    tiny = results(promotion_gates(registry, "iris", "champion", v2, latency_budget_ms=0.001))["latency"]
    generous = results(promotion_gates(registry, "iris", "champion", v2, latency_budget_ms=60_000))["latency"]

    assert not tiny.passed and "over the budget of 0.001 ms" in tiny.detail
    assert generous.passed and "the 5-row input example of iris:2" in generous.detail


def test_latency_is_the_median_of_the_timed_runs_against_the_tagged_budget(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression
) -> None:
    register(registry, logistic, split["X"], alias="champion")
    v2 = register(registry, logistic, split["X"], if_identical="new", tags={"latency_budget_ms": "30"})
    # a fake clock: each timed run takes the next of these many milliseconds
    durations = [12.0, 45.0, 20.0, 31.0, 8.0]
    ticks = iter(np.cumsum([x for d in durations for x in (1.0, d)]) / 1000.0)

    report = promotion_gates(registry, "iris", "champion", v2, latency_runs=5, clock=lambda: float(next(ticks)))

    latency = results(report)["latency"]
    assert latency.passed == (np.median(durations) <= 30)
    assert f"median {np.median(durations):.3g} ms over 5 runs" in latency.detail
    assert "budget of 30 ms" in latency.detail


def test_no_budget_skips_the_latency_gate_and_a_bad_tag_fails_it(
    registry: Registry, split: dict[str, Any], logistic: LogisticRegression
) -> None:
    register(registry, logistic, split["X"], alias="champion")
    v2 = register(registry, logistic, split["X"], if_identical="new")
    v3 = register(registry, logistic, split["X"], if_identical="new", tags={"latency_budget_ms": "fast"})

    skipped = results(promotion_gates(registry, "iris", "champion", v2))["latency"]
    bad = results(promotion_gates(registry, "iris", "champion", v3))["latency"]

    assert skipped.passed and skipped.skipped and "declares none" in skipped.detail
    assert not bad.passed and "'fast'" in bad.detail


# -- shipyard alias -----------------------------------------------------------------------------


@pytest.fixture
def gate_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.LogCaptureFixture]:
    """The gates' log records, captured once, whether or not 'shipyard' propagates to the root."""
    logger = logging.getLogger(gates.__name__)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=gates.__name__)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def home(tmp_path: Path, split: dict[str, Any], logistic: LogisticRegression, dummy: DummyClassifier) -> Path:
    """iris:1 (logistic, with a holdout set) is the champion; iris:2 is the worse dummy."""
    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        register(reg, logistic, split["X"], holdout=(split["X_hold"], split["y_hold"]), alias="champion")
        register(reg, dummy, split["X"])
    finally:
        reg.close()
    return home


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def champion(home: Path) -> int:
    reg = Registry.from_settings(Settings(home=home))
    try:
        return reg.aliases("iris")["champion"]
    finally:
        reg.close()


def test_the_cli_refuses_a_failed_gate_and_says_why(home: Path, gate_log: pytest.LogCaptureFixture) -> None:
    result = run(home, "alias", "iris", "champion", "2")

    assert result.exit_code == 1
    assert "gate holdout failed: accuracy on the 50-row holdout of iris:1" in result.output
    assert "was not moved to version 2" in result.output
    assert champion(home) == 1
    [record] = [r for r in gate_log.records if r.levelno == logging.WARNING]
    assert "refused" in record.getMessage() and "forced=false" in record.getMessage()


def test_force_moves_the_alias_and_logs_who_forced_it(
    home: Path, gate_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shipyard.cli.alias.current_actor", lambda: "alice")

    result = run(home, "alias", "iris", "champion", "2", "--force")

    assert result.exit_code == 0, result.output
    assert "iris@champion -> version 2 (was 1)" in result.output
    assert champion(home) == 2
    [record] = [r for r in gate_log.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "promotion gates failed (holdout)" in message
    assert "actor=alice forced=true" in message and "moved anyway" in message


def test_a_passing_move_goes_ahead_without_force(home: Path, gate_log: pytest.LogCaptureFixture) -> None:
    result = run(home, "alias", "iris", "champion", "2", "--accuracy-margin", "1", "--latency-budget-ms", "60000")

    assert result.exit_code == 0, result.output
    assert "gate latency passed" in result.output
    assert champion(home) == 2
    assert not [r for r in gate_log.records if r.levelno >= logging.WARNING]


def test_register_with_an_alias_that_exists_moves_it_only_past_the_gates(
    home: Path, tmp_path: Path, split: dict[str, Any], dummy: DummyClassifier, gate_log: pytest.LogCaptureFixture
) -> None:
    import skops.io as sio

    sio.dump(dummy, tmp_path / "dummy.skops")
    split["X"].head(5).to_csv(tmp_path / "sample.csv", index=False)
    args = ["register", "iris", str(tmp_path / "dummy.skops"), "--sample", str(tmp_path / "sample.csv")]

    refused = run(home, *args, "--alias", "champion", "--if-identical", "new")

    assert refused.exit_code == 1
    assert "registered iris:3" in refused.output and "gate holdout failed" in refused.output
    assert "`shipyard alias iris champion 3 --force` moves it anyway" in refused.output
    assert champion(home) == 1
    moved = run(home, *args, "--alias", "shadow", "--if-identical", "new")  # a new alias has nothing to replace
    assert moved.exit_code == 0 and "alias shadow -> 4" in moved.output
