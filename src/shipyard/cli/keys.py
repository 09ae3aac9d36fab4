"""``shipyard keys``: create, list and revoke the API keys a server with ``security.auth`` accepts.

Keys live in the registry database; a server re-reads them every ``security.auth.refresh_seconds``.
"""

from __future__ import annotations

import time

import click

from shipyard.cli._output import console, err_console, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry
from shipyard.security.keys import ApiKey, KeyStore, iso, parse_expiry
from shipyard.security.principal import SCOPES


@click.group()
def keys() -> None:
    """API keys for servers with security.auth on: create, list, revoke.

    \b
    shipyard keys create ci --scope predict --model fraud --expires 90d
    shipyard keys list
    shipyard keys revoke ci
    """


@keys.command(short_help="Create a key and print its token (once).")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="What the key may do; repeat for several (admin implies the others).")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="A model the key may use; repeat for several (default: every model).")
@click.option("--expires", default=None, metavar="WHEN",
              help="When the key stops working: a duration from now (12h, 30d, 4w) or a date or time "
                   "(2027-01-31 is 00:00 UTC that day). Default: never.")
@click.option("--rate", type=click.FloatRange(min=0), default=None, metavar="PER_SECOND",
              help="Requests per second the key may make, instead of security.auth.rate_limit_per_second.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its token as JSON.")
@click.pass_context
@handle_errors
def create(ctx: click.Context, name: str, scopes: tuple[str, ...], models: tuple[str, ...], expires: str | None,
           rate: float | None, as_json: bool) -> None:
    """Create key NAME and print its token, once: only its hash is stored.

    The token alone goes to standard output (TOKEN=$(shipyard keys create ...) keeps just it);
    what was created, and the reminder, go to standard error. Clients send it as
    "Authorization: Bearer TOKEN".
    """
    registry = Registry.from_settings(settings_from(ctx))
    try:
        store = KeyStore(registry.database)
        expires_at = None if expires is None else parse_expiry(expires, time.time())
        key, token = store.create(name, scopes, models=models or None, expires_at=expires_at, rate_per_second=rate)
    finally:
        registry.close()
    if as_json:
        print_json({**key.to_dict(time.time()), "token": token})
    else:
        err_console.print(f"created API key {key.name} (id {key.key_id}): {_describe(key)}", highlight=False,
                          soft_wrap=True)
        click.echo(token)
    err_console.print("[bold]Store this token now: it will not be shown again.[/]", soft_wrap=True)


@keys.command("list", short_help="List keys (never their secrets).")
@click.option("--all", "show_all", is_flag=True, help="Revoked and expired keys too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def list_(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Active keys, oldest first: id, name, scopes, models, rate, created, expires, status (never a secret)."""
    registry = Registry.from_settings(settings_from(ctx))
    try:
        found = KeyStore(registry.database).list(include_revoked=show_all)
    finally:
        registry.close()
    now = time.time()
    shown = found if show_all else [k for k in found if k.status(now) == "active"]
    if as_json:
        print_json({"keys": [k.to_dict(now) for k in shown]})
        return
    if not shown:
        console.print("no API keys" if show_all else "no active API keys (--all shows revoked and expired ones)")
        return
    table(None, ["id", "name", "scopes", "models", "rate", "created", "expires", "status"],
          [[k.key_id, k.name, ",".join(k.scopes), "*" if k.models is None else ",".join(k.models),
            "" if k.rate_per_second is None else f"{k.rate_per_second:g}/s", _time(k.created_at),
            _time(k.expires_at) or "never", k.status(now)] for k in shown])


@keys.command()
@click.argument("key", metavar="KEY_ID_OR_NAME")
@click.pass_context
@handle_errors
def revoke(ctx: click.Context, key: str) -> None:
    """Revoke a key, by id or by the name of an active key.

    Servers refuse it from their next re-read of the keys (security.auth.refresh_seconds).
    Revoking a revoked key does nothing.
    """
    registry = Registry.from_settings(settings_from(ctx))
    try:
        revoked = KeyStore(registry.database).revoke(key)
    finally:
        registry.close()
    console.print(f"API key {revoked.name} (id {revoked.key_id}) revoked at {_time(revoked.revoked_at)}",
                  highlight=False, soft_wrap=True)


def _describe(key: ApiKey) -> str:
    models = "every model" if key.models is None else "models " + ", ".join(key.models)
    rate = "" if key.rate_per_second is None else f"; {key.rate_per_second:g} requests/s"
    return f"scopes {', '.join(key.scopes)}; {models}; expires {_time(key.expires_at) or 'never'}{rate}"


def _time(at: float | None) -> str:
    shown = iso(at)
    return "" if shown is None else shown.replace("T", " ")
