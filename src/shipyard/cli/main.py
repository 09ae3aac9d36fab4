"""The ``shipyard`` command group. Each noun lives in its own module."""

from __future__ import annotations

from pathlib import Path

import click

from shipyard import __version__
from shipyard.cli import (
    alerts,
    alias,
    audit,
    batch,
    config,
    drift,
    experiment,
    export,
    keys,
    logs,
    models,
    predict,
    profile,
    quickstart,
    register,
    rollout,
    serve,
    stream,
)
from shipyard.cli._output import handle_errors
from shipyard.config import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="shipyard")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Registry folder (SQLite + artifacts). Env: SHIPYARD_HOME. Default: ./.shipyard",
)
@click.option("--registry-url", default=None,
              help="SQLAlchemy URL of the registry database. Env: SHIPYARD_REGISTRY_URL")
@click.option("--artifacts", default=None, help="fsspec URL of the artifact store. Env: SHIPYARD_ARTIFACTS")
@click.pass_context
@handle_errors
def cli(ctx: click.Context, home: Path | None, registry_url: str | None, artifacts: str | None) -> None:
    """shipyard: register a model once; serve it, batch it, stream it, ship it.

    \b
    Start here:   shipyard quickstart
    Register:     shipyard register fraud model.skops --sample rows.csv
    Serve:        shipyard serve fraud@champion --port 8000
    Stream:       shipyard stream fraud@champion --source kafka://HOST:9092/in --sink kafka://HOST:9092/out
    """
    ctx.ensure_object(dict)
    ctx.obj["settings"] = Settings.from_env(home=home, registry_url=registry_url, artifacts=artifacts)


cli.add_command(quickstart.quickstart)
cli.add_command(register.register)
cli.add_command(models.models)
cli.add_command(alias.alias)
cli.add_command(alias.rollback)
cli.add_command(rollout.rollout)
cli.add_command(serve.serve)
cli.add_command(predict.predict)
cli.add_command(batch.batch)
cli.add_command(stream.stream)
cli.add_command(export.export)
cli.add_command(export.bundle)
cli.add_command(config.config)
cli.add_command(logs.logs)
cli.add_command(experiment.experiment)
cli.add_command(profile.profile)
cli.add_command(alerts.alerts)
cli.add_command(drift.drift)
cli.add_command(keys.keys)
cli.add_command(audit.audit)


def main() -> None:
    cli(prog_name="shipyard")
