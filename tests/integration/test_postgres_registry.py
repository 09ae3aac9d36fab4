"""The registry on its production twins: a real PostgreSQL server and an fsspec object store."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.errors import ArtifactIntegrityError, IdenticalVersion, InvalidInput, ModelNotFound, RegistryError
from shipyard.registry import Registry
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.database import Database
from shipyard.registry.store import SQLStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture(scope="module")
def model(iris: tuple[pd.DataFrame, pd.Series]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


@pytest.fixture
def X(iris: tuple[pd.DataFrame, pd.Series]) -> pd.DataFrame:
    return iris[0]


def open_registry(db_url: str, artifacts: str, cache: Path) -> Registry:
    return Registry(SQLStore(Database(db_url)), ArtifactStore(artifacts, cache))


@pytest.fixture
def pg_registry(pg_database_url: str, tmp_path: Path) -> Iterator[Registry]:
    """PostgreSQL metadata, local artifact folder."""
    reg = open_registry(pg_database_url, str(tmp_path / "artifacts"), tmp_path / "cache")
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def bucket() -> Iterator[str]:
    """A fresh bucket in fsspec's in-memory object store, emptied afterwards."""
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        yield name
    finally:
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


def test_postgres_store_really_is_postgres(pg_registry: Registry) -> None:
    assert pg_registry.store.dialect == "postgresql"


def test_identical_files_are_recognised_and_the_check_set_is_kept_on_postgres(
    pg_registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "iris.skops"
    sio.dump(model, path)
    first = pg_registry.register(path, "iris", sample=X, methods=["predict", "predict_proba"])

    with pytest.raises(IdenticalVersion, match="identical to iris:1"):
        pg_registry.register(path, "iris", sample=X, methods=["predict", "predict_proba"], tags={"other": "tag"})
    assert pg_registry.register(path, "iris", sample=X, methods=("predict", "predict_proba"),
                                if_identical="reuse", alias="champion") == first
    assert pg_registry.register(path, "iris", sample=X).version == 2  # other runtime options
    assert pg_registry.aliases("iris") == {"champion": 1}
    stored = pg_registry.check_set(pg_registry.get("iris:1"))
    assert stored is not None and stored.rows == 150 and first.check_set["rows"] == 150


def test_versions_number_from_one_and_resolve_on_postgres(
    pg_registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    versions = [pg_registry.register(model, "iris", sample=X.head(5)).version for _ in range(3)]

    assert versions == [1, 2, 3]
    assert [v.version for v in pg_registry.versions("iris")] == [1, 2, 3]
    assert pg_registry.get("iris").version == 3
    assert pg_registry.get("iris:2").version == 2
    assert pg_registry.models()[0] | {"created_at": ""} == {
        "name": "iris", "latest": 3, "versions": 3, "aliases": {}, "created_at": "",
    }
    with pytest.raises(ModelNotFound, match="model 'iris' has no version 4"):
        pg_registry.get("iris:4")
    with pytest.raises(ModelNotFound, match="model 'ghost' is not registered"):
        pg_registry.get("ghost")


def test_records_round_trip_through_postgres_unchanged(
    pg_registry: Registry, pg_database_url: str, tmp_path: Path, model: Any, X: pd.DataFrame
) -> None:
    mv = pg_registry.register(
        model, "iris", sample=X.head(5), description="baseline",
        tags={"team": "risk"}, metrics={"accuracy": 0.97}, training_data=X,
    )
    child = pg_registry.register(model, "iris", sample=X.head(5), parent="iris:1")

    # a second process-like client on the same database sees exactly what was written
    other = open_registry(pg_database_url, str(tmp_path / "artifacts"), tmp_path / "cache2")
    try:
        assert other.get("iris:1") == mv
        assert other.get("iris:2") == child
    finally:
        other.close()
    assert child.lineage["parent"] == "iris:1"
    assert mv.lineage["training_data"].startswith("sha256:")
    assert {"python", "numpy", "scikit-learn"} <= set(mv.packages)


def test_a_nan_metric_is_refused_clearly_on_postgres(
    pg_registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    # PostgreSQL's JSON type rejects NaN: the registry must say so, not leak a DataError
    with pytest.raises(InvalidInput, match="metric 'loss' is nan"):
        pg_registry.register(model, "iris", sample=X.head(5), metrics={"loss": float("nan")})
    with pytest.raises(ModelNotFound):
        pg_registry.versions("iris")


def test_aliases_history_and_rollback_on_postgres(
    pg_registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    for v in (1, 2, 3):
        pg_registry.register(model, "iris", sample=X.head(5))
        pg_registry.set_alias("iris", "champion", v)
    pg_registry.set_alias("iris", "challenger", 1, actor="ana")

    assert pg_registry.aliases("iris") == {"champion": 3, "challenger": 1}
    assert [m.actor for m in pg_registry.alias_history("iris", "challenger")] == ["ana"]
    assert pg_registry.get("iris@champion").version == 3

    first = pg_registry.rollback("iris", "champion")
    second = pg_registry.rollback("iris", "champion")
    assert [(m.previous, m.version) for m in (first, second)] == [(3, 2), (2, 1)]
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        pg_registry.rollback("iris", "champion")
    with pytest.raises(ModelNotFound, match="has no version 9"):
        pg_registry.set_alias("iris", "champion", 9)

    assert pg_registry.resolve("iris@champion") == 1
    assert [(h.alias, h.version, h.previous, h.action) for h in pg_registry.alias_history("iris")] == [
        ("champion", 1, None, "set"),
        ("champion", 2, 1, "set"),
        ("champion", 3, 2, "set"),
        ("challenger", 1, None, "set"),
        ("champion", 2, 3, "rollback"),
        ("champion", 1, 2, "rollback"),
    ]


def test_load_and_predict_from_postgres(pg_registry: Registry, model: Any, X: pd.DataFrame) -> None:
    pg_registry.register(model, "iris", sample=X.head(5), alias="champion")

    loaded = pg_registry.load("iris@champion")
    try:
        np.testing.assert_array_equal(np.asarray(loaded.predict(X)).ravel(), model.predict(X))
    finally:
        loaded.close()


def test_tampered_local_artifact_refuses_to_load_on_postgres(
    pg_registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    mv = pg_registry.register(model, "iris", sample=X.head(5))
    path = Path(mv.artifact_uri) / "model.skops"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ArtifactIntegrityError, match="'model.skops'"):
        pg_registry.load("iris:1")


# -- fsspec object store ---------------------------------------------------------------


def test_fsspec_store_uploads_fetches_into_the_cache_and_verifies(
    pg_database_url: str, tmp_path: Path, bucket: str, model: Any, X: pd.DataFrame
) -> None:
    fs = fsspec.filesystem("memory")
    reg = open_registry(pg_database_url, f"memory://{bucket}/artifacts", tmp_path / "cache")
    try:
        mv = reg.register(model, "iris", sample=X.head(5), alias="champion")

        remote = f"/{bucket}/artifacts/iris/{mv.digest}"
        assert mv.artifact_uri == f"memory://{bucket}/artifacts/iris/{mv.digest}"
        assert sorted(p.rsplit("/", 1)[1] for p in fs.find(remote)) == sorted(mv.files)
        assert not [p for p in fs.find(f"/{bucket}") if "/.tmp-" in p], "upload left a temporary folder"
        for rel, digest in mv.files.items():
            assert hashlib.sha256(fs.cat_file(f"{remote}/{rel}")).hexdigest() == digest

        loaded = reg.load("iris@champion")
        np.testing.assert_array_equal(np.asarray(loaded.predict(X)).ravel(), model.predict(X))
        cached = tmp_path / "cache" / "iris" / mv.digest
        assert sorted(p.name for p in cached.iterdir()) == sorted(mv.files)

        # a tampered cached copy is caught on the next load as well
        (cached / "input_example.json").write_text("{}")
        with pytest.raises(ArtifactIntegrityError, match="'input_example.json'"):
            reg.load("iris:1")
        # ... and is not kept: the next load downloads a good copy again
        assert reg.load("iris:1").version == mv
    finally:
        reg.close()


@pytest.mark.parametrize("tamper", ["modify", "add"])
def test_tampering_with_the_remote_object_is_detected(
    pg_database_url: str, tmp_path: Path, bucket: str, model: Any, X: pd.DataFrame, tamper: str
) -> None:
    fs = fsspec.filesystem("memory")
    artifacts = f"memory://{bucket}/artifacts"
    writer = open_registry(pg_database_url, artifacts, tmp_path / "writer-cache")
    try:
        mv = writer.register(model, "iris", sample=X.head(5))
    finally:
        writer.close()
    remote = f"/{bucket}/artifacts/iris/{mv.digest}"
    original = fs.cat_file(f"{remote}/model.skops")
    if tamper == "modify":
        fs.pipe_file(f"{remote}/model.skops", original[:-1] + bytes([original[-1] ^ 0xFF]))
        bad_file = "model.skops"
    else:
        fs.pipe_file(f"{remote}/extra.py", b"import os\n")
        bad_file = "extra.py"

    # a server with an empty cache fetches the tampered object and refuses it
    server = open_registry(pg_database_url, artifacts, tmp_path / "server-cache")
    try:
        with pytest.raises(ArtifactIntegrityError) as info:
            server.load("iris")
        assert info.value.path == bad_file
        assert f"'{bad_file}'" in str(info.value)
        assert not (tmp_path / "server-cache" / "iris" / mv.digest).exists()

        # once the object store is repaired, the same server loads it
        if tamper == "modify":
            fs.pipe_file(f"{remote}/model.skops", original)
        else:
            fs.rm_file(f"{remote}/extra.py")
        loaded = server.load("iris")
        np.testing.assert_array_equal(np.asarray(loaded.predict(X)).ravel(), model.predict(X))
    finally:
        server.close()
