"""The monitoring tables, as SQLAlchemy Core objects (created by migration 0005; never by ``create_all``).

* ``shipyard_served``: one row per predicted row of a served request, what feedback joins on
  (kept for the join window, then pruned).
* ``shipyard_feedback``: labels and rewards, one per (prediction, row, source): sending one again
  changes nothing.
* ``shipyard_drift_windows``: each replica's binned window of inputs and outputs per (model, version,
  arm, window start); the drift monitor sums the replicas' windows.
* ``shipyard_drift_results``: every compared window's verdict, per feature in ``payload``.
* ``shipyard_alerts``: alert incidents, open until resolved; notifications and triggers recorded
  with them so each runs once per incident.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

served_t = sa.Table(
    "shipyard_served", metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("row", sa.Integer, primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("arm", sa.String(128), nullable=False),
    sa.Column("revision", sa.Integer, nullable=True),
    sa.Column("at", sa.Float, nullable=False),  # epoch seconds the prediction was made
    sa.Column("prediction", sa.JSON, nullable=True),  # the label output's value for this row
    sa.Column("score", sa.Float, nullable=True),  # a binary classifier's positive-class probability
    sa.Index("ix_shipyard_served_model_at", "model", "at"),
    sa.Index("ix_shipyard_served_request", "request_id"),
)

feedback_t = sa.Table(
    "shipyard_feedback", metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("row", sa.Integer, primary_key=True),
    sa.Column("source", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("label", sa.JSON, nullable=True),
    sa.Column("reward", sa.Float, nullable=True),
    sa.Column("at", sa.Float, nullable=False),  # when the outcome was observed (the caller's time, else receipt)
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("late", sa.Boolean, nullable=False),  # after the join window: stored, never counted
    sa.Index("ix_shipyard_feedback_model_at", "model", "at"),
)

drift_windows_t = sa.Table(
    "shipyard_drift_windows", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("arm", sa.String(128), primary_key=True),
    sa.Column("start", sa.Integer, primary_key=True),  # epoch seconds of the window's start
    sa.Column("replica", sa.String(256), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),  # the replica's Window.to_dict()
    sa.Column("updated_at", sa.Float, nullable=False),
)

drift_results_t = sa.Table(
    "shipyard_drift_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("arm", sa.String(128), nullable=False),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("end", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("share", sa.Float, nullable=False),  # share of features that drifted
    sa.Column("payload", sa.JSON, nullable=False),  # the DriftReport.to_dict()
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("model", "version", "arm", "start", name="uq_shipyard_drift_results_window"),
)

alerts_t = sa.Table(
    "shipyard_alerts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(128), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float, nullable=True),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("notified", sa.JSON, nullable=False),  # per notifier/trigger: when it ran and how it ended
    sa.Index("ix_shipyard_alerts_model_rule", "model", "rule"),
)
