"""Rollouts: traffic policies and their history, controller leases, per-arm counters.

Revision ID: 0003
Revises: 0002

``shipyard_traffic`` holds the one live policy of each served name; every change is
appended to ``shipyard_traffic_history``. ``shipyard_leases`` lets one replica at a
time run the rollout controller. ``shipyard_arm_stats`` and ``shipyard_arm_latency``
are counters that every replica adds to (upserts of increments), per policy
revision, arm and time window: the fleet-wide numbers gates and reports read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipyard_traffic",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
    )
    op.create_table(
        "shipyard_traffic_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
    )
    op.create_index("ix_shipyard_traffic_history_model", "shipyard_traffic_history", ["model"])
    op.create_table(
        "shipyard_leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "shipyard_arm_stats",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("arm", sa.String(128), primary_key=True),
        sa.Column("window", sa.Integer, primary_key=True),  # epoch seconds of the window's start
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_sum", sa.Float, nullable=False),
        sa.Column("latency_sumsq", sa.Float, nullable=False),
        sa.Column("reward_n", sa.Integer, nullable=False),
        sa.Column("reward_sum", sa.Float, nullable=False),
        sa.Column("reward_sumsq", sa.Float, nullable=False),
    )
    op.create_table(
        "shipyard_arm_latency",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("arm", sa.String(128), primary_key=True),
        sa.Column("window", sa.Integer, primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),  # index into the fixed latency bounds
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
