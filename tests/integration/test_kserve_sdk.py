"""KServe's Python SDK (``kserve.InferenceRESTClient`` and ``kserve.InferenceGRPCClient``) against a real
`shipyard serve --grpc-port`: health, readiness, metadata and inference over the Open Inference Protocol.

The SDK runs in a process of its own (``_kserve_calls.py``: it and tritonclient cannot share an
interpreter); this module starts the server, runs every call once, and checks each answer.
The SDK's clients have no metadata calls, so metadata is read with the SDK's own protocol
definitions (its pydantic REST data models, its generated gRPC stub). Two models: the iris
demo on FP64 columns and the same kind of model on FP32 columns, 50 rows per request.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import run_server

pytestmark = pytest.mark.integration

CALLS = Path(__file__).with_name("_kserve_calls.py")
NARROWING = ("input 'sepal_length': expected FP32 (or FP16, INT8, INT16, UINT8, UINT16, which widen to it "
             "without loss), got FP64")


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], dict[str, list[int]]]]:
    """Every SDK call's answer, and what each model predicts for the rows sent."""
    if importlib.util.find_spec("kserve") is None:  # found, not imported: it cannot live beside tritonclient
        pytest.skip("KServe's SDK is not installed (pip install 'kserve>=0.21', in the test extra)")
    tmp = tmp_path_factory.mktemp("kserve")
    home = tmp / "home"
    demo, X, _ = train_demo_model()
    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
        f32 = LogisticRegression(max_iter=500).fit(X.astype(np.float32), demo.predict(X))
        reg.register(f32, "f32", sample=X.head(5).astype(np.float32))
    finally:
        reg.close()
    rows = X.iloc[::3]
    spec = tmp / "rows.json"
    spec.write_text(json.dumps({"features": FEATURES, "rows": {f: rows[f].tolist() for f in FEATURES}}))
    expected = {"demo": demo.predict(rows).tolist(), "f32": f32.predict(rows.astype(np.float32)).tolist(),
                # FP32 values widened to FP64, as the server does for the FP64 model
                "demo FP32": demo.predict(rows.astype(np.float32).astype(np.float64)).tolist()}
    with run_server(home, ["demo@champion", "f32"], grpc=True) as server:
        done = subprocess.run([sys.executable, str(CALLS), server.url, server.grpc_target, str(spec)],
                              capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    yield json.loads(done.stdout), expected


def predicted(answer: dict[str, Any]) -> list[int]:
    assert "error" not in answer, answer
    (out,) = answer["outputs"]
    assert (out["name"], out["datatype"]) == ("predict", "INT64") and out["shape"] == [50]
    assert answer["id"] == "kserve-1"
    return out["data"]  # type: ignore[no-any-return]


def test_rest_health_and_readiness(answers: Any) -> None:
    assert answers[0]["rest health"] == [True, True, True, False]  # live, ready, demo ready, nope not


def test_rest_metadata_reads_as_the_sdks_data_models(answers: Any) -> None:
    got = answers[0]
    assert got["rest server metadata"]["name"] == "shipyard"
    assert "binary_tensor_data" in got["rest server metadata"]["extensions"]
    for model, datatype in (("demo", "FP64"), ("f32", "FP32")):
        meta = got[f"rest model metadata {model}"]
        assert meta["versions"] == ["1"] and meta["platform"] == "shipyard_sklearn"
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [(f, datatype, [-1])
                                                                                    for f in FEATURES]


@pytest.mark.parametrize("body", ["json", "binary"])
@pytest.mark.parametrize(("model", "datatype", "reference"),
                         [("demo", "FP64", "demo"), ("f32", "FP32", "f32"), ("demo", "FP32", "demo FP32")],
                         ids=["fp64", "fp32", "fp32-widened-to-fp64"])
def test_rest_infer_predicts_like_the_model(answers: Any, model: str, datatype: str, reference: str,
                                            body: str) -> None:
    got, expected = answers
    assert predicted(got[f"rest infer {model} {datatype} {body}"]) == expected[reference]


@pytest.mark.parametrize("body", ["json", "binary"])
def test_rest_refuses_a_narrowing_datatype_naming_the_input(answers: Any, body: str) -> None:
    refused = answers[0][f"rest infer f32 FP64 {body}"]
    assert refused["status"] == 400 and NARROWING in refused["error"]


def test_grpc_health_readiness_and_metadata(answers: Any) -> None:
    got = answers[0]
    assert got["grpc health"] == [True, True, True]
    assert got["grpc model ready nope"]["status"] == "NOT_FOUND"
    assert got["grpc server metadata"]["name"] == "shipyard"
    meta = got["grpc model metadata f32"]
    assert meta["versions"] == ["1"] and [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        (f, "FP32", [-1]) for f in FEATURES]


@pytest.mark.parametrize("contents", ["raw", "typed"])
@pytest.mark.parametrize(("model", "datatype", "reference"),
                         [("demo", "FP64", "demo"), ("f32", "FP32", "f32"), ("demo", "FP32", "demo FP32")],
                         ids=["fp64", "fp32", "fp32-widened-to-fp64"])
def test_grpc_infer_predicts_like_the_model(answers: Any, model: str, datatype: str, reference: str,
                                            contents: str) -> None:
    got, expected = answers
    answer = got[f"grpc infer {model} {datatype} {contents}"]
    assert predicted(answer) == expected[reference] and answer["model_version"] == "1"


@pytest.mark.parametrize("contents", ["raw", "typed"])
def test_grpc_refuses_a_narrowing_datatype_naming_the_input(answers: Any, contents: str) -> None:
    refused = answers[0][f"grpc infer f32 FP64 {contents}"]
    assert refused["status"] == "INVALID_ARGUMENT" and refused["error"].startswith(NARROWING)
