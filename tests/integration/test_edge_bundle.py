"""`shipyard export` and `shipyard bundle` as a user runs them, and the bundle in a fresh virtual
environment that has only onnxruntime and NumPy: run as `python model.zip input.json` and imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from tests.fixtures.models import FORMAT_CASES

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo
from shipyard.export import ExportOptions, bundle_version, export_version
from shipyard.registry import Registry

pytestmark = pytest.mark.integration


def shipyard(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo:1 (the quickstart RandomForest), mlp:1 (a PyTorch exported program) and custom:1."""
    home = tmp_path_factory.mktemp("bundle") / "home"
    files = tmp_path_factory.mktemp("models")
    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
        path, sample, _, _ = FORMAT_CASES["torch_export"](files)
        reg.register(path, "mlp", sample=sample)
        model, sample, _, _ = FORMAT_CASES["custom"](files)
        reg.register(model, "custom", sample=sample)
    finally:
        reg.close()
    return home


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only onnxruntime and NumPy (pip takes them from the local cache)."""
    where = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "onnxruntime", "numpy"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip could not install onnxruntime and numpy here: {proc.stderr[-2000:]}"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout on its path
    probe = subprocess.run([str(python), "-c", "import shipyard"], capture_output=True, text=True, timeout=60,
                           cwd=where, env=clean)
    assert probe.returncode != 0 and "No module named 'shipyard'" in probe.stderr
    return python


def _run(python: Path, *args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHIPYARD_HOME")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
                          input=stdin)


def test_export_command_writes_checked_variants_registers_them_and_prints_the_table(
    home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dist"
    proc = shipyard(home, "export", "demo", "--to", "onnx", "--prune", "trees:10", "--compile", "ort",
                    "--out", str(out), "--register", "demo-edge", "--latency-seconds", "0.05")
    for text in ("source", "onnx", "prune:trees:10", "compile:ort", "batch 1000 ms", "registered demo-edge:1",
                 "registered demo-edge:3"):
        assert text in proc.stdout, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.ort", "model.ort.onnx",
                                                     "model.prune-trees-10.onnx"]
    shown = shipyard(home, "models", "show", "demo-edge:2").stdout
    assert "prune:trees:10" in shown and "demo:1" in shown


def test_export_command_fails_with_one_line_for_what_cannot_be_made(home: Path, tmp_path: Path) -> None:
    proc = shipyard(home, "export", "custom", "--out", str(tmp_path / "c"), check=False)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "custom shipyard.Model" in proc.stderr and "Traceback" not in proc.stderr
    proc = shipyard(home, "export", "demo", "--quantize", "dynamic", "--out", str(tmp_path / "q"),
                    "--latency-seconds", "0.01", check=False)
    assert proc.returncode == 1
    assert "FAILED: nothing to quantize" in proc.stdout  # the table row ...
    assert "1 of 2 variants were not written" in proc.stderr  # ... and the one-line reason
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model.onnx"]


@pytest.mark.slow
def test_bundle_runs_and_imports_in_a_fresh_environment_without_shipyard(
    home: Path, tmp_path: Path, fresh_python: Path
) -> None:
    zip_path = tmp_path / "model.zip"
    proc = shipyard(home, "bundle", "demo", "--out", str(zip_path))
    assert "python " in proc.stdout and zip_path.is_file()

    from sklearn.datasets import load_iris

    X, _ = load_iris(return_X_y=True, as_frame=True)
    X.columns = FEATURES
    rows = X.iloc[[0, 55, 110, 149]]
    reg = Registry.from_settings(Settings(home=home))
    try:
        expected = reg.load("demo").predict(rows)["predict"].tolist()
    finally:
        reg.close()
    (tmp_path / "input.json").write_text(json.dumps({"instances": rows.to_dict(orient="records")}))

    # as a command
    ran = _run(fresh_python, str(zip_path), "input.json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["model_name"] == "demo" and answer["model_version"] == "1"
    assert [p["predict"] for p in answer["predictions"]] == expected

    # from standard input, with columns
    cols = json.dumps({"inputs": {c: rows[c].tolist() for c in FEATURES}})
    ran = _run(fresh_python, str(zip_path), "-", cwd=tmp_path, stdin=cols)
    assert [p["predict"] for p in json.loads(ran.stdout)["predictions"]] == expected

    # bad input: one line, non-zero
    ran = _run(fresh_python, str(zip_path), "-", cwd=tmp_path, stdin='{"inputs": {"sepal_length": ["x"]}}')
    assert ran.returncode == 1 and ran.stderr.startswith("error: ") and "Traceback" not in ran.stderr

    # imported
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import edge_model; m = edge_model.load(); "
        "out = m.predict(json.load(open(sys.argv[2]))['instances']); "
        "print(json.dumps({'predict': out['predict'].tolist(), 'mods': sorted(k for k in sys.modules "
        "if k.split('.')[0] == 'shipyard')}))"
    )
    ran = _run(fresh_python, "-c", code, str(zip_path), "input.json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    imported = json.loads(ran.stdout)
    assert imported == {"predict": expected, "mods": []}


@pytest.mark.slow
def test_a_registered_quantized_pytorch_variant_bundles_and_runs_fresh(
    home: Path, tmp_path: Path, fresh_python: Path
) -> None:
    reg = Registry.from_settings(Settings(home=home))
    try:
        report = export_version(reg, "mlp", tmp_path / "dist", ExportOptions(
            quantize=("dynamic",), register="mlp-edge", latency_budget_s=0.01))
        quantized = next(v.registered for v in report.variants if v.name == "quantize:dynamic")
        assert quantized is not None
        b = bundle_version(reg, quantized, tmp_path / "mlp.zip")
        assert b.check.passed and b.source == quantized
        sample = FORMAT_CASES["torch_export"](tmp_path)[1]
        expected = reg.load(quantized).predict(sample)
    finally:
        reg.close()
    (tmp_path / "in.json").write_text(json.dumps({"instances": sample.tolist()}))
    ran = _run(fresh_python, str(b.path), "in.json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    got = np.asarray(json.loads(ran.stdout)["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
