"""The comparison of a variant with its source: pure numbers, and the checked write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.errors import CheckFailed, InvalidInput
from shipyard.export.check import (
    CheckResult,
    Tolerance,
    accuracy_delta,
    compare,
    compare_output,
    default_tolerance,
    labels_of,
    resolve_tolerance,
    write_checked,
)


def test_identical_labels_agree_fully_and_changed_ones_count() -> None:
    src = np.array([0, 1, 2, 1])
    assert compare_output("predict", src, src.copy()).agreement == 1.0
    assert compare_output("predict", src, np.array([0, 1, 2, 2])).agreement == 0.75


def test_string_labels_compare_with_bytes_and_object_arrays() -> None:
    src = np.array(["yes", "no", "yes"])
    var = np.array([b"yes", b"no", b"no"], dtype=object)
    assert compare_output("predict", src, var).agreement == pytest.approx(2 / 3)


def test_float_outputs_report_absolute_and_range_scaled_difference() -> None:
    src = np.array([100.0, 200.0, -300.0])
    var = np.array([100.0, 200.03, -300.0])
    c = compare_output("predict", src, var)
    assert c.kind == "values"
    assert c.max_abs_diff == pytest.approx(0.03)
    assert c.max_scaled_diff == pytest.approx(0.03 / 300)


def test_small_values_are_compared_absolutely() -> None:
    c = compare_output("p", np.array([[0.1, 0.9]]), np.array([[0.12, 0.88]]))
    assert c.max_scaled_diff == pytest.approx(0.02)
    assert c.agreement == 1.0  # top-1 of the class scores


def test_column_vector_and_flat_outputs_compare_row_by_row() -> None:
    c = compare_output("predict", np.array([1.0, 2.0]), np.array([[1.0], [2.0]], dtype=np.float32))
    assert c.max_abs_diff == 0.0


def test_nan_in_both_is_equal_and_nan_in_one_is_infinitely_far() -> None:
    assert compare_output("p", np.array([np.nan, 1.0]), np.array([np.nan, 1.0])).max_abs_diff == 0.0
    assert compare_output("p", np.array([0.5, 1.0]), np.array([np.nan, 1.0])).max_abs_diff == float("inf")


def test_shape_mismatch_fails_the_check() -> None:
    result = compare({"p": np.zeros((3, 2))}, {"p": np.zeros((3, 3))}, Tolerance(1e-4, 1.0))
    assert not result.passed


def test_check_fails_beyond_the_tolerance_and_names_the_output() -> None:
    src = {"predict": np.array([0, 1, 1, 1]), "predict_proba": np.array([[0.9, 0.1], [0.2, 0.8]] * 2)}
    var = {"predict": np.array([0, 1, 1, 0]), "predict_proba": np.array([[0.9, 0.1], [0.2, 0.8]] * 2) + 0.01}
    tight = compare(src, var, Tolerance(max_diff=1e-3, min_agreement=1.0))
    assert not tight.passed
    assert any("'predict': label agreement 0.7500 < 1" in f for f in tight.failures)
    assert any("'predict_proba': max difference" in f for f in tight.failures)
    loose = compare(src, var, Tolerance(max_diff=0.05, min_agreement=0.75))
    assert loose.passed
    assert loose.label_agreement == 0.75
    assert loose.max_abs_diff == pytest.approx(0.01)


def test_none_in_the_tolerance_reports_without_enforcing() -> None:
    result = compare({"p": np.array([1.0])}, {"p": np.array([5.0])}, Tolerance(max_diff=None, min_agreement=None))
    assert result.passed and result.max_abs_diff == 4.0


def test_a_missing_output_fails_and_extra_outputs_are_ignored() -> None:
    src = {"predict": np.array([1])}
    assert not compare(src, {"label": np.array([1])}, Tolerance(1e-4, 1.0)).passed
    assert compare(src, {"predict": np.array([1]), "extra": np.array([9])}, Tolerance(1e-4, 1.0)).passed


def test_defaults_are_tight_for_lossless_steps_and_looser_for_lossy_ones() -> None:
    assert default_tolerance("export") == Tolerance(1e-4, 1.0)
    assert default_tolerance("compile") == Tolerance(1e-4, 1.0)
    assert default_tolerance("dynamic").max_diff > default_tolerance("fp16").max_diff  # type: ignore[operator]
    assert default_tolerance("prune").max_diff is None
    # without labels something must still be enforced
    assert default_tolerance("prune", has_labels=False).max_diff == 0.1


def test_user_settings_override_each_default_separately() -> None:
    tol = resolve_tolerance("dynamic", has_labels=True, max_diff=0.5)
    assert tol == Tolerance(0.5, default_tolerance("dynamic").min_agreement)


@pytest.mark.parametrize("kwargs", [{"max_diff": -1.0, "min_agreement": None},
                                    {"max_diff": float("nan"), "min_agreement": None},
                                    {"max_diff": None, "min_agreement": 1.5}])
def test_impossible_tolerances_are_refused(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(InvalidInput):
        Tolerance(**kwargs)


def test_unknown_transformation_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown transformation"):
        default_tolerance("magic")


def test_labels_come_from_a_label_output_or_the_argmax_of_scores() -> None:
    assert labels_of({"predict": np.array([2, 0])}).tolist() == [2, 0]  # type: ignore[union-attr]
    assert labels_of({"logits": np.array([[0.1, 3.0], [2.0, 0.0]])}).tolist() == [1, 0]  # type: ignore[union-attr]
    assert labels_of({"predict": np.array([1.5, 2.5])}) is None


def test_accuracy_delta_against_the_truth_and_against_the_source() -> None:
    src = {"predict": np.array([0, 1, 1, 0])}
    var = {"predict": np.array([0, 1, 0, 0])}
    truth = np.array([0, 1, 0, 1])
    assert accuracy_delta(src, var, truth) == pytest.approx(0.75 - 0.5)
    assert accuracy_delta(src, var, None) == pytest.approx(-0.25)
    assert accuracy_delta({"p": np.array([1.0])}, {"p": np.array([1.0])}, None) is None


def _result(passed: bool) -> CheckResult:
    return CheckResult(outputs=(), tolerance=Tolerance(1e-4, 1.0), failures=() if passed else ("too far",))


def test_checked_write_moves_the_file_into_place_only_after_the_check(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model.onnx"
    seen: list[Path] = []

    def check(p: Path) -> CheckResult:
        seen.append(p)
        assert not dest.exists()  # still staged while it is being checked
        return _result(True)

    write_checked(dest, lambda p: p.write_bytes(b"graph"), check, variant="onnx")
    assert dest.read_bytes() == b"graph"
    assert seen[0] != dest
    assert sorted(x.name for x in dest.parent.iterdir()) == ["model.onnx"]  # no temp left


def test_a_failed_check_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    with pytest.raises(CheckFailed, match="onnx failed its check.*too far.*nothing was written"):
        write_checked(dest, lambda p: p.write_bytes(b"graph"), lambda p: _result(False), variant="onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_leaves_nothing_behind(tmp_path: Path) -> None:
    def write(p: Path) -> None:
        p.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_checked(tmp_path / "m.onnx", write, lambda p: _result(True), variant="onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_check_keeps_an_earlier_good_file(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"old good")
    with pytest.raises(CheckFailed):
        write_checked(dest, lambda p: p.write_bytes(b"new bad"), lambda p: _result(False), variant="onnx")
    assert dest.read_bytes() == b"old good"


def test_folder_artifacts_are_staged_and_replaced_whole(tmp_path: Path) -> None:
    dest = tmp_path / "model.openvino"
    dest.mkdir()
    (dest / "stale.bin").write_bytes(b"x")

    def write(p: Path) -> None:
        p.mkdir()
        (p / "model.xml").write_text("<net/>")

    write_checked(dest, write, lambda p: _result(True), variant="compile:openvino")
    assert sorted(x.name for x in dest.iterdir()) == ["model.xml"]
