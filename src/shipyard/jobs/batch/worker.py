"""What runs inside a worker process (local pool, Dask worker, Spark executor's Python worker).

Each process loads the pinned version once, from the registry, with every
artifact file's sha256 checked (``Registry.load``), and keeps it for all the
chunks it is given. ``run_part`` scores one chunk and writes its part;
``run_span`` reads consecutive chunks of a Parquet file itself and writes
their parts, so that the driver hands over no data (the local engine).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from shipyard.config import Settings
from shipyard.errors import (
    ConfigError,
    InferenceError,
    InvalidInput,
    ModelFormatError,
    RegistryError,
    ShipyardError,
)
from shipyard.jobs.batch.parts import REJECTS_DIR, SUFFIXES
from shipyard.jobs.batch.readers import Span, read_span
from shipyard.jobs.batch.scoring import Chunk, ModelPin, ScoringSpec, output_table, reject_records, score
from shipyard.jobs.batch.spool import SpooledChunk
from shipyard.jobs.batch.writers import write_part, write_records
from shipyard.registry import LoadedModel, Registry

logger = logging.getLogger(__name__)

_models: dict[tuple[str, str, str, int, str], LoadedModel] = {}
_lock = threading.Lock()

def model_for(pin: ModelPin, settings: Settings) -> LoadedModel:
    """The pinned version, loaded once per process (files verified against their sha256)."""
    key = (settings.resolved_registry_url, settings.resolved_artifacts, pin.name, pin.version, pin.digest)
    with _lock:
        model = _models.get(key)
        if model is None:
            reg = Registry.from_settings(settings)
            try:
                mv = reg.get(pin.ref)
                if mv.digest != pin.digest:
                    raise RegistryError(
                        f"{pin.ref} in this registry has digest {mv.digest[:12]}..., the job was planned with "
                        f"{pin.digest[:12]}...: the workers see a different registry than the driver"
                    )
                model = reg.load(mv)
            finally:
                reg.close()
            _models[key] = model
            logger.debug("loaded %s in worker", pin.ref)
        return model


@dataclass(frozen=True)
class PartTask:
    """One chunk to score and where its part goes."""

    name: str
    file: int
    chunk: int
    source: str
    """Path of the input file, for the rejects file."""

    first_row: int
    """Row number (within the file) of the chunk's first row."""

    output: str
    output_format: str
    spec: ScoringSpec
    settings: Settings


@dataclass(frozen=True)
class PartOutcome:
    name: str
    file: int
    chunk: int
    rows: int
    predicted: int
    rejected: int


def run_part(task: PartTask, chunk: Chunk | SpooledChunk) -> PartOutcome:
    """Score ``chunk``, write its rejects (if any) then its output part; both atomically.

    Errors are re-raised as plain shipyard errors carrying the message, because
    they cross a process boundary and some error classes cannot be rebuilt from
    a pickle.
    """
    try:
        if isinstance(chunk, SpooledChunk):
            chunk = chunk.load()
        return _score_part(task, chunk)
    except ShipyardError as exc:
        raise _portable(exc, task.name) from None
    except Exception as exc:
        raise InferenceError(f"part {task.name} failed: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class SpanTask:
    """Consecutive chunks of one Parquet file that the worker reads itself, and their parts."""

    parts: tuple[PartTask, ...]
    """One per chunk of the span, in order; ``todo`` says which still need writing."""

    todo: tuple[bool, ...]
    span: Span
    schema: pa.Schema
    """Columns and types of the chunks, as the driver's reader would give them."""

    batch_rows: int


def run_span(task: SpanTask) -> list[PartOutcome]:
    """Read the span's rows, then score and write each chunk that is still to do, in order."""
    outcomes: list[PartOutcome] = []
    k = 0
    try:
        for k, chunk in enumerate(read_span(task.parts[0].source, task.span, task.schema, task.batch_rows)):
            if task.todo[k]:
                outcomes.append(_score_part(task.parts[k], chunk))
    except ShipyardError as exc:
        raise _portable(exc, task.parts[k].name) from None
    except Exception as exc:
        raise InferenceError(f"part {task.parts[k].name} failed: {type(exc).__name__}: {exc}") from None
    if k + 1 != len(task.parts):
        raise InferenceError(f"{task.parts[0].source} changed while the job ran: a span read {k + 1} chunks, "
                             f"not {len(task.parts)}")
    return outcomes


def _score_part(task: PartTask, chunk: Chunk) -> PartOutcome:
    model = model_for(task.spec.pin, task.settings)
    keep = any(task.spec.signature.input(c) is not None for c in task.spec.passthrough)
    scored = score(model, chunk, task.spec, keep_inputs=keep)
    out = Path(task.output)
    if scored.errors:
        (out / REJECTS_DIR).mkdir(exist_ok=True)
        records = reject_records(chunk, scored, source=task.source, first_row=task.first_row)
        write_records(records, out / REJECTS_DIR / f"{task.name}.jsonl")
    part = out / (task.name + SUFFIXES[task.output_format])
    write_part(output_table(chunk, scored, task.spec), part, task.output_format)
    return PartOutcome(task.name, task.file, task.chunk, chunk.num_rows, scored.predicted, len(scored.errors))


def init_worker(driver: int, pin: ModelPin, settings: Settings, blas_threads: int) -> None:
    """Pool initializer: follow the driver, share the cores, load the model before the first chunk.

    ``blas_threads``: the cores each worker may use. NumPy's BLAS starts a thread per core
    in every process by default; N workers x N threads on N cores spin against each other
    (a LogisticRegression predict took 4-10x longer on a busy two-core machine).
    A model that fails to load here fails again, with its message, in the first part.
    """
    watch_driver(driver)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # no scikit-learn (which brings it): nothing of ours starts BLAS threads
        pass
    else:
        threadpool_limits(blas_threads)
    try:
        model_for(pin, settings)
    except Exception:
        logger.debug("loading %s at worker start failed; the first part reports why", pin.ref, exc_info=True)


def _portable(exc: ShipyardError, part: str) -> ShipyardError:
    message = f"part {part}: {exc}"
    for cls in (InvalidInput, InferenceError, ConfigError, ModelFormatError, RegistryError):
        if isinstance(exc, cls):
            return cls(message)
    return ShipyardError(message)


def watch_driver(pid: int) -> None:
    """Pool initializer: exit this worker as soon as the driver process ``pid`` is gone.

    Workers are forked from a forkserver, not from the driver, and hold their queues'
    pipes open themselves, so nothing else tells them the driver was killed (SIGKILL,
    OOM): they would wait for work forever. The part a worker is writing when this
    fires is lost whole (it was under a temporary name) and the rerun redoes it.
    """
    threading.Thread(target=_exit_when_gone, args=(pid,), name="shipyard-watch-driver", daemon=True).start()


def _exit_when_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(pid):
            time.sleep(0.5)
    os._exit(70)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
