"""First paint of the dashboard's pages on loopback, with 10 models and 100,000 logged predictions.

    .venv/bin/python bench/ui.py [--rounds 7] [--predictions 100000]

Registers 10 LogisticRegression models in a throwaway SHIPYARD_HOME, writes the predictions into
the prediction log with the server's own file sink (spread over the last 250 s, as the browser
tests do), starts ``shipyard serve`` on 127.0.0.1 (prediction log on, authentication off), and
opens each page in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright), a fresh
page per round. Prints, per page, the median over the rounds of the browser's ``first-paint`` and
``first-contentful-paint`` (milliseconds from navigation start) and, as the baseline the page
cannot beat, the median time of the JSON request the page renders from (``httpx``, same machine),
with the load average beside them. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
from playwright.sync_api import sync_playwright
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.predlog_sinks import FileSink, default_folder, iso_time
from shipyard.registry import Registry
from shipyard.testing import run_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MODELS = [f"model{i}" for i in range(10)]
PAINTS = "() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"
PAGES = {"/ui/": "/v1/overview", "/ui/models/model0": "/v1/models/model0/summary?window=3600&buckets=60",
         "/ui/audit": "/v1/audit?limit=200"}


def prepare(home: Path, predictions: int) -> None:
    rng = random.Random(1)
    x = pd.DataFrame({"x1": [rng.uniform(0, 3) for _ in range(300)], "x2": [rng.uniform(0, 3) for _ in range(300)]})
    model = LogisticRegression().fit(x, (x["x1"] > x["x2"]).astype(int))
    settings = Settings(home=home)
    reg = Registry.from_settings(settings)
    try:
        for name in MODELS:
            reg.register(model, name, sample=x.head(5), training_data=x, alias="champion")
    finally:
        reg.close()
    sink = FileSink(default_folder(settings), max_file_bytes=1 << 30, max_total_bytes=1 << 31)
    now, batch = time.time(), []
    try:
        for i in range(predictions):
            outcome = "internal" if rng.random() < 0.02 else "ok"
            batch.append({"prediction_id": uuid.uuid4().hex, "request_id": uuid.uuid4().hex,
                          "time": iso_time(now - 250 * rng.random()), "model": MODELS[i % len(MODELS)], "version": 1,
                          "route": "bench", "transport": "rest", "principal": None,
                          "inputs": {"x1": [rng.random()], "x2": [rng.random()]}, "outputs": {"predict": [1]},
                          "latency_ms": round(rng.lognormvariate(0.5, 0.6), 3), "outcome": outcome, "error": None,
                          "rows": 1, "cached": False, "trace_id": None, "shadow": False, "policy_revision": None})
            if len(batch) == 5_000:
                sink.write(batch)
                batch = []
        sink.write(batch)
    finally:
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--predictions", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        prepare(home, args.predictions)
        env = {"SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED": "true", "SHIPYARD_ASYNC_BROKER": "off"}
        with run_server(home, [f"{m}@champion" for m in MODELS], env=env, ready_timeout=120) as server, \
                sync_playwright() as p, httpx.Client(base_url=server.url, timeout=30) as http:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            print(f"{len(MODELS)} models, {args.predictions:,} logged predictions, {args.rounds} rounds; "
                  f"load average {os.getloadavg()[0]:.2f} at start")
            print("| page | first paint ms | first contentful paint ms | its JSON request ms |")
            print("| --- | ---: | ---: | ---: |")
            for page_path, api_path in PAGES.items():
                paints, contentful, api = [], [], []
                for _ in range(args.rounds):
                    page = browser.new_page()
                    page.goto(server.url + page_path, wait_until="load")
                    # the load event can come before the first paint is recorded: wait for the paint
                    page.wait_for_function("() => performance.getEntriesByType('paint').length >= 2", timeout=10_000)
                    entries = page.evaluate(PAINTS)
                    paints.append(entries.get("first-paint", float("nan")))
                    contentful.append(entries.get("first-contentful-paint", float("nan")))
                    page.close()
                    started = time.perf_counter()
                    http.get(api_path).raise_for_status()
                    api.append((time.perf_counter() - started) * 1000)
                print(f"| {page_path} | {statistics.median(paints):.0f} | {statistics.median(contentful):.0f} | "
                      f"{statistics.median(api):.0f} |")
            browser.close()
            print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
