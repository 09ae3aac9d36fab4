"""``shipyard audit``: the table, filters and JSON; ``audit verify``: intact (exit 0) or broken (exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.security.audit import AuditLog, record
from shipyard.security.principal import Principal, acting_as
from shipyard.security.tables import audit_t


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Three entries: two by the key 'ops' from 10.0.0.7, one from the CLI."""
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    try:
        with acting_as(Principal("ops", "key", frozenset({"admin"})), "10.0.0.7"):
            record(registry.database, "alias.set", "fraud@champion", details={"previous": 1, "version": 2})
            record(registry.database, "rollout.change", "fraud", details={"revision": 1})
        record(registry.database, "alias.set", "churn@champion", outcome="refused")
    finally:
        registry.close()
    return home


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.cli._output import console, err_console

    monkeypatch.setattr(console, "_width", 200)  # every column in full; undone to auto-detection after
    monkeypatch.setattr(err_console, "_width", 200)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "audit", *args], catch_exceptions=False)


def tamper(home: Path, seq: int, **values: str) -> None:
    registry = Registry.from_settings(Settings(home=home))
    try:
        with registry.database.transaction() as conn:
            conn.execute(audit_t.update().where(audit_t.c.seq == seq).values(**values))
    finally:
        registry.close()


def head(home: Path) -> tuple[int, str]:
    registry = Registry.from_settings(Settings(home=home))
    try:
        return AuditLog(registry.database).head()
    finally:
        registry.close()


def test_audit_lists_entries_newest_first_with_actor_source_and_outcome(home: Path) -> None:
    result = run(home)

    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "@champion" in line or "rollout.change" in line]
    assert "churn@champion" in lines[0] and "refused" in lines[0] and "cli@" in lines[0]
    assert "fraud@champion" in lines[2] and "ops" in lines[2] and "10.0.0.7" in lines[2]


def test_audit_filters_by_target_action_and_actor(home: Path) -> None:
    by_model = run(home, "--target", "fraud")
    assert "fraud@champion" in by_model.output and "rollout.change" in by_model.output
    assert "churn" not in by_model.output

    by_action = json.loads(run(home, "--action", "alias", "--actor", "ops", "--json").output)
    assert [(e["action"], e["target"], e["details"]) for e in by_action["entries"]] == [
        ("alias.set", "fraud@champion", {"previous": 1, "version": 2})]

    assert "no audit entries match" in run(home, "--since", "2099-01-01").output
    assert len(json.loads(run(home, "--since", "1h", "--limit", "2", "--json").output)["entries"]) == 2


def test_audit_verify_says_intact_with_the_head_to_keep(home: Path) -> None:
    seq, digest = head(home)

    result = run(home, "verify")

    assert result.exit_code == 0, result.output
    assert f"intact: 3 entries, head {seq} {digest}" in result.output
    assert "--expect" in result.output
    assert run(home, "verify", "--expect", f"{seq}:{digest}").exit_code == 0


def test_audit_verify_exits_3_naming_the_broken_entry(home: Path) -> None:
    tamper(home, 2, target="churn")

    result = run(home, "verify")

    assert result.exit_code == 3
    assert "broken at entry 2" in result.output and "edited" in result.output

    report = json.loads(run(home, "verify", "--json").output)
    assert (report["ok"], report["first_bad"], report["checked"]) == (False, 2, 1)


def test_audit_verify_exits_3_when_an_expected_entry_changed(home: Path) -> None:
    result = run(home, "verify", "--expect", "2:" + "0" * 64)
    assert result.exit_code == 3 and "broken at entry 2" in result.output and "expected" in result.output


def test_audit_verify_refuses_a_malformed_expect(home: Path) -> None:
    result = run(home, "verify", "--expect", "2-abc")
    assert result.exit_code == 2 and "SEQ:HASH" in result.output
