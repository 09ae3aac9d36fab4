"""``shipyard batch``: predictions for whole files, written as parts; reruns resume."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from shipyard.cli._output import console, fail, handle_errors, settings_from, setup_logging
from shipyard.jobs.batch import DEFAULT_BATCH_ROWS, BatchResult, RejectLimitExceeded, batch_predict


@click.command()
@click.argument("model")
@click.option("--input", "input_", required=True, metavar="PATH_OR_GLOB",
              help="A Parquet, CSV or JSON Lines file, a folder of them, or a quoted glob such as 'data/*.parquet'.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Output folder: new, empty, or the folder of an earlier run of this same command (it resumes).")
@click.option("--format", "format_", type=click.Choice(["parquet", "csv", "jsonl"]), default="parquet",
              show_default=True, help="Format of the output parts.")
@click.option("--id-column", "id_columns", multiple=True, metavar="COL",
              help="Input column to copy next to the predictions (repeat for several).")
@click.option("--keep-input", is_flag=True, help="Copy every input column next to the predictions.")
@click.option("--engine", type=click.Choice(["local", "spark", "dask"]), default="local", show_default=True,
              help="local: worker processes; dask: a dask.distributed LocalCluster; spark: Spark local[N].")
@click.option("--workers", type=int, default=None, help="Worker processes (Spark: cores). Default: CPU cores.")
@click.option("--max-reject-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of rows allowed to fail the model's signature; above it the command exits 1.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None,
              help="Rows per chunk and per output part. Default: 100000")
@click.option("--input-format", type=click.Choice(["parquet", "csv", "jsonl"]), default=None,
              help="Input format, when the file names do not say.")
@click.pass_context
@handle_errors
def batch(ctx: click.Context, /, model: str, input_: str, output: Path, format_: str, id_columns: tuple[str, ...],
          keep_input: bool, engine: str, workers: int | None, max_reject_ratio: float, batch_rows: int | None,
          input_format: str | None) -> None:
    """Predict every row of --input with MODEL (name, name@alias or name:VERSION) into --output.

    \b
    Output rows: the --id-column columns (or every input column with --keep-input),
    one column per model output, model_name and model_version. Rows that fail the
    model's signature go to OUTPUT/_rejects.jsonl with the reason for each.
    Run the same command again after a crash: finished parts are kept, the rest
    are written, and the result is the same as an uninterrupted run.

    \b
    Example:
      shipyard batch fraud@champion --input 'events/2024-06-01/*.parquet' \\
        --output scores/2024-06-01 --id-column event_id
    """
    settings = settings_from(ctx)
    setup_logging(settings.log_level, settings.log_format)
    try:
        result = batch_predict(
            model, input_, output, format=format_, id_columns=id_columns, keep_input=keep_input, engine=engine,
            workers=workers, max_reject_ratio=max_reject_ratio, batch_rows=batch_rows or DEFAULT_BATCH_ROWS,
            input_format=input_format, settings=settings,
        )
    except RejectLimitExceeded as exc:
        _summary(exc.result)
        fail(str(exc))
        return
    _summary(result)


def _summary(r: BatchResult) -> None:
    t = Table(show_header=False, show_edge=False, box=None, padding=(0, 2, 0, 0))
    t.add_column(style="bold")
    t.add_column()
    speed = f"{r.rows_per_second:,.0f} rows/s" if r.rows > r.resumed_rows else "nothing left to do"
    t.add_row("model", r.model)
    t.add_row("engine", r.engine)
    t.add_row("rows", f"{r.rows:,}")
    t.add_row("predicted", f"{r.predicted:,}")
    t.add_row("rejected", f"{r.rejected:,} ({r.reject_ratio:.2%})")
    t.add_row("parts", f"{r.parts:,}" + (f" ({r.resumed_parts:,} done by an earlier run)" if r.resumed_parts else ""))
    t.add_row("time", f"{r.seconds:.1f}s ({speed})")
    t.add_row("output", str(r.output))
    if r.rejects_path is not None:
        t.add_row("rejects", str(r.rejects_path))
    console.print(t, highlight=False)
