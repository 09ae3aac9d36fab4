"""The official Triton HTTP client (tritonclient.http) against a real `shipyard serve`.

tritonclient is what most Open Inference Protocol users already have; it sends binary
tensors by default, so this is the binary tensor extension as a third party writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shipyard.demo import FEATURES, train_demo_model
from shipyard.testing import RunningServer

pytestmark = pytest.mark.integration

# Which model a request names: by name (the server's default, demo@champion), by alias, by version.
TARGETS = [("demo", ""), ("demo@champion", ""), ("demo", "1")]
TARGET_IDS = ["name", "alias", "version"]


@pytest.fixture(scope="module")
def triton(demo_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{demo_server.port}", network_timeout=30.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def reference() -> tuple[Any, pd.DataFrame]:
    model, X, _ = train_demo_model()
    rows = X.iloc[::3]  # 50 rows covering all three species
    return model, rows


def infer_inputs(rows: pd.DataFrame, *, binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for name in FEATURES:
        column = rows[name].to_numpy(dtype=np.float64)
        tensor = httpclient.InferInput(name, list(column.shape), "FP64")
        tensor.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_server_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "shipyard"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize(("model", "version"), TARGETS, ids=TARGET_IDS)
def test_model_metadata_and_readiness(triton: httpclient.InferenceServerClient, model: str, version: str) -> None:
    meta = triton.get_model_metadata(model, model_version=version)
    assert meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [(f, "FP64", [-1]) for f in FEATURES]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("predict", "INT64")]
    assert triton.is_model_ready(model, model_version=version)


def test_unknown_model_version_and_alias_are_not_ready(triton: httpclient.InferenceServerClient) -> None:
    assert not triton.is_model_ready("nope")
    assert not triton.is_model_ready("demo", model_version="7")
    assert not triton.is_model_ready("demo@staging")
    with pytest.raises(InferenceServerException, match="model 'demo' has no version 7"):
        triton.get_model_metadata("demo", model_version="7")


@pytest.mark.parametrize("explicit_output", [False, True], ids=["all-outputs", "requested-output"])
@pytest.mark.parametrize(("model", "version"), TARGETS, ids=TARGET_IDS)
def test_binary_tensors_predict_like_the_model(
    triton: httpclient.InferenceServerClient,
    reference: tuple[Any, pd.DataFrame],
    model: str,
    version: str,
    explicit_output: bool,
) -> None:
    estimator, rows = reference
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=True)] if explicit_output else None
    result = triton.infer(model, infer_inputs(rows, binary=True), model_version=version, outputs=outputs)
    out = result.get_output("predict")
    assert out["datatype"] == "INT64" and out["shape"] == [len(rows)]
    assert out["parameters"]["binary_data_size"] == 8 * len(rows)
    predicted = result.as_numpy("predict")
    assert predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, estimator.predict(rows))
    response = result.get_response()
    assert response["model_name"] == "demo" and response["model_version"] == "1"


@pytest.mark.parametrize(("model", "version"), TARGETS, ids=TARGET_IDS)
def test_json_tensors_predict_like_the_model(
    triton: httpclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame], model: str, version: str
) -> None:
    estimator, rows = reference
    result = triton.infer(
        model,
        infer_inputs(rows, binary=False),
        model_version=version,
        outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)],
        request_id="json-1",
    )
    out = result.get_output("predict")
    assert "data" in out and "binary_data_size" not in out.get("parameters", {})
    np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(rows))
    assert result.get_response()["id"] == "json-1"


def test_gzip_compressed_request_is_accepted(
    triton: httpclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    estimator, rows = reference
    result = triton.infer("demo", infer_inputs(rows, binary=True), request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(rows))


def test_bad_input_raises_an_exception_naming_the_field(
    triton: httpclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    _, rows = reference
    with pytest.raises(InferenceServerException, match="missing input 'petal_width'"):
        triton.infer("demo", infer_inputs(rows, binary=True)[:3])

    with_nan = rows.copy()
    with_nan.iloc[2, 0] = np.nan  # sepal_length of the third row
    with pytest.raises(InferenceServerException) as info:
        triton.infer("demo", infer_inputs(with_nan, binary=True))
    assert "input 'sepal_length': expected finite numbers, got nan at position 2" in str(info.value)

    odd = httpclient.InferInput("sepal_width", [len(rows)], "BYTES")
    odd.set_data_from_numpy(np.array([b"wide"] * len(rows), dtype=object))
    inputs = [odd if i.name() == "sepal_width" else i for i in infer_inputs(rows, binary=True)]
    with pytest.raises(InferenceServerException, match="input 'sepal_width': expected FP64, got str 'wide'"):
        triton.infer("demo", inputs)

    with pytest.raises(InferenceServerException, match="unknown output 'proba'"):
        triton.infer("demo", infer_inputs(rows, binary=True), outputs=[httpclient.InferRequestedOutput("proba")])

    with pytest.raises(InferenceServerException, match="model 'demo' has no alias 'staging'"):
        triton.infer("demo@staging", infer_inputs(rows, binary=True))


def test_model_config_describes_the_signature_as_triton_does(triton: httpclient.InferenceServerClient) -> None:
    config = triton.get_model_config("demo")
    assert config["name"] == "demo" and config["platform"] == "shipyard_sklearn"
    assert config["max_batch_size"] > 0 and config["version_policy"] == {"specific": {"versions": [1]}}
    assert [(i["name"], i["data_type"], i["dims"], i["reshape"]) for i in config["input"]] == [
        (f, "TYPE_FP64", [1], {"shape": []}) for f in FEATURES
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("predict", "TYPE_INT64", [1])]
    meta = triton.get_model_metadata("demo")
    assert {k: v["string_value"] for k, v in config["parameters"].items()} == {
        k: str(v) for k, v in meta["parameters"].items()
    }
    by_alias = triton.get_model_config("demo@champion")
    assert by_alias["name"] == "demo@champion"  # the name as asked, as model metadata answers
    assert {**by_alias, "name": "demo"} == config
    with pytest.raises(InferenceServerException, match="model 'demo' has no version 7"):
        triton.get_model_config("demo", model_version="7")


def test_a_config_shaped_request_is_answered(
    triton: httpclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    """What perf_analyzer sends after reading the config: [batch] + dims, here [rows, 1] per column."""
    estimator, rows = reference
    inputs = []
    for i in triton.get_model_config("demo")["input"]:
        tensor = httpclient.InferInput(i["name"], [len(rows), *i["dims"]], i["data_type"].removeprefix("TYPE_"))
        tensor.set_data_from_numpy(rows[i["name"]].to_numpy().reshape(len(rows), *i["dims"]))
        inputs.append(tensor)
    np.testing.assert_array_equal(triton.infer("demo", inputs).as_numpy("predict"), estimator.predict(rows))


def test_repository_index_lists_the_served_version(triton: httpclient.InferenceServerClient) -> None:
    assert triton.get_model_repository_index() == [{"name": "demo", "version": "1", "state": "READY", "reason": ""}]


def test_statistics_count_this_clients_requests(
    triton: httpclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    _, rows = reference
    (before,) = triton.get_inference_statistics("demo", "1")["model_stats"]
    triton.infer("demo", infer_inputs(rows, binary=True))
    with pytest.raises(InferenceServerException):
        triton.infer("demo", infer_inputs(rows, binary=True)[:3])
    (after,) = triton.get_inference_statistics("demo", "1")["model_stats"]
    assert after["inference_count"] - before["inference_count"] == len(rows)
    for key, more in (("success", 1), ("fail", 1)):
        assert after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"] == more
        assert after["inference_stats"][key]["ns"] > before["inference_stats"][key]["ns"]
    assert after["execution_count"] == before["execution_count"] + 1 and after["last_inference"] > 0
    assert triton.get_inference_statistics("demo")["model_stats"][0]["name"] == "demo"
    assert [m["name"] for m in triton.get_inference_statistics()["model_stats"]] == ["demo"]
