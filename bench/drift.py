"""Offline drift throughput and memory: ``shipyard drift`` against a bare pyarrow + NumPy loop, in one run.

    .venv/bin/python bench/drift.py [--rows 1000000] [--features 20] [--rounds 3]
                                    [--rss-rows 1000000 3000000] [--big] [--evidently] [--keep DIR]

Registers a LogisticRegression on 20 float features in a throwaway SHIPYARD_HOME and writes
a reference Parquet file (200,000 rows) and a current one (--rows rows, one feature shifted).
Per round, each in this process, alternating:

* baseline: the thinnest correct loop: ``pyarrow.parquet.ParquetFile.iter_batches`` over the
            current file, and per feature ``np.searchsorted`` + ``np.bincount`` on the profile's
            edges: the same per-feature histograms the window keeps (checked equal), nothing else;
* read:     the part of the next line that is reading: the batch engine's reader and the
            signature check, nothing counted (where the rest of the time goes is the window);
* drift:    ``shipyard.jobs.drift.run_drift`` with the profile as the reference:
            discovery, the batch engine's reader, the signature check, the window (bins, quality
            counters, moments, multivariate errors and reservoir) and every test;
* profile:  the same call with the reference *file* (two ``ProfileBuilder`` passes over it,
            then the current file): rows/s counts both files' rows.

Prints medians over rounds and each path's ratio to the baseline. Then, for --rss-rows sizes
(``--big`` adds 10,000,000), a fresh process per size runs ``run_drift`` over that many rows
(hard links to one 1M-row file, so no disk is spent) and reports its peak RSS (VmHWM):
growth from the smallest size should stay flat (the issue's bar: under 20 MB after 10M rows).

``--evidently`` also runs Evidently's DataDriftPreset on the same reference and the first
--evidently-rows current rows, in a throwaway venv made with ``pip install evidently`` (kept
in --evidently-venv for the next run); if that does not install in --evidently-timeout
seconds, the bench says so and why.
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
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROWS = 200_000
UNIT_ROWS = 1_000_000


def features(k: int) -> list[str]:
    return [f"f{i:02d}" for i in range(k)]


def write_rows(path: Path, n: int, k: int, *, seed: int, shift: float = 0.0) -> None:
    """``n`` rows of ``k`` float features (f03 shifted by ``shift`` sigma), written in 100k-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = features(k)
    scale = np.linspace(0.5, 3.0, k)
    with pq.ParquetWriter(path, pa.schema([(c, pa.float64()) for c in names])) as w:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            block = rng.normal(0, 1, (m, k)) * scale
            block[:, 3] += shift * scale[3]
            w.write_table(pa.table({c: block[:, i] for i, c in enumerate(names)}))


def register(home: Path, k: int) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.registry import Registry

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(0, 1, (2000, k)), columns=features(k))
    clf = LogisticRegression(max_iter=200).fit(frame, (frame.iloc[:, 0] > 0).astype(int))
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(clf, "bench", sample=frame.head(1000))
    finally:
        reg.close()


def baseline(path: Path, profile: Any) -> tuple[int, dict[str, np.ndarray]]:
    """Per-feature histograms on the profile's edges: the least any correct tool must do."""
    import pyarrow.parquet as pq

    edges = {f.name: np.asarray(f.edges) for f in profile.inputs}
    counts = {name: np.zeros(len(e) + 1, dtype=np.int64) for name, e in edges.items()}
    rows = 0
    pf = pq.ParquetFile(path, pre_buffer=False)
    for batch in pf.iter_batches(batch_size=100_000, columns=list(edges)):
        rows += batch.num_rows
        for i, name in enumerate(batch.schema.names):
            values = batch.column(i).to_numpy()
            values = values[~np.isnan(values)]
            counts[name] += np.bincount(np.searchsorted(edges[name], values, side="left"),
                                        minlength=len(edges[name]) + 1)
    return rows, counts


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_rss(home: str, reference: str, current: list[str]) -> dict[str, Any]:
    """In a fresh process: peak RSS of one run over ``current`` against a profiled reference."""
    from shipyard.config import Settings
    from shipyard.jobs.drift import run_drift
    from shipyard.monitoring.drift.profile import Profile

    settings = Settings(home=Path(home))
    profile = Profile.from_dict(json.loads(Path(reference).read_text()))
    run_drift("bench", profile, current[:1], settings=settings)  # warm: imports, caches, first allocations
    before = vm("VmHWM")
    t = time.perf_counter()
    run = run_drift("bench", profile, current, settings=settings)
    return {"rows": run.report.rows, "seconds": time.perf_counter() - t, "hwm_before": before,
            "hwm": vm("VmHWM"), "rss": vm("VmRSS")}


EVIDENTLY_CHILD = r"""
import json, sys, time
import pandas as pd
ref = pd.read_parquet(sys.argv[1]); cur = pd.read_parquet(sys.argv[2]).head(int(sys.argv[3]))
try:
    from evidently import Report
    from evidently.presets import DataDriftPreset
    new = True
except ImportError:
    from evidently.report import Report
    from evidently.metric_preset import DataDriftPreset
    new = False
import evidently
t = time.perf_counter()
report = Report([DataDriftPreset()])
if new:
    report.run(cur, ref)
else:
    report.run(reference_data=ref, current_data=cur)
print(json.dumps({"seconds": time.perf_counter() - t, "version": evidently.__version__, "rows": len(cur)}))
"""


def evidently_python(venv: Path, timeout: float) -> tuple[Path | None, str]:
    py = venv / "bin" / "python"
    probe = "from evidently import Report; from evidently.presets import DataDriftPreset"
    if py.exists() and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0:
        return py, "cached venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=60)
        # evidently 0.7 imports pandas internals that pandas 3 removed
        done = subprocess.run([py, "-m", "pip", "install", "-q", "evidently", "pandas<3", "pyarrow"],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"pip install evidently took more than {timeout:.0f}s"
    except subprocess.CalledProcessError as exc:
        return None, f"could not make a venv: {exc}"
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if "ignored" not in ln][-3:]
        return None, "pip install evidently failed: " + " / ".join(last)
    return py, "installed now"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the current file (default 1,000,000)")
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-rows", type=int, nargs="+", default=[1_000_000, 3_000_000],
                    help="sizes for the memory check, multiples of 1,000,000 (default 1M 3M)")
    ap.add_argument("--big", action="store_true", help="add 10,000,000 rows to the memory check")
    ap.add_argument("--evidently", action="store_true", help="also time Evidently (installs it in a venv)")
    ap.add_argument("--evidently-rows", type=int, default=200_000)
    ap.add_argument("--evidently-venv", type=Path, default=Path(tempfile.gettempdir()) / "shipyard-bench-evidently")
    ap.add_argument("--evidently-timeout", type=float, default=180.0)
    ap.add_argument("--keep", type=Path, help="keep the data in this folder")
    args = ap.parse_args()

    from shipyard.config import Settings
    from shipyard.jobs.drift import run_drift
    from shipyard.monitoring.drift.profile import ProfileBuilder

    work = args.keep or Path(tempfile.mkdtemp(prefix="shipyard-bench-drift-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        home = work / "home"
        register(home, args.features)
        settings = Settings(home=home)
        reference, current = work / "reference.parquet", work / "current.parquet"
        write_rows(reference, REFERENCE_ROWS, args.features, seed=1)
        write_rows(current, args.rows, args.features, seed=2, shift=0.5)

        import pyarrow.parquet as pq

        builder = ProfileBuilder()
        for side in (builder.sample, builder.count):
            for batch in pq.ParquetFile(reference).iter_batches(batch_size=100_000):
                side({c: batch.column(c).to_numpy() for c in batch.schema.names})
        profile = builder.build()

        from shipyard.jobs.drift import DEFAULT_CHUNK_ROWS, ReadCounts, _Files
        from shipyard.registry import Registry

        reg = Registry.from_settings(settings)
        signature = reg.get("bench").signature
        reg.close()
        times: dict[str, list[float]] = {"baseline": [], "read": [], "drift": [], "profile": []}
        for _ in range(args.rounds):
            t = time.perf_counter()
            n, counts = baseline(current, profile)
            times["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for _chunk in _Files(current, signature, None, DEFAULT_CHUNK_ROWS).chunks(ReadCounts()):
                pass
            times["read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run = run_drift("bench", profile, current, settings=settings)
            times["drift"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_drift("bench", reference, current, settings=settings)
            times["profile"].append(time.perf_counter() - t)
        assert n == args.rows == run.report.rows
        for name, c in counts.items():  # the same histograms, or the comparison means nothing
            assert np.array_equal(c, run.window.counts(name)), name
        drifted = [f.feature for f in run.report.features if f.drifted]

        print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.rows:,} current rows x "
              f"{args.features} float features (f03 shifted 0.5 sigma; drifted: {', '.join(drifted) or 'none'}); "
              f"reference {REFERENCE_ROWS:,} rows; median of {args.rounds} rounds\n")
        print("| path | seconds | rows/s | vs baseline |")
        print("| --- | ---: | ---: | ---: |")
        base = args.rows / statistics.median(times["baseline"])
        for path, label, rows in (("baseline", "pyarrow + NumPy histograms", args.rows),
                                  ("read", "its reader + signature check only (no window)", args.rows),
                                  ("drift", "run_drift, profile given", args.rows),
                                  ("profile", "run_drift, reference file (2 passes) + current",
                                   args.rows + 2 * REFERENCE_ROWS)):
            s = statistics.median(times[path])
            speed = rows / s
            print(f"| {label} | {s:.2f} | {speed:,.0f} | {speed / base:.2f}x |")

        sizes = sorted(set(args.rss_rows + ([10_000_000] if args.big else [])))
        unit = work / "unit.parquet"
        if args.rows == UNIT_ROWS:
            os.link(current, unit)
        else:
            write_rows(unit, UNIT_ROWS, args.features, seed=3)
        links = []
        for i in range(max(sizes) // UNIT_ROWS):
            p = work / "rss" / f"part-{i:03d}.parquet"
            p.parent.mkdir(exist_ok=True)
            os.link(unit, p)
            links.append(str(p))
        saved = work / "profile.json"
        saved.write_text(json.dumps(profile.to_dict()))
        print("\n| rows | seconds | peak RSS MiB | growth vs smallest MiB |")
        print("| ---: | ---: | ---: | ---: |")
        first = None
        for size in sizes:
            out = subprocess.run([sys.executable, __file__, "_rss", str(home), str(saved),
                                  *links[: size // UNIT_ROWS]], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            assert res["rows"] == size, res
            first = res["hwm"] if first is None else first
            print(f"| {size:,} | {res['seconds']:.1f} | {res['hwm'] / 2**20:,.0f} | "
                  f"{(res['hwm'] - first) / 2**20:+,.1f} |")

        if args.evidently:
            py, why = evidently_python(args.evidently_venv, args.evidently_timeout)
            if py is None:
                print(f"\nEvidently: not available ({why})")
            else:
                m = min(args.evidently_rows, args.rows)
                small = work / "current-evidently.parquet"
                pq.write_table(pq.read_table(current).slice(0, m), small)
                ours = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    run_drift("bench", reference, small, settings=settings)
                    ours.append(time.perf_counter() - t)
                theirs = []
                for _ in range(args.rounds):
                    out = subprocess.run([py, "-c", EVIDENTLY_CHILD, str(reference), str(small), str(m)],
                                         capture_output=True, text=True, timeout=1800)
                    if out.returncode != 0:
                        print(f"\nEvidently: failed ({out.stderr.strip().splitlines()[-1:]})")
                        break
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    theirs.append(res["seconds"])
                if theirs:
                    a, b = statistics.median(ours), statistics.median(theirs)
                    print(f"\nEvidently {res['version']} ({why}) DataDriftPreset, reference {REFERENCE_ROWS:,} + "
                          f"current {m:,} rows, already in pandas (reading not timed): {b:.2f}s; shipyard "
                          f"run_drift on the same files (reading, profiling included): {a:.2f}s "
                          f"({b / a:.1f}x faster)")
        else:
            print("\nEvidently: not run (pass --evidently to install it in a throwaway venv and compare)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_rss":
        print(json.dumps(child_rss(sys.argv[2], sys.argv[3], sys.argv[4:])))
    else:
        main()
