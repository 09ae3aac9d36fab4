"""A graph step on a worker pool of its own: child `shipyard serve` processes of the server, supervised.

The server runs in this process (its pool's children are real `shipyard serve` processes on
127.0.0.1); the same graph with the step in-process is the reference.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from tests.fixtures.graph_steps import FEATURES, data

from shipyard.client import Client
from shipyard.config import Settings
from shipyard.errors import Unauthenticated
from shipyard.graphs import Graph, Node
from shipyard.graphs.pool import StepPools
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from tests.fixtures.graph_steps import build_pipeline

    home = tmp_path_factory.mktemp("graph-pool") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        build_pipeline(reg)  # scaler:1, lr:1 (predict_proba), cut:1
        reg.register(Graph(["scaler:1", Node("model", "lr:1", placement={"workers": 1}), "cut:1"]), "pooled")  # type: ignore[arg-type]
        reg.register(Graph(["scaler:1", Node("model", "lr:1"), "cut:1"]), "local")
    finally:
        reg.close()
    yield home


@pytest.fixture
async def server(home: Path) -> AsyncIterator[Server]:
    server = build_server(Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker=""),
                          ["pooled", "local"])
    async with started(server):
        yield server


def pools_of(server: Server) -> StepPools:
    [pools] = [s for s in server.services.services if isinstance(s, StepPools)]
    return pools


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_pooled_step_answers_as_in_process_fails_503_when_its_child_dies_and_recovers(
        server: Server) -> None:
    rows = data(300, seed=3)[0]
    body = {"inputs": [{"name": f, "datatype": "FP64", "shape": [len(rows)], "data": rows[f].tolist()}
                       for f in FEATURES]}
    pools = pools_of(server)
    [pool] = pools.pools()
    assert (pool["version"], pool["workers"], pool["users"], pool["ready"]) == ("lr:1", 1, ["pooled:1"], 1)
    [pid] = pool["pids"]
    assert alive(pid)
    folder = Path(pool["folder"])  # the children's private settings: under the home, 0700 / 0600
    assert folder.parent == server.settings.home / "run" / "pools"
    assert folder.stat().st_mode & 0o777 == 0o700
    settings_file = folder / "shipyard.yaml"
    assert settings_file.stat().st_mode & 0o777 == 0o600
    assert '"pool_key_sha256"' in settings_file.read_text() and "sy_pool_" not in settings_file.read_text()
    [grpc_port] = pool["grpc_ports"]
    for token in (None, "sy_pool_" + "x" * 43):  # a local user calling the child directly is refused
        with Client(f"grpc://127.0.0.1:{grpc_port}", token=token, retries=0) as direct, \
                pytest.raises(Unauthenticated):
            direct.infer("lr", {f: rows[f].to_numpy() for f in FEATURES}, version=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test",
                                 timeout=60) as c:
        async def infer(name: str) -> httpx.Response:
            return await c.post(f"/v2/models/{name}/infer", json=body)

        local, pooled = await infer("local"), await infer("pooled")
        assert local.status_code == pooled.status_code == 200, pooled.text
        assert pooled.json()["outputs"] == local.json()["outputs"]
        assert sum(pooled.json()["outputs"][0]["data"]) > 0  # the threshold lets some rows through

        os.kill(pid, signal.SIGKILL)
        down = await infer("pooled")
        assert down.status_code == 503, down.text
        assert "step 'model' (lr:1 at workers:1) is unavailable" in down.json()["error"]
        assert (await infer("local")).status_code == 200  # the rest of the server goes on

        deadline = time.monotonic() + 90
        while (back := await infer("pooled")).status_code != 200 and time.monotonic() < deadline:
            assert back.status_code == 503, back.text
            await anyio.sleep(0.5)
        assert back.status_code == 200, back.text
        assert back.json()["outputs"] == local.json()["outputs"]
    [restarted] = pools.pools()[0]["pids"]
    assert restarted != pid and alive(restarted)
    server_pools = pools
    await server.services.stop()  # the server stops: its pool's children end with it
    assert server_pools.pools() == [] and not alive(restarted) and not folder.exists()
