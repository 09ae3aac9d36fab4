"""Alerts on PostgreSQL: the SQLite scenarios of the unit tests on the production twin.

Two ``AlertService`` replicas with their own connection pools share the lease and the
incidents; concurrent claims of one notification go through the conditional UPDATE.
"""

from __future__ import annotations

import pytest
from tests.unit.monitoring.alerts.test_alert_service import two_services_notify_once
from tests.unit.monitoring.alerts.test_alert_store import claims_are_exactly_once, incidents_open_once_and_resolve

from shipyard.monitoring.alerts import AlertStore
from shipyard.registry.database import Database

pytestmark = pytest.mark.integration


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_two_services_on_postgresql_notify_once(pg_database_url: str) -> None:
    a, b = Database(pg_database_url), Database(pg_database_url)
    try:
        await two_services_notify_once(a, b)
    finally:
        a.close()
        b.close()


def test_incidents_and_exactly_once_claims_on_postgresql(pg_database_url: str) -> None:
    database = Database(pg_database_url)
    try:
        incidents_open_once_and_resolve(AlertStore(database))
        claims_are_exactly_once(AlertStore(database))
    finally:
        database.close()
