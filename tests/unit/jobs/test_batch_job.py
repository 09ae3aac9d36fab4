"""Whole batch jobs in this process (one worker): output, rejects, manifest, resume after a crash.

The crash here is an executor that stops after a few parts, as a killed driver
would; tests/integration/test_batch_local.py kills a real process with SIGKILL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from sklearn.linear_model import LogisticRegression
from tests.fixtures.batch import FEATURES, iris_rows, write_parquet

from shipyard.config import Settings
from shipyard.errors import ConfigError, InvalidInput
from shipyard.jobs.batch import RejectLimitExceeded, batch_predict
from shipyard.jobs.batch.local import InlineExecutor, run
from shipyard.jobs.batch.plan import absolute, plan_job
from shipyard.jobs.batch.progress import Silent
from shipyard.jobs.batch.readers import discover
from shipyard.registry import Registry

T = TypeVar("T")


class Crash(BaseException):
    """Stands for the driver being killed."""


class CrashAfter(Executor):
    """Runs ``n`` tasks in this process, then 'dies' on the next submit."""

    def __init__(self, n: int) -> None:
        self.n = n

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self.n == 0:
            raise Crash()
        self.n -= 1
        return InlineExecutor().submit(fn, *args, **kwargs)


@pytest.fixture
def model(registry: Registry) -> LogisticRegression:
    data = iris_rows(300, seed=1)
    clf = LogisticRegression(max_iter=500).fit(data[FEATURES], data["id"] % 3)
    registry.register(clf, "lr", sample=data[FEATURES].head(), alias="champion")
    return clf


def predict(model: str, input: Any, output: Path, settings: Settings, **options: Any) -> Any:
    options.setdefault("workers", 1)
    options.setdefault("progress", False)
    return batch_predict(model, input, output, settings=settings, **options)


def jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every data file of an output folder (not the manifest or journal, which hold times and order)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("_manifest.json", "_parts.jsonl")
    }


def test_predictions_come_out_in_input_order_with_ids_model_and_version(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    data = iris_rows(2500, seed=3)
    src = write_parquet(data, tmp_path / "in.parquet", row_group_size=700)
    result = predict("lr", src, tmp_path / "out", settings, id_columns=["id"], batch_rows=1000)
    assert (result.rows, result.predicted, result.rejected, result.parts) == (2500, 2500, 0, 3)
    assert result.rejects_path is None and result.model == "lr:1"
    out = pd.read_parquet(tmp_path / "out")
    assert list(out.columns) == ["id", "predict", "model_name", "model_version"]
    assert out["id"].tolist() == list(range(2500))
    np.testing.assert_array_equal(out["predict"], model.predict(data[FEATURES]))
    assert set(out["model_name"]) == {"lr"} and set(out["model_version"]) == {1}
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["_SUCCESS", "_manifest.json", "_parts.jsonl", *(f"part-00000-00000{i}.parquet" for i in range(3))]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["totals"]["rows"] == 2500
    assert manifest["job"]["model"]["version"] == 1 and manifest["model_ref"] == "lr"


def test_a_job_killed_part_way_resumes_and_ends_identical(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    data = iris_rows(5000, seed=4, bad_every=333)
    src = write_parquet(data, tmp_path / "in.parquet", row_group_size=900)
    reference = predict("lr", src, tmp_path / "ref", settings, id_columns=["id"], batch_rows=400, max_reject_ratio=1)

    out = tmp_path / "out"
    job = plan_job(
        "lr", src, out, output_format="parquet", id_columns=("id",), keep_input=False, batch_rows=400,
        input_format=None, settings=absolute(settings),
    )
    with pytest.raises(Crash):
        run(job, CrashAfter(5), engine="local", workers=1, progress=Silent(), spool=True)
    assert not (out / "_SUCCESS").exists()
    assert len((out / "_parts.jsonl").read_text().splitlines()) == 5
    (out / ".tmp-deadbeef-part-00000-000005.parquet").write_bytes(b"half a part")  # a worker died mid-write
    (out / ".tmp-spool-0123").mkdir()  # and the driver with chunks still spooled
    (out / ".tmp-spool-0123" / "part-00000-000006.arrow").write_bytes(b"chunk")

    result = predict("lr", src, out, settings, id_columns=["id"], batch_rows=400, max_reject_ratio=1)
    assert result.resumed_parts == 5 and result.parts == reference.parts == 13
    assert (result.rows, result.predicted, result.rejected) == (reference.rows, reference.predicted, reference.rejected)
    assert snapshot(out) == snapshot(tmp_path / "ref")
    ids = pd.read_parquet(out)["id"].tolist() + [r["row"] for r in jsonl(out / "_rejects.jsonl")]
    assert sorted(ids) == list(range(5000))  # every row once: predicted or rejected


def test_rerunning_a_finished_job_changes_nothing(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    src = write_parquet(iris_rows(900), tmp_path / "in.parquet")
    first = predict("lr", src, tmp_path / "out", settings, batch_rows=300)
    before = snapshot(tmp_path / "out")
    again = predict("lr", src, tmp_path / "out", settings, batch_rows=300)
    assert again.resumed_parts == again.parts == first.parts == 3
    assert snapshot(tmp_path / "out") == before


def test_a_rerun_keeps_the_version_the_job_started_with(
    tmp_path: Path, settings: Settings, registry: Registry, model: LogisticRegression, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_parquet(iris_rows(1000), tmp_path / "in.parquet")
    out = tmp_path / "out"
    job = plan_job(
        "lr@champion", src, out, output_format="parquet", id_columns=(), keep_input=False, batch_rows=250,
        input_format=None, settings=absolute(settings),
    )
    with pytest.raises(Crash):
        run(job, CrashAfter(2), engine="local", workers=1, progress=Silent())
    v2 = registry.register(model, "lr", sample=iris_rows(5)[FEATURES], description="v2")
    registry.set_alias("lr", "champion", v2.version)
    with caplog.at_level(logging.WARNING, logger="shipyard"):
        result = predict("lr@champion", src, out, settings, batch_rows=250)
    assert result.model == "lr:1"
    assert set(pd.read_parquet(out)["model_version"]) == {1}
    assert "lr@champion now means version 2" in caplog.text
    # a new job with that alias gets the new version
    assert predict("lr@champion", src, tmp_path / "new", settings).model == "lr:2"


def test_an_output_folder_of_another_job_is_refused(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    src = write_parquet(iris_rows(100), tmp_path / "in.parquet")
    predict("lr", src, tmp_path / "out", settings, id_columns=["id"])
    with pytest.raises(ConfigError, match=r"different batch job \(output columns"):
        predict("lr", src, tmp_path / "out", settings)
    write_parquet(iris_rows(101), src)
    with pytest.raises(ConfigError, match="input files"):
        predict("lr", src, tmp_path / "out", settings, id_columns=["id"])


def test_too_many_rejects_fail_the_job_after_writing_everything(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    data = iris_rows(1000, seed=5, bad_every=50)
    src = write_parquet(data, tmp_path / "in.parquet")
    with pytest.raises(RejectLimitExceeded, match=r"20 of 1,000 rows \(2.00%\)") as info:
        predict("lr", src, tmp_path / "out", settings, id_columns=["id"], max_reject_ratio=0.01)
    result = info.value.result
    assert (result.predicted, result.rejected) == (980, 20)
    assert (tmp_path / "out" / "_SUCCESS").exists()
    rejects = jsonl(tmp_path / "out" / "_rejects.jsonl")
    assert [r["row"] for r in rejects] == list(range(7, 1000, 50))
    assert rejects[0]["field"] == "petal_width" and rejects[0]["input"]["id"] == 7
    # within the limit the same job succeeds (and resumes: nothing is recomputed)
    ok = predict("lr", src, tmp_path / "out", settings, id_columns=["id"], max_reject_ratio=0.02)
    assert ok.rejected == 20 and ok.resumed_parts == ok.parts


def test_csv_in_with_bad_text_and_csv_out_with_list_columns(
    tmp_path: Path, settings: Settings, registry: Registry
) -> None:
    data = iris_rows(400)
    clf = LogisticRegression(max_iter=500).fit(data[FEATURES], data["id"] % 3)
    registry.register(clf, "proba", sample=data[FEATURES].head(), methods=["predict", "predict_proba"])
    text = data.astype({"sepal_width": object})
    text.loc[[10, 20], "sepal_width"] = ["abc", ""]
    text.to_csv(tmp_path / "in.csv", index=False)
    result = predict("proba", tmp_path / "in.csv", tmp_path / "out", settings, keep_input=True, format="csv",
                     batch_rows=150, max_reject_ratio=0.5)
    assert (result.rows, result.rejected) == (400, 2)
    out = ds.dataset(tmp_path / "out", format="csv").to_table().to_pandas()  # skips _rejects.jsonl & co
    assert list(out.columns)[:5] == ["id", *FEATURES]
    assert [c for c in out.columns if c.startswith("predict_proba")] == ["predict_proba_0", "predict_proba_1",
                                                                         "predict_proba_2"]
    good = data.drop(index=[10, 20])
    np.testing.assert_allclose(out[[f"predict_proba_{i}" for i in range(3)]], clf.predict_proba(good[FEATURES]))
    reasons = [r["reason"] for r in jsonl(tmp_path / "out" / "_rejects.jsonl")]
    assert reasons == ["input 'sepal_width': expected FP64, got str 'abc'",
                       "input 'sepal_width': expected FP64, got str ''"]


def test_json_lines_with_broken_lines_and_mixed_types(tmp_path: Path, settings: Settings,
                                                      model: LogisticRegression) -> None:
    rows = iris_rows(6).to_dict(orient="records")
    lines = [json.dumps(r) for r in rows]
    lines[2] = "{not json"
    lines[4] = json.dumps({**rows[4], "petal_length": "long"})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n\n")
    result = predict("lr", tmp_path / "in.jsonl", tmp_path / "out", settings, id_columns=["id"], format="jsonl",
                     max_reject_ratio=0.5)
    assert (result.rows, result.predicted, result.rejected) == (6, 4, 2)
    out = jsonl(tmp_path / "out" / "part-00000-000000.jsonl")
    assert [r["id"] for r in out] == [0, 1, 3, 5]
    rejects = jsonl(tmp_path / "out" / "_rejects.jsonl")
    assert rejects[0]["row"] == 2 and rejects[0]["reason"].startswith("line is not valid JSON")
    assert rejects[1]["reason"] == "input 'petal_length': expected FP64, got str 'long'"


def test_a_missing_input_column_fails_before_anything_runs(tmp_path: Path, settings: Settings,
                                                            model: LogisticRegression) -> None:
    src = write_parquet(iris_rows(10).drop(columns="petal_width"), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match="input column 'petal_width' is not in"):
        predict("lr", src, tmp_path / "out", settings)
    with pytest.raises(InvalidInput, match="input column 'key' is not in"):
        predict("lr", write_parquet(iris_rows(10), tmp_path / "ok.parquet"), tmp_path / "out", settings,
                id_columns=["key"])
    assert not (tmp_path / "out").exists()


def test_inputs_by_folder_glob_and_list(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.parquet", "d/sub/a.parquet", "d/_tmp.parquet", "d/notes.txt", "c.csv"):
        (tmp_path / name).write_bytes(b"")
    files, fmt = discover(tmp_path / "d")
    assert fmt == "parquet" and [Path(f.path).name for f in files] == ["b.parquet", "a.parquet"]
    files, fmt = discover(str(tmp_path / "d" / "**" / "*.parquet"))
    assert [Path(f.path).name for f in files] == ["_tmp.parquet", "b.parquet", "a.parquet"]
    with pytest.raises(InvalidInput, match="cannot tell the input format"):
        discover([tmp_path / "c.csv", tmp_path / "d" / "b.parquet"])
    with pytest.raises(InvalidInput, match="does not exist"):
        discover(tmp_path / "nope.parquet")
    with pytest.raises(InvalidInput, match="no input files match"):
        discover(str(tmp_path / "*.jsonl"))


def test_options_are_checked(tmp_path: Path, settings: Settings) -> None:
    for bad, match in [({"format": "xml"}, "output format"), ({"engine": "ray"}, "engine"),
                       ({"workers": 0}, "workers"), ({"max_reject_ratio": 2.0}, "max_reject_ratio"),
                       ({"batch_rows": 0}, "batch_rows")]:
        with pytest.raises(ConfigError, match=match):
            batch_predict("lr", tmp_path, tmp_path / "out", settings=settings, **bad)


def test_an_output_folder_inside_the_input_folder_is_not_read_as_input(
    tmp_path: Path, settings: Settings, model: LogisticRegression
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_parquet(iris_rows(100), data / "in.parquet")
    first = predict("lr", data, data / "scores", settings)
    again = predict("lr", data, data / "scores", settings)  # the parts are now in data/ too
    assert first.rows == again.rows == 100 and again.resumed_parts == again.parts == 1
