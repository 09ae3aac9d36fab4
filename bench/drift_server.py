"""Memory of a server that monitors drift: resident size after 1 million and after N million rows.

    .venv/bin/python bench/drift_server.py [--rows 3000000] [--batch 1000] [--big] [--concurrency 4]

Registers a LogisticRegression on 20 float features with 20,000 training rows (so the version
carries a reference profile), starts ``shipyard serve`` with the defaults (drift monitoring
and feedback recording on; 10-second windows so many windows open, close and are compared),
and sends --batch-row requests with ``wrk`` on 127.0.0.1 until the server has predicted
--rows rows (read from ``shipyard_predicted_rows_total``), bounded in time. The resident
memory of the server process is read after the first million rows, after three million and at the end: the growth
is what the windows, the queue of rows waiting to be binned, the reports and the feedback
recorder keep (the issue's bar: under 20 MB after 10 million rows; ``--big`` sends 10 million).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import free_port, start, stop, tree_rss_mb  # noqa: E402


def register(home: Path) -> list[list[float]]:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from shipyard.config import Settings
    from shipyard.registry import Registry

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(20_000, 20)), columns=[f"f{i}" for i in range(20)])
    model = LogisticRegression(max_iter=500).fit(x, (x["f0"] + x["f1"] > 0).astype(int))
    reg = Registry.from_settings(Settings(home=home))
    reg.register(model, "lr", sample=x.head(5), training_data=x)
    reg.close()
    return np.round(rng.normal(size=(4_096, 20)), 4).tolist()


def predicted_rows(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shipyard_predicted_rows_total{"))


def drift_reports(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(1 for line in text.splitlines() if line.startswith("shipyard_drift_rows{"))


def send_until(url: str, body: bytes, rows: float, concurrency: int, tmp: Path, limit_s: float) -> float:
    """wrk in 5-second bursts until the server predicted ``rows`` rows; seconds taken."""
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body.decode()}]]\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    t0 = time.monotonic()
    while predicted_rows(url) < rows:
        if time.monotonic() - t0 > limit_s:
            raise SystemExit(f"stopped after {limit_s:.0f}s with {predicted_rows(url):,.0f} rows")
        subprocess.run(["wrk", "-t1", f"-c{concurrency}", "-d5s", "--timeout", "30s", "-s", str(script),
                        f"{url}/v1/models/lr:predict"], capture_output=True, check=True, timeout=60)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--big", action="store_true", help="send 10,000,000 rows")
    ap.add_argument("--batch", type=int, default=1_000, help="rows per request")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--limit-seconds", type=float, default=1_800)
    ap.add_argument("--feedback", choices=("on", "off"), default="on", help="monitoring.feedback.enabled")
    args = ap.parse_args()
    total = 10_000_000 if args.big else args.rows
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-drift-server-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        rows = register(home)
        body = json.dumps({"instances": [dict(zip([f"f{i}" for i in range(20)], r, strict=True))
                                         for r in rows[:args.batch]]}).encode()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SHIPYARD_HOME": str(home), "PYTHONPATH": str(ROOT / "src"),
               "SHIPYARD_MONITORING__DRIFT__WINDOW_SECONDS": "10",
               "SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true" if args.feedback == "on" else "false"}
        cmd = [sys.executable, "-m", "shipyard", "serve", "lr", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--max-body-bytes", str(64 * 1024 * 1024)]
        proc, _ = start(cmd, env, f"{url}/v1/models/lr:predict", body)
        try:
            first = send_until(url, body, 1_000_000, args.concurrency, tmp, args.limit_seconds)
            time.sleep(12)  # a window closes and is compared: its memory is in the first figure
            rss_first, _ = tree_rss_mb(proc.pid)
            warm = send_until(url, body, min(3_000_000, total), args.concurrency, tmp, args.limit_seconds)
            time.sleep(12)
            rss_warm, _ = tree_rss_mb(proc.pid)
            rest = warm + send_until(url, body, total, args.concurrency, tmp, args.limit_seconds)
            time.sleep(12)
            rss_last, _ = tree_rss_mb(proc.pid)
            done = predicted_rows(url)
            reports = drift_reports(url)
        finally:
            stop(proc)
    print(f"rows predicted: {done:,.0f} in {first + rest:.0f}s ({done / (first + rest):,.0f} rows/s), "
          f"batch {args.batch}, feedback {args.feedback}, drift windows of 10 s")
    print(f"server RSS after 1M rows: {rss_first:.1f} MB; after 3M: {rss_warm:.1f} MB; after {done / 1e6:.1f}M rows: "
          f"{rss_last:.1f} MB; growth from 1M {rss_last - rss_first:+.1f} MB, from 3M {rss_last - rss_warm:+.1f} MB")
    print(f"drift reports on /metrics: {reports}")


if __name__ == "__main__":
    main()
