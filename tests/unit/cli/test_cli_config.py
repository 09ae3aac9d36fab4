"""``shipyard config show|check``: the merged settings, masked; exit 1 with the one-line error."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from shipyard.cli.main import cli


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_check_prints_ok_for_a_valid_file(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("port: 9000\nmodels: [fraud@champion]\n")
    assert invoke("config", "check", "-c", str(file)) == (0, "ok\n", "")


def test_check_exits_1_with_the_key_path(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("port: abc\n")
    code, out, err = invoke("config", "check", "-c", str(file))
    assert code == 1 and out == ""
    assert "port: expected an integer, got 'abc'" in err


def test_check_of_an_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("max_qeue: 3\n")
    code, _, err = invoke("config", "check", "--config", str(file))
    assert code == 1 and "did you mean 'max_queue'?" in err


def test_show_merges_file_env_and_group_flags_and_masks_secrets(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("port: 9000\nhome: from-file\nregistry_url: postgresql://app:hunter2@db/reg\n")
    code, out, _ = invoke("--home", str(tmp_path / "flag"), "config", "show",
                          env={"SHIPYARD_CONFIG": str(file), "SHIPYARD_MAX_QUEUE": "12"})
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["port"] == 9000 and shown["max_queue"] == 12 and shown["home"] == str(tmp_path / "flag")
    assert shown["registry_url"] == "postgresql://app:***@db/reg" and "hunter2" not in out
