"""``shipyard predict``: one prediction, in-process or against a running server."""

from __future__ import annotations

from pathlib import Path

import click

from shipyard.cli._output import fail, handle_errors, print_json, settings_from
from shipyard.datafiles import parse_json_data, read_data
from shipyard.http import post_json
from shipyard.protocol import simple
from shipyard.registry import Registry
from shipyard.types import InferenceResponse, ModelRef, Tensor


@click.command()
@click.argument("ref")
@click.option("--data", "data", help='Input as JSON: records [{"col": 1.0}], columns {"col": [1.0]} or a nested list.')
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Input file (.csv/.json/.jsonl/.parquet/.npy).")
@click.option("--url", help="Ask a running server (e.g. http://127.0.0.1:8000) instead of loading the model here.")
@click.option("--token", envvar="SHIPYARD_TOKEN", default=None,
              help="API key or JWT sent to --url as a bearer credential. Env: SHIPYARD_TOKEN.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificates an https --url is verified against (default: the system store).")
@click.pass_context
@handle_errors
def predict(ctx: click.Context, ref: str, data: str | None, input_file: Path | None, url: str | None,
            token: str | None, ca_file: str | None) -> None:
    """Predict with REF (name, name@alias or name:VERSION) and print the predictions as JSON."""
    if (data is None) == (input_file is None):
        fail("give exactly one of --data JSON or --input FILE")
    payload = parse_json_data(data, "--data") if data is not None else read_data(input_file)  # type: ignore[arg-type]
    if url:
        ModelRef.parse(ref)
        if not isinstance(payload, (list, dict)):
            payload = payload.to_dict(orient="records") if hasattr(payload, "to_dict") else payload.tolist()
        body = {"instances": payload} if isinstance(payload, list) else {"inputs": payload}
        print_json(post_json(f"{url.rstrip('/')}/v1/models/{ref}:predict", body, token=token, ca_file=ca_file))
        return
    reg = Registry.from_settings(settings_from(ctx))
    try:
        model = reg.load(ref)
    finally:
        reg.close()
    result = model.predict(payload)
    if hasattr(result, "columns"):  # DataFrame in, DataFrame out: back to named arrays
        result = {str(c): result[c].to_numpy() for c in result.columns}
    outputs = result if isinstance(result, dict) else {"predict": result}
    response = InferenceResponse(model.name, str(model.version.version), [Tensor(k, v) for k, v in outputs.items()])
    print_json(simple.encode_response(response))
