"""Dask and Spark give exactly the local engine's predictions on the same data.

Spark runs in one ``local[2]`` session for the module, on the machine's Java.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.fixtures.batch import iris_rows, write_parquet

from shipyard.config import Settings
from shipyard.jobs.batch import BatchResult, batch_predict

pytestmark = pytest.mark.integration

ROWS = 30_000
OPTIONS: dict[str, Any] = {"id_columns": ["id"], "batch_rows": 5_000, "max_reject_ratio": 0.01, "progress": False}


def data_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("_manifest.json", "_parts.jsonl")
    }


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30k rows in two files; every 997th row lacks petal_width."""
    folder = tmp_path_factory.mktemp("engines-in")
    rows = iris_rows(ROWS, seed=21, bad_every=997)
    write_parquet(rows.iloc[:12_000], folder / "a.parquet", row_group_size=4_000)
    write_parquet(rows.iloc[12_000:], folder / "b.parquet", row_group_size=7_000)
    return folder


@pytest.fixture(scope="module")
def local_run(demo_home: Path, rows_file: Path, tmp_path_factory: pytest.TempPathFactory) -> BatchResult:
    out = tmp_path_factory.mktemp("engines-local") / "out"
    return batch_predict("demo@champion", rows_file, out, workers=1, settings=Settings(home=demo_home), **OPTIONS)


def test_dask_engine_writes_the_same_parts_as_the_local_engine(
    demo_home: Path, rows_file: Path, local_run: BatchResult, tmp_path: Path
) -> None:
    result = batch_predict("demo@champion", rows_file, tmp_path / "out", engine="dask", workers=2,
                           settings=Settings(home=demo_home), **OPTIONS)
    assert (result.engine, result.rows, result.rejected) == ("dask", ROWS, local_run.rejected)
    assert local_run.rejected == len(range(7, ROWS, 997))
    assert data_files(tmp_path / "out") == data_files(local_run.output)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime and `java` is not on PATH (scripts/test.sh installs "
                    "default-jre-headless)")
    from shipyard.jobs.batch.spark import spark_session

    session = spark_session(2, batch_rows=4_000)
    try:
        yield session
    finally:
        session.stop()


def local_predictions(run: BatchResult) -> pd.DataFrame:
    return pd.read_parquet(run.output).sort_values("id").reset_index(drop=True)


def local_rejects(run: BatchResult) -> dict[int, str]:
    assert run.rejects_path is not None
    records = [json.loads(line) for line in run.rejects_path.read_text().splitlines()]
    return {r["input"]["id"]: r["reason"] for r in records}


@pytest.mark.slow
def test_predict_spark_gives_the_local_engines_predictions(
    spark: Any, demo_home: Path, rows_file: Path, local_run: BatchResult
) -> None:
    from shipyard.jobs.batch.spark import predict_spark

    df = spark.read.parquet(str(rows_file))
    scored = predict_spark(df, "demo@champion", id_columns=["id"], settings=Settings(home=demo_home))
    assert scored.columns == ["id", "predict", "model_name", "model_version", "reject_reason"]
    got = scored.toPandas().sort_values("id").reset_index(drop=True)
    assert len(got) == ROWS
    good = got[got["reject_reason"].isna()].reset_index(drop=True)
    want = local_predictions(local_run)
    assert good["id"].tolist() == want["id"].tolist()
    np.testing.assert_array_equal(good["predict"].astype(np.int64), want["predict"])
    assert set(good["model_version"]) == {1} and set(good["model_name"]) == {"demo"}
    bad = got[got["reject_reason"].notna()]
    assert dict(zip(bad["id"], bad["reject_reason"], strict=True)) == local_rejects(local_run)
    assert bad["predict"].isna().all()


@pytest.mark.slow
def test_spark_engine_writes_the_local_engines_predictions(
    spark: Any, demo_home: Path, rows_file: Path, local_run: BatchResult, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = batch_predict("demo@champion", rows_file, out, engine="spark", settings=Settings(home=demo_home),
                           **OPTIONS)
    assert (result.engine, result.rows, result.predicted, result.rejected) == (
        "spark", ROWS, local_run.predicted, local_run.rejected
    )
    got = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, local_predictions(local_run))
    rejected = pd.concat(pd.read_json(p, lines=True) for p in sorted((out / "_rejects").glob("part-*.json")))
    assert dict(zip(rejected["id"], rejected["reject_reason"], strict=True)) == local_rejects(local_run)
    # the same command again overwrites with the same result
    again = batch_predict("demo@champion", rows_file, out, engine="spark", settings=Settings(home=demo_home),
                          **OPTIONS)
    assert again.rows == ROWS
    pd.testing.assert_frame_equal(pd.read_parquet(out).sort_values("id").reset_index(drop=True), got)
