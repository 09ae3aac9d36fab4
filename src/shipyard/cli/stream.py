"""``shipyard stream``: a consumer-group member that predicts every message of a topic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

import click

from shipyard.cli._output import fail, handle_errors, settings_from, setup_logging
from shipyard.jobs.stream.job import StreamJob
from shipyard.streams.consumer import StreamOptions, StreamStats
from shipyard.types import EXTRA_FIELDS

logger = logging.getLogger("shipyard.stream")


@click.command()
@click.argument("model")
@click.option("--source", required=True, metavar="URL",
              help="Where messages come from: kafka://HOST:PORT/TOPIC, redis://HOST:PORT/STREAM, "
                   "nats://HOST:PORT/SUBJECT or local://NAME (embedded, in SHIPYARD_HOME).")
@click.option("--sink", required=True, metavar="URL", help="Where results go; same URL forms as --source.")
@click.option("--dead-letter", "dead_letter", metavar="URL", default=None,
              help="Where messages that cannot be predicted go, with the reason. Default: the source's "
                   "topic + '.dlq' on the source's broker.")
@click.option("--group", default=None, help="Consumer group: processes in one group share the messages. "
                                            "Default: shipyard-MODELNAME")
@click.option("--consumer", "consumer_name", default=None,
              help="This member's name in the group. Default: HOSTNAME-PID")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most messages per model call.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a started batch waits for more messages.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=4, show_default=True,
              help="Batches read ahead of the model; when full, reading pauses (backpressure).")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics (messages, batch sizes, latency, consumer lag) on this port.")
@click.option("--runtime", type=click.Choice(["auto", "native", "onnx"]), default=None,
              help="As for `shipyard serve`. Env: SHIPYARD_RUNTIME. Default: native")
@click.option("--extra-fields", type=click.Choice(EXTRA_FIELDS), default=None,
              help="What a message does with record fields beside the inputs: refuse (dead letter), ignore, or "
                   "passthrough (copied into the result beside the prediction). Env: SHIPYARD_EXTRA_FIELDS. "
                   "Default: the version's own (`register --extra-fields`, else refuse)")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
              help="Env: SHIPYARD_LOG_LEVEL. Default: info")
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]), help="Env: SHIPYARD_LOG_FORMAT.")
@click.pass_context
@handle_errors
def stream(ctx: click.Context, /, model: str, source: str, sink: str, dead_letter: str | None, group: str | None,
           consumer_name: str | None, batch_size: int, max_wait_ms: float, max_in_flight: int,
           metrics_port: int | None, runtime: str | None, extra_fields: str | None, log_level: str | None,
           log_format: str | None) -> None:
    """Predict every message of --source with MODEL and write the results to --sink.

    \b
    A message is JSON: one record {"feature": value, ...}, a list of records, or
    {"instances": [...]}. Each result is JSON with the input's id and key, the
    prediction(s), the model name and version, and timestamps; its key is the
    input's key (or id). With --extra-fields passthrough it also has
    "passthrough": the record's fields beside the inputs (ids, metadata). A
    message is acknowledged only once its result (or its dead letter) is on the
    broker, so a crash loses nothing: unfinished messages are delivered again,
    and the input id in each result lets readers drop the duplicates. Start
    more processes with the same --group to share the load.
    SIGTERM or Ctrl-C finishes what was read, acknowledges it and exits 0.
    Broker options go in the URL's query, e.g. kafka://h:9092/t?session.timeout.ms=6000
    or redis://h:6379/s?ack_wait=30 (README, "Streaming", lists them all).

    \b
    Example:
      shipyard stream fraud@champion --source kafka://127.0.0.1:9092/payments \\
        --sink kafka://127.0.0.1:9092/payments-scored --batch-size 128
    """
    changes = {k: v for k, v in {"runtime": runtime, "extra_fields": extra_fields, "log_level": log_level,
                                 "log_format": log_format}.items() if v}
    settings = settings_from(ctx).replace(**changes)
    setup_logging(settings.log_level, settings.log_format)
    job = StreamJob.create(
        settings, model, source, sink, dead_letters=dead_letter, group=group, consumer=consumer_name,
        options=StreamOptions(batch_size=batch_size, max_wait_ms=max_wait_ms, max_in_flight=max_in_flight),
    )
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host, registry=job.metrics.registry)
    stats = _event_loop_run(_run(job))
    seconds = time.monotonic() - stats.started
    logger.info("stopped: %d predicted, %d dead letters, %d batches in %.1fs", stats.predicted,
                stats.dead_letters, stats.batches, seconds)
    if stats.unfinished:
        fail(f"{stats.unfinished} message(s) were read but not finished; the broker will deliver them again")


def _event_loop_run(main: Coroutine[Any, Any, StreamStats]) -> StreamStats:
    """Run the job on uvloop where it is installed (it comes with the server's uvicorn[standard]): its
    transports write and read in C, which a consumer making three broker calls a batch feels."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _run(job: StreamJob) -> StreamStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def started() -> None:
        logger.info(
            "streaming %s: %s -> %s (dead letters: %s), group %s, consumer %s",
            job.model, job.source, job.sink, job.dead_letters, job.group, job.consumer,
        )

    report = asyncio.create_task(_report(job, stop))
    try:
        return await job.run(stop, started)
    finally:
        report.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await report
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _report(job: StreamJob, stop: asyncio.Event, every: float = 30.0) -> None:
    """A progress line now and then, so an operator sees the rate without a metrics stack."""
    metrics = job.metrics
    last = 0.0
    while not stop.is_set():
        await asyncio.sleep(every)
        done = sum(s.value for m in metrics.messages.collect() for s in m.samples if s.name.endswith("_total"))
        lag = next((s.value for m in metrics.lag.collect() for s in m.samples), None)
        logger.info("%.0f messages finished (%.0f/s)%s", done, (done - last) / every,
                    "" if lag is None else f", lag {lag:.0f}")
        last = done
