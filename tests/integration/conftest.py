"""Fixtures for tests against real servers on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import sqlalchemy as sa

from shipyard.testing import PostgresUnavailable, postgres_server


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
