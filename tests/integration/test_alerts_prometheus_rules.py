"""The shipped Prometheus alerting rules: valid for promtool, and on shipyard's documented series only."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from shipyard.monitoring.alerts import PROMETHEUS_RULES

pytestmark = pytest.mark.integration

SERIES = {"shipyard_drift_alert", "shipyard_drift_score", "shipyard_feedback_total", "shipyard_label_coverage_ratio",
          "shipyard_realized_metric"}


def test_promtool_accepts_the_shipped_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/test.sh installs the prometheus package)")
    result = subprocess.run([promtool, "check", "rules", str(PROMETHEUS_RULES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_rules_use_only_documented_series() -> None:
    groups = yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]
    used = {name for g in groups for r in g["rules"] for name in re.findall(r"shipyard_[a-z_]+", r["expr"])}
    assert used <= SERIES and "shipyard_drift_alert" in used
