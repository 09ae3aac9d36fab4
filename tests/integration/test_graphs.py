"""Inference graphs served by a real `shipyard serve` process: REST v1 and v2, gRPC, metrics, rollback.

One server for the module, started with a shipyard.yaml whose ``graph:`` block declares
``pipe`` (scale step, logistic regression, threshold step); the other graphs are registered
through the Python API beforehand (``tests/fixtures/graph_steps.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.graph_steps import FEATURES, GRAPH_YAML, GraphModels, build, data

import shipyard
from shipyard import errors
from shipyard.config import Settings
from shipyard.graphs import Node
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> GraphModels:
    return build(tmp_path_factory.mktemp("graphs") / "home")


@pytest.fixture(scope="module")
def server(models: GraphModels) -> Iterator[RunningServer]:
    config = models.home.parent / "shipyard.yaml"
    log = models.home.parent / "predictions.db"
    config.write_text(GRAPH_YAML + f"monitoring:\n  prediction_log: {{enabled: true, sink: 'sqlite:///{log}'}}\n")
    with run_server(models.home, [], args=["-c", str(config)], grpc=True,
                    env={"SHIPYARD_ALIAS_REFRESH_SECONDS": "0.3"}) as running:
        yield running


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return data(1000, seed=7)[0]


def v2_body(X: pd.DataFrame, extra: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    inputs = [{"name": f, "datatype": "FP64", "shape": [len(X)], "data": X[f].tolist()} for f in FEATURES]
    for name, values in (extra or {}).items():
        inputs.append({"name": name, "datatype": "BYTES", "shape": [len(values)], "data": values})
    return {"inputs": inputs}


def v2_output(response: httpx.Response, name: str) -> list[Any]:
    assert response.status_code == 200, response.text
    return next(o["data"] for o in response.json()["outputs"] if o["name"] == name)  # type: ignore[no-any-return]


def test_the_yaml_graph_is_registered_with_lineage_to_each_step(server: RunningServer, models: GraphModels) -> None:
    reg = Registry.from_settings(Settings(home=models.home))
    try:
        mv = reg.get("pipe@champion")
    finally:
        reg.close()
    assert mv.flavor == "graph"
    assert mv.lineage["steps"] == {"scale": "scaler:1", "model": "lr:1", "cut": "cut:1"}
    assert [s.name for s in mv.signature.inputs] == FEATURES
    assert [(s.name, s.datatype) for s in mv.signature.outputs] == [("label", "INT64")]
    meta = httpx.get(f"{server.url}/v2/models/pipe@champion", timeout=10).json()
    assert meta["platform"] == "shipyard_graph" and [o["name"] for o in meta["outputs"]] == ["label"]


def test_three_steps_answer_as_the_steps_run_by_hand_over_v2_v1_and_grpc(
        server: RunningServer, models: GraphModels, rows: pd.DataFrame) -> None:
    expected = models.by_hand(rows).tolist()
    v2 = httpx.post(f"{server.url}/v2/models/pipe@champion/infer", json=v2_body(rows), timeout=60)
    assert v2_output(v2, "label") == expected
    v1 = httpx.post(f"{server.url}/v1/models/pipe@champion:predict",
                    json={"instances": rows.to_dict(orient="records")}, timeout=60)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == expected
    with shipyard.Client(f"grpc://{server.grpc_target}", timeout=60) as client:
        got = client.predict("pipe@champion", {f: rows[f].to_numpy() for f in FEATURES})
    assert got["label"].tolist() == expected
    query = 'query($r: JSON!) { predict(model: "pipe@champion", records: $r) { predictions } }'
    gql = httpx.post(f"{server.url}/graphql", json={"query": query, "variables": {"r": rows.head(50).to_dict(
        orient="records")}}, timeout=60)
    assert gql.status_code == 200, gql.text
    assert gql.json()["data"]["predict"]["predictions"] == expected[:50]


def test_a_vote_of_three_versions_is_the_majority_and_a_switch_routes_by_the_field(
        server: RunningServer, models: GraphModels, rows: pd.DataFrame) -> None:
    a, b, c = (clf.predict(rows) for clf in models.classifiers)
    # the majority; with three different answers, the first branch's
    majority = np.where((b == c) & (a != b), b, a)
    voted = httpx.post(f"{server.url}/v2/models/voted/infer", json=v2_body(rows), timeout=60)
    assert v2_output(voted, "predict") == majority.tolist()
    assert (a != b).any() and (b == c).any()  # the data makes the vote matter

    regions = np.array(["eu", "us", "other"])[np.arange(len(rows)) % 3]
    routed = httpx.post(f"{server.url}/v2/models/routed/infer",
                        json=v2_body(rows, {"region": regions.tolist()}), timeout=60)
    expected = np.select([regions == "eu", regions == "us"], [a, b], c)
    assert v2_output(routed, "predict") == expected.tolist()
    records = rows.head(3).assign(region=["us", "us", "eu"]).to_dict(orient="records")
    v1 = httpx.post(f"{server.url}/v1/models/routed:predict", json={"instances": records}, timeout=60)
    assert v1.json()["predictions"] == [int(b[0]), int(b[1]), int(a[2])]


def test_a_failing_step_is_named_and_optional_steps_degrade(server: RunningServer, models: GraphModels,
                                                          rows: pd.DataFrame) -> None:
    bad = rows.head(5).copy()
    bad.loc[bad.index[0], "x0"] = -1000.0
    failed = httpx.post(f"{server.url}/v2/models/guarded/infer", json=v2_body(bad), timeout=60)
    assert failed.status_code == 500
    assert "step 'guard' (guard:1) failed" in failed.json()["error"]
    assert "x0 below -100 cannot be scored" in failed.json()["error"]
    with shipyard.Client(f"grpc://{server.grpc_target}", timeout=60) as client, \
            pytest.raises(errors.InferenceError, match="step 'guard'"):
        client.predict("guarded", {f: bad[f].to_numpy() for f in FEATURES})

    skipped = httpx.post(f"{server.url}/v2/models/lenient/infer", json=v2_body(bad), timeout=60)
    assert v2_output(skipped, "label") == models.by_hand(bad).tolist()  # the guard's inputs went on
    defaulted = httpx.post(f"{server.url}/v2/models/defaulted/infer", json=v2_body(bad), timeout=60)
    fives = pd.DataFrame({f: [5.0] * len(bad) for f in FEATURES})
    assert v2_output(defaulted, "label") == models.by_hand(fives).tolist()  # every row got the default features
    good = httpx.post(f"{server.url}/v2/models/defaulted/infer", json=v2_body(rows.head(5)), timeout=60)
    assert v2_output(good, "label") == models.by_hand(rows.head(5)).tolist()


def test_each_step_has_its_latency_and_error_series(server: RunningServer, rows: pd.DataFrame) -> None:
    bad = rows.head(2).copy()
    bad.loc[bad.index[0], "x0"] = -1000.0
    assert httpx.post(f"{server.url}/v2/models/lenient/infer", json=v2_body(bad), timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/v2/models/pipe/infer", json=v2_body(rows.head(2)), timeout=60).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counts: dict[tuple[str, str], float] = {}
    errors_: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "shipyard_graph_step_duration_seconds_count":
                counts[(s.labels["graph"], s.labels["step"])] = s.value
            if s.name == "shipyard_graph_step_errors_total":
                errors_[(s.labels["graph"], s.labels["step"])] = s.value
    for step in ("scale", "model", "cut"):
        assert counts[("pipe", step)] >= 1
    assert errors_[("lenient", "guard")] >= 1
    assert errors_.get(("pipe", "scale"), 0) == 0


def test_each_step_is_in_the_prediction_log_under_the_graph_prediction_id(
        server: RunningServer, models: GraphModels, rows: pd.DataFrame) -> None:
    import sqlite3

    X = rows.head(4)
    r = httpx.post(f"{server.url}/v2/models/pipe@champion/infer", json=v2_body(X), timeout=60)
    labels = v2_output(r, "label")
    pid = r.headers["x-prediction-id"]
    log = models.home.parent / "predictions.db"
    deadline = time.monotonic() + 30
    found: dict[str, tuple[str, str, str]] = {}
    while len(found) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        if log.exists():
            with sqlite3.connect(log) as conn:
                found = {p: (m, route, out) for p, m, route, out in conn.execute(
                    "SELECT prediction_id, model, route, outputs FROM shipyard_predictions "
                    "WHERE prediction_id = ? OR prediction_id LIKE ?", (pid, pid + ".%"))}
    assert {p: (m, route) for p, (m, route, _) in found.items()} == {
        pid: ("pipe", "champion"), f"{pid}.scale": ("scaler", "pipe/scale"), f"{pid}.model": ("lr", "pipe/model"),
        f"{pid}.cut": ("cut", "pipe/cut")}
    assert json.loads(found[f"{pid}.cut"][2])["label"] == labels == json.loads(found[pid][2])["label"]


def test_rolling_the_graph_back_restores_its_old_outputs(server: RunningServer, models: GraphModels,
                                                         rows: pd.DataFrame) -> None:
    X = rows.head(200)
    old, strict = models.by_hand(X).tolist(), models.by_hand(X, cut=0.7).tolist()
    assert old != strict
    reg = Registry.from_settings(Settings(home=models.home))
    try:
        graph = shipyard.Graph([Node("scale", "scaler@champion"), Node("model", "lr:1"), Node("cut", "cut:2")])
        mv = reg.register(graph, "pipe", alias="champion")
        assert mv.version == 2 and mv.lineage["steps"]["cut"] == "cut:2"
        assert answers(server, X, strict) == strict
        reg.rollback("pipe", "champion")
        assert answers(server, X, old) == old
    finally:
        reg.close()


def answers(server: RunningServer, X: pd.DataFrame, until: list[int]) -> list[int]:
    """pipe@champion's labels once they are ``until`` (the server follows an alias move within
    alias_refresh_seconds), or the last ones at the deadline."""
    deadline = time.monotonic() + 20
    while True:
        got: list[int] = v2_output(httpx.post(f"{server.url}/v2/models/pipe@champion/infer", json=v2_body(X),
                                              timeout=60), "label")
        if got == until or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_batch_job_runs_the_graph_as_registered(models: GraphModels, rows: pd.DataFrame, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in.parquet"
    rows.to_parquet(source)
    monkeypatch.setenv("SHIPYARD_HOME", str(models.home))
    result = shipyard.batch_predict("guarded", source, tmp_path / "out", workers=1, progress=False)
    assert result is not None
    out = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out").glob("*.parquet")))
    assert out["label"].tolist() == models.by_hand(rows).tolist()


def test_a_stream_job_runs_the_graph_as_registered(models: GraphModels, rows: pd.DataFrame, tmp_path: Path) -> None:
    import asyncio

    import orjson

    from shipyard.jobs.stream.job import StreamJob
    from shipyard.streams.broker import Record, open_sink, open_source

    path = tmp_path / "streams.db"

    def url(topic: str) -> str:
        return f"local://{topic}?path={path}&ack_wait=60"

    records = rows.to_dict(orient="records")

    async def run() -> dict[str, Any]:
        sink = open_sink(url("in"))
        await sink.start()
        await sink.send([Record(orjson.dumps(r), key=str(i)) for i, r in enumerate(records)])
        await sink.close()
        job = StreamJob.create(Settings(home=models.home), "guarded", url("in"), url("out"), group="g", consumer="c")
        stop = asyncio.Event()
        task = asyncio.create_task(job.run(stop))
        reader = open_source(url("out"), group="reader", consumer="r")
        await reader.start()
        out: dict[str, Any] = {}
        try:
            async with asyncio.timeout(60):
                while len(out) < len(records):
                    batch = await reader.fetch(500, 0.05)
                    out.update({m.key: orjson.loads(m.value) for m in batch})
                    await reader.ack(batch)
        finally:
            stop.set()
            await task
            await reader.close()
        return out

    out = asyncio.run(run())
    assert [out[str(i)]["prediction"] for i in range(len(records))] == models.by_hand(rows).tolist()


def test_shipyard_register_takes_a_graph_file_and_refuses_a_miswired_one(models: GraphModels, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SHIPYARD_HOME": str(models.home)}
    good = tmp_path / "graph.yaml"
    good.write_text("steps:\n  - scaler@champion\n  - {name: model, model: 'lr:1'}\n  - {name: cut, model: 'cut:2'}\n")
    done = subprocess.run([sys.executable, "-m", "shipyard", "register", "strict-pipe", str(good)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "registered strict-pipe:1 (graph" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - 'lr:1'\n  - scaler\n")
    refused = subprocess.run([sys.executable, "-m", "shipyard", "register", "bad-pipe", str(bad)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert ("step 'scaler' (scaler:1) takes 'x0', which step 'lr' (lr:1) does not produce (it returns "
            "predict_proba)") in refused.stderr
