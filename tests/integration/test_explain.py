"""`POST /v1/models/NAME:explain` on a real `shipyard serve`: SHAP attributions that add up to the prediction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from tests.fixtures.graph_steps import Halve

import shipyard
from shipyard.config import Settings
from shipyard.graphs import Node
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("shap", reason="explanations need the shap library (pip install 'shipyard[explain]')")

FEATURES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, Any], pd.DataFrame]]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 4)), columns=FEATURES)
    y = (X["a"] + X["b"] * X["c"] + rng.normal(0, 0.5, 300) > 0).astype(int)
    models = {"forest": RandomForestClassifier(25, max_depth=5, random_state=0).fit(X, y),
              "linear": LogisticRegression().fit(X, y)}
    home: Path = tmp_path_factory.mktemp("explain") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        for name, model in models.items():
            reg.register(model, name, sample=X)
        # a graph (a Python step, then the regression) registered with a sample: its check set is the background
        reg.register(Halve(), "halve", sample=X)
        reg.register(shipyard.Graph(["halve", Node("model", "linear:1")]), "graph", sample=X)
    finally:
        reg.close()
    with run_server(home, [*models, "graph"], env={"SHIPYARD_EXPLAIN_MAX_ROWS": "50"}) as server:
        yield server, models, X.sample(40, random_state=1)


def explain(server: RunningServer, name: str, rows: pd.DataFrame) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{name}:explain", json={"instances": rows.to_dict(orient="records")},
                      timeout=120)


def totals(body: dict[str, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[Any]]:
    rows = body["explanations"]
    summed = np.array([r["base_value"] + sum(r["attributions"].values()) for r in rows])
    return summed, np.array([r["value"] for r in rows]), [r.get("class") for r in rows]


def test_forest_attributions_add_up_to_the_probability_of_the_predicted_class(fitted: Any) -> None:
    server, models, rows = fitted
    r = explain(server, "forest", rows)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["method"], body["output"]) == ("tree", "probability")
    assert list(body["explanations"][0]["attributions"]) == FEATURES
    summed, values, classes = totals(body)
    forest = models["forest"]
    assert classes == forest.predict(rows).tolist()
    expected = forest.predict_proba(rows)[np.arange(len(rows)), np.searchsorted(forest.classes_, classes)]
    np.testing.assert_allclose(summed, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-6)


def test_linear_attributions_add_up_to_the_margin_of_the_predicted_class(fitted: Any) -> None:
    server, models, rows = fitted
    body = explain(server, "linear", rows).json()
    assert (body["method"], body["output"]) == ("linear", "margin")
    summed, values, classes = totals(body)
    linear = models["linear"]
    margin = linear.decision_function(rows) * np.where(np.array(classes) == 1, 1.0, -1.0)
    np.testing.assert_allclose(summed, margin, rtol=0, atol=1e-6)
    np.testing.assert_allclose(values, margin, rtol=0, atol=1e-6)
    assert classes == linear.predict(rows).tolist()
    with shipyard.Client(server.url, timeout=60) as client:  # the Python client's way to the same answer
        assert client.explain("linear", rows) == body


def test_a_graph_is_explained_by_sampling_and_its_attributions_add_up(fitted: Any) -> None:
    server, models, rows = fitted
    few = rows.head(4)
    body = explain(server, "graph", few).json()
    assert (body["method"], body["output"]) == ("sampling", "predict")
    summed, values, _ = totals(body)
    expected = models["linear"].predict(few * 0.5)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(summed, values, rtol=0, atol=1e-6)


def test_more_rows_than_the_limit_and_bad_input_are_refused(fitted: Any) -> None:
    server, _, rows = fitted
    many = pd.concat([rows, rows])
    r = explain(server, "forest", many)
    assert r.status_code == 400
    assert "80 rows asked to be explained; at most 50 per request (explain_max_rows" in r.json()["error"]
    r = explain(server, "forest", rows.drop(columns=["b"]))
    assert r.status_code == 400 and "missing input 'b'" in r.json()["error"]
    assert explain(server, "nope", rows).status_code == 404


EXPLAIN_QUERY = """query($m: String!, $r: JSON!) {
  explain(model: $m, records: $r) {
    modelName modelVersion method output explanations { value baseValue attributions class }
  }
}"""


def test_graphql_explain_gives_the_rest_answer_and_the_same_row_limit(fitted: Any) -> None:
    server, _, rows = fitted
    records = rows.head(5).to_dict(orient="records")
    for name in ("forest", "linear"):
        rest = httpx.post(f"{server.url}/v1/models/{name}:explain", json={"instances": records}, timeout=120).json()
        r = httpx.post(f"{server.url}/graphql", json={"query": EXPLAIN_QUERY, "variables": {"m": name, "r": records}},
                       timeout=120)
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        got = r.json()["data"]["explain"]
        assert (got["modelName"], got["modelVersion"], got["method"], got["output"]) == (
            rest["model_name"], rest["model_version"], rest["method"], rest["output"])
        assert [{"value": e["value"], "base_value": e["baseValue"], "attributions": e["attributions"],
                 "class": e["class"]} for e in got["explanations"]] == rest["explanations"]
    many = pd.concat([rows, rows]).to_dict(orient="records")
    r = httpx.post(f"{server.url}/graphql", json={"query": EXPLAIN_QUERY, "variables": {"m": "forest", "r": many}},
                   timeout=120)
    (error,) = r.json()["errors"]
    assert "80 rows asked to be explained; at most 50 per request (explain_max_rows" in error["message"]
    assert error["extensions"]["status"] == 400 and error["extensions"]["field"] == "records", error
