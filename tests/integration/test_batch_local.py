"""`shipyard batch` as a user runs it: real processes, a real SIGKILL, the rejects file and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tests.fixtures.batch import iris_rows, write_parquet

pytestmark = pytest.mark.integration

ROWS = 400_000
BATCH_ROWS = 8_000  # 50 parts


def shipyard(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shipyard", "--home", str(home), *args]


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """The data files of an output (not the manifest or journal, which hold times and completion order)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("_manifest.json", "_parts.jsonl")
    }


def descendants(pid: int) -> set[int]:
    """Children, grandchildren...: the forkserver, its workers, the resource tracker."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").iterdir():
            kids = {int(x) for x in (task / "children").read_text().split()}
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400k rows; every 10007th row lacks petal_width."""
    return write_parquet(iris_rows(ROWS, seed=11, bad_every=10_007), tmp_path_factory.mktemp("in") / "rows.parquet",
                         row_group_size=50_000)


def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_output(
    demo_home: Path, big_input: Path, tmp_path: Path
) -> None:
    def command(out: Path) -> list[str]:
        return shipyard(demo_home, "batch", "demo@champion", "--input", str(big_input), "--output", str(out),
                        "--id-column", "id", "--batch-rows", str(BATCH_ROWS), "--workers", "2",
                        "--max-reject-ratio", "0.01")

    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    journal = out / "_parts.jsonl"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command(out), env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
            log = tmp_path / "killed.log"
            assert proc.poll() is None, "the run ended before it could be killed:\n" + log.read_text()
            assert time.monotonic() < deadline, "no part finished in time"
            time.sleep(0.005)
        workers = descendants(proc.pid)
        assert len(workers) >= 3  # forkserver and two workers, at least
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    finished_parts = len(journal.read_text().splitlines())
    assert 3 <= finished_parts < ROWS // BATCH_ROWS, "killed part-way"
    assert not (out / "_SUCCESS").exists()
    # the workers die with the driver instead of scoring on as orphans
    deadline = time.monotonic() + 15
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers)

    rerun = subprocess.run(command(out), env=env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert "done by an earlier run" in rerun.stdout
    assert snapshot(out) == snapshot(reference)
    predicted = pd.read_parquet(out, columns=["id"])["id"].tolist()
    rejected = [json.loads(line)["input"]["id"] for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert len(rejected) == len(range(7, ROWS, 10_007))
    assert sorted(predicted + rejected) == list(range(ROWS))  # no row missing, none twice


def test_rejected_rows_are_listed_with_reasons_and_set_the_exit_code(demo_home: Path, tmp_path: Path) -> None:
    rows = iris_rows(1000, seed=12).astype({"sepal_width": object})
    rows.loc[[3, 500], "sepal_width"] = ["wide", "-"]
    rows.loc[[900], "sepal_width"] = [None]
    rows.to_csv(tmp_path / "in.csv", index=False)
    args = ["batch", "demo", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"),
            "--workers", "1", "--batch-rows", "300", "--format", "jsonl", "--id-column", "id"]

    failed = subprocess.run(shipyard(demo_home, *args), env=env(), capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "error: 3 of 1,000 rows (0.30%) failed the signature of demo:1" in failed.stderr
    assert "rows/s" in failed.stderr  # progress as log lines: stderr is not a terminal
    assert "rejected   3 (0.30%)" in failed.stdout
    rejects = [json.loads(line) for line in (tmp_path / "out" / "_rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["input"]["id"], r["field"]) for r in rejects] == [
        (3, 3, "sepal_width"), (500, 500, "sepal_width"), (900, 900, "sepal_width")
    ]
    assert rejects[0]["reason"] == "input 'sepal_width': expected FP64, got str 'wide'"
    assert rejects[2]["reason"] == "input 'sepal_width': expected FP64, got str ''"
    predicted = [json.loads(line) for p in sorted((tmp_path / "out").glob("part-*.jsonl"))
                 for line in p.read_text().splitlines()]
    assert len(predicted) == 997 and set(predicted[0]) == {"id", "predict", "model_name", "model_version"}

    allowed = subprocess.run(shipyard(demo_home, *args, "--max-reject-ratio", "0.005"), env=env(),
                             capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    assert "4 (4 done by an earlier run)" in allowed.stdout
