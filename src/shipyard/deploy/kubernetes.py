"""Kubernetes objects for a model: pure functions from a ``DeploySpec`` to plain data, one object per file.

The online server is a Deployment (probes on the health routes, a startup probe sized to the measured cold
start, non-root with a read-only root file system and no capabilities), a Service, a HorizontalPodAutoscaler
(v2) on CPU and on requests in flight, a PodDisruptionBudget when more than one replica runs, a ConfigMap
holding shipyard.yaml, a ServiceMonitor and a NetworkPolicy. Secrets are referenced, never written: the
registry URL (and object-storage keys) come from a Secret the operator creates. A stream job is a Deployment
of ``shipyard stream`` scaled by a KEDA ScaledObject on its Kafka lag; a batch job is a CronJob.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from shipyard.deploy.container_config import CONFIG_PATH, CONTAINER_HOME
from shipyard.deploy.spec import UID, DeploySpec

__all__ = ["file_name", "kustomization", "manifests"]

IN_FLIGHT_METRIC = "shipyard_requests_in_flight"
"""The per-pod metric the autoscaler reads (served to it by a metrics adapter from Prometheus)."""

STREAM_METRICS_PORT = 9100


SECRET_ENV_REASON = ("shipyard reads its registry URL from SHIPYARD_REGISTRY_URL; the Secret is referenced, "
                     "never written into a manifest")
"""Why workloads take a Secret as environment variables (recorded for checkov as a skip annotation)."""


def _meta(spec: DeploySpec, name: str, labels: dict[str, str] | None = None,
          workload: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    meta["labels"] = dict(labels or spec.all_labels)
    if workload:
        meta["annotations"] = {"checkov.io/skip1": f"CKV_K8S_35={SECRET_ENV_REASON}"}
    return meta


def _network_policy(spec: DeploySpec, name: str, selector: dict[str, str], ports: list[int]) -> dict[str, Any]:
    """Ingress to the pods only on ``ports`` (none: no ingress at all)."""
    policy: dict[str, Any] = {"podSelector": {"matchLabels": dict(selector)}, "policyTypes": ["Ingress"]}
    policy["ingress"] = [{"ports": [{"protocol": "TCP", "port": p} for p in ports]}] if ports else []
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(spec, name, {**spec.all_labels, **selector}), "spec": policy}


def config_text(spec: DeploySpec) -> str:
    """The ConfigMap's shipyard.yaml."""
    text: str = yaml.safe_dump(spec.config, sort_keys=False, default_flow_style=False, width=1000)
    return text


def _secret_env(spec: DeploySpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "SHIPYARD_CONFIG", "value": CONFIG_PATH},
        {"name": "SHIPYARD_HOME", "value": CONTAINER_HOME},
        {"name": "SHIPYARD_REGISTRY_URL",
         "valueFrom": {"secretKeyRef": {"name": spec.secret_name, "key": "registry-url"}}},
    ]
    if "s3" in spec.extras:
        # optional: on a cloud with workload identity the pod gets object-storage credentials another way
        for variable, key in (("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
                              ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key")):
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {
                "name": spec.secret_name, "key": key, "optional": True}}})
    return env


def _container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_spec(spec: DeploySpec, container: dict[str, Any], *, restart: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "serviceAccountName": spec.name,
        "automountServiceAccountToken": False,
        # no NAME_PORT-style variables from other Services: they could read as SHIPYARD_* settings
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{spec.name}-config"}},
            {"name": "home", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    if restart:
        pod["restartPolicy"] = restart
    return pod


def _container(spec: DeploySpec, name: str, command: list[str] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": spec.image, "imagePullPolicy": "Always"}
    if command:
        c["command"] = command
    c["env"] = _secret_env(spec)
    c["resources"] = {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
                      "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit}}
    c["securityContext"] = _container_security()
    c["volumeMounts"] = [{"name": "config", "mountPath": CONFIG_PATH.rsplit("/", 1)[0], "readOnly": True},
                         {"name": "home", "mountPath": CONTAINER_HOME}, {"name": "tmp", "mountPath": "/tmp"}]
    return c


def _server(spec: DeploySpec) -> list[dict[str, Any]]:
    ports = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    if spec.grpc_port is not None:
        ports.append({"name": "grpc", "containerPort": spec.grpc_port, "protocol": "TCP"})
    container = _container(spec, "server")
    container["ports"] = ports

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 3, **timing}

    container["startupProbe"] = probe("/v2/health/ready", periodSeconds=5,
                                      failureThreshold=spec.startup_failure_threshold)
    container["readinessProbe"] = probe("/v2/health/ready", periodSeconds=5, failureThreshold=2)
    container["livenessProbe"] = probe("/v2/health/live", periodSeconds=10, failureThreshold=3)
    # keep answering while the endpoints controller and load balancers take the pod out of rotation;
    # SIGTERM (and the drain) comes after this
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    config_hash = hashlib.sha256(config_text(spec).encode()).hexdigest()[:16]
    template_meta = {"labels": dict(spec.all_labels), "annotations": {"shipyard/config-sha256": config_hash}}
    pod = _pod_spec(spec, container)
    pod["terminationGracePeriodSeconds"] = spec.stop_grace_seconds
    pod["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                         "whenUnsatisfiable": "ScheduleAnyway",
                                         "labelSelector": {"matchLabels": dict(spec.selector)}}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(spec, spec.name, workload=True),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": dict(spec.selector)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }
    service_ports = [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}]
    if spec.grpc_port is not None:
        service_ports.append({"name": "grpc", "port": spec.grpc_port, "targetPort": "grpc", "protocol": "TCP",
                              "appProtocol": "grpc"})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec, spec.name),
               "spec": {"type": "ClusterIP", "selector": dict(spec.selector), "ports": service_ports}}
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(spec, spec.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": spec.target_cpu_percent}}},
                {"type": "Pods", "pods": {"metric": {"name": IN_FLIGHT_METRIC}, "target": {
                    "type": "AverageValue", "averageValue": str(spec.target_in_flight)}}},
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300,
                                       "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}},
        },
    }
    objects = [deployment, service, hpa]
    if spec.replicas > 1:
        objects.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(spec, spec.name),
                        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(spec.selector)}}})
    objects.append({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(spec, spec.name),
        "spec": {"selector": {"matchLabels": dict(spec.selector)},
                 "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]},
    })
    objects.append(_network_policy(spec, spec.name, spec.selector,
                                   [p for p in (spec.port, spec.grpc_port) if p is not None]))
    return objects


def _stream(spec: DeploySpec) -> list[dict[str, Any]]:
    job = spec.stream
    assert job is not None
    name = f"{spec.name}-stream"
    selector = {"app.kubernetes.io/name": name}
    labels = {**spec.all_labels, **selector}
    container = _container(spec, "stream", ["shipyard", "stream", spec.model, "--source", job.source,
                                            "--sink", job.sink, "--group", job.group,
                                            "--metrics-port", str(STREAM_METRICS_PORT)])
    container["ports"] = [{"name": "metrics", "containerPort": STREAM_METRICS_PORT, "protocol": "TCP"}]
    container["livenessProbe"] = {"tcpSocket": {"port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3,
                                  "initialDelaySeconds": max(10, round(spec.cold_start_seconds * 2))}
    container["readinessProbe"] = {"tcpSocket": {"port": "metrics"}, "periodSeconds": 10}
    pod = _pod_spec(spec, container)
    # a consumer acknowledges only what it has written: give the batches in flight the drain time
    pod["terminationGracePeriodSeconds"] = spec.stop_grace_seconds
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(spec, name, labels, workload=True),
        "spec": {"replicas": 1, "revisionHistoryLimit": 5, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
    scaled = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(spec, name, labels),
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 1,
            # a consumer group gives each partition to one member: more replicas than partitions sit idle
            "maxReplicaCount": min(spec.max_replicas, job.partitions),
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": [{"type": "kafka", "metadata": {
                "bootstrapServers": job.bootstrap, "consumerGroup": job.group, "topic": job.topic,
                "lagThreshold": str(job.lag_threshold), "offsetResetPolicy": "earliest"}}],
        },
    }
    return [deployment, scaled, _network_policy(spec, name, selector, [STREAM_METRICS_PORT])]


def _batch(spec: DeploySpec) -> list[dict[str, Any]]:
    job = spec.batch
    assert job is not None
    name = f"{spec.name}-batch"
    selector = {"app.kubernetes.io/name": name}
    labels = {**spec.all_labels, **selector}
    container = _container(spec, "batch", ["shipyard", "batch", spec.model, "--input", job.input,
                                           "--output", job.output, "--format", job.format])
    pod = _pod_spec(spec, container, restart="OnFailure")
    cron = {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(spec, name, labels, workload=True),
        "spec": {
            "schedule": job.schedule, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"metadata": {"labels": labels}, "spec": pod}}},
        },
    }
    return [cron, _network_policy(spec, name, selector, [])]


def manifests(spec: DeploySpec, *, server: bool = True) -> list[dict[str, Any]]:
    """Every object of the deployment, as plain data.

    Args:
        spec: the deployment.
        server: include the online server (Deployment, Service, autoscaler, budget, monitor, policy).
    """
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec, spec.name),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, f"{spec.name}-config"),
         "data": {"shipyard.yaml": config_text(spec)}},
    ]
    if server:
        objects += _server(spec)
    if spec.stream is not None:
        objects += _stream(spec)
    if spec.batch is not None:
        objects += _batch(spec)
    return objects


def file_name(obj: dict[str, Any], spec: DeploySpec) -> str:
    """``kind[-suffix].yaml``: the object's kind in lower case, plus what its name adds to the app's."""
    suffix = obj["metadata"]["name"][len(spec.name):].lstrip("-")
    return f"{obj['kind'].lower()}{'-' + suffix if suffix else ''}.yaml"


def kustomization(spec: DeploySpec, files: list[str]) -> dict[str, Any]:
    """kustomization.yaml listing every object's file (and the namespace, when one was given)."""
    out: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if spec.namespace:
        out["namespace"] = spec.namespace
    out["resources"] = files
    return out
