"""The data plane with a response cache, in-process: hits, and an alias move invalidating it."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.server import build_server, started
from shipyard.types import InferenceRequest, Tensor


def test_repeated_requests_hit_the_cache_until_the_alias_moves(settings: Settings, registry: Registry) -> None:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    one = LinearRegression().fit(X, [0.0, 1.0, 2.0, 3.0])  # y = a
    two = LinearRegression().fit(X, [0.0, 2.0, 4.0, 6.0])  # y = 2a
    registry.register(one, "lin", sample=X, alias="champion")
    registry.register(two, "lin", sample=X)
    s = settings.replace(cache_size=100, alias_refresh_seconds=0)
    server = build_server(s, ["lin@champion"], registry=registry)

    def req(v: float) -> InferenceRequest:
        return InferenceRequest(inputs=[Tensor("a", np.array([v]))])

    async def scenario() -> list[float]:
        async with started(server):
            dp = server.dataplane
            first = await dp.infer("lin", None, req(5.0))
            again = await dp.infer("lin", None, req(5.0))
            assert dp.cache is not None and dp.cache.hits == 1
            registry.set_alias("lin", "champion", 2)
            moved = await dp.infer("lin", None, req(5.0))
            assert moved.model_version == "2"
            return [float(r.outputs[0].data[0]) for r in (first, again, moved)]

    assert np.allclose(asyncio.run(scenario()), [5.0, 5.0, 10.0])
