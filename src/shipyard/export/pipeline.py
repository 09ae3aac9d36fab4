"""From a registered version to checked, measured edge variants, optionally registered back.

``export_version`` is what ``shipyard export`` calls:

1. load the source version and its framework object (``onnx.open_source``);
2. build the check rows: the check set stored with the version (up to 1,000
   rows; its input example for versions registered before check sets), plus
   the user's data file (and its target column, when named). Fewer than 100
   rows in all are reported with the reason (``checked on 37 rows: ...``);
3. export the base ONNX graph (``to="tflite"``: the float32 TFLite model of a
   TensorFlow source); check it against the source (lossless tolerance) and
   write it, or stop: every other variant derives from it;
4. make each requested variant (quantized from the base graph, pruned from the
   source model, compiled from the base graph; ``xla`` from the TensorFlow
   source), check it against the *source*,
   and write it only if it passed (``check.write_checked``);
5. measure size, compressed size and latency at batch 1 and 1000 for the
   source and every variant;
6. register each passing variant as a new version whose parent is the source,
   with the transformation and check results as tags and metrics.

A variant that cannot be made or fails its check is reported with its reason
and leaves no file; ``ExportReport.raise_for_failures`` turns that into an error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard._extras import require
from shipyard.errors import CheckFailed, ExportError, InvalidInput, NotExportable, ShipyardError
from shipyard.export import check as checks
from shipyard.export import compile as compiling
from shipyard.export import litert, measure
from shipyard.export import prune as pruning
from shipyard.export import quantize as quantizing
from shipyard.export.onnx import Source, convert, open_source
from shipyard.registry import Registry, checkset
from shipyard.registry.loaded import LoadedModel
from shipyard.registry.model import ModelVersion
from shipyard.runtime.onnx import OnnxRuntime
from shipyard.runtime.tensorflow import SAVED_MODEL_FILE
from shipyard.signature import sample_to_arrays
from shipyard.types import DATATYPE_TO_NUMPY

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]
BASE_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
XLA_DIR = "model.xla"
TARGETS = ("onnx", "tflite")
#: What each --quantize method is called for each target, and the tolerance kind it gets.
QUANTIZE = {"onnx": {"dynamic": "dynamic", "static": "static", "fp16": "fp16"},
            "tflite": {"dynamic": "dynamic", "int8": "static", "fp16": "fp16"}}
COMPILE = {"onnx": ("ort", "openvino", "xla"), "tflite": ("xla",)}


@dataclass(frozen=True)
class ExportOptions:
    """What ``shipyard export`` was asked to make. Validated at construction."""

    opset: int | None = None
    """ONNX opset to target; each converter's default when None."""
    quantize: tuple[str, ...] = ()
    """ONNX: any of ``dynamic``, ``static``, ``fp16``; TFLite: ``dynamic``, ``int8``, ``fp16``. One variant each."""
    prune: tuple[pruning.PruneSpec, ...] = ()
    """One pruned variant per spec (ONNX only)."""
    compile: tuple[str, ...] = ()
    """ONNX: any of ``ort``, ``openvino``, ``xla``; TFLite: ``xla``. One compiled variant each."""
    check_data: Any = None
    """Extra check rows (DataFrame, records, columns) beside the version's stored check set."""
    target: str | None = None
    """Column of ``check_data`` holding the true labels, for accuracy and the tree curve."""
    tolerance: float | None = None
    """Max scaled difference for float outputs; each transformation's default when None."""
    min_agreement: float | None = None
    """Min label agreement (0..1); each transformation's default when None."""
    register: str | None = None
    """Register every passing variant as a new version of this model name."""
    latency_budget_s: float = 1.0
    """Seconds to spend timing each batch size of each variant."""
    to: str = "onnx"
    """The base format: ``onnx`` (every flavor with a converter) or ``tflite`` (TensorFlow sources)."""

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise InvalidInput(f"unknown --to '{self.to}'; use {', '.join(TARGETS)}", field="to")
        methods = QUANTIZE[self.to]
        bad = [q for q in self.quantize if q not in methods]
        if bad:
            raise InvalidInput(f"--quantize '{bad[0]}' is not a method for --to {self.to}; use {', '.join(methods)}",
                               field="quantize")
        bad = [c for c in self.compile if c not in COMPILE[self.to]]
        if bad:
            raise InvalidInput(f"--compile '{bad[0]}' is not a target for --to {self.to}; "
                               f"use {', '.join(COMPILE[self.to])}", field="compile")
        if self.prune and self.to != "onnx":
            raise InvalidInput(f"--prune makes ONNX variants; it does not apply to --to {self.to}", field="prune")
        if self.opset is not None and not 7 <= self.opset <= 30:
            raise InvalidInput(f"--opset {self.opset} is outside 7..30", field="opset")
        if self.target is not None and self.check_data is None:
            raise InvalidInput("--target names a column of --check-data; give the file too", field="target")
        # fail on bad numbers now, not after minutes of exporting
        checks.Tolerance(self.tolerance, self.min_agreement)


@dataclass
class VariantReport:
    """One row of the export table."""

    name: str
    """``source``, ``onnx``, ``quantize:dynamic``, ``prune:trees:10``, ``compile:ort`` ..."""
    path: Path | None = None
    check: checks.CheckResult | None = None
    size_bytes: int | None = None
    compressed_bytes: int | None = None
    timing: measure.Timing | None = None
    error: str | None = None
    registered: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def accuracy_delta(self) -> float | None:
        return self.check.accuracy_delta if self.check else (0.0 if self.name == "source" else None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "check": self.check.to_dict() if self.check else None,
            "size_bytes": self.size_bytes,
            "compressed_bytes": self.compressed_bytes,
            "latency_batch1_ms": self.timing.batch1_ms if self.timing else None,
            "latency_batch1000_ms": self.timing.batch1000_ms if self.timing else None,
            "accuracy_delta": self.accuracy_delta,
            "error": self.error,
            "registered": self.registered,
            "notes": self.notes,
        }


@dataclass
class ExportReport:
    """The source and every variant, in the order they were made."""

    source: str
    rows: int
    """How many check rows every variant was compared on."""
    variants: list[VariantReport]
    note: str | None = None
    """Why there were fewer than 100 check rows; None when there were enough."""

    def checked_on(self) -> str:
        """``checked on 500 rows``, or ``checked on 37 rows: the sample had only 37``."""
        return checkset.checked_on(self.rows, self.note)

    @property
    def failed(self) -> list[VariantReport]:
        return [v for v in self.variants if not v.ok]

    def raise_for_failures(self) -> None:
        """Raise ``ExportError`` naming every variant that was not written."""
        if self.failed:
            raise ExportError(
                f"{len(self.failed)} of {len(self.variants) - 1} variants were not written: "
                + "; ".join(f"{v.name}: {v.error}" for v in self.failed)
            )


# -- check rows ---------------------------------------------------------------------------


@dataclass
class CheckRows:
    """The rows every variant is compared on, already in the source's signature."""

    inputs: Arrays
    truth: np.ndarray[Any, Any] | None = None
    """True labels of the last ``len(truth)`` rows, from the user's target column."""
    note: str | None = None
    """Why there are fewer than 100 rows; None when there are enough."""

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def checked_on(self) -> str:
        return checkset.checked_on(self.rows, self.note)

    def labelled(self) -> Arrays:
        n = 0 if self.truth is None else len(self.truth)
        return {k: v[self.rows - n:] for k, v in self.inputs.items()}


def check_rows(registry: Registry, mv: ModelVersion, data: Any = None, target: str | None = None) -> CheckRows:
    """The version's check set plus ``data``, validated by the version's signature."""
    parts: list[Arrays] = []
    stored = registry.check_set(mv)
    if stored is not None:
        parts.append(stored.inputs)
    truth = None
    if data is not None:
        arrays, _ = sample_to_arrays(data)
        if target is not None:
            if target not in arrays:
                raise InvalidInput(f"--target '{target}' is not a column of the check data ({', '.join(arrays)})",
                                   field="target")
            truth = np.asarray(arrays.pop(target))
        parts.append(mv.signature.validate(_named(mv, arrays)))
    if not parts:
        raise InvalidInput(
            f"{mv.ref} was registered without a sample, so there is nothing to check an export on: "
            "pass --check-data FILE with a few rows of real input",
            field="check_data",
        )
    inputs = {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
    rows = checkset.rows_of(inputs)
    note = None
    if rows < checkset.MIN_ROWS:
        own = stored.note if stored is not None else f"{mv.ref} keeps no check set"
        note = own if data is None else f"{own}, and --check-data added {checkset.rows_of(parts[-1])}"
    return CheckRows(inputs, truth, note)


def _named(mv: ModelVersion, arrays: Arrays) -> Arrays:
    return checkset.named(mv.signature, arrays)


# -- the pipeline ---------------------------------------------------------------------------


def export_version(registry: Registry, ref: str, out: Path, options: ExportOptions | None = None) -> ExportReport:
    """Export ``ref`` to ONNX and make every variant ``options`` asks for, each checked and measured.

    Args:
        registry: where the source lives and where variants are registered.
        ref: ``name``, ``name@alias`` or ``name:N``.
        out: the folder to write into (created if missing).
        options: variants, check data, tolerance, registration.

    Returns:
        The report: the source row first, then the ONNX export, then each variant.

    Raises:
        NotExportable: the source's format has no ONNX converter.
        CheckFailed: the base ONNX export itself disagrees with the source.
    """
    opts = options or ExportOptions()
    mv = registry.get(ref)
    loaded = registry.load(mv)
    try:
        return Exporter(registry, mv, loaded, out, opts).run()
    finally:
        loaded.close()


class Exporter:
    """One run of the pipeline over one source version; holds what every step shares.

    ``bundle`` uses it too: the same check rows, reference outputs and checks.
    """

    def __init__(self, registry: Registry, mv: ModelVersion, loaded: LoadedModel, out: Path,
                 opts: ExportOptions) -> None:
        self.registry = registry
        self.mv = mv
        self.loaded = loaded
        self.out = out
        self.opts = opts
        self.folder = registry.fetch(mv)
        self.source = open_source(loaded, self.folder)
        self.data = check_rows(registry, mv, opts.check_data, opts.target)
        self.expected = self._reference(self.data.inputs)
        # label outputs (not argmax of scores) decide which default tolerance applies
        self.has_labels = any(checks.is_label(v) for v in self.expected.values())

    def run(self) -> ExportReport:
        self.out.mkdir(parents=True, exist_ok=True)
        report = ExportReport(self.mv.ref, self.data.rows, [self._source_row()], self.data.note)
        if self.data.note:
            logger.warning("%s: every variant is %s", self.mv.ref, self.data.checked_on())
        if self.opts.to == "tflite":
            self._tflite(report)
        else:
            self._onnx(report)
        if self.opts.register:
            for v in report.variants[1:]:
                self._register(v)
        return report

    def _onnx(self, report: ExportReport) -> None:
        base = self.out / BASE_FILE
        proto = convert(self.source, opset=self.opts.opset, example=_head(self.data.inputs, 5))
        onnx = require("onnx", "export")
        row = self._variant("onnx", "export", base, lambda p: onnx.save_model(proto, str(p)))
        report.variants.append(row)
        if not row.ok:
            raise CheckFailed("onnx", row.error or "")
        for method in self.opts.quantize:
            report.variants.append(self._variant(
                f"quantize:{method}", method, self.out / f"model.{method}.onnx",
                lambda p, m=method: quantizing.quantize(base, p, m, self._graph_feed(base)),  # type: ignore[misc]
            ))
        for spec in self.opts.prune:
            report.variants.append(self._pruned(spec))
        for target in self.opts.compile:
            report.variants.append(self._compiled(target, base))

    def _tflite(self, report: ExportReport) -> None:
        if self.source.flavor != "tensorflow":
            raise NotExportable(f"--to tflite converts TensorFlow models (SavedModel, Keras); {self.mv.ref} is "
                                f"'{self.mv.flavor}'")
        saved, key = Path(self.source.model), self.source.signature_key
        base = self.out / TFLITE_FILE
        row = self._variant("tflite", "export", base, lambda p: litert.to_tflite(saved, p, signature=key))
        report.variants.append(row)
        if not row.ok:
            raise CheckFailed("tflite", row.error or "")
        for method in self.opts.quantize:
            report.variants.append(self._variant(
                f"quantize:{method}", QUANTIZE["tflite"][method], self.out / f"model.{method}.tflite",
                lambda p, m=method: litert.to_tflite(saved, p, signature=key, method=m,  # type: ignore[misc]
                                                     calibration=self.data.inputs, base=base),
            ))
        for target in self.opts.compile:
            report.variants.append(self._compiled(target, base))

    # -- steps --------------------------------------------------------------------------

    def _variant(self, name: str, kind: str, dest: Path, write: Callable[[Path], None],
                 notes: dict[str, Any] | None = None) -> VariantReport:
        """Make, check, write and measure one variant; failures become the row's error."""
        tol = self.tolerance(kind)
        row = VariantReport(name, notes=dict(notes or {}))
        try:
            row.check = checks.write_checked(dest, write, lambda p: self.check(p, tol), variant=name)
        except CheckFailed as exc:
            row.error = exc.reason
        except ShipyardError as exc:
            row.error = str(exc)
        except Exception as exc:  # a converter or quantizer giving up on this graph: report, go on
            logger.debug("%s failed", name, exc_info=True)
            row.error = f"{type(exc).__name__}: {exc}"
        if row.error is not None:
            logger.info("%s not written: %s", name, row.error)
            return row
        row.path = dest
        row.size_bytes = measure.size_bytes(dest)
        row.compressed_bytes = measure.compressed_bytes(dest)
        runner = _runner(dest)
        try:
            row.timing = measure.latency(runner.predict, self.data.inputs, budget_s=self.opts.latency_budget_s)
        finally:
            runner.unload()
        return row

    def tolerance(self, kind: str) -> checks.Tolerance:
        """The tolerance for a transformation kind, with the user's settings laid over the default."""
        return checks.resolve_tolerance(kind, has_labels=self.has_labels, max_diff=self.opts.tolerance,
                                        min_agreement=self.opts.min_agreement)

    def check(self, path: Path, tol: checks.Tolerance, runner: Any = None) -> checks.CheckResult:
        """Run the artifact at ``path`` (or ``runner``, anything with predict/unload) on the check rows
        and compare it with the source."""
        runner = runner or _runner(path)
        try:
            got = runner.predict(dict(self.data.inputs))
        except ShipyardError:
            raise
        except Exception as exc:  # the artifact itself is broken: that is a failed check, not a crash
            raise CheckFailed(path.name, f"it does not run: {type(exc).__name__}: {exc}") from exc
        finally:
            runner.unload()
        result = checks.compare(self.expected, got, tol)
        truth = self.data.truth
        if truth is not None:
            labelled = len(truth)
            src = {k: v[-labelled:] for k, v in self.expected.items()}
            var = {k: v[-labelled:] for k, v in got.items()}
            delta = checks.accuracy_delta(src, var, truth)
        else:
            delta = checks.accuracy_delta(self.expected, got, None)
        return checks.CheckResult(result.outputs, result.tolerance, result.failures, accuracy_delta=delta)

    def _pruned(self, spec: pruning.PruneSpec) -> VariantReport:
        name = f"prune:{spec.label}"
        dest = self.out / f"model.prune-{spec.label.replace(':', '-')}.onnx"
        try:
            # a fresh copy: pruning changes weights in place, and the source must stay as registered
            fresh = open_source(self.loaded, self.folder)
            notes: dict[str, Any] = {}
            if spec.method == "trees":
                model, notes = self._trees(fresh, spec)
                name = f"prune:trees:{notes['trees']}"
                dest = self.out / f"model.prune-trees-{notes['trees']}.onnx"
                proto = convert(fresh, opset=self.opts.opset, model=model)
            else:
                if fresh.flavor != "torch":
                    raise NotExportable(f"--prune {spec.label} is for PyTorch models; use trees:K for tree ensembles")
                notes["sparsity"] = round(pruning.prune_torch(fresh.model, spec), 4)
                proto = convert(fresh, opset=self.opts.opset, example=_head(self.data.inputs, 5))
        except NotExportable as exc:
            return VariantReport(name, error=str(exc))
        onnx = require("onnx", "export")
        return self._variant(name, "prune", dest, lambda p: onnx.save_model(proto, str(p)), notes)

    def _trees(self, fresh: Source, spec: pruning.PruneSpec) -> tuple[Any, dict[str, Any]]:
        n = pruning.tree_count(fresh)
        if spec.trees is not None:
            return pruning.truncate(fresh, spec.trees), {"trees": spec.trees, "of": n}
        if checks.labels_of(self.expected) is None:
            raise NotExportable("--prune trees without K needs a classifier (the curve scores labels); give trees:K")
        inputs = self.data.labelled() if self.data.truth is not None else self.data.inputs
        truth = self.data.truth if self.data.truth is not None else checks.labels_of(self.expected)
        assert truth is not None  # has_labels
        curve = pruning.accuracy_curve(fresh, lambda m: self._framework(fresh, m, inputs, "predict"), truth,
                                       pruning.k_grid(n))
        max_drop = 1.0 - (self.opts.min_agreement if self.opts.min_agreement is not None else 0.99)
        k = pruning.choose_k(curve, max_drop)
        logger.info("tree curve %s -> keeping %d of %d", curve, k, n)
        return pruning.truncate(fresh, k), {"trees": k, "of": n, "curve": curve}

    def _compiled(self, target: str, base: Path) -> VariantReport:
        if target == "xla":
            if self.source.flavor != "tensorflow":
                return VariantReport("compile:xla", error=f"--compile xla compiles TensorFlow models; {self.mv.ref} "
                                                         f"is '{self.mv.flavor}'")
            saved, key = Path(self.source.model), self.source.signature_key
            return self._variant("compile:xla", "compile", self.out / XLA_DIR,
                                 lambda p: litert.to_xla(saved, p, signature=key))
        if target == "ort":
            return self._variant("compile:ort", "compile", self.out / "model.ort",
                                 lambda p: compiling.to_ort(base, p))
        return self._variant("compile:openvino", "compile", self.out / "model.openvino",
                             lambda p: compiling.to_openvino(base, p))

    def _register(self, v: VariantReport) -> None:
        if not v.ok or v.path is None or v.check is None:
            return
        path = v.path
        if v.name == "compile:openvino":
            v.notes["not_registered"] = "shipyard has no OpenVINO serving runtime; the IR is in " + str(path)
            return
        if path.suffix == ".ort":
            # The registry's ONNX runtime imports ONNX files: register the same optimised graph as ONNX.
            onnx_copy = path.with_suffix(".ort.onnx")
            tol = v.check.tolerance
            checks.write_checked(onnx_copy, lambda p: compiling.to_ort(self.out / BASE_FILE, p, as_onnx=True),
                                 lambda p: self.check(p, tol), variant=v.name)
            path = onnx_copy
        c = v.check
        metrics = {
            "check_rows": float(self.data.rows),
            "size_bytes": float(v.size_bytes or 0),
        }
        for key, value in (("check_label_agreement", c.label_agreement), ("check_max_abs_diff", c.max_abs_diff),
                           ("accuracy_delta", c.accuracy_delta),
                           ("latency_batch1_ms", v.timing.batch1_ms if v.timing else None),
                           ("latency_batch1000_ms", v.timing.batch1000_ms if v.timing else None)):
            if value is not None:
                metrics[key] = float(value)
        tags = {
            "transformation": v.name,
            "source": self.mv.ref,
            "source_digest": self.mv.digest,
            "check": "passed",
            "check_tolerance": f"max_diff={c.tolerance.max_diff}, min_agreement={c.tolerance.min_agreement}",
        }
        tags.update({f"note.{k}": str(val) for k, val in v.notes.items() if k != "curve"})
        if self.data.note:
            tags["check_rows_note"] = self.data.note
        raw = self.registry.input_example(self.mv)
        # the variant keeps the rows it was checked on as its own check set; the same files
        # registered again (an export run twice) give back the version they already are
        new = self.registry.register(
            path, self.opts.register or self.mv.name,
            sample=raw, flavor=_flavor_of(path), parent=self.mv.ref, check_data=self.data.inputs,
            description=f"{v.name} of {self.mv.ref}, {self.data.checked_on()} ({c.summary()})",
            tags=tags, metrics=metrics, if_identical="reuse",
        )
        v.registered = new.ref

    # -- helpers ------------------------------------------------------------------------

    def _source_row(self) -> VariantReport:
        row = VariantReport("source", path=self.folder, notes={"flavor": self.mv.flavor})
        row.size_bytes = sum(measure.size_bytes(self.folder / f) for f in self.mv.files)
        row.compressed_bytes = measure.compressed_bytes(self.folder)
        row.timing = measure.latency(lambda rows: self.loaded.predict_arrays(dict(rows)), self.data.inputs,
                                     budget_s=self.opts.latency_budget_s)
        return row

    def _reference(self, inputs: Arrays) -> Arrays:
        """The source's outputs, plus class probabilities when the framework has them, so the check
        compares scores as well as labels."""
        out = dict(self.loaded.predict_arrays(inputs))
        if "predict_proba" not in out and self.source.flavor in ("sklearn", "xgboost", "lightgbm"):
            with contextlib.suppress(AttributeError, ShipyardError):  # a regressor: no probabilities
                out["predict_proba"] = self._framework(self.source, self.source.model, inputs, "predict_proba")
        return out

    def _framework(self, source: Source, model: Any, inputs: Arrays, method: str) -> np.ndarray[Any, Any]:
        """``method`` of a framework object on checked inputs, the way the source's runtime feeds it."""
        meta = self.mv.flavor_meta
        if source.flavor == "sklearn":
            from shipyard.runtime.sklearn import SklearnRuntime

            return SklearnRuntime(model, [method]).predict(inputs)[method]
        if source.flavor == "xgboost":
            from shipyard.runtime.xgboost import XGBoostRuntime

            if meta.get("wrapper") not in ("XGBClassifier", "XGBRFClassifier") and method == "predict_proba":
                raise AttributeError(method)
            rt = XGBoostRuntime(model, meta.get("wrapper"), [method])
            return rt.predict(inputs)[method if meta.get("wrapper") else "predict"]
        if source.flavor == "lightgbm":
            from shipyard.runtime.lightgbm import LightGBMRuntime

            if source.classes is None and method == "predict_proba":
                raise AttributeError(method)
            return LightGBMRuntime(model, source.classes, [method]).predict(inputs)[method]
        raise NotExportable(f"no framework predict for {source.flavor}")

    def _graph_feed(self, path: Path) -> Arrays:
        """The check rows cast to the dtypes the graph's inputs want (for static calibration)."""
        runner = OnnxRuntime.load(path.parent, {"file": path.name, "threads": 1})
        try:
            return {name: np.asarray(self.data.inputs[name]).astype(DATATYPE_TO_NUMPY[dt])
                    for name, dt in runner.inputs if name in self.data.inputs}
        finally:
            runner.unload()


def _flavor_of(path: Path) -> str:
    """The runtime that serves an artifact the pipeline wrote."""
    if path.suffix == ".tflite":
        return "tflite"
    if path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
        return "tensorflow"
    return "onnx"


def _runner(path: Path) -> Any:
    """Something with ``predict(arrays)`` and ``unload()`` for an artifact on disk."""
    flavor = _flavor_of(path)
    if flavor == "tflite":
        from shipyard.runtime.tflite import TfliteRuntime, file_meta

        return TfliteRuntime.load(path.parent, file_meta(path, {"threads": 1}))
    if flavor == "tensorflow":
        from shipyard.runtime.tensorflow import TensorflowRuntime

        return TensorflowRuntime.load(path.parent, {"dir": path.name})
    if path.is_dir():
        return compiling.OpenVinoRunner(path)
    return OnnxRuntime.load(path.parent, {"file": path.name, "threads": 1})



def _head(arrays: Mapping[str, np.ndarray[Any, Any]], n: int) -> Arrays:
    return {k: np.ascontiguousarray(v[:n]) for k, v in arrays.items()}
