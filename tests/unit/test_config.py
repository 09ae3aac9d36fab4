"""Settings in layers: defaults < shipyard.yaml < SHIPYARD_* < explicit values, typed and checked by key path."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from shipyard import config
from shipyard.config import (
    BatchingConfig,
    CacheConfig,
    ModelDeployment,
    MonitoringConfig,
    Settings,
    field_doc,
    masked,
    render_yaml,
)
from shipyard.errors import ConfigError, UnknownOption
from shipyard.serving.deployment import deployment_policies


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config._loading, "_warned", set())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shipyard.yaml"
    path.write_text(text)
    return path


# -- precedence -------------------------------------------------------------------------------------


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    file = write(tmp_path, "port: 9001\nmax_queue: 10\nhost: 0.0.0.0\nlog_level: debug\n")
    env = {"SHIPYARD_MAX_QUEUE": "20", "SHIPYARD_HOST": "127.0.0.2"}
    s = Settings.load(file, env, host="127.0.0.3")
    assert s.request_timeout_seconds == 30.0  # default
    assert s.port == 9001 and s.log_level == "debug"  # file
    assert s.max_queue == 20  # env over file
    assert s.host == "127.0.0.3"  # flag over env
    assert Settings.load(file, env, host=None).host == "127.0.0.2"  # None means "not given"


def test_the_file_comes_from_shipyard_config_when_none_is_given(tmp_path: Path) -> None:
    file = write(tmp_path, "port: 9005\n")
    assert Settings.load(None, {"SHIPYARD_CONFIG": str(file)}).port == 9005
    assert Settings.from_env({"SHIPYARD_CONFIG": str(file)}).port == 9005
    other = tmp_path / "other.yaml"
    other.write_text("port: 9006\n")
    assert Settings.load(other, {"SHIPYARD_CONFIG": str(file)}).port == 9006  # -c wins
    assert Settings.load(None, {}).port == 8000  # no file, none picked up


def test_from_env_still_reads_flat_variables() -> None:
    s = Settings.from_env({"SHIPYARD_PORT": "8123", "SHIPYARD_BATCHING": "yes", "SHIPYARD_HOME": "/tmp/x"})
    assert (s.port, s.batching, s.home) == (8123, True, Path("/tmp/x"))
    assert Settings.from_env({"SHIPYARD_PORT": ""}).port == 8000  # empty: not set, as before


# -- conversion -------------------------------------------------------------------------------------


def test_every_kind_of_field_converts_from_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, """
home: state
port: 8100
alias_refresh_seconds: 1
batching: true
grpc_port: 9100
models:
  - ref: fraud@champion
    batching: {max_size: 8, max_wait_ms: 2}
    cache: {size: 100}
    runtime: onnx
    extra_fields: passthrough
  - iris:3
monitoring:
  tracing: {enabled: true, sample_ratio: 0.25}
  prediction_log: {redact: [ssn, email]}
""")
    s = Settings.load(file, {})
    assert s.home == Path("state") and isinstance(s.home, Path)
    assert s.alias_refresh_seconds == 1.0 and isinstance(s.alias_refresh_seconds, float)
    assert s.batching is True and s.grpc_port == 9100
    assert s.models == (
        ModelDeployment("fraud@champion", batching=BatchingConfig(max_size=8, max_wait_ms=2.0),
                        cache=CacheConfig(size=100), runtime="onnx", extra_fields="passthrough"),
        ModelDeployment("iris:3"),
    )
    assert s.monitoring.tracing.enabled is True and s.monitoring.tracing.sample_ratio == 0.25
    assert s.monitoring.prediction_log.redact == ("ssn", "email")
    assert s.monitoring.metrics == MonitoringConfig().metrics
    assert s.runtime_for("fraud") == "onnx" and s.runtime_for("iris") == "native"
    assert s.extra_fields_overrides == {"fraud": "passthrough"}


def test_nested_keys_have_variables_with_double_underscores() -> None:
    env = {
        "SHIPYARD_MONITORING__TRACING__ENABLED": "true",
        "SHIPYARD_MONITORING__PREDICTION_LOG__REDACT": "ssn, email",
        "SHIPYARD_MODELS": "fraud@champion,iris",
        "SHIPYARD_MODELS__1__BATCHING__MAX_SIZE": "16",
        "SHIPYARD_GRPC_PORT": "9200",
    }
    s = Settings.from_env(env)
    assert s.monitoring.tracing.enabled is True
    assert s.monitoring.prediction_log.redact == ("ssn", "email")
    assert [m.ref for m in s.models] == ["fraud@champion", "iris"]
    assert s.models[1].batching == BatchingConfig(max_size=16)
    assert s.grpc_port == 9200


def test_a_variable_overrides_one_key_of_a_model_from_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, "models:\n  - ref: fraud\n    batching: {max_size: 8}\n")
    s = Settings.load(file, {"SHIPYARD_MODELS__0__BATCHING__MAX_WAIT_MS": "5"})
    assert s.models[0].batching == BatchingConfig(max_size=8, max_wait_ms=5.0)


def test_overrides_take_typed_values() -> None:
    s = Settings.load(None, {}, home=Path("/srv"), monitoring=MonitoringConfig(), models=("demo@champion",))
    assert s.home == Path("/srv") and s.models == (ModelDeployment("demo@champion"),)


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("port: abc\n", "port: expected an integer, got 'abc'"),
    ("batching: [1]\n", "batching: expected true or false, got a list"),
    ("models:\n  - ref: fraud\n    batching: {max_size: many}\n",
     "models[0].batching.max_size: expected an integer or null, got 'many'"),
    ("monitoring:\n  prediction_log: {redact: ssn}\n", "monitoring.prediction_log.redact: expected a list, got 'ssn'"),
    ("models:\n  - batching: {}\n", "models[0]: the key 'ref' is missing"),
    ("models:\n  - ref: fraud\n    batching: {max_size: 0}\n", "models[0].batching: max_size must be at least 1"),
])
def test_a_bad_value_names_its_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.load(write(tmp_path, text), {})


def test_a_bad_variable_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=re.escape("SHIPYARD_MODELS__0__CACHE__SIZE: expected an integer or null, "
                                                    "got 'lots'")):
        Settings.from_env({"SHIPYARD_MODELS": "fraud", "SHIPYARD_MODELS__0__CACHE__SIZE": "lots"})


@pytest.mark.parametrize(("text", "message"), [
    ("prot: 1\n", "unknown key 'prot' for {file}; did you mean 'port'?"),
    ("monitoring:\n  tracing: {enabeld: true}\n",
     "unknown key 'monitoring.tracing.enabeld' for {file}; did you mean 'monitoring.tracing.enabled'?"),
    ("models:\n  - ref: fraud\n    batching: {max_sise: 3}\n",
     "unknown key 'models[0].batching.max_sise' for {file}; did you mean 'models[0].batching.max_size'?"),
])
def test_an_unknown_key_is_refused_with_the_nearest(tmp_path: Path, text: str, message: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(UnknownOption, match=re.escape(message.format(file=file))):
        Settings.load(file, {})


def test_an_unknown_nested_variable_is_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    # at the logger itself: a CLI test earlier in the run may have stopped shipyard's loggers propagating
    with caplog.at_level(logging.WARNING, logger="shipyard.config"):
        s = Settings.from_env({"SHIPYARD_MONITORING__TRACING__ENABELD": "true"})
    assert s.monitoring.tracing.enabled is False
    assert "SHIPYARD_MONITORING__TRACING__ENABELD" in caplog.text


@pytest.mark.parametrize(("text", "message"), [
    ("models:\n  - ref: 'no such/model'\n", "models[0]: ref: invalid model name"),
    ("models:\n  - fraud\n  - fraud@challenger\n", "models[1]: model 'fraud' is listed twice"),
    ("models:\n  - ref: fraud\n    runtime: tensorrt\n", "models[0]: runtime must be auto, native or onnx"),
    ("auth:\n  tokens: [x]\n", "unknown key 'auth'"),
    ("security:\n  auth: {enabled: true, api_keys: false}\n", "accepts nothing"),
    ("security:\n  tls: {client_auth: required}\n", "needs security.tls.ca_file"),
    ("security:\n  auth:\n    jwt: {jwks_url: 'https://idp/jwks', algorithms: [HS256]}\n", "HS256 not accepted"),
    ("security:\n  auth:\n    jwt: {jwks_url: 'https://idp/jwks'}\n", "issuer and audience are required"),
    ("security:\n  callback_hosts: ['10.0.0.0/33']\n", "neither a host nor a CIDR"),
    ("models:\n  - ref: fraud\n    traffic: {canary: 10}\n", "models[0]: traffic: canary must be a mapping"),
    ("models:\n  - ref: fraud\n    traffic: {arms: [{alias: a, weight: 1}], sticky: user}\n",
     "models[0]: traffic: sticky must be 'header:NAME' or 'field:NAME'"),
    ("models:\n  - ref: a\n    cache: {size: 5, ttl_seconds: 10}\n  - ref: b\n    cache: {size: 5}\n",
     "cache ttl_seconds differ"),
])
def test_bad_references_keys_traffic_and_conflicts_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.load(write(tmp_path, text), {})


def test_empty_reserved_keys_are_accepted(tmp_path: Path) -> None:
    s = Settings.load(write(tmp_path, "graph: {}\nmodels:\n  - ref: fraud\n    retraining:\n"), {})
    assert s.graph == {} and s.models[0].retraining is None


def test_security_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = ("security:\n  auth: {enabled: true, rate_limit_per_second: 5}\n"
            "  tls: {certfile: /etc/s/cert.pem, ca_file: /etc/s/ca.pem, client_auth: optional}\n"
            "  callback_hosts: [hooks.example.com, 10.1.0.0/16]\n")
    s = Settings.load(write(tmp_path, text), {"SHIPYARD_SECURITY__AUTH__METRICS": "read",
                                             "SHIPYARD_SECURITY__MODEL_URL_HOSTS": "models.example.com,cdn.test"})
    assert s.security.auth.enabled and s.security.auth.rate_limit_per_second == 5
    assert s.security.auth.metrics == "read" and s.security.tls.enabled and s.security.tls.client_auth == "optional"
    assert s.security.callback_hosts == ("hooks.example.com", "10.1.0.0/16")
    assert s.security.model_url_hosts == ("models.example.com", "cdn.test")
    assert not Settings().security.auth.enabled and not Settings().security.insecure


@pytest.mark.parametrize(("text", "message"), [
    ("port: [1\n", "is not valid YAML"),
    ("- port\n", "must hold a mapping of settings, got a list"),
])
def test_a_file_that_is_no_yaml_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.load(write(tmp_path, text), {})


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        Settings.load(tmp_path / "missing.yaml", {})


# -- showing --------------------------------------------------------------------------------------


def test_show_masks_secrets_in_keys_and_urls(tmp_path: Path) -> None:
    s = Settings.load(write(tmp_path, "registry_url: postgresql://u:pw@db.local/reg\n"), {})
    shown = yaml.safe_load(render_yaml(s))
    assert shown["registry_url"] == "postgresql://u:***@db.local/reg"
    assert shown["port"] == 8000 and shown["monitoring"]["tracing"]["enabled"] is False
    assert "auth" not in shown  # unset reserved keys are left out
    assert masked({"api_token": "t", "key": "k", "keep_alive_seconds": 1, "nested": [{"password": "p"}]}) == {
        "api_token": "***", "key": "***", "keep_alive_seconds": 1, "nested": [{"password": "***"}]}


def test_shown_settings_load_back_to_the_same(tmp_path: Path) -> None:
    s = Settings.load(write(tmp_path, "models:\n  - ref: fraud\n    batching: {max_size: 4}\nport: 9\n"), {})
    again = tmp_path / "again.yaml"
    again.write_text(render_yaml(s))
    assert Settings.load(again, {}) == s


def test_help_comes_from_the_field_docstrings() -> None:
    assert field_doc(Settings, "port") == "Port of the REST server."
    assert field_doc(BatchingConfig, "max_size").startswith("Most rows in one batched model call")


# -- what the server gets -------------------------------------------------------------------------


def test_per_model_policies_fall_back_to_the_server_wide_settings() -> None:
    s = Settings(batching=True, batch_max_size=32, cache_size=10, runtime="native", models=(
        ModelDeployment("fraud@champion", batching=BatchingConfig(max_wait_ms=4), cache=CacheConfig(size=50),
                        runtime="onnx"),
        ModelDeployment("iris", batching=BatchingConfig(enabled=False)),
    ))
    p = deployment_policies(s, ["fraud@champion", "iris", "demo"])
    assert p.default_batching is not None and p.default_batching.max_batch_size == 32
    fraud = p.batching["fraud"]
    assert fraud is not None and (fraud.max_batch_size, fraud.max_wait_ms) == (32, 4.0)
    assert p.batching["iris"] is None and "demo" not in p.batching
    assert p.cached_models == {"fraud", "iris", "demo"}
    assert p.cache is not None and p.cache.max_entries == 10 + 50  # the shared entries plus fraud's own
    assert p.runtimes == {"fraud": "onnx"}


def test_max_queue_has_one_default() -> None:
    import inspect

    from shipyard.batching.queue import Batcher
    from shipyard.serving.dataplane import DataPlane

    for cls in (DataPlane, Batcher):
        assert inspect.signature(cls).parameters["max_queue"].default == Settings().max_queue
