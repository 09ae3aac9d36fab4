"""Retraining runs.

Revision ID: 0007
Revises: 0006

``shipyard_retrain_runs`` holds one row per retraining run: its model, state, what started it
(``trigger`` and the ``trigger_key`` that makes a schedule tick or an alert incident start one
run however many replicas see it), the evidence, the dataset's manifest, the candidate version,
the gates' verdicts and the log. ``inflight`` is the model's name while the run is not final and
NULL after: a unique index on it lets at most one run per model be in flight.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipyard_retrain_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("trigger_key", sa.String(256), nullable=True),
        sa.Column("inflight", sa.String(128), nullable=True),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("dataset", sa.JSON, nullable=True),
        sa.Column("gates", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("log", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("trigger_key", name="uq_shipyard_retrain_runs_trigger"),
        sa.UniqueConstraint("inflight", name="uq_shipyard_retrain_runs_inflight"),
        sa.Index("ix_shipyard_retrain_runs_model", "model", "created_at"),
    )


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
