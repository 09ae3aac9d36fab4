"""measure() reads the version from the registry and times its load; the CLI refuses before loading anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.deploy import measure
from shipyard.registry import Registry

X = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"])
MODEL = LogisticRegression().fit(X, (X["a"] > 0).astype(int))


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    s = Settings(home=tmp_path / "home")
    registry = Registry.from_settings(s)
    try:
        registry.register(MODEL, "m", sample=X.head(5), alias="champion")
    finally:
        registry.close()
    yield s


class Ticks:
    """A clock advancing one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_measure_times_the_load_and_the_rows_per_second(settings: Settings) -> None:
    measured = measure(settings, "m@champion", throughput=True, clock=Ticks())
    assert (measured.flavor, measured.version, measured.cold_start_seconds) == ("sklearn", 1, 1.0)
    # the 5-row sample repeated to 60 rows is predicted once: the clock read 2 ticks later
    assert measured.rows_per_second == 30.0


def test_a_given_cold_start_skips_loading(settings: Settings) -> None:
    measured = measure(settings, "m", cold_start=12.0)
    assert (measured.cold_start_seconds, measured.rows_per_second) == (12.0, None)


def test_deploy_k8s_refuses_the_embedded_defaults_naming_the_settings(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "none"), "deploy", "k8s", "m@champion", "--out",
                                      str(tmp_path / "out")],
                                env={"SHIPYARD_REGISTRY_URL": "", "SHIPYARD_ARTIFACTS": ""})
    assert result.exit_code == 1
    assert "registry_url (SHIPYARD_REGISTRY_URL)" in result.output and "artifacts (SHIPYARD_ARTIFACTS)" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "none").exists()  # refused before opening anything


def test_deploy_docker_writes_the_image_files_for_the_embedded_registry(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "docker"
    result = CliRunner().invoke(cli, ["--home", str(settings.home), "deploy", "docker", "m@champion", "--out",
                                      str(out), "--cold-start", "4"], env={"SHIPYARD_REGISTRY_URL": ""})
    assert result.exit_code == 0, result.output
    assert (out / "Dockerfile").is_file() and (out / "wheels").is_dir()
    assert "shipyard[sklearn]==" in (out / "requirements.txt").read_text()
    assert "docker build -t shipyard-m:" in result.output


def test_compose_replicas_count_its_own_postgres_and_still_refuse_a_local_artifact_folder(
        settings: Settings, tmp_path: Path) -> None:
    args = ["--home", str(settings.home), "deploy", "compose", "m@champion", "--out", str(tmp_path / "c"),
            "--cold-start", "3", "--with", "postgres,redis"]
    env = {"SHIPYARD_REGISTRY_URL": "", "SHIPYARD_ARTIFACTS": ""}
    refused = CliRunner().invoke(cli, [*args, "--replicas", "2"], env=env)
    assert refused.exit_code == 1
    assert "artifacts (SHIPYARD_ARTIFACTS)" in refused.output
    assert "registry_url" not in refused.output and "async_broker" not in refused.output  # postgres, redis given
    one = CliRunner().invoke(cli, args, env=env)
    assert one.exit_code == 0, one.output
    config = (tmp_path / "c" / "shipyard.yaml").read_text()
    assert "redis://redis:6379/shipyard" in config and "postgres" not in config  # the URL stays out of files
