"""Alembic's entry point for shipyard's schema: migrate the connection ``Database`` hands over.

``Database.upgrade`` opens the transaction (and takes the lock) itself, so the revisions
run inside it and commit with it.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("shipyard's migrations run through shipyard.registry.database.Database, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=config.attributes["version_table"],
)
with context.begin_transaction():
    context.run_migrations()
