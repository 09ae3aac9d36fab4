"""``shipyard config show|check``: the merged settings (file < SHIPYARD_* < flags), or whether they are valid."""

from __future__ import annotations

from pathlib import Path

import click

from shipyard.cli._output import handle_errors
from shipyard.cli.serve import config_option, load_settings
from shipyard.config import render_yaml


@click.group()
def config() -> None:
    """Show or check the settings: shipyard.yaml (-c FILE, else SHIPYARD_CONFIG), SHIPYARD_* and flags."""


@config.command()
@config_option
@click.pass_context
@handle_errors
def show(ctx: click.Context, config_file: Path | None) -> None:
    """Print the merged settings as YAML, secrets masked."""
    click.echo(render_yaml(load_settings(ctx, config_file)), nl=False)


@config.command()
@config_option
@click.pass_context
@handle_errors
def check(ctx: click.Context, config_file: Path | None) -> None:
    """Validate the settings: print ok, or the one-line error and exit 1."""
    load_settings(ctx, config_file)
    click.echo("ok")
