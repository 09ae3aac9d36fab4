"""``shipyard quickstart``: train, register and serve the demo model, then show a prediction."""

from __future__ import annotations

import json
import threading

import click

from shipyard.cli._output import console, err_console, handle_errors, settings_from, setup_logging
from shipyard.demo import DEMO_NAME, register_demo
from shipyard.http import post_json, wait_ready
from shipyard.registry import Registry
from shipyard.serving.server import serve as run_server

SAMPLE = {"instances": [{"sepal_length": 6.1, "sepal_width": 2.8, "petal_length": 4.7, "petal_width": 1.2}]}


def _show_prediction(base: str, name: str) -> None:
    try:
        wait_ready(base, timeout=60)
        result = post_json(f"{base}/v1/models/{name}:predict", SAMPLE)
    except Exception as exc:  # the server may have failed to start; its own log says why
        err_console.print(f"[red]could not get a sample prediction:[/] {exc}")
        return
    body = json.dumps(SAMPLE)
    console.print(f"\n[bold green]prediction[/] from {name}:{result['model_version']}: "
                  f"{result['predictions']} (request id {result['id']})")
    console.print("another one:")
    # plain echo: a wrapped curl line could not be pasted back into a shell
    click.echo(f"  curl -s -X POST {base}/v1/models/{name}:predict "
               f"-H 'Content-Type: application/json' -d '{body}'")
    console.print(f"API docs: {base}/docs   (Ctrl-C stops the server)\n", highlight=False)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--no-serve", is_flag=True, help="Only train and register the demo model.")
@click.pass_context
@handle_errors
def quickstart(ctx: click.Context, host: str, port: int, no_serve: bool) -> None:
    """Train a RandomForest on iris, register it as 'demo' (alias champion), serve it and predict."""
    settings = settings_from(ctx).replace(host=host, port=port)
    setup_logging("warning", settings.log_format)
    reg = Registry.from_settings(settings)
    try:
        mv = register_demo(reg)
    finally:
        reg.close()
    console.print(f"registered [bold]{mv.ref}[/] (accuracy {mv.metrics['accuracy']:.3f}) "
                  f"in {settings.home}; alias champion -> {mv.version}")
    if no_serve:
        return
    base = f"http://{host}:{port}"
    console.print(f"serving {DEMO_NAME}@champion on {base} ...")
    threading.Thread(target=_show_prediction, args=(base, DEMO_NAME), daemon=True).start()
    run_server(settings, [f"{DEMO_NAME}@champion"])
