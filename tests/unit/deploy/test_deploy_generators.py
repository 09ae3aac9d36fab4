"""The generators are pure: a DeploySpec in, plain data or text out; checked here on their structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.config import Settings
from shipyard.deploy import BatchJob, DeploySpec, Measured, StreamJob, build_spec, write_compose, write_kubernetes
from shipyard.deploy import compose as compose_gen
from shipyard.deploy import docker as docker_gen
from shipyard.deploy import kubernetes as k8s_gen
from shipyard.errors import ConfigError

SHARED = Settings(registry_url="postgresql+psycopg://shipyard:pw@db:5432/shipyard", artifacts="s3://models/sy",
                  async_broker="kafka://kafka:9092/shipyard", graceful_shutdown_seconds=20,
                  alias_refresh_seconds=1.0)
MEASURED = Measured("sklearn", 3, cold_start_seconds=40.0, rows_per_second=2000.0)


def spec(**options: Any) -> DeploySpec:
    return build_spec(SHARED, "Fraud_v2@champion", MEASURED, target="test", replicated=True, **options)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def test_the_deployment_probes_secures_and_outlives_the_drain() -> None:
    objects = by_kind(k8s_gen.manifests(spec(grpc_port=8081)))
    pod = objects["Deployment/fraud-v2"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # the startup probe allows three times the measured 40 s cold start
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3 * 40
    assert pod["terminationGracePeriodSeconds"] > 20 + 5  # drain plus the preStop pause
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] and c["resources"]["limits"]["memory"]
    assert [p["containerPort"] for p in c["ports"]] == [8000, 8081]
    assert [p["name"] for p in objects["Service/fraud-v2"]["spec"]["ports"]] == ["http", "grpc"]


def test_the_registry_url_comes_from_a_secret_and_never_appears_in_a_manifest() -> None:
    objects = k8s_gen.manifests(spec())
    assert "pw@" not in yaml.safe_dump_all(objects)
    (c,) = by_kind(objects)["Deployment/fraud-v2"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SHIPYARD_REGISTRY_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fraud-v2-secrets",
                                                                        "key": "registry-url"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["optional"] is True  # s3:// artifacts


def test_the_configmap_holds_a_shipyard_yaml_that_loads(tmp_path: Path) -> None:
    cm = by_kind(k8s_gen.manifests(spec()))["ConfigMap/fraud-v2-config"]
    path = tmp_path / "shipyard.yaml"
    path.write_text(cm["data"]["shipyard.yaml"])
    loaded = Settings.load(path, environ={})
    assert (loaded.host, loaded.port, loaded.registry_url) == ("0.0.0.0", 8000, "")
    assert loaded.artifacts == "s3://models/sy" and loaded.alias_refresh_seconds == 1.0
    assert [m.ref for m in loaded.models] == ["Fraud_v2@champion"]
    assert loaded.security.auth.enabled  # listening on every interface: credentials required


def test_the_autoscaler_uses_cpu_and_requests_in_flight_and_a_budget_needs_two_replicas() -> None:
    objects = by_kind(k8s_gen.manifests(spec(replicas=3, max_replicas=9, target_in_flight=5)))
    hpa = objects["HorizontalPodAutoscaler/fraud-v2"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "shipyard_requests_in_flight"
    assert "PodDisruptionBudget/fraud-v2" in objects
    assert "PodDisruptionBudget/fraud-v2" not in by_kind(k8s_gen.manifests(spec(replicas=1)))


def test_a_stream_job_scales_on_lag_up_to_the_partitions() -> None:
    job = StreamJob("kafka://kafka:9092/tx", "kafka://kafka:9092/scores", "g1", partitions=4, throughput=250.0,
                    catch_up_seconds=20)
    objects = by_kind(k8s_gen.manifests(spec(stream=job, max_replicas=10), server=False))
    assert "Deployment/fraud-v2" not in objects
    scaled = objects["ScaledObject/fraud-v2-stream"]["spec"]
    assert scaled["maxReplicaCount"] == 4  # 10 allowed, but only 4 partitions
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"] == {"bootstrapServers": "kafka:9092", "consumerGroup": "g1", "topic": "tx",
                                   "lagThreshold": "5000", "offsetResetPolicy": "earliest"}
    (c,) = objects["Deployment/fraud-v2-stream"]["spec"]["template"]["spec"]["containers"]
    assert c["command"][:3] == ["shipyard", "stream", "Fraud_v2@champion"]


def test_a_batch_job_is_a_cronjob() -> None:
    objects = by_kind(k8s_gen.manifests(spec(batch=BatchJob("s3://in/*.parquet", "s3://out/", "0 2 * * *"))))
    cron = objects["CronJob/fraud-v2-batch"]["spec"]
    assert cron["schedule"] == "0 2 * * *" and cron["concurrencyPolicy"] == "Forbid"
    (c,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["shipyard", "batch"]


def test_kustomization_lists_one_file_per_object(tmp_path: Path) -> None:
    written = write_kubernetes(spec(namespace="ml"), tmp_path)
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "ml"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in written.files if p.name != "kustomization.yaml")
    for name in kustomization["resources"]:
        docs = list(yaml.safe_load_all((tmp_path / name).read_text()))
        assert len(docs) == 1 and docs[0]["metadata"]["namespace"] == "ml"
    assert any("kubectl create secret generic fraud-v2-secrets --namespace ml" in c for c in written.commands)


def test_the_dockerfile_is_multi_stage_non_root_with_healthcheck_and_stop_signal() -> None:
    s = spec()
    text = docker_gen.dockerfile(s)
    assert text.count("\nFROM python:3.11.11-slim-bookworm") == 2
    assert "USER 10001:10001" in text and "STOPSIGNAL SIGTERM" in text
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert "SHIPYARD_GRACEFUL_SHUTDOWN_SECONDS=20" in text
    assert "--stop-timeout 30 " in docker_gen.commands(s, "out")[1]  # longer than the 20 s drain
    # the flavor's extra and those the settings need, pinned to this release
    assert s.package.startswith("shipyard[kafka,postgres,s3,sklearn]==")


def test_compose_adds_the_chosen_services_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    project = compose_gen.compose_project(spec(replicas=1), ("postgres", "redis", "prometheus"))
    server = project["services"]["shipyard"]
    assert set(project["services"]) == {"shipyard", "postgres", "redis", "prometheus"}
    assert server["environment"]["SHIPYARD_REGISTRY_URL"].startswith("postgresql+psycopg://shipyard:${POSTGRES_")
    assert server["environment"]["SHIPYARD_ASYNC_BROKER"] == "redis://redis:6379/shipyard"
    assert server["stop_grace_period"] == "30s" and server["read_only"] and server["cap_drop"] == ["ALL"]
    assert server["ports"] == ["127.0.0.1:8000:8000"]
    several = compose_gen.compose_project(spec(replicas=3), ())["services"]["shipyard"]
    assert several["deploy"] == {"replicas": 3} and "ports" not in several
    with pytest.raises(ConfigError, match="unknown service mysql"):
        compose_gen.compose_project(spec(), ("mysql",))
    written = write_compose(spec(), tmp_path, ("prometheus",))
    assert {p.name for p in written.files} >= {"Dockerfile", "compose.yaml", "prometheus.yml", ".dockerignore"}


@pytest.mark.parametrize(("options", "message"), [
    ({"replicas": 4, "max_replicas": 2}, "--max-replicas at least --replicas"),
    ({"target_cpu_percent": 0}, "--target-cpu"),
])
def test_bad_sizes_are_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**options)


def test_bad_jobs_are_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="--stream-source must be a kafka://"):
        StreamJob("redis://r/x", "redis://r/y", "g", 1, 10.0)
    with pytest.raises(ConfigError, match="--schedule"):
        BatchJob("in", "out", "daily")
    with pytest.raises(ConfigError, match="model flavor 'cobol'"):
        DeploySpec(model="m", flavor="cobol", config={})
