"""TensorFlow and Keras models end to end, on one small Keras classifier trained here.

Registered three ways (the Keras object, a ``.keras`` file, a SavedModel folder with a
named signature); served over REST, gRPC and GraphQL by one ``shipyard serve``; scored
by ``shipyard batch`` and ``shipyard stream``; exported by ``shipyard export --to
tflite`` (float, dynamic, int8, fp16) and ``--compile xla``, each checked against the
source, registered and served (TFLite by the LiteRT interpreter, in a process that
never imports TensorFlow); bundled and run in a fresh virtual environment that has only
LiteRT and NumPy; converted to ONNX by tf2onnx; and read from an MLflow ``tensorflow``
folder. Every answer is compared with the Keras model's own output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.integration.stream.harness_local import LocalHarness
from tests.integration.test_lean_serving import _serve_and_probe

import shipyard
from shipyard.config import Settings
from shipyard.errors import ModelFormatError, NotExportable
from shipyard.export import ExportOptions, bundle_version, export_version
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = 8
CLASSES = 3
TF_MODULES = {"tensorflow", "keras", "tf2onnx"}


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shipyard_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "250", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


class Trained:
    """The Keras model, its rows and files written from it."""

    def __init__(self, root: Path) -> None:
        _quiet_tf()
        import keras

        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(400, FEATURES)).astype(np.float32)
        w = rng.normal(size=(FEATURES, CLASSES))
        self.y = (self.X @ w).argmax(axis=1)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((FEATURES,), name="x"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(self.X, self.y, epochs=15, batch_size=32, verbose=0)
        self.model = model
        self.keras_file = root / "clf.keras"
        model.save(self.keras_file)
        self.saved_model = root / "clf_saved_model"
        model.export(str(self.saved_model), verbose=False)

    def expected(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(rows, training=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras/TensorFlow's own notes while training and saving
        return Trained(tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Path:
    """clf (the Keras object), clf-file (the .keras file), clf-sm (the SavedModel, signature 'serve');
    then `shipyard export clf --to tflite` registers clf-edge:1..5 (float, dynamic, int8, fp16, xla)."""
    home = tmp_path_factory.mktemp("tf") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(trained.model, "clf", sample=trained.X[:300])
        reg.register(trained.keras_file, "clf-file", sample=trained.X[:5])
        reg.register(trained.saved_model, "clf-sm", signature="serve")
    finally:
        reg.close()
    return home


@pytest.fixture(scope="module")
def exported(home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("dist")
    proc = shipyard_cli(home, "export", "clf", "--to", "tflite", "--quantize", "dynamic", "--quantize", "int8",
                        "--quantize", "fp16", "--compile", "xla", "--out", str(out), "--register", "clf-edge",
                        "--latency-seconds", "0.2")
    return out, proc.stdout


def test_the_keras_object_the_keras_file_and_the_saved_model_serve_like_keras(home: Path, trained: Trained) -> None:
    rows = trained.X[::7]
    reg = Registry.from_settings(Settings(home=home))
    try:
        for name in ("clf", "clf-file", "clf-sm"):
            mv = reg.get(name)
            assert mv.flavor == "tensorflow"
            sig = mv.signature
            assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("x", "FP32", (-1, FEATURES))]
            assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [("output_0", "FP32", (-1, CLASSES))]
            got = reg.load(mv).predict_arrays({"x": rows})["output_0"]
            np.testing.assert_allclose(got, trained.expected(rows), rtol=1e-5, atol=1e-6)
        assert reg.get("clf-sm").flavor_meta["signature"] == "serve"
        assert reg.get("clf-file").flavor_meta["keras_file"] == "clf.keras"
    finally:
        reg.close()


def test_an_unknown_signature_and_a_lambda_layer_are_refused(trained: Trained, tmp_path: Path) -> None:
    import keras

    reg = Registry.from_settings(Settings(home=tmp_path / "home"))
    try:
        with pytest.raises(ModelFormatError, match=r"no signature 'scores' \(it has: serve, serving_default\)"):
            reg.register(trained.saved_model, "bad", signature="scores")
        doubled = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Lambda(lambda t: t * 2.0)])
        path = tmp_path / "lambda.keras"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            doubled.save(path)
        with pytest.raises(ModelFormatError, match="Lambda layer.*--trust-pickle"):
            reg.register(path, "lambda", sample=np.ones((2, 2), np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = reg.register(path, "lambda", sample=np.ones((2, 2), np.float32), trust_pickle=True)
        got = reg.load(mv).predict_arrays({"x": np.array([[1.0, -3.0]], np.float32)})
        np.testing.assert_array_equal(next(iter(got.values())), [[2.0, -6.0]])
    finally:
        reg.close()


@pytest.fixture(scope="module")
def server(home: Path, exported: tuple[Path, str]) -> Iterator[RunningServer]:
    with run_server(home, ["clf", "clf-edge"], grpc=True, ready_timeout=120,
                    env={"TF_CPP_MIN_LOG_LEVEL": "2"}) as running:
        yield running


def test_rest_grpc_and_graphql_answer_what_keras_answers(server: RunningServer, trained: Trained) -> None:
    rows = trained.X[:6]
    expected = trained.expected(rows)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape),
                            "data": rows.reshape(-1).tolist()}]}
        r = c.post("/v2/models/clf/infer", json=body)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert out["name"] == "output_0" and out["shape"] == [6, CLASSES]
        np.testing.assert_allclose(np.reshape(out["data"], (6, CLASSES)), expected, rtol=1e-5, atol=1e-6)

        v1 = c.post("/v1/models/clf:predict", json={"instances": rows.tolist()})
        assert v1.status_code == 200, v1.text
        np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-5, atol=1e-6)

        bad = c.post("/v2/models/clf/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                                                "data": [1, 2, 3]}]})
        assert bad.status_code == 400 and "x" in bad.text

        query = """query($records: JSON!) { predict(model: "clf", records: $records) { modelName predictions } }"""
        # a one-input model takes each record as the list of its values
        g = c.post("/graphql", json={"query": query, "variables": {"records": rows.tolist()}})
        assert g.status_code == 200 and "errors" not in g.json(), g.text
        data = g.json()["data"]["predict"]
        assert data["modelName"] == "clf"
        np.testing.assert_allclose(data["predictions"], expected, rtol=1e-5, atol=1e-6)

    with shipyard.Client(f"grpc://{server.grpc_target}", timeout=60) as client:
        got = client.predict("clf", {"x": rows})
    np.testing.assert_allclose(got["output_0"], expected, rtol=1e-5, atol=1e-6)


def test_export_to_tflite_checks_measures_and_registers_every_variant(
    home: Path, exported: tuple[Path, str], trained: Trained
) -> None:
    out, table = exported
    for name in ("tflite", "quantize:dynamic", "quantize:int8", "quantize:fp16", "compile:xla"):
        assert name in table
    assert "FAILED" not in table and "checked on 300 rows" in table
    assert {p.name for p in out.iterdir()} == {"model.tflite", "model.dynamic.tflite", "model.int8.tflite",
                                                "model.fp16.tflite", "model.xla"}
    # int8 weights take a quarter of the bytes (the flatbuffer's own overhead stays the same)
    float_size = (out / "model.tflite").stat().st_size
    assert (out / "model.int8.tflite").stat().st_size < 0.7 * float_size
    assert (out / "model.dynamic.tflite").stat().st_size < 0.7 * float_size
    reg = Registry.from_settings(Settings(home=home))
    try:
        flavors = {v: reg.get(f"clf-edge:{v}") for v in range(1, 6)}
        assert [mv.flavor for mv in flavors.values()] == ["tflite"] * 4 + ["tensorflow"]
        assert [mv.tags["transformation"] for mv in flavors.values()] == [
            "tflite", "quantize:dynamic", "quantize:int8", "quantize:fp16", "compile:xla"]
        assert all(mv.tags["check"] == "passed" and mv.tags["source"] == "clf:1" for mv in flavors.values())
        assert flavors[3].metrics["check_label_agreement"] >= 0.95
        # the XLA variant's serving function is marked for compilation
        xla = reg.fetch(flavors[5]) / "saved_model" / "saved_model.pb"
        assert b"_XlaMustCompile" in xla.read_bytes()
        rows = trained.X[-50:]
        for v, tol in ((1, 1e-5), (4, 1e-2), (5, 1e-5)):
            got = reg.load(f"clf-edge:{v}").predict_arrays({"x": rows})["output_0"]
            np.testing.assert_allclose(got, trained.expected(rows), atol=tol)
    finally:
        reg.close()


def test_a_tflite_version_is_served_by_litert_without_tensorflow(
    exported: tuple[Path, str], trained: Trained, server: RunningServer, tmp_path: Path
) -> None:
    rows = trained.X[:4]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1).tolist()}]}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v2/models/clf-edge/versions/3/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    int8 = np.reshape(out["data"], (4, CLASSES))
    np.testing.assert_allclose(int8, trained.expected(rows), atol=0.1)

    # the fp16 file registered on its own, served by a process of its own
    lite_home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=lite_home))
    try:
        mv = reg.register(exported[0] / "model.fp16.tflite", "clf-lite")
    finally:
        reg.close()
    assert mv.flavor == "tflite" and mv.flavor_meta["signature"] == "serving_default"
    assert [(s.name, s.datatype, s.shape) for s in mv.signature.inputs] == [("x", "FP32", (-1, FEATURES))]
    answer, modules = _serve_and_probe(lite_home, "clf-lite", {"instances": rows.tolist()}, "--workers", "1")
    assert answer is not None
    np.testing.assert_allclose(answer["predictions"], trained.expected(rows), atol=1e-2)  # type: ignore[index]
    assert "ai_edge_litert" in modules
    assert modules.isdisjoint(TF_MODULES), sorted(modules & TF_MODULES)


def test_batch_and_stream_score_with_the_keras_model(home: Path, trained: Trained, tmp_path: Path) -> None:
    rows = trained.X[:20]
    expected = trained.expected(rows)
    # a tensor input is a fixed-size list column
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": list(range(20)),
                             "x": pa.array(rows.tolist(), type=pa.list_(pa.float32(), FEATURES))}), data)
    shipyard_cli(home, "batch", "clf", "--input", str(data), "--output", str(tmp_path / "scored"), "--format",
                 "jsonl", "--id-column", "id", "--workers", "1")
    scored = [json.loads(line) for p in sorted((tmp_path / "scored").glob("part-*.jsonl"))
              for line in p.read_text().splitlines()]
    by_id = {r["id"]: r["output_0"] for r in scored}
    np.testing.assert_allclose([by_id[i] for i in range(20)], expected, rtol=1e-5, atol=1e-6)

    broker = LocalHarness(tmp_path / "streams.db")
    # a one-input model's row is the list of its values
    broker.produce("in", [(f"k{i}", json.dumps({"instances": [r]}).encode()) for i, r in enumerate(rows.tolist())])
    env = {**os.environ, "SHIPYARD_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "stream", "clf", "--source", broker.url("in"),
                             "--sink", broker.url("out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(broker.read_all("out")) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    results = {k: json.loads(v) for k, v in broker.read_all("out")}
    assert len(results) == 20, err.decode()[-2000:]
    got = [results[f"k{i}"]["predictions"][0] for i in range(20)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def litert_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the LiteRT interpreter and NumPy."""
    where = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "ai-edge-litert", "numpy"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip could not install ai-edge-litert and numpy here: {proc.stderr[-2000:]}"
    return python


def test_a_tflite_bundle_runs_in_a_fresh_environment_with_only_litert_and_numpy(
    home: Path, exported: tuple[Path, str], trained: Trained, litert_python: Path, tmp_path: Path
) -> None:
    reg = Registry.from_settings(Settings(home=home))
    try:
        report = bundle_version(reg, "clf-edge:3", tmp_path / "edge.zip")
        rows = trained.X[:5]
        expected = reg.load("clf-edge:3").predict_arrays({"x": rows})["output_0"]
    finally:
        reg.close()
    assert report.check.passed
    (tmp_path / "input.json").write_text(json.dumps({"instances": [{"x": r} for r in rows.tolist()]}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHIPYARD_HOME")}
    ran = subprocess.run([str(litert_python), str(tmp_path / "edge.zip"), "input.json"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert (answer["model_name"], answer["model_version"]) == ("clf-edge", "3")
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-6, atol=1e-6)
    probe = subprocess.run([str(litert_python), "-c", "import tensorflow"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr


def test_tf2onnx_exports_the_keras_model_and_an_xla_variant_says_why_it_cannot(
    home: Path, exported: tuple[Path, str], trained: Trained, tmp_path: Path
) -> None:
    reg = Registry.from_settings(Settings(home=home))
    try:
        report = export_version(reg, "clf", tmp_path / "onnx", ExportOptions(latency_budget_s=0.1))
        onnx_row = report.variants[1]
        assert onnx_row.name == "onnx" and onnx_row.ok and onnx_row.check is not None
        assert onnx_row.check.max_abs_diff is not None and onnx_row.check.max_abs_diff < 1e-4
        with pytest.raises(NotExportable, match="compiled with XLA"):
            export_version(reg, "clf-edge:5", tmp_path / "xla-onnx", ExportOptions(latency_budget_s=0.1))
        with pytest.raises(NotExportable, match="--to tflite converts TensorFlow models"):
            export_version(reg, "clf-edge:1", tmp_path / "again", ExportOptions(to="tflite"))
    finally:
        reg.close()


def test_an_mlflow_tensorflow_folder_loads_through_the_tensorflow_runtime(trained: Trained, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's and Keras's notes while saving
        import mlflow.tensorflow

        mlflow.tensorflow.save_model(trained.model, str(tmp_path / "mlflow-model"), input_example=trained.X[:3])
    reg = Registry.from_settings(Settings(home=tmp_path / "home"))
    try:
        mv = reg.register(tmp_path / "mlflow-model", "from-mlflow")
        assert mv.flavor == "mlflow" and mv.flavor_meta["loader"] == "tensorflow"
        assert [(s.datatype, s.shape) for s in mv.signature.inputs] == [("FP32", (-1, FEATURES))]
        rows = trained.X[:7]
        got = reg.load(mv).predict_arrays({mv.signature.inputs[0].name: rows})
        np.testing.assert_allclose(next(iter(got.values())), trained.expected(rows), rtol=1e-5, atol=1e-6)
        stored = reg.fetch(mv)
        assert not list((stored / "mlflow").rglob("model.keras"))  # the model is kept once, as the SavedModel
    finally:
        reg.close()
