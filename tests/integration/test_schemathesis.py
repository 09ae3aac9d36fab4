"""schemathesis against /openapi.json of a real `shipyard serve` with a registered model.

Every operation of the document gets schema-valid and schema-breaking requests,
half of them aimed at the served model (random names only reach the 404). What
must hold: no server error, every response with a declared status, media type,
headers and schema, breaking requests refused, and no traceback or file path of this
machine (the repository, the environment, the test's folders) in any body or
header. Not checked: that every schema-valid request is accepted, since a
model's signature (which columns, which values) is not in the document.
Bounded: a fixed number of examples per operation, a fixed seed, a request timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis  # the 'test' extra
from _schemathesis_hooks import LEAK_PATHS_ENV, no_traceback_or_path
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from tests.integration.conftest import make_demo_home

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.security.keys import KeyStore
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
HOOKS = Path(__file__).with_name("_schemathesis_hooks.py")


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    no_traceback_or_path,
]


@pytest.fixture(scope="module", autouse=True)
def _leak_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The run's temporary folders (SHIPYARD_HOME, logs) are paths no response may show: tell the check."""
    before = os.environ.get(LEAK_PATHS_ENV)
    os.environ[LEAK_PATHS_ENV] = str(tmp_path_factory.getbasetemp().resolve())
    yield
    if before is None:
        del os.environ[LEAK_PATHS_ENV]
    else:
        os.environ[LEAK_PATHS_ENV] = before


@pytest.fixture(scope="module")
def fuzzed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry of its own holding the demo: the fuzzing moves aliases (the admin routes) and writes keys."""
    return make_demo_home(tmp_path_factory, "fuzzed")


@pytest.fixture(scope="module")
def fuzzed_server(fuzzed_home: Path) -> Iterator[RunningServer]:
    # a server of its own: the fuzzing queues asynchronous jobs and fills the logs; feedback on, so its
    # routes (/v1/feedback, /quality) are fuzzed too
    with run_server(fuzzed_home, ["demo@champion"], args=["--workers", "1", "--max-body-bytes", "65536"],
                    env={"SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true"}) as server:
        yield server


def _cli(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    names = [c.__name__ for c in CHECKS]
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
           "--checks", ",".join(names), "--phases", "coverage,fuzzing", "--max-examples", "25", "--seed", "1",
           "--request-timeout", "10", "--no-color", *extra]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS.stem,
           "PYTHONPATH": os.pathsep.join([str(HOOKS.parent), os.environ.get("PYTHONPATH", "")])}
    # cwd: the CLI keeps its example database in ./.schemathesis
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)


def test_schemathesis_cli_finds_nothing(fuzzed_server: RunningServer, tmp_path: Path) -> None:
    """The CLI's coverage phase (boundary and type-confused values for every parameter) and fuzzing."""
    done = _cli(fuzzed_server.url, tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Traceback" not in fuzzed_server.log()


def test_schemathesis_cli_with_authentication_on_finds_nothing(fuzzed_home: Path, tmp_path: Path) -> None:
    """The same with API keys required and an admin key sent: every route reached past its check, and the
    document declaring 401/403/429 where credentials are needed."""
    reg = Registry.from_settings(Settings(home=fuzzed_home))
    try:
        _, token = KeyStore(reg.database).create("fuzzer", ["admin"])
    finally:
        reg.close()
    # demo:1, not demo@champion: the first run may have deleted the alias through the admin routes
    with run_server(fuzzed_home, ["demo:1"], args=["--workers", "1", "--max-body-bytes", "65536"],
                    env={"SHIPYARD_SECURITY__AUTH__ENABLED": "true"}) as server:
        done = _cli(server.url, tmp_path, "--header", f"Authorization: Bearer {token}")
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "Traceback" not in server.log()


def test_fuzzing_aimed_at_the_served_model_finds_nothing(fuzzed_server: RunningServer) -> None:
    """The Python API, with half the requests naming the served model (random names only reach the 404)."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the whole document, not a fraction of it
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode), served=st.booleans())
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case: Any, served: bool) -> None:
                if served and case.path_parameters:  # aim at the model, not a 404
                    case.path_parameters.update(
                        {k: v for k, v in {"name": "demo", "version": "1"}.items() if k in case.path_parameters}
                    )
                case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=10)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing in this operation can be broken (no parameters, no body)
            except Exception as exc:  # collect every operation's finding, then fail once
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in fuzzed_server.log()
