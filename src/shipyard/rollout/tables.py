"""The rollout tables, as SQLAlchemy Core objects (created by migration 0003; never by ``create_all``)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

traffic_t = sa.Table(
    "shipyard_traffic", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
)

traffic_history_t = sa.Table(
    "shipyard_traffic_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Index("ix_shipyard_traffic_history_model", "model"),
)

leases_t = sa.Table(
    "shipyard_leases", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

arm_stats_t = sa.Table(
    "shipyard_arm_stats", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    sa.Column("arm", sa.String(128), primary_key=True),
    sa.Column("window", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("latency_sum", sa.Float, nullable=False),
    sa.Column("latency_sumsq", sa.Float, nullable=False),
    sa.Column("reward_n", sa.Integer, nullable=False),
    sa.Column("reward_sum", sa.Float, nullable=False),
    sa.Column("reward_sumsq", sa.Float, nullable=False),
)

arm_latency_t = sa.Table(
    "shipyard_arm_latency", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True),
    sa.Column("arm", sa.String(128), primary_key=True),
    sa.Column("window", sa.Integer, primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)
