"""Settings that keep state on one machine are refused for replicated targets, each named with its variable."""

from __future__ import annotations

import pytest

from shipyard.config import FeedbackConfig, MonitoringConfig, Settings
from shipyard.deploy import check_replicable, replica_problems
from shipyard.errors import ConfigError

SHARED = {"registry_url": "postgresql+psycopg://shipyard@db:5432/shipyard", "artifacts": "s3://models/shipyard",
          "async_broker": "redis://redis:6379/shipyard"}


def test_the_embedded_defaults_are_refused_naming_each_setting_and_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        check_replicable(Settings(), "Kubernetes manifests")
    message = str(caught.value)
    assert message.startswith("Kubernetes manifests run several replicas")
    for setting, variable in (("registry_url", "SHIPYARD_REGISTRY_URL"), ("artifacts", "SHIPYARD_ARTIFACTS"),
                              ("async_broker", "SHIPYARD_ASYNC_BROKER")):
        assert f"{setting} ({variable})" in message
    assert "postgresql" in message and "s3://" in message


@pytest.mark.parametrize(("change", "setting"), [
    ({"registry_url": "sqlite:////data/registry.db"}, "registry_url"),
    ({"artifacts": "/srv/artifacts"}, "artifacts"),
    ({"artifacts": "file:///srv/artifacts"}, "artifacts"),
    ({"artifacts": "simplecache::file:///srv/artifacts"}, "artifacts"),
    ({"async_broker": "local://shipyard"}, "async_broker"),
])
def test_each_machine_local_setting_is_named_alone(change: dict[str, str], setting: str) -> None:
    assert [p.setting for p in replica_problems(Settings(**{**SHARED, **change}))] == [setting]


def test_shared_services_pass_and_asynchronous_requests_may_be_off() -> None:
    assert replica_problems(Settings(**SHARED)) == []
    assert replica_problems(Settings(**{**SHARED, "async_broker": "off"})) == []
    check_replicable(Settings(**SHARED), "x")


def test_a_local_feedback_stream_is_refused_only_when_feedback_is_on() -> None:
    def with_feedback(enabled: bool) -> Settings:
        return Settings(**SHARED, monitoring=MonitoringConfig(feedback=FeedbackConfig(
            enabled=enabled, stream="local://feedback")))

    assert [p.variable for p in replica_problems(with_feedback(True))] == ["SHIPYARD_MONITORING__FEEDBACK__STREAM"]
    assert replica_problems(with_feedback(False)) == []
