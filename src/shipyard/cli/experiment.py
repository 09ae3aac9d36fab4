"""``shipyard experiment``: how a traffic policy's arms compare (reads the registry database)."""

from __future__ import annotations

import math

import click

from shipyard.cli._output import console, fail, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry


@click.group()
def experiment() -> None:
    """Reports of traffic policies: splits, canaries, bandits."""


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@handle_errors
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every model with a traffic policy: kind, state, revision and arms."""
    from shipyard.rollout.experiments import Experiments

    registry = Registry.from_settings(settings_from(ctx))
    try:
        summaries = Experiments(registry.database).summaries()
    finally:
        registry.close()
    if as_json:
        print_json({"experiments": summaries})
        return
    if not summaries:
        console.print("no traffic policies")
        return
    table(None, ["model", "kind", "state", "revision", "step", "arms"],
          [[s["model"], s["kind"], s["state"], s["revision"], s["step"],
            ", ".join(f"{a['name']}={a['weight']:g}" + (" (shadow)" if a["role"] == "shadow" else "")
                      for a in s["arms"])] for s in summaries])


@experiment.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--since", default=None, metavar="DURATION|TIME",
              help="Only counts from windows starting after this: a duration ago (15m, 2h, 7d) or an ISO-8601 "
                   "time. Default: the whole current policy revision.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Level of the tests and intervals.")
@click.pass_context
@handle_errors
def report(ctx: click.Context, name: str, as_json: bool, since: str | None, alpha: float) -> None:
    """How the arms of NAME's traffic policy compare, at its current revision."""
    from shipyard.monitoring.predlog import parse_since
    from shipyard.rollout.experiments import ExperimentNotFound, Experiments

    registry = Registry.from_settings(settings_from(ctx))
    try:
        try:
            result = Experiments(registry.database).report(
                name, since=None if since is None else parse_since(since), alpha=alpha)
        except ExperimentNotFound as exc:
            fail(f"{exc} (see shipyard experiment list)")
            return
    finally:
        registry.close()
    if as_json:
        print_json(result.to_dict())
        return
    title = f"{result.model}: {result.kind}, {result.state}, revision {result.revision}"
    if result.kind == "canary":
        title += f", step {result.step}"
    if result.elapsed_seconds is not None:
        title += f", {_duration(result.elapsed_seconds)} of counts"
    table(title, ["arm", "role", "requests", "share (plan)", "errors [CI]", "ms mean/p99", "reward [CI]"],
          [[a.arm, "control" if a.arm == result.control else a.role, a.n,
            f"{_pct(a.share)} ({_pct(a.planned_share)})",
            f"{_pct(a.error_rate.value, 2)} [{_pct(a.error_rate.lower, 2)}, {_pct(a.error_rate.upper, 2)}]",
            f"{_num(a.mean_latency.value * 1000, 1)}/{_num(a.p99_latency * 1000, 1)}",
            "" if not a.reward_n else f"{_num(a.reward.value, 3)} [{_num(a.reward.lower, 3)}, "
                                      f"{_num(a.reward.upper, 3)}]"] for a in result.arms])
    if result.comparisons:
        table(f"against {result.control}", ["arm", "metric", "lift [CI]", "p", "p always valid", "p BH"],
              [[c.arm, c.metric,
                f"{_pct(c.relative.value)} [{_pct(c.relative.lower)}, {_pct(c.relative.upper)}]",
                _num(c.p_value, 4), _num(c.sequential_p_value, 4),
                _num(c.adjusted_p_value, 4) + (" *" if c.significant else "")] for c in result.comparisons])
        console.print(f"lift: relative to {result.control}; * significant after Benjamini-Hochberg at "
                      f"alpha {result.alpha:g}", highlight=False)
    if result.srm is not None:
        verdict = "MISMATCH: the split is off, comparisons are suspect" if result.srm.mismatch else "ok"
        console.print(f"sample ratio: p = {_num(result.srm.p_value, 4)} ({verdict})", highlight=False)
    if result.regret is not None:
        console.print(f"regret (estimated): {result.regret:.4g} rewards lost against always playing the "
                      "best-looking arm", highlight=False)
    for p in result.planning:
        if p.n_needed is None:
            console.print(f"{p.arm} {p.metric}: no baseline to plan from yet", highlight=False)
            continue
        when = "" if p.seconds_to_decision is None else f", about {_duration(p.seconds_to_decision)} to go"
        console.print(f"{p.arm} {p.metric}: {p.n_needed} requests per arm to detect a {_pct(p.target_lift)} lift "
                      f"(have {p.n_so_far}; detectable now {_pct(p.detectable_lift)}){when}", highlight=False)


def _num(value: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def _pct(value: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(value) else f"{value * 100:.{digits}f}%"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
