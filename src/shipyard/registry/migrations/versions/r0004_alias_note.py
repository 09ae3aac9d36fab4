"""Alias history records why a move was made: the promotion gates' outcome (forced or passed).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: moves recorded before this revision, and moves without gates (rollback, delete), have none
    op.add_column("shipyard_alias_history", sa.Column("note", sa.Text, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
