"""Quantized, pruned and compiled variants: each checked, measured, written only when it passes,
and registered back as a version that loads and predicts like its source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from sklearn.datasets import load_iris
from tests.fixtures.models import FORMAT_CASES

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo
from shipyard.errors import CheckFailed, InvalidInput
from shipyard.export import ExportOptions, export_version, parse_prune
from shipyard.registry import Registry

pytestmark = pytest.mark.integration


def _iris_frame() -> Any:
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = FEATURES
    X["species"] = y.to_numpy()
    return X


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the quickstart model (demo:1) and the fixtures' PyTorch MLP (mlp:1)."""
    home = tmp_path_factory.mktemp("edge") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
        path, sample, _, _ = FORMAT_CASES["torch_export"](tmp_path_factory.mktemp("mlp"))
        reg.register(path, "mlp", sample=sample)
    finally:
        reg.close()
    return home


@pytest.fixture
def reg(home: Path) -> Iterator[Registry]:
    r = Registry.from_settings(Settings(home=home))
    try:
        yield r
    finally:
        r.close()


def _by_name(report: Any) -> dict[str, Any]:
    return {v.name: v for v in report.variants}


@pytest.mark.slow
def test_mlp_variants_are_quantized_pruned_compiled_checked_and_measured(reg: Registry, tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    X = load_iris(return_X_y=True)[0].astype(np.float32)
    options = ExportOptions(
        quantize=("dynamic", "static", "fp16"), compile=("ort", "openvino"),
        prune=(parse_prune("magnitude:0.3"), parse_prune("structured:0.2")),
        check_data={"x": X}, latency_budget_s=0.01, tolerance=0.25,  # a barely trained 8-unit MLP
    )
    report = export_version(reg, "mlp", out, options)
    rows = _by_name(report)
    assert report.rows == 155  # the 5-row check set (the sample) + 150 from the data
    assert not report.failed, [(v.name, v.error) for v in report.failed]
    base = rows["onnx"]
    for name in ("quantize:dynamic", "quantize:static", "quantize:fp16", "prune:magnitude:0.3",
                 "prune:structured:0.2", "compile:ort", "compile:openvino"):
        v = rows[name]
        assert v.path is not None and v.path.exists(), name
        assert v.check is not None and v.check.passed
        assert v.size_bytes and v.compressed_bytes and v.timing is not None
        assert v.timing.batch1_ms > 0 and v.timing.batch1000_ms > 0
        assert v.check.label_agreement is not None  # top-1 of the logits
        assert v.accuracy_delta is not None
    assert rows["quantize:dynamic"].size_bytes < base.size_bytes  # int8 weights (a tiny net: the graph dominates)
    half = onnx.load_model(str(rows["quantize:fp16"].path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert rows["prune:magnitude:0.3"].notes["sparsity"] >= 0.29
    assert rows["prune:magnitude:0.3"].compressed_bytes < base.compressed_bytes  # zeros compress
    assert rows["compile:ort"].path.suffix == ".ort"
    assert (rows["compile:openvino"].path / "model.xml").is_file()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_variant_outside_the_tolerance_is_not_written_and_the_report_says_why(
    reg: Registry, tmp_path: Path
) -> None:
    out = tmp_path / "strict"
    report = export_version(reg, "mlp", out, ExportOptions(quantize=("dynamic",), tolerance=1e-7,
                                                            latency_budget_s=0.01))
    # the base export passes even at 1e-7 (it is float32 exact); int8 cannot
    row = _by_name(report)["quantize:dynamic"]
    assert not row.ok and "max difference" in (row.error or "") and "> tolerance 1e-07" in (row.error or "")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    with pytest.raises(Exception, match="1 of 2 variants were not written: quantize:dynamic"):
        report.raise_for_failures()


def test_a_base_export_outside_the_tolerance_stops_everything(reg: Registry, tmp_path: Path) -> None:
    # min agreement above 1 is impossible; 0 tolerance on float32-vs-float64 probabilities cannot pass
    with pytest.raises(CheckFailed, match="onnx failed its check"):
        export_version(reg, "demo", tmp_path / "zero", ExportOptions(tolerance=0.0, latency_budget_s=0.01))
    assert not any((tmp_path / "zero").iterdir())


def test_tree_ensembles_refuse_int8_and_fp16_and_openvino_with_the_reason(reg: Registry, tmp_path: Path) -> None:
    report = export_version(reg, "demo", tmp_path / "rf", ExportOptions(
        quantize=("dynamic", "fp16"), compile=("openvino",), latency_budget_s=0.01))
    rows = _by_name(report)
    assert "nothing to quantize" in (rows["quantize:dynamic"].error or "")
    assert "TreeEnsembleClassifier" in (rows["quantize:dynamic"].error or "")
    assert "nothing to convert to float16" in (rows["quantize:fp16"].error or "")
    assert "OpenVINO cannot convert this graph" in (rows["compile:openvino"].error or "")
    assert "TreeEnsembleClassifier" in (rows["compile:openvino"].error or "")
    assert sorted(p.name for p in (tmp_path / "rf").iterdir()) == ["model.onnx"]


def test_tree_pruning_picks_k_from_the_accuracy_curve_and_registers_it_back(reg: Registry, tmp_path: Path) -> None:
    data = _iris_frame()
    report = export_version(reg, "demo", tmp_path / "rf", ExportOptions(
        prune=(parse_prune("trees"), parse_prune("trees:5")), compile=("ort",), check_data=data,
        target="species", register="demo-edge", latency_budget_s=0.01))
    assert not report.failed, [(v.name, v.error) for v in report.failed]
    auto = next(v for v in report.variants if v.name.startswith("prune:trees") and "curve" in v.notes)
    curve = auto.notes["curve"]
    assert [k for k, _ in curve] == [1, 2, 5, 10, 20, 50, 100]
    full = curve[-1][1]
    assert auto.notes["trees"] < 100
    assert dict(curve)[auto.notes["trees"]] >= full - 0.01
    five = _by_name(report)["prune:trees:5"]
    assert five.size_bytes < _by_name(report)["onnx"].size_bytes / 5

    # every passing variant is a new version of demo-edge whose parent is demo:1
    versions = reg.versions("demo-edge")
    assert [v.tags["transformation"] for v in versions] == [v.name for v in report.variants[1:]]
    for mv in versions:
        assert mv.lineage["parent"] == "demo:1" and mv.flavor == "onnx"
        assert mv.tags["check"] == "passed" and mv.tags["source_digest"] == reg.get("demo:1").digest
        assert "check_label_agreement" in mv.metrics and "latency_batch1_ms" in mv.metrics
    ort_version = next(mv for mv in versions if mv.tags["transformation"] == "compile:ort")
    onnx_version = next(mv for mv in versions if mv.tags["transformation"] == "onnx")

    # they load and predict like the source, with the source's inputs
    rows = data.drop(columns="species").head(20)
    source = reg.load("demo:1").predict(rows)
    for mv in (onnx_version, ort_version):
        loaded = reg.load(mv)
        got = loaded.predict(rows)
        np.testing.assert_array_equal(got["predict"].to_numpy(), source["predict"].to_numpy())
        assert loaded.signature.input_names == FEATURES


def test_pytorch_pruning_is_refused_for_trees_and_tree_pruning_for_pytorch(reg: Registry, tmp_path: Path) -> None:
    report = export_version(reg, "mlp", tmp_path / "a", ExportOptions(prune=(parse_prune("trees:3"),),
                                                                      latency_budget_s=0.01))
    assert "for tree ensembles" in (report.failed[0].error or "")
    report = export_version(reg, "demo", tmp_path / "b", ExportOptions(prune=(parse_prune("magnitude:0.5"),),
                                                                       latency_budget_s=0.01))
    assert "for PyTorch models" in (report.failed[0].error or "")


def test_a_target_without_check_data_and_a_missing_target_column_are_refused(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--target names a column of --check-data"):
        ExportOptions(target="species")
    with pytest.raises(InvalidInput, match="--target 'label' is not a column"):
        export_version(reg, "demo", tmp_path / "x", ExportOptions(check_data=_iris_frame(), target="label"))
