"""Checking an exported or optimised artifact against its source model.

Every variant is run on the same check rows as the source (the signature
sample stored with the version, plus the user's data file when given) and
compared output by output:

* label outputs (integers, strings, booleans): the fraction of rows whose
  label is the same, *label agreement*;
* value outputs (floats): the largest absolute difference, and the largest
  *scaled* difference ``|variant - source| / max(1, max |source|)``: absolute
  for outputs within [-1, 1] (probabilities), relative to the output's range
  otherwise (a regression output reaching 300 may move by 1e-4 x 300, logits
  reaching 20 by tolerance x 20). Int8 quantization errors scale with a
  tensor's range, not with each value, which is why the range is the yardstick.

A ``Tolerance`` says how far a variant may move; lossless steps (export,
graph compilation) get a tight default, lossy ones (fp16, int8, pruning) a
looser one, and the user can set both. ``write_checked`` is the only way a
variant reaches its final path: it writes to a temporary name beside it,
checks, and renames only when the check passed, so a failed or interrupted
export never leaves an unchecked file that looks like a result.

Everything but ``write_checked`` is pure: arrays in, numbers out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import CheckFailed, InvalidInput

logger = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray[Any, Any]]

#: How each transformation is allowed to move the outputs by default.
LOSSLESS = ("export", "compile")
LOSSY = ("fp16", "dynamic", "static", "prune")


@dataclass(frozen=True)
class Tolerance:
    """How far a variant may move from its source and still pass.

    ``None`` means "report, don't enforce".
    """

    max_diff: float | None
    """Largest allowed scaled difference of a float output, ``|a - b| / max(1, max |b|)``."""
    min_agreement: float | None
    """Smallest allowed fraction of rows whose label is unchanged (0..1)."""

    def __post_init__(self) -> None:
        if self.max_diff is not None and not (self.max_diff >= 0 and np.isfinite(self.max_diff)):
            raise InvalidInput(f"tolerance must be a finite number >= 0, got {self.max_diff}", field="tolerance")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidInput(
                f"minimum label agreement must be between 0 and 1, got {self.min_agreement}", field="min_agreement"
            )


_DEFAULTS: dict[str, Tolerance] = {
    "export": Tolerance(max_diff=1e-4, min_agreement=1.0),
    "compile": Tolerance(max_diff=1e-4, min_agreement=1.0),
    "fp16": Tolerance(max_diff=1e-2, min_agreement=0.98),
    "dynamic": Tolerance(max_diff=5e-2, min_agreement=0.95),
    "static": Tolerance(max_diff=5e-2, min_agreement=0.95),
    # Fewer trees or zeroed weights move probabilities a lot by design; labels must hold.
    "prune": Tolerance(max_diff=None, min_agreement=0.95),
}


def default_tolerance(kind: str, *, has_labels: bool = True) -> Tolerance:
    """The tolerance a transformation gets unless the user sets one.

    Args:
        kind: ``export``, ``compile``, ``fp16``, ``dynamic``, ``static`` or ``prune``.
        has_labels: whether the model returns label outputs. A pruned model
            without them (a regressor, raw logits) is held to a 10% scaled
            difference instead, so something is always enforced.
    """
    try:
        tol = _DEFAULTS[kind]
    except KeyError:
        raise InvalidInput(f"unknown transformation '{kind}'; known: {', '.join(_DEFAULTS)}", field="kind") from None
    if tol.max_diff is None and not has_labels:
        return Tolerance(max_diff=0.1, min_agreement=tol.min_agreement)
    return tol


def resolve_tolerance(kind: str, *, has_labels: bool, max_diff: float | None = None,
                      min_agreement: float | None = None) -> Tolerance:
    """The default for ``kind`` with whatever the user set laid over it."""
    base = default_tolerance(kind, has_labels=has_labels)
    return Tolerance(
        max_diff=base.max_diff if max_diff is None else max_diff,
        min_agreement=base.min_agreement if min_agreement is None else min_agreement,
    )


@dataclass(frozen=True)
class OutputCheck:
    """How one named output of a variant compares with the source's."""

    name: str
    kind: str
    """``labels`` or ``values``."""
    rows: int
    agreement: float | None = None
    """Labels: fraction of equal rows. Values with one column per class: top-1 (argmax) agreement."""
    max_abs_diff: float | None = None
    max_scaled_diff: float | None = None


@dataclass(frozen=True)
class CheckResult:
    """Every compared output, the tolerance applied and whether the variant passed."""

    outputs: tuple[OutputCheck, ...]
    tolerance: Tolerance
    failures: tuple[str, ...] = ()
    accuracy_delta: float | None = None
    """Accuracy of the variant minus accuracy of the source (see ``accuracy_delta``)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def label_agreement(self) -> float | None:
        """The worst agreement over the label outputs (or top-1 over class scores)."""
        values = [o.agreement for o in self.outputs if o.kind == "labels" and o.agreement is not None]
        if not values:
            values = [o.agreement for o in self.outputs if o.agreement is not None]
        return min(values) if values else None

    @property
    def max_abs_diff(self) -> float | None:
        values = [o.max_abs_diff for o in self.outputs if o.max_abs_diff is not None]
        return max(values) if values else None

    @property
    def max_scaled_diff(self) -> float | None:
        values = [o.max_scaled_diff for o in self.outputs if o.max_scaled_diff is not None]
        return max(values) if values else None

    def summary(self) -> str:
        parts = []
        if self.label_agreement is not None:
            parts.append(f"label agreement {self.label_agreement:.4f}")
        if self.max_abs_diff is not None:
            parts.append(f"max abs diff {self.max_abs_diff:.3g}")
        return ", ".join(parts) or "no comparable outputs"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "label_agreement": self.label_agreement,
            "max_abs_diff": self.max_abs_diff,
            "max_scaled_diff": self.max_scaled_diff,
            "accuracy_delta": self.accuracy_delta,
            "tolerance": {"max_diff": self.tolerance.max_diff, "min_agreement": self.tolerance.min_agreement},
            "outputs": [o.__dict__ for o in self.outputs],
        }


def is_label(arr: np.ndarray[Any, Any]) -> bool:
    """Integers, strings and booleans are labels; floats are values."""
    return arr.dtype.kind in ("i", "u", "b", "U", "S", "O")


def compare_output(name: str, source: np.ndarray[Any, Any], variant: np.ndarray[Any, Any]) -> OutputCheck:
    """Compare one output of a variant with the same output of the source, row by row."""
    src = np.asarray(source)
    var = np.asarray(variant)
    rows = int(src.shape[0]) if src.ndim else 1
    if is_label(src):
        var = _labels_like(var, src)
        if var.shape[0] != rows:
            return OutputCheck(name, "labels", rows, agreement=0.0)
        equal = _row_equal(src.reshape(rows, -1), var.reshape(rows, -1))
        return OutputCheck(name, "labels", rows, agreement=float(equal.mean()) if rows else 1.0)
    a = src.astype(np.float64).reshape(rows, -1)
    try:
        b = var.astype(np.float64).reshape(rows, -1)
    except (TypeError, ValueError):
        return OutputCheck(name, "values", rows, max_abs_diff=float("inf"), max_scaled_diff=float("inf"))
    if a.shape != b.shape:
        return OutputCheck(name, "values", rows, max_abs_diff=float("inf"), max_scaled_diff=float("inf"))
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = np.abs(a[np.isfinite(a)])
    scaled = diff / max(1.0, float(finite.max()) if finite.size else 1.0)
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1 and src.ndim == 2:
        top1 = float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) if rows else 1.0
    return OutputCheck(
        name, "values", rows,
        agreement=top1,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_scaled_diff=float(scaled.max()) if scaled.size else 0.0,
    )


def compare(source: Arrays, variant: Arrays, tolerance: Tolerance) -> CheckResult:
    """Compare every output the source returns with the variant's output of the same name.

    A source output the variant lacks is a failure: the variant would not
    answer what the source answers. Outputs only the variant has are ignored.
    """
    checks: list[OutputCheck] = []
    failures: list[str] = []
    for name, src in source.items():
        if name not in variant:
            failures.append(f"output '{name}' is missing (the variant returns {', '.join(variant) or 'nothing'})")
            continue
        checks.append(compare_output(name, src, variant[name]))
    failures.extend(judge(checks, tolerance))
    return CheckResult(outputs=tuple(checks), tolerance=tolerance, failures=tuple(failures))


def judge(checks: list[OutputCheck], tolerance: Tolerance) -> list[str]:
    """The reasons, if any, these comparisons fall outside the tolerance."""
    failures = []
    for c in checks:
        if c.kind == "labels" and tolerance.min_agreement is not None and c.agreement is not None \
                and c.agreement < tolerance.min_agreement:
            failures.append(
                f"output '{c.name}': label agreement {c.agreement:.4f} < {tolerance.min_agreement:g} "
                f"over {c.rows} rows"
            )
        if c.kind == "values" and tolerance.max_diff is not None and c.max_scaled_diff is not None \
                and c.max_scaled_diff > tolerance.max_diff:
            failures.append(
                f"output '{c.name}': max difference {c.max_scaled_diff:.3g} (scaled; {c.max_abs_diff:.3g} absolute) "
                f"> tolerance {tolerance.max_diff:g} over {c.rows} rows"
            )
    return failures


def labels_of(outputs: Arrays) -> np.ndarray[Any, Any] | None:
    """The predicted labels among a model's outputs: the first label output, else the argmax of
    the first 2-D float output (class scores or logits); None for a pure regressor."""
    for arr in outputs.values():
        if is_label(arr) and arr.ndim == 1:
            return arr
    for arr in outputs.values():
        if arr.ndim == 2 and arr.shape[1] > 1:
            return np.asarray(arr.argmax(axis=1))
    return None


def accuracy(labels: np.ndarray[Any, Any], truth: np.ndarray[Any, Any]) -> float:
    """Fraction of rows whose label equals the truth (compared as text when the kinds differ)."""
    if len(labels) != len(truth):
        raise InvalidInput(f"{len(labels)} predictions for {len(truth)} target values", field="target")
    if not len(truth):
        return 1.0
    return float(_row_equal(_labels_like(labels, truth).reshape(len(truth), -1), truth.reshape(len(truth), -1)).mean())


def accuracy_delta(source: Arrays, variant: Arrays, truth: np.ndarray[Any, Any] | None) -> float | None:
    """Accuracy of the variant minus accuracy of the source.

    With a ``truth`` column both are measured against it. Without one the
    source's own labels are the truth, so the delta is ``agreement - 1``: the
    share of answers the variant changed. None when the model has no labels.
    """
    src_labels = labels_of(source)
    var_labels = labels_of(variant)
    if src_labels is None or var_labels is None:
        return None
    if truth is None:
        return accuracy(var_labels, src_labels) - 1.0
    return accuracy(var_labels, truth) - accuracy(src_labels, truth)


def _labels_like(arr: np.ndarray[Any, Any], like: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Bring labels to the other side's kind: b'yes' and 'yes', 1 and 1.0 compare equal."""
    if arr.dtype.kind in ("S", "O") or like.dtype.kind in ("U", "S", "O"):
        return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in arr.ravel()], dtype=object) \
            .reshape(arr.shape)
    return arr


def _row_equal(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if a.dtype.kind in ("U", "S", "O") or b.dtype.kind in ("U", "S", "O"):
        a = np.array([str(x.decode() if isinstance(x, bytes) else x) for x in a.ravel()], dtype=object).reshape(a.shape)
        b = np.array([str(x.decode() if isinstance(x, bytes) else x) for x in b.ravel()], dtype=object).reshape(b.shape)
    if a.shape != b.shape:
        return np.zeros(a.shape[0], dtype=bool)
    return np.asarray((a == b).all(axis=1))


# -- writing ------------------------------------------------------------------------


def write_checked(
    dest: Path,
    write: Callable[[Path], None],
    check: Callable[[Path], CheckResult],
    *,
    variant: str,
) -> CheckResult:
    """Write an artifact under a temporary name, check it, and only then move it to ``dest``.

    Args:
        dest: the final file (or folder) path.
        write: writes the artifact to the path it is given.
        check: runs the written artifact against the source.
        variant: the variant's name, for the error message.

    Returns:
        The passing check result.

    Raises:
        CheckFailed: the artifact fell outside the tolerance; nothing is left at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        staged = work / dest.name
        write(staged)
        result = check(staged)
        if not result.passed:
            raise CheckFailed(variant, "; ".join(result.failures))
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(staged, dest)  # atomic on one filesystem: the temp folder is beside dest
        logger.info("wrote %s (%s)", dest, result.summary())
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
