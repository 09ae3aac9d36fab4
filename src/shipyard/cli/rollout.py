"""``shipyard rollout``: start, watch, pause, resume, promote and abort a served name's traffic policy.

Every command changes the policy stored in the registry database; running servers
(every replica on that database) switch to it within ``alias_refresh_seconds``.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path
from typing import Any

import click
import yaml

from shipyard.cli._output import console, handle_errors, print_json, settings_from, table
from shipyard.registry import Registry
from shipyard.rollout import actions
from shipyard.rollout.policy import TrafficPolicy, effective_weights
from shipyard.rollout.store import TrafficStore

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


@click.group()
def rollout() -> None:
    """Traffic across a model's versions: splits, sticky A/B tests, shadows, canaries and bandits.

    \b
    shipyard rollout start fraud --split champion=90,challenger=10 --sticky header:x-user-id
    shipyard rollout start fraud --canary champion:challenger --steps 1,5,20,50,100 --interval 5m
    shipyard rollout start fraud --bandit champion,challenger --shadow candidate=5
    shipyard rollout status fraud
    shipyard rollout promote fraud
    """


def _actor() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _open(ctx: click.Context) -> tuple[Registry, TrafficStore]:
    registry = Registry.from_settings(settings_from(ctx))
    return registry, TrafficStore(registry.database)


def seconds(text: str) -> float:
    """``300``, ``300s``, ``5m``, ``1.5h``, ``250ms`` -> seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30s, 5m, 1h)")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m[2]]
    return float(m[1]) * scale


def _pairs(text: str, what: str) -> list[tuple[str, float]]:
    """``a=90,b=10`` -> [(a, 90), (b, 10)]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            raise click.BadParameter(f"{what}: {part!r} is not ARM=PERCENT") from None
        if not eq or not name.strip():
            raise click.BadParameter(f"{what}: {part!r} is not ARM=PERCENT")
    return out


def _policy_from_flags(model: str, split: str | None, canary: str | None, bandit: str | None,
                       shadow: tuple[str, ...], sticky: str | None, steps: str | None, interval: str | None,
                       gate: tuple[str, ...], on_failure: str, algorithm: str, reward: str, floor: float,
                       cadence: str) -> dict[str, Any]:
    given = [x for x in (split, canary, bandit) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --split, --canary, --bandit (or --file)")
    data: dict[str, Any] = {"model": model, "sticky": sticky}
    if split:
        data["arms"] = [{"target": a, "percent": w} for a, w in _pairs(split, "--split")]
    elif canary:
        stable, colon, candidate = canary.partition(":")
        if not colon or not stable or not candidate:
            raise click.BadParameter("--canary is STABLE:CANDIDATE, e.g. champion:challenger")
        data["arms"] = [{"target": stable, "weight": 1}, {"target": candidate, "weight": 0}]
        plan: dict[str, Any] = {"stable": stable, "candidate": candidate, "on_failure": on_failure,
                                "gates": dict(_gate(g) for g in gate)}
        if steps:
            try:
                plan["steps"] = [float(s) / 100 for s in steps.split(",")]
            except ValueError:
                raise click.BadParameter(f"--steps: {steps!r} is not a list of percents") from None
        if interval:
            plan["interval_seconds"] = seconds(interval)
        data["canary"] = plan
    elif bandit:
        data["arms"] = [{"target": a.strip(), "weight": 1} for a in bandit.split(",") if a.strip()]
        data["bandit"] = {"algorithm": algorithm, "reward": reward, "floor": floor,
                          "cadence_seconds": seconds(cadence)}
    data["shadow"] = [{"target": a, "percent": w} for a, w in _pairs(",".join(shadow), "--shadow")]
    return data


def _gate(text: str) -> tuple[str, float]:
    name, eq, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise click.BadParameter(f"--gate: {text!r} is not NAME=NUMBER") from None


@rollout.command()
@click.argument("model")
@click.option("--split", help="Arms and percents: champion=90,challenger=10 (aliases or version numbers).")
@click.option("--canary", help="STABLE:CANDIDATE arms of a canary (aliases; the stable one is promoted to).")
@click.option("--bandit", help="Arms a bandit spreads traffic over: champion,challenger.")
@click.option("--shadow", multiple=True, help="ARM=PERCENT copied to a shadow arm (repeatable).")
@click.option("--sticky", help="header:NAME or field:NAME: the same key always gets the same arm.")
@click.option("--steps", help="Canary: the candidate's percent at each step (default 1,5,20,50,100).")
@click.option("--interval", help="Canary: the least time a step lasts (default 5m).")
@click.option("--gate", multiple=True, help="Canary gate setting NAME=NUMBER (repeatable).")
@click.option("--on-failure", type=click.Choice(["rollback", "pause"]), default="rollback", show_default=True,
              help="Canary: what a failed gate does.")
@click.option("--algorithm", type=click.Choice(["thompson", "epsilon_greedy"]), default="thompson",
              show_default=True, help="Bandit algorithm.")
@click.option("--reward", type=click.Choice(["binary", "gaussian"]), default="binary", show_default=True,
              help="Bandit: binary rewards (feedback labels) or real-valued ones.")
@click.option("--floor", type=float, default=0.05, show_default=True, help="Bandit: the least share of an arm.")
@click.option("--reward-from", help="Where arms' rewards come from: output:NAME (a metric of each prediction) or "
              "feedback (labels sent later); reported per arm, and what a bandit maximizes.")
@click.option("--cadence", default="60s", show_default=True, help="Bandit: how often weights are recomputed.")
@click.option("--file", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML traffic block (as under models[].traffic in shipyard.yaml) instead of the flags.")
@click.option("--reason", default="", help="Why; kept in the policy's history.")
@click.pass_context
@handle_errors
def start(ctx: click.Context, model: str, split: str | None, canary: str | None, bandit: str | None,
          shadow: tuple[str, ...], sticky: str | None, steps: str | None, interval: str | None,
          gate: tuple[str, ...], on_failure: str, algorithm: str, reward: str, floor: float,
          reward_from: str | None, cadence: str, policy_file: Path | None, reason: str) -> None:
    """Give MODEL a traffic policy (replacing the one it has); servers switch to it within seconds."""
    if policy_file is not None:
        data = yaml.safe_load(policy_file.read_text()) or {}
        if not isinstance(data, dict):
            raise click.BadParameter(f"{policy_file} must hold a mapping (a traffic block)")
        data = {**data, "model": model}
    else:
        data = _policy_from_flags(model, split, canary, bandit, shadow, sticky, steps, interval, gate,
                                  on_failure, algorithm, reward, floor, cadence)
        data["reward"] = reward_from
    policy = TrafficPolicy.from_dict(data)
    registry, store = _open(ctx)
    try:
        stored = actions.start(store, registry, policy, actor=_actor(), reason=reason or "started")
    finally:
        registry.close()
    console.print(f"{model}: {stored.kind} policy revision {stored.revision} stored; servers switch to it "
                  "within alias_refresh_seconds")
    _show(stored)


def _show(policy: TrafficPolicy) -> None:
    weights = effective_weights(policy)
    rows = [[a.name, a.target, a.role, f"{100 * (weights.get(a.name, 0.0) if a.role == 'primary' else a.weight):.1f}%"]
            for a in policy.arms]
    table(f"{policy.model}: {policy.kind}, {policy.state}, revision {policy.revision}",
          ["arm", "target", "role", "share"], rows)
    if policy.canary is not None:
        c = policy.canary
        console.print(f"canary step {policy.step + 1} of {len(c.steps)} "
                      f"({', '.join(f'{100 * s:g}%' for s in c.steps)}), interval {c.interval_seconds:g}s, "
                      f"on failure {c.on_failure}")
    if policy.sticky:
        console.print(f"sticky by {policy.sticky}")
    if policy.reason:
        console.print(f"reason: {policy.reason}")


@rollout.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the policy and its history as JSON.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, model: str, as_json: bool) -> None:
    """MODEL's traffic policy now, and every change made to it."""
    registry, store = _open(ctx)
    try:
        policy = actions.current(store, model)
        history = store.history(model)
    finally:
        registry.close()
    if as_json:
        print_json({"policy": policy.to_dict(),
                    "history": [{"revision": h.revision, "state": h.state, "at": h.at, "actor": h.actor,
                                 "reason": h.reason, "step": h.policy.step} for h in history]})
        return
    _show(policy)
    table("history", ["when", "revision", "state", "step", "by", "reason"],
          [[h.at[:19], h.revision, h.state, h.policy.step + 1 if h.policy.canary else "", h.actor or "",
            h.reason] for h in history])


def _state_command(name: str, state: str, doc: str) -> None:
    @rollout.command(name=name, help=doc)
    @click.argument("model")
    @click.option("--reason", default="", help="Why; kept in the policy's history.")
    @click.pass_context
    @handle_errors
    def command(ctx: click.Context, model: str, reason: str) -> None:
        registry, store = _open(ctx)
        try:
            stored = actions.set_state(store, model, state, actor=_actor(), reason=reason)  # type: ignore[arg-type]
        finally:
            registry.close()
        console.print(f"{model}: {stored.state} (revision {stored.revision})")


_state_command("pause", "paused", "Hold MODEL's rollout where it is (the controller stops moving it).")
_state_command("resume", "running", "Let a paused rollout of MODEL go on.")
_state_command("abort", "aborted", "End MODEL's rollout: all traffic back on the stable arm, no alias moved.")


@rollout.command()
@click.argument("model")
@click.option("--arm", help="The arm to promote (default: the canary's candidate, or the only other arm).")
@click.option("--reason", default="", help="Why; kept in the policy's history.")
@click.option("--force", is_flag=True, help="Move the alias even when a promotion gate fails (logged as forced).")
@click.pass_context
@handle_errors
def promote(ctx: click.Context, model: str, arm: str | None, reason: str, force: bool) -> None:
    """Move the stable arm's alias to ARM's version and end the rollout (`shipyard rollback` undoes the move).

    The promotion gates run first (signature, holdout accuracy, latency budget: see `shipyard alias`);
    a failed gate refuses the promotion unless --force.
    """
    registry, store = _open(ctx)
    try:
        stored, move = actions.promote(store, registry, model, arm, actor=_actor(), reason=reason, force=force)
    finally:
        registry.close()
    if move is not None:
        console.print(f"{model}@{move.alias} -> version {move.version} (was {move.previous})")
    console.print(f"{model}: rollout {stored.state} (revision {stored.revision}): {stored.reason}")
