"""Every exportable format goes to ONNX and is checked against the registered original;
custom Python models are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.fixtures.models import FORMAT_CASES

from shipyard.errors import NotExportable
from shipyard.export import ExportOptions, export_version
from shipyard.registry import Registry

pytestmark = pytest.mark.integration

EXPORTABLE = ["sklearn", "sklearn_pipeline", "xgboost", "lightgbm", "onnx", "torch_export", "torchscript",
              "mlflow_sklearn"]
FAST = ExportOptions(latency_budget_s=0.01)


@pytest.mark.parametrize("fmt", EXPORTABLE)
# torch 2.13 deprecates TorchScript; the torchscript case saves and loads it on purpose
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_each_format_exports_to_onnx_that_matches_the_original(fmt: str, registry: Registry, tmp_path: Path) -> None:
    model, sample, expected, kwargs = FORMAT_CASES[fmt](tmp_path)
    registry.register(model, "m", sample=sample, **kwargs)
    report = export_version(registry, "m", tmp_path / "out", FAST)
    source, onnx_row = report.variants
    assert onnx_row.ok, onnx_row.error
    assert onnx_row.path == tmp_path / "out" / "model.onnx" and onnx_row.path.is_file()
    assert onnx_row.check is not None and onnx_row.check.passed
    if np.asarray(expected).dtype.kind != "f":
        assert onnx_row.check.label_agreement == 1.0
    assert (onnx_row.check.max_scaled_diff or 0.0) <= 1e-4
    assert onnx_row.timing is not None and onnx_row.timing.batch1_ms > 0
    assert source.timing is not None and source.size_bytes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx"]  # no temp files left


def test_a_custom_python_model_is_refused_with_what_and_why(registry: Registry, tmp_path: Path) -> None:
    model, sample, _, _ = FORMAT_CASES["custom"](tmp_path)
    registry.register(model, "custom", sample=sample)
    with pytest.raises(NotExportable) as info:
        export_version(registry, "custom", tmp_path / "out", FAST)
    message = str(info.value)
    assert "custom shipyard.Model (WeightedSum)" in message
    assert "arbitrary Python" in message and "graph of tensor operations" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_string_labels_survive_export(registry: Registry, tmp_path: Path) -> None:
    model, sample, expected, _ = FORMAT_CASES["lightgbm"](tmp_path)
    registry.register(model, "lgb", sample=sample)
    options = ExportOptions(latency_budget_s=0.01, register="lgb-edge")
    report = export_version(registry, "lgb", tmp_path / "out", options)
    loaded = registry.load(report.variants[1].registered or "")
    got = loaded.predict_arrays({c: sample[c].to_numpy() for c in sample.columns})["predict"]
    assert [str(x) for x in got] == [str(x) for x in expected]
