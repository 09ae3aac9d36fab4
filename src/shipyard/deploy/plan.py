"""From settings and a registered version to a ``DeploySpec``, and from a spec to files in a folder.

This is the module with side effects: it reads the registry (the version's flavor), measures the cold start
and the per-replica throughput by loading the model, and writes files. The generators it calls are pure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shipyard.config import Settings
from shipyard.deploy import compose as compose_gen
from shipyard.deploy import docker as docker_gen
from shipyard.deploy import kubernetes as k8s_gen
from shipyard.deploy.container_config import container_config
from shipyard.deploy.replicas import check_replicable
from shipyard.deploy.spec import BatchJob, DeploySpec, StreamJob
from shipyard.registry import Registry
from shipyard.types import ModelRef

__all__ = ["Generated", "Measured", "build_spec", "measure", "write_compose", "write_docker", "write_kubernetes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measured:
    """What loading the model on this machine showed."""

    flavor: str
    version: int
    cold_start_seconds: float
    """Time to fetch and load the version (what a new replica spends before it is ready)."""

    rows_per_second: float | None = None
    """Rows one process predicts per second on the registration sample (None: not measured)."""


@dataclass
class Generated:
    """The files written and the commands that use them."""

    out: Path
    files: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure(settings: Settings, model: str, *, cold_start: float | None = None, throughput: bool = False,
            clock: Callable[[], float] = time.perf_counter) -> Measured:
    """Load ``model`` from the registry the settings name, timing the load (and, if asked, predictions).

    Args:
        settings: where the registry and artifacts are.
        model: the reference to deploy.
        cold_start: the cold start, if known: the model is then only looked up, not loaded (unless
            ``throughput`` needs it).
        throughput: also predict the registration sample repeatedly for about a second.
        clock: the timer (a test may pass its own).
    """
    registry = Registry.from_settings(settings)
    try:
        mv = registry.get(ModelRef.parse(model))
        if cold_start is not None and not throughput:
            return Measured(mv.flavor, mv.version, cold_start)
        start = clock()
        loaded = registry.load(mv)
        cold = clock() - start
        rate: float | None = None
        try:
            if throughput:
                rate = _rows_per_second(registry, mv, loaded, clock)
        finally:
            loaded.close()
        return Measured(mv.flavor, mv.version, cold if cold_start is None else cold_start, rate)
    finally:
        registry.close()


def _rows_per_second(registry: Registry, mv: Any, loaded: Any, clock: Callable[[], float]) -> float | None:
    example = registry.input_example(mv)
    if not example:
        return None
    rows = len(next(iter(example.values())))
    batch = {k: v * max(1, 64 // max(rows, 1)) for k, v in example.items()}
    done, start = 0, clock()
    while (elapsed := clock() - start) < 1.0 or done == 0:
        loaded.predict(batch)
        done += len(next(iter(batch.values())))
    return done / elapsed


def _extras(settings: Settings, grpc: bool, stream: StreamJob | None) -> tuple[str, ...]:
    out = set()
    if settings.registry_url.lower().startswith("postgres"):
        out.add("postgres")
    if settings.artifacts.lower().startswith(("s3://", "s3a://")):
        out.add("s3")
    if grpc:
        out.add("grpc")
    for url in (settings.async_broker, stream.source if stream else "", stream.sink if stream else ""):
        scheme = url.partition("://")[0].lower()
        if scheme in ("kafka", "redis", "nats"):
            out.add(scheme)
    if settings.runtimes_used & {"onnx", "auto"}:
        out.add("export")
    return tuple(sorted(out))


def build_spec(settings: Settings, model: str, measured: Measured, *, target: str, replicated: bool,
               insecure: bool = False, grpc_port: int | None = None, stream: StreamJob | None = None,
               batch: BatchJob | None = None, **options: Any) -> DeploySpec:
    """The spec of a deployment of ``model`` with ``settings``.

    Args:
        settings: the user's settings (the container's shipyard.yaml is made from them).
        model: the reference served.
        measured: flavor, version and cold start from ``measure``.
        target: what is generated, for the refusal message.
        replicated: several replicas may run: refuse settings that keep state on one machine.
        insecure: serve without credentials.
        grpc_port: also serve gRPC on this port.
        stream: a stream job to add.
        batch: a batch job to add.
        options: other ``DeploySpec`` fields (replicas, image, namespace...).

    Raises:
        ConfigError: a setting that cannot work with several replicas, or a bad option.
    """
    if replicated:
        check_replicable(settings, target)
    config = container_config(settings, model, grpc_port=grpc_port, insecure=insecure,
                              port=options.get("port", 8000))
    return DeploySpec(model=model, flavor=measured.flavor, config=config, grpc_port=grpc_port,
                      extras=_extras(settings, grpc_port is not None, stream), stream=stream, batch=batch,
                      cold_start_seconds=measured.cold_start_seconds,
                      drain_seconds=settings.graceful_shutdown_seconds, **options)


def _dump(data: Any) -> str:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    return text


def _write(out: Path, name: str, text: str, generated: Generated) -> None:
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    generated.files.append(path)


def write_docker(spec: DeploySpec, out: Path) -> Generated:
    """Dockerfile, .dockerignore, requirements.txt, shipyard.yaml and an empty ``wheels/`` in ``out``."""
    g = Generated(out)
    _write(out, "Dockerfile", docker_gen.dockerfile(spec), g)
    _write(out, ".dockerignore", docker_gen.dockerignore(), g)
    _write(out, "requirements.txt", docker_gen.requirements(spec), g)
    _write(out, "shipyard.yaml", _dump(spec.config), g)
    _write(out, "wheels/.keep", "", g)  # the folder must exist for COPY, also in a checkout of these files
    g.commands = docker_gen.commands(spec, str(out))
    g.notes.append(f"the image installs {spec.package}; put a shipyard wheel in {out / 'wheels'} "
                   "if your package index has none")
    if spec.config.get("security", {}).get("auth", {}).get("enabled"):
        g.notes.append("requests need an API key: create one with `shipyard keys create` against the same registry")
    return g


def write_compose(spec: DeploySpec, out: Path, services: tuple[str, ...]) -> Generated:
    """The docker files plus compose.yaml (and prometheus.yml with ``prometheus``)."""
    g = write_docker(spec, out)
    _write(out, "compose.yaml", _dump(compose_gen.compose_project(spec, services)), g)
    if "prometheus" in services:
        _write(out, "prometheus.yml", _dump(compose_gen.prometheus_config(spec)), g)
    g.commands = [f"docker compose --project-directory {out} up --build --wait"]
    return g


def write_kubernetes(spec: DeploySpec, out: Path, *, server: bool = True) -> Generated:
    """One file per object plus kustomization.yaml in ``out``."""
    g = Generated(out)
    names = []
    for obj in k8s_gen.manifests(spec, server=server):
        name = k8s_gen.file_name(obj, spec)
        _write(out, name, _dump(obj), g)
        names.append(name)
    _write(out, "kustomization.yaml", _dump(k8s_gen.kustomization(spec, names)), g)
    ns = f" --namespace {spec.namespace}" if spec.namespace else ""
    secret = (f"kubectl create secret generic {spec.secret_name}{ns}"
              " --from-literal=registry-url=\"$SHIPYARD_REGISTRY_URL\"")
    if "s3" in spec.extras:
        secret += (" --from-literal=aws-access-key-id=\"$AWS_ACCESS_KEY_ID\""
                   " --from-literal=aws-secret-access-key=\"$AWS_SECRET_ACCESS_KEY\"")
    g.commands = [secret, f"kubectl apply -k {out}"]
    g.notes.append(f"the pods run image {spec.image}: build and push it (shipyard deploy docker) first")
    if server:
        g.notes.append(f"the autoscaler's {k8s_gen.IN_FLIGHT_METRIC} metric needs a metrics adapter "
                       "(e.g. prometheus-adapter); the ServiceMonitor needs the Prometheus operator")
    if spec.stream is not None:
        g.notes.append(f"stream: lag threshold {spec.stream.lag_threshold} messages per replica "
                       f"({spec.stream.throughput:.0f} msg/s per replica x {spec.stream.catch_up_seconds:g} s); "
                       f"at most {min(spec.max_replicas, spec.stream.partitions)} replicas "
                       f"({spec.stream.partitions} partitions); needs KEDA")
    return g
