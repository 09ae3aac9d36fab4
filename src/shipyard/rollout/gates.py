"""Promotion gates: what a version must pass before an alias moves to it.

Three gates run before ``shipyard alias NAME ALIAS VERSION``, ``shipyard rollout
promote`` or a canary step points an alias at a candidate version:

* ``signature``: the candidate accepts every request the alias's current version
  accepts (the same input names, each datatype the same or one that widens to
  the candidate's without loss per ``signature.WIDENS_TO``, shapes that fit,
  NaN where NaN was allowed, no new inputs, which every caller would have to
  start sending) and returns every output the current version returns (by name).
* ``holdout``: scored on one labelled holdout set (the current version's, else the
  candidate's; a retrained candidate's first, since it holds the newest labelled rows of its
  run's window; see ``Registry.holdout``), the candidate is at least the champion
  minus ``margin`` (accuracy), or at most the champion plus ``margin`` (MAE, RMSE).
* ``latency``: the median of several timed predictions of the candidate on its
  stored input sample (the registration's first rows, as one batch) is within
  the budget: the ``latency_budget_ms`` argument, else the candidate's
  ``latency_budget_ms`` tag.

A gate that has nothing to work with (no current version, no holdout set, no
budget) passes and says why it was skipped. The judgements (``signature_gate``,
``score``, ``holdout_gate``, ``latency_gate``) are pure functions over plain
values; ``promotion_gates`` loads the versions from the registry, predicts and
times them (with an injectable clock), and calls them.

``Registry.set_alias`` itself stays gate-free, on purpose: it is the mechanism
(one atomic, audited row), used also by rollback, by ``register(alias=...)`` and
by the rollout controller stepping a canary that already passed its gates.
Running models inside it would make every alias write load and predict two
versions, and a registry that cannot load a model (a server-less admin host,
an emergency rollback) could not move its aliases. The callers that promote
(the CLI, ``shipyard rollout promote``, the canary controller) call
``promotion_gates`` explicitly, refuse on failure unless forced, and record the
outcome with ``log_outcome``.

Metrics are computed with NumPy (scikit-learn is an extra): ``accuracy`` (share
of exact label matches) for classifiers, whose label output holds integers,
booleans or strings; ``mae`` (mean absolute error) and ``rmse`` (root mean
squared error) for regressors, whose label output holds floats.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import InvalidInput, ShipyardError
from shipyard.signature import WIDENS_TO, Signature, TensorSpec

if TYPE_CHECKING:
    from shipyard.registry import ModelVersion, Registry
    from shipyard.registry.loaded import LoadedModel

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]

HIGHER_IS_BETTER: Mapping[str, bool] = {"accuracy": True, "mae": False, "rmse": False}
"""The metrics the holdout gate knows, and which way is better for each."""
METRICS = tuple(HIGHER_IS_BETTER)
LATENCY_TAG = "latency_budget_ms"
"""The version tag that declares a latency budget when none is passed."""
LATENCY_RUNS = 7
"""Timed predictions whose median is compared with the budget (after one untimed warm-up)."""


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate."""

    name: str
    """``signature``, ``holdout`` or ``latency``."""
    passed: bool
    detail: str
    """Why it passed or failed, with the numbers compared; for a skipped gate, why it was skipped."""
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped, "detail": self.detail}


@dataclass(frozen=True)
class GateReport:
    """Every gate's outcome for moving ``name@alias`` from ``current`` to ``candidate``."""

    name: str
    alias: str
    candidate: int
    current: int | None
    """The version the alias points at now; None when the alias does not exist yet."""
    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def note(self, *, forced: bool) -> str:
        """What the alias history keeps of this report: ``gates passed``, or which failed and that it was forced."""
        if self.passed:
            return "gates passed"
        failed = ", ".join(r.name for r in self.failures)
        return f"gates failed ({failed}){'; forced' if forced else ''}: " + self.reasons().replace("\n", "; ")

    def reasons(self) -> str:
        """The failed gates' reasons on one line each (empty when every gate passed)."""
        return "\n".join(f"{r.name}: {r.detail}" for r in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "candidate": self.candidate,
            "current": self.current,
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
        }


def _skip(name: str, why: str) -> GateResult:
    return GateResult(name, True, f"skipped: {why}", skipped=True)


# -- signature ------------------------------------------------------------------------------


def accepts(current: TensorSpec, candidate: TensorSpec) -> str | None:
    """Why a candidate input cannot take what callers send to ``current``; None when it can."""
    if current.datatype != candidate.datatype and current.datatype not in WIDENS_TO.get(candidate.datatype, ()):
        return f"input '{current.name}' changes from {current.datatype} to {candidate.datatype}, which does not widen"
    if len(current.shape) != len(candidate.shape) or any(
        c != -1 and c != k for c, k in zip(candidate.shape, current.shape, strict=True)
    ):
        return f"input '{current.name}' changes shape from {list(current.shape)} to {list(candidate.shape)}"
    if current.allow_nan and not candidate.allow_nan:
        return f"input '{current.name}' accepted NaN and the candidate refuses it"
    return None


def signature_gate(
    current: Signature | None, candidate: Signature, *, current_ref: str = "the current version"
) -> GateResult:
    """Whether ``candidate`` takes every request ``current`` takes and returns the outputs it returns.

    Args:
        current: the signature of the version the alias points at; None when there is none.
        candidate: the signature of the version the alias would move to.
        current_ref: how the messages name the current version.
    """
    if current is None:
        return _skip("signature", "nothing to replace")
    problems: list[str] = []
    if current.format != candidate.format:
        problems.append(f"input format changes from {current.format} to {candidate.format}")
    for spec in current.inputs:
        theirs = candidate.input(spec.name)
        if theirs is None:
            problems.append(f"input '{spec.name}', which callers of {current_ref} send, is missing")
            continue
        why = accepts(spec, theirs)
        if why is not None:
            problems.append(why)
    new = [s.name for s in candidate.inputs if current.input(s.name) is None]
    problems += [f"new required input '{n}', which callers of {current_ref} do not send" for n in new]
    # versions recorded without outputs cannot say what callers read
    outputs = {s.name for s in candidate.outputs}
    problems += [f"output '{s.name}' of {current_ref} is missing" for s in current.outputs if s.name not in outputs]
    if problems:
        return GateResult("signature", False, "; ".join(problems))
    return GateResult("signature", True, f"accepts every input of {current_ref} and returns its outputs")


# -- holdout --------------------------------------------------------------------------------


def label_output(signature: Signature) -> str | None:
    """The output scored against labels: the first one with one value per row; None if none has."""
    for spec in signature.outputs:
        if len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1):
            return spec.name
    return None


def metric_for(signature: Signature) -> str:
    """``mae`` when the label output holds floats (a regressor), else ``accuracy`` (a classifier)."""
    out = label_output(signature)
    spec = next((s for s in signature.outputs if s.name == out), None)
    return "mae" if spec is not None and spec.datatype.startswith("FP") else "accuracy"


def score(metric: str, predictions: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    """``metric`` of ``predictions`` against ``labels`` (one per row).

    Raises:
        InvalidInput: an unknown metric, a row count that differs, or labels that are not
            numbers for an error metric.
    """
    if metric not in HIGHER_IS_BETTER:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric",
                           expected=list(METRICS), got=metric)
    pred = np.asarray(predictions)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred.reshape(-1)
    y = np.asarray(labels)
    if pred.shape != y.shape:
        raise InvalidInput(f"{pred.shape[0] if pred.ndim else 1} predictions for {len(y)} labels", field="labels")
    if metric == "accuracy":
        if pred.dtype.kind in "OUS" or y.dtype.kind in "OUS":
            pred, y = pred.astype(object), y.astype(object)
        return float(np.mean(pred == y))
    try:
        error = pred.astype(np.float64) - y.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{metric} needs numeric predictions and labels", field="labels") from None
    if metric == "mae":
        return float(np.mean(np.abs(error)))
    return float(np.sqrt(np.mean(np.square(error))))


def holdout_gate(metric: str, champion: float, candidate: float, margin: float, *, source: str) -> GateResult:
    """Candidate at least ``champion - margin`` (or at most ``champion + margin`` for errors).

    Args:
        metric: one of ``METRICS``.
        champion, candidate: the two scores on the same rows.
        margin: how much worse the candidate may be, in the metric's own units.
        source: which rows they were scored on, for the message.
    """
    higher = HIGHER_IS_BETTER[metric]
    limit = champion - margin if higher else champion + margin
    ok = candidate >= limit if higher else candidate <= limit
    sign, cmp = ("-", ">=" if ok else "<") if higher else ("+", "<=" if ok else ">")
    return GateResult(
        "holdout", bool(ok),
        f"{metric} on {source}: candidate {candidate:.4g} {cmp} champion {champion:.4g} {sign} margin {margin:g}",
    )


# -- latency --------------------------------------------------------------------------------


def latency_gate(durations_ms: Sequence[float], budget_ms: float, *, source: str) -> GateResult:
    """The median of ``durations_ms`` (one per timed prediction of the same batch) within ``budget_ms``."""
    median = float(np.median(np.asarray(durations_ms, dtype=np.float64)))
    ok = median <= budget_ms
    return GateResult(
        "latency", ok,
        f"median {median:.3g} ms over {len(durations_ms)} runs on {source} "
        f"{'within' if ok else 'over'} the budget of {budget_ms:g} ms",
    )


def _budget(given: float | None, mv: ModelVersion) -> tuple[float | None, str | None]:
    """The budget to hold the candidate to and, when it cannot be read, why."""
    if given is not None:
        return float(given), None
    tag = mv.tags.get(LATENCY_TAG)
    if tag is None:
        return None, None
    try:
        value = float(tag)
    except ValueError:
        return None, f"tag {LATENCY_TAG}={tag!r} of {mv.ref} is not a number"
    if not math.isfinite(value) or value <= 0:
        return None, f"tag {LATENCY_TAG}={tag!r} of {mv.ref} is not a positive number"
    return value, None


# -- running them -----------------------------------------------------------------------------


def promotion_gates(
    registry: Registry,
    name: str,
    target_alias: str,
    candidate_version: int,
    *,
    accuracy_margin: float = 0.01,
    latency_budget_ms: float | None = None,
    metric: str | None = None,
    latency_runs: int = LATENCY_RUNS,
    clock: Callable[[], float] = time.perf_counter,
) -> GateReport:
    """Run every gate for pointing ``name@target_alias`` at ``candidate_version``.

    Nothing moves: the caller moves the alias (``Registry.set_alias``) when the report
    passed or the move is forced, and records the outcome with ``log_outcome``.

    Args:
        registry: where the versions, their holdout sets and samples are.
        name: the model.
        target_alias: the alias that would move; its current version is the champion.
        candidate_version: the version it would point at.
        accuracy_margin: how much worse than the champion the candidate may score on the
            holdout, in the metric's units (0.01 = one accuracy point, or 0.01 more MAE).
        latency_budget_ms: the most the candidate's median prediction on its stored sample
            may take; defaults to its ``latency_budget_ms`` tag; no budget skips the gate.
        metric: ``accuracy``, ``mae`` or ``rmse``; by default chosen from the label
            output's datatype (``metric_for``).
        latency_runs: timed predictions (after one warm-up) whose median is compared.
        clock: seconds from a monotonic clock (tests pass a fake one).

    Returns:
        The report; ``report.passed`` says whether the move may go ahead.

    Raises:
        ModelNotFound: no such model or candidate version.
        InvalidInput: an unknown metric, a negative margin, or fewer than one run.
    """
    if metric is not None and metric not in HIGHER_IS_BETTER:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric",
                           expected=list(METRICS), got=metric)
    if not (math.isfinite(accuracy_margin) and accuracy_margin >= 0):
        raise InvalidInput(f"accuracy_margin must be a number >= 0, got {accuracy_margin}", field="accuracy_margin")
    if latency_runs < 1:
        raise InvalidInput(f"latency_runs must be at least 1, got {latency_runs}", field="latency_runs")
    candidate = registry.store.get_version(name, candidate_version)
    current_version = registry.aliases(name).get(target_alias)
    current = None if current_version is None else registry.store.get_version(name, current_version)
    loaded: dict[int, LoadedModel] = {}

    def load(mv: ModelVersion) -> LoadedModel:
        if mv.version not in loaded:
            loaded[mv.version] = registry.load(mv)
        return loaded[mv.version]

    if current is None:
        signature = signature_gate(None, candidate.signature)
    else:
        signature = signature_gate(current.signature, candidate.signature,
                                   current_ref=f"{name}@{target_alias} ({current.ref})")
    try:
        results = (
            signature,
            _run_holdout(registry, load, current, candidate, metric, accuracy_margin),
            _run_latency(registry, load, candidate, latency_budget_ms, latency_runs, clock),
        )
    finally:
        for model in loaded.values():
            model.close()
    return GateReport(name, target_alias, candidate.version, current_version, results)


def _run_holdout(
    registry: Registry, load: Callable[[ModelVersion], LoadedModel], current: ModelVersion | None,
    candidate: ModelVersion, metric: str | None, margin: float,
) -> GateResult:
    if current is None:
        return _skip("holdout", "no current version to compare with")
    # a retrained candidate carries its run's holdout, the newest labelled rows: the window both are judged on
    first, second = (candidate, current) if "retraining" in candidate.lineage else (current, candidate)
    owner, rows = first, registry.holdout(first)
    if rows is None:
        owner, rows = second, registry.holdout(second)
    if rows is None:
        return _skip("holdout", f"neither {current.ref} nor {candidate.ref} was registered with a holdout set")
    inputs, labels = rows
    source = f"the {len(labels)}-row holdout of {owner.ref}"
    chosen = metric or metric_for(current.signature)
    scores: dict[int, float] = {}
    for mv in (current, candidate):
        output = label_output(mv.signature)
        if output is None:
            return GateResult("holdout", False, f"{mv.ref} has no output with one value per row to score")
        try:
            predictions = load(mv).predict_arrays(inputs)[output]
            scores[mv.version] = score(chosen, predictions, labels)
        except ShipyardError as exc:
            return GateResult("holdout", False, f"{mv.ref} could not be scored on {source}: {exc}")
    return holdout_gate(chosen, scores[current.version], scores[candidate.version], margin, source=source)


def _run_latency(
    registry: Registry, load: Callable[[ModelVersion], LoadedModel], candidate: ModelVersion,
    budget_ms: float | None, runs: int, clock: Callable[[], float],
) -> GateResult:
    budget, bad = _budget(budget_ms, candidate)
    if bad is not None:
        return GateResult("latency", False, bad)
    if budget is None:
        return _skip("latency", f"no budget given and {candidate.ref} declares none (tag {LATENCY_TAG})")
    batch, what = _stored_batch(registry, candidate)
    if batch is None:
        return _skip("latency", f"{candidate.ref} has no stored input sample to time")
    try:
        model = load(candidate)
        model.predict_arrays(batch)  # warm-up: first calls pay for lazy set-up a server pays once
        durations = []
        for _ in range(runs):
            start = clock()
            model.predict_arrays(batch)
            durations.append((clock() - start) * 1000.0)
    except ShipyardError as exc:
        return GateResult("latency", False, f"{candidate.ref} failed on {what}: {exc}")
    return latency_gate(durations, budget, source=what)


def _stored_batch(registry: Registry, mv: ModelVersion) -> tuple[Arrays | None, str]:
    """The input example (a request-sized batch) when there is one, else the check set."""
    raw = registry.input_example(mv)
    if raw is not None:
        arrays = {k: np.asarray(v) for k, v in raw.items()}
        if list(arrays) == ["input"] and len(mv.signature.inputs) == 1:
            arrays = {mv.signature.inputs[0].name: arrays["input"]}
        rows = len(next(iter(arrays.values()))) if arrays else 0
        return arrays, f"the {rows}-row input example of {mv.ref}"
    check = registry.check_set(mv)
    if check is None:
        return None, ""
    return check.inputs, f"the {check.rows}-row check set of {mv.ref}"


# -- the record --------------------------------------------------------------------------------


def log_outcome(report: GateReport, *, actor: str | None, forced: bool) -> None:
    """Record who moved (or tried to move) an alias, which gates failed and whether it was forced.

    A passed report logs at INFO; a failed one at WARNING, whether the move was refused
    (``forced=false``) or went ahead anyway (``forced=true``).
    """
    target = f"{report.name}@{report.alias}"
    if report.passed:
        logger.info("promotion gates passed: %s -> version %d (was %s), actor=%s",
                    target, report.candidate, report.current, actor)
        return
    failed = ",".join(r.name for r in report.failures)
    logger.warning(
        "promotion gates failed (%s): %s -> version %d (was %s) %s, actor=%s forced=%s: %s",
        failed, target, report.candidate, report.current, "moved anyway" if forced else "refused",
        actor, "true" if forced else "false", report.reasons().replace("\n", "; "),
    )
