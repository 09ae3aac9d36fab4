"""Monitoring: served predictions and their feedback, drift windows and results, alerts.

Revision ID: 0005
Revises: 0004

``shipyard_served`` keeps one row per predicted row (model, version, arm, time, the
prediction) for the join window, so that labels sent later to ``shipyard_feedback``
can be joined into realized metrics. Every replica writes its binned drift window to
``shipyard_drift_windows``; the monitor sums them and records its verdict in
``shipyard_drift_results``. ``shipyard_alerts`` holds alert incidents and what was
notified or triggered for each.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipyard_served",
        sa.Column("prediction_id", sa.String(64), primary_key=True),
        sa.Column("row", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("arm", sa.String(128), nullable=False),
        sa.Column("revision", sa.Integer, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("prediction", sa.JSON, nullable=True),
        sa.Column("score", sa.Float, nullable=True),
    )
    op.create_index("ix_shipyard_served_model_at", "shipyard_served", ["model", "at"])
    op.create_index("ix_shipyard_served_request", "shipyard_served", ["request_id"])
    op.create_table(
        "shipyard_feedback",
        sa.Column("prediction_id", sa.String(64), primary_key=True),
        sa.Column("row", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("label", sa.JSON, nullable=True),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
    )
    op.create_index("ix_shipyard_feedback_model_at", "shipyard_feedback", ["model", "at"])
    op.create_table(
        "shipyard_drift_windows",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("arm", sa.String(128), primary_key=True),
        sa.Column("start", sa.Integer, primary_key=True),
        sa.Column("replica", sa.String(256), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "shipyard_drift_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("arm", sa.String(128), nullable=False),
        sa.Column("start", sa.Integer, nullable=False),
        sa.Column("end", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.UniqueConstraint("model", "version", "arm", "start", name="uq_shipyard_drift_results_window"),
    )
    op.create_table(
        "shipyard_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float, nullable=True),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("notified", sa.JSON, nullable=False),
    )
    op.create_index("ix_shipyard_alerts_model_rule", "shipyard_alerts", ["model", "rule"])


def downgrade() -> None:
    raise NotImplementedError("shipyard's schema only moves forward")
