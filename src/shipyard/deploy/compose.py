"""A Docker Compose project: ``shipyard serve`` built from the generated Dockerfile, with optional
PostgreSQL (the registry), Redis or a Kafka broker (asynchronous requests) and Prometheus scraping every
replica. Built as data and written with a YAML library."""

from __future__ import annotations

from typing import Any

from shipyard.deploy.container_config import CONTAINER_HOME
from shipyard.deploy.docker import secret_variables
from shipyard.deploy.spec import UID, DeploySpec
from shipyard.errors import ConfigError

__all__ = ["IMAGES", "SERVICES", "compose_project", "prometheus_config"]

SERVICES = ("postgres", "redis", "kafka", "prometheus")
"""Services ``--with`` may add beside the server."""

IMAGES = {
    "postgres": "postgres:16.4-bookworm",
    "redis": "redis:7.4.1-bookworm",
    "kafka": "apache/kafka:3.9.0",
    "prometheus": "prom/prometheus:v2.54.1",
}
"""Pinned images of the optional services."""

POSTGRES_URL = "postgresql+psycopg://shipyard:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/shipyard"
"""The registry URL inside the project; the password comes from the environment of ``docker compose``."""


def _healthcheck(spec: DeploySpec) -> dict[str, Any]:
    code = (f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{spec.port}/v2/health/ready', "
            "timeout=2)")
    return {"test": ["CMD", "python", "-c", code], "interval": "10s", "timeout": "3s", "retries": 3,
            "start_period": f"{max(10, round(spec.cold_start_seconds * 3))}s"}


def compose_project(spec: DeploySpec, services: tuple[str, ...] = ()) -> dict[str, Any]:
    """compose.yaml as data.

    Args:
        spec: the deployment; ``replicas`` copies of the server run (their ports are not published on the
            host when there are several: reach them through a load balancer or ``docker compose exec``).
        services: any of ``SERVICES``.

    Raises:
        ConfigError: an unknown service, or Redis and Kafka together (one broker takes asynchronous requests).
    """
    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise ConfigError(f"--with: unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    if "redis" in services and "kafka" in services:
        raise ConfigError("--with: choose redis or kafka as the broker of asynchronous requests, not both")
    env: dict[str, str] = {}
    for variable in secret_variables(spec):
        env[variable] = f"${{{variable}:?set {variable}}}"
    if "postgres" in services:
        env["SHIPYARD_REGISTRY_URL"] = POSTGRES_URL
    if "redis" in services:
        env["SHIPYARD_ASYNC_BROKER"] = "redis://redis:6379/shipyard"
    if "kafka" in services:
        env["SHIPYARD_ASYNC_BROKER"] = "kafka://kafka:9092/shipyard"
    server: dict[str, Any] = {
        "build": {"context": "."},
        "image": spec.image,
        "environment": env,
        "read_only": True,
        "tmpfs": ["/tmp", f"{CONTAINER_HOME}:uid={UID},gid={UID}"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{spec.stop_grace_seconds}s",
        "healthcheck": _healthcheck(spec),
        "restart": "unless-stopped",
    }
    if spec.replicas == 1:
        server["ports"] = [f"127.0.0.1:{spec.port}:{spec.port}"]
        if spec.grpc_port is not None:
            server["ports"].append(f"127.0.0.1:{spec.grpc_port}:{spec.grpc_port}")
    else:
        server["deploy"] = {"replicas": spec.replicas}
    depends = {s: {"condition": "service_healthy"} for s in ("postgres", "redis", "kafka") if s in services}
    if depends:
        server["depends_on"] = depends
    project: dict[str, Any] = {"name": spec.name, "services": {"shipyard": server}}
    volumes: dict[str, Any] = {}
    if "postgres" in services:
        project["services"]["postgres"] = {
            "image": IMAGES["postgres"],
            "environment": {"POSTGRES_USER": "shipyard", "POSTGRES_DB": "shipyard",
                            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"},
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "healthcheck": {"test": ["CMD", "pg_isready", "-U", "shipyard", "-d", "shipyard"],
                            "interval": "5s", "timeout": "3s", "retries": 10},
            "restart": "unless-stopped",
        }
        volumes["postgres-data"] = {}
    if "redis" in services:
        project["services"]["redis"] = {
            "image": IMAGES["redis"],
            "command": ["redis-server", "--appendonly", "yes"],
            "volumes": ["redis-data:/data"],
            "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "5s", "timeout": "3s", "retries": 10},
            "restart": "unless-stopped",
        }
        volumes["redis-data"] = {}
    if "kafka" in services:
        project["services"]["kafka"] = {
            "image": IMAGES["kafka"],
            "environment": {
                "KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
                "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
                "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
                "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                "KAFKA_NUM_PARTITIONS": "6",
            },
            "volumes": ["kafka-data:/var/lib/kafka/data"],
            "healthcheck": {"test": ["CMD-SHELL", "/opt/kafka/bin/kafka-broker-api-versions.sh "
                                     "--bootstrap-server localhost:9092 > /dev/null"],
                            "interval": "10s", "timeout": "10s", "retries": 10},
            "restart": "unless-stopped",
        }
        volumes["kafka-data"] = {}
    if "prometheus" in services:
        project["services"]["prometheus"] = {
            "image": IMAGES["prometheus"],
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
            "volumes": ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro", "prometheus-data:/prometheus"],
            "ports": ["127.0.0.1:9090:9090"],
            "depends_on": ["shipyard"],
            "restart": "unless-stopped",
        }
        volumes["prometheus-data"] = {}
    if volumes:
        project["volumes"] = volumes
    return project


def prometheus_config(spec: DeploySpec) -> dict[str, Any]:
    """prometheus.yml scraping every replica of the server (found by the service's DNS name)."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [{
            "job_name": "shipyard",
            "metrics_path": "/metrics",
            "dns_sd_configs": [{"names": ["shipyard"], "type": "A", "port": spec.port}],
        }],
    }


