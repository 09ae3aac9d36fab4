"""``shipyard keys``: create prints the token once (alone on stdout), list never shows secrets, revoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import Unauthenticated
from shipyard.registry import Registry
from shipyard.security.keys import KeyRing, KeyStore, parse_token


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.cli._output import console

    monkeypatch.setattr(console, "_width", 200)  # every column in full; undone to auto-detection after


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "keys", *args], catch_exceptions=False)


def verify(home: Path, token: str) -> str:
    """The key name a server's ring finds for ``token`` (raises Unauthenticated as a server would refuse)."""
    registry = Registry.from_settings(Settings(home=home))
    try:
        ring = KeyRing(KeyStore(registry.database), refresh_seconds=5)
        ring.refresh()
        return ring.verify(token).name
    finally:
        registry.close()


def test_create_prints_the_token_alone_on_stdout_and_warns_it_is_shown_once(tmp_path: Path) -> None:
    result = run(tmp_path, "create", "ci", "--scope", "predict", "--scope", "read", "--model", "fraud",
                 "--expires", "30d", "--rate", "10")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert parse_token(token) is not None
    assert "will not be shown again" in result.stderr
    assert "created API key ci" in result.stderr and "scopes predict, read" in result.stderr
    assert "models fraud" in result.stderr and "10 requests/s" in result.stderr
    assert verify(tmp_path, token) == "ci"


def test_create_json_holds_the_key_and_token(tmp_path: Path) -> None:
    result = run(tmp_path, "create", "ci", "--scope", "admin", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["name"] == "ci" and doc["scopes"] == ["admin"] and doc["models"] is None
    assert doc["status"] == "active" and doc["expires_at"] is None
    assert verify(tmp_path, doc["token"]) == "ci"
    assert "will not be shown again" in result.stderr


def test_list_shows_keys_without_secrets_and_all_shows_revoked_ones(tmp_path: Path) -> None:
    ci = run(tmp_path, "create", "ci", "--scope", "predict").stdout.strip()
    ops = run(tmp_path, "create", "ops", "--scope", "admin", "--expires", "2099-01-31").stdout.strip()
    revoked = run(tmp_path, "revoke", "ci")
    assert revoked.exit_code == 0 and "API key ci (id " in revoked.stdout and " revoked at " in revoked.stdout
    listed = run(tmp_path, "list")
    assert listed.exit_code == 0, listed.output
    assert "ops" in listed.stdout and "2099-01-31" in listed.stdout and "active" in listed.stdout
    assert " ci " not in listed.stdout
    every = run(tmp_path, "list", "--all", "--json")
    keys = json.loads(every.stdout)["keys"]
    assert [(k["name"], k["status"]) for k in keys] == [("ci", "revoked"), ("ops", "active")]
    for token in (ci, ops):
        parsed = parse_token(token)
        assert parsed is not None
        assert parsed[0] in every.stdout and parsed[1] not in every.stdout + listed.stdout
    with pytest.raises(Unauthenticated, match="API key ci was revoked"):
        verify(tmp_path, ci)


def test_list_says_when_there_are_no_keys(tmp_path: Path) -> None:
    assert "no active API keys (--all shows revoked and expired ones)" in run(tmp_path, "list").stdout
    assert json.loads(run(tmp_path, "list", "--json").stdout) == {"keys": []}


def test_mistakes_exit_non_zero_with_one_line_reasons(tmp_path: Path) -> None:
    assert run(tmp_path, "create", "ci", "--scope", "read").exit_code == 0
    duplicate = run(tmp_path, "create", "ci", "--scope", "read")
    assert duplicate.exit_code == 1 and "an active API key is named 'ci' already" in duplicate.stderr
    assert duplicate.stdout == ""  # no token for a key that was not made
    past = run(tmp_path, "create", "old", "--scope", "read", "--expires", "2020-01-01")
    assert past.exit_code == 1 and "is not in the future" in past.stderr
    vague = run(tmp_path, "create", "old", "--scope", "read", "--expires", "soon")
    assert vague.exit_code == 1 and "give a duration (12h, 30d, 4w) or a date" in vague.stderr
    unknown = run(tmp_path, "revoke", "nope")
    assert unknown.exit_code == 1 and "no API key has the id or name 'nope'; active keys: ci (" in unknown.stderr
    bad_scope = run(tmp_path, "create", "x", "--scope", "write")
    assert bad_scope.exit_code == 2 and "'write' is not one of 'predict', 'feedback', 'read', 'admin'" in \
        bad_scope.stderr
    no_scope = run(tmp_path, "create", "x")
    assert no_scope.exit_code == 2 and "--scope" in no_scope.stderr
    negative = run(tmp_path, "create", "x", "--scope", "read", "--rate", "-1")
    assert negative.exit_code == 2
    assert [k["name"] for k in json.loads(run(tmp_path, "list", "--all", "--json").stdout)["keys"]] == ["ci"]
