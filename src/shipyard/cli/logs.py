"""``shipyard logs``: the recorded predictions of a model, newest last."""

from __future__ import annotations

import click
import orjson

from shipyard.cli._output import console, handle_errors, settings_from, table
from shipyard.monitoring.predlog import parse_since, read_predictions

_CELL = 60  # characters of inputs/outputs shown per table cell


@click.command()
@click.argument("model")
@click.option("--since", default=None, metavar="DURATION|TIME",
              help="Only predictions after this: a duration ago (30s, 15m, 2h, 7d) or an ISO-8601 time (UTC "
                   "unless it names a zone).")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="Only this version.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show at most this many (the newest).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True,
              help="A table, or one JSON record per line.")
@click.option("--sink", default=None, metavar="URL",
              help="The prediction log to read: a database URL (postgresql://, sqlite:///). Default: the "
                   "configured sink, else the files under SHIPYARD_HOME/predictions.")
@click.pass_context
@handle_errors
def logs(ctx: click.Context, model: str, since: str | None, version: int | None, limit: int, fmt: str,
         sink: str | None) -> None:
    """The predictions recorded for MODEL (server started with the prediction log on)."""
    records = read_predictions(settings_from(ctx), model, sink=sink,
                               since=None if since is None else parse_since(since), version=version, limit=limit)
    if fmt == "jsonl":
        for record in records:
            click.echo(orjson.dumps(record).decode())
        return
    if not records:
        console.print(f"no predictions recorded for {model}" + (" in that window" if since else ""))
        return
    table(None, ["time", "prediction id", "version", "route", "outcome", "ms", "inputs", "outputs"],
          [[r["time"], r["prediction_id"], r["version"], r["route"], r["outcome"], r["latency_ms"],
            _cell(r.get("inputs")), _cell(r.get("outputs"))] for r in records])


def _cell(value: object) -> str:
    text = "" if value is None else orjson.dumps(value).decode()
    return text if len(text) <= _CELL else text[:_CELL - 1] + "…"
