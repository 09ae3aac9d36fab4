"""Batching and overload protection on a real `shipyard serve` process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.fixtures.custom import register_source_model

from shipyard.demo import FEATURES, train_demo_model
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _fire(url: str, bodies: list[dict], limit: int = 200) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        return await asyncio.gather(*[c.post("/v1/models/demo:predict", json=b) for b in bodies])


@pytest.mark.parametrize("args", [[], ["--batching"], ["--batching", "--batch-max-wait-ms", "2"],
                                  ["--batching", "--batch-latency-target-ms", "20"]],
                         ids=["no-batching", "batching", "batching-wait", "latency-target"])
def test_hundreds_of_concurrent_requests_get_their_own_answers(demo_home: Path, args: list[str]) -> None:
    model, X, _ = train_demo_model()
    rng = np.random.default_rng(0)
    rows = X.sample(250, replace=True, random_state=1).to_numpy() + rng.normal(0, 0.3, (250, 4))
    expected = model.predict(X.__class__(rows, columns=FEATURES))
    bodies = [{"instances": [dict(zip(FEATURES, map(float, r), strict=True))]} for r in rows]
    with run_server(demo_home, ["demo@champion"], args=args) as server:
        responses = asyncio.run(_fire(server.url, bodies))
    assert [r.status_code for r in responses] == [200] * 250
    assert [r.json()["predictions"][0] for r in responses] == expected.tolist()


@pytest.fixture
def slow_home(tmp_path: Path) -> Path:
    """A model that takes 20 ms per call whatever the batch size: capacity ~50 calls/s."""
    home = tmp_path / "home"
    register_source_model(tmp_path, home, module="slow_model", cls="Slow", name="demo",
                          sample={f: [1.0] for f in FEATURES}, source='''
        import time
        import shipyard

        class Slow(shipyard.Model):
            def predict(self, inputs):
                time.sleep(0.02)
                return inputs["sepal_length"] * 2
    ''')
    return home


def test_load_far_past_capacity_is_shed_with_503_and_accepted_requests_finish(slow_home: Path) -> None:
    bodies = [{"instances": [dict.fromkeys(FEATURES, float(i))]} for i in range(600)]
    with run_server(slow_home, ["demo"], args=["--max-queue", "16"]) as server:
        server: RunningServer
        rss_before = _rss_kb(server.process.pid)
        responses = asyncio.run(_fire(server.url, bodies, limit=300))
        rss_after = _rss_kb(server.process.pid)
        assert server.process.poll() is None
        good = httpx.post(f"{server.url}/v1/models/demo:predict", json=bodies[7], timeout=30)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 100  # the flood past the queue bound is refused at once ...
    assert statuses.count(200) >= 16  # ... while the accepted ones are answered
    for i, r in enumerate(responses):
        if r.status_code == 200:
            assert r.json()["predictions"] == [2.0 * i]
        else:
            assert int(r.headers["retry-after"]) >= 1
            assert "overloaded" in r.json()["error"]
    assert good.status_code == 200 and good.json()["predictions"] == [14.0]
    assert rss_after - rss_before < 64 * 1024  # bounded: no per-request pile-up


def test_a_request_past_its_deadline_gets_504(slow_home: Path) -> None:
    with run_server(slow_home, ["demo"], args=["--request-timeout", "0.005"]) as server:
        r = httpx.post(f"{server.url}/v1/models/demo:predict",
                       json={"instances": [dict.fromkeys(FEATURES, 1.0)]}, timeout=30)
    assert r.status_code == 504
    assert "did not finish within" in r.json()["error"]
