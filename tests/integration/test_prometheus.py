"""/metrics against the real tools: promtool checks the exposition, a Prometheus server scrapes `shipyard serve`."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.config import MetricsConfig
from shipyard.context import RequestContext
from shipyard.demo import FEATURES
from shipyard.monitoring.events import Observers, PredictionEvent
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.streams import StreamMetrics
from shipyard.testing import RunningServer, free_port, run_server
from shipyard.testing._process import stop_process

pytestmark = pytest.mark.integration

ROW = dict.fromkeys(FEATURES, 1.0)
HINT = "install the Debian package 'prometheus' (bash scripts/test.sh does, as root)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found; {HINT}")
    return path


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), "check", "metrics"], input=exposition.decode(),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def server(demo_home: Path) -> Iterator[RunningServer]:
    """A server of its own, so that the request counts Prometheus sees are only this module's.

    Its asynchronous requests go to a topic of their own: the session's servers share ``demo_home``'s
    embedded broker, and one of them could otherwise predict this module's job and count it itself.
    """
    with run_server(demo_home, ["demo@champion"], args=["--async-broker", "local://prometheus-module"]) as running:
        yield running


class Prometheus:
    """A Prometheus server on loopback and its HTTP query API."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, promql: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> list[
            dict[str, Any]]:
        """Query until ``done(result)`` (Prometheus scrapes every second), failing at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if done(result):
                return result
            if time.monotonic() > deadline:
                targets = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
                pytest.fail(f"{promql} is still {result} after {timeout:.0f}s; targets: {targets}; "
                            f"log: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = _tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: shipyard\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n"
    )
    port = free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready after 60s: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield prom
    finally:
        stop_process(proc, "prometheus", grace=10)


def run_async_job(server: RunningServer) -> None:
    """One asynchronous request, through the server's stream consumer, until it is done."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        job = c.post("/v1/models/demo/jobs", json={"instances": [ROW, ROW]})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 60
        while (view := c.get(job.json()["url"]).json())["status"] == "queued":
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert view["status"] == "done", view


# -- promtool -------------------------------------------------------------------------------------


def test_promtool_accepts_every_series_with_values() -> None:
    """Every series recorded at least once (histograms with data, bounded labels, stream series)."""
    metrics = ServingMetrics(MetricsConfig(max_models=1))
    stream = StreamMetrics()
    metrics.include(stream.registry)
    metrics.watch(Observers([metrics]))
    events = [
        PredictionEvent(RequestContext.new("rest"), "demo", 1, "champion", None, None, 0.0, 0.004, "ok", rows=3),
        PredictionEvent(RequestContext.new("grpc"), "demo", 1, "1", None, None, 0.0, 2.0, "timeout"),
        PredictionEvent(RequestContext.new("graphql"), "other-model", 7, "7", None, None, 0.0, 0.0001, "ok",
                        rows=1, cached=True),
    ]
    metrics.observe(events)
    metrics.batch("demo", 1, 16, 4, 0.01, 0.02)
    metrics.inflight("demo", 1)
    metrics.model_loaded("demo", 1, 0.3)
    stream.messages.labels("local://shipyard", "predicted").inc()
    stream.batch_size.labels("local://shipyard").observe(2)
    stream.lag.labels("local://shipyard").set(0)
    body, _ = metrics.render()
    result = promtool_check(body)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_promtool_accepts_what_a_serving_process_exposes(server: RunningServer) -> None:
    run_async_job(server)
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert b"shipyard_stream_messages_total" in r.content and b"shipyard_build_info" in r.content
    result = promtool_check(r.content)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


# -- a Prometheus server scraping `shipyard serve` ---------------------------------------------------


def test_prometheus_scrapes_the_server(prometheus: Prometheus) -> None:
    prometheus.wait_for('up{job="shipyard"}', lambda r: len(r) == 1 and r[0]["value"][1] == "1")
    info = prometheus.wait_for("shipyard_build_info", lambda r: len(r) == 1)
    assert set(info[0]["metric"]) >= {"version", "python", "job", "instance"}
    started = prometheus.wait_for("shipyard_start_time_seconds", lambda r: len(r) == 1)
    assert float(started[0]["value"][1]) <= time.time()


def test_prometheus_sees_the_async_consumers_series(server: RunningServer, prometheus: Prometheus) -> None:
    run_async_job(server)
    prometheus.wait_for('sum(shipyard_stream_messages_total{outcome="predicted"})',
                        lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 1)


def test_prometheus_counts_the_requests_of_the_model(server: RunningServer, prometheus: Prometheus) -> None:
    prometheus.wait_for('up{job="shipyard"}', lambda r: len(r) == 1 and r[0]["value"][1] == "1")
    sent = 5
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(sent):
            r = c.post("/v1/models/demo:predict", json={"instances": [ROW, ROW]})
            assert r.status_code == 200, r.text
    requests = 'sum(shipyard_requests_total{model="demo",version="1",protocol="rest",outcome="ok"})'
    prometheus.wait_for(requests, lambda r: len(r) == 1 and float(r[0]["value"][1]) == sent, timeout=30)
    latency = 'sum(shipyard_request_duration_seconds_count{model="demo",version="1",protocol="rest"})'
    assert float(prometheus.query(latency)[0]["value"][1]) == sent
    rows = 'sum(shipyard_predicted_rows_total{model="demo",version="1"})'
    assert float(prometheus.query(rows)[0]["value"][1]) >= 2 * sent
