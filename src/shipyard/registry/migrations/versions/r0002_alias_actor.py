"""Alias history records who moved an alias.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: moves recorded before this revision have no actor
    op.add_column("shipyard_alias_history", sa.Column("actor", sa.String(128), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
