"""Write output parts and rejects files atomically: a temporary name, fsync, then rename.

A reader (or a rerun) therefore sees a part whole or not at all. The same
table always gives the same bytes, so a part redone after a crash is
identical to the one an uninterrupted run writes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shipyard.jobs.batch.parts import temporary_path, write_atomic

OUTPUT_FORMATS = ("parquet", "csv", "jsonl")


def write_part(table: pa.Table, path: Path, fmt: str) -> None:
    """Write one output part as parquet, csv or jsonl."""
    tmp = temporary_path(path)
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pacsv.write_csv(flatten_lists(table), tmp)
        elif fmt == "jsonl":
            with open(tmp, "wb") as f:
                for chunk in jsonl_lines(table.to_pylist()):
                    f.write(chunk)
        else:
            raise ValueError(f"unknown output format {fmt!r}")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def flatten_lists(table: pa.Table) -> pa.Table:
    """CSV has no lists: a fixed-size list column ``p`` becomes columns ``p_0``, ``p_1``, ..."""
    names: list[str] = []
    columns: list[Any] = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(col.type) and not _is_list(col.type.value_type):
            flat = col.combine_chunks().flatten()
            size = col.type.list_size
            for i in range(size):
                names.append(f"{name}_{i}")
                columns.append(flat.take(pa.array(range(i, len(flat), size), pa.int64())) if len(flat) else flat)
        elif _is_list(col.type):
            names.append(name)
            columns.append(pa.array([orjson.dumps(v).decode() for v in col.to_pylist()], pa.string()))
        else:
            names.append(name)
            columns.append(col)
    return pa.Table.from_arrays(columns, names=names)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def jsonl_lines(records: Iterable[Mapping[str, Any]], per_write: int = 4096) -> Iterable[bytes]:
    """Records as JSON Lines, joined into a few large byte strings (NaN becomes null)."""
    buf: list[bytes] = []
    for rec in records:
        buf.append(orjson.dumps(rec, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY))
        if len(buf) >= per_write:
            yield b"\n".join(buf) + b"\n"
            buf = []
    if buf:
        yield b"\n".join(buf) + b"\n"


def _json_default(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode(errors="replace")
    return str(x)


def write_records(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write JSON Lines records atomically."""
    write_atomic(path, b"".join(jsonl_lines(records)))


def concatenate(sources: Iterable[Path], dest: Path) -> None:
    """Join files into ``dest`` atomically, in the given order."""
    tmp = temporary_path(dest)
    try:
        with open(tmp, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        _fsync(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
