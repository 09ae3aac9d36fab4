"""``shipyard drift``: files against a reference, with the server's drift statistics."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shipyard.cli._output import console, handle_errors, print_json, settings_from, setup_logging, table

if TYPE_CHECKING:
    from shipyard.jobs.drift import DriftRun

TESTS = ("ks", "chi_square", "z", "wasserstein", "jensen_shannon", "psi", "hellinger", "cvm")
EXIT_DRIFT = 3
"""Exit code when any feature drifted (1 is any error, as for every command; 2 a usage error)."""


def _tests(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        feature, sep, test = v.rpartition("=")
        if not sep or not feature or not test:
            raise click.BadParameter(f"takes FEATURE=TEST, got '{v}'")
        if test not in TESTS:
            raise click.BadParameter(f"unknown test '{test}' for '{feature}'; use one of {', '.join(TESTS)}")
        out[feature] = test
    return out


@click.command()
@click.argument("model")
@click.option("--reference", required=True, metavar="FILE|VERSION",
              help="The reference: a Parquet, CSV or JSON Lines file, folder or quoted glob (profiled in two "
                   "passes), or a version of MODEL: 3, @alias, name:3, name@alias (its stored profile).")
@click.option("--current", required=True, metavar="FILE",
              help="The rows to check: a file, a folder of them, or a quoted glob. Read in chunks: any size.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a self-contained HTML report (tables and a chart per feature) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of tables.")
@click.option("--window-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also compare every N rows of --current on their own, and report each window.")
@click.option("--test", "tests", multiple=True, callback=_tests, metavar="FEATURE=TEST",
              help=f"The test for one feature (repeat): {', '.join(TESTS)}. Default: as in shipyard.yaml "
                   "(monitoring.drift.tests), else by the feature's kind and the reference's size.")
@click.option("--false-alarms", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              metavar="X", help="Target share of windows with any false alarm when nothing drifted. "
                                "Default: monitoring.drift.false_alarms (0.001).")
@click.option("--min-effect", type=click.FloatRange(min=0), default=None, metavar="X",
              help="Smallest effect that counts as drift (Wasserstein in reference standard deviations, "
                   "Jensen-Shannon distance). Default: monitoring.drift.min_effect (0.1).")
@click.option("--with-predictions", is_flag=True,
              help="Load the model and compare its predictions too (prediction drift). Default: inputs only.")
@click.option("--input-format", type=click.Choice(["parquet", "csv", "jsonl"]), default=None,
              help="Format of both sides' files, when the file names do not say.")
@click.pass_context
@handle_errors
def drift(ctx: click.Context, /, model: str, reference: str, current: str, report_path: Path | None, as_json: bool,
          window_rows: int | None, tests: dict[str, str], false_alarms: float | None, min_effect: float | None,
          with_predictions: bool, input_format: str | None) -> None:
    """Whether --current drifted from --reference, feature by feature, for MODEL's inputs.

    MODEL (name, name@alias or name:VERSION) gives the signature that reads and checks
    both sides: rows that fail it are counted (as nulls or type failures), never fatal.
    The statistics, thresholds and false-alarm calibration are the server's.

    \b
    Exit codes: 0 no drift; 3 drift: some feature (input, prediction or multivariate)
    drifted, in all the rows or in any window of --window-rows (whether that makes
    dataset drift is in the output); 1 an error; 2 a usage error.

    \b
    Examples:
      shipyard drift fraud@champion --reference train.parquet --current 'june/*.parquet'
      shipyard drift fraud --reference @champion --current today.csv --report drift.html
      shipyard drift fraud:4 --reference 3 --current today.csv --window-rows 10000 --json
    """
    from shipyard.jobs.drift import html_of, run_drift

    settings = settings_from(ctx)
    setup_logging(settings.log_level, settings.log_format)
    run = run_drift(model, reference, current, window_rows=window_rows, with_predictions=with_predictions,
                    tests=tests, false_alarms=false_alarms, min_effect=min_effect, input_format=input_format,
                    settings=settings)
    if report_path is not None:
        report_path.write_text(html_of(run), encoding="utf-8")
    if as_json:
        print_json(run.to_dict())
    else:
        _render(run, report_path)
    if run.drifted_features:
        sys.exit(EXIT_DRIFT)


def _render(run: DriftRun, report_path: Path | None) -> None:
    r = run.report
    read = run.current_read
    console.print(f"{run.model}: {run.current} against {run.reference}", highlight=False, soft_wrap=True)
    columns = ["feature", "test", "statistic", "p-value", "effect", "threshold", "drifted", "n",
               "nulls/out-of-range/unseen/type"]
    for title, group in (("inputs", r.features), ("predictions", r.outputs), ("multivariate", r.multivariate)):
        if group:
            table(title, columns, [[f.feature, f.test, _num(f.statistic), _num(f.p_value), _num(f.effect),
                                    _num(f.threshold), "DRIFT" if f.drifted else (f.skipped or "no"), f"{f.n:,}",
                                    "" if group is r.multivariate else _quality(f.quality)] for f in group])
    if run.windows:
        table(f"windows of {run.windows[0].rows:,} rows", ["window", "first row", "rows", "rejected", "share",
                                                            "dataset drift", "drifted features"],
              [[w.index, f"{w.first_row:,}", f"{w.rows:,}", f"{w.rejected:,}", f"{w.report.share:.0%}",
                "DRIFT" if w.report.drifted else "no",
                ", ".join(f.feature for f in (*w.report.features, *w.report.outputs, *w.report.multivariate)
                          if f.drifted)]
               for w in run.windows])
    drifted = [f.feature for f in r.features if f.drifted]
    verdict = "DATASET DRIFT" if r.drifted else "no dataset drift"
    console.print(f"{verdict}: {len(drifted)} of {len(r.features)} input features drifted "
                  f"(share {r.share:.0%}, dataset drift at {run.settings.drift_share:.0%})"
                  + (f": {', '.join(drifted)}" if drifted else ""), highlight=False, soft_wrap=True)
    if run.windows:
        bad = sum(any(f.drifted for f in (*w.report.features, *w.report.outputs, *w.report.multivariate))
                  for w in run.windows)
        data = sum(w.report.drifted for w in run.windows)
        console.print(f"windows: {bad} of {len(run.windows)} with drift, {data} with dataset drift",
                      highlight=False, soft_wrap=True)
    line = f"rows: {read.rows:,} read, {r.rows:,} compared, {read.rejected:,} rejected by the signature"
    if read.examples:
        line += f" (first: {read.examples[0]})"
    console.print(line + f"; {run.seconds:.1f}s", highlight=False, soft_wrap=True)
    if report_path is not None:
        console.print(f"report: {report_path}", highlight=False, soft_wrap=True)


def _quality(q: Mapping[str, int]) -> str:
    out_of_range = q.get("below_min", 0) + q.get("above_max", 0)
    return f"{q.get('nulls', 0)}/{out_of_range}/{q.get('unseen', 0)}/{q.get('type_failures', 0)}"


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4g}"
