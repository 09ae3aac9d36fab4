"""One real broker per scheme, started once per test module; tests take ``broker`` and run against each."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from tests.integration.stream.harness import Harness

SCHEMES = ["local", "redis", "nats", "kafka"]


@pytest.fixture(scope="module", params=SCHEMES)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    module = importlib.import_module(f"tests.integration.stream.harness_{request.param}")
    with module.start(tmp_path_factory.mktemp(f"broker-{request.param}")) as harness:
        yield harness
