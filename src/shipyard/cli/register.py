"""``shipyard register``: store a model file or folder as a new version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shipyard.cli._output import console, fail, handle_errors, settings_from
from shipyard.cli.alias import current_actor, print_report
from shipyard.datafiles import read_data
from shipyard.errors import InvalidInput, ModelNotFound
from shipyard.graphs.config import read_graph_file
from shipyard.options import type_name
from shipyard.registry import Registry
from shipyard.registry.checkset import MIN_ROWS
from shipyard.registry.registry import HOLDOUT_MAX_ROWS, IF_IDENTICAL
from shipyard.rollout.actions import record_refusal
from shipyard.rollout.gates import log_outcome, promotion_gates
from shipyard.runtime.loader import declared_options, runtime_for
from shipyard.signature import sample_to_arrays
from shipyard.types import EXTRA_FIELDS, check_name


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise InvalidInput(f"--{what} takes KEY=VALUE, got '{v}'", field=what)
        k, _, val = v.partition("=")
        out[k] = val
    return out


class _RegisterCommand(click.Command):
    """``--help`` ends with every runtime's options, read from their declarations."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        rows = []
        for flavor, specs in declared_options().items():
            if not specs:
                rows.append((flavor, "takes no options"))
            for o in specs:
                default = "" if o.default in (None, [], ()) else f", default {_text(o.default)}"
                only = {"file": ", model files only", "object": ", in-memory models only"}.get(o.applies_to, "")
                rows.append((f"{flavor}: {o.name}", f"{o.doc} ({type_name(o.type)}{default}{only})"))
        with formatter.section("Runtime options (--option KEY=VALUE; lists comma-separated)"):
            formatter.write_dl(rows)


def _text(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _flags(command: click.Command) -> dict[str, str]:
    """This command's own options by the names a user may mistype as --option keys."""
    out: dict[str, str] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name and param.name != "option_pairs":
            flag = max(param.opts, key=len)
            out[param.name] = flag
            for opt in param.opts:
                out[opt.lstrip("-").replace("-", "_")] = flag
    return out


@click.command(cls=_RegisterCommand)
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rows of real input (.csv/.json/.jsonl/.parquet/.npy); the signature is inferred from "
                   "them, and up to 1,000 are kept as the check set (100+ make equivalence checks meaningful).")
@click.option("--flavor", help="Model format, when it cannot be guessed "
              "(sklearn, xgboost, lightgbm, onnx, torch, tensorflow, tflite, mlflow, python).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow pickle/joblib files. Loading a pickle can run arbitrary code.")
@click.option("--description", default="", help="Free text kept with the version.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag the version (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="Record a metric (repeatable).")
@click.option("--training-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training set file; its sha256 fingerprint is stored as lineage.")
@click.option("--parent", help="The version this one derives from, e.g. fraud:3.")
@click.option("--alias", "alias_name", help="Also point this alias at the new version (e.g. champion).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="An option of the model's runtime (repeatable), e.g. methods=predict,predict_proba; "
                   "the list is below. An unknown key or a value of the wrong type is refused.")
@click.option("--extra-fields", type=click.Choice(EXTRA_FIELDS), default="refuse", show_default=True,
              help="What requests and stream messages do with record fields beside the inputs (ids, metadata): "
                   "refuse them (400 / dead letter, so typos are caught), ignore them, or passthrough (return "
                   "them beside each prediction). `serve`/`stream --extra-fields` can override it.")
@click.option("--check-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rows to keep as the version's check set instead of the sample's (up to 1,000 are kept); "
                   "export, bundle and serve --runtime onnx check converted models on them.")
@click.option("--if-identical", type=click.Choice(IF_IDENTICAL), default="refuse", show_default=True,
              help="When these exact files already are a version of NAME: refuse, reuse that version "
                   "(--alias still moves), or register a new copy.")
@click.option("--holdout", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"Labelled rows (.csv/.parquet/.json/.jsonl) the promotion gates score this version on "
                   f"when an alias moves (`shipyard alias`); up to {HOLDOUT_MAX_ROWS:,} are kept. "
                   "Needs --label-column.")
@click.option("--label-column", help="The --holdout column that holds the labels; the other columns are inputs.")
@click.pass_context
@handle_errors
def register(ctx: click.Context, name: str, path: Path, sample: Path | None, flavor: str | None,
             trust_pickle: bool, description: str, tags: tuple[str, ...], metrics: tuple[str, ...],
             training_data: Path | None, parent: str | None, alias_name: str | None,
             option_pairs: tuple[str, ...], extra_fields: str,
             check_data: Path | None, if_identical: str, holdout: Path | None, label_column: str | None) -> None:
    """Register the model at PATH as the next version of NAME.

    PATH is a model file (.skops, .onnx, .pt, .pt2, .ubj, LightGBM .txt, .keras,
    .tflite, or .pkl/.joblib with --trust-pickle), a TensorFlow SavedModel folder
    or an MLflow model folder; or a YAML file holding an inference graph
    (`steps:`, or a shipyard.yaml whose `graph:` block declares NAME), registered
    with each step pinned to a version.

    Up to 1,000 rows of --sample (or of --check-data) are kept with the version
    as its check set. Identical files (same sha256 digest and runtime options;
    tags, metrics and description do not count) are refused unless
    --if-identical says otherwise. An --alias that already points at another
    version moves only if the new one passes the promotion gates (see
    `shipyard alias`); otherwise the version stays registered and unaliased.
    """
    if (holdout is None) != (label_column is None):
        raise click.UsageError("--holdout and --label-column go together: the file, and which of its columns "
                               "holds the labels")
    options = {}
    if option_pairs:
        check_name("model name", name)  # the same first complaint as without --option
        options = runtime_for(path, flavor).parse_options(option_pairs, for_file=True, also=_flags(ctx.command))
    metric_values = {}
    for k, v in _pairs(metrics, "metric").items():
        try:
            metric_values[k] = float(v)
        except ValueError:
            raise InvalidInput(f"--metric {k}={v}: the value must be a number", field="metric") from None
    labelled = _holdout(holdout, label_column) if holdout and label_column else None
    reg = Registry.from_settings(settings_from(ctx))
    try:
        before = _versions(reg, name)
        # an alias that points somewhere already moves only past the promotion gates
        replaces = reg.aliases(name).get(alias_name) if alias_name else None
        model: Any = read_graph_file(path, name) if path.suffix in (".yaml", ".yml") else path
        mv = reg.register(
            model, name,
            sample=read_data(sample) if sample else None,
            flavor=flavor,
            trust_pickle=trust_pickle,
            description=description,
            tags=_pairs(tags, "tag"),
            metrics=metric_values,
            training_data=read_data(training_data) if training_data else None,
            parent=parent,
            alias=alias_name if replaces is None else None,
            check_data=read_data(check_data) if check_data else None,
            if_identical=if_identical,
            extra_fields=extra_fields,
            holdout=labelled,
            **options,
        )
        what = "identical to" if mv.version in before else "registered"
        console.print(f"{what} [bold]{mv.ref}[/] ({mv.flavor}, sha256 {mv.digest[:12]})", highlight=False)
        console.print(_check_set_line(mv.check_set), highlight=False)
        if labelled is not None:
            rows = min(len(labelled[1]), HOLDOUT_MAX_ROWS)
            console.print(f"holdout set: {rows} rows, labels from '{label_column}'"
                          + (f" (chosen at random from {len(labelled[1])})" if rows < len(labelled[1]) else ""),
                          highlight=False)
        if alias_name and replaces is not None and replaces != mv.version:
            _move_past_gates(reg, mv.name, alias_name, mv.version)
    finally:
        reg.close()
    if alias_name:
        console.print(f"alias {alias_name} -> {mv.version}", highlight=False)


def _move_past_gates(reg: Registry, name: str, alias_name: str, version: int) -> None:
    """Point the alias at the new version when the promotion gates pass; otherwise exit 1 and say how to force."""
    actor = current_actor()
    report = promotion_gates(reg, name, alias_name, version)
    log_outcome(report, actor=actor, forced=False)
    print_report(report)
    if not report.passed:
        record_refusal(reg.database, report)
        fail(f"{name}:{version} is registered, but {name}@{alias_name} was not moved to it: "
             f"{len(report.failures)} promotion gate(s) failed "
             f"(`shipyard alias {name} {alias_name} {version} --force` moves it anyway)")
    reg.set_alias(name, alias_name, version, actor=actor, note=report.note(forced=False))


def _holdout(path: Path, label_column: str) -> tuple[Any, Any]:
    """(input columns, labels) from a labelled file."""
    columns, _ = sample_to_arrays(read_data(path))
    if label_column not in columns:
        raise InvalidInput(f"--label-column '{label_column}' is not a column of '{path.name}', which has "
                           f"{', '.join(repr(c) for c in columns)}", field="label_column", got=label_column)
    labels = columns.pop(label_column)
    return columns, labels


def _versions(reg: Registry, name: str) -> set[int]:
    """The versions NAME has now (none when it is new): tells a reused version from a new one."""
    try:
        return {v.version for v in reg.versions(name)}
    except ModelNotFound:
        return set()


def _check_set_line(info: dict[str, Any]) -> str:
    if not info:
        return "check set: none (no --sample or --check-data); export and bundle will need --check-data FILE"
    line = f"check set: {info['rows']} rows of the {'check data' if info['from'] == 'check_data' else 'sample'}"
    if "seed" in info:
        line += f" (chosen at random from {info['of']}, seed {info['seed']})"
    if info.get("note"):
        line += f" (fewer than {MIN_ROWS}: {info['note']}; pass --check-data FILE with more rows)"
    return line
