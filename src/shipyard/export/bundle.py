"""``shipyard bundle``: one zip that runs a model offline with NumPy and onnxruntime (or LiteRT) only.

The zip holds:

* ``model.onnx``: the version's ONNX graph (exported first when the version is
  not ONNX already), with ONNX Runtime's basic graph optimisations applied —
  the portable level, whose operators every ONNX Runtime has; or, for a TFLite
  version, ``model.tflite`` as it is, run by the LiteRT interpreter
  (``ai-edge-litert``) instead of onnxruntime;
* ``signature.json``: the graph's inputs and outputs (names, datatypes, shapes);
* ``bundle.json``: name, version, source digest, the model's sha256 (checked
  before every load), what it was checked on (rows, tolerance, and why when
  fewer than 100 rows) and the versions it was built with;
* ``edge_model.py``: the runtime (``shipyard/export/_bundle_runtime.py``,
  self-contained) and ``__main__.py``, so ``python model.zip input.json`` runs it
  and ``sys.path.insert(0, "model.zip"); import edge_model`` imports it.

The bundle is checked *as a bundle*: the zip is written to a temporary name,
loaded through its own runtime, compared with the source version on the check
rows (the version's check set, plus ``--check-data``), and renamed into place
only when it passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from shipyard import __version__
from shipyard._extras import require
from shipyard.errors import CheckFailed
from shipyard.export import _bundle_runtime, measure
from shipyard.export import compile as compiling
from shipyard.export.check import CheckResult, write_checked
from shipyard.export.onnx import convert
from shipyard.export.pipeline import Exporter, ExportOptions
from shipyard.registry import Registry
from shipyard.registry.checkset import checked_on
from shipyard.runtime.onnx import OnnxRuntime
from shipyard.signature import Signature

logger = logging.getLogger(__name__)

RUNTIME_MODULE = "edge_model.py"
MAIN = '''"""Runs this shipyard bundle: python model.zip input.json (see edge_model.py)."""
import sys

import edge_model

sys.exit(edge_model.main())
'''


@dataclass(frozen=True)
class BundleReport:
    """What ``bundle_version`` wrote."""

    path: Path
    source: str
    size_bytes: int
    model_sha256: str
    check: CheckResult
    timing: measure.Timing | None
    rows: int = 0
    """How many check rows the bundle was compared on."""
    note: str | None = None
    """Why there were fewer than 100 check rows; None when there were enough."""

    def checked_on(self) -> str:
        """``checked on 500 rows``, or ``checked on 37 rows: the sample had only 37``."""
        return checked_on(self.rows, self.note)


def bundle_version(registry: Registry, ref: str, out: Path, options: ExportOptions | None = None) -> BundleReport:
    """Write the edge bundle of ``ref`` to the zip file ``out``.

    Args:
        registry: where the version lives.
        ref: ``name``, ``name@alias`` or ``name:N``; an ONNX or TFLite version (say a quantized
            variant registered by ``export``) is bundled as it is, any other is exported to ONNX first.
        out: the zip file to write.
        options: check data, target column, tolerance and opset (the variant options are ignored).

    Raises:
        NotExportable: the version cannot be exported to ONNX.
        CheckFailed: the bundle does not reproduce the source; nothing is written.
    """
    opts = options or ExportOptions()
    mv = registry.get(ref)
    loaded = registry.load(mv)
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bundle-") as tmp:
            work = Path(tmp)
            exporter = Exporter(registry, mv, loaded, work, opts)
            if mv.flavor == "tflite":
                data, signature, engine = _tflite(exporter)
            else:
                data, signature, engine = _onnx(exporter, work, opts)
            meta: dict[str, Any] = {
                "format": 1,
                "name": mv.name,
                "version": mv.version,
                "source_digest": mv.digest,
                "source_flavor": mv.flavor,
                "sha256": hashlib.sha256(data).hexdigest(),
                **engine,
            }
            tol = exporter.tolerance("export")
            # known before the check runs; the zip only lands at ``out`` when the check passed
            meta["check"] = {"rows": exporter.data.rows,
                             "tolerance": {"max_diff": tol.max_diff, "min_agreement": tol.min_agreement}}
            if exporter.data.note:
                meta["check"]["note"] = exporter.data.note
                logger.warning("%s: the bundle is %s", mv.ref, exporter.data.checked_on())
            holder: dict[str, CheckResult] = {}

            def write(path: Path) -> None:
                _write_zip(path, data, signature.to_dict(), meta, meta.get("model_file", _bundle_runtime.MODEL_FILE))

            def check(path: Path) -> CheckResult:
                bundled = _load_bundle(path)
                result = exporter.check(path, tol, runner=_BundleRunner(bundled))
                holder["check"] = result
                return result

            result = write_checked(out, write, check, variant=f"bundle of {mv.ref}")
            if not result.passed:  # pragma: no cover - write_checked raises first
                raise CheckFailed(mv.ref, "; ".join(result.failures))
            runner = _BundleRunner(_load_bundle(out))
            timing = measure.latency(runner.predict, exporter.data.inputs, budget_s=opts.latency_budget_s)
    finally:
        loaded.close()
    logger.info("bundled %s into %s (%d bytes)", mv.ref, out, out.stat().st_size)
    return BundleReport(out, mv.ref, out.stat().st_size, meta["sha256"], result, timing,
                        rows=exporter.data.rows, note=exporter.data.note)


def runtime_source() -> str:
    """The bundle runtime's source, exactly as it is copied into every bundle."""
    return Path(_bundle_runtime.__file__).read_text()


def _onnx(exporter: Exporter, work: Path, opts: ExportOptions) -> tuple[bytes, Signature, dict[str, Any]]:
    """The version as a portable ONNX graph, its signature, and what runs it."""
    onnx = require("onnx", "export")
    raw = work / "exported.onnx"
    onnx.save_model(convert(exporter.source, opset=opts.opset, example=_head(exporter)), str(raw))
    model = work / "model.onnx"
    compiling.to_ort(raw, model, as_onnx=True, level="basic")
    signature = OnnxRuntime.default_signature(work, {"file": model.name})
    assert signature is not None  # an ONNX graph always declares its inputs
    return model.read_bytes(), signature, {
        "built_with": {"shipyard": __version__, **_versions("onnxruntime", "onnx", "numpy")},
        "requires": ["onnxruntime", "numpy"],
    }


def _tflite(exporter: Exporter) -> tuple[bytes, Signature, dict[str, Any]]:
    """A TFLite version's file as it is, its signature, and what runs it (the LiteRT interpreter)."""
    from shipyard.runtime.tflite import TfliteRuntime

    meta = exporter.mv.flavor_meta
    signature = TfliteRuntime.default_signature(exporter.folder, meta)
    assert signature is not None  # a TFLite model always declares its tensors
    engine: dict[str, Any] = {
        "engine": "litert",
        "model_file": _bundle_runtime.TFLITE_FILE,
        "built_with": {"shipyard": __version__, **_versions("ai-edge-litert", "numpy")},
        "requires": ["ai-edge-litert", "numpy"],
    }
    if meta.get("signature"):
        engine["signature_key"] = meta["signature"]
    return (exporter.folder / meta["file"]).read_bytes(), signature, engine


def _write_zip(path: Path, model: bytes, signature: dict[str, Any], meta: dict[str, Any],
               model_file: str = _bundle_runtime.MODEL_FILE) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__main__.py", MAIN)
        zf.writestr(RUNTIME_MODULE, runtime_source())
        zf.writestr(model_file, model)
        zf.writestr(_bundle_runtime.SIGNATURE_FILE, json.dumps(signature, indent=2))
        zf.writestr(_bundle_runtime.META_FILE, json.dumps(meta, indent=2))


def _load_bundle(path: Path) -> Any:
    """The bundle's own runtime module, loaded from the zip (not from shipyard), then its model."""
    with zipfile.ZipFile(path) as zf:
        code = zf.read(RUNTIME_MODULE).decode()
    spec = importlib.util.spec_from_loader(f"_shipyard_edge_check_{abs(hash(str(path)))}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(code, f"{path}/{RUNTIME_MODULE}", "exec"), module.__dict__)
    return module.load(str(path))


class _BundleRunner:
    """A loaded bundle as the checker and the timer expect: predict(arrays) and unload()."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, inputs: Any) -> Any:
        return self.model.predict(dict(inputs))

    def unload(self) -> None:
        self.model = None


def _head(exporter: Exporter) -> dict[str, Any]:
    return {k: v[:5] for k, v in exporter.data.inputs.items()}


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            continue
    return out
