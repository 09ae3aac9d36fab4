"""How a batch output is laid out, and how a rerun knows what is already done.

An output folder holds::

    _manifest.json           the job's identity (model version, input files, options) and totals
    _parts.jsonl             the journal: one line per finished part, appended by the driver
    part-FFFFF-CCCCCC.<ext>  predictions for chunk C (rows C*B .. C*B+B-1) of input file F
    _rejects/part-...jsonl   rejected rows of that chunk, with the reason per row
    _rejects.jsonl           every rejected row, merged in part order at the end
    _SUCCESS                 written last, when every part is done

Part names depend only on the input and the chunk size, never on timing or on
which worker ran them, and every file is written under a temporary name and
renamed when complete. A part counts as done once the journal lists it *and*
its files exist; the journal line is written after the rename. So a run killed
at any instant leaves either a finished part or nothing, and a rerun of the
same command redoes exactly the missing parts. Readers skip names starting
with ``_`` or ``.`` (pyarrow, Spark and pandas all do), so the output folder
reads as one table.

Everything here is plain data and small file operations; the driver in
``local.py`` decides when to call them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from shipyard.errors import ConfigError

MANIFEST = "_manifest.json"
JOURNAL = "_parts.jsonl"
REJECTS_DIR = "_rejects"
REJECTS_FILE = "_rejects.jsonl"
SUCCESS = "_SUCCESS"
TMP_PREFIX = ".tmp-"
LAYOUT = "shipyard-batch-parts/1"

SUFFIXES = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}


def part_name(file_index: int, chunk_index: int) -> str:
    """``part-FFFFF-CCCCCC``: zero-padded so that name order is input order."""
    return f"part-{file_index:05d}-{chunk_index:06d}"


def rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of record batches into tables of exactly ``rows`` rows (the last may be shorter).

    Readers return batches of whatever size suits them (row groups, CSV blocks); parts
    must not depend on that, so that a rerun cuts the input at the same rows.
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            held.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.Table.from_batches(held).combine_chunks()
                held, count = [], 0
    if count:
        yield pa.Table.from_batches(held).combine_chunks()


@dataclass(frozen=True)
class PartRecord:
    """A journal line: one finished part."""

    part: str
    file: int
    chunk: int
    rows: int
    predicted: int
    rejected: int


@dataclass(frozen=True)
class FileRecord:
    """A journal line: every part of one input file is finished."""

    file: int
    chunks: int
    rows: int


@dataclass
class JournalState:
    """What the journal says is finished."""

    parts: dict[str, PartRecord]
    files: dict[int, FileRecord]


def parse_journal(lines: Iterable[str]) -> JournalState:
    """Read journal lines; a torn or unreadable line (the driver was killed mid-write) is ignored."""
    state = JournalState({}, {})
    for line in lines:
        try:
            doc = json.loads(line)
            if "part" in doc:
                rec = PartRecord(**doc)
                state.parts[rec.part] = rec
            elif "file" in doc:
                frec = FileRecord(**doc)
                state.files[frec.file] = frec
        except (ValueError, TypeError):
            continue
    return state


def finished(state: JournalState, present: set[str], suffix: str) -> JournalState:
    """Only what the journal lists *and* whose files are on disk counts as done.

    Args:
        state: the parsed journal.
        present: names of the files in the output folder and in its ``_rejects`` folder.
        suffix: the output parts' file suffix, e.g. ``.parquet``.
    """
    parts = {
        name: rec
        for name, rec in state.parts.items()
        if name + suffix in present and (rec.rejected == 0 or f"{REJECTS_DIR}/{name}.jsonl" in present)
    }
    by_file: dict[int, int] = {}
    for rec in parts.values():
        by_file[rec.file] = by_file.get(rec.file, 0) + 1
    files = {i: f for i, f in state.files.items() if by_file.get(i, 0) == f.chunks}
    return JournalState(parts, files)


class Journal:
    """The append-only ``_parts.jsonl`` of one output folder (written by the driver only)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL

    def read(self) -> JournalState:
        if not self.path.exists():
            return JournalState({}, {})
        return parse_journal(self.path.read_text(errors="replace").splitlines())

    def append(self, record: PartRecord | FileRecord) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with open(self.path, "a") as f:
            # a line torn by a crash is skipped by parse_journal; start the next on a fresh line
            if f.tell() and not _ends_with_newline(self.path):
                f.write("\n")
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def present_files(folder: Path) -> set[str]:
    """Names in the output folder, plus ``_rejects/<name>`` for the rejects parts."""
    names = {p.name for p in folder.iterdir()} if folder.exists() else set()
    rejects = folder / REJECTS_DIR
    if rejects.is_dir():
        names |= {f"{REJECTS_DIR}/{p.name}" for p in rejects.iterdir()}
    return names


# -- the manifest -----------------------------------------------------------------------


def identity_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Why an existing output folder belongs to a different job, or None if it is the same job."""
    labels = {
        "layout": "output layout",
        "model": "model version",
        "inputs": "input files (paths, sizes or modification times)",
        "input_format": "input format",
        "output_format": "--format",
        "columns": "output columns (--id-column / --keep-input)",
        "batch_rows": "batch rows",
    }
    for key, label in labels.items():
        if old.get(key) != new.get(key):
            if key == "model" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                return f"{label}: it was made by {_ref(old[key])}, this run uses {_ref(new[key])}"
            if key == "inputs":
                return f"{label} changed since it was started"
            return f"{label}: it has {old.get(key)!r}, this run has {new.get(key)!r}"
    return None


def _ref(model: Mapping[str, Any]) -> str:
    return f"{model.get('name')}:{model.get('version')}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"'{path}' is not valid JSON; remove the folder or choose another --output") from None
    return doc


def prepare_output(folder: Path, identity: Mapping[str, Any]) -> bool:
    """Make ``folder`` ready for the job; True if it holds an earlier run of the same job to resume.

    Raises ConfigError when the folder holds something else: files that are not a
    batch output, or the output of a job with another model version, input or options.
    """
    manifest = read_manifest(folder) if folder.exists() else None
    if manifest is None:
        if folder.exists() and any(not p.name.startswith(TMP_PREFIX) for p in folder.iterdir()):
            raise ConfigError(
                f"output folder '{folder}' already holds files that are not a shipyard batch output; "
                "choose an empty or new folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        resumed = False
    else:
        why = identity_mismatch(manifest.get("job", {}), identity)
        if why is not None:
            raise ConfigError(
                f"output folder '{folder}' holds a different batch job ({why}); rerun that job with its "
                "original options to finish it, or write to a new folder"
            )
        resumed = True
    remove_temporaries(folder)
    return resumed


def remove_temporaries(folder: Path) -> None:
    """Delete files (and the chunk spool) a killed run left under temporary names."""
    for sub in (folder, folder / REJECTS_DIR):
        if sub.is_dir():
            for p in sub.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, fsync, then rename over ``path``."""
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def temporary_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


def write_manifest(folder: Path, doc: Mapping[str, Any]) -> None:
    write_atomic(folder / MANIFEST, (json.dumps(doc, indent=2, default=str) + "\n").encode())
