"""Per-arm counters on a real PostgreSQL: concurrent replicas add up exactly; a refused flush is retried once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.fixtures.arm_counts import check_concurrent_recorders_sum_exactly, check_failed_flush_is_retried

from shipyard.registry.database import Database

pytestmark = pytest.mark.integration


@pytest.fixture
def database(pg_database_url: str) -> Iterator[Database]:
    db = Database(pg_database_url)
    try:
        yield db
    finally:
        db.close()


def test_two_recorders_on_one_postgres_database_sum_exactly(database: Database) -> None:
    check_concurrent_recorders_sum_exactly(database)


def test_a_failed_flush_on_postgres_is_retried_without_loss_or_double_count(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    check_failed_flush_is_retried(database, caplog)
