"""Batch throughput and memory: the raw model in memory vs the local engine vs Spark, same data.

    .venv/bin/python bench/batch.py [--rows 1000000 10000000] [--rounds 2] [--models demo linear]
                                    [--workers 2] [--batch-rows 100000] [--no-spark]

Registers the quickstart model (``demo``: 100-tree RandomForest) and a cheap linear
model (``linear``: LogisticRegression) in a throwaway SHIPYARD_HOME, writes N iris-like
rows (an ``id`` and four features) to Parquet, then per round and per model times, each
in a fresh process:

* raw:   ``model.predict(frame)`` of the estimator loaded from the registry, the whole
         frame already in memory (reading it is not timed);
* local: ``shipyard.batch_predict(..., engine="local")`` from the Parquet file to Parquet
         parts (workers, reading, checking, writing: everything, start-up included);
* spark: ``predict_spark`` on ``spark.read.parquet`` written back to Parquet, in a
         ``local[workers]`` session started before the clock starts.

Peak RSS is the largest sum of resident memory over the process and all its children
(workers, forkserver, the JVM), sampled every 20 ms. A one-part run of the local engine
gives its fixed start-up cost (forkserver, imports, model load); "after start-up" subtracts
it. Prints a Markdown table of medians over rounds, with the machine's load average: other
processes on the same cores slow the two-worker runs more than the one-core raw call.
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


def child_raw(ref: str, data: str) -> dict[str, Any]:
    import pandas as pd

    import shipyard

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["demo", "linear"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the data and outputs in this folder")
    args = ap.parse_args()
    args.load_before = os.getloadavg()[0]

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
        for n in args.rows:
            data = root / f"rows-{n}.parquet"
            if not data.exists():
                print(f"writing {n:,} rows to {data} ...", file=sys.stderr)
                write_rows(data, n)
            for model in args.models:
                results: dict[str, list[dict[str, Any]]] = {"raw": [], "local": [], "spark": [], "start-up": []}
                for r in range(args.rounds):
                    print(f"{model} {n:,} rows, round {r + 1}/{args.rounds}", file=sys.stderr)
                    results["raw"].append(run_measured(["_raw", model, str(data)], env))
                    out = root / f"out-{model}-{n}"
                    results["local"].append(run_measured(
                        ["_local", model, str(data), str(out), str(args.workers), str(args.batch_rows)], env, out))
                    if n == args.rows[0]:
                        tiny_out = root / f"tiny-{model}"
                        results["start-up"].append(run_measured(
                            ["_local", model, str(tiny), str(tiny_out), str(args.workers), str(args.batch_rows)],
                            env, tiny_out))
                    if not args.no_spark:
                        spark_out = root / f"spark-{model}-{n}"
                        results["spark"].append(run_measured(
                            ["_spark", model, str(data), str(spark_out), str(args.workers), "10000"], env, spark_out))
                for path, rounds in results.items():
                    if rounds:
                        rows_out.append((model, n, path, rounds))
        _table(rows_out, args)


def _table(rows: list[tuple[str, int, str, list[dict[str, Any]]]], args: argparse.Namespace) -> None:
    labels = {
        "raw": "raw model.predict, all rows in memory",
        "local": f"local engine, Parquet -> Parquet, {args.workers} workers",
        "start-up": "local engine on 1,000 rows (fixed start-up cost)",
        "spark": f"Spark local[{args.workers}] predict_spark, Parquet -> Parquet",
    }
    base: dict[tuple[str, int], float] = {}
    startup = {model: statistics.median(r["seconds"] for r in rounds)
               for model, _, path, rounds in rows if path == "start-up"}
    print(f"\n{os.cpu_count()} cores, load average {args.load_before:.1f} before and {os.getloadavg()[0]:.1f} "
          f"after (other work on the machine); median of {args.rounds} rounds; batch rows {args.batch_rows:,}\n")
    print("| model | rows | path | seconds | rows/s | vs raw | rows/s after start-up | vs raw | peak RSS MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, n, path, rounds in rows:
        seconds = statistics.median(r["seconds"] for r in rounds)
        rss = statistics.median(r["peak_rss"] for r in rounds) / 2**20
        if path == "start-up":
            print(f"| {model} | 1,000 | {labels[path]} | {seconds:.2f} | | | | | {rss:,.0f} |")
            continue
        speed = n / seconds
        if path == "raw":
            base[(model, n)] = speed
        ratio = speed / base[(model, n)]
        steady = ""
        if path == "local" and model in startup and seconds > startup[model]:
            warm = n / (seconds - startup[model])
            steady = f"{warm:,.0f} | {warm / base[(model, n)]:.2f}x"
        else:
            steady = " | "
        print(f"| {model} | {n:,} | {labels[path]} | {seconds:.2f} | {speed:,.0f} | {ratio:.2f}x | {steady} | "
              f"{rss:,.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        kind, rest = sys.argv[1], sys.argv[2:]
        if kind == "_raw":
            res = child_raw(rest[0], rest[1])
        elif kind == "_local":
            res = child_local(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        else:
            res = child_spark(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
        print(json.dumps(res))
    else:
        main()
