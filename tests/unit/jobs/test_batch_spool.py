"""Chunks handed to worker processes as Arrow files: same rows back, file gone once loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from shipyard.jobs.batch.rejects import RowError
from shipyard.jobs.batch.scoring import Chunk
from shipyard.jobs.batch.spool import Spool


def test_a_spooled_chunk_loads_as_the_same_rows_and_its_file_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    table = pa.table({"id": np.arange(1000), "x": np.linspace(0, 1, 1000), "s": ["a"] * 1000})
    errors = (RowError(3, None, "line is not valid JSON"),)
    spooled = spool.put(Chunk(table, {"y": np.arange(1000.0)}, errors), "part-00000-000000")
    assert Path(spooled.path).parent.name.startswith(".tmp-spool-")
    chunk = spooled.load()
    assert chunk.table.equals(table) and chunk.errors == errors
    np.testing.assert_array_equal(chunk.arrays["y"], np.arange(1000.0))
    assert not Path(spooled.path).exists()
    spool.close()
    assert list(tmp_path.iterdir()) == []
