"""A graph step placed on a second `shipyard serve` process, called over gRPC: answers, 503 when gone, recovers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from tests.fixtures.graph_steps import GraphModels, build_pipeline, data
from tests.integration.test_graphs import v2_body, v2_output

import shipyard
from shipyard.config import Settings
from shipyard.graphs import Node
from shipyard.registry import Registry
from shipyard.testing import free_port, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_step_on_another_server_answers_is_named_when_that_server_dies_and_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    grpc_port = free_port()
    try:
        models = GraphModels(home, build_pipeline(reg), [])
        url = f"grpc://127.0.0.1:{grpc_port}"
        mv = reg.register(shipyard.Graph([Node("scale", "scaler:1"), Node("model", "lr:1", placement=url),
                                          Node("cut", "cut:1")]), "split")
        assert mv.lineage["steps"]["model"] == "lr:1"
    finally:
        reg.close()
    X = data(300, seed=3)[0]
    expected = models.by_hand(X).tolist()
    heavy_args = ["--grpc-port", str(grpc_port), "--graceful-shutdown", "1"]
    with run_server(home, ["split"]) as front:
        infer = f"{front.url}/v2/models/split/infer"
        with run_server(home, ["lr:1"], args=heavy_args) as heavy:
            assert v2_output(httpx.post(infer, json=v2_body(X), timeout=60), "label") == expected
            stats = httpx.get(f"{heavy.url}/v2/models/stats", timeout=10).json()["model_stats"]
            assert [s["inference_count"] for s in stats if s["name"] == "lr"] == [len(X)]  # it ran over there

        gone = httpx.post(infer, json=v2_body(X), timeout=60)
        assert gone.status_code == 503, gone.text
        assert f"step 'model' (lr:1 at {url}) is unavailable" in gone.json()["error"]

        with run_server(home, ["lr:1"], args=heavy_args):
            deadline = time.monotonic() + 60
            while (back := httpx.post(infer, json=v2_body(X), timeout=60)).status_code != 200:
                assert back.status_code == 503 and time.monotonic() < deadline, back.text
                time.sleep(0.2)
            assert v2_output(back, "label") == expected
