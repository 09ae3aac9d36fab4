"""An explain step ending a graph: the explained step's outputs plus SHAP attributions that add up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from tests.fixtures.graph_steps import FEATURES, Scale

from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.graphs import Explain, Graph, Node
from shipyard.graphs.wiring import derive_signature
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started
from shipyard.signature import Signature, TensorSpec

rng = np.random.default_rng(0)
X = pd.DataFrame(rng.normal(size=(200, 4)) * 2.0 + 5.0, columns=FEATURES)
y = ((X["x0"] - 5.0) + (X["x1"] - 5.0) * (X["x2"] - 5.0) > 0).astype(int)
ADDED = ["base_value", "explained_value", *(f"attribution.{f}" for f in FEATURES)]


@pytest.mark.parametrize(("steps", "message"), [
    ([{"explain": "m"}, "m:1"], "explain': an explain step can only end a graph"),
    ([{"name": "why", "explain": None}], "step 'why': an explain step explains the single step right before it; "
                                         "it cannot be the first step"),
    ([{"name": "f", "fan_out": ["a", "b"]}, {"name": "why", "explain": True}],
     "an explain step explains the single step right before it, and 'f' is a FanOut"),
    (["a", "b", {"name": "why", "explain": "a"}], "explain names step 'a', but the step right before it is 'b'"),
    ([{"name": "m", "model": "m:1", "on_error": "skip"}, {"explain": "m"}],
     "an explained step must answer for itself (on_error: fail)"),
    ([{"name": "why", "explain": "m", "placement": "x"}],
     "unknown key 'placement' in steps[0]; it takes name, explain"),
])
def test_an_explain_step_is_refused_anywhere_but_last_after_a_single_step(steps: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Graph(steps)
    assert message in str(info.value)


def test_an_explain_step_adds_a_base_value_and_one_attribution_per_feature_and_refuses_text_inputs() -> None:
    graph = Graph(["m:1", {"name": "why", "explain": "m"}])
    assert graph.steps[-1] == Explain("why", "m")
    assert Graph.from_dict(graph.to_dict()) == graph
    numbers = Signature(inputs=(TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "INT64", (-1,))),
                        outputs=(TensorSpec("predict", "INT64", (-1,)),), format="columns")
    derived = derive_signature(graph, {"m": numbers}, {"m": "m:1"})
    assert [s.name for s in derived.outputs] == ["predict", "base_value", "explained_value", "attribution.a",
                                                 "attribution.b"]
    assert {s.datatype for s in derived.outputs[1:]} == {"FP64"}
    text = Signature(inputs=(TensorSpec("city", "BYTES", (-1,)),), outputs=numbers.outputs, format="columns")
    with pytest.raises(InvalidInput, match=r"explain step 'why' explains step 'm' \(m:1\), which takes city BYTES"):
        derive_signature(graph, {"m": text}, {"m": "m:1"})


# -- explanations, with shap -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry, Any]]:
    pytest.importorskip("shap", reason="explanations need the shap library (pip install 'shipyard[explain]')")
    from sklearn.ensemble import RandomForestClassifier

    scaled = pd.DataFrame(Scale().process(X))
    forest = RandomForestClassifier(20, max_depth=5, random_state=0).fit(scaled, y)
    home = tmp_path_factory.mktemp("graph-explain") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Scale(), "scaler", sample=X)
        reg.register(forest, "forest", sample=scaled)
        reg.register(Graph(["scaler:1", Node("model", "forest:1"), Explain("why")]), "explained")
        yield home, reg, forest
    finally:
        reg.close()


@pytest.fixture
async def server(registry: tuple[Path, Registry, Any]) -> AsyncIterator[Server]:
    home, reg, _ = registry
    server = build_server(Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker=""), ["explained"],
                          registry=reg)
    async with started(server):
        yield server


def check_adds_up(out: dict[str, np.ndarray[Any, Any]], forest: Any, rows: pd.DataFrame) -> None:
    scaled = pd.DataFrame(Scale().process({f: rows[f].to_numpy() for f in FEATURES}))
    np.testing.assert_array_equal(out["predict"], forest.predict(scaled))
    summed = out["base_value"] + sum(out[f"attribution.{f}"] for f in FEATURES)
    np.testing.assert_allclose(summed, out["explained_value"], rtol=0, atol=1e-6)
    probability = forest.predict_proba(scaled)[np.arange(len(rows)), out["predict"]]
    np.testing.assert_allclose(out["explained_value"], probability, rtol=0, atol=1e-6)
    assert np.ptp(out["attribution.x0"]) > 0  # the attributions explain something


@pytest.mark.slow  # shap (numba) loads
def test_a_loaded_graph_ending_in_explain_returns_attributions_that_add_up(
        registry: tuple[Path, Registry, Any]) -> None:
    _, reg, forest = registry
    mv = reg.get("explained:1")
    assert [s.name for s in mv.signature.outputs] == ["predict", *ADDED]
    rows = X.sample(30, random_state=1)
    model = reg.load("explained:1")
    try:
        out = model.predict_arrays({f: rows[f].to_numpy() for f in FEATURES})
    finally:
        model.close()
    check_adds_up(out, forest, rows)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_served_graph_ending_in_explain_answers_the_prediction_with_attributions_that_add_up(
        server: Server, registry: tuple[Path, Registry, Any]) -> None:
    *_, forest = registry
    rows = X.sample(40, random_state=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test") as c:
        r = await c.post("/v1/models/explained:predict", json={"instances": rows.to_dict(orient="records")})
        v2 = await c.post("/v2/models/explained/infer", json={"inputs": [
            {"name": f, "datatype": "FP64", "shape": [3], "data": rows[f].head(3).tolist()} for f in FEATURES]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    out = {k: np.array([p[k] for p in predictions]) for k in ["predict", *ADDED]}
    check_adds_up(out, forest, rows)
    assert v2.status_code == 200, v2.text
    by_name = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert by_name["explained_value"] == pytest.approx(out["explained_value"][:3].tolist(), abs=1e-12)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
