"""Inference statistics and model configuration from the data plane, in-process (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard import errors
from shipyard.batching.policy import BatchPolicy
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.model_config import MAX_BATCH_SIZE, model_config
from shipyard.serving.server import build_server, started
from shipyard.serving.statistics import DURATIONS, ModelStats
from shipyard.signature import Signature, TensorSpec
from shipyard.types import InferenceRequest, Tensor

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("stats") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        registry.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3))
        yield settings, registry
    finally:
        registry.close()


def request(rows: pd.DataFrame) -> InferenceRequest:
    return InferenceRequest([Tensor(c, rows[c].to_numpy()) for c in rows.columns], declared_datatypes=True)


# -- the counters -------------------------------------------------------------------------------


def test_an_unused_version_reads_as_zeros_in_tritons_layout() -> None:
    doc = ModelStats().document("m", 3)
    assert doc["name"] == "m" and doc["version"] == "3"
    assert (doc["last_inference"], doc["inference_count"], doc["execution_count"], doc["batch_stats"]) == (0, 0, 0, [])
    assert doc["inference_stats"] == {k: {"count": 0, "ns": 0} for k in DURATIONS}


def test_a_batched_call_counts_once_per_call_and_once_per_request() -> None:
    stats = ModelStats()
    stats.executed(rows=10, ns=1000, requests=3, queued_ns=600)
    stats.executed(rows=10, ns=500)
    doc = stats.document("m", 1)
    assert doc["execution_count"] == 2
    assert doc["inference_stats"]["queue"] == {"count": 4, "ns": 600}
    assert doc["inference_stats"]["compute_infer"] == {"count": 4, "ns": 3500}  # each request waited the whole call
    assert doc["batch_stats"][0]["batch_size"] == 10 and doc["batch_stats"][0]["compute_infer"] == {"count": 2,
                                                                                                  "ns": 1500}


async def test_batched_requests_are_counted_per_request_and_per_model_call(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    server = build_server(settings.replace(batching=True, batch_max_size=8), ["m"], registry=registry)
    async with started(server):
        dp = server.dataplane
        await asyncio.gather(*(dp.infer("m", None, request(X.iloc[i : i + 2])) for i in range(0, 6, 2)),
                             *(dp.infer("m", None, request(X)) for _ in range(3)))
        (doc,) = (await dp.model_statistics("m"))["model_stats"]
    s = doc["inference_stats"]
    assert s["success"]["count"] == 6 and doc["inference_count"] == 6 + 3 * len(X)
    assert s["queue"]["count"] == s["compute_infer"]["count"] == 6  # every request rode one model call
    calls = sum(b["compute_infer"]["count"] for b in doc["batch_stats"])
    assert calls == doc["execution_count"] <= 6
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in doc["batch_stats"]) == doc["inference_count"]


async def test_cache_hits_are_answers_without_a_model_call(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    server = build_server(settings.replace(cache_size=16), ["m"], registry=registry)
    async with started(server):
        dp = server.dataplane
        for _ in range(2):
            await dp.infer("m", None, request(X))
        (doc,) = (await dp.model_statistics("m"))["model_stats"]
    s = doc["inference_stats"]
    assert (s["success"]["count"], s["cache_hit"]["count"], s["cache_miss"]["count"]) == (2, 1, 1)
    assert (doc["inference_count"], doc["execution_count"]) == (2 * len(X), 1)


async def test_statistics_of_a_name_alias_or_version_and_what_is_refused(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    server = build_server(settings, ["m"], registry=registry)
    async with started(server):
        dp = server.dataplane
        assert [d["version"] for d in (await dp.model_statistics())["model_stats"]] == ["1"]  # loaded, unused
        assert (await dp.model_statistics("m:1"))["model_stats"][0]["inference_count"] == 0
        with pytest.raises(errors.ModelNotServed):
            await dp.model_statistics("other")
        with pytest.raises(errors.ModelNotFound, match="has no version 4"):
            await dp.model_statistics("m", "4")
        with pytest.raises(errors.ModelNotFound, match="has no alias 'staging'"):
            await dp.model_statistics("m@staging")


# -- model configuration ---------------------------------------------------------------------------


def test_a_column_model_batches_along_its_rows_and_reshapes_the_one_value_per_row() -> None:
    sig = Signature(inputs=(TensorSpec("a", "FP64", (-1,)), TensorSpec("s", "BYTES", (-1,))),
                    outputs=(TensorSpec("p", "INT64", (-1,)),), format="columns")
    config = model_config("m", 2, "shipyard_sklearn", sig, {"digest": "d" * 64},
                          BatchPolicy(max_batch_size=32, max_wait_ms=1.5))
    assert config["max_batch_size"] == MAX_BATCH_SIZE
    assert config["input"] == [
        {"name": "a", "data_type": "TYPE_FP64", "dims": [1], "reshape": {"shape": []}},
        {"name": "s", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}},
    ]
    assert config["version_policy"] == {"specific": {"versions": [2]}}
    assert config["dynamic_batching"] == {"preferred_batch_size": [32], "max_queue_delay_microseconds": 1500}
    assert config["parameters"] == {"digest": {"string_value": "d" * 64}}


def test_tensors_keep_their_inner_dims_and_a_model_without_a_batch_dimension_has_max_batch_size_0() -> None:
    batched = Signature(inputs=(TensorSpec("img", "FP32", (-1, 28, 28)),), outputs=(TensorSpec("p", "FP32", (-1, 10)),))
    config = model_config("m", 1, "shipyard_torch", batched, {})
    assert [(i["dims"], "reshape" in i) for i in config["input"]] == [([28, 28], False)]
    assert config["output"][0]["dims"] == [10] and "dynamic_batching" not in config
    fixed = Signature(inputs=(TensorSpec("v", "FP32", (3,)),), outputs=(TensorSpec("p", "FP32", (-1,)),))
    config = model_config("m", 1, "shipyard_torch", fixed, {})
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [3] and config["output"][0]["dims"] == [-1]


async def test_the_data_plane_serves_the_config_of_the_resolved_version(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    server = build_server(settings, ["m"], registry=registry)
    async with started(server):
        config = await server.dataplane.model_config("m")
        meta = await server.dataplane.model_metadata("m")
    assert config["platform"] == meta["platform"] and config["version_policy"]["specific"]["versions"] == [1]
    assert [i["name"] for i in config["input"]] == [i["name"] for i in meta["inputs"]]
    assert {k: v["string_value"] for k, v in config["parameters"].items()} == {
        k: str(v) for k, v in meta["parameters"].items()
    }
    assert np.array_equal([i["dims"] for i in config["input"]], [[1], [1]])
