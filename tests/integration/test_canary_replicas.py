"""Canaries across replicas: two `shipyard serve` processes on one PostgreSQL registry, real traffic, the CLI.

Each arm is a version of one custom model, ``Flaky``, that fails on every ``every``-th
input value (deterministic, so a test knows which inputs can fail at all) and may sleep
before answering. The stable version fails on 0.5 % of inputs and sleeps 20 ms; a bad
candidate fails on 5 %, a good one never, and neither sleeps: the latency gate (the
candidate's share slower than 1.2 times the stable p99 must be shown below 1 %) can
then pass within a few hundred requests, and only the error rates tell the two apart.

The rollout controller runs in both servers, one holding the lease; every request
goes through one of them (alternating), and every decision is read back from the
registry (``shipyard rollout status --json``, the alias history, the lease table).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.rollout.arm_stats import read_totals
from shipyard.rollout.store import TrafficStore
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLAKY_MODEL = '''
import json
import time
from pathlib import Path

import numpy as np
import shipyard


class Flaky(shipyard.Model):
    """Answers 2x; raises when int(x) is a multiple of ``every`` (0: never); sleeps ``delay`` seconds first."""

    def __init__(self, every=0, delay=0.0):
        self.every, self.delay = every, delay

    def save(self, path):
        (Path(path) / "flaky.json").write_text(json.dumps({"every": self.every, "delay": self.delay}))

    def load(self, path):
        settings = json.loads((Path(path) / "flaky.json").read_text())
        self.every, self.delay = settings["every"], settings["delay"]

    def predict(self, inputs):
        x = np.asarray(inputs["x"], dtype=float)
        if self.delay:
            time.sleep(self.delay)
        if self.every and np.any(x.astype(int) % self.every == 0):
            raise RuntimeError(f"failed on purpose on x = {x.tolist()}")
        return 2 * x
'''

STABLE_EVERY = 200  # 0.5 % of inputs fail on the stable version
BAD_EVERY = 20  # 5 % on the bad candidate
CLIENTS = 6  # concurrent callers (threads), spread over both servers
TICK = "0.5"


@dataclass
class Fleet:
    env: dict[str, str]
    url: str
    homes: tuple[Path, Path]
    versions: dict[str, int]
    """stable, bad and good: the version numbers of the three Flaky models."""


@pytest.fixture
def fleet(tmp_path: Path, pg_database_url: str) -> Iterator[Fleet]:
    """One registry: Flaky stable (alias champion), a bad candidate (challenger), a good one (candidate)."""
    env = {"SHIPYARD_REGISTRY_URL": pg_database_url, "SHIPYARD_ARTIFACTS": str(tmp_path / "artifacts"),
           "SHIPYARD_ALIAS_REFRESH_SECONDS": "0.5", "SHIPYARD_ROLLOUT_TICK_SECONDS": TICK,
           "SHIPYARD_ASYNC_BROKER": "off"}
    module = f"flaky_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(FLAKY_MODEL)
    sys.path.insert(0, str(tmp_path))
    registry = Registry.from_settings(Settings(home=tmp_path / "setup", registry_url=pg_database_url,
                                               artifacts=env["SHIPYARD_ARTIFACTS"]))
    try:
        flaky = importlib.import_module(module).Flaky
        sample = {"x": np.array([1.0, 2.0, 3.0])}  # no multiple of any ``every``: registration predicts on it
        versions = {
            "stable": registry.register(flaky(STABLE_EVERY, 0.02), "m", sample=sample, alias="champion"),
            "bad": registry.register(flaky(BAD_EVERY, 0.0), "m", sample=sample, alias="challenger"),
            "good": registry.register(flaky(0, 0.0), "m", sample=sample, alias="candidate"),
        }
    finally:
        registry.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
    yield Fleet(env, pg_database_url, (tmp_path / "a", tmp_path / "b"),
                {k: mv.version for k, mv in versions.items()})


def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **fleet.env, "SHIPYARD_HOME": str(fleet.homes[0])})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def status(fleet: Fleet) -> dict[str, Any]:
    return dict(json.loads(cli(fleet, "rollout", "status", "m", "--json").stdout))


def serve(stack: ExitStack, fleet: Fleet, which: int) -> RunningServer:
    return stack.enter_context(run_server(fleet.homes[which], ["m@champion"], env=fleet.env,
                                          args=["--workers", "1"]))


@dataclass
class Traffic:
    """What the callers saw: answers per version, and the inputs that got a 500."""

    answers: Counter[str] = field(default_factory=Counter)
    failed: list[int] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.answers.values()) + len(self.failed)


def body(x: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [float(x)]}]}


def drive(servers: Sequence[RunningServer], done: Callable[[], bool], *, start: int, limit: int,
          timeout: float = 90) -> Traffic:
    """Send requests x = start, start + 1, ... to the servers in turn from ``CLIENTS`` threads until ``done()``.

    ``done`` is asked between requests by one watcher; the run fails past ``limit`` requests
    or ``timeout`` seconds. A 500 is an answer (a failing version), counted, not raised.
    """
    traffic, lock, stop = Traffic(), threading.Lock(), threading.Event()
    numbers = itertools.count(start)
    unexpected: list[str] = []

    def caller() -> None:
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        try:
            while not stop.is_set():
                with lock:
                    x = next(numbers)
                if x >= start + limit:
                    return
                r = clients[x % len(clients)].post("/v2/models/m/infer", json=body(x))
                with lock:
                    if r.status_code == 200:
                        traffic.answers[str(r.json()["model_version"])] += 1
                    elif r.status_code == 500:
                        traffic.failed.append(x)
                    else:
                        unexpected.append(f"x={x}: {r.status_code} {r.text}")
                        stop.set()
        finally:
            for c in clients:
                c.close()

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert not unexpected, unexpected[0]
            assert any(t.is_alive() for t in threads), f"not done after {limit} requests"
            assert time.monotonic() < deadline, f"not done within {timeout:.0f}s ({traffic.sent} requests)"
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not unexpected, unexpected[0]
    return traffic


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def answered_by(servers: Sequence[RunningServer], xs: Sequence[int]) -> Counter[str]:
    """The versions that answer inputs ``xs`` (each sent to every server); any failure fails the test."""
    out: Counter[str] = Counter()
    for s in servers:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for x in xs:
                r = c.post("/v2/models/m/infer", json=body(x))
                assert r.status_code == 200, r.text
                out[str(r.json()["model_version"])] += 1
    return out


def policy_of(fleet: Fleet) -> Any:
    """The stored policy, read in-process (cheaper than the CLI between requests)."""
    registry = Registry.from_settings(Settings(home=fleet.homes[0], registry_url=fleet.url,
                                               artifacts=fleet.env["SHIPYARD_ARTIFACTS"]))
    try:
        return TrafficStore(registry.database).get("m")
    finally:
        registry.close()


def alias_moves(fleet: Fleet) -> list[tuple[int | None, int | None, str | None]]:
    registry = Registry.from_settings(Settings(home=fleet.homes[0], registry_url=fleet.url,
                                               artifacts=fleet.env["SHIPYARD_ARTIFACTS"]))
    try:
        return [(m.previous, m.version, m.actor) for m in registry.alias_history("m", "champion")]
    finally:
        registry.close()


def counted(fleet: Fleet, revisions: Sequence[int]) -> tuple[int, int]:
    """Requests and errors the servers counted into the registry database, over all arms of these revisions."""
    registry = Registry.from_settings(Settings(home=fleet.homes[0], registry_url=fleet.url,
                                               artifacts=fleet.env["SHIPYARD_ARTIFACTS"]))
    try:
        totals = [t for r in revisions for t in read_totals(registry.database, "m", r).values()]
    finally:
        registry.close()
    return sum(t.requests for t in totals), sum(t.errors for t in totals)


def test_a_failing_candidate_is_rolled_back_by_the_controller_and_the_alias_never_moves(fleet: Fleet) -> None:
    before = alias_moves(fleet)
    # min_units is never reached first: a failed error gate acts at once, whatever the counts
    cli(fleet, "rollout", "start", "m", "--canary", "champion:challenger", "--steps", "50,100",
        "--interval", "1s", "--gate", "min_units=5000")
    with ExitStack() as stack:
        servers = [serve(stack, fleet, 0), serve(stack, fleet, 1)]
        traffic = drive(servers, lambda: policy_of(fleet).state != "running", start=1, limit=4000)
        shown = status(fleet)
        assert shown["policy"]["state"] == "rolled_back", shown
        assert shown["policy"]["step"] == 0
        assert "error_rate fail" in shown["policy"]["reason"], shown["policy"]["reason"]
        assert [(h["state"], h["step"]) for h in shown["history"]] == [("running", 0), ("rolled_back", 0)]
        assert all(h["actor"] == "rollout-controller" for h in shown["history"][1:])

        # both versions answered, and the failures are the inputs the two versions fail on
        stable, bad = str(fleet.versions["stable"]), str(fleet.versions["bad"])
        assert set(traffic.answers) == {stable, bad}
        assert all(x % BAD_EVERY == 0 for x in traffic.failed)
        bad_inputs = [x for x in traffic.failed if x % STABLE_EVERY]  # only the candidate fails on these
        assert len(bad_inputs) > len(traffic.failed) // 2

        assert alias_moves(fleet) == before  # a rollback moves no alias
        # every replica sends everything to the stable version again; inputs neither version fails on
        checked: Counter[str] = Counter()

        def on_stable() -> bool:
            seen = answered_by(servers, [3, 7, 11, 13])
            checked.update(seen)
            return set(seen) == {stable}

        eventually(on_stable, "all traffic on stable")
        assert answered_by(servers, list(range(21, 60, 2))) == Counter({stable: 40})
    # the servers counted every request and every 500 they answered (the last counts flush on a clean stop)
    requests, errors = counted(fleet, [h["revision"] for h in shown["history"]])
    assert (requests, errors) == (traffic.sent + checked.total() + 40, len(traffic.failed))
    print(f"rolled back after {traffic.sent} requests: {dict(traffic.answers)} answered, "
          f"{len(traffic.failed)} failed; {shown['policy']['reason']}")


def test_a_good_candidate_is_promoted_through_every_step_and_the_alias_moves_once(fleet: Fleet) -> None:
    before = alias_moves(fleet)
    # max_step_seconds: no "undecided" notes while the traffic runs, so one history entry per step
    cli(fleet, "rollout", "start", "m", "--canary", "champion:candidate", "--steps", "50,100",
        "--interval", "1s", "--gate", "min_units=300", "--gate", "max_step_seconds=600")
    with ExitStack() as stack:
        servers = [serve(stack, fleet, 0), serve(stack, fleet, 1)]
        traffic = drive(servers, lambda: policy_of(fleet).state != "running", start=1, limit=5000)
        shown = status(fleet)
        assert shown["policy"]["state"] == "promoted", shown
        assert [(h["state"], h["step"]) for h in shown["history"]] == [
            ("running", 0), ("running", 1), ("promoted", 1)]
        stable, good = fleet.versions["stable"], fleet.versions["good"]
        assert "error_rate" in shown["history"][1]["reason"] and "latency" in shown["history"][1]["reason"]

        moves = alias_moves(fleet)
        assert moves[:len(before)] == before
        assert moves[len(before):] == [(stable, good, "rollout-controller")]  # once, at the end
        assert set(traffic.answers) == {str(stable), str(good)}
        assert all(x % STABLE_EVERY == 0 for x in traffic.failed)  # only the stable version failed
        eventually(lambda: set(answered_by(servers, [3, 7])) == {str(good)}, "all traffic on the promoted version")
        assert answered_by(servers, list(range(200, 400, 10))) == Counter({str(good): 40})
    print(f"promoted after {traffic.sent} requests: {dict(traffic.answers)} answered, "
          f"{len(traffic.failed)} failed; {shown['history'][1]['reason']}; {shown['policy']['reason']}")


def lease(fleet: Fleet) -> tuple[int, float]:
    """The process id holding the rollout lease (its holder is ``host:pid``) and when the lease expires."""
    engine = sa.create_engine(fleet.url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT holder, expires_at FROM shipyard_leases "
                                       "WHERE name = 'rollout-controller'")).one()
    finally:
        engine.dispose()
    return int(str(row[0]).rsplit(":", 1)[1]), float(row[1])


def lease_holder(fleet: Fleet) -> int | None:
    try:
        return lease(fleet)[0]
    except sa.exc.NoResultFound:
        return None


def test_a_killed_lease_holder_is_replaced_and_the_rollout_resumes_the_same_step(fleet: Fleet) -> None:
    cli(fleet, "rollout", "start", "m", "--canary", "champion:candidate", "--steps", "50,100",
        "--interval", "1s", "--gate", "min_units=300", "--gate", "max_step_seconds=600")
    with ExitStack() as outer:
        servers = [serve(outer, fleet, 0), serve(outer, fleet, 1)]
        # into the last step, then no traffic: it cannot finish while the holder is killed
        drive(servers, lambda: policy_of(fleet).step == 1, start=1, limit=5000)
        at_kill = policy_of(fleet)
        assert (at_kill.state, at_kill.step) == ("running", 1)

        pids = [s.process.pid for s in servers]
        eventually(lambda: lease_holder(fleet) in pids, "a replica holds the lease")
        killed = pids.index(lease_holder(fleet))
        servers[killed].process.send_signal(signal.SIGKILL)
        servers[killed].process.wait(timeout=30)
        survivor = servers[1 - killed]
        eventually(lambda: lease_holder(fleet) == survivor.process.pid, "the other replica took the lease over")
        after = policy_of(fleet)
        assert (after.revision, after.state, after.step) == (at_kill.revision, "running", 1)

        with ExitStack() as inner:
            restarted = serve(inner, fleet, killed)
            # a few ticks of the new holder with both replicas up and no traffic: nobody moves the step
            renewed = lease(fleet)[1]
            eventually(lambda: lease(fleet)[1] >= renewed + 2 * float(TICK), "the lease renewed twice more")
            assert policy_of(fleet).revision == at_kill.revision
            drive([survivor, restarted], lambda: policy_of(fleet).state != "running", start=10_001, limit=5000)

    shown = status(fleet)
    assert shown["policy"]["state"] == "promoted", shown
    # the step went on where it was: one entry per step, the last one finishing the step the kill interrupted
    assert [(h["state"], h["step"]) for h in shown["history"]] == [("running", 0), ("running", 1), ("promoted", 1)]
    assert shown["history"][1]["revision"] == at_kill.revision
    assert alias_moves(fleet)[-1][1:] == (fleet.versions["good"], "rollout-controller")
