"""The served demo model over real HTTP: health, metadata, both APIs, request ids."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from shipyard.demo import FEATURES, train_demo_model
from shipyard.testing import RunningServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference():
    model, X, _ = train_demo_model()
    return model, X


def test_health_and_server_metadata(demo_server: RunningServer) -> None:
    with httpx.Client(base_url=demo_server.url) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        meta = c.get("/v2").json()
        assert meta["name"] == "shipyard"
        assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_shows_signature(demo_server: RunningServer) -> None:
    meta = httpx.get(f"{demo_server.url}/v2/models/demo").json()
    assert meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    assert meta["outputs"][0]["name"] == "predict"
    by_version = httpx.get(f"{demo_server.url}/v2/models/demo/versions/1").json()
    assert by_version["inputs"] == meta["inputs"]


def test_v1_predict_matches_the_model_for_records_and_columns(demo_server: RunningServer, reference) -> None:
    model, X = reference
    rows = X.iloc[::10]
    expected = model.predict(rows).tolist()
    with httpx.Client(base_url=demo_server.url) as c:
        r = c.post("/v1/models/demo:predict", json={"instances": rows.to_dict(orient="records")})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == expected
        assert r.json()["model_version"] == "1"
        cols = {k: list(v) for k, v in rows.to_dict(orient="list").items()}
        r2 = c.post("/v1/models/demo@champion:predict", json={"inputs": cols})
        assert r2.json()["predictions"] == expected


def test_v2_infer_by_name_alias_and_version(demo_server: RunningServer, reference) -> None:
    model, X = reference
    rows = X.iloc[:7]
    body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(rows)], "data": rows[c].tolist()}
                       for c in FEATURES]}
    expected = model.predict(rows)
    with httpx.Client(base_url=demo_server.url) as c:
        for path in ("/v2/models/demo/infer", "/v2/models/demo@champion/infer",
                     "/v2/models/demo/versions/1/infer"):
            r = c.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            out = r.json()["outputs"][0]
            assert out["name"] == "predict" and out["shape"] == [7]
            np.testing.assert_array_equal(out["data"], expected)


def test_request_id_is_kept_or_created(demo_server: RunningServer) -> None:
    with httpx.Client(base_url=demo_server.url) as c:
        r = c.get("/v2/health/live", headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        r2 = c.post("/v1/models/demo:predict", json={"instances": [dict.fromkeys(FEATURES, 1.0)]})
        assert len(r2.headers["x-request-id"]) == 32
        assert r2.json()["id"] == r2.headers["x-request-id"]
        bad = c.post("/v1/models/demo:predict", json={"instances": []}, headers={"X-Request-ID": "bad-1"})
        assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-1"


def test_openapi_and_docs(demo_server: RunningServer) -> None:
    spec = httpx.get(f"{demo_server.url}/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    page = httpx.get(f"{demo_server.url}/docs")
    assert page.status_code == 200 and "/v1/models/{name}:predict" in page.text
