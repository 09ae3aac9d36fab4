"""``shipyard alerts``: the alert incidents, open ones by default (reads the registry database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from shipyard.cli._output import console, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Past (resolved) incidents too, newest first.")
@click.option("--model", default=None, metavar="NAME", help="Only this model's incidents.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many incidents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (evidence and notifications included).")
@click.pass_context
@handle_errors
def alerts(ctx: click.Context, show_all: bool, model: str | None, limit: int | None, as_json: bool) -> None:
    """Alert incidents: rule, model, version, state, when, value, notifications."""
    from shipyard.monitoring.alerts.store import AlertStore

    registry = Registry.from_settings(settings_from(ctx))
    try:
        incidents = AlertStore(registry.database).list(open_only=not show_all, model=model, limit=limit)
    finally:
        registry.close()
    if as_json:
        print_json({"alerts": [i.to_dict() for i in incidents]})
        return
    if not incidents:
        console.print("no alerts" if show_all else "no open alerts (--all shows past ones)")
        return
    columns = ["id", "rule", "model", "version", "state", "opened", *(["resolved"] if show_all else []),
               "condition", "value", "notified"]
    rows = []
    for i in incidents:
        resolved = [_time(i.resolved_at)] if show_all else []
        rows.append([i.id, i.rule, i.model, "" if i.version is None else i.version, i.state, _time(i.opened_at),
                     *resolved, i.evidence.get("condition", ""), _value(i.evidence.get("value")),
                     ", ".join(f"{k}={v.get('state', '?')}" for k, v in sorted(i.notified.items()))])
    table(None, columns, rows)

def _time(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else ""
