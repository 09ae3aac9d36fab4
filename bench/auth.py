"""What checking API keys costs a server: throughput and server CPU per request, keys off and on.

    .venv/bin/python bench/auth.py [--rounds 6] [--duration 5] [--concurrency 32]

Registers the LR model of ``bench/serve.py`` (20 features, from a NumPy sample; single-row requests)
and an API key with the ``predict`` scope, then runs ``shipyard serve`` with authentication off and
on, alternating which goes first each round (a server started right after another stopped runs
slower), and loads each with wrk on 127.0.0.1. Prints, per configuration, the median throughput,
the median CPU seconds the server process spent per request (from /proc) and the non-2xx count, and
the on/off ratios. Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve import ROOT, bench_key, free_port, register_models, request_body, running, wrk  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        home = tmp / "home"
        _, row = register_models(home, second_versions=False)["lr"]
        key = bench_key(home)
        body = request_body(row)
        env = {**os.environ, "SHIPYARD_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        rps: dict[str, list[float]] = {"off": [], "on": []}
        cpu_us: dict[str, list[float]] = {"off": [], "on": []}
        errors: dict[str, int] = {"off": 0, "on": 0}
        for i in range(args.rounds):
            for label in ("off", "on") if i % 2 == 0 else ("on", "off"):
                port = free_port()
                url = f"http://127.0.0.1:{port}/v1/models/lr:predict"
                run_env = {**env, "SHIPYARD_SECURITY__AUTH__ENABLED": "true"} if label == "on" else env
                headers = key if label == "on" else None
                cmd = [sys.executable, "-m", "shipyard", "serve", "lr", "--port", str(port),
                       "--log-level", "warning", "--workers", "1"]
                with running(cmd, run_env, url, body, headers) as (proc, _):
                    time.sleep(0.5)
                    before = cpu_seconds(proc.pid)
                    point = wrk(url, body, args.concurrency, args.duration, tmp, headers)
                    spent = cpu_seconds(proc.pid) - before
                rps[label].append(point.rps)
                errors[label] += point.errors + point.socket_errors
                cpu_us[label].append(spent / (point.rps * int(args.duration)) * 1e6)
    med = {k: (statistics.median(rps[k]), statistics.median(cpu_us[k])) for k in rps}
    print(f"\n### API keys off and on: LR, single-row requests, c={args.concurrency}, median of {args.rounds}\n")
    print("| auth | req/s | server CPU us/request | non-2xx |")
    print("| --- | ---: | ---: | ---: |")
    for label, (r, c) in med.items():
        print(f"| {label} | {r:.0f} | {c:.0f} | {errors[label]} |")
    throughput, cpu = med["on"][0] / med["off"][0], med["on"][1] / med["off"][1]
    print(f"\non/off: throughput {throughput:.3f}x, CPU per request {cpu:.3f}x")


if __name__ == "__main__":
    main()
