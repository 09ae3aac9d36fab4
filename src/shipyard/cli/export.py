"""``shipyard export`` and ``shipyard bundle``: checked edge artifacts from a registered version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import console, handle_errors, settings_from, table
from shipyard.datafiles import read_data
from shipyard.registry import Registry

_COLUMNS = ["variant", "size", "zipped", "batch 1 ms", "batch 1000 ms", "label agreement", "max abs diff",
            "accuracy Δ", "result"]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _row(v: Any) -> list[str]:
    c = v.check
    if v.name == "source":
        result = f"{v.notes.get('flavor', '')} model"
    elif v.ok:
        result = f"written {v.path.name}" + (f", registered {v.registered}" if v.registered else "")
        if "not_registered" in v.notes:
            result += " (not registered: no OpenVINO runtime)"
    else:
        result = f"FAILED: {v.error}"
    return [
        v.name,
        _size(v.size_bytes),
        _size(v.compressed_bytes),
        _num(v.timing.batch1_ms if v.timing else None, ".3f"),
        _num(v.timing.batch1000_ms if v.timing else None, ".2f"),
        _num(c.label_agreement if c else None, ".4f"),
        _num(c.max_abs_diff if c else None, ".2g"),
        _num(v.accuracy_delta, "+.4f"),
        result,
    ]


@click.command()
@click.argument("ref")
@click.option("--to", "to", type=click.Choice(["onnx", "tflite"]), default="onnx", show_default=True,
              help="Base format: an ONNX graph (every variant derives from it), or TensorFlow Lite for "
                   "TensorFlow/Keras models (served by the LiteRT interpreter).")
@click.option("--opset", type=int, help="ONNX opset (default: 17 scikit-learn, 15 XGBoost/LightGBM, 18 PyTorch).")
@click.option("--quantize", "quantize", multiple=True, type=click.Choice(["dynamic", "static", "int8", "fp16"]),
              help="Also write an int8 or float16 variant: ONNX dynamic, static (calibrated on the check rows) "
                   "or fp16; TFLite dynamic, int8 (calibrated on the check rows) or fp16. Repeatable.")
@click.option("--prune", "prune", multiple=True, metavar="SPEC",
              help="Also write a pruned variant: magnitude:F or structured:F (PyTorch, F = fraction zeroed), "
                   "trees:K (first K trees) or trees (K from the accuracy curve). Repeatable.")
@click.option("--compile", "compile_to", multiple=True, type=click.Choice(["ort", "openvino", "xla"]),
              help="Also write ONNX Runtime's optimised ORT format or an OpenVINO IR (--to onnx), or a "
                   "SavedModel whose serving function XLA compiles (TensorFlow models). Repeatable.")
@click.option("--check-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="More rows to check every variant on (.csv/.json/.jsonl/.parquet/.npy), besides the "
                   "version's check set (up to 1,000 rows kept at registration).")
@click.option("--target", help="Column of --check-data with the true labels: accuracy deltas and the tree "
                               "curve are then measured against it.")
@click.option("--tolerance", type=float,
              help="Max difference of float outputs, |variant - source| / max(1, max |source|). "
                   "Default per step: 1e-4 export/compile, 1e-2 fp16, 5e-2 int8.")
@click.option("--min-agreement", type=float,
              help="Min share of unchanged labels, 0..1. Default: 1.0 export/compile, 0.98 fp16, 0.95 int8 "
                   "and pruning; the tree curve keeps K within 1 - this (default 0.99) of the full model.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the variants into.")
@click.option("--register", "register_as", metavar="NAME",
              help="Register every variant that passed as a new version of NAME (parent: REF).")
@click.option("--latency-seconds", type=float, default=1.0, show_default=True,
              help="Time budget per variant and batch size for the latency numbers.")
@click.pass_context
@handle_errors
def export(ctx: click.Context, ref: str, to: str, opset: int | None, quantize: tuple[str, ...],
           prune: tuple[str, ...], compile_to: tuple[str, ...], check_data: Path | None, target: str | None,
           tolerance: float | None, min_agreement: float | None, out: Path, register_as: str | None,
           latency_seconds: float) -> None:
    """Export REF to ONNX (or TFLite), plus quantized, pruned and compiled variants, each checked against REF.

    Every artifact is run on the version's check set (up to 1,000 rows kept at
    registration, plus --check-data) and compared with REF; one outside the
    tolerance is not written. The table's title says how many rows (and why, when
    fewer than 100). The table shows size, latency at batch 1 and 1000, label
    agreement, max difference and accuracy change for each.
    """
    from shipyard.export import ExportOptions, export_version, parse_prune

    options = ExportOptions(
        opset=opset, quantize=quantize, prune=tuple(parse_prune(p) for p in prune), compile=compile_to,
        check_data=read_data(check_data) if check_data else None, target=target, tolerance=tolerance,
        min_agreement=min_agreement, register=register_as, latency_budget_s=latency_seconds, to=to,
    )
    reg = Registry.from_settings(settings_from(ctx))
    try:
        report = export_version(reg, ref, out, options)
    finally:
        reg.close()
    table(f"{report.source} -> {out} ({report.checked_on()})", _COLUMNS, [_row(v) for v in report.variants])
    for v in report.variants:
        if "curve" in v.notes:
            curve = ", ".join(f"{k}: {score:.4f}" for k, score in v.notes["curve"])
            console.print(f"tree accuracy curve (trees: accuracy) {curve} -> kept {v.notes['trees']}")
    report.raise_for_failures()


@click.command()
@click.argument("ref")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The zip file to write, e.g. model.zip.")
@click.option("--opset", type=int, help="ONNX opset when REF has to be exported first.")
@click.option("--check-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="More rows to check the bundle on, besides the version's check set.")
@click.option("--tolerance", type=float, help="Max difference of float outputs (default 1e-4).")
@click.option("--min-agreement", type=float, help="Min share of unchanged labels (default 1.0).")
@click.pass_context
@handle_errors
def bundle(ctx: click.Context, ref: str, out: Path, opset: int | None, check_data: Path | None,
           tolerance: float | None, min_agreement: float | None) -> None:
    """Write REF as one zip that runs offline with only NumPy and onnxruntime (LiteRT for a TFLite REF).

    \b
    Run it:     python model.zip input.json
    Import it:  sys.path.insert(0, "model.zip"); import edge_model; edge_model.load().predict({...})
    """
    from shipyard.export import ExportOptions, bundle_version

    options = ExportOptions(opset=opset, check_data=read_data(check_data) if check_data else None,
                            tolerance=tolerance, min_agreement=min_agreement, latency_budget_s=0.5)
    reg = Registry.from_settings(settings_from(ctx))
    try:
        report = bundle_version(reg, ref, out, options)
    finally:
        reg.close()
    c = report.check
    table(None, ["bundle", "from", "size", "batch 1 ms", "label agreement", "max abs diff", "model sha256"], [[
        str(report.path), report.source, _size(report.size_bytes),
        _num(report.timing.batch1_ms if report.timing else None, ".3f"),
        _num(c.label_agreement, ".4f"), _num(c.max_abs_diff, ".2g"), report.model_sha256[:12],
    ]])
    console.print(f"{report.checked_on()}; run it: python {report.path} input.json")
