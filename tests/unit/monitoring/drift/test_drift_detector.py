"""The drift detector: test choice, calibration rules, skipping, quality, outputs, multivariate, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shipyard.monitoring.drift.detector import DriftReport, DriftSettings, FeatureDrift, compare, default_test
from shipyard.monitoring.drift.profile import Profile, profile_of
from shipyard.monitoring.drift.window import Window


def _data(rows: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    colour = rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2])
    flag = rng.choice(["yes", "no"], rows, p=[0.3, 0.7])
    score = x[:, 0] + 0.5 * rng.normal(size=rows)
    return {"x": x, "colour": colour, "flag": flag}, {"score": score}


@pytest.fixture(scope="module")
def large() -> Profile:
    return profile_of(*_data(5_000, seed=1))


@pytest.fixture(scope="module")
def small() -> Profile:
    return profile_of(*_data(800, seed=2))


def _window(profile: Profile, rows: int, seed: int, shift: float = 0.0, score_shift: float = 0.0) -> Window:
    inputs, outputs = _data(rows, seed)
    inputs["x"][:, 1] += shift
    outputs["score"] += score_shift
    window = Window(profile)
    window.add(inputs, outputs)
    return window


def _by_name(report: DriftReport) -> dict[str, FeatureDrift]:
    return {f.feature: f for f in (*report.features, *report.outputs, *report.multivariate)}


def test_default_tests_follow_evidentlys_table(large: Profile, small: Profile) -> None:
    assert {f.name: default_test(f, small.rows) for f in small.inputs} == {
        "x[0]": "ks", "x[1]": "ks", "x[2]": "ks", "x[3]": "ks", "colour": "chi_square", "flag": "z",
    }  # fmt: skip
    assert {default_test(f, large.rows) for f in large.inputs if f.name.startswith("x")} == {"wasserstein"}
    assert default_test(large.feature("colour"), large.rows) == "jensen_shannon"
    assert default_test(large.feature("flag"), large.rows) == "jensen_shannon"


def test_settings_validate_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown drift tests"):
        DriftSettings(tests={"x[0]": "t_test"})
    with pytest.raises(ValueError, match="false_alarms"):
        DriftSettings(false_alarms=0.0)
    with pytest.raises(ValueError, match="min_rows"):
        DriftSettings(min_rows=0)
    settings = DriftSettings(tests={"x[0]": "psi"})
    with pytest.raises(TypeError):
        settings.tests["x[0]"] = "ks"  # type: ignore[index]


def test_no_shift_raises_no_alarm_and_shift_is_flagged(large: Profile) -> None:
    calm = compare(large, _window(large, 2_000, seed=10))
    assert not calm.any_drift and calm.share == 0.0 and not calm.drifted
    shifted = compare(large, _window(large, 2_000, seed=11, shift=0.5))
    drifted = [f.feature for f in shifted.features if f.drifted]
    assert drifted == ["x[1]"]
    x1 = _by_name(shifted)["x[1]"]
    assert x1.test == "wasserstein" and x1.p_value is None and x1.statistic == pytest.approx(0.5, abs=0.1)
    assert shifted.share == pytest.approx(1 / 6) and not shifted.drifted


def test_p_value_tests_use_the_split_false_alarm_rate_and_the_effect_floor(small: Profile) -> None:
    report = compare(small, _window(small, 1_000, seed=12, shift=0.5))
    k = report.tests
    assert k == 6 + 1 + 2  # six inputs, one output, PCA and MMD
    x1 = _by_name(report)["x[1]"]
    assert x1.test == "ks" and x1.threshold == pytest.approx(0.001 / k)
    assert x1.drifted and x1.p_value < x1.threshold and x1.effect >= 0.1
    # the same shift with a higher floor: still significant, no longer material
    strict = compare(small, _window(small, 1_000, seed=12, shift=0.5), DriftSettings(thresholds={"x[1]": 0.9}))
    assert not _by_name(strict)["x[1]"].drifted


def test_categorical_tests_on_a_small_reference(small: Profile) -> None:
    window = Window(small)
    inputs, outputs = _data(1_000, seed=13)
    inputs["flag"] = np.where(np.arange(1_000) % 2 == 0, "yes", "no")  # 50% instead of 30%
    window.add(inputs, outputs)
    flag = _by_name(compare(small, window))["flag"]
    assert flag.test == "z" and flag.drifted


def test_a_window_below_min_rows_skips_every_feature(large: Profile) -> None:
    report = compare(large, _window(large, 150, seed=14, shift=5.0, score_shift=5.0))
    everything = (*report.features, *report.outputs, *report.multivariate)
    assert all(f.skipped and "min_rows=200" in f.skipped and not f.drifted for f in everything)
    assert report.tests == 0 and not report.drifted and report.share == 0.0


def test_a_mostly_null_feature_is_skipped_with_its_quality_counts(large: Profile) -> None:
    inputs, outputs = _data(1_000, seed=15)
    x = inputs["x"]
    x[100:, 2] = np.nan
    x[:5, 3] = 99.0  # above the reference's maximum
    inputs["colour"] = np.where(np.arange(1_000) < 7, "purple", inputs["colour"])  # unseen category
    window = Window(large)
    window.add(inputs, outputs)
    by = _by_name(compare(large, window))
    assert by["x[2]"].skipped == "100 non-null rows, fewer than min_rows=200"
    assert by["x[2]"].quality["nulls"] == 900
    assert by["x[3]"].quality == window.quality("x[3]").to_dict()
    assert by["x[3]"].quality["above_max"] >= 5
    assert by["colour"].quality["unseen"] == 7


def test_outputs_drift_through_the_same_machinery(large: Profile) -> None:
    report = compare(large, _window(large, 2_000, seed=16, score_shift=1.0))
    assert [f.feature for f in report.outputs if f.drifted] == ["score"]
    assert not any(f.drifted for f in report.features)


@pytest.mark.parametrize("test", ["psi", "hellinger", "cvm", "chi_square", "jensen_shannon", "ks"])
def test_selectable_tests_run_on_numeric_features(large: Profile, test: str) -> None:
    settings = DriftSettings(tests={"x[1]": test, "x[2]": test})
    by = _by_name(compare(large, _window(large, 2_000, seed=17, shift=1.0), settings))
    assert by["x[1]"].test == test and by["x[1]"].drifted
    assert not by["x[2]"].drifted


def test_a_numeric_test_on_a_categorical_feature_is_skipped_not_raised(large: Profile) -> None:
    by = _by_name(compare(large, _window(large, 500, seed=18), DriftSettings(tests={"colour": "ks"})))
    assert by["colour"].skipped == "test ks needs a numeric feature"


def test_small_windows_get_a_bootstrap_threshold_above_the_conventional_one(large: Profile) -> None:
    by = _by_name(compare(large, _window(large, 250, seed=19)))
    assert by["x[0]"].threshold > 0.2  # W normed noise at n=250
    by = _by_name(compare(large, _window(large, 20_000, seed=20)))
    assert by["x[0]"].threshold == pytest.approx(0.1)


def test_configured_distance_threshold_wins_when_higher(large: Profile) -> None:
    settings = DriftSettings(thresholds={"x[1]": 0.8})
    by = _by_name(compare(large, _window(large, 2_000, seed=21, shift=0.5), settings))
    assert by["x[1]"].threshold == 0.8 and not by["x[1]"].drifted


def test_multivariate_tests_flag_broken_correlations() -> None:
    rng = np.random.default_rng(22)
    base = rng.normal(size=(4_000, 1))
    ref = np.hstack([base + 0.1 * rng.normal(size=(4_000, 1)) for _ in range(4)])  # four nearly equal columns
    profile = profile_of({"x": ref})
    window = Window(profile)
    window.add({"x": rng.normal(size=(2_000, 4))})  # same marginals (about), correlation gone
    by = _by_name(compare(profile, window))
    assert by["pca_reconstruction"].drifted and by["pca_reconstruction"].effect > 0.5
    assert by["mmd"].drifted
    calm = Window(profile)
    b = rng.normal(size=(2_000, 1))
    calm.add({"x": np.hstack([b + 0.1 * rng.normal(size=(2_000, 1)) for _ in range(4)])})
    assert not compare(profile, calm).any_drift
    off = compare(profile, window, DriftSettings(multivariate=False))
    assert off.multivariate == ()


def test_report_round_trips_through_json(large: Profile) -> None:
    report = compare(large, _window(large, 2_000, seed=23, shift=0.5))
    again = DriftReport.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))
    assert again == report
    skipped = compare(large, _window(large, 10, seed=24))
    assert DriftReport.from_dict(json.loads(json.dumps(skipped.to_dict(), allow_nan=False))) == skipped


def test_compare_is_deterministic(large: Profile) -> None:
    assert compare(large, _window(large, 2_000, seed=25)) == compare(large, _window(large, 2_000, seed=25))
