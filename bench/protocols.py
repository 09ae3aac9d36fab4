"""gRPC beside REST: the same models, the same concurrency levels, one server process.

    .venv/bin/python bench/protocols.py [--requests 1000] [--rounds 2] [--concurrency 1,8,32,64] [--models rf,lr]

Registers the quickstart RandomForest ("rf", 100 trees: the model dominates) and a
LogisticRegression on the same iris columns ("lr": the transport dominates) in a
throwaway SHIPYARD_HOME, starts one `python -m shipyard serve --grpc-port` on
127.0.0.1, and drives it with shipyard's own AsyncClient over both protocols:
REST is the Open Inference Protocol with binary tensors, gRPC is ModelInfer with
raw contents, so both carry the same bytes. Each point sends a bounded number of
single-row requests from `concurrency` coroutines and records every latency;
protocols alternate within a round. Prints a Markdown table (medians over rounds)
of throughput, p50 and p99 per protocol and the gRPC/REST throughput ratio.

Client and server share the machine's cores, so absolute numbers are lower than
with a separate load generator; the ratio is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import shipyard
from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import run_server

MODELS = {"rf": "demo", "lr": "lr"}


@dataclass
class Point:
    rps: float
    p50_ms: float
    p99_ms: float


async def drive(
    url: str, model: str, inputs: list[dict[str, np.ndarray]], concurrency: int, requests: int, warmup: int
) -> Point:
    """Send ``requests`` single-row predictions from ``concurrency`` coroutines; time each one."""
    latencies: list[float] = []
    async with shipyard.AsyncClient(url, timeout=60) as client:
        for i in range(warmup):
            await client.infer(model, inputs[i % len(inputs)])
        left = requests

        async def worker(k: int) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                await client.infer(model, inputs[(k + left) % len(inputs)])
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return Point(len(latencies) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def register(home: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
        _, X, _ = train_demo_model()
        y = (X["petal_length"] > 4).astype(int)
        reg.register(LogisticRegression(max_iter=500).fit(X, y), "lr", sample=X.head(5))
    finally:
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests per point")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--models", default="rf,lr")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",")

    results: dict[tuple[str, str, int], list[Point]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        register(home)
        rows = train_demo_model()[1]
        inputs = [{f: np.array([rows[f].iloc[i * 2]]) for f in FEATURES} for i in range(64)]
        with run_server(home, [MODELS[m] for m in models], grpc=True) as server:
            urls = {"REST": server.url, "gRPC": f"grpc://{server.grpc_target}"}
            for r in range(args.rounds):
                for m in models:
                    for c in levels:
                        order = list(urls) if r % 2 == 0 else list(reversed(urls))
                        for proto in order:
                            point = asyncio.run(drive(urls[proto], MODELS[m], inputs, c, args.requests, args.warmup))
                            results.setdefault((m, proto, c), []).append(point)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"\nsingle-row requests, {args.requests} per point, {args.rounds} rounds (medians), "
          "shipyard.AsyncClient on the same 2 cores\n")
    print("| model | concurrency | REST req/s | REST p50 ms | REST p99 ms | gRPC req/s | gRPC p50 ms | gRPC p99 ms "
          "| gRPC / REST req/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios: dict[str, list[float]] = {}
    for m in models:
        for c in levels:
            cells: list[str] = []
            rps: dict[str, float] = {}
            for proto in ("REST", "gRPC"):
                pts = results[(m, proto, c)]
                rps[proto] = med([p.rps for p in pts])
                cells += [f"{rps[proto]:.0f}", f"{med([p.p50_ms for p in pts]):.2f}",
                          f"{med([p.p99_ms for p in pts]):.2f}"]
            ratio = rps["gRPC"] / rps["REST"]
            ratios.setdefault(m, []).append(ratio)
            print(f"| {m} | {c} | {' | '.join(cells)} | {ratio:.2f}x |")
    print()
    for m, rs in ratios.items():
        print(f"{m}: gRPC/REST throughput {min(rs):.2f}x to {max(rs):.2f}x (median {med(rs):.2f}x)")


if __name__ == "__main__":
    main()
