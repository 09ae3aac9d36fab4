"""``shipyard alerts``: open incidents by default, --all for past ones, --model, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.monitoring.alerts import AlertStore
from shipyard.registry import Registry


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """One resolved incident of fraud, one firing of fraud, one firing of churn."""
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    try:
        store = AlertStore(registry.database)
        first, _ = store.open("accuracy-drop", "fraud", 3, {"condition": "realized_drop(accuracy) > 0.03",
                                                             "value": 0.051}, at=1_900_000_000.0)
        store.claim(first.id, "ops", "replica-a")
        store.record(first.id, "ops", {"state": "sent", "status": 200})
        store.resolve("accuracy-drop", "fraud", at=1_900_000_600.0)
        store.open("accuracy-drop", "fraud", 3, {"condition": "realized_drop(accuracy) > 0.03", "value": 0.06},
                   at=1_900_001_000.0)
        store.open("drifting", "churn", 1, {"condition": "drift_share > 0.5", "value": 0.7}, at=1_900_002_000.0)
    finally:
        registry.close()
    return home


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.cli._output import console

    monkeypatch.setattr(console, "_width", 200)  # every column in full; undone to auto-detection after


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "alerts", *args], catch_exceptions=False)


def test_alerts_lists_the_open_incidents(home: Path) -> None:
    result = run(home)
    assert result.exit_code == 0, result.output
    assert "drifting" in result.output and "churn" in result.output and "0.06" in result.output
    assert "resolved" not in result.output


def test_alerts_all_lists_past_incidents_with_their_notifications(home: Path) -> None:
    result = run(home, "--all", "--model", "fraud")
    assert result.exit_code == 0, result.output
    assert "resolved" in result.output and "ops=sent" in result.output and "churn" not in result.output


def test_alerts_json_carries_evidence_and_notifications(home: Path) -> None:
    data = json.loads(run(home, "--all", "--json").output)
    assert [(a["rule"], a["model"], a["state"]) for a in data["alerts"]] == [
        ("drifting", "churn", "firing"), ("accuracy-drop", "fraud", "firing"), ("accuracy-drop", "fraud", "resolved")]
    past = data["alerts"][2]
    assert past["evidence"]["value"] == 0.051 and past["notified"]["ops"]["status"] == 200
    assert past["resolved_at"] == 1_900_000_600.0


def test_alerts_says_when_there_are_none(tmp_path: Path) -> None:
    result = run(tmp_path / "empty")
    assert result.exit_code == 0 and "no open alerts" in result.output
