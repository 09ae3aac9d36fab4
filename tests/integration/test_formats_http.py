"""Every model format: register, serve over HTTP in one `shipyard serve`, predict like the original."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tests.fixtures.models import EXPECTED_OUTPUT, FORMAT_CASES

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

FORMATS = sorted(FORMAT_CASES)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, Any]]]:
    """One server holding every format, each registered under its format's name."""
    root = tmp_path_factory.mktemp("formats")
    home = root / "home"
    reg = Registry.from_settings(Settings(home=home))
    cases: dict[str, Any] = {}
    try:
        for fmt in FORMATS:
            work = root / fmt
            work.mkdir()
            with warnings.catch_warnings():
                # Building the fixtures trains and saves with third-party libraries (mlflow's
                # type-hint notes, torch 2.13's TorchScript deprecation); their warnings are
                # checked in the per-runtime unit tests, not here.
                warnings.simplefilter("ignore")
                model, sample, expected, kwargs = FORMAT_CASES[fmt](work)
                reg.register(model, fmt, sample=sample, **kwargs)
            cases[fmt] = (sample, expected)
    finally:
        reg.close()
    with run_server(home, FORMATS) as server:
        yield server, cases


def _oip_inputs(sample: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    specs = {i["name"]: i for i in meta["inputs"]}
    if hasattr(sample, "columns"):
        return [{"name": c, "datatype": specs[c]["datatype"], "shape": [len(sample)],
                 "data": sample[c].tolist()} for c in sample.columns]
    (only,) = meta["inputs"]
    arr = np.asarray(sample)
    return [{"name": only["name"], "datatype": only["datatype"], "shape": list(arr.shape),
             "data": arr.reshape(-1).tolist()}]


def _assert_same(got: list[Any], expected: np.ndarray) -> None:
    got_arr = np.asarray(got)
    if expected.dtype.kind in ("U", "S", "O"):
        assert got_arr.astype(str).tolist() == expected.astype(str).reshape(-1).tolist()
    elif expected.dtype.kind == "f":
        np.testing.assert_allclose(got_arr.reshape(-1), expected.reshape(-1), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got_arr.reshape(-1), expected.reshape(-1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_v2_infer_equals_the_original_model(served, fmt: str) -> None:
    server, cases = served
    sample, expected = cases[fmt]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        meta = c.get(f"/v2/models/{fmt}").json()
        body = {"inputs": _oip_inputs(sample, meta), "outputs": [{"name": EXPECTED_OUTPUT[fmt]}]}
        r = c.post(f"/v2/models/{fmt}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == EXPECTED_OUTPUT[fmt]
    assert out["shape"][0] == len(expected)
    _assert_same(out["data"], expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_v1_predict_equals_the_original_model(served, fmt: str) -> None:
    server, cases = served
    sample, expected = cases[fmt]
    instances = sample.to_dict(orient="records") if hasattr(sample, "columns") else np.asarray(sample).tolist()
    r = httpx.post(f"{server.url}/v1/models/{fmt}:predict", json={"instances": instances}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    if isinstance(preds[0], dict):  # several outputs: pick the one the original's predict gives
        preds = [p[EXPECTED_OUTPUT[fmt]] for p in preds]
    _assert_same(preds, expected)


def test_every_format_is_listed_and_ready(served) -> None:
    server, _ = served
    listed = {m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert listed == set(FORMATS)
    for fmt in FORMATS:
        assert httpx.get(f"{server.url}/v2/models/{fmt}/ready").status_code == 200
