"""Feedback on a whole server (in-process): predictions answered, labels taken over REST, the Python client
and a local:// stream (with its dead letters), realized metrics reported; and the store on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import anyio.to_thread
import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from shipyard.client import AsyncClient
from shipyard.config import FeedbackConfig, Settings
from shipyard.context import RequestContext
from shipyard.errors import FeedbackNotFound
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.feedback import FeedbackStore, ServedRecorder, parse_item
from shipyard.monitoring.quality import quality
from shipyard.registry import Registry
from shipyard.registry.database import Database
from shipyard.serving.server import Server, build_server, started
from shipyard.streams.broker import Record, open_sink, open_source

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 1.0, 2.0, 0.0]})
Y = (X["x1"] > X["x2"]).astype(int)
ROWS = [{"x1": 0.0, "x2": 3.0}, {"x1": 3.0, "x2": 0.0}]  # predicted 0 and 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    home = tmp_path_factory.mktemp("feedback") / "home"
    settings = Settings(home=home, workers=1)
    settings = replace(settings, monitoring=replace(settings.monitoring, feedback=FeedbackConfig(
        enabled=True, stream=f"local://feedback?path={home / 'streams.db'}")))
    reg = Registry.from_settings(settings)
    try:
        reg.register(LogisticRegression().fit(X, Y), "m", sample=X, alias="champion")
        yield settings, reg
    finally:
        reg.close()


@pytest.fixture
async def server(registry: tuple[Settings, Registry]) -> AsyncIterator[Server]:
    settings, reg = registry
    server = build_server(settings, ["m"], registry=reg)
    async with started(server):
        yield server


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield c


async def predict(client: httpx.AsyncClient, request_id: str, rows: list[dict[str, float]]) -> list[Any]:
    answer = await client.post("/v1/models/m:predict", json={"instances": rows},
                               headers={"X-Request-ID": request_id})
    assert answer.status_code == 200, answer.text
    return [p if not isinstance(p, dict) else next(iter(p.values())) for p in answer.json()["predictions"]]


async def test_predictions_take_feedback_and_report_realized_metrics(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(1)
    predicted, truth = [], []
    for i in range(40):
        rows = [ROWS[int(k)] for k in rng.integers(0, 2, 3)]
        out = await predict(client, f"q-{i}", rows)
        labels = [int(rng.integers(0, 2)) for _ in rows]
        # one label per row, by request id: predictions answered a moment ago (maybe still buffered)
        body = {"feedback": [{"request_id": f"q-{i}", "row": j, "label": labels[j]} for j in range(len(rows))]}
        answer = await client.post("/v1/feedback", json=body)
        assert answer.status_code == 200, answer.text
        assert [r["outcome"] for r in answer.json()["results"]] == ["accepted"] * 3
        predicted += [int(np.ravel(p)[0]) for p in out]
        truth += labels
    again = await client.post("/v1/feedback", json={"feedback": [{"request_id": "q-0", "row": 0, "label": 1}]})
    assert [r["outcome"] for r in again.json()["results"]] == ["duplicate"]

    report = await client.get("/v1/models/m/quality")
    assert report.status_code == 200, report.text
    (group,) = [g for g in report.json()["groups"] if g["labelled"]]
    assert (group["version"], group["kind"]) == (1, "classifier")  # arm: the route ("latest")
    assert group["metrics"]["accuracy"] == accuracy_score(truth, predicted)
    assert group["labelled"] == 120 and group["coverage"] == pytest.approx(120 / group["served"])
    assert (await client.get("/v1/models/m/quality", params={"version": "7"})).json()["groups"] == []

    metrics = (await client.get("/metrics")).text
    assert 'shipyard_feedback_total{model="m",outcome="accepted"}' in metrics
    assert 'shipyard_label_coverage_ratio{model="m",version="1"}' in metrics
    assert 'shipyard_realized_metric{metric="accuracy",model="m",version="1"}' in metrics


async def test_a_prediction_id_from_the_response_header_takes_a_label(client: httpx.AsyncClient) -> None:
    answered = []
    for path, body in (("/v1/models/m:predict", {"instances": [ROWS[0]]}),
                       ("/v2/models/m/infer", {"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                                                          for k, v in ROWS[0].items()]})):
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        answered.append(response.headers["X-Prediction-ID"])
    assert len(set(answered)) == 2  # one id per prediction, not per connection
    body = {"feedback": [{"prediction_id": pid, "label": 1, "source": "header"} for pid in answered]}
    answer = await client.post("/v1/feedback", json=body)
    assert answer.status_code == 200, answer.text
    assert [r["outcome"] for r in answer.json()["results"]] == ["accepted", "accepted"]


async def test_an_unknown_id_is_a_404_and_nothing_is_applied(client: httpx.AsyncClient, server: Server) -> None:
    await predict(client, "known", ROWS[:1])
    body = {"feedback": [{"request_id": "known", "label": 0}, {"prediction_id": "never-served", "label": 1}]}
    answer = await client.post("/v1/feedback", json=body)
    assert answer.status_code == 404
    assert (answer.json()["kind"], answer.json()["type"], answer.json()["field"]) == (
        "not_found", "FeedbackNotFound", "feedback[1]")
    retry = await client.post("/v1/feedback", json={"feedback": body["feedback"][:1]})
    assert [r["outcome"] for r in retry.json()["results"]] == ["accepted"]  # the first was not applied before


async def test_bad_bodies_are_400_naming_the_field(client: httpx.AsyncClient) -> None:
    for body, field in (({"feedback": [{"request_id": "r"}]}, "feedback[0].label"),
                        ([{"request_id": "r", "label": 1}], "feedback"),
                        ({"feedback": [{"request_id": "r", "label": {"a": 1}}]}, "feedback[0].label")):
        answer = await client.post("/v1/feedback", json=body)
        assert answer.status_code == 400 and answer.json()["field"] == field, answer.text
    assert (await client.post("/v1/feedback", content=b"{", headers={"Content-Type": "application/json"})
            ).status_code == 400
    assert (await client.get("/v1/models/m/quality", params={"since": "whenever"})).status_code == 400
    assert (await client.get("/v1/models/nope/quality")).status_code == 404


async def test_the_python_client_sends_feedback(server: Server, client: httpx.AsyncClient) -> None:
    await predict(client, "from-client", ROWS)
    transport = httpx.ASGITransport(app=server.app)
    async with AsyncClient("http://shipyard.test", http_transport=transport, retries=0) as shipyard:
        done = await shipyard.feedback(request_id="from-client", label=1, source="client")
        assert done["results"] == [{"outcome": "accepted", "rows": 2}]
        with pytest.raises(FeedbackNotFound):
            await shipyard.feedback([{"prediction_id": "nope", "label": 1}])


async def test_the_feedback_stream_applies_items_and_dead_letters_the_rest(
    server: Server, client: httpx.AsyncClient, registry: tuple[Settings, Registry]
) -> None:
    settings, _ = registry
    await predict(client, "via-stream", ROWS)
    url = f"local://feedback?path={settings.home / 'streams.db'}"
    sink = open_sink(url)
    await sink.start()
    try:
        await sink.send([Record(orjson.dumps({"request_id": "via-stream", "label": 1, "source": "s"})),
                         Record(orjson.dumps({"request_id": "nobody", "label": 1})),
                         Record(b"not json")])
    finally:
        await sink.close()
    dead = open_source(f"local://feedback.dead?path={settings.home / 'streams.db'}", group="test", consumer="t")
    await dead.start()
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while len(letters) < 2 and time.monotonic() < deadline:
            batch = await dead.fetch(10, 0.2)
            letters += [orjson.loads(m.value) for m in batch]
            await dead.ack(batch)
    finally:
        await dead.close()
    assert sorted(d["outcome"] for d in letters) == ["invalid", "unknown"]
    assert all(d["reason"] for d in letters)
    report = await anyio.to_thread.run_sync(lambda: quality(server.registry.database, "m"))
    assert sum(g["labelled"] for g in report["groups"]) >= 2  # the stream's labels joined


def event(pid_ctx: RequestContext, labels: list[int], at: float, arm: str = "champion",
          shadow: bool = False) -> PredictionEvent:
    return PredictionEvent(context=pid_ctx, model="m", version=1, route=arm, inputs=None,
                           outputs={"label": np.asarray(labels)}, started_at=at, latency_s=0.001, outcome="ok",
                           rows=len(labels), shadow=shadow)


def test_the_store_on_postgresql(pg_database_url: str) -> None:
    db = Database(pg_database_url)
    try:
        t0 = 1_700_000_000.0
        recorder = ServedRecorder(db)
        contexts = [RequestContext.new("rest", f"r{i}") for i in range(200)]
        recorder.observe([event(c, [i % 2, 1], t0 + i) for i, c in enumerate(contexts)])
        recorder.observe([event(contexts[0], [0, 0], t0, arm="shadow", shadow=True)])
        recorder.flush()
        store = FeedbackStore(db, clock=lambda: t0 + 3600)
        items = [parse_item({"prediction_id": c.prediction_id, "row": 0, "label": 1, "time": t0 + i + 60})
                 for i, c in enumerate(contexts)]
        assert {o.outcome for o in store.submit(items)} == {"accepted"}
        assert {o.outcome for o in store.submit(items)} == {"duplicate"}
        assert store.submit([parse_item({"request_id": "r1", "label": 1, "source": "b"})])[0].rows == 2
        late = store.submit([parse_item({"prediction_id": contexts[5].prediction_id, "row": 1, "label": 1,
                                         "time": t0 + 30 * 86_400})])
        assert late[0].outcome == "late"
        with pytest.raises(FeedbackNotFound):
            store.submit([parse_item({"prediction_id": "nope", "label": 1})], all_or_nothing=True)
        groups = {g["arm"]: g for g in quality(db, "m")["groups"]}
        # row 0 of every request, and row 1 of r1 (labelled through its request id)
        expected = accuracy_score([1] * 201, [i % 2 for i in range(200)] + [1])
        assert groups["champion"]["metrics"]["accuracy"] == expected
        assert groups["shadow"]["metrics"]["accuracy"] == 0.0  # labelled through the primary's prediction id
        assert store.prune(now=t0 + 15 * 86_400) == 402
    finally:
        db.close()
