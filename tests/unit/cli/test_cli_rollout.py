"""``shipyard rollout``: start, status, pause, resume, promote (through the promotion gates), abort."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.rollout.store import TrafficStore

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] * 4, "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0] * 4})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """m:1 champion (right), m:2 challenger (as right), m:3 candidate (a constant: worse on the holdout)."""
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    try:
        registry.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3), alias="champion",
                          holdout=(X, Y))
        registry.register(LogisticRegression(C=0.5).fit(X, Y), "m", sample=X.head(3), alias="challenger")
        registry.register(DummyClassifier(strategy="constant", constant=0).fit(X, Y), "m", sample=X.head(3),
                          alias="candidate")
    finally:
        registry.close()
    return home


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "rollout", *args], catch_exceptions=False)


def aliases(home: Path) -> dict[str, int]:
    registry = Registry.from_settings(Settings(home=home))
    try:
        return registry.aliases("m")
    finally:
        registry.close()


def test_a_split_is_stored_shown_paused_resumed_and_aborted(home: Path) -> None:
    started = run(home, "start", "m", "--split", "champion=90,challenger=10", "--sticky", "header:x-user",
                  "--shadow", "candidate=5")
    assert started.exit_code == 0, started.output
    assert "split policy revision 1 stored" in started.output
    for args, state in ((("pause", "m", "--reason", "looking"), "paused"), (("resume", "m"), "running"),
                        (("abort", "m"), "aborted")):
        result = run(home, *args)
        assert result.exit_code == 0 and f"m: {state}" in result.output, result.output
    status = json.loads(run(home, "status", "m", "--json").output)
    assert status["policy"]["state"] == "aborted" and status["policy"]["revision"] == 4
    assert [h["state"] for h in status["history"]] == ["running", "paused", "running", "aborted"]
    assert status["history"][1]["reason"] == "looking"
    arms = {a["name"]: a for a in status["policy"]["arms"]}
    assert arms["challenger"]["weight"] == pytest.approx(0.1) and arms["candidate"]["role"] == "shadow"
    assert run(home, "resume", "m").exit_code == 1  # an aborted rollout stays aborted


def test_bad_flags_and_unknown_aliases_are_refused_before_anything_is_stored(home: Path) -> None:
    assert "exactly one of --split, --canary, --bandit" in run(home, "start", "m").output
    missing = run(home, "start", "m", "--split", "champion=50,nosuch=50")
    assert missing.exit_code == 1 and "has no alias 'nosuch'" in missing.output
    assert run(home, "status", "m").exit_code == 1
    assert "no traffic policy" in run(home, "status", "m").output


def test_promote_moves_the_alias_once_and_gates_refuse_a_worse_model_unless_forced(home: Path) -> None:
    assert run(home, "start", "m", "--split", "champion=50,candidate=50").exit_code == 0
    refused = run(home, "promote", "m")
    assert refused.exit_code == 1 and "promotion gates failed" in refused.output and "holdout" in refused.output
    assert aliases(home)["champion"] == 1  # not moved
    forced = run(home, "promote", "m", "--force", "--reason", "we know")
    assert forced.exit_code == 0, forced.output
    assert aliases(home)["champion"] == 3 and "(gates failed, forced)" in forced.output
    registry = Registry.from_settings(Settings(home=home))
    try:
        move = registry.alias_history("m")[-1]
    finally:
        registry.close()
    assert move.note is not None and move.note.startswith("gates failed (holdout); forced: holdout: ")
    assert run(home, "promote", "m").exit_code == 1  # promoted already


def test_a_canary_promotes_its_candidate(home: Path) -> None:
    started = run(home, "start", "m", "--canary", "champion:challenger", "--steps", "10,50,100", "--interval", "1m")
    assert started.exit_code == 0, started.output
    assert "canary step 1 of 3 (10%, 50%, 100%), interval 60s" in started.output
    promoted = run(home, "promote", "m")
    assert promoted.exit_code == 0, promoted.output
    assert aliases(home)["champion"] == 2
    registry = Registry.from_settings(Settings(home=home))
    try:
        policy = TrafficStore(registry.database).get("m")
        assert policy is not None and policy.state == "promoted"
        assert registry.alias_history("m")[-1].actor is not None
        assert registry.alias_history("m")[-1].note == "gates passed"
    finally:
        registry.close()
