"""Asynchronous HTTP requests: POST now, result later by id or callback, through the stream path.

Servers are real `python -m shipyard serve` processes; the embedded broker is the
default, and every real broker is used with the work done by a separate
`shipyard stream` process (what a deployment that scales the consumers does).
"""

from __future__ import annotations

import http.server
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.integration.stream.harness import Harness

from shipyard.testing import RunningServer, free_port, run_server

pytestmark = pytest.mark.integration

ROWS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
]


#: callbacks go to a receiver on 127.0.0.1, which only an explicit entry opens
CALLBACKS_TO_LOOPBACK = {"SHIPYARD_SECURITY__CALLBACK_HOSTS": "127.0.0.1"}


@pytest.fixture
def home(demo_home: Path, tmp_path: Path) -> Path:
    """A private copy of the demo registry (jobs and embedded streams live in it)."""
    copy = tmp_path / "home"
    shutil.copytree(demo_home, copy)
    return copy


def _wait_done(server: RunningServer, job_id: str, deadline: float = 60.0, *, submitted: bool = True) -> dict[str, Any]:
    """Poll until the job is no longer queued; a job not ``submitted`` here is unknown (404) until its result."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        r = httpx.get(f"{server.url}/v1/jobs/{job_id}")
        if r.status_code == 404 and not submitted:
            time.sleep(0.05)
            continue
        assert r.status_code == 200, r.text
        if r.json()["status"] != "queued":
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still queued after {deadline}s\n{server.log()[-3000:]}")


def test_job_is_accepted_at_once_and_answered_by_id_on_the_embedded_default(home: Path) -> None:
    with run_server(home, ["demo@champion"], args=["--workers", "1"]) as server:
        body = {"instances": ROWS}
        sync = httpx.post(f"{server.url}/v1/models/demo:predict", json=body).json()
        r = httpx.post(f"{server.url}/v1/models/demo/jobs", json=body)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] == "queued" and job["model"] == "demo"
        assert r.headers["location"] == f"/v1/jobs/{job['job_id']}" == job["url"]
        done = _wait_done(server, job["job_id"])
        assert done["status"] == "done"
        assert done["result"]["predictions"] == sync["predictions"]
        assert done["result"]["key"] == job["job_id"]
        assert done["result"]["version"] == "1"
        assert done["finished_at"] >= done["submitted_at"]

        one = httpx.post(f"{server.url}/v1/models/demo/jobs", json=ROWS[0]).json()  # a bare record works too
        assert _wait_done(server, one["job_id"])["result"]["prediction"] == sync["predictions"][0]


def test_bad_requests_are_refused_at_submission(home: Path) -> None:
    with run_server(home, ["demo@champion"], args=["--workers", "1"]) as server:
        bad = httpx.post(f"{server.url}/v1/models/demo/jobs", json={"instances": [{"sepal_length": "x"}]})
        assert bad.status_code == 400 and bad.json()["field"] in ("sepal_length", "sepal_width"), bad.text
        assert httpx.post(f"{server.url}/v1/models/demo/jobs", content=b"{oops",
                          headers={"content-type": "application/json"}).status_code == 400
        assert httpx.post(f"{server.url}/v1/models/nope/jobs", json={"instances": ROWS}).status_code == 404
        callback = httpx.post(f"{server.url}/v1/models/demo/jobs", params={"callback": "file:///etc/passwd"},
                              json={"instances": ROWS})
        assert callback.status_code == 400 and callback.json()["field"] == "callback"
        missing = httpx.get(f"{server.url}/v1/jobs/0123456789abcdef")
        assert missing.status_code == 404 and "no asynchronous request" in missing.json()["error"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: queue.Queue[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.put(orjson.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def callback_receiver() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"received": received})
    httpd = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/hook", received
    httpd.shutdown()
    httpd.server_close()


def test_result_is_pushed_to_the_callback_url(
    home: Path, callback_receiver: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, received = callback_receiver
    with run_server(home, ["demo@champion"], args=["--workers", "1"], env=CALLBACKS_TO_LOOPBACK) as server:
        job = httpx.post(f"{server.url}/v1/models/demo/jobs", params={"callback": url},
                         json={"instances": ROWS}).json()
        pushed = received.get(timeout=60)
        assert pushed["job_id"] == job["job_id"] and pushed["status"] == "done"
        assert len(pushed["result"]["predictions"]) == 2
        until = time.monotonic() + 30
        while (status := httpx.get(f"{server.url}/v1/jobs/{job['job_id']}").json())["callback_status"] is None:
            assert time.monotonic() < until
            time.sleep(0.05)
        assert status["callback_status"] == "delivered (204)"


def test_a_callback_to_a_host_not_allowed_is_refused_at_submission(
    home: Path, callback_receiver: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, received = callback_receiver
    with run_server(home, ["demo@champion"], args=["--workers", "1"]) as server:  # callback_hosts empty
        r = httpx.post(f"{server.url}/v1/models/demo/jobs", params={"callback": url}, json={"instances": ROWS})
        assert r.status_code == 400 and r.json()["field"] == "callback", r.text
        assert "security.callback_hosts" in r.json()["error"]
    with run_server(home, ["demo@champion"], args=["--workers", "1"],
                    env={"SHIPYARD_SECURITY__CALLBACK_HOSTS": "localhost,*.example.com"}) as server:
        # a listed name does not open the loopback address it resolves to; nor does a literal address
        for hook in (url.replace("127.0.0.1", "localhost"), url, "http://169.254.169.254/latest/meta-data/"):
            r = httpx.post(f"{server.url}/v1/models/demo/jobs", params={"callback": hook}, json={"instances": ROWS})
            assert r.status_code == 400 and r.json()["field"] == "callback", r.text
            assert "internal address" in r.json()["error"], r.text
    assert received.empty()


def test_a_callback_is_checked_again_when_it_is_delivered(
    home: Path, callback_receiver: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    """Accepted while allowed; by delivery time the setting (standing in for DNS) no longer allows it."""
    url, received = callback_receiver
    with run_server(home, ["demo@champion"], args=["--workers", "1", "--no-async-consumers"],
                    env=CALLBACKS_TO_LOOPBACK) as server:
        r = httpx.post(f"{server.url}/v1/models/demo/jobs", params={"callback": url}, json={"instances": ROWS})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
    with run_server(home, ["demo@champion"], args=["--workers", "1"],
                    env={"SHIPYARD_SECURITY__CALLBACK_HOSTS": "127.0.0.2"}) as server:
        assert _wait_done(server, job_id)["status"] == "done"
        until = time.monotonic() + 30
        while (status := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["callback_status"] is None:
            assert time.monotonic() < until, server.log()[-3000:]
            time.sleep(0.05)
    assert status["callback_status"].startswith("not sent (callback URL"), status
    assert "security.callback_hosts" in status["callback_status"]
    assert received.empty()


def test_requests_go_through_the_broker_to_separate_stream_consumers(broker: Harness, home: Path) -> None:
    """The server only queues (--no-async-consumers); a `shipyard stream` process on the broker predicts."""
    base = broker.url("shipyard")
    requests, results = broker.url("shipyard.requests.demo"), broker.url("shipyard.results")
    broker.create_topic("shipyard.requests.demo")
    broker.create_topic("shipyard.results")
    with run_server(home, ["demo@champion"], args=["--workers", "1", "--async-broker", base,
                                                   "--no-async-consumers"]) as server:
        sync = httpx.post(f"{server.url}/v1/models/demo:predict", json={"instances": ROWS}).json()["predictions"]
        jobs = [httpx.post(f"{server.url}/v1/models/demo/jobs", json={"instances": [row]}).json() for row in ROWS]
        time.sleep(0.5)
        assert all(httpx.get(f"{server.url}/v1/jobs/{j['job_id']}").json()["status"] == "queued" for j in jobs)
        # a request written straight to the topic that is not valid becomes a failed job
        broker.produce("shipyard.requests.demo", [("direct-1", b'{"sepal_length": []}')])

        log = (home.parent / "stream.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "--home", str(home), "stream", "demo@champion",
             "--source", requests, "--sink", results, "--dead-letter", results],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            answers = [_wait_done(server, j["job_id"]) for j in jobs]
            failed = _wait_done(server, "direct-1", submitted=False)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            log.close()
        assert [a["result"]["predictions"][0] for a in answers] == sync
        assert failed["status"] == "failed" and "sepal_length" in failed["error"]
        assert failed["result"]["payload"] == '{"sepal_length": []}'


def test_python_client_submits_and_waits_for_jobs(home: Path) -> None:
    import pandas as pd

    from shipyard import Client
    from shipyard.errors import ConfigError, InvalidInput, JobNotFound

    with run_server(home, ["demo@champion"], args=["--workers", "1"]) as server, Client(server.url) as client:
        expected = client.predict("demo", ROWS)
        job_id = client.submit("demo", ROWS)
        job = client.wait_job(job_id, timeout=60)
        assert job["status"] == "done" and job["job_id"] == job_id
        assert job["result"]["predictions"] == [next(iter(row.values())) for row in expected]  # one output
        frame_job = client.wait_job(client.submit("demo", pd.DataFrame(ROWS), version=1), timeout=60)
        assert frame_job["result"]["version"] == "1"
        assert frame_job["result"]["predictions"] == job["result"]["predictions"]
        with pytest.raises(InvalidInput) as bad:
            client.submit("demo", [{**ROWS[0], "petal_width": "wide"}])
        assert bad.value.field == "petal_width"
        with pytest.raises(JobNotFound):
            client.job("0123456789abcdef")
    with Client(f"grpc://127.0.0.1:{server.port}") as grpc_client, pytest.raises(ConfigError, match="over REST"):
        grpc_client.submit("demo", ROWS)
