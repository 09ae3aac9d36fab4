"""Batch prediction: a registered version over files of any size, with three engines.

``batch_predict`` is the entry point (``shipyard.batch_predict`` and
``shipyard batch`` call it). The modules, by concept:

* ``readers``  input files -> chunks of a fixed number of rows (pyarrow.dataset, orjson)
* ``scoring``  one chunk -> checked inputs, predictions, output table (shared by every engine)
* ``rejects``  which rows fail the signature, and why (pure)
* ``parts``    output layout, journal, manifest: what makes reruns resume (mostly pure)
* ``writers``  atomic part and rejects files
* ``worker``   per-process model cache and the part task
* ``local``    the driver, on worker processes or any executor
* ``pool``     the local engine's forkserver and worker processes
* ``dask``     the driver on a dask.distributed cluster
* ``spark``    ``predict_spark`` (DataFrame in, DataFrame out) and the Spark engine
* ``progress`` rich bar or log lines
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from shipyard._extras import require
from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.jobs.batch.result import BatchResult, RejectLimitExceeded

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_ROWS", "ENGINES", "BatchResult", "RejectLimitExceeded", "batch_predict"]

ENGINES = ("local", "dask", "spark")
DEFAULT_BATCH_ROWS = 100_000


def batch_predict(
    model: str,
    input: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    format: str = "parquet",
    id_columns: Sequence[str] = (),
    keep_input: bool = False,
    engine: str = "local",
    workers: int | None = None,
    max_reject_ratio: float = 0.0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    input_format: str | None = None,
    progress: bool | None = None,
    settings: Settings | None = None,
) -> BatchResult:
    """Predict every row of ``input`` with ``model`` and write the predictions to the folder ``output``.

    Rerunning the same call after a crash resumes: finished parts are skipped, the rest
    are written, and the output ends identical to an uninterrupted run (Spark reruns
    recompute everything and overwrite). A rerun of a finished job changes nothing.

    Args:
        model: ``name``, ``name@alias`` or ``name:VERSION``. The version it points to when
            the job starts is used throughout, and kept by reruns of the same job.
        input: a Parquet, CSV or JSON Lines file, a folder of them, a glob, or a list.
        output: a new or empty folder, or the folder of an earlier run of this same job.
        format: output parts as ``parquet``, ``csv`` or ``jsonl``.
        id_columns: input columns to copy next to the predictions (e.g. a primary key).
        keep_input: copy every input column instead (inputs as the model saw them).
        engine: ``local`` (worker processes), ``dask`` (a dask.distributed LocalCluster)
            or ``spark`` (the active SparkSession, else Spark ``local[workers]``).
        workers: processes (or Spark cores); default: the number of CPU cores.
        max_reject_ratio: the share of rows allowed to fail the signature before the job
            fails (it still finishes first, so the rejects file is complete).
        batch_rows: rows per chunk and per output part.
        input_format: ``parquet``, ``csv`` or ``jsonl``; default: from the file names.
        progress: a progress bar (True), nothing (False), or a bar on a terminal and
            log lines elsewhere (None).
        settings: where the registry is; default: ``SHIPYARD_*`` environment variables.

    Returns:
        The run's summary.

    Raises:
        RejectLimitExceeded: more rows were rejected than ``max_reject_ratio`` allows.
        InvalidInput: the input lacks a column the model or ``id_columns`` need.
        ConfigError: ``output`` holds something else, or a bad option.
    """
    require("pyarrow", "batch")
    _check(format, engine, workers, max_reject_ratio, batch_rows)
    ids = tuple(dict.fromkeys(id_columns))
    n_workers = workers or os.cpu_count() or 1
    given = settings or Settings.from_env()
    pool = engine == "local" and n_workers > 1
    if pool:  # its imports take seconds: let them run while this process plans the job
        from shipyard.jobs.batch.pool import start_forkserver

        start_forkserver(model, given)
    from shipyard.jobs.batch import plan

    s = plan.absolute(given)
    out = Path(output).expanduser().resolve()
    if engine == "spark":
        from shipyard.jobs.batch.spark import run_spark

        result = run_spark(
            model, input, out, output_format=format, id_columns=ids, keep_input=keep_input,
            workers=n_workers, batch_rows=batch_rows, input_format=input_format, settings=s,
        )
    else:
        from shipyard.jobs.batch import local
        from shipyard.jobs.batch.progress import reporter

        job = plan.plan_job(
            model, input, out, output_format=format, id_columns=ids, keep_input=keep_input,
            batch_rows=batch_rows, input_format=input_format, settings=s,
        )
        warm = (job.spec.pin, job.settings) if pool else None
        with plan.executor(engine, n_workers, job.flavor, warm) as executor:
            result = local.run(
                job, executor, engine=engine, workers=n_workers, progress=reporter(progress), spool=pool, spans=pool
            )
    if result.reject_ratio > max_reject_ratio:
        raise RejectLimitExceeded(result, max_reject_ratio)
    return result


def _check(fmt: str, engine: str, workers: int | None, max_reject_ratio: float, batch_rows: int) -> None:
    if fmt not in ("parquet", "csv", "jsonl"):
        raise ConfigError(f"unknown output format '{fmt}'; use parquet, csv or jsonl")
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not 0.0 <= max_reject_ratio <= 1.0:
        raise ConfigError(f"max_reject_ratio must be between 0 and 1, got {max_reject_ratio}")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
