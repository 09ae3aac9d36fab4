"""Fixtures for tests against real servers on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.demo import register_demo
from shipyard.registry import Registry
from shipyard.testing import PostgresUnavailable, RunningServer, postgres_server, run_server


def make_demo_home(tmp_path_factory: pytest.TempPathFactory, name: str = "demo") -> Path:
    """A new SHIPYARD_HOME holding the quickstart model as demo:1 (alias champion)."""
    home = tmp_path_factory.mktemp(name) / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        register_demo(reg)
    finally:
        reg.close()
    return home


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's SHIPYARD_HOME holding the quickstart model as demo:1 (alias champion)."""
    return make_demo_home(tmp_path_factory)


@pytest.fixture(scope="session")
def demo_server(demo_home: Path) -> Iterator[RunningServer]:
    """`python -m shipyard serve demo@champion` on a free loopback port, small body limit."""
    with run_server(demo_home, ["demo@champion"], args=["--max-body-bytes", "65536"]) as server:
        yield server


@pytest.fixture(scope="session")
def grpc_demo_server(demo_home: Path) -> Iterator[RunningServer]:
    """Like demo_server, plus gRPC on another free port (`--grpc-port`): one process, both transports."""
    with run_server(demo_home, ["demo@champion"], args=["--max-body-bytes", "65536"], grpc=True) as server:
        yield server


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server for this test module; skips, naming what is missing, without one."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server(tmp_path_factory.mktemp("postgres")))
        except PostgresUnavailable as exc:
            pytest.skip(str(exc))
        yield url


@pytest.fixture
def pg_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the module's server, dropped after the test."""
    name = f"shipyard_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield postgres_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
