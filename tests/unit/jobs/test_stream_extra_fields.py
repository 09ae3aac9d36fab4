"""Stream messages that carry more than the features: dead letter (refuse), dropped (ignore), or copied to the result.

Scoring is called directly; the last test runs a whole ``StreamJob`` on the
embedded ``local://`` broker with the policy overridden by the settings, as
``shipyard stream --extra-fields`` does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression
from tests.fixtures.batch import FEATURES, iris_rows

from shipyard.config import Settings
from shipyard.jobs.stream.job import StreamJob
from shipyard.registry import LoadedModel, Registry
from shipyard.runtime.base import Arrays
from shipyard.streams.broker import Message, Record, open_sink, open_source
from shipyard.streams.scoring import score

pytestmark = pytest.mark.anyio

HINT = "(set extra_fields to 'ignore' or 'passthrough' to accept other fields)"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def models(registry: Registry) -> dict[str, LoadedModel]:
    data = iris_rows(300, seed=1)
    model = LogisticRegression(max_iter=500).fit(data[FEATURES], data["id"] % 3)
    for name, policy in (("refusing", "refuse"), ("ignoring", "ignore"), ("passing", "passthrough")):
        registry.register(model, name, sample=data[FEATURES].head(), extra_fields=policy)
    return {name: registry.load(name) for name in ("refusing", "ignoring", "passing")}


def _record(i: int) -> dict[str, float]:
    rng = np.random.default_rng(i)
    return {f: float(v) for f, v in zip(FEATURES, rng.uniform(0.5, 7.0, len(FEATURES)).round(2), strict=True)}


def _message(i: int, value: Any) -> Message:
    return Message(id=str(i), value=orjson.dumps(value), key=f"k{i}", timestamp=1_700_000_000.0)


async def _run(model: LoadedModel, arrays: Arrays) -> Arrays:
    return model.run(arrays)


def _batch() -> list[Message]:
    """Plain records, records with an id (and one with nested metadata), a list and a /v1 body with ids."""
    return [
        _message(0, _record(0)),
        _message(1, {**_record(1), "order_id": 101}),
        _message(2, {"order_id": 102, "meta": {"channel": "app"}, **_record(2)}),
        _message(3, [{**_record(3), "order_id": 103}, _record(4)]),
        _message(4, {"instances": [{**_record(5), "order_id": 105}]}),
    ]


def _expected(model: LoadedModel) -> list[int]:
    return model.predict([_record(i) for i in range(6)]).tolist()  # type: ignore[no-any-return]


async def test_refuse_dead_letters_each_record_with_an_extra_field_and_the_reason_names_the_option(
    models: dict[str, LoadedModel]
) -> None:
    scored = await score(_batch(), models["refusing"], _run, source="local://in", received_at=1.0)
    assert [orjson.loads(r.value)["id"] for r in scored.results] == ["0"]
    dead = [orjson.loads(r.value) for r in scored.dead_letters]
    assert [d["id"] for d in dead] == ["1", "2", "3", "4"]
    assert all(d["field"] == "order_id" and HINT in d["reason"] for d in dead)
    assert dead[0]["reason"].startswith("unexpected input 'order_id': this model takes 'sepal_length'")
    # nothing lost: the dead letter holds the payload as it came
    assert orjson.loads(dead[1]["payload"]) == {"order_id": 102, "meta": {"channel": "app"}, **_record(2)}


async def test_ignore_predicts_every_record_without_its_extra_fields(models: dict[str, LoadedModel]) -> None:
    model = models["ignoring"]
    scored = await score(_batch(), model, _run, source="local://in", received_at=1.0)
    assert scored.dead_letters == []
    results = [orjson.loads(r.value) for r in scored.results]
    want = _expected(model)
    assert [r.get("prediction", r.get("predictions")) for r in results] == [
        want[0], want[1], want[2], want[3:5], [want[5]]
    ]
    assert not any("passthrough" in r for r in results)


async def test_passthrough_puts_each_records_extra_fields_beside_its_prediction(
    models: dict[str, LoadedModel]
) -> None:
    model = models["passing"]
    scored = await score(_batch(), model, _run, source="local://in", received_at=1.0)
    assert scored.dead_letters == []
    results = [orjson.loads(r.value) for r in scored.results]
    want = _expected(model)
    assert [r["id"] for r in results] == ["0", "1", "2", "3", "4"]  # the message id stays the result's own
    assert [(r.get("prediction"), r["passthrough"]) for r in results[:3]] == [
        (want[0], {}), (want[1], {"order_id": 101}), (want[2], {"order_id": 102, "meta": {"channel": "app"}})
    ]
    assert results[3]["predictions"] == want[3:5] and results[3]["passthrough"] == [{"order_id": 103}, {}]
    assert results[4]["predictions"] == [want[5]] and results[4]["passthrough"] == [{"order_id": 105}]


async def test_passthrough_still_dead_letters_a_bad_feature_and_keeps_its_neighbours(
    models: dict[str, LoadedModel]
) -> None:
    bad = {**_record(1), FEATURES[0]: "wide", "order_id": 1}
    messages = [_message(0, {**_record(0), "order_id": 0}), _message(1, bad),
                _message(2, {**_record(2), "order_id": 2})]
    scored = await score(messages, models["passing"], _run, source="local://in", received_at=1.0)
    assert [orjson.loads(r.value)["passthrough"] for r in scored.results] == [{"order_id": 0}, {"order_id": 2}]
    (dead,) = [orjson.loads(r.value) for r in scored.dead_letters]
    assert dead["id"] == "1" and dead["field"] == FEATURES[0] and orjson.loads(dead["payload"]) == bad


async def test_a_stream_job_applies_the_settings_override_on_the_embedded_broker(
    models: dict[str, LoadedModel], settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "streams.db"

    def url(topic: str) -> str:
        return f"local://{topic}?path={path}&ack_wait=60"

    sink = open_sink(url("in"))
    await sink.start()
    await sink.send([Record(orjson.dumps({**_record(i), "order_id": i}), key=f"k{i}") for i in range(5)])
    await sink.close()
    job = StreamJob.create(settings.replace(extra_fields="passthrough"), "refusing", url("in"), url("out"),
                           group="g", consumer="c1")
    stop = asyncio.Event()
    task = asyncio.create_task(job.run(stop))
    reader = open_source(url("out"), group="reader", consumer="r")
    await reader.start()
    out: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while len(out) < 5:
                batch = await reader.fetch(100, 0.05)
                out += [orjson.loads(m.value) for m in batch]
                await reader.ack(batch)
    finally:
        stop.set()
        stats = await task
        await reader.close()
    assert stats.dead_letters == 0
    assert sorted(r["passthrough"]["order_id"] for r in out) == [0, 1, 2, 3, 4]
