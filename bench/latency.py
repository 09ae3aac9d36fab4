"""Single-request latency of the quickstart model: shipyard over HTTP vs the raw predict call.

    .venv/bin/python bench/latency.py [--requests 300] [--rounds 3]

Registers the demo model in a throwaway SHIPYARD_HOME, starts
`python -m shipyard serve demo@champion` on a free loopback port, then per round
times N sequential single-row requests (one keep-alive connection) for
/v1 (records) and /v2 (OIP JSON tensors), and N raw in-process
`model.predict(one_row_dataframe)` calls. Prints a Markdown table of median/p99
latencies and the ratio to the raw call, median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import run_server


def _times(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    model, X, _ = train_demo_model()
    row = X.iloc[[0]]
    record = row.to_dict(orient="records")
    v1_body = {"instances": record}
    v2_body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [1], "data": [float(row[c].iloc[0])]}
                          for c in FEATURES]}
    results: dict[str, list[tuple[float, float]]] = {"raw predict (in-process)": [], "shipyard /v1 predict": [],
                                                     "shipyard /v2 infer": []}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        reg = Registry.from_settings(Settings(home=home))
        register_demo(reg)
        reg.close()
        with run_server(home, ["demo@champion"]) as server, httpx.Client(base_url=server.url) as client:
            for _ in range(20):  # warm up both paths
                client.post("/v1/models/demo:predict", json=v1_body).raise_for_status()
                client.post("/v2/models/demo/infer", json=v2_body).raise_for_status()
                model.predict(row)
            for _ in range(args.rounds):
                for label, fn in (
                    ("raw predict (in-process)", lambda: model.predict(row)),
                    ("shipyard /v1 predict", lambda: client.post("/v1/models/demo:predict", json=v1_body)),
                    ("shipyard /v2 infer", lambda: client.post("/v2/models/demo/infer", json=v2_body)),
                ):
                    t = _times(fn, args.requests)
                    results[label].append((float(np.median(t)), float(np.percentile(t, 99))))
    base = statistics.median(p50 for p50, _ in results["raw predict (in-process)"])
    print(f"\nquickstart RandomForest (100 trees), single row, {args.requests} sequential requests x "
          f"{args.rounds} rounds (median of rounds)\n")
    print("| path | p50 ms | p99 ms | p50 / raw predict |")
    print("| --- | ---: | ---: | ---: |")
    for label, rounds in results.items():
        p50 = statistics.median(r[0] for r in rounds)
        p99 = statistics.median(r[1] for r in rounds)
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f}x |")


if __name__ == "__main__":
    main()
