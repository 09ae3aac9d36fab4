"""``shipyard serve``: the online server (Open Inference Protocol REST + simple JSON API)."""

from __future__ import annotations

from typing import Any

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
@click.option("--workers", type=int, default=None,
              help="Model worker processes (1: the model runs in the server process). "
                   "Env: SHIPYARD_WORKERS. Default: one per CPU core")
@click.option("--runtime", type=click.Choice(["auto", "native", "onnx"]), default=None,
              help="native: the model's own library; onnx: compiled to ONNX Runtime when the outputs match "
                   "on the version's check set (else native, with the reason logged); auto: onnx where it "
                   "helps. Env: SHIPYARD_RUNTIME.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--grpc-port", type=int, default=None,
              help="Also serve the Open Inference Protocol over gRPC on this port, same process and models "
                   "(extra 'grpc'; 0 = any free). Default: off")
@click.option("--batching/--no-batching", default=None,
              help="Merge concurrent requests into one model call. Env: SHIPYARD_BATCHING. Default: off")
@click.option("--batch-max-size", type=int, default=None, help="Rows per batched call. Default: 64")
@click.option("--batch-max-wait-ms", type=float, default=None,
              help="How long an idle model waits to fill a batch. Default: 0 (batches form from queued requests)")
@click.option("--batch-latency-target-ms", type=float, default=None,
              help="Adapt the batch size (AIMD) to keep batch latency under this.")
@click.option("--max-queue", type=int, default=None,
              help="Requests per model waiting or running before 503 + Retry-After. Default: 256")
@click.option("--request-timeout", "request_timeout_seconds", type=float, default=None,
              help="Seconds before an unanswered request gets 504 (0: none). Default: 30")
@click.option("--header-timeout", "header_timeout_seconds", type=float, default=None,
              help="Seconds a connection may take to send a request's headers before it gets 408 and is "
                   "closed (0: no limit). Env: SHIPYARD_HEADER_TIMEOUT_SECONDS. Default: 10")
@click.option("--max-connections", type=int, default=None,
              help="Open HTTP connections at most; more are answered 503 and closed. "
                   "Env: SHIPYARD_MAX_CONNECTIONS. Default: 1000")
@click.option("--async-broker", default=None, metavar="URL",
              help="Broker of asynchronous requests (POST /v1/models/NAME/jobs): requests go to "
                   "TOPIC.requests.NAME, results to TOPIC.results; 'off' turns them off. "
                   "Env: SHIPYARD_ASYNC_BROKER. Default: local://shipyard (embedded, in SHIPYARD_HOME)")
@click.option("--async-consumers/--no-async-consumers", default=None,
              help="Predict asynchronous requests in this server, or leave them to `shipyard stream` "
                   "processes. Env: SHIPYARD_ASYNC_CONSUMERS. Default: in this server")
@click.option("--extra-fields", "extra_fields", multiple=True, metavar="[NAME=]POLICY",
              help="What /v1 predict, GraphQL and asynchronous requests do with record fields beside the inputs: "
                   "refuse (400), ignore, or passthrough (returned beside each prediction). POLICY applies to every "
                   "model, NAME=POLICY to one (repeatable). Env: SHIPYARD_EXTRA_FIELDS (comma-separated). "
                   "Default: each version's own (`register --extra-fields`, else refuse)")
@click.option("--cache-size", type=int, default=None, help="Response cache entries (0: off). Default: 0")
@click.option("--cache-ttl", "cache_ttl_seconds", type=float, default=None, help="Cache entry lifetime. Default: 300")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Env: SHIPYARD_LOG_LEVEL. Default: info")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]), help="Env: SHIPYARD_LOG_FORMAT.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, /, models: tuple[str, ...], access_log: bool, grpc_port: int | None,
          **options: Any) -> None:
    """Serve MODELS (name, name@alias or name:VERSION); none given serves every registered model.

    A bare name in a URL means the reference the server was started with, so
    `shipyard serve fraud@champion` answers /v2/models/fraud/infer with the
    champion; /v2/models/fraud@challenger/infer and /v2/models/fraud/versions/2/infer
    address others. Alias moves reach a running server within a few seconds.
    Every option also has a SHIPYARD_* environment variable (upper-case, '-' as '_').
    """
    extra_fields = options.pop("extra_fields")
    options["extra_fields"] = ",".join(extra_fields) if extra_fields else None
    settings = settings_from(ctx).replace(**options)
    setup_logging(settings.log_level, settings.log_format)
    run_server(settings, list(models), access_log=access_log, grpc_port=grpc_port)
