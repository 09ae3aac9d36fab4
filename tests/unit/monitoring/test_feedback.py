"""Feedback joined to kept predictions: ServedRecorder and FeedbackStore on a real SQLite database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.metrics import accuracy_score

from shipyard.context import RequestContext
from shipyard.errors import FeedbackNotFound, InvalidInput
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.feedback import (
    FeedbackStore,
    ServedRecorder,
    parse_item,
    parse_items,
    shadow_prediction_id,
)
from shipyard.monitoring.quality import quality
from shipyard.monitoring.tables import feedback_t, served_t
from shipyard.registry.database import Database

DAY = 86_400.0
T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield database
    finally:
        database.close()


def event(outputs: dict[str, Any], *, at: float = T0, request_id: str = "r", arm: str = "champion",
          shadow: bool = False, revision: int | None = None, version: int = 1, model: str = "m",
          outcome: str = "ok", ctx: RequestContext | None = None) -> PredictionEvent:
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    return PredictionEvent(
        context=ctx or RequestContext.new("rest", request_id), model=model, version=version, route=arm,
        inputs=None, outputs=arrays if outcome == "ok" else None, started_at=at, latency_s=0.001,
        outcome=outcome, rows=len(next(iter(arrays.values()))), shadow=shadow, revision=revision,
    )


def rows(db: Database, table: sa.Table) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(*table.primary_key.columns)))


def test_recorder_keeps_one_row_per_predicted_row_with_its_label_output_and_score(db: Database) -> None:
    recorder = ServedRecorder(db)
    e = event({"proba": [[0.2, 0.8], [0.9, 0.1]], "label": [1, 0]}, revision=3)
    recorder.observe([e, event({"label": [1]}, outcome="internal")])
    recorder.flush()
    kept = rows(db, served_t)
    assert [(r.row, r.prediction, r.score, r.arm, r.revision, r.at) for r in kept] == [
        (0, 1, 0.8, "champion", 3, T0), (1, 0, 0.1, "champion", 3, T0)]
    assert {r.prediction_id for r in kept} == {e.context.prediction_id}


def test_recorder_uses_the_configured_output_and_keeps_strings_and_nan_as_json(db: Database) -> None:
    recorder = ServedRecorder(db, output="y")
    recorder.observe([event({"first": [1.5, 2.5], "y": np.array([b"a", b"b"], dtype=object)}),
                      event({"first": [1.0], "y": [np.nan]}, request_id="r2")])
    recorder.flush()
    assert sorted(r.prediction for r in rows(db, served_t) if r.prediction is not None) == ["a", "b"]
    assert ServedRecorder(db).flush() is None  # nothing buffered: nothing written


def test_recorder_buffers_until_flush_seconds_then_writes_once(db: Database) -> None:
    now = [T0]
    recorder = ServedRecorder(db, flush_seconds=1.0, clock=lambda: now[0])
    recorder.observe([event({"label": [1]})])
    assert recorder.pending == 1 and rows(db, served_t) == []
    now[0] += 1.0
    recorder.observe([event({"label": [0]}, request_id="r2")])
    assert recorder.pending == 0 and len(rows(db, served_t)) == 2


def test_with_its_writer_thread_the_recorder_never_writes_on_the_observers_thread(db: Database) -> None:
    now = [T0]
    recorder = ServedRecorder(db, flush_seconds=0.05, clock=lambda: now[0])
    recorder.start_writer()
    try:
        now[0] += 10.0  # past flush_seconds: without the writer, observe would write right here
        observer_thread_writes = []
        original = recorder.flush
        recorder.flush = lambda: (observer_thread_writes.append(threading.current_thread().name), original())[1]
        recorder.observe([event({"label": [1, 0]})])
        assert "MainThread" not in observer_thread_writes
        deadline = time.monotonic() + 10
        while len(rows(db, served_t)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rows(db, served_t)) == 2  # the writer thread wrote them
        recorder.observe([event({"label": [1]}, request_id="r2")])
    finally:
        recorder.stop_writer()  # writes what is left
    assert len(rows(db, served_t)) == 3 and recorder.pending == 0


def test_a_failed_flush_keeps_the_rows_and_a_full_buffer_drops_and_counts(db: Database,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = ServedRecorder(db, max_rows=3)
    first = event({"label": [1, 0]})
    recorder.observe([first])
    broken = Database.transaction

    def fail(self: Database) -> Any:
        raise sa.exc.OperationalError("insert", {}, Exception("database is locked"))

    monkeypatch.setattr(Database, "transaction", fail)
    recorder.flush()
    assert recorder.pending == 2
    recorder.observe([event({"label": [1, 1]}, request_id="r2")])
    assert recorder.pending == 3 and recorder.dropped == 1
    monkeypatch.setattr(Database, "transaction", broken)
    recorder.flush()
    assert recorder.pending == 0 and len(rows(db, served_t)) == 3
    recorder.observe([first])  # the same prediction again: ignored, not an error
    recorder.flush()
    assert len(rows(db, served_t)) == 3


def test_parse_item_names_the_field_at_fault() -> None:
    assert parse_item({"request_id": "r", "reward": 1, "time": "2024-01-01T00:00:00Z"}).time == 1704067200.0
    cases = [
        ({"label": 1}, "feedback[0].prediction_id"),
        ({"prediction_id": "p", "request_id": "r", "label": 1}, "feedback[0].prediction_id"),
        ({"prediction_id": "p"}, "feedback[0].label"),
        ({"prediction_id": "p", "label": [1]}, "feedback[0].label"),
        ({"prediction_id": "p", "label": 1, "row": -1}, "feedback[0].row"),
        ({"prediction_id": "p", "reward": float("nan")}, "feedback[0].reward"),
        ({"prediction_id": "p", "label": 1, "time": "yesterday"}, "feedback[0].time"),
        ({"prediction_id": "p", "label": 1, "extra": 1}, "feedback[0].extra"),
        ({"prediction_id": "p" * 65, "label": 1}, "feedback[0].prediction_id"),
        ("text", "feedback[0]"),
    ]
    for doc, field in cases:
        with pytest.raises(InvalidInput) as info:
            parse_item(doc, 0)
        assert info.value.field == field, doc
    for body in ([], {"feedback": []}, {"feedback": {}}, {"items": []}):
        with pytest.raises(InvalidInput):
            parse_items(body)


def make_store(db: Database, **options: Any) -> FeedbackStore:
    """A store whose clock reads a minute after the predictions (T0)."""
    return FeedbackStore(db, **{"clock": lambda: T0 + 60, **options})


def served(db: Database, *events: PredictionEvent) -> None:
    recorder = ServedRecorder(db)
    recorder.observe(list(events))
    recorder.flush()


def test_feedback_is_idempotent_per_prediction_row_and_source(db: Database) -> None:
    e = event({"label": [1, 0]})
    served(db, e)
    store = FeedbackStore(db, clock=lambda: T0 + 60)
    pid = e.context.prediction_id
    first = store.submit([parse_item({"prediction_id": pid, "row": 1, "label": 0})])
    assert [(o.outcome, o.rows) for o in first] == [("accepted", 1)]
    again = store.submit([parse_item({"prediction_id": pid, "row": 1, "label": 1})])  # a different label
    assert [o.outcome for o in again] == ["duplicate"]
    other = store.submit([parse_item({"prediction_id": pid, "row": 1, "label": 1, "source": "reviewer"})])
    assert [o.outcome for o in other] == ["accepted"]
    kept = rows(db, feedback_t)
    assert [(r.source, r.label) for r in kept] == [("default", 0), ("reviewer", 1)]
    assert store.counts() == {("m", "accepted"): 2, ("m", "duplicate"): 1}


def test_an_item_without_row_labels_every_row_of_the_prediction(db: Database) -> None:
    e = event({"label": [1, 0, 1]})
    served(db, e)
    out = make_store(db).submit([parse_item({"prediction_id": e.context.prediction_id, "label": 1})])
    assert (out[0].outcome, out[0].rows) == ("accepted", 3)


def test_a_request_id_reaches_every_prediction_of_the_request_shadows_included(db: Database) -> None:
    ctx = RequestContext.new("rest", "req-1")
    primary = event({"label": [1]}, ctx=ctx, arm="champion")
    shadow = event({"label": [0]}, ctx=ctx, arm="challenger", shadow=True, version=2)
    elsewhere = event({"label": [1]}, request_id="req-2")
    served(db, primary, shadow, elsewhere)
    out = make_store(db).submit([parse_item({"request_id": "req-1", "label": 1})])
    assert (out[0].outcome, out[0].rows) == ("accepted", 2)
    kept = {r.prediction_id for r in rows(db, feedback_t)}
    assert kept == {ctx.prediction_id, shadow_prediction_id(ctx.prediction_id, "challenger")}
    groups = quality(db, "m")["groups"]
    assert sorted((g["arm"], g["metrics"]["accuracy"]) for g in groups if g["labelled"]) == [
        ("challenger", 0.0), ("champion", 1.0)]


def test_a_prediction_id_reaches_its_shadow_copies_too(db: Database) -> None:
    ctx = RequestContext.new("rest", "req-1")
    served(db, event({"label": [1]}, ctx=ctx), event({"label": [1]}, ctx=ctx, arm="b", shadow=True))
    out = make_store(db).submit([parse_item({"prediction_id": ctx.prediction_id, "label": 1})])
    assert out[0].rows == 2


def test_late_labels_are_stored_but_never_counted(db: Database) -> None:
    on_time, late = event({"label": [1]}, request_id="a"), event({"label": [1]}, request_id="b")
    served(db, on_time, late)
    store = make_store(db, join_window_days=14)
    out = store.submit([
        parse_item({"prediction_id": on_time.context.prediction_id, "label": 1, "time": T0 + 13 * DAY}),
        parse_item({"prediction_id": late.context.prediction_id, "label": 0, "time": T0 + 15 * DAY}),
    ])
    assert [o.outcome for o in out] == ["accepted", "late"]
    assert [r.late for r in rows(db, feedback_t) if r.prediction_id == late.context.prediction_id] == [True]
    (group,) = quality(db, "m")["groups"]
    assert (group["served"], group["labelled"], group["metrics"]["accuracy"]) == (2, 1, 1.0)


def test_unknown_ids_raise_and_apply_nothing_when_all_or_nothing(db: Database) -> None:
    e = event({"label": [1]})
    served(db, e)
    store = make_store(db)
    items = [parse_item({"prediction_id": e.context.prediction_id, "label": 1}),
             parse_item({"prediction_id": "nope", "label": 1})]
    with pytest.raises(FeedbackNotFound) as info:
        store.submit(items, all_or_nothing=True)
    assert info.value.unknown == [(1, "nope")] and info.value.field == "feedback[1]"
    assert rows(db, feedback_t) == []
    assert [o.outcome for o in store.submit(items)] == ["accepted", "unknown"]


def test_a_prediction_still_in_the_recorders_buffer_is_found(db: Database) -> None:
    recorder = ServedRecorder(db, flush_seconds=3600)
    e = event({"label": [1]})
    recorder.observe([e])
    store = make_store(db, flush=recorder.flush)
    assert store.submit([parse_item({"prediction_id": e.context.prediction_id, "label": 1})],
                        all_or_nothing=True)[0].outcome == "accepted"


def test_feedback_rewards_go_to_the_arm_counters_of_feedback_policies(db: Database) -> None:
    served(db, event({"label": [1, 0]}, revision=4, arm="a", request_id="r1"),
           event({"label": [1]}, revision=4, arm="b", request_id="r2", version=2),
           event({"label": [1]}, model="other", revision=1, request_id="r3"))
    calls: list[tuple[Any, ...]] = []
    store = make_store(db, reward_of=lambda model: "feedback" if model == "m" else "output:x",
                          add_rewards=lambda *args: calls.append(args))
    store.submit([parse_item({"request_id": "r1", "label": 1}), parse_item({"request_id": "r2", "reward": 2.5}),
                  parse_item({"request_id": "r3", "label": 1})])
    assert sorted(calls) == [("m", 4, "a", 1, 2, 1.0, 1.0, T0), ("m", 4, "b", 2, 1, 2.5, 6.25, T0)]
    store.submit([parse_item({"request_id": "r1", "label": 1})])  # a duplicate adds nothing
    assert len(calls) == 2


def test_prune_drops_predictions_older_than_the_join_window(db: Database) -> None:
    served(db, event({"label": [1]}, at=T0, request_id="old"), event({"label": [1]}, at=T0 + 10 * DAY))
    store = FeedbackStore(db, join_window_days=7)
    assert store.prune(now=T0 + 12 * DAY) == 1
    assert [r.request_id for r in rows(db, served_t)] == ["r"]


@pytest.mark.slow
def test_100000_predictions_60_percent_labelled_give_sklearns_accuracy_and_resending_changes_nothing(
    db: Database,
) -> None:
    rng = np.random.default_rng(7)
    n_events, per_event = 10_000, 10
    at = T0 + np.sort(rng.uniform(0, 30 * DAY, n_events))
    predictions = rng.integers(0, 2, size=(n_events, per_event))
    recorder = ServedRecorder(db, max_rows=200_000)
    events = [event({"label": predictions[i]}, at=float(at[i]), request_id=f"r{i}") for i in range(n_events)]
    recorder.observe(events)
    recorder.flush()
    # 60 % of the rows labelled, each after a random delay of up to 7 days (the clock is the item's time)
    chosen = rng.random((n_events, per_event)) < 0.6
    truth = np.where(rng.random((n_events, per_event)) < 0.8, predictions, 1 - predictions)
    delays = rng.uniform(0, 7 * DAY, (n_events, per_event))
    items, joined_pred, joined_true = [], [], []
    for i, j in zip(*np.nonzero(chosen), strict=True):
        items.append(parse_item({"prediction_id": events[i].context.prediction_id, "row": int(j),
                                 "label": int(truth[i, j]), "time": float(at[i] + delays[i, j])}))
        joined_pred.append(int(predictions[i, j]))
        joined_true.append(int(truth[i, j]))
    store = FeedbackStore(db, clock=lambda: T0 + 60 * DAY)
    for start in range(0, len(items), 10_000):
        outcomes = store.submit(items[start:start + 10_000])
        assert {o.outcome for o in outcomes} == {"accepted"}
    first = quality(db, "m")
    (group,) = first["groups"]
    assert group["served"] == n_events * per_event
    assert group["labelled"] == len(items)
    assert group["metrics"]["accuracy"] == accuracy_score(joined_true, joined_pred)
    assert group["coverage"] == len(items) / (n_events * per_event)
    assert 0 < group["label_delay_seconds"]["median"] < group["label_delay_seconds"]["p90"] <= 7 * DAY
    for start in range(0, len(items), 10_000):  # every label again: all duplicates, nothing changes
        assert {o.outcome for o in store.submit(items[start:start + 10_000])} == {"duplicate"}
    assert quality(db, "m") == first
