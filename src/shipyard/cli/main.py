"""The ``shipyard`` command group. Each noun lives in its own module.

A command's module is imported when that command runs (or when ``--help`` lists them all):
``shipyard serve`` does not import what ``shipyard batch`` or ``shipyard alerts`` need.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from shipyard import __version__
from shipyard.cli._output import handle_errors
from shipyard.config import Settings

COMMANDS = {
    "quickstart": "quickstart",
    "register": "register",
    "models": "models",
    "alias": "alias",
    "rollback": "alias",
    "rollout": "rollout",
    "serve": "serve",
    "predict": "predict",
    "batch": "batch",
    "stream": "stream",
    "export": "export",
    "bundle": "export",
    "config": "config",
    "logs": "logs",
    "experiment": "experiment",
    "profile": "profile",
    "alerts": "alerts",
    "drift": "drift",
    "keys": "keys",
    "audit": "audit",
    "deploy": "deploy",
    "retrain": "retrain",
    "ui": "ui",
}
"""Each command's name and the module of ``shipyard.cli`` that defines it (under the same name)."""


class _Commands(click.Group):
    """The group, importing a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"shipyard.cli.{COMMANDS[cmd_name]}")
            self.add_command(getattr(module, cmd_name))
        return self.commands.get(cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def main() -> None:
    cli(prog_name="shipyard")
