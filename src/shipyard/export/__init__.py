"""Edge deployment: export a registered version to ONNX, optimise it, check it, bundle it.

    from shipyard.export import ExportOptions, export_version, bundle_version
    report = export_version(registry, "demo", Path("dist"), ExportOptions(quantize=("dynamic",)))
    bundle_version(registry, "demo", Path("model.zip"))

Modules: ``onnx`` (converters), ``check`` (comparison with the source, checked
writes), ``quantize``, ``prune``, ``compile`` (ORT format, OpenVINO IR),
``measure`` (size, latency), ``pipeline`` (the export run), ``bundle`` (the zip).
Heavy packages (onnx, onnxruntime, skl2onnx, onnxmltools, torch, openvino) are
imported only when a step needs them (extra ``export``).
"""

from __future__ import annotations

from shipyard.export.bundle import BundleReport, bundle_version
from shipyard.export.check import CheckResult, Tolerance, default_tolerance
from shipyard.export.pipeline import ExportOptions, ExportReport, VariantReport, export_version
from shipyard.export.prune import PruneSpec, parse_prune

__all__ = [
    "BundleReport",
    "CheckResult",
    "ExportOptions",
    "ExportReport",
    "PruneSpec",
    "Tolerance",
    "VariantReport",
    "bundle_version",
    "default_tolerance",
    "export_version",
    "parse_prune",
]
