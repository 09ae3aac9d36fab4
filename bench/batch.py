"""Batch throughput and memory: the local engine against the thinnest correct job a user could write.

    .venv/bin/python bench/batch.py [--rows 1000000 10000000] [--rounds 3] [--models demo linear]
                                    [--workers 2] [--batch-rows 100000] [--paths io local raw spark]

Registers the quickstart model (``demo``: 100-tree RandomForest) and a cheap linear
model (``linear``: LogisticRegression) in a throwaway SHIPYARD_HOME, writes N iris-like
rows (an ``id`` and four features, row groups of a million rows) to Parquet, then per
round, per model and per path times, each in a fresh process:

* io:    the baseline. One process reads the file with pyarrow row group by row group,
         predicts each group's NumPy block and writes ``id`` + prediction with one
         ``ParquetWriter`` (the model loaded and warmed before the clock starts);
* local: ``shipyard.batch_predict(..., engine="local")`` from the Parquet file to Parquet
         parts (forkserver, workers, model loads, reading, checking, writing with fsync:
         everything, start-up included);
* raw:   ``model.predict`` of all rows already in memory (reading them is not timed);
* spark: ``predict_spark`` on ``spark.read.parquet`` written back to Parquet, in a
         ``local[workers]`` session started before the clock starts.

The baseline and the raw call run NumPy's BLAS on one thread: OpenBLAS's default (a
thread per core) made a LogisticRegression predict 4-10x slower on a busy two-core
machine, and the baseline must be the fastest simple job, not one that flatters us.

Start-up, measured apart: from the call to every worker having loaded the model (what
``batch_predict`` does before its first task), beside the time a fresh interpreter takes
to import the modules the forkserver imports, the floor under it.

Peak RSS is the largest sum of resident memory over the process and all its children
(workers, forkserver, the JVM), sampled every 20 ms. Prints Markdown tables of medians
over rounds, with the machine's load average: other processes on the same cores slow
the two-worker engine more than the one-process baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# -- measuring a process tree ----------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (Linux /proc)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(x) for x in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(args: list[str], env: dict[str, str], out: Path | None = None) -> dict[str, Any]:
    """Run ``python bench/batch.py <args>``; return its JSON result plus the tree's peak RSS.

    ``out``, the run's output folder, is removed first: each measured run starts from nothing.
    """
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_rss"] = peak
    return result


# -- the measured children -------------------------------------------------------------------------


def _one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def child_raw(ref: str, data: str) -> dict[str, Any]:
    import pandas as pd

    import shipyard

    _one_blas_thread()
    model = shipyard.load(ref).runtime.model  # type: ignore[attr-defined]
    frame = pd.read_parquet(data, columns=FEATURES)
    model.predict(frame.head(1000))  # warm up
    t0 = time.perf_counter()
    model.predict(frame)
    return {"seconds": time.perf_counter() - t0, "rows": len(frame)}


def child_io(ref: str, data: str, out: str) -> dict[str, Any]:
    """The thinnest correct job a user could write: one process, row group by row group."""
    import warnings

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import shipyard

    _one_blas_thread()
    model = shipyard.load(ref).runtime.model  # type: ignore[attr-defined]
    # fitted on a DataFrame, the estimator warns on NumPy input; the values are the same
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    model.predict(np.zeros((10, len(FEATURES))))  # warm up
    t0 = time.perf_counter()
    source = pq.ParquetFile(data)
    rows = 0
    writer: pq.ParquetWriter | None = None
    for g in range(source.num_row_groups):
        group = source.read_row_group(g, columns=["id", *FEATURES])
        X = np.column_stack([group.column(f).to_numpy() for f in FEATURES])
        table = pa.table({"id": group.column("id"), "predict": model.predict(X)})
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema)
        writer.write_table(table)
        rows += group.num_rows
    if writer is not None:
        writer.close()
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def child_local(ref: str, data: str, out: str, workers: int, batch_rows: int) -> dict[str, Any]:
    import shipyard

    t0 = time.perf_counter()
    r = shipyard.batch_predict(ref, data, out, id_columns=["id"], workers=workers, batch_rows=batch_rows,
                               progress=False)
    return {"seconds": time.perf_counter() - t0, "rows": r.rows, "parts": r.parts}


def child_startup(ref: str, data: str, out: str, workers: int, batch_rows: int) -> dict[str, Any]:
    """What ``batch_predict`` does before its first task, until every worker has loaded the model."""
    from shipyard.config import Settings
    from shipyard.jobs.batch.pool import start_forkserver, wait_ready

    given = Settings.from_env()
    t0 = time.perf_counter()
    start_forkserver(ref, given)
    from shipyard.jobs.batch import plan

    s = plan.absolute(given)
    job = plan.plan_job(ref, data, Path(out), output_format="parquet", id_columns=("id",), keep_input=False,
                        batch_rows=batch_rows, input_format=None, settings=s)
    with plan.executor("local", workers, job.flavor, (job.spec.pin, job.settings)) as executor:
        wait_ready(executor, workers)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds}


def child_imports(ref: str) -> dict[str, Any]:
    """A fresh interpreter importing what the forkserver imports: the floor under the start-up."""
    from shipyard.jobs.batch.pool import preload_modules
    from shipyard.registry import Registry

    reg = Registry.from_settings()
    try:
        flavor = reg.get(ref).flavor
    finally:
        reg.close()
    code = f"import importlib\nfor m in {preload_modules(flavor)!r}:\n    importlib.import_module(m)"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"seconds": time.perf_counter() - t0}


def child_spark(ref: str, data: str, out: str, workers: int, batch_rows: int) -> dict[str, Any]:
    from shipyard.jobs.batch.spark import predict_spark, spark_session

    spark = spark_session(workers, batch_rows=batch_rows)
    try:
        spark.range(10).count()  # the JVM and executors are up before the clock starts
        t0 = time.perf_counter()
        df = spark.read.parquet(data)
        predict_spark(df, ref, id_columns=["id"]).write.mode("overwrite").parquet(out)
        seconds = time.perf_counter() - t0
        rows = spark.read.parquet(out).count()
    finally:
        spark.stop()
    return {"seconds": seconds, "rows": rows}


# -- setup -----------------------------------------------------------------------------------------


def register_models(home: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.demo import register_demo, train_demo_model
    from shipyard.registry import Registry

    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
        _, X, _ = train_demo_model()
        y = (X["petal_length"] > 2.5).astype(int) + (X["petal_length"] > 4.9).astype(int)
        reg.register(LogisticRegression(max_iter=1000).fit(X, y), "linear", sample=X.head(5))
    finally:
        reg.close()


def write_rows(path: Path, n: int, chunk: int = 1_000_000) -> None:
    """n rows around the iris flowers, written a million at a time (default row groups)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_iris

    X = load_iris().data
    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.int64()), *[(f, pa.float64()) for f in FEATURES]])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            values = X[rng.integers(0, len(X), m)] + rng.normal(0, 0.1, (m, 4))
            cols = {"id": np.arange(start, start + m, dtype=np.int64)}
            cols.update({f: values[:, i] for i, f in enumerate(FEATURES)})
            w.write_table(pa.table(cols, schema=schema))


PATHS = ("io", "local", "raw", "spark")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="input sizes, one table row each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["demo", "linear"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=["io", "local", "raw"],
                    help="what to time (spark: Java 17+ on PATH)")
    ap.add_argument("--no-spark", action="store_true", help="leave spark out even if --paths has it")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    ap.add_argument("--keep", type=Path, help="keep the data and outputs in this folder")
    args = ap.parse_args()
    if args.no_spark and "spark" in args.paths:
        args.paths.remove("spark")
    args.load_before = _load()

    with tempfile.TemporaryDirectory(prefix="shipyard-bench-batch-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        home = root / "home"
        env = {**os.environ, "SHIPYARD_HOME": str(home), "SHIPYARD_LOG_LEVEL": "warning"}
        if not (home / "registry.db").exists():
            register_models(home)
        tiny = root / "tiny.parquet"
        if not tiny.exists():
            write_rows(tiny, 1000)
        rows_out: list[tuple[str, int, str, list[dict[str, Any]]]] = []
        startup: dict[str, dict[str, list[float]]] = {}
        if not args.no_startup:
            for model in args.models:
                got = startup.setdefault(model, {"startup": [], "imports": []})
                for r in range(args.rounds):
                    print(f"{model} start-up, round {r + 1}/{args.rounds}", file=sys.stderr)
                    out = root / f"startup-{model}"
                    got["startup"].append(run_measured(
                        ["_startup", model, str(tiny), str(out), str(args.workers), str(args.batch_rows)], env, out
                    )["seconds"])
                    got["imports"].append(run_measured(["_imports", model], env)["seconds"])
        for n in args.rows:
            data = root / f"rows-{n}.parquet"
            if not data.exists():
                print(f"writing {n:,} rows to {data} ...", file=sys.stderr)
                write_rows(data, n)
            for model in args.models:
                results: dict[str, list[dict[str, Any]]] = {path: [] for path in args.paths}
                for r in range(args.rounds):
                    print(f"{model} {n:,} rows, round {r + 1}/{args.rounds}", file=sys.stderr)
                    for path in args.paths:
                        out = root / f"{path}-{model}-{n}"
                        if path == "raw":
                            got = run_measured(["_raw", model, str(data)], env)
                        elif path == "io":
                            out = out.with_suffix(".parquet")
                            out.unlink(missing_ok=True)
                            got = run_measured(["_io", model, str(data), str(out)], env)
                        else:
                            batch = "10000" if path == "spark" else str(args.batch_rows)
                            got = run_measured([f"_{path}", model, str(data), str(out), str(args.workers), batch],
                                               env, out)
                        got["load"] = _load()
                        results[path].append(got)
                for path, rounds in results.items():
                    rows_out.append((model, n, path, rounds))
        _table(rows_out, startup, args)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _table(rows: list[tuple[str, int, str, list[dict[str, Any]]]], startup: dict[str, dict[str, list[float]]],
           args: argparse.Namespace) -> None:
    labels = {
        "io": "I/O baseline: one process, pyarrow row groups -> NumPy -> predict -> ParquetWriter",
        "local": f"`shipyard batch`, local engine, {args.workers} workers (start-up included)",
        "raw": "raw `model.predict`, all rows already in memory",
        "spark": f"Spark local[{args.workers}] `predict_spark`, Parquet -> Parquet",
    }
    print(f"\n{os.cpu_count()} cores; load average (1, 5, 15 min) {args.load_before} before, {_load()} after; "
          f"medians of {args.rounds} rounds; batch rows {args.batch_rows:,}\n")
    if startup:
        print("| model | engine start-up: forkserver + workers ready | floor: a fresh interpreter importing "
              "the forkserver's modules |")
        print("| --- | ---: | ---: |")
        for model, got in startup.items():
            start, floor = statistics.median(got["startup"]), statistics.median(got["imports"])
            print(f"| {model} | {start:.2f} s | {floor:.2f} s |")
        print()
    print("| model | rows | path | seconds | rows/s | vs I/O baseline | peak RSS MiB | load (1 min) during rounds |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    base: dict[tuple[str, int], float] = {}
    for model, n, path, rounds in rows:
        if path == "io":
            base[(model, n)] = statistics.median(r["seconds"] for r in rounds)
    for model, n, path, rounds in rows:
        seconds = statistics.median(r["seconds"] for r in rounds)
        rss = statistics.median(r["peak_rss"] for r in rounds) / 2**20
        ratio = f"{base[(model, n)] / seconds:.2f}x" if (model, n) in base else ""
        loads = ", ".join(r["load"].split()[0] for r in rounds)
        print(f"| {model} | {n:,} | {labels[path]} | {seconds:.2f} | {n / seconds:,.0f} | {ratio} | {rss:,.0f} | "
              f"{loads} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_raw":
            res = child_raw(rest[0], rest[1])
        elif kind == "_io":
            res = child_io(rest[0], rest[1], rest[2])
        elif kind == "_startup":
            res = child_startup(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        elif kind == "_imports":
            res = child_imports(rest[0])
        elif kind == "_local":
            res = child_local(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            res = child_spark(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        print(json.dumps(res))
    else:
        main()
