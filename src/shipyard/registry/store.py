"""Registry metadata in a SQL database: SQLite embedded, PostgreSQL in production.

``RegistryStore`` is what the registry needs from its metadata store; ``SQLStore``
is the one implementation, over SQLAlchemy Core, serving both databases. The
tables below describe the newest schema for queries; the schema itself is created
and upgraded by the migrations ``Database`` runs on open. Every write is one
transaction; version numbers are allocated under a lock on the model's row
(``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
two processes registering the same name at once get two distinct versions.
"""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from shipyard.errors import IdenticalVersion, ModelNotFound, RegistryError, VersionConflict
from shipyard.registry.database import Database
from shipyard.registry.model import AliasMove, ModelVersion
from shipyard.security import audit
from shipyard.signature import Signature

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

models_t = sa.Table(
    "shipyard_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.String(40), nullable=False),
)

versions_t = sa.Table(
    "shipyard_versions",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("shipyard_models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("flavor", sa.String(64), nullable=False),
    sa.Column("record", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

aliases_t = sa.Table(
    "shipyard_aliases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.ForeignKeyConstraint(["name", "version"], ["shipyard_versions.name", "shipyard_versions.version"]),
)

alias_history_t = sa.Table(
    "shipyard_alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    sa.Column("alias", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("previous", sa.Integer, nullable=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("moved_at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),  # revision 0002
    sa.Column("note", sa.Text, nullable=True),  # revision 0004
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class RegistryStore(Protocol):
    """Where the registry keeps model metadata: versions, aliases and alias history.

    Artifact files live elsewhere (``ArtifactStore``); a store holds only records.
    Every write is atomic, and concurrent writers never get the same version number.
    """

    def add_version(self, record: dict[str, Any], *, allow_identical: bool = True) -> ModelVersion:
        """Store ``record`` as the next version of ``record["name"]`` (creating the model) and return it.

        With ``allow_identical=False``, raise ``IdenticalVersion`` when a version with the same
        digest and runtime settings exists already.
        """
        ...

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version; ``ModelNotFound`` names the model or the version that is missing."""
        ...

    def latest_version(self, name: str) -> ModelVersion:
        """The highest-numbered version of ``name``; ``ModelNotFound`` if it has none."""
        ...

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first; ``ModelNotFound`` for an unknown model."""
        ...

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model, by name: name, latest, versions (count), aliases, created_at."""
        ...

    def aliases(self, name: str) -> dict[str, int]:
        """The model's aliases and the versions they point at (empty for an unknown model)."""
        ...

    def resolve_alias(self, name: str, alias: str) -> int:
        """The version ``alias`` points at; ``ModelNotFound`` for an unknown model or alias."""
        ...

    def set_alias(
        self, name: str, alias: str, version: int, action: str = "set", actor: str | None = None,
        note: str | None = None,
    ) -> AliasMove:
        """Point ``alias`` at an existing ``version`` and append the move, by ``actor``, to its history."""
        ...

    def delete_alias(self, name: str, alias: str, actor: str | None = None) -> AliasMove:
        """Remove ``alias`` and record the deletion; ``ModelNotFound`` if it does not exist."""
        ...

    def rollback_alias(self, name: str, alias: str, actor: str | None = None) -> AliasMove:
        """Move ``alias`` back to its target before its latest move; ``RegistryError`` if there is none."""
        ...

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every move of the model's aliases (or of one alias), oldest first."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


class SQLStore:
    """Models, versions and aliases in the tables of one ``Database``.

    Args:
        database: the open database; ``close()`` closes it.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.url = database.url
        self.dialect = database.dialect

    def close(self) -> None:
        self.database.close()

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction on this database, for other tables that live beside the registry's."""
        return self.database.transaction()

    def _lock_model(self, conn: Connection, name: str, create: bool) -> bool:
        """Lock the model's row for this transaction; create it first if asked."""
        if create:
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                conn.execute(pg_insert(models_t).values(name=name, created_at=now_iso()).on_conflict_do_nothing())
            else:
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                conn.execute(
                    sqlite_insert(models_t).values(name=name, created_at=now_iso()).on_conflict_do_nothing()
                )
        q = sa.select(models_t.c.name).where(models_t.c.name == name)
        if self.dialect == "postgresql":
            q = q.with_for_update()
        return conn.execute(q).first() is not None

    # -- versions ------------------------------------------------------------

    def add_version(self, record: dict[str, Any], *, allow_identical: bool = True) -> ModelVersion:
        """Insert a version with the next free number; returns it as stored.

        With ``allow_identical=False``, raise ``IdenticalVersion`` instead when a version of the
        same name already has the same digest and runtime settings. The look-up runs under the
        model's lock, so two processes registering the same files at once make one version.
        """
        name = record["name"]
        for attempt in range(20):
            try:
                with self.database.transaction() as conn:
                    self._lock_model(conn, name, create=True)
                    if not allow_identical:
                        same = self._identical(conn, record)
                        if same is not None:
                            raise IdenticalVersion(name, same, record["digest"])
                    latest = conn.execute(
                        sa.select(sa.func.max(versions_t.c.version)).where(versions_t.c.name == name)
                    ).scalar()
                    version = int(latest or 0) + 1
                    created = now_iso()
                    full = dict(record, version=version, created_at=created)
                    conn.execute(
                        versions_t.insert().values(
                            name=name,
                            version=version,
                            digest=record["digest"],
                            flavor=record["flavor"],
                            record=full,
                            created_at=created,
                        )
                    )
                    audit.append(conn, "model.register", f"{name}:{version}", details=_register_details(record))
                return _to_version(full)
            except IdenticalVersion as exc:  # nothing was written: the attempt is recorded on its own
                audit.record(self.database, "model.register", f"{name}:{exc.version}",
                             details=_register_details(record, identical_to=exc.version))
                raise
            except (IntegrityError, OperationalError) as exc:
                if attempt == 19:
                    raise VersionConflict(f"could not allocate a version of '{name}': {exc}") from exc
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise VersionConflict(f"could not allocate a version of '{name}'")  # pragma: no cover

    def _identical(self, conn: Connection, record: dict[str, Any]) -> int | None:
        """The oldest version of the record's model with its digest, flavor and flavor options."""
        rows = conn.execute(
            sa.select(versions_t.c.version, versions_t.c.record)
            .where(versions_t.c.name == record["name"], versions_t.c.digest == record["digest"])
            .order_by(versions_t.c.version)
        ).all()
        want = _settings_key(record)
        for version, stored in rows:
            if _settings_key(stored) == want:
                return int(version)
        return None

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self.database.connect() as conn:
            row = conn.execute(
                sa.select(versions_t.c.record).where(versions_t.c.name == name, versions_t.c.version == version)
            ).first()
        if row is None:
            self._require_model(name)
            raise ModelNotFound(name, version=version)
        return _to_version(row[0])

    def latest_version(self, name: str) -> ModelVersion:
        with self.database.connect() as conn:
            row = conn.execute(
                sa.select(versions_t.c.record)
                .where(versions_t.c.name == name)
                .order_by(versions_t.c.version.desc())
                .limit(1)
            ).first()
        if row is None:
            raise ModelNotFound(name)
        return _to_version(row[0])

    def list_versions(self, name: str) -> list[ModelVersion]:
        with self.database.connect() as conn:
            rows = conn.execute(
                sa.select(versions_t.c.record).where(versions_t.c.name == name).order_by(versions_t.c.version)
            ).all()
        if not rows:
            self._require_model(name)
        return [_to_version(r[0]) for r in rows]

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model: name, latest version, version count, aliases, created_at."""
        with self.database.connect() as conn:
            counts = conn.execute(
                sa.select(versions_t.c.name, sa.func.max(versions_t.c.version), sa.func.count()).group_by(
                    versions_t.c.name
                )
            ).all()
            aliases = conn.execute(sa.select(aliases_t.c.name, aliases_t.c.alias, aliases_t.c.version)).all()
            created = dict(conn.execute(sa.select(models_t.c.name, models_t.c.created_at)).all())
        by_model: dict[str, dict[str, int]] = {}
        for n, a, v in aliases:
            by_model.setdefault(n, {})[a] = v
        return [
            {
                "name": n,
                "latest": int(latest),
                "versions": int(count),
                "aliases": by_model.get(n, {}),
                "created_at": created.get(n, ""),
            }
            for n, latest, count in sorted(counts)
        ]

    def _require_model(self, name: str) -> None:
        with self.database.connect() as conn:
            if conn.execute(sa.select(models_t.c.name).where(models_t.c.name == name)).first() is None:
                raise ModelNotFound(name)

    # -- aliases ---------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        with self.database.connect() as conn:
            rows = conn.execute(
                sa.select(aliases_t.c.alias, aliases_t.c.version).where(aliases_t.c.name == name)
            ).all()
        return {a: int(v) for a, v in rows}

    def resolve_alias(self, name: str, alias: str) -> int:
        with self.database.connect() as conn:
            v = conn.execute(
                sa.select(aliases_t.c.version).where(aliases_t.c.name == name, aliases_t.c.alias == alias)
            ).scalar()
        if v is None:
            self._require_model(name)
            raise ModelNotFound(name, alias=alias)
        return int(v)

    def set_alias(
        self, name: str, alias: str, version: int, action: str = "set", actor: str | None = None,
        note: str | None = None,
    ) -> AliasMove:
        """Point ``alias`` at ``version`` and append the move (by ``actor``, with ``note``) to its history."""
        with self.database.transaction() as conn:
            if not self._lock_model(conn, name, create=False):
                raise ModelNotFound(name)
            exists = conn.execute(
                sa.select(versions_t.c.version).where(versions_t.c.name == name, versions_t.c.version == version)
            ).first()
            if exists is None:
                raise ModelNotFound(name, version=version)
            return self._move(conn, name, alias, version, action, actor, note)

    def _move(
        self, conn: Connection, name: str, alias: str, version: int | None, action: str, actor: str | None,
        note: str | None = None,
    ) -> AliasMove:
        previous = conn.execute(
            sa.select(aliases_t.c.version).where(aliases_t.c.name == name, aliases_t.c.alias == alias)
        ).scalar()
        if previous is None and version is not None:
            conn.execute(aliases_t.insert().values(name=name, alias=alias, version=version))
        elif version is None:
            conn.execute(aliases_t.delete().where(aliases_t.c.name == name, aliases_t.c.alias == alias))
        else:
            conn.execute(
                aliases_t.update()
                .where(aliases_t.c.name == name, aliases_t.c.alias == alias)
                .values(version=version)
            )
        moved_at = now_iso()
        conn.execute(
            alias_history_t.insert().values(
                name=name, alias=alias, version=version, previous=previous, action=action, moved_at=moved_at,
                actor=actor, note=note,
            )
        )
        audit.append(conn, f"alias.{action}", f"{name}@{alias}",
                     details={"previous": previous, "version": version, "note": note})
        return AliasMove(name, alias, version, None if previous is None else int(previous), action, moved_at, actor,
                         note)

    def delete_alias(self, name: str, alias: str, actor: str | None = None) -> AliasMove:
        with self.database.transaction() as conn:
            if not self._lock_model(conn, name, create=False):
                raise ModelNotFound(name)
            self._require_alias(conn, name, alias)
            return self._move(conn, name, alias, None, "delete", actor)

    def _require_alias(self, conn: Connection, name: str, alias: str) -> int:
        v = conn.execute(
            sa.select(aliases_t.c.version).where(aliases_t.c.name == name, aliases_t.c.alias == alias)
        ).scalar()
        if v is None:
            raise ModelNotFound(name, alias=alias)
        return int(v)

    def rollback_alias(self, name: str, alias: str, actor: str | None = None) -> AliasMove:
        """Move ``alias`` back to the target it had before its latest move.

        History is replayed as a stack: a 'set' pushes, a 'rollback' pops, a
        'delete' clears; so rolling back twice walks two steps back.
        """
        with self.database.transaction() as conn:
            if not self._lock_model(conn, name, create=False):
                raise ModelNotFound(name)
            self._require_alias(conn, name, alias)
            stack = _replay(self._history(conn, name, alias))
            if len(stack) < 2:
                raise RegistryError(
                    f"alias '{alias}' of '{name}' has no earlier version to roll back to"
                )
            return self._move(conn, name, alias, stack[-2], "rollback", actor)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        with self.database.connect() as conn:
            return self._history(conn, name, alias)

    def _history(self, conn: Connection, name: str, alias: str | None) -> list[AliasMove]:
        q = sa.select(alias_history_t).where(alias_history_t.c.name == name)
        if alias is not None:
            q = q.where(alias_history_t.c.alias == alias)
        rows = conn.execute(q.order_by(alias_history_t.c.id)).mappings().all()
        return [
            AliasMove(r["name"], r["alias"], r["version"], r["previous"], r["action"], r["moved_at"], r["actor"],
                      r["note"])
            for r in rows
        ]


def _replay(history: list[AliasMove]) -> list[int]:
    stack: list[int] = []
    for move in history:
        if move.action == "set" and move.version is not None:
            if not stack or stack[-1] != move.version:
                stack.append(move.version)
        elif move.action == "rollback" and stack:
            stack.pop()
        elif move.action == "delete":
            stack.clear()
    return stack


def _register_details(record: dict[str, Any], identical_to: int | None = None) -> dict[str, Any]:
    """What the audit log keeps of a registration: the runtime and the sha256 of the files' manifest."""
    details: dict[str, Any] = {"flavor": record.get("flavor"), "digest": record.get("digest"),
                               "files": len(record.get("files") or {})}
    if identical_to is not None:  # refused (IdenticalVersion) or reused by the caller: no version made
        details["identical_to"] = identical_to
    return details


def _settings_key(rec: dict[str, Any]) -> str:
    """What decides how the same files behave: the runtime, its options and the request policy
    kept with the signature (``extra_fields``), JSON-normalised."""
    policy = (rec.get("signature") or {}).get("extra_fields", "refuse")
    return json.dumps([rec.get("flavor"), rec.get("flavor_meta") or {}, policy], sort_keys=True, default=str)


def _to_version(rec: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=rec["name"],
        version=int(rec["version"]),
        flavor=rec["flavor"],
        digest=rec["digest"],
        files=dict(rec["files"]),
        signature=Signature.from_dict(rec["signature"]),
        flavor_meta=dict(rec.get("flavor_meta") or {}),
        description=rec.get("description", ""),
        tags=dict(rec.get("tags") or {}),
        metrics=dict(rec.get("metrics") or {}),
        lineage=dict(rec.get("lineage") or {}),
        packages=dict(rec.get("packages") or {}),
        created_at=rec.get("created_at", ""),
        artifact_uri=rec.get("artifact_uri", ""),
        check_set=dict(rec.get("check_set") or {}),
    )
