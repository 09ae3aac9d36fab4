"""`shipyard serve --workers 2`: two whole server processes on one port, under a supervisor.

Both answer; a killed one is replaced while the other keeps answering; SIGTERM drains both;
alias moves reach both; /metrics adds both up; gRPC connections spread over both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.fixtures.custom import register_source_model

from shipyard.testing import free_port, run_server
from shipyard.testing.server import RunningServer

pytestmark = pytest.mark.integration

PID_MODEL = '''
    import os
    import time

    import numpy as np
    import shipyard

    class Pid(shipyard.Model):
        """Answers with the pid of the process that ran it{tag}."""

        def predict(self, inputs):
            marks = os.environ.get("PID_MODEL_MARKS")
            if marks:  # tells the test this process is now inside a call
                open(os.path.join(marks, str(os.getpid())), "w").close()
            time.sleep(float(os.environ.get("PID_MODEL_SLEEP", "0.05")))
            return np.full(len(inputs["x"]), os.getpid(), dtype=np.int64)
'''


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def worker_pids(server_pid: int) -> list[int]:
    """The supervisor's server processes (not multiprocessing's resource tracker)."""
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    return sorted(p for p in _children(server_pid) if b"spawn_main" in cmdline(p))


def all_ready(server: RunningServer, count: int = 1, timeout: float = 60.0) -> list[int]:
    """Wait for the supervisor's count-th "workers ready"/"replaced" line; the worker pids then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if log.count("workers ready") + log.count("replaced (pid") >= count:
            return worker_pids(server.process.pid)
        assert server.process.poll() is None, log
        time.sleep(0.05)
    raise AssertionError(f"the workers were not ready within {timeout}s:\n{server.log()}")


@pytest.fixture
def pid_home(tmp_path: Path) -> Path:
    """A model that answers with the pid of the process that ran it."""
    home = tmp_path / "home"
    register_source_model(tmp_path, home, module="pid_model", cls="Pid", name="pid", sample={"x": [1.0]},
                          source=PID_MODEL.format(tag=""))
    return home


def predict(url: str, n: int = 1) -> list[httpx.Response]:
    """``n`` concurrent requests, each on a connection of its own (so the kernel may hand each to any worker)."""
    async def one(i: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await c.post("/v1/models/pid:predict", json={"instances": [{"x": float(i)}]})

    async def many() -> list[httpx.Response]:
        return await asyncio.gather(*[one(i) for i in range(n)])

    return asyncio.run(many())


def answered_by(url: str, expected: set[int], timeout: float = 30.0) -> set[int]:
    """Send rounds of requests until every pid of ``expected`` answered one; the pids seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not expected <= seen and time.monotonic() < deadline:
        for r in predict(url, 8):
            assert r.status_code == 200, r.text
            seen.add(r.json()["predictions"][0])
    return seen


@pytest.fixture
def two_workers(pid_home: Path, tmp_path: Path) -> Iterator[RunningServer]:
    marks = tmp_path / "marks"
    marks.mkdir()
    with run_server(pid_home, ["pid"], args=["--workers", "2", "--async-broker", "off"],
                    env={"PID_MODEL_MARKS": str(marks)}) as server:
        yield server


def test_two_workers_answer_on_one_port(two_workers: RunningServer) -> None:
    workers = all_ready(two_workers)
    assert len(workers) == 2 and two_workers.process.pid not in workers
    assert answered_by(two_workers.url, set(workers)) == set(workers)  # each is a whole server
    log = two_workers.log()
    assert f"listening on http://127.0.0.1:{two_workers.port} with 2 worker processes" in log
    assert log.index("workers ready") > log.rindex("loaded pid:1")  # ready once both loaded


def test_a_killed_worker_is_replaced_while_the_other_answers(two_workers: RunningServer) -> None:
    before = all_ready(two_workers)
    os.kill(before[0], signal.SIGKILL)
    # the survivor takes every new connection meanwhile
    assert {r.status_code for r in predict(two_workers.url, 8)} == {200}
    now = all_ready(two_workers, count=2)  # "worker 0 replaced"
    assert len(now) == 2 and before[0] not in now and before[1] in now
    assert answered_by(two_workers.url, set(now)) == set(now)  # fully served again
    assert "died (signal SIGKILL)" in two_workers.log()
    assert two_workers.process.poll() is None


def test_sigterm_drains_both_workers_and_exits_zero(pid_home: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"PID_MODEL_MARKS": str(marks), "PID_MODEL_SLEEP": "0.5"}
    with run_server(pid_home, ["pid"], args=["--workers", "2", "--async-broker", "off"], env=env) as server:
        workers = all_ready(server)

        async def scenario() -> list[httpx.Response]:
            async def one(i: int) -> httpx.Response:
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
                    return await c.post("/v1/models/pid:predict", json={"instances": [{"x": float(i)}]})

            # new connections until both workers are inside a call (the kernel picks who accepts each)
            load = []
            while len(load) < 24 and not all((marks / str(p)).exists() for p in workers):
                load.append(asyncio.create_task(one(len(load))))
                await asyncio.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*load)

        responses = asyncio.run(scenario())
        assert server.process.wait(60) == 0
    assert {p.name for p in marks.iterdir()} == {str(p) for p in workers}  # both had calls in flight
    assert [r.status_code for r in responses] == [200] * len(responses)  # none failed: every accepted one finished
    assert {r.json()["predictions"][0] for r in responses} == set(workers)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()]
    assert "Traceback" not in server.log()


def test_an_alias_move_reaches_both_workers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register_source_model(tmp_path, home, module="pid_v1", cls="Pid", name="pid", sample={"x": [1.0]},
                          source=PID_MODEL.format(tag=" (version 1)"))
    register_source_model(tmp_path, home, module="pid_v2", cls="Pid", name="pid", sample={"x": [1.0]},
                          source=PID_MODEL.format(tag=" (version 2)"))

    def alias(version: int) -> None:
        subprocess.run([sys.executable, "-m", "shipyard", "alias", "pid", "champion", str(version)],
                       env={**os.environ, "SHIPYARD_HOME": str(home)}, check=True, capture_output=True, timeout=60)

    alias(1)
    env = {"SHIPYARD_ALIAS_REFRESH_SECONDS": "0.3"}
    with run_server(home, ["pid@champion"], args=["--workers", "2", "--async-broker", "off"], env=env) as server:
        workers = set(all_ready(server))
        alias(2)
        on_two: set[int] = set()
        deadline = time.monotonic() + 30
        while on_two != workers and time.monotonic() < deadline:
            for r in predict(server.url, 8):
                if r.json()["model_version"] == "2":
                    on_two.add(r.json()["predictions"][0])
        assert on_two == workers


def test_metrics_add_up_every_worker(two_workers: RunningServer) -> None:
    workers = all_ready(two_workers)
    sent = 0
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while seen != set(workers) and time.monotonic() < deadline:
        responses = predict(two_workers.url, 8)
        sent += len(responses)
        seen |= {r.json()["predictions"][0] for r in responses}
    assert seen == set(workers)
    # the observers count asynchronously: poll until every answered request is counted
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{two_workers.url}/metrics", timeout=30).text
        families = list(text_string_to_metric_families(text))
        ok = sum(s.value for f in families if f.name == "shipyard_requests" for s in f.samples
                 if s.name == "shipyard_requests_total" and s.labels["outcome"] == "ok")
        if ok >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok == sent  # both workers' counts, once each
    names = [f.name for f in families]
    assert len(names) == len(set(names))  # no family exposed twice
    in_flight = [s.value for f in families if f.name == "shipyard_requests_in_flight" for s in f.samples]
    assert in_flight == [0.0]
    assert not any(n.startswith("process_") for n in names)  # one worker's process is not the server's


def test_grpc_connections_spread_over_the_workers(pid_home: Path) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    with run_server(pid_home, ["pid"], args=["--workers", "2", "--async-broker", "off"], grpc=True) as server:
        workers = set(all_ready(server))
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while seen != workers and time.monotonic() < deadline:
            client = grpcclient.InferenceServerClient(server.grpc_target)  # a connection of its own
            try:
                tensor = grpcclient.InferInput("x", [1], "FP64")
                tensor.set_data_from_numpy(np.array([1.0]))
                seen.add(int(client.infer("pid", [tensor]).as_numpy("predict")[0]))
            finally:
                client.close()
        assert seen == workers


def test_a_sigterm_to_the_whole_process_group_drains_once(pid_home: Path, tmp_path: Path) -> None:
    """systemd, `timeout` and `kill -- -PGID` signal the group: the supervisor forwards, each worker drains once."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "pid", "--port", str(port),
                                 "--workers", "2", "--async-broker", "off"],
                                env={**os.environ, "SHIPYARD_HOME": str(pid_home)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "workers ready" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert "workers ready" in log.read_text(), log.read_text()
        workers = worker_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "died" not in text and "Traceback" not in text and "killing it" not in text, text
    assert text.count("Application shutdown complete") == 2
    assert not [p for p in workers if Path(f"/proc/{p}").exists()]


def test_workers_do_not_outlive_a_killed_supervisor(pid_home: Path) -> None:
    with run_server(pid_home, ["pid"], args=["--workers", "2", "--async-broker", "off"]) as server:
        workers = all_ready(server)
        server.process.kill()
        server.process.wait(30)
        deadline = time.monotonic() + 60
        while [p for p in workers if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if Path(f"/proc/{p}").exists()]
