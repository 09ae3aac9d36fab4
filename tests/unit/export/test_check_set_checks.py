"""Every equivalence check runs on the version's whole check set, and says so when it is small.

A converter that changes 3% of the labels is the case this exists for: on the
5-row input example earlier checks used it passes (5 rows, none of them
changed), on a 500-row check set it is refused.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from shipyard.cli.main import cli
from shipyard.errors import CheckFailed
from shipyard.export import ExportOptions, bundle_version, export_version, pipeline
from shipyard.export import quantize as quantizing
from shipyard.hosting.compiled import CompiledCache
from shipyard.registry import Registry
from shipyard.registry import registry as registry_module

FAST = {"latency_budget_s": 0.001}


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})


@pytest.fixture(scope="module")
def X() -> pd.DataFrame:
    return frame(500)


@pytest.fixture(scope="module")
def model(X: pd.DataFrame) -> LogisticRegression:
    return LogisticRegression().fit(X, (X.a - X.b > 0).astype(int))


@pytest.fixture
def reg500(registry: Registry, model: Any, X: pd.DataFrame) -> Registry:
    registry.register(model, "m", sample=X)
    return registry


def test_export_is_checked_on_all_500_rows_and_the_registered_variant_records_it(
    reg500: Registry, tmp_path: Path
) -> None:
    report = export_version(reg500, "m", tmp_path / "out", ExportOptions(register="m-edge", **FAST))

    assert report.rows == 500 and report.note is None
    assert report.checked_on() == "checked on 500 rows"
    onnx = next(v for v in report.variants if v.name == "onnx")
    assert onnx.check is not None and {o.rows for o in onnx.check.outputs} == {500}
    variant = reg500.get(onnx.registered or "")
    assert variant.metrics["check_rows"] == 500.0
    assert "checked on 500 rows" in variant.description and "check_rows_note" not in variant.tags
    # the variant keeps the rows it was checked on as its own check set
    assert (variant.check_set["rows"], variant.check_set["from"]) == (500, "check_data")
    stored = reg500.check_set(variant)
    assert stored is not None and stored.rows == 500

    # exported again, the same graph and rows give back the version registered the first time
    again = export_version(reg500, "m", tmp_path / "again", ExportOptions(register="m-edge", **FAST))
    assert next(v for v in again.variants if v.name == "onnx").registered == variant.ref
    assert [v.version for v in reg500.versions("m-edge")] == [1]


def test_cli_export_and_bundle_print_the_row_count(reg500: Registry, settings: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    out = runner.invoke(cli, [*home, "export", "m", "--out", str(tmp_path / "dist"), "--latency-seconds", "0.001"],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert f"m:1 -> {tmp_path / 'dist'} (checked on 500 rows)" in out.output

    zipped = runner.invoke(cli, [*home, "bundle", "m", "--out", str(tmp_path / "m.zip")], env={"COLUMNS": "200"})
    assert zipped.exit_code == 0, zipped.output
    assert "checked on 500 rows; run it: python" in zipped.output


def test_a_bundle_is_checked_on_the_check_set_and_its_metadata_says_so(reg500: Registry, tmp_path: Path) -> None:
    report = bundle_version(reg500, "m", tmp_path / "m.zip", ExportOptions(**FAST))

    assert report.rows == 500 and report.checked_on() == "checked on 500 rows"
    with zipfile.ZipFile(report.path) as zf:
        meta = json.loads(zf.read("bundle.json"))
    assert meta["check"]["rows"] == 500 and "note" not in meta["check"]
    assert meta["check"]["tolerance"] == {"max_diff": 1e-4, "min_agreement": 1.0}


def test_the_onnx_serving_twin_is_checked_on_the_check_set(
    reg500: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = CompiledCache(tmp_path / "compiled")
    native = reg500.load("m")
    with caplog.at_level(logging.INFO, logger="shipyard.hosting.compiled"):
        twin = cache.compile(reg500, native)
    assert twin is not None
    twin.close()
    native.close()

    (verdict_file,) = (tmp_path / "compiled" / "m").glob("*/verdict.json")
    verdict = json.loads(verdict_file.read_text())
    assert (verdict["ok"], verdict["rows"]) == (True, 500) and "note" not in verdict
    assert "serving m:1 through ONNX Runtime (checked on 500 rows)" in caplog.text


def test_static_quantization_calibrates_on_the_check_set(
    registry: Registry, X: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():  # a barely trained net is enough to have weights to quantize
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(X, (X.a > X.b).astype(int))
    registry.register(mlp, "mlp", sample=X.head(300))
    seen: list[int] = []
    real = quantizing._reader

    def spy(base: type, arrays: Any, batch: int = 16) -> Any:
        seen.append(len(next(iter(arrays.values()))))
        return real(base, arrays, batch)

    monkeypatch.setattr(quantizing, "_reader", spy)
    report = export_version(registry, "mlp", tmp_path / "q", ExportOptions(quantize=("static",), tolerance=1.0,
                                                                             min_agreement=0.0, **FAST))

    assert seen == [300]
    assert report.rows == 300


# -- a converter that changes 3% of the labels ----------------------------------------------------


class FlipSomeLabels:
    """An exported graph with a bug in its label output: rows whose ``a`` reaches ``cut`` get the
    other class. Probabilities are untouched, so only label agreement can catch it."""

    def __init__(self, inner: Any, cut: float) -> None:
        self.inner = inner
        self.cut = cut

    def predict(self, inputs: Any) -> dict[str, np.ndarray[Any, Any]]:
        out = dict(self.inner.predict(inputs))
        flip = np.asarray(inputs["a"], dtype=np.float64) >= self.cut
        out["predict"] = np.where(flip, 1 - out["predict"], out["predict"])
        return out

    def unload(self) -> None:
        self.inner.unload()


@pytest.fixture
def lossy(X: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> float:
    """Make every exported artifact change the labels of the 15 rows (3%) with the largest ``a``."""
    cut = float(np.sort(X["a"].to_numpy())[-15])
    assert (X["a"].head(5) < cut).all(), "none of the first five rows (the old check) is changed"
    real = pipeline._runner
    monkeypatch.setattr(pipeline, "_runner", lambda path: FlipSomeLabels(real(path), cut))
    return cut


def test_a_converter_changing_3_percent_of_labels_is_refused_on_the_check_set(
    reg500: Registry, tmp_path: Path, lossy: float
) -> None:
    with pytest.raises(CheckFailed) as info:
        export_version(reg500, "m", tmp_path / "out", ExportOptions(**FAST))

    assert "output 'predict': label agreement 0.9700 < 1 over 500 rows" in info.value.reason
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_on_the_old_5_row_check_the_same_converter_would_have_passed(
    registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path, lossy: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # registered the way it was before check sets: only the 5-row input example is kept
    with monkeypatch.context() as m:
        m.setattr(registry_module, "_write_check_set", lambda *a: {})
        registry.register(model, "old", sample=X)

    report = export_version(registry, "old", tmp_path / "out", ExportOptions(**FAST))

    onnx = next(v for v in report.variants if v.name == "onnx")
    assert onnx.ok and onnx.check is not None and onnx.check.label_agreement == 1.0
    # ... and now it at least says how little that means
    assert report.rows == 5
    assert report.checked_on().startswith("checked on 5 rows: old:1 predates check sets")


def test_a_check_on_few_rows_says_why_everywhere(
    registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.register(model, "few", sample=X.head(37))

    report = export_version(registry, "few", tmp_path / "out", ExportOptions(register="few-edge", **FAST))
    assert report.checked_on() == "checked on 37 rows: the sample had only 37"
    variant = registry.get("few-edge")
    assert variant.tags["check_rows_note"] == "the sample had only 37"
    assert "checked on 37 rows: the sample had only 37" in variant.description

    with_data = export_version(registry, "few", tmp_path / "more", ExportOptions(check_data=X.head(20), **FAST))
    assert with_data.checked_on() == "checked on 57 rows: the sample had only 37, and --check-data added 20"
    enough = export_version(registry, "few", tmp_path / "enough", ExportOptions(check_data=X.head(80), **FAST))
    assert (enough.rows, enough.note) == (117, None)

    bundle = bundle_version(registry, "few", tmp_path / "few.zip", ExportOptions(**FAST))
    with zipfile.ZipFile(bundle.path) as zf:
        assert json.loads(zf.read("bundle.json"))["check"]["note"] == "the sample had only 37"

    cache = CompiledCache(tmp_path / "compiled")
    native = registry.load("few")
    with caplog.at_level(logging.INFO, logger="shipyard.hosting.compiled"):
        twin = cache.compile(registry, native)
        assert twin is not None
        twin.close()
        caplog.clear()
        again = cache.load(registry.get("few"))  # a later start, from the cached verdict
    native.close()
    assert not isinstance(again, bool) and again is not None
    again.close()
    assert "serving few:1 through ONNX Runtime, checked on 37 rows: the sample had only 37" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)
