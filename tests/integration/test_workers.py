"""Worker processes: `shipyard serve --workers 2` spreads calls and survives a worker's death."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from tests.fixtures.custom import register_source_model

from shipyard.testing import run_server

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def worker_pids(server_pid: int) -> list[int]:
    """Model workers are the forkserver's children."""
    forkservers = [p for p in _children(server_pid) if "forkserver" in _cmdline(p)]
    return sorted(p for fs in forkservers for p in _children(fs))


@pytest.fixture
def pid_home(tmp_path: Path) -> Path:
    """A model that answers with the pid of the process that ran it, after 0.2 s."""
    home = tmp_path / "home"
    register_source_model(tmp_path, home, module="pid_model", cls="Pid", name="pid", sample={"x": [1.0]},
                          source='''
        import os
        import time

        import numpy as np
        import shipyard

        class Pid(shipyard.Model):
            def predict(self, inputs):
                marks = os.environ.get("PID_MODEL_MARKS")
                if marks:  # tells the test this process is now inside a call
                    open(os.path.join(marks, str(os.getpid())), "w").close()
                time.sleep(0.2)
                return np.full(len(inputs["x"]), os.getpid(), dtype=np.int64)
    ''')
    return home


async def _many(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        return await asyncio.gather(
            *[c.post("/v1/models/pid:predict", json={"instances": [{"x": float(i)}]}) for i in range(n)]
        )


def test_two_workers_share_the_calls(pid_home: Path) -> None:
    with run_server(pid_home, ["pid"], args=["--workers", "2"]) as server:
        workers = worker_pids(server.process.pid)
        responses = asyncio.run(_many(server.url, 8))
    assert len(workers) == 2
    served_by = {r.json()["predictions"][0] for r in responses}
    assert served_by == set(workers)  # both processes answered, and none of it ran in the server


def test_a_killed_worker_fails_its_request_with_503_and_is_replaced(pid_home: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with run_server(pid_home, ["pid"], args=["--workers", "2"], env={"PID_MODEL_MARKS": str(marks)}) as server:
        before = worker_pids(server.process.pid)

        async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
            load = asyncio.create_task(_many(server.url, 6))
            deadline = time.monotonic() + 30
            while not (marks / str(before[0])).exists():  # the victim is inside a call now
                assert time.monotonic() < deadline, "the worker never got a call"
                await asyncio.sleep(0.005)
            os.kill(before[0], signal.SIGKILL)
            first = await load
            return first, await _many(server.url, 4)

        during, after = asyncio.run(scenario())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(worker_pids(server.process.pid)) < 2:
            time.sleep(0.1)
        now = worker_pids(server.process.pid)
        assert server.process.poll() is None
    statuses = [r.status_code for r in during]
    assert 503 in statuses and set(statuses) <= {200, 503}
    died = next(r for r in during if r.status_code == 503)
    assert "died while running this request" in died.json()["error"]
    assert died.headers["retry-after"] == "1"
    assert [r.status_code for r in after] == [200] * 4
    assert before[0] not in now and len(now) == 2  # replaced
