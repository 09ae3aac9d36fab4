"""Turn the options of ``batch_predict`` into a job: pinned model, input files, columns, identity.

The identity (model version and digest, input files with sizes and
modification times, formats, columns, chunk size) is written into the
output's manifest; a rerun must have the same identity to resume, which is
what keeps the output from mixing two jobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from shipyard.config import Settings
from shipyard.jobs.batch.local import InlineExecutor, Job
from shipyard.jobs.batch.parts import LAYOUT, read_manifest
from shipyard.jobs.batch.pool import preload_modules, process_pool
from shipyard.jobs.batch.readers import discover, open_reader
from shipyard.jobs.batch.scoring import ModelPin, ScoringSpec, output_schema
from shipyard.registry import ModelVersion, Registry
from shipyard.types import ModelRef

logger = logging.getLogger(__name__)


def absolute(settings: Settings) -> Settings:
    """The same settings with ``home`` made absolute, so that workers in other folders find it."""
    return settings.replace(home=settings.home.expanduser().resolve())


def pin_model(ref: str, settings: Settings, output: Path | None = None) -> tuple[ModelPin, ModelVersion]:
    """The version ``ref`` means for this job, its files verified.

    A rerun into an output started with the same ``ref`` keeps the version that run
    used, even if the alias has moved since: one output, one version.
    """
    ModelRef.parse(ref)
    manifest = read_manifest(output) if output is not None and output.is_dir() else None
    reg = Registry.from_settings(settings)
    try:
        mv = None
        if manifest is not None and manifest.get("model_ref") == ref:
            kept = manifest.get("job", {}).get("model", {})
            if "name" in kept and "version" in kept:
                mv = reg.get(f"{kept['name']}:{kept['version']}")
                now = reg.resolve(ref)
                if now != mv.version:
                    logger.warning(
                        "%s now means version %d; finishing the job in %s with version %d, which it started with",
                        ref, now, output, mv.version,
                    )
        if mv is None:
            mv = reg.get(ref)
        reg.fetch(mv)  # refuse a tampered artifact here, before any worker starts
    finally:
        reg.close()
    return ModelPin(mv.name, mv.version, mv.digest), mv


def plan_job(
    model: str,
    input: str | Path | Sequence[str | Path],
    output: Path,
    *,
    output_format: str,
    id_columns: tuple[str, ...],
    keep_input: bool,
    batch_rows: int,
    input_format: str | None,
    settings: Settings,
) -> Job:
    """Resolve the model, find and open the inputs, and fix the output's columns."""
    pin, mv = pin_model(model, settings, output)
    files, fmt = discover(input, input_format, exclude=output)
    wanted: list[str] | None = None if keep_input else list(id_columns)
    reader = open_reader(fmt, files, mv.signature, wanted)
    passthrough = tuple(reader.columns()) if keep_input else id_columns
    schema = output_schema(mv.signature, reader.schema(), passthrough)
    spec = ScoringSpec(pin, mv.signature, passthrough, parse_strings=fmt != "parquet", output_schema=schema)
    identity: dict[str, Any] = {
        "layout": LAYOUT,
        "model": {"name": pin.name, "version": pin.version, "digest": pin.digest},
        "inputs": [f.identity() for f in files],
        "input_format": fmt,
        "output_format": output_format,
        "columns": schema.names,
        "batch_rows": batch_rows,
    }
    return Job(model, files, reader, spec, settings, output, output_format, batch_rows, mv.flavor, identity)


@contextlib.contextmanager
def executor(
    engine: str, workers: int, flavor: str, warm: tuple[ModelPin, Settings] | None = None
) -> Iterator[Executor]:
    """Where chunks run: this process (one local worker), a process pool, or a Dask cluster.

    ``warm``: the model each pool worker loads as it starts (local engine).
    """
    if engine == "dask":
        from shipyard.jobs.batch.dask import dask_executor

        with dask_executor(workers) as ex:
            yield ex
    elif workers == 1:
        yield InlineExecutor()
    else:
        with process_pool(workers, preload_modules(flavor), warm) as ex:
            yield ex
