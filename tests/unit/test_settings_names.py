"""Setting names: unknown ones refused from Python, unknown SHIPYARD_* variables warned about once."""

from __future__ import annotations

import logging
import re

import pytest

from shipyard import config
from shipyard.config import Settings
from shipyard.errors import InvalidOption, UnknownOption


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config._loading, "_warned", set())


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shipyard.config" and r.levelno == logging.WARNING]


def test_a_mistyped_variable_is_warned_about_with_the_nearest_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shipyard.config"):
        settings = Settings.from_env({"SHIPYARD_MAX_QEUE": "8"})
    assert settings.max_queue == 256  # ignored, as before, but no longer silently
    assert warnings_logged(caplog) == [
        "unknown environment variable 'SHIPYARD_MAX_QEUE' for shipyard settings; "
        "did you mean 'SHIPYARD_MAX_QUEUE'? (it is ignored)"
    ]


def test_each_unknown_variable_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shipyard.config"):
        Settings.from_env({"SHIPYARD_LOGLEVEL": "debug"})
        Settings.from_env({"SHIPYARD_LOGLEVEL": "debug"})
    assert len(warnings_logged(caplog)) == 1
    assert "did you mean 'SHIPYARD_LOG_LEVEL'?" in warnings_logged(caplog)[0]


def test_known_and_foreign_variables_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "SHIPYARD_MAX_QUEUE": "8",
        "PATH": "/bin",
        # Kubernetes service links of a Service named "shipyard" in the pod's namespace
        "SHIPYARD_SERVICE_HOST": "10.0.0.7",
        "SHIPYARD_SERVICE_PORT_HTTP": "8000",
        "SHIPYARD_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "SHIPYARD_PORT_8000_TCP_ADDR": "10.0.0.7",
    }
    with caplog.at_level(logging.WARNING, logger="shipyard.config"):
        assert Settings.from_env(env).max_queue == 8
    assert warnings_logged(caplog) == []


def test_an_unknown_setting_name_from_python_is_refused_with_the_nearest() -> None:
    with pytest.raises(UnknownOption, match=re.escape("unknown setting 'max_qeue' for Settings; did you mean "
                                                      "'max_queue'?")):
        Settings.from_env({}, max_qeue=8)
    with pytest.raises(UnknownOption, match=re.escape("unknown setting 'prot' for Settings; did you mean 'port'?")):
        Settings().replace(prot=9000)
    assert Settings().replace(port=9000, host=None).port == 9000


def test_a_variable_that_is_not_of_its_type_names_it_and_the_value() -> None:
    with pytest.raises(InvalidOption, match=re.escape("SHIPYARD_PORT: expected an integer, got 'eighty'")) as info:
        Settings.from_env({"SHIPYARD_PORT": "eighty"})
    assert info.value.option == "SHIPYARD_PORT"
