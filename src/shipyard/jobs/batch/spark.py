"""Apache Spark: ``predict_spark`` turns a DataFrame into one with predictions; the Spark engine.

``predict_spark`` is for Spark users (spark-submit, Databricks, a notebook):
it pins the version on the driver, then ``mapInPandas`` scores each Arrow
batch on the executors with the same code as the local engine. Every Python
worker of an executor loads the version once from the registry, every file
checked against its sha256, and reuses it for all its batches (Spark reuses
Python workers by default). The executors must reach the registry, so on a
cluster point ``SHIPYARD_REGISTRY_URL`` and ``SHIPYARD_ARTIFACTS`` at
PostgreSQL and object storage; the driver's settings travel with the job.

The engine (``batch_predict(engine="spark")``, ``shipyard batch --engine
spark``) reads the input with Spark, writes predictions with Spark's own
committer (``_SUCCESS`` last) and rejected rows to ``OUTPUT/_rejects/``. A
rerun recomputes and overwrites, so it is idempotent but does not resume.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from shipyard._extras import require
from shipyard.config import Settings
from shipyard.errors import ConfigError, InvalidInput
from shipyard.jobs.batch.parts import REJECTS_DIR, identity_mismatch, read_manifest, write_manifest
from shipyard.jobs.batch.plan import absolute, pin_model
from shipyard.jobs.batch.readers import discover
from shipyard.jobs.batch.result import BatchResult
from shipyard.jobs.batch.scoring import (
    REJECT_REASON,
    Chunk,
    ScoringSpec,
    all_rows_table,
    output_schema,
    score,
)
from shipyard.jobs.batch.worker import model_for

logger = logging.getLogger(__name__)

__all__ = ["predict_spark", "run_spark", "spark_session"]

LAYOUT = "spark"


def spark_session(workers: int = 2, *, batch_rows: int = 10_000) -> Any:
    """A Spark ``local[workers]`` session on 127.0.0.1, no UI, Python workers on this interpreter.

    Raises ConfigError when no Java runtime is on PATH (Spark needs Java 17 or newer).
    """
    sql = require("pyspark.sql", "spark", "pyspark")
    if shutil.which("java") is None:
        raise ConfigError(
            "Spark needs a Java runtime (17 or newer) and `java` is not on PATH; "
            "install one (Debian: apt-get install default-jre-headless)"
        )
    # executors' Python workers must run this interpreter, where shipyard is installed
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # a local[N] session: loopback only, and no warning about it
    builder = (
        sql.SparkSession.builder.master(f"local[{workers}]")
        .appName("shipyard-batch")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(workers))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def predict_spark(
    df: Any,
    model: str,
    *,
    id_columns: Sequence[str] | None = None,
    keep_input: bool = True,
    parse_strings: bool = False,
    settings: Settings | None = None,
) -> Any:
    """A DataFrame with one column per model output next to ``df``'s columns.

    Args:
        df: a ``pyspark.sql.DataFrame`` holding (at least) the model's input columns.
        model: ``name``, ``name@alias`` or ``name:VERSION``; resolved once, here, so every
            executor uses the same version even if an alias moves during the job.
        id_columns: keep only these columns of ``df`` (default: keep all of them).
        keep_input: with no ``id_columns``, keep every column of ``df`` (True) or none.
        parse_strings: string columns where the model wants numbers hold text to parse
            (DataFrames read from CSV or JSON without a schema).
        settings: where the registry is; default: ``SHIPYARD_*`` variables on the driver.

    Returns:
        A DataFrame, lazily computed, with the kept columns, the prediction columns,
        ``model_name``, ``model_version`` and ``reject_reason``: null for rows that were
        predicted; for rows that failed the signature it names the field and the problem,
        and their prediction columns are null.
    """
    types = require("pyspark.sql.types", "spark", "pyspark")
    pandas_types = require("pyspark.sql.pandas.types", "spark", "pyspark")
    s = absolute(settings or Settings.from_env())
    pin, mv = pin_model(model, s)
    signature = mv.signature
    missing = [c for c in [*(id_columns or ()), *signature.input_names] if c not in df.columns]
    if missing:
        raise InvalidInput(
            f"the DataFrame has no column '{missing[0]}' (it has {', '.join(df.columns)})", field=missing[0]
        )
    passthrough = tuple(id_columns) if id_columns else (tuple(df.columns) if keep_input else ())
    selected = df.select(*dict.fromkeys([*passthrough, *signature.input_names]))
    arrow_in = pandas_types.to_arrow_schema(selected.schema)
    schema = output_schema(signature, arrow_in, passthrough)
    spec = ScoringSpec(pin, signature, passthrough, parse_strings=parse_strings, output_schema=schema)
    fields = [selected.schema[c] for c in passthrough]
    for f in schema:
        if f.name not in passthrough:
            fields.append(types.StructField(f.name, pandas_types.from_arrow_type(f.type), nullable=True))
    fields.append(types.StructField(REJECT_REASON, types.StringType(), nullable=True))
    return selected.mapInPandas(_Scorer(spec, s), types.StructType(fields))


class _Scorer:
    """The function each Python worker runs over its partition's pandas batches."""

    def __init__(self, spec: ScoringSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        model = model_for(self.spec.pin, self.settings)
        for frame in batches:
            chunk = Chunk(pa.Table.from_pandas(frame, preserve_index=False))
            scored = score(model, chunk, self.spec)
            yield all_rows_table(chunk, scored, self.spec).to_pandas(integer_object_nulls=True)


def run_spark(
    model: str,
    input: str | Path | Sequence[str | Path],
    output: Path,
    *,
    output_format: str,
    id_columns: tuple[str, ...],
    keep_input: bool,
    workers: int,
    batch_rows: int,
    input_format: str | None,
    settings: Settings,
) -> BatchResult:
    """``batch_predict`` on Spark: the active session, or a ``local[workers]`` one made (and stopped) here."""
    t0 = time.monotonic()
    sql = require("pyspark.sql", "spark", "pyspark")
    functions = require("pyspark.sql.functions", "spark", "pyspark")
    storage = require("pyspark.storagelevel", "spark", "pyspark")
    pin, _ = pin_model(model, settings, output)
    files, fmt = discover(input, input_format, exclude=output)
    identity: dict[str, Any] = {
        "layout": LAYOUT,
        "model": {"name": pin.name, "version": pin.version, "digest": pin.digest},
        "inputs": [f.identity() for f in files],
        "input_format": fmt,
        "output_format": output_format,
        "columns": {"id_columns": list(id_columns), "keep_input": keep_input},
        "batch_rows": batch_rows,
    }
    _check_output(output, identity)
    session = sql.SparkSession.getActiveSession()
    own = session is None
    if own:
        session = spark_session(workers, batch_rows=batch_rows)
    try:
        paths = [f.path for f in files]
        if fmt == "parquet":
            df = session.read.parquet(*paths)
        elif fmt == "csv":
            df = session.read.option("header", True).option("inferSchema", True).csv(paths)
        else:
            df = session.read.json(paths)
        scored = predict_spark(
            df, pin.ref, id_columns=id_columns or None, keep_input=keep_input, parse_strings=fmt != "parquet",
            settings=settings,
        ).persist(storage.StorageLevel.DISK_ONLY)
        try:
            rejected_rows = functions.col(REJECT_REASON).isNotNull()
            rows = scored.count()
            rejected = scored.filter(rejected_rows).count()
            good = scored.filter(~rejected_rows).drop(REJECT_REASON)
            _write(good, output, output_format, functions)
            if rejected:
                scored.filter(rejected_rows).write.mode("overwrite").json(str(output / REJECTS_DIR))
        finally:
            scored.unpersist()
    finally:
        if own:
            session.stop()
    result = BatchResult(
        model=pin.ref,
        output=output,
        engine="spark",
        rows=rows,
        predicted=rows - rejected,
        rejected=rejected,
        parts=sum(1 for p in output.iterdir() if p.name.startswith("part-")),
        resumed_parts=0,
        resumed_rows=0,
        seconds=time.monotonic() - t0,
        rejects_path=output / REJECTS_DIR if rejected else None,
    )
    write_manifest(output, {
        "job": identity, "model_ref": model, "engine": "spark", "status": "complete",
        "totals": {"rows": rows, "predicted": rows - rejected, "rejected": rejected},
    })
    return result


def _check_output(output: Path, identity: dict[str, Any]) -> None:
    """Spark overwrites its output: only ever a folder this same job wrote, or a new/empty one."""
    if not output.exists() or not any(output.iterdir()):
        return
    manifest = read_manifest(output)
    if manifest is None:
        raise ConfigError(
            f"output folder '{output}' already holds files that are not a shipyard batch output; "
            "choose an empty or new folder"
        )
    why = identity_mismatch(manifest.get("job", {}), identity)
    if why is not None:
        raise ConfigError(
            f"output folder '{output}' holds a different batch job ({why}); Spark would overwrite it, "
            "so write to a new folder"
        )


def _write(df: Any, output: Path, fmt: str, functions: Any) -> None:
    writer_df = df
    if fmt == "csv":  # CSV has no arrays: a column p of k values becomes p_0 .. p_k-1, as in the local engine
        cols = []
        arrays = {f.name for f in df.schema.fields if f.dataType.typeName() == "array"}
        sizes = {}
        if arrays:
            first = df.select(*arrays).first()
            sizes = {a: len(first[a]) if first is not None and first[a] is not None else 0 for a in arrays}
        for name in df.columns:
            if name in arrays:
                cols += [functions.col(name)[i].alias(f"{name}_{i}") for i in range(sizes[name])]
            else:
                cols.append(functions.col(name))
        writer_df = df.select(*cols)
    writer = writer_df.write.mode("overwrite")
    if fmt == "parquet":
        writer.parquet(str(output))
    elif fmt == "csv":
        writer.option("header", True).csv(str(output))
    else:
        writer.json(str(output))
    logger.info("spark wrote %s as %s", output, fmt)

