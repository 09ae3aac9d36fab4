"""The ONNX Runtime serving path: compile a version once, check it, cache it, serve it.

``--runtime onnx`` (or ``auto`` for scikit-learn, XGBoost and LightGBM) converts
the version with ``shipyard.export.onnx`` the first time a server loads it,
runs both models on the version's check set (up to 1,000 rows kept at
registration; the input example of versions registered before check sets), and
serves through onnxruntime only when every output agrees within the export
tolerance (labels exactly). A check on fewer than 100 rows is logged as a
warning that says why, at every start that serves the graph. The graph and
the verdict are cached under ``SHIPYARD_HOME/cache/compiled`` keyed by the
version's digest, so later starts load the graph straight away,
without importing the model's own framework at all. When conversion or the
check fails, the native model is served and the reason is logged (and cached,
so it is not retried at every start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from shipyard.errors import MissingDependency, ShipyardError
from shipyard.registry import LoadedModel, ModelVersion, Registry
from shipyard.registry.checkset import checked_on
from shipyard.runtime.base import Arrays, Runtime
from shipyard.runtime.onnx import OnnxRuntime

logger = logging.getLogger(__name__)

#: Flavors whose ONNX graphs are known to beat the native library at serving.
AUTO_FLAVORS = ("sklearn", "xgboost", "lightgbm")
MODEL_FILE = "model.onnx"
VERDICT_FILE = "verdict.json"


def wants_onnx(mode: str, mv: ModelVersion) -> bool:
    if mode == "onnx":
        # every other format is tried (one that cannot convert says why); a graph's steps are versions of their own
        return mv.flavor not in ("onnx", "graph")
    return mode == "auto" and mv.flavor in AUTO_FLAVORS


def load_for_serving(registry: Registry, mv: ModelVersion, mode: str, compiled: CompiledCache | None) -> LoadedModel:
    """The native model, or its checked ONNX Runtime twin when the runtime mode asks for it."""
    if compiled is None or not wants_onnx(mode, mv):
        return registry.load(mv)
    cached = compiled.load(mv)
    if isinstance(cached, LoadedModel):
        return cached
    native = registry.load(mv)
    if cached is False:
        return native
    twin = compiled.compile(registry, native)
    if twin is None:
        return native
    native.close()
    return twin


class CompiledCache:
    """Compiled graphs and their check verdicts, one folder per version digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, mv: ModelVersion) -> Path:
        return self.root / mv.name / mv.digest

    def load(self, mv: ModelVersion) -> LoadedModel | None | bool:
        """A loaded compiled model; False when a cached verdict says no; None when not compiled yet."""
        folder = self.folder(mv)
        verdict_file = folder / VERDICT_FILE
        if not verdict_file.is_file():
            return None
        verdict = json.loads(verdict_file.read_text())
        if not verdict.get("ok"):
            logger.info("serving %s natively: %s", mv.ref, verdict.get("reason", "the ONNX check failed"))
            return False
        model_file = folder / MODEL_FILE
        if not model_file.is_file() or _sha256(model_file) != verdict.get("sha256"):
            logger.warning("compiled graph of %s is missing or changed; compiling again", mv.ref)
            return None
        if verdict.get("note"):
            logger.warning("serving %s through ONNX Runtime, %s", mv.ref, _checked_on(verdict))
        runtime = OnnxRuntime.load(folder, {"file": MODEL_FILE, "threads": 1})
        return LoadedModel(mv, _SignatureOutputs(runtime, [s.name for s in mv.signature.outputs]))

    def compile(self, registry: Registry, native: LoadedModel) -> LoadedModel | None:
        """Convert and check ``native``; cache the verdict; the compiled model if it passed."""
        mv = native.version
        graph: bytes | None = None
        try:
            verdict, graph = _convert_and_check(registry, native)
        except MissingDependency as exc:  # not the model's fault: try again once it is installed
            logger.warning("serving %s natively: %s", mv.ref, exc)
            return None
        except ShipyardError as exc:
            verdict = {"ok": False, "reason": str(exc)}
        except Exception as exc:  # a converter bug must not stop the native model from serving
            logger.exception("compiling %s failed", mv.ref)
            verdict = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        self._store(mv, verdict, graph if verdict["ok"] else None)
        if not verdict["ok"]:
            logger.warning("serving %s natively: %s", mv.ref, verdict["reason"])
            return None
        compiled = self.load(mv)
        if not isinstance(compiled, LoadedModel):
            return None
        if not verdict.get("note"):  # load() has already warned about a check on too few rows
            logger.info("serving %s through ONNX Runtime (%s)", mv.ref, _checked_on(verdict))
        return compiled

    def _store(self, mv: ModelVersion, verdict: dict[str, Any], graph: bytes | None) -> None:
        final = self.folder(mv)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        if graph is not None:
            (tmp / MODEL_FILE).write_bytes(graph)
            verdict["sha256"] = hashlib.sha256(graph).hexdigest()
        (tmp / VERDICT_FILE).write_text(json.dumps(verdict, indent=2))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process cached the same version meanwhile
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_and_check(registry: Registry, native: LoadedModel) -> tuple[dict[str, Any], bytes]:
    from shipyard.export.check import compare, default_tolerance
    from shipyard.export.onnx import convert, open_source

    mv = native.version
    check_set = registry.check_set(mv)
    if check_set is None:
        raise ShipyardError(f"{mv.ref} has no stored check set or input example to check a compiled graph against")
    example = check_set.inputs
    source = open_source(native, registry.fetch(mv))
    head = {k: v[:5] for k, v in example.items()}  # tracing (PyTorch) needs only a few rows
    graph: bytes = convert(source, example=head).SerializeToString()
    work = Path(registry.artifacts.cache_dir) / "compiled" / f".check-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        (work / MODEL_FILE).write_bytes(graph)
        runtime = OnnxRuntime.load(work, {"file": MODEL_FILE, "threads": 1})
        expected = native.run(example)
        got = runtime.predict(example)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = [k for k in expected if k not in got]
    if missing:
        return {"ok": False, "reason": f"the graph lacks output '{missing[0]}'"}, graph
    result = compare(expected, {k: got[k] for k in expected}, default_tolerance("export"))
    verdict: dict[str, Any] = {"rows": check_set.rows}
    if check_set.note:
        verdict["note"] = check_set.note
    if result.failures:
        reason = "the compiled graph disagrees: " + "; ".join(result.failures)
        return {"ok": False, "reason": reason, **verdict}, graph
    return {"ok": True, **verdict}, graph


class _SignatureOutputs(Runtime):
    """Returns exactly the version's signature outputs (graphs may carry extra ones, e.g. probabilities)."""

    flavor = "onnx"

    def __init__(self, inner: Runtime, names: list[str]) -> None:
        self.inner = inner
        self.names = names

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> Runtime:  # pragma: no cover - built by CompiledCache
        raise NotImplementedError

    def predict(self, inputs: Arrays) -> Arrays:
        out = self.inner.predict(inputs)
        return {k: out[k] for k in self.names} if self.names else out

    def unload(self) -> None:
        self.inner.unload()


def _checked_on(verdict: dict[str, Any]) -> str:
    return checked_on(int(verdict.get("rows", 0)), verdict.get("note"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
