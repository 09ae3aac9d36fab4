"""Inference graphs without a server: their shapes, the wiring checks made at registration, the joins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.fixtures.graph_steps import FEATURES, Guard, Scale

import shipyard
from shipyard.config import ConfigError, Settings
from shipyard.errors import IdenticalVersion, InferenceError, InvalidInput
from shipyard.graphs import FanOut, Graph, Node, Switch, joins
from shipyard.graphs.wiring import derive_signature
from shipyard.registry import Registry
from shipyard.signature import Signature, TensorSpec

X = pd.DataFrame({f: np.linspace(0.0, 10.0, 12) + i for i, f in enumerate(FEATURES)})


def sig(inputs: dict[str, str], outputs: dict[str, str]) -> Signature:
    return Signature(inputs=tuple(TensorSpec(k, v, (-1,)) for k, v in inputs.items()),
                     outputs=tuple(TensorSpec(k, v, (-1,)) for k, v in outputs.items()), format="columns")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry.from_settings(Settings(home=tmp_path_factory.mktemp("graphs") / "home"))
    try:
        reg.register(Scale(), "scaler", sample=X, alias="champion")
        reg.register(Guard(), "guard", sample=X)
        yield reg
    finally:
        reg.close()


# -- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "message"), [
    ([], "a graph needs 'steps'"),
    (["a", "a"], "step name 'a' is used twice"),
    ([{"name": "x", "model": "m:1", "on_eror": "skip"}], "unknown key 'on_eror' in steps[0]; it takes name, model, "
                                                         "on_error, default, placement (did you mean 'on_error'?)"),
    ([{"name": "x", "model": "m:1", "on_error": "default"}], "on_error: default needs 'default'"),
    ([{"name": "f", "fan_out": ["a", "b"], "join": "avg"}], "join must be one of mean, weighted, vote or a step"),
    ([{"name": "f", "fan_out": ["a", "b"], "join": "weighted"}], "join: weighted needs 'weights', one per branch (2)"),
    ([{"name": "f", "fan_out": ["a"]}], "a fan-out needs at least two branches"),
    ([{"name": "s", "switch": "region", "cases": {"eu": {"name": "eu", "model": "m", "on_error": "skip"}}}],
     "a case of a switch cannot be skipped"),
    ([{"name": "x", "model": "m", "placement": "ftp://other:8001"}],
     "step 'x': placement must be 'local', {workers: N} or a server URL"),
    ([{"name": "bad name!", "model": "m"}], "invalid step name 'bad name!'"),
    ([{"name": "x", "model": "m", "placement": {"workers": 0}}],
     "step 'x': placement as a worker pool is {workers: N} with N from 1 to 64, got {'workers': 0}"),
    ([{"name": "x", "model": "m", "placement": {"wrkers": 2}}], "step 'x': placement as a worker pool is"),
    ([{"name": "x", "model": "m", "placement": {"url": "grpc://b:8001", "token": "sy_secret"}}],
     "unknown key 'token' in step 'x' placement; it takes url, token_env, ca_file (did you mean 'token_env'?)"),
    ([{"name": "x", "model": "m", "placement": {"url": "grpc://b:8001", "token_env": "MY TOKEN"}}],
     "step 'x': placement.token_env must name an environment variable"),
    ([{"name": "x", "model": "m", "placement": {"url": "grpc://b:8001", "ca_file": "ca.pem"}}],
     "step 'x': placement.ca_file applies to grpcs:// and https:// URLs, not grpc://b:8001"),
    ([{"name": "x", "model": "m", "placement": {"token_env": "T"}}], "step 'x': placement as a mapping is"),
])
def test_malformed_graphs_are_refused_naming_the_step_or_key(steps: list[object], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Graph(steps)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_a_graph_round_trips_through_its_dict_form() -> None:
    graph = Graph(["scaler@champion",
                   FanOut("ens", [Node("a", "m:1"), Node("b", "m:2", on_error="skip")], join="weighted",
                          weights=(1, 3)),
                   Switch("route", "region", {"eu": Node("eu", "m:1")}, otherwise=Node("rest", "m:2")),
                   Node("cut", "cut:1", on_error="default", default={"label": 0})])
    assert Graph.from_dict(graph.to_dict()) == graph
    assert [n.name for n in graph.leaves] == ["scaler", "a", "b", "eu", "rest", "cut"]
    pooled = Graph.from_dict({"steps": [{"name": "m", "model": "lr:1", "placement": {"workers": 2}}]})
    assert pooled.to_dict()["steps"][0]["placement"] == {"workers": 2}
    assert Graph.from_dict(pooled.to_dict()) == pooled
    assert (pooled.leaves[0].pool_workers, pooled.leaves[0].remote_url) == (2, None)
    remote = Node("m", "lr:1", placement="grpc://b:8001")
    assert (remote.pool_workers, remote.remote_url) == (None, "grpc://b:8001")
    secured = Graph.from_dict({"steps": [{"name": "m", "model": "lr:1", "placement": {
        "url": "grpcs://b:8443", "token_env": "B_TOKEN", "ca_file": "/etc/ca.pem"}}]})
    node = secured.leaves[0]
    assert (node.remote_url, node.token_env, node.ca_file) == ("grpcs://b:8443", "B_TOKEN", "/etc/ca.pem")
    assert secured.to_dict()["steps"][0]["placement"] == {"url": "grpcs://b:8443", "token_env": "B_TOKEN",
                                                          "ca_file": "/etc/ca.pem"}  # the name, never a secret
    assert Graph.from_dict(secured.to_dict()) == secured
    assert Node("m", "lr:1", placement="grpc://b:8001", token_env="B_TOKEN") == Node(
        "m", "lr:1", placement={"url": "grpc://b:8001", "token_env": "B_TOKEN"})


# -- wiring -------------------------------------------------------------------------------------------


def test_a_step_whose_input_the_step_before_does_not_produce_is_refused_naming_both() -> None:
    sigs = {"scale": sig({"x": "FP64"}, {"x": "FP64"}), "model": sig({"x": "FP64", "y": "FP64"}, {"p": "FP64"})}
    with pytest.raises(InvalidInput) as info:
        derive_signature(Graph([Node("scale", "s:1"), Node("model", "m:1")]), sigs, {"scale": "s:1", "model": "m:1"})
    assert str(info.value) == ("step 'model' (m:1) takes 'y', which step 'scale' (s:1) does not produce "
                               "(it returns x)")
    assert info.value.field == "model"


def test_floats_into_an_integer_input_are_refused_and_integers_into_floats_pass() -> None:
    sigs = {"a": sig({"x": "FP64"}, {"k": "FP32"}), "b": sig({"k": "INT64"}, {"out": "FP64"})}
    with pytest.raises(InvalidInput, match=r"step 'b' takes 'k' as INT64\[-1\], but step 'a' returns it as FP32"):
        derive_signature(Graph([Node("a", "a"), Node("b", "b")]), sigs, {})
    sigs["a"] = sig({"x": "FP64"}, {"k": "INT32"})
    sigs["b"] = sig({"k": "FP64"}, {"out": "FP64"})
    derived = derive_signature(Graph([Node("a", "a"), Node("b", "b")]), sigs, {})
    assert derived.input_names == ["x"] and [s.name for s in derived.outputs] == ["out"]


def test_a_skippable_step_must_pass_on_what_the_next_step_takes() -> None:
    sigs = {"a": sig({"x": "FP64"}, {"y": "FP64"}), "b": sig({"y": "FP64"}, {"out": "FP64"})}
    with pytest.raises(InvalidInput, match="step 'b' takes 'y', which step 'a' does not produce "
                                           r"\(it passes on when skipped x\)"):
        derive_signature(Graph([Node("a", "a", on_error="skip"), Node("b", "b")]), sigs, {})


def test_joined_branches_must_return_the_same_outputs_and_a_join_step_takes_branch_dot_output() -> None:
    sigs = {"a": sig({"x": "FP64"}, {"p": "FP64"}), "b": sig({"x": "FP64"}, {"q": "FP64"}),
            "j": sig({"a.p": "FP64", "b.q": "FP64"}, {"score": "FP64"})}
    with pytest.raises(InvalidInput, match="steps 'a' and 'b' of 'f' return different outputs"):
        derive_signature(Graph([FanOut("f", [Node("a", "a"), Node("b", "b")], join="mean")]), sigs, {})
    graph = Graph([FanOut("f", [Node("a", "a"), Node("b", "b")], join=Node("j", "j"))])
    assert [s.name for s in derive_signature(graph, sigs, {}).outputs] == ["score"]


def test_a_default_must_cover_every_output_of_its_step() -> None:
    sigs = {"a": sig({"x": "FP64"}, {"p": "FP64", "q": "FP64"})}
    with pytest.raises(InvalidInput, match="'default' must give a value for each output \\(p, q\\); 'q' is missing"):
        derive_signature(Graph([Node("a", "a", on_error="default", default={"p": 0})]), sigs, {})


# -- joins ----------------------------------------------------------------------------------------------


def test_vote_takes_the_majority_and_a_tie_goes_to_the_first_branch() -> None:
    results = [{"y": np.array([1, 2, 3])}, {"y": np.array([2, 2, 4])}, {"y": np.array([2, 5, 4])}]
    assert joins.vote(results)["y"].tolist() == [2, 2, 4]
    assert joins.vote(results[:2])["y"].tolist() == [1, 2, 3]
    text = [{"y": np.array(["a", "b"], dtype=object)}, {"y": np.array(["b", "b"], dtype=object)},
            {"y": np.array(["b", "c"], dtype=object)}]
    assert joins.vote(text)["y"].tolist() == ["b", "b"]


def test_weighted_and_mean_and_the_switch_reassembly() -> None:
    results = [{"p": np.array([0.0, 1.0])}, {"p": np.array([1.0, 1.0])}]
    assert joins.weighted(results, [1.0, 3.0])["p"].tolist() == [0.75, 1.0]
    assert joins.mean(results)["p"].tolist() == [0.5, 1.0]
    parts = [(np.array([1, 3]), {"y": np.array([10, 30])}), (np.array([0, 2]), {"y": np.array([0, 20])})]
    assert joins.reassemble(parts)["y"].tolist() == [0, 10, 20, 30]


# -- registered and loaded ----------------------------------------------------------------------------


def test_a_registered_graph_pins_its_steps_and_runs_as_they_do_by_hand(registry: Registry) -> None:
    mv = registry.register(Graph(["scaler@champion", Node("check", "guard:1")]), "g")
    assert mv.flavor == "graph" and mv.lineage["steps"] == {"scaler": "scaler:1", "check": "guard:1"}
    assert "graph.json" in mv.files and any(f.startswith("models/") for f in mv.files)
    with pytest.raises(IdenticalVersion):
        registry.register(Graph(["scaler@champion", Node("check", "guard:1")]), "g")
    out = registry.load("g").predict(X)
    expected = pd.DataFrame(Scale().process({f: X[f].to_numpy() for f in FEATURES}))
    assert np.allclose(out.to_numpy(), expected.to_numpy())


def test_a_failing_step_is_named_and_a_default_answers_instead(registry: Registry) -> None:
    bad = X.assign(x0=-1000.0)
    strict = registry.load(registry.register(Graph([Node("check", "guard:1"), "scaler"]), "strict"))
    with pytest.raises(InferenceError, match="step 'check' \\(guard:1\\) failed: .*x0 below -100 cannot be scored"):
        strict.predict(bad)
    lenient = registry.load(registry.register(
        Graph([Node("check", "guard:1", on_error="default", default={f: 5.0 for f in FEATURES}), "scaler"]), "soft"))
    assert np.allclose(lenient.predict(bad).to_numpy(), 0.0)  # (5 - 5) / 2 on every feature


def test_a_switch_routes_rows_by_a_text_field_and_keeps_their_order(registry: Registry) -> None:
    graph = Graph([Switch("route", "region", {"eu": Node("eu", "scaler:1")}, otherwise=Node("rest", "guard:1"))])
    mv = registry.register(graph, "routed")
    assert mv.signature.input_names == [*FEATURES, "region"] and mv.signature.input("region").datatype == "BYTES"
    model = registry.load(mv)
    regions = np.array(["eu", "us"] * 6, dtype=object)
    out = model.predict_arrays({**{f: X[f].to_numpy() for f in FEATURES}, "region": regions})
    scaled = (X["x0"].to_numpy() - 5.0) / 2.0
    assert out["x0"].tolist() == np.where(regions == "eu", scaled, X["x0"].to_numpy()).tolist()
    with pytest.raises(InvalidInput, match="'region' is 'us', which switch 'route' has no case for"):
        registry.load(registry.register(Graph([Switch("route", "region", {"eu": Node("eu", "scaler:1")})]),
                                        "strict-route")).predict_arrays(
            {**{f: X[f].to_numpy() for f in FEATURES}, "region": regions})


def test_a_graph_over_a_missing_model_is_refused_naming_the_step(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="step 'model': model 'nope' is not registered"):
        registry.register(Graph(["scaler", Node("model", "nope@champion")]), "g2")


def test_the_graph_block_of_the_settings_is_checked(tmp_path: Path) -> None:
    s = Settings(graph={"name": "pipe", "alias": "champion", "steps": ["scaler", "lr:1"]})
    [declared] = s.graphs
    assert declared.ref == "pipe@champion" and [n.model for n in declared.graph.leaves] == ["scaler", "lr:1"]
    with pytest.raises(ConfigError, match="graph: needs 'name'"):
        Settings(graph={"steps": ["scaler"]})
    with pytest.raises(ConfigError, match=r"graph\[1\]: unknown key 'step'; a graph takes name, alias, "):
        Settings(graph=[{"name": "a", "steps": ["m"]}, {"name": "b", "step": ["m"]}])


def test_shipyard_exports_graph_and_step() -> None:
    assert shipyard.Graph is Graph and issubclass(shipyard.Step, shipyard.Model)
