"""``shipyard retrain``: run a model's retraining by hand, see a run's status and the model's history."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import console, handle_errors, print_json, settings_from, table
from shipyard.config import Settings
from shipyard.registry import Registry


class _RetrainGroup(click.Group):
    """``shipyard retrain MODEL`` runs; ``status`` and ``history`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RetrainGroup)
def retrain() -> None:
    """Retrain a model on what it served and the labels sent back, then gate, canary and promote it.

    \b
    shipyard retrain fraud --dry-run          the dataset a run would use (counts, window, manifest)
    shipyard retrain fraud                    assemble, train, register, gate, hand to a canary
    shipyard retrain fraud --no-canary        passing gates promote at once
    shipyard retrain fraud --wait             block until promoted/rejected/failed (exit 1 unless promoted)
    shipyard retrain status fraud             the model's newest run (or: status RUN_ID)
    shipyard retrain history fraud            every run of the model, newest first

    The settings come from the model's models: entry in shipyard.yaml (retraining:);
    the training function is retraining.train, --train, or the version's train tag.
    """


def _settings(ctx: click.Context, config: Path | None) -> Settings:
    base = settings_from(ctx)
    if config is None:
        return base
    return Settings.load(config, home=base.home, registry_url=base.registry_url, artifacts=base.artifacts)


def _time(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


_CONFIG = click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                       default=None, help="shipyard.yaml with the model's retraining: block. Env: SHIPYARD_CONFIG")


@retrain.command("run")
@click.argument("model")
@_CONFIG
@click.option("--train", "train", default=None, metavar="MODULE:FUNCTION", help="The training function.")
@click.option("--last", default=None, metavar="DURATION", help="The window of predictions, e.g. 30d (default 30d).")
@click.option("--alias", default=None, help="The alias a promoted candidate takes (default champion).")
@click.option("--dry-run", is_flag=True, help="Assemble the dataset, show its manifest; train nothing.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --dry-run: keep the Parquet files and manifest in this folder.")
@click.option("--no-canary", is_flag=True, help="A candidate that passes the gates is promoted at once.")
@click.option("--wait", is_flag=True, help="Block until the run is final; exit 1 unless it was promoted. A canary "
              "is stepped by a running server's rollout controller.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up waiting after these seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the run (or the manifest) as JSON.")
@click.pass_context
@handle_errors
def run_command(ctx: click.Context, model: str, config: Path | None, train: str | None, last: str | None,
                alias: str | None, dry_run: bool, out: Path | None, no_canary: bool, wait: bool,
                timeout: float | None, as_json: bool) -> None:
    """Retrain MODEL now: dataset from the prediction log and feedback, training in its own process."""
    from shipyard.retraining.runner import Retrainer, spec_for
    from shipyard.retraining.spec import check_function, parse_duration

    settings = _settings(ctx, config)
    spec = spec_for(settings, model).with_options(
        train=check_function(train) if train else None, alias=alias,
        last=parse_duration(last, "last") if last else None, canary=False if no_canary else None)
    registry = Registry.from_settings(settings)
    try:
        retrainer = Retrainer(registry, settings)
        if dry_run:
            folder = out or Path(tempfile.mkdtemp(prefix="shipyard-retrain-"))
            assembly = retrainer.dry_run(model, spec, folder)
            if as_json:
                print_json({"folder": str(folder), "manifest": assembly.manifest})
                return
            _show_manifest(assembly.manifest, folder if out else None)
            return
        run = retrainer.create(model, spec, trigger="hand", evidence={"by": "shipyard retrain"})
        console.print(f"run {run.id}: started")
        run = retrainer.execute(run, spec)
        if wait:
            run = retrainer.wait(run, timeout=timeout)
    finally:
        registry.close()
    _show_run(run.to_dict(), as_json)
    if run.state == "failed" or (wait and run.state != "promoted"):
        ctx.exit(1)


@retrain.command()
@click.argument("target", metavar="MODEL|RUN_ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def status(ctx: click.Context, target: str, as_json: bool) -> None:
    """The newest run of MODEL (or the run RUN_ID): state, trigger, candidate, gates, log."""
    from shipyard.retraining.runner import Retrainer
    from shipyard.retraining.store import RunNotFound

    settings = settings_from(ctx)
    registry = Registry.from_settings(settings)
    try:
        retrainer = Retrainer(registry, settings)
        runs = retrainer.store.list(target, limit=1)
        if runs:
            run = runs[0]
        else:
            try:
                run = retrainer.store.get(target)
            except RunNotFound:
                raise RunNotFound(target, ", and no model has runs under that name") from None
        run = retrainer.reconcile(run)
    finally:
        registry.close()
    _show_run(run.to_dict(), as_json)


@retrain.command()
@click.argument("model")
@click.option("--limit", type=click.IntRange(min=1), default=20, help="At most this many runs (default 20).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@handle_errors
def history(ctx: click.Context, model: str, limit: int, as_json: bool) -> None:
    """MODEL's retraining runs, newest first."""
    from shipyard.retraining.store import RunStore

    registry = Registry.from_settings(settings_from(ctx))
    try:
        runs = RunStore(registry.database).list(model, limit=limit)
    finally:
        registry.close()
    if as_json:
        print_json({"runs": [r.to_dict(with_log=False) for r in runs]})
        return
    if not runs:
        console.print(f"no retraining runs of {model}")
        return
    table(None, ["id", "state", "trigger", "started", "parent", "candidate", "rows", "reason"],
          [[r.id, r.state, r.trigger, _time(r.created_at), r.parent_version or "", r.candidate_version or "",
            (r.dataset or {}).get("counts", {}).get("train", ""), (r.reason or "").splitlines()[0][:60]
            if r.reason else ""] for r in runs])


def _show_manifest(manifest: dict[str, Any], folder: Path | None) -> None:
    counts = manifest["counts"]
    window = manifest["window"]
    console.print(f"{manifest['model']}: window {_time(window['start'])} .. {_time(window['end'])} "
                  f"(label delay {window['label_delay_seconds']:g}s), parent {manifest['parent']}")
    table(None, ["what", "rows"], [[k, v] for k, v in counts.items()])
    if manifest.get("signature_failures"):
        console.print("first rows failing the signature:")
        for reason in manifest["signature_failures"]:
            console.print(f"  {reason}")
    if manifest.get("classes"):
        console.print("training rows per label: " + ", ".join(f"{k}={v}" for k, v in manifest["classes"].items()))
    console.print(f"fingerprint {manifest['fingerprint']}")
    if folder is not None:
        console.print(f"files in {folder}")


def _show_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(run)
        return
    console.print(f"run {run['id']} of {run['model']}: {run['state']} (trigger {run['trigger']}, started "
                  f"{_time(run['created_at'])})")
    if run.get("candidate_version") is not None:
        console.print(f"candidate: version {run['candidate_version']} (parent {run['parent_version']})")
    if run.get("reason"):
        console.print(f"reason: {run['reason']}")
    if run.get("log"):
        console.print(run["log"].rstrip(), markup=False, highlight=False)
