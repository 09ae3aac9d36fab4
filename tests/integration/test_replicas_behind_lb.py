"""Replicas behave as one: 3 `shipyard serve` processes on one PostgreSQL registry, one S3 bucket (moto's server)
and one Redis broker, behind HAProxy, all on loopback.

An alias move reaches every replica within the refresh interval; a replica killed under load costs no
request (the balancer retries what it held on another); an asynchronous job or a feedback label submitted to
one replica is answered by the others. `shipyard deploy k8s` accepts these settings and writes manifests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.deploy import DeploySpec
from shipyard.deploy import docker as docker_gen
from shipyard.registry import Registry
from shipyard.testing import (
    HaproxyUnavailable,
    RedisUnavailable,
    RunningServer,
    S3Unavailable,
    free_port,
    load_balancer,
    redis_server,
    run_server,
    s3_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REFRESH = 0.5
ROW = {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5}
INFER = {"inputs": [{"name": f, "datatype": "FP64", "shape": [1], "data": [ROW[f]]} for f in FEATURES]}


class Fleet:
    def __init__(self, env: dict[str, str], replicas: list[RunningServer], lb: str) -> None:
        self.env, self.replicas, self.lb = env, replicas, lb


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Fleet]:
    if importlib.util.find_spec("s3fs") is None:
        pytest.skip("s3fs is not installed: pip install 'shipyard[s3]' (the test extra has it)")
    tmp = tmp_path_factory.mktemp("fleet")
    with ExitStack() as stack:
        try:
            endpoint = stack.enter_context(s3_server(tmp / "s3", buckets=["models"]))
            redis = stack.enter_context(redis_server(tmp / "redis"))
            env = {"SHIPYARD_REGISTRY_URL": postgres_url, "SHIPYARD_ARTIFACTS": "s3://models/shipyard",
                   "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                   "AWS_DEFAULT_REGION": "us-east-1", "SHIPYARD_ALIAS_REFRESH_SECONDS": str(REFRESH),
                   "SHIPYARD_ASYNC_BROKER": f"{redis}/shipyard", "SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true"}
            stack.enter_context(_environ(env))  # this process registers through the same bucket
            registry = Registry.from_settings(Settings(home=tmp / "setup", registry_url=postgres_url,
                                                       artifacts=env["SHIPYARD_ARTIFACTS"]))
            try:
                register_demo(registry)
            finally:
                registry.close()
            replicas = [stack.enter_context(run_server(tmp / f"home-{i}", ["demo@champion"], env=env))
                        for i in range(3)]
            lb = stack.enter_context(load_balancer(tmp / "lb", [f"127.0.0.1:{r.port}" for r in replicas]))
        except (S3Unavailable, RedisUnavailable, HaproxyUnavailable) as exc:
            pytest.skip(str(exc))
        yield Fleet(env, replicas, lb)


class _environ:
    """Set environment variables in this process for a block (moto's endpoint for s3fs, which reads them)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.saved = values, {k: os.environ.get(k) for k in values}

    def __enter__(self) -> None:
        os.environ.update(self.values)

    def __exit__(self, *exc: Any) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def version_of(url: str) -> str:
    r = httpx.post(f"{url}/v2/models/demo/infer", json=INFER, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_the_balancer_spreads_requests_over_every_replica(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.lb, timeout=30) as c:
        answers = [c.post("/v1/models/demo:predict", json={"instances": [ROW]}) for _ in range(30)]
    assert all(a.status_code == 200 for a in answers)
    metrics = [httpx.get(f"{r.url}/metrics").text for r in fleet.replicas]
    served = [sum(float(line.rsplit(" ", 1)[1]) for line in m.splitlines()
                  if line.startswith("shipyard_requests_total{") and 'model="demo"' in line) for m in metrics]
    assert all(n > 0 for n in served), served  # round robin reached all three


def test_an_alias_move_reaches_every_replica_within_the_refresh_interval(fleet: Fleet, tmp_path: Path) -> None:
    assert {version_of(r.url) for r in fleet.replicas} == {"1"}
    registry = Registry.from_settings(Settings(home=tmp_path, registry_url=fleet.env["SHIPYARD_REGISTRY_URL"],
                                               artifacts=fleet.env["SHIPYARD_ARTIFACTS"]))
    try:
        _, X, _ = train_demo_model()
        registry.register(LogisticRegression().fit(X, (X["petal_length"] > 4.0).astype(int)), "demo",
                          sample=X.head(5))
        registry.set_alias("demo", "champion", 2)
    finally:
        registry.close()
    moved = time.monotonic()
    took = []
    for r in fleet.replicas:
        # the refresh interval, plus loading the new version (fetched from the bucket) once per replica
        eventually(lambda r=r: version_of(r.url) == "2", f"replica {r.url} serving demo:2")
        took.append(time.monotonic() - moved)
    print(f"alias move seen by the 3 replicas after {', '.join(f'{t:.2f}' for t in took)} s "
          f"(refresh interval {REFRESH} s)")
    eventually(lambda: {version_of(fleet.lb) for _ in range(6)} == {"2"}, "the balancer answering demo:2 only")


def test_a_job_or_a_label_submitted_to_one_replica_is_answered_by_any(fleet: Fleet) -> None:
    a, b, c = fleet.replicas
    job = httpx.post(f"{a.url}/v1/models/demo/jobs", json={"instances": [ROW]}, timeout=30)
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    for other in (b, c):
        eventually(lambda o=other: httpx.get(f"{o.url}/v1/jobs/{job_id}").json()["status"] == "done",
                   f"job {job_id} done as seen from {other.url}")
    assert httpx.get(f"{c.url}/v1/jobs/{job_id}").json()["result"] == httpx.get(f"{b.url}/v1/jobs/{job_id}").json()[
        "result"]

    answered = httpx.post(f"{a.url}/v1/models/demo:predict", json={"instances": [ROW]},
                          headers={"X-Request-ID": "replica-label-1"}, timeout=30)
    assert answered.status_code == 200, answered.text
    label = {"feedback": [{"request_id": "replica-label-1", "row": 0, "label": 1}]}
    # replica a writes its served rows to the shared database within a second; then b can join the label
    eventually(lambda: httpx.post(f"{b.url}/v1/feedback", json=label).status_code == 200,
               "the label accepted by another replica")
    quality = httpx.get(f"{c.url}/v1/models/demo/quality").json()
    assert sum(g["labelled"] for g in quality["groups"]) >= 1, quality


def test_the_image_health_check_passes_on_a_ready_replica_and_fails_on_a_dead_port(fleet: Fleet) -> None:
    """The Dockerfile's HEALTHCHECK command, run as written (the image's python is this one)."""
    spec = DeploySpec(model="demo@champion", flavor="sklearn", config={}, port=fleet.replicas[0].port)
    line = next(x for x in docker_gen.dockerfile(spec).splitlines() if x.strip().startswith("CMD ["))
    command = json.loads(line.strip()[len("CMD "):])
    assert command[0] == "python"
    ok = subprocess.run([sys.executable, *command[1:]], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = DeploySpec(model="demo@champion", flavor="sklearn", config={}, port=free_port())
    line = next(x for x in docker_gen.dockerfile(dead).splitlines() if x.strip().startswith("CMD ["))
    failed = subprocess.run([sys.executable, *json.loads(line.strip()[len("CMD "):])[1:]], capture_output=True,
                            timeout=30)
    assert failed.returncode != 0


def test_a_killed_replica_costs_only_the_requests_it_held(fleet: Fleet) -> None:
    """SIGKILL one replica under load: a request it had not begun to answer is retried by the balancer on
    another replica; one whose answer it had begun to send cannot be (HTTP cannot resend half a response).
    So every request sent after the kill succeeds, and of those sent before it at most one per client fails."""
    clients = 4
    results: list[tuple[float, int, str]] = []  # (sent at, status or 0, error)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=fleet.lb, timeout=30) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    results.append((sent, c.post("/v2/models/demo/infer", json=INFER).status_code, ""))
                except httpx.HTTPError as exc:
                    results.append((sent, 0, repr(exc)))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        eventually(lambda: len(results) >= 100, "100 requests answered before the kill")
        killed = time.monotonic()
        fleet.replicas[1].process.kill()  # SIGKILL: no drain, whatever it held is cut
        eventually(lambda: sum(1 for r in results if r[0] > killed) >= 300, "300 requests sent after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    before = [r for r in results if r[0] <= killed and r[1] != 200]
    after = [r for r in results if r[0] > killed and r[1] != 200]
    print(f"killed a replica under load: {len(before)} of the requests it held failed, "
          f"{len(after)} failures among {sum(1 for r in results if r[0] > killed)} sent after the kill")
    assert after == [], after
    assert len(before) <= clients, before


def test_deploy_k8s_accepts_the_shared_settings(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    run = subprocess.run([sys.executable, "-m", "shipyard", "deploy", "k8s", "demo@champion", "--out", str(out),
                          "--replicas", "3", "--namespace", "ml", "--cold-start", "50"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, **fleet.env, "SHIPYARD_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stdout + run.stderr
    deployment = yaml.safe_load((out / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 3
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["startupProbe"]["failureThreshold"] == 30  # 3 x 50 s of cold start, probed every 5 s
    config = yaml.safe_load(yaml.safe_load((out / "configmap-config.yaml").read_text())["data"]["shipyard.yaml"])
    assert config["artifacts"] == "s3://models/shipyard" and "registry_url" not in config
    assert fleet.env["SHIPYARD_REGISTRY_URL"] not in "".join(p.read_text() for p in out.iterdir())
    assert "kubectl create secret generic demo-secrets --namespace ml" in run.stdout
