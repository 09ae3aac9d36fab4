"""What `shipyard stream` promises, checked against every real broker with real processes.

Each test runs `python -m shipyard stream` as a subprocess against a broker the
suite started on 127.0.0.1, writes inputs with the broker's own client, and
reads results and dead letters back the same way:

* every input gets a correct result; bad ones go to the dead-letter topic with
  the payload and the reason, and the stream moves on;
* SIGKILL mid-stream + restart loses nothing; duplicates stay within what was in
  flight, and carry the input id;
* SIGTERM finishes what was read, acknowledges it, exits 0: a restart then
  produces exactly the rest, with no duplicates;
* two consumers in one group share the messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from tests.integration.stream.harness import Harness

from shipyard.config import Settings
from shipyard.demo import FEATURES
from shipyard.registry import Registry

pytestmark = pytest.mark.integration

MODEL = "demo@champion"
DEADLINE = 90.0


def _records(n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    low, high = np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
    rows = rng.uniform(low, high, size=(n, 4)).round(2)
    return [dict(zip(FEATURES, map(float, r), strict=True)) for r in rows]


@pytest.fixture(scope="module")
def expected(demo_home: Path) -> Callable[[list[dict[str, float]]], list[Any]]:
    """The demo model's own predictions, computed in this process."""
    reg = Registry.from_settings(Settings(home=demo_home))
    model = reg.load(MODEL)

    def predict(records: list[dict[str, float]]) -> list[Any]:
        return [int(x) for x in model.predict(records)]

    yield predict
    model.close()
    reg.close()


class StreamProcess:
    """`python -m shipyard stream` in the background, its log in a file."""

    def __init__(self, home: Path, log: Path, *args: str) -> None:
        self.log = log
        env = {**os.environ, "SHIPYARD_LOG_LEVEL": "info"}
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "--home", str(home), "stream", MODEL, *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self) -> None:
        _wait(lambda: "streaming demo@champion" in self.text() or self.proc.poll() is not None, "consumer start")
        assert self.proc.poll() is None, self.text()

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._log_file.close()

    def kill_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def consumers(demo_home: Path, tmp_path: Path) -> Iterator[Callable[..., StreamProcess]]:
    started: list[StreamProcess] = []

    def launch(*args: str) -> StreamProcess:
        p = StreamProcess(demo_home, tmp_path / f"consumer-{len(started)}.log", *args)
        started.append(p)
        return p

    yield launch
    for p in started:
        p.kill_quietly()


def _wait(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    until = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _names() -> tuple[str, str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"in-{tag}", f"out-{tag}", f"in-{tag}.dlq", f"group-{tag}"


def _outputs(broker: Harness, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, v in broker.read_all(topic)]


def _args(broker: Harness, source: str, sink: str, group: str, *extra: str) -> list[str]:
    return ["--source", broker.url(source), "--sink", broker.url(sink), "--group", group, *extra]


def _produce(broker: Harness, topic: str, records: list[dict[str, float]], prefix: str = "m") -> list[str]:
    keys = [f"{prefix}{i}" for i in range(len(records))]
    broker.produce(topic, [(k, orjson.dumps(r)) for k, r in zip(keys, records, strict=True)])
    return keys


def test_every_input_gets_its_prediction_and_bad_messages_become_dead_letters(
    broker: Harness, consumers: Callable[..., StreamProcess], expected: Callable[..., list[Any]]
) -> None:
    source, sink, dlq, group = _names()
    broker.create_topic(source)
    records = _records(300, seed=1)
    bad = [
        ("bad-json", b"{not json"),
        ("bad-type", orjson.dumps({**records[0], "sepal_width": "wide"})),
        ("bad-missing", orjson.dumps({"sepal_length": 5.0})),
        ("bad-binary", b"\xff\xfe\x00"),
    ]
    keys = _produce(broker, source, records[:150])
    broker.produce(source, bad)
    keys += _produce(broker, source, records[150:], prefix="n")
    consumer = consumers(*_args(broker, source, sink, group, "--batch-size", "32"))
    consumer.wait_started()
    _wait(lambda: len(broker.read_all(sink)) >= 300 and len(broker.read_all(dlq)) >= 4, "300 results, 4 dead letters")
    assert consumer.stop(signal.SIGTERM) == 0, consumer.text()

    results = _outputs(broker, sink)
    assert len(results) == 300
    by_key = {r["key"]: r for r in results}
    assert sorted(by_key) == sorted(keys)
    predicted = [by_key[k]["prediction"] for k in keys]
    assert predicted == expected(records)
    first = by_key[keys[0]]
    assert first["model"] == "demo" and first["version"] == "1"
    assert {"id", "received_at", "predicted_at"} <= set(first)
    assert len({r["id"] for r in results}) == 300  # ids identify inputs

    dead = {d["key"]: d for d in _outputs(broker, dlq)}
    assert set(dead) == {k for k, _ in bad}
    assert dead["bad-json"]["payload"] == "{not json" and "not valid JSON" in dead["bad-json"]["reason"]
    assert dead["bad-type"]["field"] == "sepal_width"
    assert dead["bad-missing"]["error"] == "InvalidInput" and "missing input" in dead["bad-missing"]["reason"]
    assert dead["bad-binary"]["payload_base64"] == "//4A"
    assert broker.unfinished(source, group) == 0


def test_sigkill_mid_stream_then_restart_loses_nothing(
    broker: Harness, consumers: Callable[..., StreamProcess], expected: Callable[..., list[Any]]
) -> None:
    source, sink, _, group = _names()
    broker.create_topic(source)
    n, batch, in_flight = 3000, 8, 2
    records = _records(n, seed=2)
    keys = _produce(broker, source, records)
    options = ("--batch-size", str(batch), "--max-wait-ms", "0", "--max-in-flight", str(in_flight))
    first = consumers(*_args(broker, source, sink, group, *options))
    first.wait_started()
    _wait(lambda: len(broker.read_all(sink)) >= 200, "the first results")
    first.proc.kill()
    first.proc.wait()
    done_before = len(broker.read_all(sink))
    assert done_before < n, "the consumer finished before it could be killed mid-stream"

    second = consumers(*_args(broker, source, sink, group, *options))
    second.wait_started()
    _wait(lambda: {r["key"] for r in _outputs(broker, sink)} >= set(keys), "a result for every input")
    assert second.stop(signal.SIGTERM) == 0, second.text()

    results = _outputs(broker, sink)
    copies = Counter(r["id"] for r in results)
    duplicates = sum(c - 1 for c in copies.values())
    # only what the killed process had read but not acknowledged can come twice:
    # the queued batches and the ones being collected, scored and sent
    assert duplicates <= (in_flight + 3) * batch, f"{duplicates} duplicates"
    by_key = {r["key"]: r["prediction"] for r in results}
    assert [by_key[k] for k in keys] == expected(records)
    for r in results:  # a duplicate is the same input (same id), so readers can drop it
        assert copies[r["id"]] == 1 or r["key"] in by_key
    assert broker.unfinished(source, group) == 0


def test_sigterm_drains_acknowledges_and_exits_zero(
    broker: Harness, consumers: Callable[..., StreamProcess]
) -> None:
    source, sink, _, group = _names()
    broker.create_topic(source)
    n = 3000
    keys = _produce(broker, source, _records(n, seed=3))
    options = ("--batch-size", "8", "--max-wait-ms", "0", "--max-in-flight", "4")
    first = consumers(*_args(broker, source, sink, group, *options))
    first.wait_started()
    _wait(lambda: len(broker.read_all(sink)) >= 200, "the first results")
    assert first.stop(signal.SIGTERM) == 0, first.text()
    done = len(broker.read_all(sink))
    assert done < n, "the consumer finished before it could be stopped mid-stream"
    # everything with a result was acknowledged, nothing without one was
    assert broker.unfinished(source, group) == n - done

    second = consumers(*_args(broker, source, sink, group, *options))
    second.wait_started()
    _wait(lambda: len(broker.read_all(sink)) >= n, "the rest of the results")
    assert second.stop(signal.SIGTERM) == 0, second.text()
    results = _outputs(broker, sink)
    assert sorted(r["key"] for r in results) == sorted(keys)  # exactly once each: the drain lost and redid nothing


def test_two_consumers_in_one_group_share_the_messages(
    broker: Harness, consumers: Callable[..., StreamProcess]
) -> None:
    source, sink, _, group = _names()
    broker.create_topic(source, partitions=2)
    options = ("--batch-size", "16")
    members = [consumers(*_args(broker, source, sink, group, "--consumer", f"member-{i}", *options)) for i in (1, 2)]
    for m in members:
        m.wait_started()
    n, waves = 1200, 12
    records = _records(n, seed=4)
    keys: list[str] = []
    for w in range(waves):  # spread over a few seconds, so both members are in the group for most of it
        part = records[w * n // waves:(w + 1) * n // waves]
        keys += _produce(broker, source, part, prefix=f"w{w}-")
        time.sleep(0.3)
    _wait(lambda: {r["key"] for r in _outputs(broker, sink)} >= set(keys), "a result for every input")
    # scaling down: the first member's last commit can race the rebalance its leaving starts (refused,
    # so its partition's last messages go to the other member again); the survivor finishes them
    assert members[0].stop(signal.SIGTERM) == 0, members[0].text()
    _wait(lambda: broker.unfinished(source, group) == 0, "the remaining member to finish every message")
    assert members[1].stop(signal.SIGTERM) == 0, members[1].text()
    by_member = Counter(r["consumer"] for r in _outputs(broker, sink))
    assert set(by_member) == {"member-1", "member-2"}, by_member
    assert min(by_member.values()) >= n // 10, by_member
    assert broker.unfinished(source, group) == 0
