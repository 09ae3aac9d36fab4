"""``shipyard serve``: the online server (Open Inference Protocol REST + simple JSON API)."""

from __future__ import annotations

import click

from shipyard.cli._output import handle_errors, settings_from, setup_logging
from shipyard.serving.server import serve as run_server


@click.command()
@click.argument("models", nargs=-1)
@click.option("--host", default=None, help="Address to bind. Env: SHIPYARD_HOST. Default: 127.0.0.1")
@click.option("--port", type=int, default=None,
              help="Port to listen on (0 = any free). Env: SHIPYARD_PORT. Default: 8000")
@click.option("--max-body-bytes", type=int, default=None,
              help="Largest request body; larger ones get 413. Env: SHIPYARD_MAX_BODY_BYTES. Default: 64 MiB")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Env: SHIPYARD_LOG_LEVEL. Default: info")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]), help="Env: SHIPYARD_LOG_FORMAT.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, models: tuple[str, ...], host: str | None, port: int | None,
          max_body_bytes: int | None, access_log: bool, log_level: str | None, log_format: str | None) -> None:
    """Serve MODELS (name, name@alias or name:VERSION); none given serves every registered model.

    A bare name in a URL means the reference the server was started with, so
    `shipyard serve fraud@champion` answers /v2/models/fraud/infer with the
    champion; /v2/models/fraud@challenger/infer and /v2/models/fraud/versions/2/infer
    address others. Alias moves reach a running server within a few seconds.
    """
    settings = settings_from(ctx).replace(host=host, port=port, max_body_bytes=max_body_bytes,
                                          log_level=log_level, log_format=log_format)
    setup_logging(settings.log_level, settings.log_format)
    run_server(settings, list(models), access_log=access_log)
