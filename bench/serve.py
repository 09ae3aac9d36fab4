"""Serving throughput and latency against the raw model and a bare HTTP endpoint, in one run.

    .venv/bin/python bench/serve.py [--duration 4] [--rounds 2] [--concurrency 1,8,32,64] [--models rf,lr]

Everything runs on 127.0.0.1. Needs `wrk` (Debian package `wrk`). For each model
(the quickstart RandomForest "rf", a LogisticRegression on 20 features "lr") it
measures, with single-row requests:

  (a) raw     the model's predict called in-process, one row at a time
  (b) bare    a bare Starlette endpoint doing the same predict on the same HTTP stack
  (c) native  shipyard, native runtime, no batching, one worker
  (d) batch   shipyard with adaptive batching
  (e) onnx    shipyard with the ONNX Runtime path
  (f) b+onnx  batching plus ONNX
  (g) 2 wrk   shipyard native, no batching, two worker processes
  (h) quiet   shipyard native with metrics off (what (c) costs over it is the metrics)
  (i) logged  shipyard native with metrics and the prediction log on (embedded SQLite files)
  (j) split   shipyard native with a traffic policy: 50/50 over two versions (the same model twice)
  (k) sticky  as (j), sticky by a header wrk sends (each request hashes its key)
  (l) nodrift shipyard native with drift monitoring off ((c) monitors lr's drift: it has a profile)
  (m) served   shipyard native with feedback recording on (a database row per predicted row)
  (n) keys     shipyard native with authentication on: every request carries an API key (predict scope)

and prints one Markdown table per model: throughput, p50, p99 (median over rounds),
ratio to (b), idle RSS per process of the server's process tree, and cold start
(process start to first answer; for ONNX configs, a start after the graph is cached).
Load is bounded: each point runs --duration seconds with wrk's single thread.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Point:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0


@dataclass
class Result:
    points: dict[int, list[Point]] = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """RSS of a process and its descendants (MB) and how many processes that is."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    count += 1
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total / 1024, count


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(url: str, body: bytes, concurrency: int, duration: float, tmp: Path,
        headers: dict[str, str] | None = None) -> Point:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body.decode()}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--latency", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=int(duration) + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = parse_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = parse_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Point(rps, p50, p99, int(errors.group(1)) if errors else 0)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def start(cmd: list[str], env: dict[str, str], url: str, body: bytes,
          headers: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server; return it and its cold start (process start to first good answer)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {' '.join(cmd)}")
        try:
            if post(url, body, headers) == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise RuntimeError(f"server not ready: {' '.join(cmd)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def register_models(home: Path) -> dict[str, tuple[Any, Any]]:
    """Register rf (quickstart) and lr (LogisticRegression, 20 features); return model + one row each."""
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.demo import register_demo, train_demo_model
    from shipyard.registry import Registry

    reg = Registry.from_settings(Settings(home=home))
    register_demo(reg, name="rf")
    rf, X_rf, _ = train_demo_model()
    Xa, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    X_lr = pd.DataFrame(Xa, columns=[f"f{i}" for i in range(20)])
    lr = LogisticRegression(max_iter=1000).fit(X_lr, y)
    # training_data gives lr a reference profile, so (c) monitors its drift and (l) shows what that costs
    reg.register(lr, "lr", sample=X_lr.head(5), training_data=X_lr)
    # second versions, identical, so (j) and (k) route between two versions doing the same work
    reg.register(rf, "rf", sample=X_rf.head(5), if_identical="new")
    reg.register(lr, "lr", sample=X_lr.head(5), training_data=X_lr, if_identical="new")
    reg.close()
    return {"rf": (rf, X_rf.iloc[[0]]), "lr": (lr, X_lr.iloc[[0]])}


def bench_key(home: Path) -> dict[str, str]:
    """The header of a fresh API key with the predict scope, for (n)."""
    from shipyard.config import Settings
    from shipyard.registry import Registry
    from shipyard.security.keys import KeyStore

    reg = Registry.from_settings(Settings(home=home))
    _, token = KeyStore(reg.database).create("bench", ["predict"])
    reg.close()
    return {"Authorization": f"Bearer {token}"}


def raw_point(model: Any, row: Any, duration: float) -> Point:
    lat: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        model.predict(row)
        lat.append(time.perf_counter() - t0)
    arr = np.array(lat) * 1e3
    return Point(len(lat) / duration, float(np.median(arr)), float(np.percentile(arr, 99)))


METRICS_OFF = {"SHIPYARD_MONITORING__METRICS__ENABLED": "false"}
LOG_ON = {"SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED": "true"}
DRIFT_OFF = {"SHIPYARD_MONITORING__DRIFT__ENABLED": "false"}
FEEDBACK_ON = {"SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true"}
AUTH_ON = {"SHIPYARD_SECURITY__AUTH__ENABLED": "true"}

#: label -> (server kind, CLI arguments, environment)
CONFIGS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "(b) bare endpoint": ("bare", [], {}),
    "(c) shipyard native": ("shipyard", ["--workers", "1"], {}),
    "(d) shipyard batching": ("shipyard", ["--workers", "1", "--batching"], {}),
    "(e) shipyard onnx": ("shipyard", ["--workers", "1", "--runtime", "onnx"], {}),
    "(f) shipyard batching+onnx": ("shipyard", ["--workers", "1", "--batching", "--runtime", "onnx"], {}),
    "(g) shipyard native, 2 workers": ("shipyard", ["--workers", "2"], {}),
    "(h) shipyard native, metrics off": ("shipyard", ["--workers", "1"], METRICS_OFF),
    "(i) shipyard native, metrics + prediction log": ("shipyard", ["--workers", "1"], LOG_ON),
    "(j) shipyard native, 50/50 split": ("shipyard-split", ["--workers", "1"], {}),
    "(k) shipyard native, sticky 50/50 split": ("shipyard-sticky", ["--workers", "1"], {}),
    "(l) shipyard native, drift off": ("shipyard", ["--workers", "1"], DRIFT_OFF),
    "(m) shipyard native, feedback recording on": ("shipyard", ["--workers", "1"], FEEDBACK_ON),
    "(n) shipyard native, API keys on": ("shipyard", ["--workers", "1"], AUTH_ON),
}

STICKY_HEADER = {"X-User": "user-1234"}


def traffic_file(tmp: Path, name: str, sticky: bool) -> Path:
    """A shipyard.yaml giving ``name`` a 50/50 split over its versions 1 and 2."""
    path = tmp / f"{name}-{'sticky' if sticky else 'split'}.yaml"
    sticky_line = "      sticky: header:x-user\n" if sticky else ""
    path.write_text(f"models:\n  - ref: {name}\n    traffic:\n{sticky_line}      arms:\n"
                    "        - {version: 1, percent: 50}\n        - {version: 2, percent: 50}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--models", default="rf,lr")
    ap.add_argument("--configs", default="", help="comma-separated letters to run, e.g. b,c,d (default: all)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = {k: v for k, v in CONFIGS.items() if not args.configs or k[1] in args.configs.split(",")}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        home = tmp / "home"
        models = register_models(home)
        key_header = bench_key(home)
        # this checkout's shipyard (src) and bench.bare_app (the root), whatever the venv has installed
        env = {**os.environ, "SHIPYARD_HOME": str(home), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        for name in args.models.split(","):
            model, row = models[name]
            record = row.to_dict(orient="records")
            body = orjson.dumps({"instances": record})
            results: dict[str, Result] = {"(a) raw predict": Result(), **{label: Result() for label in chosen}}
            for round_ in range(args.rounds):
                results["(a) raw predict"].points.setdefault(1, []).append(raw_point(model, row, args.duration))
                # every other round in reverse: a config run right after another server stopped is slower,
                # and a fixed order would charge that to the later configs every time
                order = list(chosen.items()) if round_ % 2 == 0 else list(reversed(chosen.items()))
                for label, (kind, extra, extra_env) in order:
                    port = free_port()
                    if kind == "bare":
                        cmd = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port),
                               "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
                        url = f"http://127.0.0.1:{port}/predict"
                        run_env = {**env, "BARE_MODEL": name}
                    else:
                        policy = []
                        if kind != "shipyard":
                            policy = ["-c", str(traffic_file(tmp, name, kind == "shipyard-sticky"))]
                        cmd = [sys.executable, "-m", "shipyard", "serve", name, "--port", str(port),
                               "--log-level", "warning", *policy, *extra]
                        url = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
                        run_env = {**env, **extra_env}
                    headers = STICKY_HEADER if kind == "shipyard-sticky" else None
                    if extra_env is AUTH_ON:
                        headers = key_header
                    try:
                        if "onnx" in extra:  # compile once, as a deployment would; time the start after
                            stop(start(cmd, run_env, url, body)[0])
                        proc, cold = start(cmd, run_env, url, body, headers)
                    except RuntimeError as exc:
                        print(f"skipping {label} for {name}: {exc}", file=sys.stderr)
                        continue
                    try:
                        time.sleep(0.5)
                        rss, procs = tree_rss_mb(proc.pid)
                        res = results.setdefault(label, Result())
                        res.cold_s.append(cold)
                        res.rss_mb.append(rss / max(1, procs))
                        for c in levels:
                            res.points.setdefault(c, []).append(wrk(url, body, c, args.duration, tmp, headers))
                    finally:
                        stop(proc)
            print_table(name, results, levels)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(name: str, results: dict[str, Result], levels: list[int]) -> None:
    bare = results.get("(b) bare endpoint")
    print(f"\n### {name}: single-row requests, median of rounds\n")
    print("| config | conc. | req/s | p50 ms | p99 ms | req/s vs bare | RSS/worker MB | cold start s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fmt: Callable[[float], str] = lambda v: f"{v:.2f}"  # noqa: E731
    for label, res in results.items():
        for c in sorted(res.points):
            pts = res.points[c]
            rps = med([p.rps for p in pts])
            base = med([p.rps for p in bare.points.get(c, [])]) if bare else float("nan")
            errors = sum(p.errors for p in pts)
            note = f" (non-2xx: {errors})" if errors else ""
            print(f"| {label}{note} | {c} | {rps:.0f} | "
                  f"{fmt(med([p.p50_ms for p in pts]))} | {fmt(med([p.p99_ms for p in pts]))} | "
                  f"{rps / base:.2f}x | {med(res.rss_mb):.0f} | {med(res.cold_s):.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
