"""``shipyard alias`` and ``shipyard rollback``: move aliases, keep their history.

Pointing an alias at a version runs the promotion gates first
(``shipyard.rollout.gates``); a failed gate refuses the move unless ``--force``.
Either way the outcome is logged with who asked and whether it was forced.
Rollback and ``--delete`` are not gated: they undo, and must work when a model
cannot be loaded.
"""

from __future__ import annotations

import getpass

import click

from shipyard.cli._output import console, err_console, fail, handle_errors, settings_from, table
from shipyard.registry import Registry
from shipyard.rollout.actions import record_refusal
from shipyard.rollout.gates import METRICS, GateReport, log_outcome, promotion_gates


@click.command()
@click.argument("name")
@click.argument("alias_name", required=False, metavar="ALIAS")
@click.argument("version", required=False, type=int)
@click.option("--delete", is_flag=True, help="Remove ALIAS.")
@click.option("--force", is_flag=True,
              help="Move the alias even when a promotion gate fails (the failures are printed and logged).")
@click.option("--accuracy-margin", type=float, default=0.01, show_default=True,
              help="How much worse than the current version VERSION may score on the holdout set.")
@click.option("--latency-budget-ms", type=float, default=None,
              help="Most VERSION's median prediction on its stored sample may take "
                   "(default: its latency_budget_ms tag; none skips the gate).")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="Holdout metric (default: accuracy for label outputs, mae for float outputs).")
@click.pass_context
@handle_errors
def alias(ctx: click.Context, name: str, alias_name: str | None, version: int | None, delete: bool,
          force: bool, accuracy_margin: float, latency_budget_ms: float | None, metric: str | None) -> None:
    """Point ALIAS of model NAME at VERSION; with only NAME, show aliases and their history.

    Before the move, VERSION must pass the promotion gates against the version
    ALIAS points at now: the same inputs and outputs, a holdout score no worse
    than the current one's minus --accuracy-margin, and a latency budget. A
    failed gate refuses the move (exit 1) unless --force.

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
            table("history", ["when", "alias", "action", "from", "to", "by", "note"],
                  [[m.moved_at[:19], m.alias, m.action, m.previous, m.version, m.actor or "", m.note or ""]
                   for m in reg.alias_history(name)])
            return
        if delete:
            move = reg.delete_alias(name, alias_name, actor=current_actor())
            console.print(f"deleted {name}@{alias_name} (was version {move.previous})")
            return
        if version is None:
            raise click.UsageError("give the VERSION to point the alias at (or --delete)")
        actor = current_actor()
        report = promotion_gates(reg, name, alias_name, version, accuracy_margin=accuracy_margin,
                                 latency_budget_ms=latency_budget_ms, metric=metric)
        log_outcome(report, actor=actor, forced=force and not report.passed)
        print_report(report)
        if not report.passed and not force:
            record_refusal(reg.database, report)
            fail(f"{name}@{alias_name} was not moved to version {version}: "
                 f"{len(report.failures)} promotion gate(s) failed (--force moves it anyway)")
        move = reg.set_alias(name, alias_name, version, actor=actor, note=report.note(forced=force))
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
        move = reg.rollback(name, alias_name, actor=current_actor())
    finally:
        reg.close()
    console.print(f"rolled back {name}@{alias_name}: version {move.previous} -> {move.version}")


def print_report(report: GateReport) -> None:
    """One line per gate; failures go to stderr, where the refusal is printed too."""
    for r in report.results:
        if not r.passed:
            err_console.print(f"[bold red]gate {r.name} failed:[/] {r.detail}", highlight=False, soft_wrap=True)
        else:
            console.print(f"gate {r.name} {'skipped' if r.skipped else 'passed'}: "
                          f"{r.detail.removeprefix('skipped: ')}", highlight=False, soft_wrap=True)


def current_actor() -> str | None:
    """The OS user, recorded in the alias history as who moved it (None where it cannot be told)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None
