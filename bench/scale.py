"""Scale-out on one machine: 1, 2 and 3 `shipyard serve` replicas behind HAProxy, and alias propagation.

    .venv/bin/python bench/scale.py [--duration 5] [--concurrency 16] [--moves 6] [--refresh 0.5] [--json PATH]

Everything runs on 127.0.0.1: a throwaway PostgreSQL registry (the replicas' shared state; artifacts in a
local folder, which all replicas reach because they run on this one machine), 3 replicas of
``shipyard serve demo@champion --workers 1`` (the quickstart's random forest, so the model's own work
dominates a request), and one HAProxy per point in front of the first N replicas (round robin). Each point is
one ``wrk -t1 -cC -dDs`` run of single-row ``/v1/models/demo:predict`` requests (Debian packages ``wrk`` and
``haproxy``). Printed: req/s, p50, p99 and errors per point, each N's req/s as a ratio to N = 1 behind the same
balancer, and one replica without the balancer (what the balancer itself costs); /proc/loadavg before and
after. Then the alias ``champion`` is moved between two versions ``--moves`` times and every replica is polled
(one thread each, every 10 ms) until it answers with the new version: the time until the last replica did,
per move, against the refresh interval.

On a 2-core machine, wrk's thread and HAProxy take part of a core, and a replica's Python process is
bound to one core by the GIL: expect 2 replicas to come close to 2 cores' worth and a third to add little.
The ratio that matters on a real cluster is per node, where each replica has cores of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import load_balancer, postgres_server, run_server

ROW = {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5}
BODY = json.dumps({"instances": [ROW]})


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def wrk(url: str, concurrency: int, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "--timeout", "10s",
                          "-s", str(script), f"{url}/v1/models/demo:predict"],
                         capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50, p99 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out), re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"wrk gave no figures for {url}:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps.group(1)), "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
            "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)}


def answering(url: str, times: int, deadline_s: float = 30.0) -> None:
    """Wait until ``times`` predictions in a row through ``url`` succeed (a point measured earlier counts 503s)."""
    give_up, ok = time.monotonic() + deadline_s, 0
    while ok < times:
        if time.monotonic() > give_up:
            raise RuntimeError(f"{url} did not answer {times} predictions in a row within {deadline_s:.0f} s")
        try:
            version_of(url)
            ok += 1
        except OSError:
            ok = 0
            time.sleep(0.1)


def version_of(url: str) -> str:
    req = urllib.request.Request(f"{url}/v2/models/demo/infer", method="POST", headers={"Content-Type":
                                 "application/json"}, data=json.dumps({"inputs": [
                                     {"name": f, "datatype": "FP64", "shape": [1], "data": [ROW[f]]}
                                     for f in FEATURES]}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["model_version"])


def propagation(registry: Registry, urls: list[str], moves: int) -> list[float]:
    """Seconds from each alias move until the last replica answered with the new version."""
    out = []
    for i in range(moves):
        target = "2" if i % 2 == 0 else "1"
        registry.set_alias("demo", "champion", int(target))
        moved = time.monotonic()
        seen: list[float] = []

        def poll(url: str, target: str = target, moved: float = moved, seen: list[float] = seen) -> None:
            while version_of(url) != target:
                time.sleep(0.01)
            seen.append(time.monotonic() - moved)

        threads = [threading.Thread(target=poll, args=(u,)) for u in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        out.append(max(seen))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk point")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections")
    parser.add_argument("--moves", type=int, default=6, help="alias moves timed")
    parser.add_argument("--refresh", type=float, default=0.5, help="alias_refresh_seconds of the replicas")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y --no-install-recommends {tool}")
    report: dict[str, Any] = {"nproc": len(__import__("os").sched_getaffinity(0)), "refresh_seconds": args.refresh}
    with tempfile.TemporaryDirectory(prefix="shipyard-scale-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        pg = stack.enter_context(postgres_server(tmp / "pg"))
        settings = Settings(home=tmp / "setup", registry_url=pg, artifacts=str(tmp / "artifacts"))
        registry = Registry.from_settings(settings)
        stack.callback(registry.close)
        register_demo(registry)
        _, X, _ = train_demo_model()
        registry.register(LogisticRegression().fit(X, (X["petal_length"] > 4.0).astype(int)), "demo",
                          sample=X.head(5))
        env = {"SHIPYARD_REGISTRY_URL": pg, "SHIPYARD_ARTIFACTS": settings.artifacts,
               "SHIPYARD_ALIAS_REFRESH_SECONDS": str(args.refresh), "SHIPYARD_ASYNC_BROKER": "off"}
        replicas = [stack.enter_context(run_server(tmp / f"home-{i}", ["demo@champion"], env=env,
                                                   args=["--workers", "1"])) for i in range(3)]
        script = tmp / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{BODY}]==]\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        for r in replicas:  # warm every replica (first predictions, connection pools)
            wrk(r.url, 2, 1, script)
        report["loadavg_before"] = loadavg()
        points: dict[str, dict[str, float]] = {"1 direct": wrk(replicas[0].url, args.concurrency, args.duration,
                                                                script)}
        for n in (1, 2, 3):
            with load_balancer(tmp / f"lb-{n}", [f"127.0.0.1:{r.port}" for r in replicas[:n]]) as lb:
                answering(lb, 10 * n)  # HAProxy's health checks have found every backend up
                points[f"{n} behind haproxy"] = wrk(lb, args.concurrency, args.duration, script)
        report["loadavg_after"] = loadavg()
        base = points["1 behind haproxy"]["rps"]
        print(f"nproc {report['nproc']}; loadavg before {report['loadavg_before']}, after {report['loadavg_after']}")
        print(f"{'replicas':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs 1':>7}")
        for name, p in points.items():
            print(f"{name:<20}{p['rps']:>9.0f}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}{p['errors']:>8.0f}"
                  f"{p['rps'] / base:>7.2f}")
        report["points"] = points
        times = propagation(registry, [r.url for r in replicas], args.moves)
        report["alias_propagation_seconds"] = times
        print(f"alias move -> all 3 replicas: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
              f"over {len(times)} moves (refresh interval {args.refresh} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
