"""The security tables, as SQLAlchemy Core objects (created by migration 0006; never by ``create_all``).

* ``shipyard_api_keys``: one row per API key: its id (the public part of the key), the sha256 of
  its secret (the secret itself is shown once, at creation, and never stored), scopes, models,
  expiry, rate and whether and when it was revoked.
* ``shipyard_audit``: the admin actions, one row each, hash-chained: each row's ``hash`` covers
  its content and the previous row's hash, so editing or deleting a row breaks the chain.
* ``shipyard_audit_head``: one row, the chain's last ``seq`` and ``hash``. Appending locks it,
  which orders concurrent writers, and it shows when rows were cut off the end.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

api_keys_t = sa.Table(
    "shipyard_api_keys", metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),  # a list of scope names
    sa.Column("models", sa.JSON, nullable=True),  # a list of model names; null: every model
    sa.Column("rate_per_second", sa.Float, nullable=True),  # null: the server's default
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),  # null: never
    sa.Column("revoked_at", sa.Float, nullable=True),
)

audit_t = sa.Table(
    "shipyard_audit", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),  # 1, 2, ... set under the head's lock
    sa.Column("at", sa.Float, nullable=False),  # epoch seconds
    sa.Column("actor", sa.String(256), nullable=False),  # a key's name, a token's subject, an OS user
    sa.Column("source", sa.String(256), nullable=False),  # a client address, or "cli@HOST"
    sa.Column("action", sa.String(64), nullable=False),  # e.g. "alias.set", "model.register", "key.create"
    sa.Column("target", sa.String(256), nullable=False),  # what it acted on, e.g. "fraud@champion"
    sa.Column("outcome", sa.String(16), nullable=False),  # "ok", "refused", "failed"
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_head_t = sa.Table(
    "shipyard_audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("seq", sa.Integer, nullable=False),  # 0: nothing appended yet
    sa.Column("hash", sa.String(64), nullable=False),
)
