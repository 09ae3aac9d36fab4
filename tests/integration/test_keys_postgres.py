"""API keys on PostgreSQL: a key made through one connection pool verifies on a ring over another."""

from __future__ import annotations

import threading

import pytest
from tests.unit.security.test_keys import key_works_across_databases_until_revoked

from shipyard.errors import InvalidInput
from shipyard.registry.database import Database
from shipyard.security.keys import KeyStore

pytestmark = pytest.mark.integration


def test_key_verifies_on_another_database_until_revoked(pg_database_url: str) -> None:
    writer, reader = Database(pg_database_url), Database(pg_database_url)
    try:
        key_works_across_databases_until_revoked(writer, reader)
    finally:
        writer.close()
        reader.close()


def test_concurrent_creates_of_one_name_make_one_key(pg_database_url: str) -> None:
    databases = [Database(pg_database_url) for _ in range(4)]
    start = threading.Barrier(len(databases))
    made: list[str] = []
    refused: list[str] = []

    def create(database: Database) -> None:
        start.wait()
        try:
            made.append(KeyStore(database).create("ci", ["read"])[0].key_id)
        except InvalidInput as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=create, args=(d,)) for d in databases]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(made) == 1 and len(refused) == 3
        assert all("an active API key is named 'ci' already" in r for r in refused)
        assert [k.key_id for k in KeyStore(databases[0]).list()] == made
    finally:
        for d in databases:
            d.close()
