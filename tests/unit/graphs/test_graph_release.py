"""A released graph version takes its steps' lanes and batchers with it, unless something loaded still runs them."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import numpy as np
import pandas as pd
import pytest
from tests.fixtures.graph_steps import FEATURES, Guard, Halve, Scale

from shipyard.config import Settings
from shipyard.graphs import Graph, Node
from shipyard.hosting.executor import InProcessExecutor
from shipyard.registry import Registry
from shipyard.serving.server import build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({f: np.linspace(0.0, 10.0, 6) + i for i, f in enumerate(FEATURES)})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_releasing_a_graph_version_releases_the_lanes_and_batchers_only_its_steps_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Scale(), "scaler", sample=X)
        reg.register(Guard(), "guard", sample=X)
        reg.register(Halve(), "halve", sample=X)
        reg.register(Graph([Node("check", "guard:1"), Node("scale", "scaler:1")]), "g", alias="champion")
        # pinned by another served graph: scaler:1 stays in use when g:1 goes
        reg.register(Graph([Node("scale", "scaler:1"), Node("half", "halve:1")]), "other")
        server = build_server(Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="", batching=True),
                              ["g@champion", "other"], registry=reg)
        dp = server.dataplane
        assert isinstance(dp.executor, InProcessExecutor)
        async with started(server), httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app),
                                                      base_url="http://shipyard.test") as c:
            server.repository.release_after_seconds = 0.0
            body = {"instances": X.to_dict(orient="records")}
            for name in ("g@champion", "other"):
                assert (await c.post(f"/v1/models/{name}:predict", json=body)).status_code == 200
            step_keys = {("guard", 1), ("scaler", 1), ("halve", 1)}
            assert step_keys <= set(dp._batchers)
            assert {"guard:1", "scaler:1", "halve:1"} <= set(dp.executor._lanes)  # a graph itself runs on the loop

            reg.register(Graph([Node("half", "halve:1")]), "g", alias="champion")  # g:2; g:1 is reached no more
            await server.repository.refresh()  # what the alias watcher does: g:2 preloaded, g:1 released
            r = await c.post("/v1/models/g@champion:predict", json=body)
            assert r.status_code == 200, r.text
            with anyio.fail_after(10):
                while ("g", 1) in dp._batchers:
                    await anyio.sleep(0.01)
            assert ("guard", 1) not in dp._batchers and "guard:1" not in dp.executor._lanes  # only g:1 ran it
            assert ("scaler", 1) in dp._batchers and "scaler:1" in dp.executor._lanes  # 'other' still runs it
            assert ("halve", 1) in dp._batchers and "halve:1" in dp.executor._lanes  # g:2 runs it
            assert (await c.post("/v1/models/other:predict", json=body)).status_code == 200
    finally:
        reg.close()
