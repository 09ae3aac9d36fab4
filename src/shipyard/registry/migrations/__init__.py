"""Alembic revisions of shipyard's SQL schema, run by ``shipyard.registry.database.Database`` on open."""
