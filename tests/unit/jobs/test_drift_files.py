"""Offline drift of files (``drift_of_files``/``run_drift``) and its HTML report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from tests.fixtures.drift import FEATURES, register_model, rows, write

from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.jobs.drift import drift_of_files, html_of, run_drift
from shipyard.monitoring.drift.profile import profile_of
from shipyard.monitoring.drift.report_html import render_html
from shipyard.monitoring.drift.window import Window
from shipyard.registry import Registry


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("home"), workers=1)
    reg = Registry.from_settings(settings)
    try:
        register_model(reg)
    finally:
        reg.close()
    return settings


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    both = rows(8000, seed=1)
    return {
        "reference": write(both.iloc[:4000], folder / "reference.parquet"),
        "same": write(both.iloc[4000:], folder / "same.parquet"),
        "shifted": write(rows(4000, seed=2, shift={"b": 1.0}), folder / "shifted.parquet"),
        "csv": write(both.iloc[4000:], folder / "same.csv"),
    }


def test_two_halves_of_one_distribution_do_not_drift(home: Settings, files: dict[str, Path]) -> None:
    report = drift_of_files("m", files["reference"], files["same"], settings=home)
    assert report.rows == 4000
    assert [f.feature for f in report.features] == FEATURES
    assert not report.drifted
    assert [f.feature for f in report.features if f.drifted] == []
    assert all(f.skipped is None for f in report.features)


def test_a_shifted_feature_is_flagged_and_only_it(home: Settings, files: dict[str, Path]) -> None:
    report = drift_of_files("m@champion", files["reference"], files["shifted"], settings=home)
    assert [f.feature for f in report.features if f.drifted] == ["b"]
    b = next(f for f in report.features if f.feature == "b")
    assert b.effect > 0.5
    assert report.share == pytest.approx(0.25)


def test_a_bad_csv_value_is_a_counted_type_failure_not_an_error(
    home: Settings, files: dict[str, Path], tmp_path: Path
) -> None:
    lines = files["csv"].read_text().splitlines()
    header = lines[0].split(",")
    bad = lines[5].split(",")
    bad[header.index("b")] = "oops"
    empty = lines[9].split(",")
    empty[header.index("c")] = ""
    lines[5], lines[9] = ",".join(bad), ",".join(empty)
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")

    run = run_drift("m", files["reference"], path, settings=home)
    assert run.current_read.rows == 4000
    assert run.current_read.rejected == 2
    assert run.current_read.type_failures == {"b": 1}
    assert run.current_read.nulls == {"c": 1}
    assert run.report.rows == 3998
    quality = {f.feature: f.quality for f in run.report.features}
    assert quality["b"]["type_failures"] == 1
    assert quality["c"]["nulls"] >= 1
    assert not run.report.drifted


def test_window_rows_compares_each_slice_and_the_whole(home: Settings, files: dict[str, Path]) -> None:
    run = run_drift("m", files["reference"], files["shifted"], window_rows=1500, settings=home)
    assert [(w.first_row, w.rows) for w in run.windows] == [(0, 1500), (1500, 1500), (3000, 1000)]
    assert [w.report.rows for w in run.windows] == [1500, 1500, 1000]
    assert run.report.rows == 4000
    assert all([f.feature for f in w.report.features if f.drifted] == ["b"] for w in run.windows)
    assert run.drifted_features[0] == "b"
    assert set(run.drifted_features) <= {"b", "mmd", "pca_reconstruction"}  # multivariate tests see it too
    assert not run.drifted  # 1 of 4 features: below the dataset's 50%


def test_windows_across_chunks_split_at_the_right_rows(home: Settings, files: dict[str, Path]) -> None:
    run = run_drift("m", files["reference"], files["same"], window_rows=1000, chunk_rows=700, settings=home)
    assert [w.rows for w in run.windows] == [1000] * 4
    assert [w.report.rows for w in run.windows] == [1000] * 4
    assert not run.drifted


def test_a_version_reference_without_a_stored_profile_uses_its_check_set(
    home: Settings, files: dict[str, Path]
) -> None:
    run = run_drift("m", "@champion", files["shifted"], settings=home)
    assert run.reference_source in ("profile", "check_set")
    assert run.profile.rows == 1000
    assert [f.feature for f in run.report.features if f.drifted] == ["b"]


def test_predictions_are_compared_when_asked(home: Settings, files: dict[str, Path]) -> None:
    run = run_drift("m", files["reference"], files["shifted"], with_predictions=True, settings=home)
    assert len(run.report.outputs) >= 1
    assert run.report.outputs[0].n == 4000
    assert drift_of_files("m", files["reference"], files["same"], settings=home).outputs == ()


def test_a_test_for_an_unknown_feature_is_refused(home: Settings, files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="no feature named 'zz'"):
        run_drift("m", files["reference"], files["same"], tests={"zz": "ks"}, settings=home)


def test_the_run_as_json_round_trips(home: Settings, files: dict[str, Path]) -> None:
    run = run_drift("m", files["reference"], files["shifted"], window_rows=2000, settings=home)
    doc = json.loads(json.dumps(run.to_dict()))
    assert doc["drifted_features"][0] == "b"
    assert doc["report"]["drifted"] == run.report.drifted
    assert len(doc["windows"]) == 2


class _Resources(HTMLParser):
    """Every tag and every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.loads: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "srcset", "action", "data") and v and not v.startswith("#"):
                self.loads.append((tag, k, v))


def _parsed(text: str) -> _Resources:
    p = _Resources()
    p.feed(text)
    p.close()
    return p


def test_the_html_report_is_self_contained(home: Settings, files: dict[str, Path]) -> None:
    run = run_drift("m", files["reference"], files["shifted"], window_rows=2000, settings=home)
    text = html_of(run)
    assert "http://" not in text and "https://" not in text
    p = _parsed(text)
    assert p.loads == []
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert p.tags.count("svg") == len(FEATURES)
    assert "@import" not in text and "url(" not in text


def test_the_html_report_escapes_names_from_users() -> None:
    rng = np.random.default_rng(0)
    evil = '<script>alert("x")</script>'
    inputs = {evil: rng.normal(0, 1, 500), "k&<v>": np.array(["<b>", "a&b", '"q"'] * 200)[:500]}
    profile = profile_of(inputs)
    window = Window(profile)
    window.add({evil: rng.normal(0, 1, 500), "k&<v>": np.array(["<b>", "zz<i>"] * 250)})
    from shipyard.monitoring.drift.detector import compare

    report = compare(profile, window)
    text = render_html(report, profile, window, title="model <x>", meta={"model": "<m>&"})
    assert "<script>" not in text and "<b>" not in text and "<i>" not in text and "<m>" not in text
    assert "&lt;script&gt;" in text and "&lt;m&gt;&amp;" in text
    p = _parsed(text)
    assert "script" not in p.tags and "b" not in p.tags
    assert p.tags.count("svg") == 2

