"""The training process of a run: ``python -m shipyard.retraining._worker JOB.json``.

It runs apart from the server (or the CLI) that started it, under the run's memory and
CPU limits (set by the parent before it starts); whatever it does (raise, exhaust its
memory, hang) ends this process only. It:

1. imports the training function (``module:function``) from the working directory;
2. loads the version the alias points at, for warm starts;
3. calls the function with a ``TrainingData`` (or, in ``incremental`` mode, runs
   ``partial_fit`` on a copy of the current model);
4. registers what it returns as the next version, with the run's lineage and the
   holdout rows, and writes ``{"version": N}`` to the job's result file.

Its stdout and stderr are the run's log.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrainingData", "function_digest", "import_function"]


@dataclass
class TrainingData:
    """What a training function gets.

    Attributes:
        table: the training rows (``pyarrow.Table``): one column per input, and the label.
        features: the input names, in the signature's order.
        label: the label column's name.
        model: the current version's model object (for warm starts), or None if it cannot be loaded.
        metadata: the current version's ref, version, tags, metrics, lineage and signature.
        manifest: the dataset's manifest (window, counts, fingerprint).
    """

    table: Any
    features: list[str]
    label: str
    model: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        return self.table.to_pandas()

    @property
    def X(self) -> np.ndarray[Any, Any]:  # noqa: N802 - the usual name of a feature matrix
        """The features as one 2-D array: scalar inputs side by side, or a single array input as it is."""
        arrays = [np.asarray(self.table.column(n).to_pylist()) for n in self.features]
        if len(arrays) == 1 and arrays[0].ndim > 1:
            return arrays[0]
        return np.column_stack([a.reshape(len(a), -1) for a in arrays])

    @property
    def y(self) -> np.ndarray[Any, Any]:
        """The labels."""
        return np.asarray(self.table.column(self.label).to_pylist())

    @property
    def inputs(self) -> dict[str, np.ndarray[Any, Any]]:
        """The features as the model's named inputs."""
        return {n: np.asarray(self.table.column(n).to_pylist()) for n in self.features}


def import_function(ref: str) -> Any:
    """The callable ``module:attr.attr`` names (ImportError/AttributeError as Python raises them)."""
    module_name, _, attrs = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    if not callable(obj):
        raise TypeError(f"{ref} is not callable")
    return obj


def function_digest(fn: Any) -> str:
    """sha256 of the source file that defines ``fn`` (its whole module: helpers count too)."""
    try:
        path = inspect.getsourcefile(fn)
        data = Path(path).read_bytes() if path else inspect.getsource(fn).encode()
    except (OSError, TypeError):
        return ""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _sample(data: TrainingData, rows: int = 5) -> Any:
    head = data.table.slice(0, rows)
    if all(not str(head.schema.field(n).type).startswith(("list", "large_list", "fixed_size_list"))
           for n in data.features):
        return head.select(data.features).to_pandas()
    return {n: np.asarray(head.column(n).to_pylist()) for n in data.features}


def _incremental(current: Any, data: TrainingData) -> Any:
    if current is None or not hasattr(current, "partial_fit"):
        raise TypeError("mode incremental needs a current model with partial_fit "
                        f"({type(current).__name__} has none); use mode full")
    model = copy.deepcopy(current)
    # a model fitted on named columns is updated on named columns (scikit-learn checks the names)
    x = data.frame()[data.features] if hasattr(model, "feature_names_in_") else data.X
    classes = getattr(model, "classes_", None)
    if classes is not None:
        model.partial_fit(x, data.y, classes=classes)
    else:
        model.partial_fit(x, data.y)
    return model


def main(job_path: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    log = logging.getLogger("shipyard.retraining.worker")
    job = json.loads(Path(job_path).read_text())
    sys.path.insert(0, job["cwd"])

    import pyarrow.parquet as pq

    from shipyard.config import Settings
    from shipyard.registry import Registry

    registry = Registry.from_settings(Settings.from_env())
    try:
        current_mv = registry.get(job["current"])
        model: Any = None
        try:
            loaded = registry.load(current_mv)
            model = getattr(loaded.runtime, "model", None)
        except Exception as exc:  # a warm start is a help, not a need
            log.warning("the current version %s could not be loaded for a warm start: %s", current_mv.ref, exc)
        data = TrainingData(
            table=pq.read_table(job["train"]), features=list(job["features"]), label=job["label"], model=model,
            metadata={"ref": current_mv.ref, "version": current_mv.version, "tags": dict(current_mv.tags),
                      "metrics": dict(current_mv.metrics), "lineage": dict(current_mv.lineage),
                      "signature": current_mv.signature.to_dict()},
            manifest=job["manifest"])
        log.info("training %s on %d rows (%s mode, function %s)", job["model"], data.table.num_rows, job["mode"],
                 job["function"] or "partial_fit")
        digest = ""
        if job["mode"] == "incremental":
            trained = _incremental(model, data)
        else:
            fn = import_function(job["function"])
            digest = function_digest(fn)
            trained = fn(data)
        if trained is None:
            raise TypeError(f"{job['function']} returned None; a training function returns the trained model")
        holdout = pq.read_table(job["holdout"])
        holdout_inputs = {n: np.asarray(holdout.column(n).to_pylist()) for n in data.features}
        holdout_labels = np.asarray(holdout.column(data.label).to_pylist())
        lineage = dict(job["lineage"], code_digest=digest)
        tags = {**{k: v for k, v in current_mv.tags.items() if k in ("train", "latency_budget_ms")},
                "retrain_run": job["run"]}
        if job["function"]:
            tags["train"] = job["function"]
        mv = registry.register(trained, job["model"], sample=_sample(data), training_data=data.frame(),
                               parent=current_mv.ref, tags=tags, holdout=(holdout_inputs, holdout_labels),
                               description=f"retrained by run {job['run']}", retraining=lineage,
                               if_identical="new", trust_pickle=False)
        log.info("registered %s", mv.ref)
        Path(job["result"]).write_text(json.dumps({"version": mv.version, "code_digest": digest}))
        return 0
    finally:
        registry.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
