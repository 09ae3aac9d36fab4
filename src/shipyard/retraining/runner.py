"""Carry a run from its trigger to a promoted, rejected or failed candidate.

    queued -> assembling (dataset.assemble) -> training (a separate process, under limits)
        -> registered (the candidate, with lineage) -> gated (signature, holdout, latency)
        -> canary (a rollout the controller steps) -> promoted | rejected
        -> promoted at once (no canary)

Nothing moves the alias but passing every gate: a candidate that fails stays registered
(its run says why, ``rejected``); a crash, a timeout or a memory limit in training is a
``failed`` run with the process's log, and the process that started it carries on.

The gates are the rollout package's pure judgements (``rollout.gates``), with one
difference from ``shipyard alias``: both versions are scored on the run's own holdout, the
newest labelled rows of the window, which neither saw in training. The canary is an
ordinary rollout (``rollout.actions.start``) whose stable arm is the alias; the
rollout controller steps it, and ``reconcile`` reads its outcome into the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import ConfigError, ShipyardError
from shipyard.retraining.dataset import Assembly, assemble, to_arrays
from shipyard.retraining.spec import TRAIN_TAG, RetrainSpec
from shipyard.retraining.store import Run, RunStore

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.registry import ModelVersion, Registry
    from shipyard.rollout.gates import GateReport

__all__ = ["Retrainer", "spec_for"]

logger = logging.getLogger(__name__)

_LOG_TAIL = 16_000  # characters of the training process's output kept in the run's log
_HEARTBEAT = 60.0  # seconds between touches of a run whose training is under way


def spec_for(settings: Settings, model: str) -> RetrainSpec:
    """The ``retraining:`` block of ``model``'s ``models:`` entry (the defaults when there is none)."""
    deployment = settings.deployment(model)
    return RetrainSpec.parse(deployment.retraining if deployment is not None else None)


def _limits(memory_mb: int | None, cpu_seconds: int | None) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        os.setsid()  # its own process group: a timeout kills what it started too
        if memory_mb is not None:
            size = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))

    return apply


class Retrainer:
    """Starts and carries out retraining runs against one registry.

    Args:
        registry: where the versions, aliases, feedback and runs are.
        settings: the prediction log's sink, the home folder (run folders), the registry's URLs.
        clock: epoch seconds (the dataset window, run times); tests pass a simulated one.
        python: the interpreter of the training process.
    """

    def __init__(self, registry: Registry, settings: Settings, *, clock: Callable[[], float] = time.time,
                 python: str = sys.executable) -> None:
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.python = python
        self.store = RunStore(registry.database, clock=clock)
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    # -- starting ---------------------------------------------------------------------------------

    def folder(self, run_id: str) -> Path:
        return self.settings.home / "retraining" / run_id

    def create(self, model: str, spec: RetrainSpec, *, trigger: str = "hand",
               evidence: Mapping[str, Any] | None = None, trigger_key: str | None = None,
               force: bool = False) -> Run:
        """Record a queued run (refused per ``RunStore.create``'s rules); ``execute`` carries it out."""
        self._function(model, spec)  # a model with nothing to train with is refused before a run exists
        return self.store.create(model, trigger=trigger, evidence=evidence, options=spec.to_dict(),
                                 trigger_key=trigger_key, min_interval=spec.min_interval,
                                 force=force or trigger == "hand")

    def _current(self, model: str, spec: RetrainSpec) -> ModelVersion:
        return self.registry.get(f"{model}@{spec.alias}")

    def _function(self, model: str, spec: RetrainSpec) -> str | None:
        if spec.mode == "incremental":
            return spec.train
        if spec.train:
            return spec.train
        tag = self._current(model, spec).tags.get(TRAIN_TAG)
        if not tag:
            raise ConfigError(f"{model}: no training function: set retraining.train (module:function) in its "
                              f"models: entry, pass --train, or register the version with the tag {TRAIN_TAG}")
        from shipyard.retraining.spec import check_function

        return check_function(tag, f"the {TRAIN_TAG} tag")

    def dry_run(self, model: str, spec: RetrainSpec, folder: Path) -> Assembly:
        """Assemble the dataset a run would train on into ``folder``; nothing is trained or recorded."""
        return assemble(self.registry, self.settings, model, spec, folder, now=self.clock(),
                        current=self._current(model, spec))

    # -- carrying out -----------------------------------------------------------------------------

    def execute(self, run: Run, spec: RetrainSpec) -> Run:
        """Carry ``run`` as far as it goes now: a final state, or ``canary`` (``reconcile`` finishes it)."""
        try:
            return self._execute(run, spec)
        except Exception as exc:  # a run ends failed, with its reason; the caller carries on
            if isinstance(exc, ShipyardError):  # a refusal that says why (too few rows, no function)
                logger.warning("retraining run %s of %s failed: %s", run.id, run.model, exc)
                reason = str(exc)
            else:
                logger.exception("retraining run %s of %s failed", run.id, run.model)
                reason = f"{type(exc).__name__}: {exc}"
            return self.store.update(run.id, state="failed", reason=reason, log=f"failed: {reason}")

    def _execute(self, run: Run, spec: RetrainSpec) -> Run:
        current = self._current(run.model, spec)
        function = self._function(run.model, spec)
        run = self.store.update(run.id, state="assembling", parent_version=current.version,
                                log=f"assembling the dataset of {run.model} (parent {current.ref})")
        assembly = assemble(self.registry, self.settings, run.model, spec, self.folder(run.id), now=self.clock(),
                            current=current)
        counts = assembly.manifest["counts"]
        run = self.store.update(run.id, state="training", dataset=assembly.manifest,
                                log=f"dataset: {counts['train']} training rows, {counts['holdout']} holdout rows "
                                    f"({counts['invalid']} failing the signature, {counts['unlabelled']} unlabelled)")
        ok, output, version = self._train(run, spec, function, current, assembly)
        if not ok or version is None:
            return self.store.update(run.id, state="failed", reason=output.splitlines()[-1] if output else "failed",
                                     log=output)
        run = self.store.update(run.id, state="registered", candidate_version=version,
                                log=f"{output}registered {run.model}:{version}")
        report = self.gates(run.model, spec, current.version, version, assembly)
        verdicts = "\n".join(f"gate {r.name}: {'passed' if r.passed else 'FAILED'}: {r.detail}" for r in report.results)
        run = self.store.update(run.id, state="gated", gates=report.to_dict(), log=verdicts)
        if not report.passed:
            return self.store.update(run.id, state="rejected", reason=report.reasons(),
                                     log=f"rejected; {run.model}@{spec.alias} stays on version {current.version}")
        if spec.canary:
            return self._start_canary(run, spec, version)
        return self._promote(run, spec, version, report)

    def _train(self, run: Run, spec: RetrainSpec, function: str | None, current: ModelVersion,
               assembly: Assembly) -> tuple[bool, str, int | None]:
        folder = assembly.folder
        result = folder / "result.json"
        lineage = {"run": run.id, "function": function, "mode": spec.mode,
                   "window": assembly.manifest["window"], "rows": assembly.manifest["counts"]["train"],
                   "fingerprint": assembly.manifest["fingerprint"], "parent": current.ref,
                   "trigger": run.trigger}
        job = {"run": run.id, "model": run.model, "function": function, "mode": spec.mode,
               "current": current.ref, "train": str(assembly.train_path), "holdout": str(assembly.holdout_path),
               "features": assembly.manifest["features"], "label": assembly.manifest["label"],
               "manifest": assembly.manifest, "lineage": lineage, "result": str(result), "cwd": os.getcwd()}
        job_path = folder / "job.json"
        job_path.write_text(json.dumps(job, default=str))
        env = dict(os.environ)
        env.update({"SHIPYARD_HOME": str(self.settings.home),
                    "SHIPYARD_REGISTRY_URL": self.settings.resolved_registry_url,
                    "SHIPYARD_ARTIFACTS": self.settings.resolved_artifacts,
                    "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), *sys.path) if p)})
        env.pop("SHIPYARD_CONFIG", None)  # the worker needs the registry only, not the server's models
        limits = spec.limits
        with tempfile.TemporaryFile() as out:
            if self._stopping:
                return False, "not started: the process that runs it is stopping\n", None
            proc = subprocess.Popen([self.python, "-m", "shipyard.retraining._worker", str(job_path)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_limits(limits.memory_mb, limits.cpu_seconds))  # noqa: PLW1509
            self._procs.add(proc)
            try:
                code, timed_out = self._wait(run, proc, limits.timeout_seconds)
            finally:
                self._procs.discard(proc)
            out.seek(0)
            output = out.read().decode(errors="replace")[-_LOG_TAIL:]
        if self._stopping and code != 0:
            return False, output + "training stopped: the process that ran it (a server) is stopping\n", None
        if timed_out:
            why = f"training timed out after {limits.timeout_seconds:g}s (limits.timeout_seconds)"
            return False, output + why + "\n", None
        if code != 0 or not result.exists():
            why = (f"training was killed by signal {-code}" if code < 0
                   else f"training exited with code {code}")
            if code == -signal.SIGXCPU or code == -signal.SIGKILL and limits.cpu_seconds is not None:
                why += " (limits.cpu_seconds)"
            if "MemoryError" in output and limits.memory_mb is not None:
                why += f" (out of memory: limits.memory_mb is {limits.memory_mb})"
            return False, output + why + "\n", None
        return True, output, int(json.loads(result.read_text())["version"])

    def _wait(self, run: Run, proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bool]:
        """Wait for the training process, touching the run now and then (a live run is never taken as
        abandoned); kill its process group at ``timeout``. Returns (exit code, timed out)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return proc.wait(max(0.0, min(left, _HEARTBEAT))), False
            except subprocess.TimeoutExpired:
                if left <= _HEARTBEAT:
                    os.killpg(proc.pid, signal.SIGKILL)
                    return proc.wait(), True
                self.store.update(run.id)

    def stop(self) -> None:
        """Kill the training processes in flight (their runs fail, saying so); start no more."""
        self._stopping = True
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    # -- gates ------------------------------------------------------------------------------------

    def gates(self, model: str, spec: RetrainSpec, champion: int, candidate: int, assembly: Assembly) -> GateReport:
        """Signature, holdout (both versions on the run's holdout) and latency; nothing moves."""
        import pyarrow.parquet as pq

        from shipyard.rollout.gates import (
            GateReport,
            GateResult,
            _run_latency,
            holdout_gate,
            label_output,
            metric_for,
            score,
            signature_gate,
        )

        current = self.registry.store.get_version(model, champion)
        cand = self.registry.store.get_version(model, candidate)
        table = pq.read_table(assembly.holdout_path)
        inputs = to_arrays(table, assembly.manifest["features"])
        labels = np.asarray(table.column(assembly.manifest["label"]).to_pylist())
        loaded: dict[int, Any] = {}

        def load(mv: ModelVersion) -> Any:
            if mv.version not in loaded:
                loaded[mv.version] = self.registry.load(mv)
            return loaded[mv.version]

        source = f"the run's {len(labels)}-row holdout (the newest labelled rows)"
        try:
            sig = signature_gate(current.signature, cand.signature, current_ref=f"{model}@{spec.alias} ({current.ref})")
            metric = metric_for(current.signature)
            scores: dict[int, float] = {}
            holdout: GateResult | None = None
            for mv in (current, cand):
                output = label_output(mv.signature)
                if output is None:
                    holdout = GateResult("holdout", False, f"{mv.ref} has no output with one value per row to score")
                    break
                try:
                    scores[mv.version] = score(metric, load(mv).predict_arrays(inputs)[output], labels)
                except ShipyardError as exc:
                    holdout = GateResult("holdout", False, f"{mv.ref} could not be scored on {source}: {exc}")
                    break
            if holdout is None:
                holdout = holdout_gate(metric, scores[champion], scores[candidate], spec.accuracy_margin, source=source)
            latency = _run_latency(self.registry, load, cand, spec.latency_budget_ms, 7, time.perf_counter)
        finally:
            for m in loaded.values():
                m.close()
        return GateReport(model, spec.alias, candidate, champion, (sig, holdout, latency))

    # -- promotion --------------------------------------------------------------------------------

    def _promote(self, run: Run, spec: RetrainSpec, version: int, report: GateReport) -> Run:
        from shipyard.rollout.gates import log_outcome

        log_outcome(report, actor=f"retrain:{run.id}", forced=False)
        before = self.registry.aliases(run.model).get(spec.alias)
        self.registry.set_alias(run.model, spec.alias, version, actor=f"retrain:{run.id}",
                                note=f"retraining run {run.id}: {report.note(forced=False)}")
        return self.store.update(run.id, state="promoted",
                                 log=f"promoted: {run.model}@{spec.alias} moved from version {before} to {version}")

    def _start_canary(self, run: Run, spec: RetrainSpec, version: int) -> Run:
        from shipyard.rollout import actions
        from shipyard.rollout.policy import TrafficPolicy
        from shipyard.rollout.store import TrafficStore

        plan = {"stable": "stable", "candidate": "candidate", **dict(spec.canary_plan)}
        policy = TrafficPolicy.from_dict({
            "model": run.model, "kind": "canary",
            "arms": [{"name": "stable", "alias": spec.alias, "weight": 1.0},
                     {"name": "candidate", "version": version, "weight": 0.0}],
            "canary": plan})
        stored = actions.start(TrafficStore(self.registry.database), self.registry, policy,
                               actor=f"retrain:{run.id}", reason=f"canary of retraining run {run.id}")
        return self.store.update(run.id, state="canary", evidence={**run.evidence, "rollout_revision": stored.revision},
                                 log=f"canary started: {run.model}:{version} against {run.model}@{spec.alias} "
                                     f"(rollout revision {stored.revision}; the server's rollout controller steps it)")

    def reconcile(self, run: Run) -> Run:
        """Read the outcome of a run's canary: promoted, rejected (rolled back or aborted), or still running."""
        if run.state != "canary":
            return run
        from shipyard.rollout.store import TrafficStore

        policy = TrafficStore(self.registry.database).get(run.model)
        revision = run.evidence.get("rollout_revision")
        if policy is None:
            return self.store.update(run.id, state="rejected", reason="the canary's rollout was deleted")
        if policy.revision == revision or policy.state in ("running", "paused"):
            return run
        candidate = next((a for a in policy.arms if a.name == "candidate"), None)
        if candidate is None or candidate.target != str(run.candidate_version):
            return self.store.update(run.id, state="rejected", reason="the canary's rollout was replaced")
        if policy.state == "promoted":
            return self.store.update(run.id, state="promoted", log=f"canary promoted: {policy.reason}")
        return self.store.update(run.id, state="rejected", reason=f"canary {policy.state}: {policy.reason}",
                                 log=f"canary {policy.state}: {policy.reason}")

    def wait(self, run: Run, *, poll: float = 1.0, timeout: float | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Run:
        """Reconcile ``run`` until it is final (or ``timeout`` seconds of polling pass)."""
        waited = 0.0
        while not run.final and (timeout is None or waited < timeout):
            sleep(poll)
            waited += poll
            run = self.reconcile(self.store.get(run.id))
        return run
