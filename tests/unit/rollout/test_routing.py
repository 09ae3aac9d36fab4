"""Traffic policies on the request path of a real (in-process) server: splits, sticky keys, shadows."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import ModelDeployment, Settings
from shipyard.monitoring.events import PredictionEvent
from shipyard.registry import Registry
from shipyard.rollout.policy import TrafficPolicy
from shipyard.rollout.router import PolicyRouter
from shipyard.rollout.store import TrafficStore
from shipyard.serving.server import Server, build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)

GATE_MODEL = '''
import time
from pathlib import Path

import numpy as np
import shipyard


class Gate(shipyard.Model):
    """Waits while the file ``hold`` exists in its folder; fails for odd x1; else answers 7."""

    def __init__(self, folder=""):
        self.folder = folder

    def save(self, path):
        (Path(path) / "folder.txt").write_text(self.folder)

    def load(self, path):
        self.folder = (Path(path) / "folder.txt").read_text()

    def predict(self, inputs):
        deadline = time.monotonic() + 60
        while (Path(self.folder) / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        x1 = np.asarray(inputs["x1"])
        if int(x1[0]) % 2:
            raise RuntimeError("the shadow model failed on purpose")
        return np.full(len(x1), 7.0)
'''


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        self.events.extend(events)

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, Path]]:
    folder = tmp_path_factory.mktemp("routing")
    settings = Settings(home=folder / "home", workers=1, alias_refresh_seconds=0, async_broker="")
    registry = Registry.from_settings(settings)
    module = f"gate_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(GATE_MODEL)
    sys.path.insert(0, str(folder))
    try:
        gate = importlib.import_module(module).Gate(str(folder))
        registry.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3), alias="champion")
        registry.register(LogisticRegression().fit(X, 1 - Y), "m", sample=X.head(3), alias="challenger")
        registry.register(gate, "m", sample={"x1": np.array([0.0]), "x2": np.array([1.0])}, alias="candidate")
        yield settings, registry, folder
    finally:
        sys.path.remove(str(folder))
        registry.close()


@pytest.fixture
async def serve(shared: tuple[Settings, Registry, Path]) -> AsyncIterator[Any]:
    """Start a server for ``m`` with a traffic block; yields a function that starts one."""
    settings, registry, _ = shared
    TrafficStore(registry.database).delete("m")
    servers: list[Any] = []

    async def start(traffic: dict[str, Any]) -> tuple[Server, Recorder]:
        recorder = Recorder()
        deployed = Settings(**{**settings.__dict__, "models": (ModelDeployment("m@champion", traffic=traffic),)})
        server = build_server(deployed, ["m@champion"], registry=registry, observers=[recorder])
        cm = started(server)
        await cm.__aenter__()
        servers.append(cm)
        return server, recorder

    yield start
    for cm in reversed(servers):
        await cm.__aexit__(None, None, None)


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test")


def body(x1: float, x2: float = 1.0) -> dict[str, Any]:
    return {"instances": [{"x1": x1, "x2": x2}]}


async def version_of(c: httpx.AsyncClient, payload: dict[str, Any], **kw: Any) -> str:
    r = await c.post("/v2/models/m/infer", json={
        "inputs": [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]}
                   for k, v in payload["instances"][0].items()]}, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


async def test_a_sticky_header_split_keeps_each_user_on_one_version(serve: Any) -> None:
    server, _ = await serve({"arms": [{"alias": "champion", "percent": 50}, {"alias": "challenger", "percent": 50}],
                             "sticky": "header:x-user"})
    async with client(server) as c:
        first = {u: await version_of(c, body(1.0), headers={"X-User": f"u{u}"}) for u in range(40)}
        again = {u: await version_of(c, body(2.0), headers={"X-User": f"u{u}"}) for u in range(40)}
        assert first == again
        assert set(first.values()) == {"1", "2"}
        # naming an alias bypasses the policy
        r = await c.post("/v1/models/m@challenger:predict", json=body(1.0), headers={"X-User": "u0"})
        assert r.status_code == 200


async def test_a_sticky_header_is_read_from_grpc_metadata_and_graphql_headers_too(serve: Any) -> None:
    from shipyard.protocol.grpc import codec
    from shipyard.serving.grpc.service import InferenceServicer
    from shipyard.types import InferenceRequest, Tensor

    server, _ = await serve({"arms": [{"alias": "champion", "percent": 50}, {"alias": "challenger", "percent": 50}],
                             "sticky": "header:x-user"})
    request = codec.encode_request(InferenceRequest([Tensor("x1", np.array([1.0])), Tensor("x2", np.array([0.0]))]),
                                   "m")

    def grpc_context(user: str) -> Any:
        class Ctx:
            def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
                return (("x-user", user),)

            def set_trailing_metadata(self, md: Any) -> None:
                pass

        return Ctx()

    servicer = InferenceServicer(server.dataplane)
    query = {"query": 'query { predict(model: "m", records: [{x1: 1.0, x2: 0.0}]) { modelVersion } }'}
    async with client(server) as c:
        for user in (f"u{i}" for i in range(30)):
            rest = await version_of(c, body(1.0, 0.0), headers={"X-User": user})
            grpc = (await servicer.ModelInfer(request, grpc_context(user))).model_version
            graphql = (await c.post("/graphql", json=query, headers={"X-User": user})).json()
            assert rest == grpc == graphql["data"]["predict"]["modelVersion"], user


async def test_a_sticky_field_routes_by_the_inputs_value(serve: Any) -> None:
    server, recorder = await serve({"arms": [{"alias": "champion", "percent": 50},
                                             {"alias": "challenger", "percent": 50}], "sticky": "field:x2"})
    async with client(server) as c:
        by_x2: dict[float, set[str]] = {}
        for i in range(60):
            x2 = float(i % 12)
            r = await c.post("/v1/models/m:predict", json=body(float(i), x2))
            assert r.status_code == 200, r.text
            by_x2.setdefault(x2, set()).add(r.headers.get("x-request-id", ""))
    server.dataplane.observers.drain()
    versions_by_x2: dict[float, set[int]] = {}
    for e in recorder.events:
        assert e.inputs is not None
        versions_by_x2.setdefault(float(e.inputs["x2"][0]), set()).add(e.version)
    assert all(len(v) == 1 for v in versions_by_x2.values())  # one version per key
    assert {next(iter(v)) for v in versions_by_x2.values()} == {1, 2}


async def test_shadow_answers_are_logged_never_returned_and_never_waited_for(
    serve: Any, shared: tuple[Settings, Registry, Path],
) -> None:
    _, registry, folder = shared
    server, recorder = await serve({"arms": ["champion"], "shadow": [{"alias": "candidate", "percent": 100}]})
    champion = registry.load("m@champion")
    hold = folder / "hold"
    hold.touch()  # every shadow call waits until the file goes: a caller that waited for one would hang
    bound = server.dataplane.max_shadow_tasks
    sent = bound + 4  # the last 4 find the shadow bound reached: dropped, counted, the callers unaffected
    try:
        async with client(server) as c:
            for i in range(sent):
                r = await c.post("/v1/models/m:predict", json=body(float(i)), headers={"X-Request-ID": f"req-{i}"})
                assert r.status_code == 200, r.text  # shadow failures never reach the caller
                want = champion.predict({"x1": np.array([float(i)]), "x2": np.array([1.0])})
                assert r.json()["predictions"] == np.asarray(want).tolist()
            assert len(server.dataplane._shadows) == bound  # all still running: the callers did not wait
    finally:
        hold.unlink()
    await asyncio.wait(list(server.dataplane._shadows), timeout=60)
    server.dataplane.observers.drain()
    primary = [e for e in recorder.events if not e.shadow]
    shadows = [e for e in recorder.events if e.shadow]
    assert len(primary) == sent and all(e.outcome == "ok" and e.version == 1 for e in primary)
    assert sorted(e.context.request_id for e in shadows) == sorted(f"req-{i}" for i in range(bound))
    assert {e.route for e in shadows} == {"candidate"} and {e.version for e in shadows} == {3}
    assert sorted(e.outcome for e in shadows) == ["internal"] * (bound // 2) + ["ok"] * (bound // 2)
    assert all(e.outputs is not None and float(e.outputs["predict"][0]) == 7.0
               for e in shadows if e.outcome == "ok")
    assert {e.context.prediction_id for e in shadows}.isdisjoint({e.context.prediction_id for e in primary})
    assert server.dataplane.shadow_failures == bound // 2 and server.dataplane.shadows_dropped == 4


async def test_a_stored_policy_change_is_followed_and_its_arms_loaded_first(
    serve: Any, shared: tuple[Settings, Registry, Path],
) -> None:
    _, registry, _ = shared
    server, _ = await serve({"arms": ["champion"]})
    router = server.dataplane.router
    assert isinstance(router, PolicyRouter)
    store = TrafficStore(registry.database)
    declared = store.get("m")
    assert declared is not None and router.policy("m") == declared
    store.put(TrafficPolicy.from_dict({"model": "m", "arms": [{"alias": "challenger", "percent": 100}]}),
              actor="test")
    await router.refresh()
    assert router.route("m", None, _ctx()).label == "challenger"
    assert ("m", 2) in {(mv.name, mv.version) for mv in server.repository.loaded_versions()}  # loaded before use
    async with client(server) as c:
        assert {await version_of(c, body(float(i))) for i in range(10)} == {"2"}
    store.delete("m", actor="test")
    await router.refresh()
    async with client(server) as c:
        assert {await version_of(c, body(float(i))) for i in range(10)} == {"1"}


def _ctx() -> Any:
    from shipyard.context import RequestContext

    return RequestContext.new("python")
