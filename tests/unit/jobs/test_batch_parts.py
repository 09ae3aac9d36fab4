"""Output layout, journal and manifest: what decides that a rerun skips a part."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from shipyard.errors import ConfigError
from shipyard.jobs.batch.parts import (
    MANIFEST,
    REJECTS_DIR,
    FileRecord,
    Journal,
    PartRecord,
    finished,
    identity_mismatch,
    parse_journal,
    part_name,
    prepare_output,
    present_files,
    rechunk,
    write_manifest,
)

IDENTITY = {
    "layout": "shipyard-batch-parts/1",
    "model": {"name": "demo", "version": 1, "digest": "abc"},
    "inputs": [{"path": "/data/a.parquet", "size": 10, "mtime_ns": 1}],
    "input_format": "parquet",
    "output_format": "parquet",
    "columns": ["id", "predict", "model_name", "model_version"],
    "batch_rows": 100,
}


def test_part_names_sort_in_input_order() -> None:
    names = [part_name(f, c) for f in (0, 1, 10) for c in (0, 2, 11, 100000)]
    assert names == sorted(names)
    assert part_name(3, 7) == "part-00003-000007"


def test_rechunk_cuts_at_the_same_rows_whatever_the_reader_batch_sizes() -> None:
    ids = list(range(1000))
    uneven = [pa.record_batch({"id": ids[a:b]}) for a, b in [(0, 3), (3, 250), (250, 251), (251, 900), (900, 1000)]]
    even = [pa.record_batch({"id": ids[a : a + 64]}) for a in range(0, 1000, 64)]
    for batches in (uneven, even):
        chunks = list(rechunk(batches, 300))
        assert [c.num_rows for c in chunks] == [300, 300, 300, 100]
        assert [c.column("id").to_pylist() for c in chunks] == [ids[0:300], ids[300:600], ids[600:900], ids[900:]]
        assert all(c.column("id").num_chunks == 1 for c in chunks)


def test_rechunk_of_nothing_is_nothing() -> None:
    assert list(rechunk([], 10)) == []
    assert list(rechunk([pa.record_batch({"id": pa.array([], pa.int64())})], 10)) == []


def test_journal_skips_a_torn_last_line_and_appends_on_a_fresh_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(PartRecord("part-00000-000000", 0, 0, 100, 99, 1))
    with open(journal.path, "a") as f:
        f.write('{"part":"part-00000-000001","file":0,"ch')  # the driver died mid-line
    journal.append(PartRecord("part-00000-000002", 0, 2, 100, 100, 0))
    journal.append(FileRecord(0, 3, 300))
    state = journal.read()
    assert sorted(state.parts) == ["part-00000-000000", "part-00000-000002"]
    assert state.parts["part-00000-000000"].rejected == 1
    assert state.files == {0: FileRecord(0, 3, 300)}


def test_parse_journal_ignores_lines_that_are_not_records() -> None:
    state = parse_journal(["", "not json", "[1, 2]", '{"part": "p", "file": 0}', '{"file": 1, "chunks": 2, "rows": 5}'])
    assert state.parts == {}
    assert state.files == {1: FileRecord(1, 2, 5)}


def test_a_part_counts_as_done_only_when_journaled_and_its_files_exist() -> None:
    state = parse_journal(
        json.dumps(r)
        for r in [
            {"part": "part-00000-000000", "file": 0, "chunk": 0, "rows": 10, "predicted": 10, "rejected": 0},
            {"part": "part-00000-000001", "file": 0, "chunk": 1, "rows": 10, "predicted": 8, "rejected": 2},
            {"part": "part-00000-000002", "file": 0, "chunk": 2, "rows": 5, "predicted": 5, "rejected": 0},
            {"file": 0, "chunks": 3, "rows": 25},
        ]
    )
    everything = {
        "part-00000-000000.parquet",
        "part-00000-000001.parquet",
        f"{REJECTS_DIR}/part-00000-000001.jsonl",
        "part-00000-000002.parquet",
    }
    done = finished(state, everything, ".parquet")
    assert len(done.parts) == 3 and 0 in done.files
    # the rejects file of part 1 is gone: part 1 is redone, so file 0 is no longer complete
    done = finished(state, everything - {f"{REJECTS_DIR}/part-00000-000001.jsonl"}, ".parquet")
    assert sorted(done.parts) == ["part-00000-000000", "part-00000-000002"]
    assert done.files == {}
    # parts of another format do not count
    assert finished(state, {n.replace(".parquet", ".csv") for n in everything}, ".parquet").parts == {}


def test_identity_mismatch_names_what_differs() -> None:
    assert identity_mismatch(IDENTITY, dict(IDENTITY)) is None
    other = {**IDENTITY, "model": {"name": "demo", "version": 2, "digest": "def"}}
    assert identity_mismatch(IDENTITY, other) == "model version: it was made by demo:1, this run uses demo:2"
    touched = {**IDENTITY, "inputs": [{"path": "/data/a.parquet", "size": 10, "mtime_ns": 2}]}
    assert "input files" in (identity_mismatch(IDENTITY, touched) or "")
    assert "--format" in (identity_mismatch(IDENTITY, {**IDENTITY, "output_format": "csv"}) or "")


def test_prepare_output_creates_a_new_folder(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert prepare_output(out, IDENTITY) is False
    assert out.is_dir()


def test_prepare_output_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a shipyard batch output"):
        prepare_output(tmp_path, IDENTITY)


def test_prepare_output_refuses_another_jobs_output(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"job": IDENTITY})
    with pytest.raises(ConfigError, match=r"different batch job \(--format"):
        prepare_output(tmp_path, {**IDENTITY, "output_format": "csv"})


def test_prepare_output_resumes_the_same_job_and_drops_temporary_files(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"job": IDENTITY})
    (tmp_path / ".tmp-1234-part-00000-000003.parquet").write_bytes(b"half")
    (tmp_path / REJECTS_DIR).mkdir()
    (tmp_path / REJECTS_DIR / ".tmp-99-part-00000-000003.jsonl").write_bytes(b"half")
    assert prepare_output(tmp_path, IDENTITY) is True
    assert present_files(tmp_path) == {MANIFEST, REJECTS_DIR}


def test_a_folder_left_with_only_temporary_files_is_reused(tmp_path: Path) -> None:
    (tmp_path / ".tmp-1234-_manifest.json").write_text("{")
    assert prepare_output(tmp_path, IDENTITY) is False
    assert list(tmp_path.iterdir()) == []
