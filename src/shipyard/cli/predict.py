"""``shipyard predict``: one prediction, in-process or against a running server."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shipyard.cli._output import fail, handle_errors, print_json, settings_from
from shipyard.datafiles import parse_json_data, read_data
from shipyard.http import post_json
from shipyard.protocol.simple import _to_py
from shipyard.registry import Registry
from shipyard.types import ModelRef


@click.command()
@click.argument("ref")
@click.option("--data", "data", help='Input as JSON: records [{"col": 1.0}], columns {"col": [1.0]} or a nested list.')
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Input file (.csv/.json/.jsonl/.parquet/.npy).")
@click.option("--url", help="Ask a running server (e.g. http://127.0.0.1:8000) instead of loading the model here.")
@click.pass_context
@handle_errors
def predict(ctx: click.Context, ref: str, data: str | None, input_file: Path | None, url: str | None) -> None:
    """Predict with REF (name, name@alias or name:VERSION) and print the predictions as JSON."""
    if (data is None) == (input_file is None):
        fail("give exactly one of --data JSON or --input FILE")
    payload = parse_json_data(data, "--data") if data is not None else read_data(input_file)  # type: ignore[arg-type]
    if url:
        ModelRef.parse(ref)
        if not isinstance(payload, (list, dict)):
            payload = payload.to_dict(orient="records") if hasattr(payload, "to_dict") else payload.tolist()
        body = {"instances": payload} if isinstance(payload, list) else {"inputs": payload}
        print_json(post_json(f"{url.rstrip('/')}/v1/models/{ref}:predict", body))
        return
    reg = Registry.from_settings(settings_from(ctx))
    try:
        model = reg.load(ref)
    finally:
        reg.close()
    result = model.predict(payload)
    if isinstance(result, dict):
        out = {k: _to_py(v) for k, v in result.items()}
    elif hasattr(result, "to_dict"):
        out = json.loads(result.to_json(orient="records"))
    else:
        out = _to_py(result)
    print_json({"model_name": model.name, "model_version": str(model.version.version), "predictions": out})
