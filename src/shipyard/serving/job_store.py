"""Where asynchronous requests are tracked: one table in the registry's database.

Keeping it beside the registry means every server replica that shares a
PostgreSQL registry also shares job state: a job submitted to one replica can
be fetched from any other, and whichever replica collects the result records
it. With the embedded SQLite registry it lives in ``SHIPYARD_HOME``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from shipyard.errors import JobNotFound
from shipyard.registry.database import Database

# The table's schema is created and upgraded by the registry's migrations (revision 0001).
_metadata = sa.MetaData()
jobs = sa.Table(
    "async_jobs",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # queued | done | failed
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("result", sa.LargeBinary),  # the stream's result or dead-letter document
    sa.Column("callback", sa.Text),
    sa.Column("callback_status", sa.Text),
)

QUEUED, DONE, FAILED = "queued", "done", "failed"


@dataclass
class Job:
    id: str
    model: str
    status: str
    submitted_at: float
    finished_at: float | None
    result: dict[str, Any] | None
    callback: str | None
    callback_status: str | None


class JobStore:
    """Asynchronous jobs in the ``async_jobs`` table of ``database``."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, job_id: str, model: str, callback: str | None) -> None:
        with self.database.transaction() as conn:
            conn.execute(jobs.insert().values(id=job_id, model=model, status=QUEUED, submitted_at=time.time(),
                                              callback=callback))

    def finish(self, job_id: str, model: str, failed: bool, result: bytes) -> Job:
        """Record a result; a result for a job this store never saw (sent by another system) is kept too."""
        status = FAILED if failed else DONE
        with self.database.transaction() as conn:
            done = conn.execute(
                jobs.update().where(jobs.c.id == job_id).values(status=status, finished_at=time.time(), result=result)
            )
            if done.rowcount == 0:
                now = time.time()
                conn.execute(jobs.insert().values(id=job_id, model=model, status=status, submitted_at=now,
                                                  finished_at=now, result=result))
        return self.get(job_id)

    def set_callback_status(self, job_id: str, status: str) -> None:
        with self.database.transaction() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(callback_status=status))

    def get(self, job_id: str) -> Job:
        with self.database.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(
            row["id"], row["model"], row["status"], row["submitted_at"], row["finished_at"],
            orjson.loads(row["result"]) if row["result"] is not None else None, row["callback"],
            row["callback_status"],
        )
