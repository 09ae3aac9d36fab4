"""``shipyard audit``: the admin actions recorded in the registry database, and ``audit verify`` of its chain."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime

import click

from shipyard.cli._output import console, err_console, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry
from shipyard.security.audit import AuditLog

EXIT_BROKEN = 3
"""Exit code of ``audit verify`` when the chain is broken (1 is any error, as for every command; 2 a usage error)."""


def _expect(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+):([0-9a-fA-F]{64})\s*", value)
    if match is None:
        raise click.BadParameter(f"takes SEQ:HASH as `shipyard audit verify` printed it (e.g. 42:9f86d0...), "
                                 f"got '{value}'")
    return int(match.group(1)), match.group(2).lower()


@click.group(invoke_without_command=True)
@click.option("--action", default=None, metavar="A",
              help="Only this action (alias.set) or family (alias: alias.set, alias.delete, alias.rollback).")
@click.option("--target", default=None, metavar="T",
              help="Only this target (fraud@champion, fraud:3) or every target of a model (fraud).")
@click.option("--actor", default=None, metavar="X", help="Only what this actor did (a key's name, a user).")
@click.option("--since", default=None, metavar="DURATION|TIME",
              help="Only entries after this: a duration ago (30s, 15m, 2h, 7d) or an ISO-8601 time (UTC unless it "
                   "names a zone), e.g. 2026-12-01.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (details and hashes included).")
@click.pass_context
@handle_errors
def audit(ctx: click.Context, action: str | None, target: str | None, actor: str | None, since: str | None,
          limit: int, as_json: bool) -> None:
    """Admin actions, newest first: time, actor, source, action, target, outcome.

    Registrations, alias moves, rollout changes, refused promotions, API keys and
    configuration changes are recorded in the registry database, in the same
    transaction as the action, each entry chained to the one before by a sha256.

    \b
    shipyard audit --target fraud --since 7d
    shipyard audit --action alias --json
    shipyard audit verify                      # is the chain intact?
    """
    if ctx.invoked_subcommand is not None:
        return
    from shipyard.monitoring.predlog import parse_since

    registry = Registry.from_settings(settings_from(ctx))
    try:
        events = AuditLog(registry.database).read(action=action, target=target, actor=actor,
                                                  since=None if since is None else parse_since(since), limit=limit)
    finally:
        registry.close()
    if as_json:
        print_json({"entries": [e.to_dict() for e in events]})
        return
    if not events:
        filtered = any(v is not None for v in (action, target, actor, since))
        console.print("no audit entries" + (" match" if filtered else " yet"))
        return
    table(None, ["seq", "time", "actor", "source", "action", "target", "outcome"],
          [[e.seq, _time(e.at), e.actor, e.source, e.action, e.target, e.outcome] for e in events])


@audit.command()
@click.option("--expect", default=None, callback=_expect, metavar="SEQ:HASH",
              help="An entry noted earlier (from a previous verify): it must still be in the log with this hash. "
                   "Catches the end cut off together with the head rewritten.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def verify(ctx: click.Context, expect: tuple[int, str] | None, as_json: bool) -> None:
    """Check the audit log's chain: every entry's hash, no gaps, nothing cut off the end.

    \b
    Exit codes: 0 intact; 3 broken (which entry and why); 1 an error; 2 a usage error.
    """
    registry = Registry.from_settings(settings_from(ctx))
    try:
        report = AuditLog(registry.database).verify(expect)
    finally:
        registry.close()
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        console.print(f"intact: {report.checked} entries, head {report.head_seq} {report.head_hash}", highlight=False,
                      soft_wrap=True)
        if report.head_seq:
            console.print(f"keep '{report.head_seq}:{report.head_hash}' outside this database (a ticket, another "
                          "system) and pass it as --expect later: someone who can rewrite the head could "
                          "otherwise cut entries off the end unnoticed", highlight=False, soft_wrap=True)
    else:
        err_console.print(f"[bold red]broken at entry {report.first_bad}:[/] {report.reason} "
                          f"({report.checked} entries intact before it)", highlight=False, soft_wrap=True)
    if not report.ok:
        sys.exit(EXIT_BROKEN)


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
