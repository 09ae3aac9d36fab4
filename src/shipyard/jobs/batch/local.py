"""The batch driver: read chunks, hand them to workers, journal finished parts, finish the output.

The driver is the only writer of the journal and the manifest. Workers score
chunks and write their parts; the driver records each part after its worker
reports it written. Reading happens here, one chunk ahead of the workers at
most ``2 x workers`` chunks, so memory stays bounded however big the input.

Where the chunks run is an ``concurrent.futures.Executor``: a pool of worker
processes (the local engine), a Dask cluster's executor (the Dask engine), or
this process itself (one worker, and unit tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from shipyard.config import Settings
from shipyard.errors import InferenceError
from shipyard.jobs.batch.parts import (
    REJECTS_DIR,
    REJECTS_FILE,
    SUCCESS,
    SUFFIXES,
    FileRecord,
    Journal,
    PartRecord,
    finished,
    part_name,
    prepare_output,
    present_files,
    write_atomic,
    write_manifest,
)
from shipyard.jobs.batch.progress import Reporter
from shipyard.jobs.batch.readers import InputFile, Reader
from shipyard.jobs.batch.result import BatchResult
from shipyard.jobs.batch.scoring import ScoringSpec
from shipyard.jobs.batch.spool import Spool
from shipyard.jobs.batch.worker import PartTask, SpanTask, run_part, run_span
from shipyard.jobs.batch.writers import concatenate

logger = logging.getLogger(__name__)

T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each task when it is submitted, in this process: one worker, no pickling."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future, like a pool does
            fut.set_exception(exc)
        return fut


@dataclass
class Job:
    """A planned batch job (see ``shipyard.jobs.batch.batch_predict``)."""

    model_ref: str
    files: list[InputFile]
    reader: Reader
    spec: ScoringSpec
    settings: Settings
    output: Path
    output_format: str
    batch_rows: int
    flavor: str
    """The model's runtime, which decides what worker processes preload."""

    identity: dict[str, Any] = field(default_factory=dict)


def run(
    job: Job,
    executor: Executor,
    *,
    engine: str,
    workers: int,
    progress: Reporter,
    spool: bool = False,
    spans: bool = False,
) -> BatchResult:
    """Run (or resume) ``job`` on ``executor`` and finish its output folder.

    ``spool``: hand chunks to the workers as files (local worker processes; see ``spool.py``).
    ``spans``: let the workers read Parquet inputs themselves, a span of chunks per task
    (local worker processes; see ``readers.plan_spans``); other inputs are read here.
    """
    t0 = time.monotonic()
    out = job.output
    resuming = prepare_output(out, job.identity)
    manifest: dict[str, Any] = {
        "job": job.identity,
        "model_ref": job.model_ref,
        "engine": engine,
        "status": "running",
        "started": _now(),
    }
    write_manifest(out, manifest)
    journal = Journal(out)
    state = finished(journal.read(), present_files(out), SUFFIXES[job.output_format])
    resumed_parts = len(state.parts)
    resumed_rows = sum(r.rows for r in state.parts.values())
    if resuming:
        logger.info("resuming %s: %d parts already finished", out, resumed_parts)
    progress.start(job.reader.total_rows(), resumed_rows)
    spooler = Spool(out) if spool else None
    try:
        records = _drive(
            job, executor, journal, state.parts, state.files, progress, spooler,
            workers=workers if spans else 0, max_in_flight=2 * workers,
        )
    finally:
        progress.close()
        if spooler is not None:
            spooler.close()
    return _finish(
        job, records, manifest, engine=engine, resumed=(resumed_parts, resumed_rows), seconds=time.monotonic() - t0
    )


def _drive(
    job: Job,
    executor: Executor,
    journal: Journal,
    records: dict[str, PartRecord],
    files_done: dict[int, FileRecord],
    progress: Reporter,
    spool: Spool | None,
    *,
    workers: int,
    max_in_flight: int,
) -> dict[str, PartRecord]:
    """Submit every part still to do, journal each as its task reports it written.

    ``workers`` > 0: Parquet files go out as spans that the workers read themselves.
    """
    records = dict(records)
    pending: dict[Future[Any], str] = {}  # task -> name of its first part, for journal order
    chunks_of: dict[int, int] = {}  # chunks per file, known once the file is read to its end
    done_of: dict[int, int] = {}
    for rec in records.values():
        done_of[rec.file] = done_of.get(rec.file, 0) + 1

    def file_finished(index: int) -> None:
        if index in chunks_of and done_of.get(index, 0) == chunks_of[index] and index not in files_done:
            rows = sum(r.rows for r in records.values() if r.file == index)
            files_done[index] = FileRecord(index, chunks_of[index], rows)
            journal.append(files_done[index])

    def collect(block: bool) -> None:
        done, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        failure: BaseException | None = None
        for fut in sorted(done, key=lambda f: pending[f]):
            pending.pop(fut)
            try:
                result = fut.result()
            except BaseException as exc:
                failure = failure or exc
                continue
            for o in result if isinstance(result, list) else [result]:
                rec = PartRecord(o.name, o.file, o.chunk, o.rows, o.predicted, o.rejected)
                journal.append(rec)
                records[rec.part] = rec
                done_of[rec.file] = done_of.get(rec.file, 0) + 1
                progress.advance(rec.rows)
                file_finished(rec.file)
        if failure is not None:
            for fut in pending:
                fut.cancel()
            raise failure

    def submit(name: str, fn: Callable[..., Any], *args: Any) -> None:
        while len(pending) >= max_in_flight:
            collect(block=True)
        pending[executor.submit(fn, *args)] = name
        collect(block=False)

    out = str(job.output)
    total = job.reader.total_rows() or 0
    span_rows = max(job.batch_rows, -(-total // (2 * workers))) if workers else 0
    for file in job.files:
        if file.index in files_done:
            continue

        def part(k: int, path: str = file.path, index: int = file.index) -> PartTask:
            return PartTask(
                part_name(index, k), index, k, path, k * job.batch_rows, out, job.output_format, job.spec,
                job.settings,
            )

        spans = job.reader.spans(file, job.batch_rows, span_rows) if workers else None
        if spans is not None:
            schema = job.reader.schema()
            for span in spans:
                tasks = tuple(part(k) for k in range(span.first, span.first + span.chunks))
                todo = tuple(t.name not in records for t in tasks)
                if any(todo):
                    submit(tasks[0].name, run_span, SpanTask(tasks, todo, span, schema, job.batch_rows))
            chunks_of[file.index] = sum(span.chunks for span in spans)
            file_finished(file.index)
            continue
        count = 0
        for k, chunk in enumerate(job.reader.chunks(file, job.batch_rows)):
            count = k + 1
            task = part(k)
            if task.name in records:
                continue
            submit(task.name, run_part, task, spool.put(chunk, task.name) if spool is not None else chunk)
        chunks_of[file.index] = count
        file_finished(file.index)
    while pending:
        collect(block=True)
    return records


def _finish(
    job: Job,
    records: dict[str, PartRecord],
    manifest: dict[str, Any],
    *,
    engine: str,
    resumed: tuple[int, int],
    seconds: float,
) -> BatchResult:
    out = job.output
    parts = [records[k] for k in sorted(records)]
    rows = sum(r.rows for r in parts)
    total = job.reader.total_rows()
    if total is not None and rows != total:
        raise InferenceError(
            f"the output parts hold {rows:,} rows but the input has {total:,}: the input changed while the job ran"
        )
    predicted = sum(r.predicted for r in parts)
    rejected = sum(r.rejected for r in parts)
    rejects_path: Path | None = None
    if rejected:
        rejects_path = out / REJECTS_FILE
        concatenate([out / REJECTS_DIR / f"{r.part}.jsonl" for r in parts if r.rejected], rejects_path)
    result = BatchResult(
        model=job.spec.pin.ref,
        output=out,
        engine=engine,
        rows=rows,
        predicted=predicted,
        rejected=rejected,
        parts=len(parts),
        resumed_parts=resumed[0],
        resumed_rows=resumed[1],
        seconds=seconds,
        rejects_path=rejects_path,
    )
    write_manifest(out, {**manifest, "status": "complete", "finished": _now(), "totals": totals(result)})
    write_atomic(out / SUCCESS, b"")
    logger.info(
        "batch %s -> %s: %s rows, %s predicted, %s rejected, %.1fs",
        result.model, out, f"{rows:,}", f"{predicted:,}", f"{rejected:,}", seconds,
    )
    return result


def totals(result: BatchResult) -> dict[str, Any]:
    return {
        "rows": result.rows,
        "predicted": result.predicted,
        "rejected": result.rejected,
        "parts": result.parts,
        "rejects": str(result.rejects_path) if result.rejects_path else None,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
