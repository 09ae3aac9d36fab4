"""``shipyard drift``: tables, JSON, the HTML report, windows, and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.fixtures.drift import FEATURES, register_model, rows, write

from shipyard.cli.drift import EXIT_DRIFT, TESTS
from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.registry import Registry


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("home")
    reg = Registry.from_settings(Settings(home=folder))
    try:
        register_model(reg, "fraud")
    finally:
        reg.close()
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    both = rows(6000, seed=3)
    return {
        "reference": write(both.iloc[:3000], folder / "reference.parquet"),
        "same": write(both.iloc[3000:], folder / "same.csv"),
        "shifted": write(rows(3000, seed=4, shift={"c": 1.0}), folder / "shifted.parquet"),
    }


def run(home: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "drift", *map(str, args)], catch_exceptions=False)


def test_no_drift_prints_a_table_per_feature_and_exits_0(home: Path, files: dict[str, Path]) -> None:
    result = run(home, "fraud", "--reference", files["reference"], "--current", files["same"])
    assert result.exit_code == 0, result.output
    for name in FEATURES:
        assert name in result.output
    assert "no dataset drift: 0 of 4 input features drifted" in result.output
    assert "3,000 read, 3,000 compared, 0 rejected" in result.output


def test_drift_names_the_feature_and_exits_3(home: Path, files: dict[str, Path]) -> None:
    result = run(home, "fraud@champion", "--reference", files["reference"], "--current", files["shifted"])
    assert result.exit_code == EXIT_DRIFT == 3, result.output
    assert "1 of 4 input features drifted" in result.output
    assert "no dataset drift: 1 of 4 input features drifted (share 25%, dataset drift at 50%): c" in result.output


def test_json_parses_and_holds_the_report(home: Path, files: dict[str, Path]) -> None:
    result = run(home, "fraud", "--reference", files["reference"], "--current", files["shifted"], "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["model"] == "fraud:1"
    assert doc["drifted"] is False  # 1 of 4 features: below the dataset's 50%
    assert doc["drifted_features"][0] == "c"
    assert [f["feature"] for f in doc["report"]["features"] if f["drifted"]] == ["c"]
    assert doc["read"]["current"]["rows"] == 3000


def test_report_writes_a_self_contained_html_file(home: Path, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "drift.html"
    result = run(home, "fraud", "--reference", files["reference"], "--current", files["shifted"], "--report", out)
    assert result.exit_code == 3
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.count("<svg") == len(FEATURES)
    assert f"report: {out}" in result.output


def test_window_rows_reports_every_window(home: Path, files: dict[str, Path]) -> None:
    result = run(home, "fraud", "--reference", files["reference"], "--current", files["shifted"],
                 "--window-rows", "1000", "--json")
    doc = json.loads(result.stdout)
    assert [(w["first_row"], w["rows"]) for w in doc["windows"]] == [(0, 1000), (1000, 1000), (2000, 1000)]
    table = run(home, "fraud", "--reference", files["reference"], "--current", files["shifted"],
                "--window-rows", "1000")
    assert "windows of 1,000 rows" in table.output
    assert "windows: 3 of 3 with drift, 0 with dataset drift" in table.output


def test_a_bad_csv_value_is_counted_not_fatal(home: Path, files: dict[str, Path], tmp_path: Path) -> None:
    lines = files["same"].read_text().splitlines()
    lines[3] = "abc," + lines[3].split(",", 1)[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    result = run(home, "fraud", "--reference", files["reference"], "--current", bad, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["read"]["current"]["rejected"] == 1
    assert doc["read"]["current"]["type_failures"] == {"a": 1}
    a = next(f for f in doc["report"]["features"] if f["feature"] == "a")
    assert a["quality"]["type_failures"] == 1


def test_a_version_reference_and_a_chosen_test(home: Path, files: dict[str, Path]) -> None:
    result = run(home, "fraud", "--reference", "1", "--current", files["shifted"], "--test", "a=psi", "--json")
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert doc["reference"].startswith("fraud:1")
    assert next(f for f in doc["report"]["features"] if f["feature"] == "a")["test"] == "psi"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test", "a=magic"], "unknown test 'magic'"),
        (["--test", "a"], "takes FEATURE=TEST"),
        (["--window-rows", "0"], "--window-rows"),
        (["--false-alarms", "2"], "--false-alarms"),
    ],
)
def test_usage_errors_exit_2(home: Path, files: dict[str, Path], args: list[str], message: str) -> None:
    result = run(home, "fraud", "--reference", files["reference"], "--current", files["same"], *args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_file_is_one_line_exit_1(home: Path, files: dict[str, Path], tmp_path: Path) -> None:
    result = run(home, "fraud", "--reference", files["reference"], "--current", tmp_path / "nope.parquet")
    assert result.exit_code == 1
    assert result.output.startswith("error: input")


def test_the_test_names_are_the_detectors() -> None:
    from shipyard.monitoring.drift.detector import TESTS as DETECTOR_TESTS

    assert set(TESTS) == DETECTOR_TESTS


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["drift", "--help"])
    assert result.exit_code == 0
    assert "0 no drift; 3 drift" in result.output
