"""The registry on its embedded defaults: SQLite metadata plus a local artifact folder."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import marshal
import platform
import sys
import uuid
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.errors import (
    ArtifactIntegrityError,
    InvalidInput,
    ModelFormatError,
    ModelNotFound,
    RegistryError,
    UnsafeFormat,
)
from shipyard.registry import ModelVersion, Registry
from shipyard.registry import store as store_module
from shipyard.registry.artifacts import sha256_file
from shipyard.registry.model import manifest_digest
from shipyard.types import ModelRef


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, pd.Series]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture(scope="module")
def model(iris: tuple[pd.DataFrame, pd.Series]) -> LogisticRegression:
    X, y = iris
    return LogisticRegression(max_iter=1000).fit(X, y)


@pytest.fixture
def X(iris: tuple[pd.DataFrame, pd.Series]) -> pd.DataFrame:
    return iris[0]


def register(registry: Registry, model: Any, X: pd.DataFrame, name: str = "iris", **kw: Any) -> ModelVersion:
    return registry.register(model, name, sample=X.head(5), **kw)


def stored_folder(mv: ModelVersion) -> Path:
    """Where the local artifact store keeps this version's files."""
    folder = Path(mv.artifact_uri)
    assert folder.is_dir(), f"{mv.artifact_uri} is not a local folder"
    return folder


def flip_one_byte(path: Path, offset: int = 0) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


# -- versions -------------------------------------------------------------------


def test_versions_number_from_one_in_registration_order(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    numbers = [register(registry, model, X).version for _ in range(3)]

    assert numbers == [1, 2, 3]
    assert [v.version for v in registry.versions("iris")] == [1, 2, 3]
    assert registry.get("iris").version == 3


def test_each_model_numbers_its_own_versions(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X, "a")
    register(registry, model, X, "a")
    assert register(registry, model, X, "b").version == 1
    assert {m["name"]: (m["latest"], m["versions"]) for m in registry.models()} == {"a": (2, 2), "b": (1, 1)}


def test_a_registered_version_never_changes(
    registry: Registry, settings: Settings, model: Any, X: pd.DataFrame, iris: Any
) -> None:
    v1 = register(registry, model, X, tags={"stage": "first"})
    before = v1.to_dict()
    other = LogisticRegression(max_iter=1000, C=0.01).fit(*iris)
    register(registry, other, X, tags={"stage": "second"})
    registry.set_alias("iris", "champion", 2)

    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.version = 5  # type: ignore[misc]
    # mutating a returned copy does not reach the stored record
    fetched = registry.get("iris:1")
    fetched.tags["stage"] = "tampered"

    reopened = Registry.from_settings(settings)
    try:
        assert reopened.get("iris:1").to_dict() == before
    finally:
        reopened.close()
    assert registry.get("iris:1").to_dict() == before


# -- content addressing -----------------------------------------------------------


def test_every_file_is_recorded_with_its_sha256_and_the_digest_covers_them(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    mv = register(registry, model, X)
    folder = stored_folder(mv)

    assert set(mv.files) == {"model.skops", "input_example.json", "check_set.npz"}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == set(mv.files)
    for rel, digest in mv.files.items():
        assert digest == hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    assert mv.digest == manifest_digest(mv.files)
    assert folder.name == mv.digest
    assert folder.parent.name == "iris"


def test_manifest_digest_depends_on_every_path_and_hash_but_not_order() -> None:
    files = {"a.bin": "0" * 64, "b/c.json": "1" * 64}
    reordered = dict(reversed(list(files.items())))

    assert manifest_digest(files) == manifest_digest(reordered)
    assert manifest_digest(files) != manifest_digest({**files, "a.bin": "2" * 64})
    assert manifest_digest(files) != manifest_digest({"a2.bin": "0" * 64, "b/c.json": "1" * 64})
    assert manifest_digest(files) != manifest_digest({"a.bin": "0" * 64})


def test_identical_content_is_stored_once(
    registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "iris.skops"
    sio.dump(model, path)

    v1 = registry.register(path, "iris", sample=X.head(5))
    v2 = registry.register(path, "iris", sample=X.head(5), if_identical="new")

    assert (v1.version, v2.version) == (1, 2)
    assert v1.digest == v2.digest
    assert v1.artifact_uri == v2.artifact_uri
    assert [p.name for p in stored_folder(v1).parent.iterdir()] == [v1.digest]


# -- integrity ------------------------------------------------------------------


@pytest.mark.parametrize("file", ["model.skops", "input_example.json", "check_set.npz"])
def test_a_tampered_artifact_file_refuses_to_load_and_names_the_file(
    registry: Registry, model: Any, X: pd.DataFrame, file: str
) -> None:
    mv = register(registry, model, X)
    target = stored_folder(mv) / file
    original = flip_one_byte(target, offset=len(target.read_bytes()) // 2)

    with pytest.raises(ArtifactIntegrityError) as info:
        registry.load("iris")

    err = info.value
    assert (err.name, err.version, err.path) == ("iris", 1, file)
    assert err.expected == mv.files[file]
    assert err.actual == sha256_file(target)
    assert f"'{file}'" in str(err)
    assert "iris:1" in str(err)

    # every load re-hashes: putting the original bytes back makes it loadable again
    target.write_bytes(original)
    assert registry.load("iris").predict(X.head(3)) is not None


def test_an_extra_file_in_the_artifact_folder_refuses_to_load(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    mv = register(registry, model, X)
    (stored_folder(mv) / "sitecustomize.py").write_text("print('owned')\n")

    with pytest.raises(ArtifactIntegrityError) as info:
        registry.load("iris:1")

    assert info.value.path == "sitecustomize.py"
    assert "'sitecustomize.py'" in str(info.value)


def test_an_extra_file_error_says_the_file_is_unexpected(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    mv = register(registry, model, X)
    (stored_folder(mv) / "extra.txt").write_text("x")

    with pytest.raises(ArtifactIntegrityError) as info:
        registry.load("iris")
    assert "not part of" in str(info.value) or "unexpected file" in str(info.value)
    assert "…" not in str(info.value)


def test_bytecode_planted_in_the_artifact_folder_is_never_run(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchecked-hash .pyc beside a verified helper module would run instead of it."""
    tag = uuid.uuid4().hex[:8]
    helper, model_mod = f"helper_{tag}", f"scaler_{tag}"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{helper}.py").write_text("FACTOR = 2\n")
    (src / f"{model_mod}.py").write_text(
        "import shipyard\n\n"
        "class Scaler(shipyard.Model):\n"
        "    def predict(self, inputs):\n"
        f"        from {helper} import FACTOR\n"
        "        return inputs['x'] * FACTOR\n"
    )
    # the custom runtime puts each version's code folder on sys.path; keep that to this test
    monkeypatch.setattr(sys, "path", [str(src), *sys.path])
    try:
        scaler = importlib.import_module(model_mod).Scaler()
        mv = registry.register(
            scaler, "scaler", sample={"x": np.array([1.0, 2.0])}, code_paths=[str(src / f"{helper}.py")]
        )
        sys.path.remove(str(src))
        sys.modules.pop(helper, None)

        code = stored_folder(mv) / "code"
        planted = compile("FACTOR = 1000\n", str(code / f"{helper}.py"), "exec")
        unchecked_hash_pyc = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little") + bytes(8)
        (code / "__pycache__").mkdir(exist_ok=True)
        (code / "__pycache__" / f"{helper}.{sys.implementation.cache_tag}.pyc").write_bytes(
            unchecked_hash_pyc + marshal.dumps(planted)
        )

        out = registry.load("scaler").predict({"x": np.array([1.0, 2.0])})
        np.testing.assert_array_equal(out, [2.0, 4.0])
    finally:
        for mod in [m for m in sys.modules if tag in m]:
            del sys.modules[mod]


def test_a_missing_artifact_file_refuses_to_load(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    mv = register(registry, model, X)
    (stored_folder(mv) / "model.skops").unlink()

    with pytest.raises(ArtifactIntegrityError, match="'model.skops'.*missing") as info:
        registry.load("iris")
    assert info.value.actual is None


# -- aliases ------------------------------------------------------------------------


def test_moving_an_alias_records_every_move(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    for _ in range(3):
        register(registry, model, X)
    moves = [registry.set_alias("iris", "champion", v) for v in (1, 2, 3)]

    assert [(m.version, m.previous, m.action) for m in moves] == [(1, None, "set"), (2, 1, "set"), (3, 2, "set")]
    assert registry.aliases("iris") == {"champion": 3}
    assert registry.get("iris@champion").version == 3
    history = registry.alias_history("iris", "champion")
    assert [(h.alias, h.version, h.previous, h.action) for h in history] == [
        ("champion", 1, None, "set"),
        ("champion", 2, 1, "set"),
        ("champion", 3, 2, "set"),
    ]
    assert [h.moved_at for h in history] == sorted(h.moved_at for h in history)


def test_alias_history_can_be_filtered_by_alias(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X)
    register(registry, model, X)
    registry.set_alias("iris", "champion", 1)
    registry.set_alias("iris", "challenger", 2)

    assert [h.alias for h in registry.alias_history("iris")] == ["champion", "challenger"]
    assert [h.version for h in registry.alias_history("iris", "challenger")] == [2]
    assert registry.aliases("iris") == {"champion": 1, "challenger": 2}


def test_register_with_alias_points_it_at_the_new_version(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X, alias="champion")
    mv = register(registry, model, X, alias="champion")

    assert registry.resolve("iris@champion") == mv.version == 2
    assert [h.version for h in registry.alias_history("iris", "champion")] == [1, 2]


def test_pointing_an_alias_at_a_missing_version_changes_nothing(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    register(registry, model, X)
    registry.set_alias("iris", "champion", 1)

    with pytest.raises(ModelNotFound, match="has no version 7"):
        registry.set_alias("iris", "champion", 7)
    with pytest.raises(ModelNotFound, match="'ghost' is not registered"):
        registry.set_alias("ghost", "champion", 1)

    assert registry.aliases("iris") == {"champion": 1}
    assert len(registry.alias_history("iris")) == 1


def test_an_alias_move_that_fails_midway_is_rolled_back(
    registry: Registry, model: Any, X: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(registry, model, X)
    register(registry, model, X)
    registry.set_alias("iris", "champion", 1)

    def broken_clock() -> str:
        raise RuntimeError("clock failed")

    # the alias row is updated before the history row is written; both or neither
    monkeypatch.setattr(store_module, "now_iso", broken_clock)
    with pytest.raises(RuntimeError, match="clock failed"):
        registry.set_alias("iris", "champion", 2)
    monkeypatch.undo()

    assert registry.aliases("iris") == {"champion": 1}
    assert [h.version for h in registry.alias_history("iris")] == [1]


def test_an_alias_that_looks_like_a_version_number_is_refused(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    register(registry, model, X)
    with pytest.raises(InvalidInput, match="is a number"):
        registry.set_alias("iris", "2", 1)
    with pytest.raises(InvalidInput, match="invalid alias"):
        registry.set_alias("iris", "no spaces", 1)
    assert registry.aliases("iris") == {}


@pytest.mark.parametrize("alias", ["2", "bad alias"])
def test_registering_with_an_invalid_alias_writes_nothing(
    registry: Registry, settings: Settings, model: Any, X: pd.DataFrame, alias: str
) -> None:
    with pytest.raises(InvalidInput, match=f"alias '{alias}'"):
        register(registry, model, X, alias=alias)

    with pytest.raises(ModelNotFound):
        registry.versions("iris")
    assert not (Path(settings.resolved_artifacts) / "iris").exists()


def test_deleting_an_alias_is_recorded(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X, alias="champion")
    move = registry.delete_alias("iris", "champion")

    assert (move.version, move.previous, move.action) == (None, 1, "delete")
    assert registry.aliases("iris") == {}
    with pytest.raises(ModelNotFound, match="no alias 'champion'"):
        registry.get("iris@champion")
    with pytest.raises(ModelNotFound, match="no alias 'champion'"):
        registry.delete_alias("iris", "champion")


# -- rollback -------------------------------------------------------------------------


@pytest.fixture
def three_moves(registry: Registry, model: Any, X: pd.DataFrame) -> Registry:
    """iris with versions 1..3 and champion moved 1 -> 2 -> 3."""
    for v in (1, 2, 3):
        register(registry, model, X)
        registry.set_alias("iris", "champion", v)
    return registry


def test_rollback_moves_the_alias_to_its_previous_target(three_moves: Registry) -> None:
    move = three_moves.rollback("iris", "champion")

    assert (move.version, move.previous, move.action) == (2, 3, "rollback")
    assert three_moves.resolve("iris@champion") == 2
    assert three_moves.alias_history("iris", "champion")[-1] == move


def test_rolling_back_twice_walks_two_steps_back(three_moves: Registry) -> None:
    three_moves.rollback("iris")
    three_moves.rollback("iris")

    assert three_moves.resolve("iris@champion") == 1
    assert [(h.version, h.action) for h in three_moves.alias_history("iris", "champion")] == [
        (1, "set"), (2, "set"), (3, "set"), (2, "rollback"), (1, "rollback"),
    ]


def test_rollback_with_nothing_earlier_errors_clearly(three_moves: Registry) -> None:
    three_moves.rollback("iris")
    three_moves.rollback("iris")

    with pytest.raises(RegistryError, match="alias 'champion' of 'iris' has no earlier version"):
        three_moves.rollback("iris")
    assert three_moves.resolve("iris@champion") == 1


def test_rollback_of_an_alias_set_once_errors_clearly(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X, alias="champion")

    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback("iris")
    assert len(registry.alias_history("iris")) == 1


def test_rollback_of_an_unknown_alias_or_model_says_which(three_moves: Registry) -> None:
    with pytest.raises(ModelNotFound, match="model 'iris' has no alias 'staging'"):
        three_moves.rollback("iris", "staging")
    with pytest.raises(ModelNotFound, match="model 'ghost' is not registered"):
        three_moves.rollback("ghost")


def test_a_new_set_after_a_rollback_rolls_back_to_the_rolled_back_target(three_moves: Registry) -> None:
    three_moves.rollback("iris")  # 3 -> 2
    three_moves.set_alias("iris", "champion", 3)  # 2 -> 3 again
    move = three_moves.rollback("iris")

    assert (move.previous, move.version) == (3, 2)


# -- references -------------------------------------------------------------------------


def test_references_resolve_to_newest_alias_or_number(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    for _ in range(3):
        register(registry, model, X)
    registry.set_alias("iris", "champion", 2)

    assert registry.get("iris").version == 3
    assert registry.get("iris@champion").version == 2
    assert registry.get("iris:1").version == 1
    assert registry.get(ModelRef("iris", version=1)).version == 1
    assert registry.get(ModelRef.parse(" iris@champion ")).version == 2
    assert [registry.resolve(r) for r in ("iris", "iris@champion", "iris:1")] == [3, 2, 1]


@pytest.mark.parametrize(
    ("ref", "message", "fields"),
    [
        ("ghost", "model 'ghost' is not registered", ("ghost", None, None)),
        ("ghost:1", "model 'ghost' is not registered", ("ghost", None, None)),
        ("ghost@champion", "model 'ghost' is not registered", ("ghost", None, None)),
        ("iris:7", "model 'iris' has no version 7", ("iris", 7, None)),
        ("iris@staging", "model 'iris' has no alias 'staging'", ("iris", None, "staging")),
    ],
)
def test_unknown_references_say_what_is_missing(
    registry: Registry, model: Any, X: pd.DataFrame, ref: str, message: str, fields: tuple[Any, ...]
) -> None:
    register(registry, model, X, alias="champion")

    for call in (registry.get, registry.resolve, registry.load):
        with pytest.raises(ModelNotFound) as info:
            call(ref)
        assert str(info.value) == message
        assert (info.value.name, info.value.version, info.value.alias) == fields


def test_listing_versions_of_an_unknown_model_fails(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="'ghost' is not registered"):
        registry.versions("ghost")


@pytest.mark.parametrize("ref", ["iris:0", "iris:one", "iris@", "bad name", "iris:-1"])
def test_malformed_references_are_invalid_input(registry: Registry, ref: str) -> None:
    with pytest.raises(InvalidInput):
        registry.get(ref)


# -- lineage and metadata ---------------------------------------------------------------------


def test_training_data_fingerprint_is_stable_and_tells_data_apart(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    changed = X.copy()
    changed.iloc[10, 2] += 0.1
    renamed = X.rename(columns={X.columns[0]: "sepal_length"})

    same_a = register(registry, model, X, training_data=X).lineage["training_data"]
    same_b = register(registry, model, X, training_data=X.copy()).lineage["training_data"]
    other = register(registry, model, X, training_data=changed).lineage["training_data"]
    other_names = register(registry, model, X, training_data=renamed).lineage["training_data"]
    as_array = register(registry, model, X, training_data=X.to_numpy()).lineage["training_data"]
    as_array_again = register(registry, model, X, training_data=X.to_numpy().copy()).lineage["training_data"]

    assert same_a.startswith("sha256:") and len(same_a) == len("sha256:") + 64
    assert same_a == same_b
    assert as_array == as_array_again
    assert len({same_a, other, other_names, as_array}) == 4
    assert "training_data" not in register(registry, model, X).lineage


def test_parent_version_is_recorded_as_a_fixed_number(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X, alias="champion")
    register(registry, model, X)

    assert register(registry, model, X, parent="iris:2").lineage["parent"] == "iris:2"
    # an alias is resolved at registration: later alias moves do not rewrite lineage
    child = register(registry, model, X, parent="iris@champion")
    registry.set_alias("iris", "champion", 2)
    assert registry.get(child.ref).lineage["parent"] == "iris:1"


def test_an_unknown_parent_refuses_registration(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    register(registry, model, X)
    with pytest.raises(ModelNotFound, match="has no version 9"):
        register(registry, model, X, parent="iris:9")
    assert [v.version for v in registry.versions("iris")] == [1]


def test_package_versions_are_recorded(registry: Registry, model: Any, X: pd.DataFrame) -> None:
    packages = register(registry, model, X).packages

    assert packages["python"] == platform.python_version()
    assert packages["numpy"] == dist_version("numpy") == np.__version__
    assert packages["scikit-learn"] == dist_version("scikit-learn")
    assert packages["skops"] == dist_version("skops")


def test_tags_metrics_and_description_are_stored(
    registry: Registry, settings: Settings, model: Any, X: pd.DataFrame
) -> None:
    mv = register(
        registry, model, X,
        description="iris baseline",
        tags={"team": "risk", "run": 42},  # type: ignore[dict-item]
        metrics={"accuracy": 0.97, "n": 150},
    )

    reopened = Registry.from_settings(settings)
    try:
        stored = reopened.get("iris:1")
    finally:
        reopened.close()
    assert stored.description == "iris baseline"
    assert stored.tags == {"team": "risk", "run": "42"}
    assert stored.metrics == {"accuracy": 0.97, "n": 150.0}
    assert all(isinstance(v, float) for v in stored.metrics.values())
    assert stored == mv


@pytest.mark.parametrize(
    ("value", "message"),
    [(float("nan"), "is nan"), (float("inf"), "is inf"), ("high", "must be a number")],
)
def test_metrics_that_are_not_finite_numbers_are_refused_before_anything_is_written(
    registry: Registry, settings: Settings, model: Any, X: pd.DataFrame, value: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=f"metric 'loss' {message}"):
        register(registry, model, X, metrics={"accuracy": 0.9, "loss": value})

    with pytest.raises(ModelNotFound):
        registry.versions("iris")
    assert not (Path(settings.resolved_artifacts) / "iris").exists()


def test_a_file_path_registration_records_its_source(
    registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "iris.skops"
    sio.dump(model, path)
    assert registry.register(path, "iris", sample=X.head(5)).lineage["source"] == str(path.resolve())


# -- formats, samples, load ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pkl", ".joblib"])
def test_pickle_files_are_refused_without_trust(
    registry: Registry, settings: Settings, model: Any, X: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"iris{suffix}"
    joblib.dump(model, path)

    with pytest.raises(UnsafeFormat, match="trust_pickle=True") as info:
        registry.register(path, "iris", sample=X.head(5))

    assert info.value.path == str(path)
    with pytest.raises(ModelNotFound):
        registry.versions("iris")
    assert not (Path(settings.resolved_artifacts) / "iris").exists()


@pytest.mark.parametrize("suffix", [".pkl", ".joblib"])
def test_trusted_pickle_files_are_converted_to_skops(
    registry: Registry, model: Any, X: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"iris{suffix}"
    joblib.dump(model, path)

    mv = registry.register(path, "iris", sample=X.head(5), trust_pickle=True)

    assert set(mv.files) == {"model.skops", "input_example.json", "check_set.npz"}
    assert not mv.flavor_meta.get("pickle")
    loaded = registry.load(mv)
    np.testing.assert_array_equal(np.asarray(loaded.predict(X)).ravel(), model.predict(X))


def test_registering_without_a_sample_needs_one(
    registry: Registry, settings: Settings, model: Any
) -> None:
    with pytest.raises(ModelFormatError, match="a sample is needed"):
        registry.register(model, "iris")

    with pytest.raises(ModelNotFound):
        registry.versions("iris")
    assert not (Path(settings.resolved_artifacts) / "iris").exists()


def test_a_loaded_version_predicts_like_the_original(
    registry: Registry, model: Any, X: pd.DataFrame
) -> None:
    mv = register(registry, model, X, methods=["predict", "predict_proba"])
    loaded = registry.load("iris")
    try:
        out = loaded.predict(X)
    finally:
        loaded.close()

    assert loaded.version == mv
    assert list(out.columns) == ["predict", "predict_proba"]
    np.testing.assert_array_equal(out["predict"].to_numpy(), model.predict(X))
    np.testing.assert_allclose(np.stack(out["predict_proba"].to_list()), model.predict_proba(X))
    assert registry.input_example(mv) == {c: X[c].head(5).tolist() for c in X.columns}
