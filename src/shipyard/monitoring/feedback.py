"""Feedback: labels and rewards sent after the fact, joined to the predictions they are about.

Two halves share the tables of migration 0005 (``monitoring/tables.py``):

* ``ServedRecorder`` is a ``PredictionObserver``: for every successful prediction it
  keeps one ``shipyard_served`` row per predicted row (model, version, arm, policy
  revision, time, that row's value of the label output and, for a binary classifier,
  its positive-class probability). Rows are buffered and written at most every
  ``flush_seconds`` in one transaction (insert-or-ignore, so a retried write adds
  nothing twice); a failed write is kept and retried; a full buffer drops and counts.
  A shadow arm's copy shares the request's prediction id, so its rows are kept under
  ``PREDICTION_ID~ARM-DIGEST`` (``shadow_prediction_id``): feedback about the
  prediction reaches the shadows too.
* ``FeedbackStore`` takes a batch of ``FeedbackItem`` (``parse_item`` reads one from
  JSON) and answers one ``Outcome`` per item:

  - ``accepted``: stored for at least one row, within the join window;
  - ``duplicate``: every row already had feedback from this source (nothing changes:
    the first send wins, whatever the second says);
  - ``late``: observed more than ``join_window_days`` after the prediction: stored with
    ``late = true``, never counted in a metric or a reward;
  - ``unknown``: no kept prediction has this id (never served, or pruned);
  - ``invalid``: the item cannot be read (``parse_item`` says why).

  An item names a ``prediction_id`` (the id a response carries; its shadow copies
  too) or a ``request_id`` (every prediction of that request, shadows included);
  ``row`` narrows it to one row of a multi-row prediction, else every row gets the
  item's label. Items for traffic policies whose reward is ``feedback`` also add
  their rewards to the arms' counters (``add_rewards``): the item's ``reward``, else
  1 when the label equals the prediction and 0 when it does not.

Nothing here imports the rollout package (it sits above monitoring): the server passes
``reward_of`` and ``add_rewards`` in.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from shipyard.errors import FeedbackNotFound, InvalidInput
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.tables import feedback_t, served_t
from shipyard.registry.database import Database

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SOURCE",
    "MAX_ITEMS",
    "FeedbackItem",
    "FeedbackStore",
    "Outcome",
    "ServedRecorder",
    "parse_item",
    "parse_items",
    "same_label",
    "shadow_prediction_id",
]

OutcomeKind = Literal["accepted", "duplicate", "late", "unknown", "invalid"]
OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "late", "unknown", "invalid")
DEFAULT_SOURCE = "default"
"""The source of items that name none: resending them is a duplicate whoever sends it."""
MAX_ITEMS = 10_000
"""Items one request may carry."""
_DAY = 86_400.0
_CHUNK = 500  # ids per IN (...) clause


def shadow_prediction_id(prediction_id: str, arm: str) -> str:
    """The key a shadow arm's copy of a prediction is kept under (fits the 64-character column)."""
    return f"{prediction_id[:48]}~{hashlib.sha1(arm.encode()).hexdigest()[:12]}"


# -- recording what was served ------------------------------------------------------------------


def _label_array(outputs: Mapping[str, np.ndarray], output: str) -> np.ndarray | None:
    """The output compared with labels: ``output`` if named and present, else the first with one value per row."""
    if output:
        array = outputs.get(output)
        return None if array is None or array.ndim == 0 else array.reshape(len(array), -1)[:, 0]
    for array in outputs.values():
        if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
            return array.reshape(len(array))
    return None


def _score_array(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The positive-class probabilities: column 1 of the first float output of shape (n, 2)."""
    for array in outputs.values():
        if array.ndim == 2 and array.shape[1] == 2 and array.dtype.kind == "f":
            return array[:, 1]
    return None


def _json_values(array: np.ndarray) -> list[Any]:
    """Plain JSON values of a 1-D array: numbers (non-finite ones as None), strings, booleans."""
    if array.dtype.kind == "f":
        return [v if math.isfinite(v) else None for v in array.astype(float).tolist()]
    if array.dtype.kind in "biu":
        return array.tolist()  # type: ignore[no-any-return]
    out: list[Any] = []
    for v in array.tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        elif not isinstance(v, str | int | bool | float | type(None)):
            v = str(v)
        out.append(v)
    return out


def served_rows(event: PredictionEvent, output: str = "") -> list[dict[str, Any]]:
    """The ``shipyard_served`` rows of one event (none for a failure or a prediction without a label output)."""
    if event.outcome != "ok" or not event.outputs:
        return []
    labels = _label_array(event.outputs, output)
    if labels is None or len(labels) == 0:
        return []
    scores = _score_array(event.outputs)
    if scores is not None and len(scores) != len(labels):
        scores = None
    pid = event.context.prediction_id
    if event.shadow:
        pid = shadow_prediction_id(pid, event.route)
    values = _json_values(labels)
    score_values = _json_values(scores) if scores is not None else [None] * len(values)
    common = {"prediction_id": pid, "request_id": event.context.request_id[:128], "model": event.model,
              "version": event.version, "arm": event.route[:128], "revision": event.revision,
              "at": float(event.started_at)}
    return [{**common, "row": i, "prediction": v, "score": s}
            for i, (v, s) in enumerate(zip(values, score_values, strict=True))]


def _insert_ignoring(database: Database, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` on SQLite or PostgreSQL."""
    # each dialect imported when used: PostgreSQL's pulls in its driver glue (40 ms of a SQLite server's start)
    if database.dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing()
    if database.dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"feedback needs SQLite or PostgreSQL, not {database.dialect}")


class ServedRecorder:
    """A ``PredictionObserver`` keeping each predicted row so feedback can join it.

    Args:
        database: the registry database (migration 0005 made the tables).
        output: the output compared with labels; empty: the first with one value per row.
        flush_seconds: the least time between two writes; rows in between wait in memory.
        max_rows: rows the buffer holds (about 1 KB each); more are dropped and counted in ``dropped``.
        clock: wall-clock seconds, for the flush cadence.
    """

    def __init__(self, database: Database, *, output: str = "", flush_seconds: float = 1.0,
                 max_rows: int = 20_000, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.output = output
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self._clock = clock
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = clock()
        self._writer: threading.Thread | None = None
        self._stop_writer = threading.Event()
        self._failing = False
        self.dropped = 0
        """Rows not kept because the buffer was full (the database was down for a while)."""
        self.written = 0
        """Rows handed to the database so far (those already there are ignored by it)."""

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Buffer the rows of the successful events; write when ``flush_seconds`` have passed."""
        rows = [row for event in events for row in served_rows(event, self.output)]
        with self._lock:
            room = self.max_rows - len(self._rows)
            if len(rows) > room:
                self.dropped += len(rows) - max(room, 0)
                rows = rows[:max(room, 0)]
            self._rows.extend(rows)
        if self._writer is None and self._clock() - self._last_flush >= self.flush_seconds:
            self.flush()

    def start_writer(self) -> None:
        """Write from a thread of its own from now on: the observers' thread never waits for the database.

        Inserting costs about 16 us a row on SQLite, so a server predicting many rows per
        request would otherwise hold up every observer (metrics, drift) behind the inserts
        while its queue of events, and memory, grew. With the writer, a database slower than
        the traffic fills the bounded buffer and the excess is dropped and counted.
        """
        if self._writer is None:
            self._stop_writer.clear()
            self._writer = threading.Thread(target=self._write_loop, name="shipyard-served-writer", daemon=True)
            self._writer.start()

    def stop_writer(self) -> None:
        """Stop the writer thread, then write what is buffered."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._stop_writer.set()
            writer.join()
        self.flush()

    def _write_loop(self) -> None:
        while not self._stop_writer.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # flush keeps its rows on a database failure; anything else must not end the loop
                logger.exception("writing served predictions failed; trying again")

    def flush(self) -> None:
        """Write the buffered rows in one transaction; on failure keep them (ahead of newer ones) for the next try."""
        with self._flush_lock:
            self._last_flush = self._clock()
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                with self.database.transaction() as conn:
                    conn.execute(_insert_ignoring(self.database, served_t), rows)
            except Exception:
                with self._lock:
                    kept = (rows + self._rows)[: self.max_rows]
                    self.dropped += len(rows) + len(self._rows) - len(kept)
                    self._rows = kept
                if not self._failing:
                    self._failing = True
                    logger.exception("keeping served predictions failed; holding them and trying again")
                return
            self.written += len(rows)
            if self._failing:
                self._failing = False
                logger.info("served predictions written again")

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._rows)


# -- feedback items -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackItem:
    """One label or reward about a prediction (or every prediction of a request)."""

    prediction_id: str | None = None
    request_id: str | None = None
    row: int | None = None
    """One row of a multi-row prediction; None: every row."""
    label: Any = None
    """A JSON scalar (number, string, boolean); None: no label (a reward alone)."""
    reward: float | None = None
    time: float | None = None
    """When the outcome was observed (epoch seconds); None: when it was received."""
    source: str = DEFAULT_SOURCE

    @property
    def ident(self) -> str:
        return self.prediction_id if self.prediction_id is not None else str(self.request_id)


@dataclass(frozen=True)
class Outcome:
    """What became of one item."""

    outcome: OutcomeKind
    rows: int = 0
    """Rows the item was stored for now (0 for a duplicate, unknown or invalid item)."""
    reason: str | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "rows": self.rows}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


_KEYS = frozenset({"prediction_id", "request_id", "row", "label", "reward", "time", "source"})


def _bad(index: int | None, key: str, message: str, got: Any = None) -> InvalidInput:
    where = "feedback" if index is None else f"feedback[{index}]"
    field = where if not key else f"{where}.{key}"
    return InvalidInput(f"{field}: {message}", field=field, got=got)


def _time_of(value: Any, index: int | None) -> float:
    if isinstance(value, bool) or value is None:
        raise _bad(index, "time", "give epoch seconds or an ISO-8601 time")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise _bad(index, "time", "must be finite, non-negative epoch seconds", value)
        return float(value)
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _bad(index, "time", "give epoch seconds or an ISO-8601 time", value[:100]) from None
        return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()
    raise _bad(index, "time", "give epoch seconds or an ISO-8601 time", type(value).__name__)


def _id(doc: Mapping[str, Any], key: str, limit: int, index: int | None) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise _bad(index, key, f"must be a non-empty string of at most {limit} characters", str(value)[:100])
    return value


def parse_item(doc: Any, index: int | None = None) -> FeedbackItem:
    """A ``FeedbackItem`` from its JSON object.

    ``{prediction_id | request_id, row?, label | reward, time?, source?}``: exactly one id;
    a label (a number, string or boolean), a reward (a finite number) or both; ``time``
    as epoch seconds or ISO-8601 (UTC unless it says); ``source`` names who observed it
    (feedback is idempotent per prediction, row and source).

    Raises:
        InvalidInput: naming the field (``feedback[INDEX].KEY``) at fault.
    """
    if not isinstance(doc, dict):
        raise _bad(index, "", "each feedback item must be a JSON object", type(doc).__name__)
    extra = sorted(set(doc) - _KEYS)
    if extra:
        raise _bad(index, str(extra[0])[:50], f"unknown field; an item takes {', '.join(sorted(_KEYS))}")
    prediction_id = _id(doc, "prediction_id", 64, index)
    request_id = _id(doc, "request_id", 128, index)
    if (prediction_id is None) == (request_id is None):
        raise _bad(index, "prediction_id", "give exactly one of prediction_id and request_id")
    row = doc.get("row")
    if row is not None and (isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < 2**31):
        raise _bad(index, "row", "must be a row index (an integer, 0 or more)", row)
    label = doc.get("label")
    if label is not None:
        if isinstance(label, str):
            if len(label) > 1000 or "\x00" in label:
                raise _bad(index, "label", "a string label holds at most 1000 characters", label[:100])
        elif isinstance(label, float):
            if not math.isfinite(label):
                raise _bad(index, "label", "must be finite", label)
        elif not isinstance(label, bool | int):
            raise _bad(index, "label", "must be a number, a string or a boolean", type(label).__name__)
        elif isinstance(label, int) and not isinstance(label, bool) and abs(label) >= 2**63:
            raise _bad(index, "label", "an integer label must fit 64 bits", label)
    reward = doc.get("reward")
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward) \
                or abs(reward) > 1e300:
            raise _bad(index, "reward", "must be a finite number", reward)
        reward = float(reward)
    if label is None and reward is None:
        raise _bad(index, "label", "give a label, a reward or both")
    at = _time_of(doc["time"], index) if doc.get("time") is not None else None
    source = doc.get("source", DEFAULT_SOURCE)
    if not isinstance(source, str) or not source or len(source) > 128 or "\x00" in source:
        raise _bad(index, "source", "must be a non-empty string of at most 128 characters", str(source)[:100])
    return FeedbackItem(prediction_id, request_id, row, label, reward, at, source)


def parse_items(doc: Any) -> list[FeedbackItem]:
    """The items of a ``POST /v1/feedback`` body, ``{"feedback": [item, ...]}``.

    Raises:
        InvalidInput: the body or one item cannot be read (nothing of it is applied).
    """
    if not isinstance(doc, dict) or set(doc) != {"feedback"} or not isinstance(doc["feedback"], list):
        raise InvalidInput('the body must be {"feedback": [item, ...]}', field="feedback",
                           expected='{"feedback": [...]}', got=type(doc).__name__)
    items = doc["feedback"]
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidInput(f"send 1 to {MAX_ITEMS} feedback items at a time, not {len(items)}", field="feedback",
                           got=len(items))
    return [parse_item(item, i) for i, item in enumerate(items)]


def same_label(prediction: Any, label: Any) -> bool:
    """Whether a label names the predicted class (1 == 1.0 == True; other types compared as text)."""
    p, lab = _class_of(prediction), _class_of(label)
    if type(p) is type(lab):
        return bool(p == lab)
    return str(p) == str(lab)


def _class_of(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Served:
    prediction_id: str
    row: int
    request_id: str | None
    model: str
    version: int
    arm: str
    revision: int | None
    at: float
    prediction: Any


_SERVED_COLUMNS = (served_t.c.prediction_id, served_t.c.row, served_t.c.request_id, served_t.c.model,
                   served_t.c.version, served_t.c.arm, served_t.c.revision, served_t.c.at, served_t.c.prediction)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i:i + _CHUNK]


class FeedbackStore:
    """Applies feedback to the kept predictions (SQLite or PostgreSQL), idempotently.

    Args:
        database: the registry database (migration 0005 made the tables).
        join_window_days: feedback observed later than this after its prediction is late.
        flush: called before an id is declared unknown (the server flushes its ``ServedRecorder``,
            so feedback about a prediction still in its buffer finds it).
        reward_of: ``reward_of(model)``, the reward setting of the model's traffic policy.
        add_rewards: ``add_rewards(model, revision, arm, version, n, total, total_of_squares, at)``,
            called per arm for accepted items of models whose reward is ``feedback``.
        clock: wall-clock seconds (the receipt time of items without a ``time``).
    """

    def __init__(
        self,
        database: Database,
        *,
        join_window_days: float = 14.0,
        flush: Callable[[], None] | None = None,
        reward_of: Callable[[str], str | None] = lambda model: None,
        add_rewards: Callable[..., None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.join_window_seconds = join_window_days * _DAY
        self._flush = flush
        self.reward_of = reward_of
        self.add_rewards = add_rewards
        self._clock = clock
        self._counts: Counter[tuple[str, str]] = Counter()
        self._counts_lock = threading.Lock()

    # -- counters -----------------------------------------------------------------------------

    def counts(self) -> dict[tuple[str, str], int]:
        """Items per (model, outcome) since start (model "" when no prediction was found)."""
        with self._counts_lock:
            return dict(self._counts)

    def count(self, outcomes: Iterable[Outcome]) -> None:
        with self._counts_lock:
            for o in outcomes:
                self._counts[(o.model or "", o.outcome)] += 1

    # -- applying --------------------------------------------------------------------------------

    def submit(self, items: Sequence[FeedbackItem], *, all_or_nothing: bool = False,
               now: float | None = None) -> list[Outcome]:
        """Apply ``items``; one ``Outcome`` per item, in order.

        Args:
            all_or_nothing: raise ``FeedbackNotFound`` and apply nothing when any item is unknown
                (what ``POST /v1/feedback`` does); otherwise unknown items get an ``unknown`` outcome.
            now: the receipt time (default: the clock).

        Raises:
            FeedbackNotFound: with ``all_or_nothing``, some item names no kept prediction.
        """
        received = self._clock() if now is None else now
        if self._flush is not None:
            self._flush()
        targets = self._targets(items)
        if any(not t for t in targets) and self._flush is not None:
            self._flush()  # a prediction may have reached the buffer since (the observers run in a thread)
            again = self._targets([items[i] for i, t in enumerate(targets) if not t])
            it = iter(again)
            targets = [t if t else next(it) for t in targets]
        unknown = [(i, items[i].ident) for i, t in enumerate(targets) if not t]
        if unknown and all_or_nothing:
            self.count(Outcome("unknown") for _ in unknown)
            raise FeedbackNotFound(unknown, len(items))
        outcomes = self._apply(items, targets, received)
        self.count(outcomes)
        return outcomes

    def _targets(self, items: Sequence[FeedbackItem]) -> list[list[_Served]]:
        """The kept rows each item is about (empty: unknown)."""
        by_pid: dict[str, list[_Served]] = {}
        by_rid: dict[str, list[_Served]] = {}
        pids = sorted({i.prediction_id for i in items if i.prediction_id is not None})
        rids = sorted({i.request_id for i in items if i.request_id is not None})
        with self.database.connect() as conn:
            for chunk in _chunks(pids):
                for r in conn.execute(sa.select(*_SERVED_COLUMNS).where(served_t.c.prediction_id.in_(chunk))):
                    by_pid.setdefault(r.prediction_id, []).append(_Served(*r))
            # the shadow copies of those predictions: kept under PID~DIGEST, found through the request id
            for chunk in _chunks(rids):
                for r in conn.execute(sa.select(*_SERVED_COLUMNS).where(served_t.c.request_id.in_(chunk))):
                    by_rid.setdefault(r.request_id, []).append(_Served(*r))
            shadow_rids = sorted({s.request_id for rows in by_pid.values() for s in rows if s.request_id} - set(rids))
            for chunk in _chunks(shadow_rids):  # only the shadow copies' rows come back
                for r in conn.execute(sa.select(*_SERVED_COLUMNS).where(
                        served_t.c.request_id.in_(chunk), served_t.c.prediction_id.contains("~", autoescape=True))):
                    by_rid.setdefault(r.request_id, []).append(_Served(*r))
        out: list[list[_Served]] = []
        for item in items:
            if item.prediction_id is not None:
                pid = item.prediction_id
                rows = list(by_pid.get(pid, []))
                if rows:
                    prefix = pid[:48] + "~"
                    rid = rows[0].request_id
                    rows += [s for s in by_rid.get(rid or "", []) if s.prediction_id.startswith(prefix)]
            else:
                rows = list(by_rid.get(item.request_id or "", []))
            if item.row is not None:
                rows = [s for s in rows if s.row == item.row]
            out.append(rows)
        return out

    def _apply(self, items: Sequence[FeedbackItem], targets: Sequence[list[_Served]],
               received: float) -> list[Outcome]:
        records: dict[tuple[str, int, str], dict[str, Any]] = {}
        for item, rows in zip(items, targets, strict=True):
            observed = item.time if item.time is not None else received
            for s in rows:
                key = (s.prediction_id, s.row, item.source)
                if key in records:
                    continue  # the same row twice in one batch: the first wins, as across batches
                records[key] = {
                    "prediction_id": s.prediction_id, "row": s.row, "source": item.source, "model": s.model,
                    "label": item.label if item.label is not None else sa.null(), "reward": item.reward,
                    "at": observed, "received_at": received,
                    "late": observed - s.at > self.join_window_seconds,
                }
        inserted: set[tuple[str, int, str]] = set()
        if records:
            stmt = _insert_ignoring(self.database, feedback_t).returning(
                feedback_t.c.prediction_id, feedback_t.c.row, feedback_t.c.source)
            ordered = [records[k] for k in sorted(records)]  # one lock order for concurrent writers
            with self.database.transaction() as conn:
                for i in range(0, len(ordered), 1000):
                    result = conn.execute(stmt, ordered[i:i + 1000])
                    inserted.update((r[0], r[1], r[2]) for r in result)
        outcomes: list[Outcome] = []
        rewards: dict[tuple[str, int, str, int], list[float]] = {}
        firsts: dict[tuple[str, int, str, int], float] = {}
        for item, rows in zip(items, targets, strict=True):
            if not rows:
                outcomes.append(Outcome("unknown", reason=f"no kept prediction or request has id {item.ident!r}"))
                continue
            mine = [s for s in rows if (s.prediction_id, s.row, item.source) in inserted]
            inserted.difference_update((s.prediction_id, s.row, item.source) for s in mine)
            on_time = [s for s in mine if not records[(s.prediction_id, s.row, item.source)]["late"]]
            model = rows[0].model
            if on_time:
                outcomes.append(Outcome("accepted", len(mine), model=model))
                self._collect_rewards(item, on_time, rewards, firsts)
            elif mine:
                window = self.join_window_seconds / _DAY
                outcomes.append(Outcome("late", len(mine), f"observed more than {window:g} days after the "
                                        "prediction: stored, not counted", model))
            else:
                outcomes.append(Outcome("duplicate", reason="already received from this source", model=model))
        self._send_rewards(rewards, firsts)
        return outcomes

    def _collect_rewards(self, item: FeedbackItem, rows: Sequence[_Served],
                         rewards: dict[tuple[str, int, str, int], list[float]],
                         firsts: dict[tuple[str, int, str, int], float]) -> None:
        if self.add_rewards is None:
            return
        for s in rows:
            if s.revision is None or self.reward_of(s.model) != "feedback":
                continue
            if item.reward is not None:
                value = item.reward
            elif item.label is not None and s.prediction is not None:
                value = 1.0 if same_label(s.prediction, item.label) else 0.0
            else:
                continue
            key = (s.model, s.revision, s.arm, s.version)
            rewards.setdefault(key, []).append(value)
            firsts[key] = min(firsts.get(key, s.at), s.at)

    def _send_rewards(self, rewards: Mapping[tuple[str, int, str, int], list[float]],
                      firsts: Mapping[tuple[str, int, str, int], float]) -> None:
        if self.add_rewards is None:
            return
        for (model, revision, arm, version), values in sorted(rewards.items()):
            try:
                self.add_rewards(model, revision, arm, version, len(values), float(sum(values)),
                                 float(sum(v * v for v in values)), firsts[(model, revision, arm, version)])
            except Exception:  # the feedback is stored; only the bandit's counters miss these
                logger.exception("adding %d feedback rewards to %s arm %s failed", len(values), model, arm)

    # -- upkeep -----------------------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Drop kept predictions older than the join window (feedback rows stay); how many were dropped."""
        cutoff = (self._clock() if now is None else now) - self.join_window_seconds
        with self.database.transaction() as conn:
            return int(conn.execute(sa.delete(served_t).where(served_t.c.at < cutoff)).rowcount or 0)
