"""The alerts package's public names, pinned: each resolves (the heavy modules load on first use)."""

from __future__ import annotations

import shipyard.monitoring.alerts as alerts

EXPORTED = [
    "PROMETHEUS_RULES", "AlertCollector", "AlertService", "AlertState", "AlertStore", "Delivery", "Incident",
    "Measurement", "MonitorSnapshot", "Notification", "Notifier", "NotifierSpec", "Rule", "RuleSet", "RuleState",
    "Transition", "build_notifier", "evaluate",
]


def test_the_alerts_package_exports_exactly_these_names() -> None:
    assert alerts.__all__ == EXPORTED
    for name in EXPORTED:
        assert getattr(alerts, name) is not None
    assert alerts.PROMETHEUS_RULES.is_file()
