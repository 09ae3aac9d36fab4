"""Retraining settings, the run store's rules (one in flight, one per trigger, min interval) and cron ticks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.registry import Registry
from shipyard.retraining.service import due_tick
from shipyard.retraining.spec import RetrainSpec
from shipyard.retraining.store import RunInFlight, RunStore, TooSoon, TriggerSeen


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.from_settings(Settings(home=tmp_path / "home"))
    yield reg
    reg.close()


def test_the_spec_reads_durations_shares_cron_and_limits() -> None:
    spec = RetrainSpec.parse({"train": "pkg.mod:train", "last": "7d", "label_delay": "2h", "holdout_share": 0.25,
                              "schedule": "0 3 * * 1", "on_alerts": ["acc"], "canary": False,
                              "limits": {"memory_mb": 512, "timeout_seconds": "10m"}})
    assert (spec.last, spec.label_delay, spec.holdout_share) == (7 * 86400, 7200, 0.25)
    assert spec.limits.memory_mb == 512 and spec.limits.timeout_seconds == 600
    assert spec.canary is False and spec.on_alerts == ("acc",)


@pytest.mark.parametrize(("doc", "names"), [
    ({"train": "no-colon"}, "retraining.train"),
    ({"last": "soon"}, "retraining.last"),
    ({"schedule": "61 * * * *"}, "retraining.schedule"),
    ({"holdout_share": 0.95}, "retraining.holdout_share"),
    ({"limits": {"memory": 1}}, "retraining.limits"),
    ({"trian": "m:f"}, "unknown key 'trian'"),
])
def test_a_bad_spec_is_refused_naming_the_key(doc: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        RetrainSpec.parse(doc)


def test_a_models_entry_with_a_bad_retraining_block_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="retraining.mode"):
        Settings.load(None, {}, models=({"ref": "m", "retraining": {"mode": "sometimes"}},))


def test_one_run_per_model_in_flight_until_it_is_final(registry: Registry) -> None:
    store = RunStore(registry.database, clock=Clock())
    first = store.create("m", trigger="hand")
    with pytest.raises(RunInFlight, match=first.id):
        store.create("m", trigger="hand")
    store.create("other", trigger="hand")  # another model is not held up
    store.update(first.id, state="failed", reason="x")
    assert store.create("m", trigger="hand").state == "queued"


def test_a_trigger_starts_one_run_and_min_interval_spaces_triggered_runs(registry: Registry) -> None:
    clock = Clock()
    store = RunStore(registry.database, clock=clock)
    run = store.create("m", trigger="alert", trigger_key="alert:7", min_interval=3600)
    store.update(run.id, state="rejected")
    with pytest.raises(TriggerSeen):
        store.create("m", trigger="alert", trigger_key="alert:7")
    clock.now += 60
    with pytest.raises(TooSoon):
        store.create("m", trigger="schedule", trigger_key="schedule:m:1", min_interval=3600)
    assert store.create("m", trigger="hand", min_interval=3600, force=True).trigger == "hand"


def test_a_run_whose_process_died_is_abandoned_after_the_stale_time(registry: Registry) -> None:
    clock = Clock()
    store = RunStore(registry.database, clock=clock, stale_seconds=100)
    dead = store.update(store.create("m", trigger="hand").id, state="training")
    clock.now += 101
    store.create("m", trigger="hand")
    assert store.get(dead.id).state == "failed" and "abandoned" in (store.get(dead.id).reason or "")


def test_the_newest_cron_tick_since_the_last_look() -> None:
    t = datetime(2026, 12, 7, 2, 59, tzinfo=UTC).timestamp()
    assert due_tick("0 3 * * *", t, t + 30) is None
    assert due_tick("0 3 * * *", t, t + 120) == datetime(2026, 12, 7, 3, 0, tzinfo=UTC).timestamp()
    assert due_tick("*/15 * * * *", t, t + 3600) == datetime(2026, 12, 7, 3, 45, tzinfo=UTC).timestamp()
