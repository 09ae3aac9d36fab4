"""Baseline: the schema of shipyard 0.1 (registry tables and asynchronous jobs).

Revision ID: 0001
Revises:

These definitions are frozen copies of what shipyard 0.1 created with ``create_all``;
never edit them, add a revision instead. A registry from 0.1 already has some or all
of these tables, so only the missing ones are created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "shipyard_models" not in have:
        op.create_table(
            "shipyard_models",
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("created_at", sa.String(40), nullable=False),
        )
    if "shipyard_versions" not in have:
        op.create_table(
            "shipyard_versions",
            sa.Column("name", sa.String(128), sa.ForeignKey("shipyard_models.name"), primary_key=True),
            sa.Column("version", sa.Integer, primary_key=True),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("flavor", sa.String(64), nullable=False),
            sa.Column("record", sa.JSON, nullable=False),
            sa.Column("created_at", sa.String(40), nullable=False),
        )
    if "shipyard_aliases" not in have:
        op.create_table(
            "shipyard_aliases",
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("alias", sa.String(128), primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.ForeignKeyConstraint(["name", "version"], ["shipyard_versions.name", "shipyard_versions.version"]),
        )
    if "shipyard_alias_history" not in have:
        op.create_table(
            "shipyard_alias_history",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("alias", sa.String(128), nullable=False),
            sa.Column("version", sa.Integer, nullable=True),
            sa.Column("previous", sa.Integer, nullable=True),
            sa.Column("action", sa.String(16), nullable=False),
            sa.Column("moved_at", sa.String(40), nullable=False),
        )
        op.create_index("ix_shipyard_alias_history_name", "shipyard_alias_history", ["name"])
    if "async_jobs" not in have:
        op.create_table(
            "async_jobs",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("model", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("submitted_at", sa.Float, nullable=False),
            sa.Column("finished_at", sa.Float),
            sa.Column("result", sa.LargeBinary),
            sa.Column("callback", sa.Text),
            sa.Column("callback_status", sa.Text),
        )


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
