"""``DeploySpec``: everything the generated files depend on, decided once, validated at construction.

The generators (``docker``, ``compose``, ``kubernetes``) are pure functions of a spec; ``plan`` builds one
from the settings, the registered version and a few measured numbers (``measure``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from shipyard import __version__
from shipyard.errors import ConfigError

__all__ = ["BASE_IMAGE", "FLAVOR_EXTRAS", "BatchJob", "DeploySpec", "StreamJob", "app_name"]

BASE_IMAGE = "python:3.11.11-slim-bookworm"
"""The image both Dockerfile stages start from: pinned to a patch release and a Debian release."""

FLAVOR_EXTRAS = {
    "sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm", "onnx": "onnx", "torch": "torch",
    "mlflow": "mlflow", "python": "",
}
"""The extra of shipyard a model flavor needs at serving time (custom Python models need none)."""

UID = 10001
"""The unprivileged user (and group) the container runs as."""

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


def app_name(model: str) -> str:
    """A Kubernetes object name (DNS-1123 label) from a model reference: ``Fraud_v2@champion`` -> ``fraud-v2``."""
    base = model.split("@")[0].split(":")[0].lower()
    name = _DNS_LABEL.sub("-", base).strip("-")[:50].strip("-")
    if not name:
        raise ConfigError(f"cannot make an object name from the model reference {model!r}")
    return name


@dataclass(frozen=True)
class StreamJob:
    """A ``shipyard stream`` consumer group scaled by KEDA on its Kafka lag."""

    source: str
    """The stream it consumes (``kafka://HOST:PORT/TOPIC``)."""

    sink: str
    """Where results go."""

    group: str
    """Consumer group shared by the replicas."""

    partitions: int
    """Partitions of the source topic: more replicas than this would sit idle, so it caps maxReplicaCount."""

    throughput: float
    """Messages per second one replica predicts (measured): the lag threshold is this times ``catch_up_seconds``."""

    catch_up_seconds: float = 30.0
    """A replica should clear its share of the lag within this."""

    def __post_init__(self) -> None:
        if not self.source.lower().startswith("kafka://"):
            raise ConfigError(f"--stream-source must be a kafka:// URL (KEDA scales on Kafka lag), got {self.source!r}")
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be at least 1, got {self.partitions}")
        if not self.throughput > 0:
            raise ConfigError(f"the per-replica throughput must be positive, got {self.throughput}")

    @property
    def bootstrap(self) -> str:
        return self.source.partition("://")[2].partition("/")[0]

    @property
    def topic(self) -> str:
        return self.source.partition("://")[2].partition("/")[2].partition("?")[0]

    @property
    def lag_threshold(self) -> int:
        """Messages of lag per replica that justify one more replica."""
        return max(1, math.ceil(self.throughput * self.catch_up_seconds))


@dataclass(frozen=True)
class BatchJob:
    """A ``shipyard batch`` run on a schedule (a CronJob)."""

    input: str
    output: str
    schedule: str
    """Cron schedule, five fields (``0 * * * *``)."""

    format: str = "parquet"

    def __post_init__(self) -> None:
        if len(self.schedule.split()) != 5:
            raise ConfigError(f"--schedule must be a cron expression of five fields, got {self.schedule!r}")


@dataclass(frozen=True)
class DeploySpec:
    """What to deploy and how big: the input of every generator."""

    model: str
    """The model reference served (``fraud@champion``)."""

    flavor: str
    """The registered version's flavor: picks the extras the image installs."""

    config: dict[str, Any]
    """The non-secret part of shipyard.yaml the container reads (the registry URL comes from a Secret)."""

    name: str = ""
    """Name of every object and of the image; empty: from the model name."""

    image: str = ""
    """Image reference; empty: ``shipyard-NAME:VERSION``."""

    base_image: str = BASE_IMAGE
    extras: tuple[str, ...] = ()
    """Extras of shipyard installed besides the flavor's (postgres, s3, kafka, grpc...)."""

    package: str = ""
    """The pip requirement that installs shipyard in the image; empty: ``shipyard[EXTRAS]==VERSION``."""

    port: int = 8000
    grpc_port: int | None = None
    replicas: int = 2
    max_replicas: int = 6
    target_cpu_percent: int = 70
    target_in_flight: int = 8
    """Requests in flight per pod the HorizontalPodAutoscaler aims at."""

    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "512Mi"
    memory_limit: str = "2Gi"
    cold_start_seconds: float = 30.0
    """Measured time from process start to ready (models loaded): sizes the startup probe."""

    drain_seconds: float = 30.0
    """graceful_shutdown_seconds: how long in-flight work may take after SIGTERM."""

    namespace: str = ""
    secret_name: str = ""
    """Secret holding ``registry-url`` (and optional object-storage keys); empty: ``NAME-secrets``."""

    stream: StreamJob | None = None
    batch: BatchJob | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", app_name(self.model))
        if not self.secret_name:
            object.__setattr__(self, "secret_name", f"{self.name}-secrets")
        if self.flavor not in FLAVOR_EXTRAS:
            raise ConfigError(f"model flavor {self.flavor!r} has no known serving extra; known: "
                              + ", ".join(sorted(FLAVOR_EXTRAS)))
        extras = {FLAVOR_EXTRAS[self.flavor], *self.extras} - {""}
        object.__setattr__(self, "extras", tuple(sorted(extras)))
        if not self.package:
            object.__setattr__(self, "package", f"shipyard[{','.join(self.extras)}]=={__version__}"
                               if self.extras else f"shipyard=={__version__}")
        if not self.image:
            object.__setattr__(self, "image", f"shipyard-{self.name}:{__version__}")
        if self.replicas < 1 or self.max_replicas < self.replicas:
            raise ConfigError(f"--replicas must be at least 1 and --max-replicas at least --replicas, got "
                              f"{self.replicas} and {self.max_replicas}")
        if not (1 <= self.target_cpu_percent <= 100):
            raise ConfigError(f"--target-cpu must be a percentage from 1 to 100, got {self.target_cpu_percent}")
        if self.target_in_flight < 1:
            raise ConfigError(f"--target-in-flight must be at least 1, got {self.target_in_flight}")
        if self.cold_start_seconds < 0 or self.drain_seconds < 0:
            raise ConfigError("cold start and drain seconds must not be negative")

    @property
    def stop_grace_seconds(self) -> int:
        """What the orchestrator waits after SIGTERM before SIGKILL: the drain plus a margin to exit."""
        return math.ceil(self.drain_seconds) + 10

    @property
    def startup_failure_threshold(self) -> int:
        """Startup-probe attempts 5 s apart: three times the measured cold start, at least a minute."""
        return max(12, math.ceil(3 * self.cold_start_seconds / 5))

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name}

    @property
    def all_labels(self) -> dict[str, str]:
        return {**self.selector, "app.kubernetes.io/part-of": "shipyard",
                "app.kubernetes.io/version": __version__, **self.labels}
