"""GET /v1/experiments[/{name}] on a whole server (in-process): predictions routed by a split are
counted by the per-arm recorder, and the report reads them back from the registry database.

The server is ``build_server`` with the ``ArmStatsRecorder`` passed as an observer (``build_server``
does not make one itself yet) and driven through ``httpx.ASGITransport``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.to_thread
import httpx
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.rollout.arm_stats import ArmStatsRecorder
from shipyard.rollout.policy import TrafficPolicy
from shipyard.rollout.store import TrafficStore
from shipyard.serving.server import Server, build_server, started

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 1.0, 2.0, 0.0]})
Y = (X["x1"] > X["x2"]).astype(int)
REQUESTS = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("experiments") / "home", workers=1)
    reg = Registry.from_settings(settings)
    try:
        reg.register(LogisticRegression().fit(X, Y), "m", sample=X, alias="champion")
        reg.register(LogisticRegression().fit(X, 1 - Y), "m", sample=X, alias="challenger")
        TrafficStore(reg.database).put(TrafficPolicy.from_dict({
            "model": "m", "arms": [{"name": "champion", "alias": "champion", "weight": 0.5},
                                   {"name": "challenger", "alias": "challenger", "weight": 0.5}],
            "reward": "output:predict",
        }), actor="test")
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
def recorder(server: Server) -> ArmStatsRecorder:
    """The server's own per-arm counters (an observer every server has)."""
    found = [o for o in server.dataplane.observers.observers if isinstance(o, ArmStatsRecorder)]
    assert len(found) == 1
    return found[0]


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield c


async def test_split_traffic_is_counted_per_arm_and_reported(
    server: Server, client: httpx.AsyncClient, recorder: ArmStatsRecorder
) -> None:
    body = {"instances": [{"x1": 1.0, "x2": 0.0}]}
    for _ in range(REQUESTS):
        answer = await client.post("/v1/models/m:predict", json=body)
        assert answer.status_code == 200, answer.text
    await anyio.to_thread.run_sync(server.dataplane.observers.drain)
    await anyio.to_thread.run_sync(recorder.flush)

    listing = (await client.get("/v1/experiments")).json()
    assert [(e["model"], e["kind"], e["state"], len(e["arms"])) for e in listing["experiments"]] == [
        ("m", "split", "running", 2)]

    response = await client.get("/v1/experiments/m")
    assert response.status_code == 200
    report = response.json()
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms["champion"]["n"] + arms["challenger"]["n"] == REQUESTS
    assert (arms["champion"]["version"], arms["challenger"]["version"]) == (1, 2)
    assert arms["champion"]["errors"] == arms["challenger"]["errors"] == 0
    # the two versions predict opposite classes for this row: the reward (the output) tells them apart
    assert {arms["champion"]["reward"]["value"], arms["challenger"]["reward"]["value"]} == {0.0, 1.0}
    n = arms["champion"]["n"]
    assert report["srm"]["p_value"] == pytest.approx(stats.chisquare([n, REQUESTS - n]).pvalue)
    assert report["control"] == "champion"


async def test_report_of_a_name_without_a_policy_is_404(client: httpx.AsyncClient) -> None:
    for name in ("nope", "m@champion", "bad%00name", "-x"):
        response = await client.get(f"/v1/experiments/{name}")
        assert response.status_code == 404, name
        assert response.json()["kind"] == "not_found"


async def test_a_bad_since_is_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/experiments/m", params={"since": "yesterday-ish"})
    assert response.status_code == 400 and response.json()["field"] == "since"
    assert (await client.get("/v1/experiments/m", params={"since": "15m"})).status_code == 200


async def test_openapi_documents_the_experiment_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/experiments/{name}"]["get"]["responses"]) >= {"200", "404"}
    assert "/v1/experiments" in paths
