"""A version's reference profile: made at registration, covered by the digest, renewed only as a new version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.registry import Registry
from shipyard.registry.reference import MIN_ROWS, PROFILE

rng = np.random.default_rng(0)
X = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
Y = (X["a"] > 0).astype(int)
MODEL = LogisticRegression().fit(X, Y)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.from_settings(Settings(home=tmp_path / "home"))
    yield reg
    reg.close()


def test_training_data_with_its_label_column_profiles_the_inputs_and_predictions(registry: Registry) -> None:
    mv = registry.register(MODEL, "m", sample=X.head(5), training_data=X.assign(label=Y))
    assert PROFILE in mv.files  # in the digest: nobody changes a version's reference afterwards
    profile = registry.profile(mv)
    assert profile.rows == 400
    assert [f.name for f in profile.inputs] == ["a", "b", "c"]
    (output,) = profile.outputs
    assert sum(output.counts) == 400
    a = profile.feature("a")
    assert (a.min, a.max) == (X["a"].min(), X["a"].max())


def test_a_sample_too_small_makes_no_profile_and_a_large_one_does(registry: Registry) -> None:
    small = registry.register(MODEL, "m", sample=X.head(MIN_ROWS - 1))
    assert registry.profile(small) is None
    large = registry.register(MODEL, "m", sample=X.head(MIN_ROWS), if_identical="new")
    assert registry.profile(large).rows == MIN_ROWS


def test_a_new_reference_makes_a_new_version_with_the_same_model(registry: Registry) -> None:
    first = registry.register(MODEL, "m", sample=X.head(5))
    shifted = X.assign(a=X["a"] + 3)
    second = registry.reprofile("m:1", shifted, alias="champion")
    assert second.version == 2 and second.lineage["parent"] == "m:1"
    assert second.files["model.skops"] == first.files["model.skops"]
    assert registry.profile(second).feature("a").min == pytest.approx(shifted["a"].min())
    assert registry.aliases("m") == {"champion": 2}
    with pytest.raises(InvalidInput, match="at least"):
        registry.reprofile("m:1", X.head(3))


def test_shipyard_profile_shows_and_renews_the_reference(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    reg.register(MODEL, "m", sample=X.head(5))
    reg.close()
    data = tmp_path / "ref.csv"
    X.to_csv(data, index=False)
    runner = CliRunner()
    shown = runner.invoke(cli, ["--home", str(home), "profile", "m:1"], catch_exceptions=False)
    assert shown.exit_code == 0 and "no reference profile" in shown.output
    made = runner.invoke(cli, ["--home", str(home), "profile", "m:1", "--data", str(data)], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    assert "registered m:2" in made.output and "400 rows" in made.output
