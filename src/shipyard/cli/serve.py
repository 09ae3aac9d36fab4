"""``shipyard serve``: the online server (Open Inference Protocol REST + simple JSON API).

Every option defaults to None ("not given"), so a value from shipyard.yaml or a
``SHIPYARD_*`` variable stands unless the flag is given. Help texts come from the
docstrings of the ``Settings`` fields, so no default is written down twice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import handle_errors, setup_logging
from shipyard.config import ENV_PREFIX, SecurityConfig, Settings, field_doc
from shipyard.graphs.config import register_declared
from shipyard.registry import Registry
from shipyard.serving.server import serve as run_server
from shipyard.types import ModelRef


def register_graphs(settings: Settings) -> list[str]:
    """Register the settings' ``graph:`` block; the references to serve them by."""
    reg = Registry.from_settings(settings)
    try:
        return register_declared(settings.graphs, reg)
    finally:
        reg.close()


def setting_help(name: str) -> str:
    """The help of the option for setting ``name``: its docstring, variable and default."""
    default = getattr(Settings(), name)
    shown = "unset" if default is None else (repr(default) if isinstance(default, str) else str(default))
    return f"{field_doc(Settings, name)} Env: {ENV_PREFIX}{name.upper()}. Default: {shown}."


def setting(*decls: str, name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option for setting ``name`` that defaults to None (not given)."""
    return click.option(*decls, name, default=None, help=setting_help(name), **kwargs)


def config_option(fn: Any) -> Any:
    """``-c/--config FILE``: the settings file (else the one SHIPYARD_CONFIG names, else none)."""
    return click.option(
        "-c", "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="Settings file (shipyard.yaml). Env: SHIPYARD_CONFIG. Default: none.",
    )(fn)


def load_settings(ctx: click.Context, config_file: Path | None, **flags: Any) -> Settings:
    """The settings of this command: defaults < the file < SHIPYARD_* < the group's and this command's flags."""
    root = {k: v for k, v in ctx.find_root().params.items() if v is not None}
    return Settings.load(config_file, **root, **flags)


@click.command()
@click.argument("models", nargs=-1)
@config_option
@setting("--host", name="host")
@setting("--port", name="port", type=int)
@setting("--max-body-bytes", name="max_body_bytes", type=int)
@setting("--workers", name="workers", type=int)
@setting("--runtime", name="runtime", type=click.Choice(["auto", "native", "onnx"]))
@setting("--access-log/--no-access-log", name="access_log")
@setting("--dashboard/--no-dashboard", name="dashboard")
@setting("--grpc-port", name="grpc_port", type=int)
@setting("--graceful-shutdown", name="graceful_shutdown_seconds", type=float)
@setting("--batching/--no-batching", name="batching")
@setting("--batch-max-size", name="batch_max_size", type=int)
@setting("--batch-max-wait-ms", name="batch_max_wait_ms", type=float)
@setting("--batch-latency-target-ms", name="batch_latency_target_ms", type=float)
@setting("--max-queue", name="max_queue", type=int)
@setting("--request-timeout", name="request_timeout_seconds", type=float)
@setting("--header-timeout", name="header_timeout_seconds", type=float)
@setting("--max-connections", name="max_connections", type=int)
@setting("--async-broker", name="async_broker", metavar="URL")
@setting("--async-consumers/--no-async-consumers", name="async_consumers")
@click.option("--extra-fields", "extra_fields", multiple=True, metavar="[NAME=]POLICY",
              help=setting_help("extra_fields") + " Repeatable.")
@setting("--cache-size", name="cache_size", type=int)
@setting("--cache-ttl", name="cache_ttl_seconds", type=float)
@setting("--log-level", name="log_level", type=click.Choice(["debug", "info", "warning", "error"]))
@setting("--log-format", name="log_format", type=click.Choice(["text", "json"]))
@click.option("--insecure", is_flag=True, default=None,
              help=field_doc(SecurityConfig, "insecure") + f" Env: {ENV_PREFIX}SECURITY__INSECURE. Default: False.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, /, models: tuple[str, ...], config_file: Path | None, **options: Any) -> None:
    """Serve MODELS (name, name@alias or name:VERSION); none given serves the settings' `models:`,
    else every registered model.

    A bare name in a URL means the reference the server was started with, so
    `shipyard serve fraud@champion` answers /v2/models/fraud/infer with the
    champion; /v2/models/fraud@challenger/infer and /v2/models/fraud/versions/2/infer
    address others. Alias moves reach a running server within a few seconds.
    Settings come from -c FILE (shipyard.yaml), then SHIPYARD_* variables, then these flags.

    Inference graphs declared in the file's `graph:` block are registered first (a graph
    whose steps and their versions did not change keeps its version) and served beside
    MODELS: each is a model name whose steps run as model calls of their own.

    \b
    --workers N (N > 1) runs N whole server processes on the same port(s) under this one,
    which restarts a worker that dies (the requests it held are lost with their connections)
    and, on SIGTERM/SIGINT, lets every worker drain. Each worker loads the models (N times
    the memory). /metrics sums every worker. Per worker, not shared: /v2/models/stats
    (the statistics of the worker that answers), the response cache, rate limits,
    --max-connections and --max-queue (each worker applies its own, so N times as much).
    """
    extra_fields = options.pop("extra_fields")
    options["extra_fields"] = ",".join(extra_fields) if extra_fields else None
    insecure = options.pop("insecure")
    settings = load_settings(ctx, config_file, **options)
    if insecure:
        settings = settings.replace(security=dataclasses.replace(settings.security, insecure=True))
    setup_logging(settings.log_level, settings.log_format)
    served = list(models) or [m.ref for m in settings.models]
    if settings.graphs:  # registered (an unchanged one reused) before any worker starts, then served too
        graph_refs = register_graphs(settings)
        if served:
            served += [r for r in graph_refs if ModelRef.parse(r).name not in {ModelRef.parse(s).name for s in served}]
    run_server(settings, served, access_log=settings.access_log, grpc_port=settings.grpc_port,
               configure_logging=functools.partial(setup_logging, settings.log_level, settings.log_format))
