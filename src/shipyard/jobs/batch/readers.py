"""Find the input files and read them as a stream of fixed-size chunks, never all at once.

Parquet and CSV go through ``pyarrow.dataset``, which reads record batches
with bounded read-ahead whatever the file size. In CSV files, columns the
model takes as numbers are read as text and parsed per chunk (see
``scoring.column_to_numpy``): one bad value then rejects one row, where
pyarrow's own type inference would fail the whole file. JSON Lines are parsed
line by line with orjson for the same reason (pyarrow's JSON reader stops at
the first line whose types differ from the others), and a line that is not
JSON becomes a rejected row.

A Parquet file can also be cut into spans (``plan_spans``): runs of whole
chunks that line up with the file's row groups, which a worker process reads
itself (``read_span``), so the driver moves no data at all.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from shipyard.errors import InvalidInput
from shipyard.jobs.batch.parts import rechunk
from shipyard.jobs.batch.rejects import RowError
from shipyard.jobs.batch.scoring import Chunk
from shipyard.signature import Signature, column_array

INPUT_FORMATS = ("parquet", "csv", "jsonl")
_SUFFIX_FORMAT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Read-ahead of the dataset scanner, in batches: enough to keep workers fed, bounded in memory.
_READAHEAD = 2


@dataclass(frozen=True)
class InputFile:
    """One input file and the facts that say whether it changed since a job started."""

    index: int
    path: str
    size: int
    mtime_ns: int

    def identity(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def discover(
    input: str | Path | Sequence[str | Path], input_format: str | None = None, *, exclude: Path | None = None
) -> tuple[list[InputFile], str]:
    """The input files, sorted, and their format.

    Args:
        input: a file, a folder (every file of the format inside, recursively, skipping
            names that start with ``_`` or ``.``), a glob such as ``data/*.parquet``, or a
            list of those.
        input_format: ``parquet``, ``csv`` or ``jsonl``; guessed from the suffixes when None.
        exclude: a folder whose files are never input (the job's own output, should it sit
            inside an input folder).
    """
    items = [input] if isinstance(input, (str, Path)) else list(input)
    named: list[Path] = []  # files the user named one by one: always read
    found: list[Path] = []  # files from a folder or a glob: read when their suffix fits the format
    for item in items:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_dir():
            found += [
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(("_", ".")) for part in f.relative_to(p).parts)
            ]
        elif glob.has_magic(text):
            found += [Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True) if Path(m).is_file()]
        elif p.is_file():
            named.append(p)
        else:
            raise InvalidInput(f"input '{text}' does not exist", field="input", got=text)
    fmt = input_format or _format_of(named + found, str(input))
    if fmt not in INPUT_FORMATS:
        raise InvalidInput(
            f"unknown input format '{fmt}'; use one of {', '.join(INPUT_FORMATS)}", field="input_format", got=fmt
        )
    paths = named + [f for f in found if _SUFFIX_FORMAT.get(f.suffix.lower()) == fmt]
    if exclude is not None:
        paths = [p for p in paths if not p.resolve().is_relative_to(exclude.resolve())]
    if not paths:
        raise InvalidInput(f"no {fmt} input files match '{input}'", field="input", got=str(input))
    unique = sorted({str(p.resolve()) for p in paths})
    files = []
    for i, path in enumerate(unique):
        st = os.stat(path)
        files.append(InputFile(i, path, st.st_size, st.st_mtime_ns))
    return files, fmt


def _format_of(paths: list[Path], where: str) -> str:
    found = {_SUFFIX_FORMAT.get(p.suffix.lower()) for p in paths} - {None}
    if not paths:
        raise InvalidInput(f"no input files match '{where}'", field="input", got=where)
    if len(found) != 1:
        what = ", ".join(sorted(f for f in found if f)) or "none of .parquet, .csv, .jsonl"
        raise InvalidInput(
            f"cannot tell the input format from the file names (found {what}); pass input_format / --input-format",
            field="input_format",
        )
    return str(found.pop())


class Reader(Protocol):
    """Reads input files as chunks of exactly ``rows`` rows (the last chunk of a file may be shorter)."""

    def columns(self) -> list[str]:
        """Names of the input columns, in file order."""

    def schema(self) -> pa.Schema:
        """Arrow types of the input columns (text for CSV columns the model takes as numbers)."""

    def total_rows(self) -> int | None:
        """Rows in all files, if known without reading them."""

    def chunks(self, file: InputFile, rows: int) -> Iterator[Chunk]:
        """The file's rows, chunk by chunk, in order."""

    def spans(self, file: InputFile, rows: int, max_rows: int) -> list[Span] | None:
        """The file cut into spans of chunks that a worker reads itself, or None if it cannot."""


def open_reader(fmt: str, files: list[InputFile], signature: Signature, columns: Sequence[str] | None) -> Reader:
    """A reader for ``files`` that reads the signature inputs plus ``columns`` (None: every column)."""
    if fmt == "jsonl":
        return JsonLinesReader(files, signature, columns)
    return DatasetReader(fmt, files, signature, columns)


class DatasetReader:
    """Parquet or CSV through ``pyarrow.dataset``."""

    def __init__(self, fmt: str, files: list[InputFile], signature: Signature, columns: Sequence[str] | None) -> None:
        self.fmt = fmt
        self.signature = signature
        if fmt == "csv":
            text_inputs = {s.name: pa.string() for s in signature.inputs if s.datatype != "BYTES"}
            convert = pacsv.ConvertOptions(column_types=text_inputs)
            file_format: ds.FileFormat = ds.CsvFileFormat(convert_options=convert)
        else:
            # pre_buffer (pyarrow's default) fetches the column chunks of every row group the
            # scan will read, up front: memory then grows with the file (442 MiB for 10M rows of
            # five columns, against 133 MiB without), where a batch job needs it flat.
            options = ds.ParquetFragmentScanOptions(pre_buffer=False)
            file_format = ds.ParquetFileFormat(default_fragment_scan_options=options)
        self.dataset = ds.dataset([f.path for f in files], format=file_format)
        names = self.dataset.schema.names
        wanted = list(names) if columns is None else list(columns)
        self.needed = list(dict.fromkeys([*wanted, *signature.input_names]))
        missing = [c for c in self.needed if c not in names]
        if missing:
            raise InvalidInput(
                f"input column '{missing[0]}' is not in {files[0].path} (it has {', '.join(names)})",
                field=missing[0],
                got=names,
            )
        self._columns = [c for c in names if c in self.needed]
        self._fragments = {frag.path: frag for frag in self.dataset.get_fragments()}

    def columns(self) -> list[str]:
        return list(self._columns)

    def schema(self) -> pa.Schema:
        return pa.schema([self.dataset.schema.field(c) for c in self._columns])

    def total_rows(self) -> int | None:
        if self.fmt != "parquet":
            return None
        return sum(int(frag.count_rows()) for frag in self._fragments.values())

    def chunks(self, file: InputFile, rows: int) -> Iterator[Chunk]:
        frag = self._check(file)
        # one thread and a short read-ahead: memory bounded by a row group or two, not the file
        batches = frag.to_batches(
            schema=self.dataset.schema, columns=self._columns, batch_size=rows, batch_readahead=_READAHEAD,
            fragment_readahead=1, use_threads=False,
        )
        for table in rechunk(batches, rows):
            yield Chunk(table)

    def spans(self, file: InputFile, rows: int, max_rows: int) -> list[Span] | None:
        """``file`` cut into spans a worker reads itself (``read_span``); None for CSV."""
        if self.fmt != "parquet":
            return None
        self._check(file)
        return plan_spans(parquet_groups(file.path), rows, max_rows)

    def _check(self, file: InputFile) -> ds.Fragment:
        frag = self._fragments[file.path]
        have = frag.physical_schema.names
        missing = [c for c in self.needed if c not in have]
        if missing:
            raise InvalidInput(f"input column '{missing[0]}' is not in {file.path}", field=missing[0])
        return frag


@dataclass(frozen=True)
class Span:
    """Chunks ``first .. first + chunks - 1`` of one Parquet file, and where they lie in it."""

    first: int
    chunks: int
    groups: tuple[int, ...]
    """The row groups that hold the span's rows."""

    skip: int
    """Rows of the first of those groups before the span's first row."""

    rows: int


def plan_spans(group_rows: Sequence[int], batch_rows: int, max_rows: int) -> list[Span]:
    """Cut a file of row groups into spans of whole chunks of ``batch_rows`` rows.

    A span starts at the first chunk that starts in a row group, so that no row group is
    read by two spans except where a chunk straddles two groups (its reader decodes at
    most ``batch_rows`` rows it skips). A span longer than ``max_rows`` is cut in equal
    pieces, each of which decodes the rows of its group before its start: the price of
    giving every worker a share of a file with fewer row groups than workers.

    Args:
        group_rows: rows of each row group, in file order.
        batch_rows: rows per chunk (the last chunk of the file may be shorter).
        max_rows: the most rows a span should hold (at least one chunk).
    """
    starts = np.concatenate([[0], np.cumsum(group_rows, dtype=np.int64)])
    total = int(starts[-1])
    n_chunks = -(-total // batch_rows)
    edges = sorted({min(-(-int(s) // batch_rows), n_chunks) for s in starts[:-1]} | {0, n_chunks})
    per_span = max(1, max_rows // batch_rows)
    spans: list[Span] = []
    for a, b in zip(edges, edges[1:], strict=False):
        pieces = -(-(b - a) // per_span)
        cuts = [a + (b - a) * i // pieces for i in range(pieces + 1)]
        for first, end in zip(cuts, cuts[1:], strict=False):
            lo, hi = first * batch_rows, min(end * batch_rows, total)
            g0 = int(np.searchsorted(starts, lo, side="right")) - 1
            g1 = int(np.searchsorted(starts, hi, side="left"))
            spans.append(Span(first, end - first, tuple(range(g0, g1)), lo - int(starts[g0]), hi - lo))
    return spans


def parquet_groups(path: str) -> list[int]:
    """Rows of each row group of a Parquet file (from its footer)."""
    meta = pq.read_metadata(path)
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def read_span(path: str, span: Span, schema: pa.Schema, batch_rows: int) -> Iterator[Chunk]:
    """The chunks of ``span``, read from the file here, with the columns and types of ``schema``.

    They hold the same rows, columns and types as ``DatasetReader.chunks`` gives for the
    same chunk numbers, so a part is the same whichever way its rows were read.
    """
    source = pq.ParquetFile(path, pre_buffer=False)
    try:
        batches = source.iter_batches(
            batch_size=batch_rows, row_groups=list(span.groups), columns=schema.names, use_threads=False
        )
        skip, left = span.skip, span.rows

        def wanted() -> Iterator[pa.RecordBatch]:
            nonlocal skip, left
            for batch in batches:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch = batch.slice(skip, left)
                skip = 0
                left -= batch.num_rows
                yield batch
                if left == 0:
                    return

        for table in rechunk(wanted(), batch_rows):
            if table.schema != schema:
                table = table.select(schema.names).cast(schema)
            yield Chunk(table)
    finally:
        source.close()


class JsonLinesReader:
    """One JSON object per line, parsed with orjson; a line that does not parse is a rejected row."""

    def __init__(self, files: list[InputFile], signature: Signature, columns: Sequence[str] | None) -> None:
        self.files = files
        self.signature = signature
        first = _first_object(files)
        names = list(first)
        wanted = names if columns is None else list(columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise InvalidInput(
                f"input column '{missing[0]}' is not in the first record of {files[0].path} "
                f"(it has {', '.join(names)})",
                field=missing[0],
                got=names,
            )
        self.inputs = set(signature.input_names)
        self.passthrough = [c for c in wanted if c not in self.inputs]
        self._columns = list(dict.fromkeys([*wanted, *signature.input_names]))
        probe = {c: pa.array([first.get(c)]).type for c in self.passthrough}
        self._types = {c: (pa.string() if t == pa.null() else t) for c, t in probe.items()}

    def columns(self) -> list[str]:
        return list(self._columns)

    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c, self._types.get(c, pa.string())) for c in self._columns])

    def total_rows(self) -> int | None:
        return None

    def spans(self, file: InputFile, rows: int, max_rows: int) -> list[Span] | None:
        return None

    def chunks(self, file: InputFile, rows: int) -> Iterator[Chunk]:
        with open(file.path, "rb") as f:
            lines: list[bytes] = []
            for line in f:
                if not line.strip():
                    continue
                lines.append(line)
                if len(lines) == rows:
                    yield self._chunk(lines, file)
                    lines = []
            if lines:
                yield self._chunk(lines, file)

    def _chunk(self, lines: list[bytes], file: InputFile) -> Chunk:
        records: list[dict[str, Any]] = []
        errors: list[RowError] = []
        for i, line in enumerate(lines):
            shown = line[:200].decode(errors="replace").rstrip("\n")
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                errors.append(RowError(i, None, f"line is not valid JSON ({exc}): {shown!r}"))
                doc = {}
            if not isinstance(doc, dict):
                errors.append(RowError(i, None, f"line is not a JSON object: {shown!r}"))
                doc = {}
            records.append(doc)
        table_cols = {}
        for c in self.passthrough:
            try:
                table_cols[c] = pa.array([r.get(c) for r in records], type=self._types[c])
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise InvalidInput(
                    f"column '{c}' of {file.path} holds values of different types ({exc}); "
                    "a pass-through column must have one type",
                    field=c,
                ) from None
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name in self.inputs:
            values = [r.get(name) for r in records]
            arrays[name] = column_array(values) if values else np.empty(0, dtype=object)
        table = pa.table(table_cols) if table_cols else pa.table({"_": pa.nulls(len(records))}).drop_columns("_")
        return Chunk(table, arrays, tuple(errors))


def _first_object(files: list[InputFile]) -> dict[str, Any]:
    for file in files:
        with open(file.path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        doc = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(doc, dict):
                        return doc
    raise InvalidInput(f"no JSON object found in {files[0].path} (one object per line expected)", field="input")
