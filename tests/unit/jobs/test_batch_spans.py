"""Spans: the chunks of a Parquet file a worker reads itself are the chunks the driver's reader gives."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from tests.fixtures.batch import FEATURES, iris_rows, write_parquet

from shipyard.jobs.batch.readers import DatasetReader, discover, parquet_groups, plan_spans, read_span
from shipyard.signature import infer_signature


def covered(spans: list, batch_rows: int, total: int) -> list[int]:
    chunks = [k for s in spans for k in range(s.first, s.first + s.chunks)]
    assert sum(s.rows for s in spans) == total
    return chunks


@pytest.mark.parametrize(
    ("groups", "batch_rows", "max_rows"),
    [
        ([1000] * 10, 100, 10_000),  # groups of whole chunks
        ([700, 700, 700, 400], 400, 10_000),  # chunks straddle groups
        ([1000], 100, 250),  # one group, cut for the workers
        ([50, 50, 50, 50, 7], 400, 10_000),  # groups smaller than a chunk
        ([0, 300, 0, 300], 200, 10_000),  # empty groups
    ],
)
def test_spans_cover_every_chunk_once_in_order(groups: list[int], batch_rows: int, max_rows: int) -> None:
    total = sum(groups)
    spans = plan_spans(groups, batch_rows, max_rows)
    assert covered(spans, batch_rows, total) == list(range(-(-total // batch_rows)))
    for s in spans:
        assert s.rows <= max(max_rows, batch_rows) or s.chunks == 1
        first_row = s.first * batch_rows
        assert sum(groups[: s.groups[0]]) + s.skip == first_row
        assert sum(groups[g] for g in s.groups) - s.skip >= s.rows


def test_a_span_starts_where_a_row_group_starts_when_chunks_allow() -> None:
    spans = plan_spans([1000] * 10, 100, 10_000)
    assert [(s.first, s.chunks, s.groups, s.skip) for s in spans] == [(10 * g, 10, (g,), 0) for g in range(10)]


def test_a_file_without_rows_has_no_spans() -> None:
    assert plan_spans([], 100, 1000) == []


@pytest.mark.parametrize(("row_group_size", "batch_rows", "max_rows"), [(700, 400, 10_000), (5000, 300, 900)])
def test_chunks_read_by_spans_equal_the_readers_chunks(
    tmp_path: Path, row_group_size: int, batch_rows: int, max_rows: int
) -> None:
    data = iris_rows(5000, seed=2, bad_every=333)
    src = write_parquet(data, tmp_path / "in.parquet", row_group_size=row_group_size)
    files, fmt = discover(src)
    reader = DatasetReader(fmt, files, infer_signature(data[FEATURES]), ["id"])
    expected = [c.table for c in reader.chunks(files[0], batch_rows)]
    spans = plan_spans(parquet_groups(files[0].path), batch_rows, max_rows)
    got: list[pa.Table] = []
    for span in spans:
        tables = [c.table for c in read_span(files[0].path, span, reader.schema(), batch_rows)]
        assert len(tables) == span.chunks
        got += tables
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.schema == b.schema and a.equals(b)
