"""What a shadow arm costs the callers: latency with and without a slow, failing shadow, in one run.

    .venv/bin/python bench/shadow.py [--duration 6] [--rounds 3] [--concurrency 8]

Registers a LogisticRegression on 20 features as `lr` (champion) and a custom model as its
`candidate` that sleeps 200 ms and fails every other call. Starts `shipyard serve lr@champion
--workers 1` three ways and loads each with wrk (one thread, --concurrency connections,
single-row JSON) on 127.0.0.1:

  (a) no policy        the name answers from champion alone
  (b) shadow 0%        a policy with the candidate as a shadow arm copied 0%: the routing alone
  (c) shadow 100%      every request copied to the candidate (at most 16 copies run at once; the
                       rest are dropped and counted, never queued ahead of callers)

and prints req/s, p50 and p99 (median over rounds) and each config's p99 as a ratio to (a)'s.
Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.serve import ROOT, Point, free_port, start, stop, wrk  # noqa: E402

SLOW_MODEL = '''
import time

import numpy as np
import shipyard


class SlowAndFlaky(shipyard.Model):
    """Sleeps 200 ms; every other call fails."""

    calls = 0

    def predict(self, inputs):
        time.sleep(0.2)
        SlowAndFlaky.calls += 1
        if SlowAndFlaky.calls % 2 == 0:
            raise RuntimeError("the shadow failed on purpose")
        return np.zeros(len(next(iter(inputs.values()))))
'''


def register(home: Path) -> bytes:
    """lr@champion and lr@candidate; returns a one-row request body."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.registry import Registry

    Xa, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    X = pd.DataFrame(Xa, columns=[f"f{i}" for i in range(20)])
    (home.parent / "slow_and_flaky.py").write_text(SLOW_MODEL)
    sys.path.insert(0, str(home.parent))
    slow = importlib.import_module("slow_and_flaky").SlowAndFlaky()
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(LogisticRegression(max_iter=1000).fit(X, y), "lr", sample=X.head(5), alias="champion")
        # registering calls predict once on the sample: the first call of a process succeeds
        reg.register(slow, "lr", sample={c: np.asarray(X[c].head(5)) for c in X.columns}, alias="candidate")
    finally:
        reg.close()
    return orjson.dumps({"instances": X.iloc[[0]].to_dict(orient="records")})


def policy_file(folder: Path, percent: float) -> Path:
    path = folder / f"shadow-{percent:g}.yaml"
    path.write_text("models:\n  - ref: lr@champion\n    traffic:\n      arms: [champion]\n"
                    f"      shadow:\n        - {{alias: candidate, percent: {percent}}}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        home = tmp / "home"
        body = register(home)
        env = {**os.environ, "SHIPYARD_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        configs = {"(a) no policy": [], "(b) shadow 0%": ["-c", str(policy_file(tmp, 0))],
                   "(c) shadow 100%, 200 ms, half failing": ["-c", str(policy_file(tmp, 100))]}
        points: dict[str, list[Point]] = {k: [] for k in configs}
        for _ in range(args.rounds):
            for label, extra in configs.items():
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1/models/lr:predict"
                cmd = [sys.executable, "-m", "shipyard", "serve", "lr@champion", "--port", str(port),
                       "--workers", "1", "--log-level", "warning", *extra]
                proc, _ = start(cmd, env, url, body)
                try:
                    points[label].append(wrk(url, body, args.concurrency, args.duration, tmp))
                finally:
                    stop(proc)
    base_p99 = statistics.median(p.p99_ms for p in points["(a) no policy"])
    print(f"\n### shadow arm, lr, c={args.concurrency}, median of {args.rounds} rounds\n")
    print("| config | req/s | p50 ms | p99 ms | p99 vs (a) | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, pts in points.items():
        p99 = statistics.median(p.p99_ms for p in pts)
        print(f"| {label} | {statistics.median(p.rps for p in pts):.0f} | "
              f"{statistics.median(p.p50_ms for p in pts):.2f} | {p99:.2f} | {p99 / base_p99:.2f}x | "
              f"{sum(p.errors for p in pts)} |")


if __name__ == "__main__":
    main()
