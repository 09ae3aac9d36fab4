"""Which settings cannot work once a model runs as several replicas, and the refusal that names them.

A replica of ``shipyard serve`` keeps nothing of its own that another replica needs: the registry (versions,
aliases, keys, async jobs, feedback rows) lives in one database, artifacts in one object store, and queued
work in one broker. The embedded defaults (SQLite and a folder in ``SHIPYARD_HOME``, the ``local://``
broker in that folder) are private to one machine: with several replicas each would see its own registry
and its own jobs. This module is pure: it reads settings and returns the problems found.
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.config import Settings
from shipyard.errors import ConfigError

__all__ = ["ReplicaProblem", "check_replicable", "replica_problems"]


@dataclass(frozen=True)
class ReplicaProblem:
    """One setting that keeps state private to one machine."""

    setting: str
    """The setting's key path in shipyard.yaml (``registry_url``, ``monitoring.feedback.stream``)."""

    variable: str
    """Its environment variable."""

    found: str
    """What it is now, in words."""

    fix: str
    """What to set instead."""

    def __str__(self) -> str:
        return f"{self.setting} ({self.variable}) is {self.found}: {self.fix}"


def _is_local_path(url: str) -> bool:
    """Whether an fsspec URL names this machine's file system (no protocol, ``file://`` or ``local://``)."""
    protocol = url.split("::")[-1].partition("://")[0].lower() if "://" in url else ""
    return protocol in ("", "file", "local")


def replica_problems(settings: Settings) -> list[ReplicaProblem]:
    """Every setting of ``settings`` that cannot be shared by several replicas (empty: none)."""
    out: list[ReplicaProblem] = []
    url = settings.registry_url.strip()
    if not url or url.lower().startswith("sqlite"):
        out.append(ReplicaProblem(
            "registry_url", "SHIPYARD_REGISTRY_URL",
            "the embedded SQLite registry" if not url else f"an SQLite database ({url})",
            "point it at PostgreSQL, e.g. postgresql+psycopg://USER@HOST:5432/shipyard"))
    artifacts = settings.artifacts.strip()
    if not artifacts or _is_local_path(artifacts):
        out.append(ReplicaProblem(
            "artifacts", "SHIPYARD_ARTIFACTS",
            "the local folder SHIPYARD_HOME/artifacts" if not artifacts else f"a local folder ({artifacts})",
            "point it at object storage every replica reaches, e.g. s3://BUCKET/shipyard"))
    broker = settings.async_broker.strip()
    if broker.lower().startswith("local://"):
        out.append(ReplicaProblem(
            "async_broker", "SHIPYARD_ASYNC_BROKER", f"the embedded broker ({broker})",
            "use kafka://, redis:// or nats:// so a job queued on one replica is predicted by any, or 'off'"))
    feedback = settings.monitoring.feedback
    if feedback.enabled and feedback.stream.strip().lower().startswith("local://"):
        out.append(ReplicaProblem(
            "monitoring.feedback.stream", "SHIPYARD_MONITORING__FEEDBACK__STREAM",
            f"the embedded broker ({feedback.stream})",
            "use a kafka://, redis:// or nats:// stream, or leave it empty"))
    return out


def check_replicable(settings: Settings, target: str) -> None:
    """Raise ConfigError naming every setting that keeps state on one machine.

    Args:
        settings: the settings the deployment will run with.
        target: what is being generated, for the message ("Kubernetes manifests", "3 compose replicas").

    Raises:
        ConfigError: one line per setting to change.
    """
    problems = replica_problems(settings)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{target} run several replicas, and these settings keep state on one machine:\n{lines}")
