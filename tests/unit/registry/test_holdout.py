"""The labelled holdout set kept with a version: stored before hashing, capped, read back exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import ArtifactIntegrityError, InvalidInput, ModelNotFound
from shipyard.registry import Registry
from shipyard.registry import registry as registry_module
from shipyard.registry.artifacts import sha256_file


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.integers(0, 5, size=rows).astype(float)})


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    X = frame(300, seed=1)
    return LogisticRegression().fit(X, (X.a + X.b > 2).astype(int))


def test_the_holdout_reads_back_exactly_with_numeric_or_text_labels(registry: Registry, model: Any) -> None:
    X = frame(120, seed=2)
    numbers = np.random.default_rng(3).integers(0, 2, size=120)
    words = np.where(numbers == 1, "fraud", "ok").astype(object)

    for labels in (numbers, words):
        mv = registry.register(model, "m", sample=X.head(5), holdout=(X, labels), if_identical="new")
        stored = registry.holdout(mv)
        assert stored is not None
        inputs, got = stored
        assert list(inputs) == ["a", "b"]
        np.testing.assert_array_equal(inputs["a"], X.a.to_numpy())
        np.testing.assert_array_equal(inputs["b"], X.b.to_numpy())
        assert got.tolist() == labels.tolist()


def test_a_version_without_a_holdout_has_none_and_registers_as_before(registry: Registry, model: Any) -> None:
    mv = registry.register(model, "m", sample=frame(10).head(5))

    assert registry.holdout(mv) is None
    assert registry_module.HOLDOUT not in mv.files


def test_the_holdout_file_is_covered_by_the_digest(registry: Registry, model: Any) -> None:
    X = frame(50)
    labels = np.zeros(50, dtype=int)
    plain = registry.register(model, "m", sample=X.head(5))
    mv = registry.register(model, "m", sample=X.head(5), holdout=(X, labels))

    assert mv.digest != plain.digest  # the same model with a holdout set is other files
    path = Path(mv.artifact_uri) / registry_module.HOLDOUT
    assert mv.files[registry_module.HOLDOUT] == sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="holdout.npz"):
        registry.holdout(mv)


def test_above_the_cap_a_seeded_choice_of_rows_is_kept_in_order(
    registry: Registry, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "HOLDOUT_MAX_ROWS", 40)
    X = frame(100, seed=4)
    row_ids = np.arange(100)  # the labels name their rows, so the kept ones can be told

    mv = registry.register(model, "m", sample=X.head(5), holdout=(X, row_ids))

    stored = registry.holdout(mv)
    assert stored is not None
    inputs, kept = stored
    assert len(kept) == 40 and len(set(kept.tolist())) == 40
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(inputs["a"], X.a.to_numpy()[kept])


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ((frame(20), np.zeros(19)), "one label per row: 20 rows of inputs, labels of shape \\[19\\]"),
        ((frame(20).rename(columns={"b": "c"}), np.zeros(20)), "holdout inputs do not fit the signature"),
        ((frame(20), np.array([1, "x"] * 10, dtype=object)), "all be numbers or all be strings"),
    ],
)
def test_a_bad_holdout_is_refused_and_nothing_is_registered(
    registry: Registry, model: Any, holdout: tuple[Any, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        registry.register(model, "m", sample=frame(20).head(5), holdout=holdout)
    with pytest.raises(ModelNotFound):
        registry.versions("m")


# -- shipyard register --holdout ------------------------------------------------------------------


def run(home: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


@pytest.fixture
def files(tmp_path: Path, model: Any) -> dict[str, Path]:
    import skops.io as sio

    sio.dump(model, tmp_path / "m.skops")
    X = frame(60, seed=5)
    X.head(5).to_csv(tmp_path / "sample.csv", index=False)
    X.assign(target=(X.a > 0).astype(int)).to_parquet(tmp_path / "holdout.parquet")
    return {"model": tmp_path / "m.skops", "sample": tmp_path / "sample.csv", "holdout": tmp_path / "holdout.parquet"}


def test_register_keeps_the_holdout_file_split_at_the_label_column(tmp_path: Path, files: dict[str, Path]) -> None:
    home = tmp_path / "home"
    result = run(home, "register", "m", files["model"], "--sample", files["sample"],
                 "--holdout", files["holdout"], "--label-column", "target")

    assert result.exit_code == 0, result.output
    assert "holdout set: 60 rows, labels from 'target'" in result.output
    expected = pd.read_parquet(files["holdout"])
    reg = Registry.from_settings(Settings(home=home))
    try:
        stored = reg.holdout(reg.get("m:1"))
    finally:
        reg.close()
    assert stored is not None
    inputs, labels = stored
    assert list(inputs) == ["a", "b"]
    assert labels.tolist() == expected.target.tolist()
    np.testing.assert_array_equal(inputs["a"], expected.a.to_numpy())


def test_register_names_the_columns_when_the_label_column_is_not_one(tmp_path: Path, files: dict[str, Path]) -> None:
    result = run(tmp_path / "home", "register", "m", files["model"], "--sample", files["sample"],
                 "--holdout", files["holdout"], "--label-column", "label")

    assert result.exit_code == 1
    assert "--label-column 'label' is not a column of 'holdout.parquet', which has 'a', 'b', 'target'" \
        in result.output


def test_register_needs_the_label_column_with_a_holdout(tmp_path: Path, files: dict[str, Path]) -> None:
    result = run(tmp_path / "home", "register", "m", files["model"], "--sample", files["sample"],
                 "--holdout", files["holdout"])

    assert result.exit_code == 2
    assert "--holdout and --label-column go together" in result.output
