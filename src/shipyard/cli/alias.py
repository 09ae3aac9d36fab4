"""``shipyard alias`` and ``shipyard rollback``: move aliases, keep their history."""

from __future__ import annotations

import getpass

import click

from shipyard.cli._output import console, handle_errors, settings_from, table
from shipyard.registry import Registry


@click.command()
@click.argument("name")
@click.argument("alias_name", required=False, metavar="ALIAS")
@click.argument("version", required=False, type=int)
@click.option("--delete", is_flag=True, help="Remove ALIAS.")
@click.pass_context
@handle_errors
def alias(ctx: click.Context, name: str, alias_name: str | None, version: int | None, delete: bool) -> None:
    """Point ALIAS of model NAME at VERSION; with only NAME, show aliases and their history.

    \b
    shipyard alias fraud champion 3     # fraud@champion -> version 3
    shipyard alias fraud                # current aliases and every past move
    """
    reg = Registry.from_settings(settings_from(ctx))
    try:
        if alias_name is None:
            current = reg.aliases(name)
            reg.versions(name)  # raises ModelNotFound for an unknown name
            table(f"aliases of {name}", ["alias", "version"], sorted(current.items()))
            table("history", ["when", "alias", "action", "from", "to", "by"],
                  [[m.moved_at[:19], m.alias, m.action, m.previous, m.version, m.actor or ""]
                   for m in reg.alias_history(name)])
            return
        if delete:
            move = reg.delete_alias(name, alias_name, actor=_actor())
            console.print(f"deleted {name}@{alias_name} (was version {move.previous})")
            return
        if version is None:
            raise click.UsageError("give the VERSION to point the alias at (or --delete)")
        move = reg.set_alias(name, alias_name, version, actor=_actor())
    finally:
        reg.close()
    was = f" (was {move.previous})" if move.previous is not None else ""
    console.print(f"{name}@{alias_name} -> version {move.version}{was}")


@click.command()
@click.argument("name")
@click.option("--alias", "alias_name", default="champion", show_default=True, help="Alias to move back.")
@click.pass_context
@handle_errors
def rollback(ctx: click.Context, name: str, alias_name: str) -> None:
    """Move NAME's alias back to the version it pointed to before its latest move."""
    reg = Registry.from_settings(settings_from(ctx))
    try:
        move = reg.rollback(name, alias_name, actor=_actor())
    finally:
        reg.close()
    console.print(f"rolled back {name}@{alias_name}: version {move.previous} -> {move.version}")


def _actor() -> str | None:
    """The OS user, recorded in the alias history as who moved it (None where it cannot be told)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None
