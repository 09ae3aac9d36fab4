"""``shipyard register --option KEY=VALUE``: typed by the runtime's declarations, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from click.testing import CliRunner, Result
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.registry import Registry


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scikit-learn model saved with skops, the same as ONNX, and a sample CSV."""
    folder = tmp_path_factory.mktemp("models")
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["a", "b", "c", "d"]
    clf = LogisticRegression(max_iter=1000).fit(X, y)
    sio.dump(clf, folder / "iris.skops")
    X.head().to_csv(folder / "rows.csv", index=False)
    proto = to_onnx(LogisticRegression(max_iter=1000).fit(X.to_numpy(np.float32), y),
                    X.to_numpy(np.float32)[:1], target_opset=17)
    (folder / "iris.onnx").write_bytes(proto.SerializeToString())
    return {"skops": folder / "iris.skops", "onnx": folder / "iris.onnx", "sample": folder / "rows.csv"}


def run(home: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


def versions(home: Path) -> list[dict[str, object]]:
    reg = Registry.from_settings(Settings(home=home))
    try:
        return reg.models()
    finally:
        reg.close()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("trust=1", "unknown option 'trust' for runtime sklearn; did you mean --trust-pickle?"),
        ("trust_pickle=1", "unknown option 'trust_pickle' for runtime sklearn; did you mean --trust-pickle?"),
        ("bogus_option=1", "unknown option 'bogus_option' for runtime sklearn; valid options: methods"),
        ("method=predict_proba", "unknown option 'method' for runtime sklearn; did you mean 'methods'?"),
        ("methods", "--option takes KEY=VALUE, got 'methods'"),
    ],
)
def test_a_bad_option_is_one_line_exit_1_and_nothing_registered(
    tmp_path: Path, files: dict[str, Path], option: str, message: str
) -> None:
    result = run(tmp_path, "register", "iris", files["skops"], "--sample", files["sample"], "--option", option)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"error: {message}"
    assert versions(tmp_path) == []


def test_a_value_is_converted_by_the_declared_type(tmp_path: Path, files: dict[str, Path]) -> None:
    result = run(tmp_path, "register", "iris", files["skops"], "--sample", files["sample"],
                 "--option", "methods=predict,predict_proba")
    assert result.exit_code == 0, result.output
    reg = Registry.from_settings(Settings(home=tmp_path))
    try:
        assert reg.get("iris:1").flavor_meta["methods"] == ["predict", "predict_proba"]
    finally:
        reg.close()

    bad = run(tmp_path, "register", "iris-onnx", files["onnx"], "--option", "threads=four")
    assert bad.exit_code == 1
    assert bad.output.strip() == "error: option 'threads' for runtime onnx must be an int, got 'four'"
    good = run(tmp_path, "register", "iris-onnx", files["onnx"], "--option", "threads=1")
    assert good.exit_code == 0, good.output


def test_help_lists_every_runtimes_options(tmp_path: Path) -> None:
    result = run(tmp_path, "register", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for expected in ("--option KEY=VALUE", "sklearn: methods", "onnx: threads", "lightgbm: classes",
                     "python: code_paths", "torch takes no options"):
        assert expected in text, expected


def test_without_options_registration_is_unchanged(tmp_path: Path, files: dict[str, Path]) -> None:
    result = run(tmp_path, "register", "iris", files["skops"], "--sample", files["sample"])
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in versions(tmp_path)] == ["iris"]


def test_a_bad_name_is_still_the_first_complaint(tmp_path: Path, files: dict[str, Path]) -> None:
    result = run(tmp_path, "register", "bad name!", files["sample"], "--option", "methods=predict")
    assert result.exit_code == 1
    assert "invalid model name" in result.output
