"""Alerts on drift, realized metrics, data quality and label coverage, and the retraining triggers.

The modules, by concept:

* ``snapshot``   ``MonitorSnapshot``: the numbers the rules look at, per model, version and arm
* ``rules``      ``Rule``, ``NotifierSpec``, ``RuleSet.parse``: ``monitoring.alerts`` validated
* ``engine``     ``evaluate``: rules + snapshots + state -> new state + incidents opened/resolved (pure)
* ``notifiers``  log, webhook, command and stream notifiers (the retraining triggers too)
* ``store``      ``AlertStore``: incidents in ``shipyard_alerts``, exactly-once notification claims
* ``service``    ``AlertService``: the loop, run by the replica holding the ``alerts`` lease
* ``collector``  ``AlertCollector``: the ``shipyard_drift_alert`` gauge

The package imports the pure modules (the settings validate rules with them); the store,
the notifiers, the service and the collector load on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.monitoring.alerts.engine import AlertState, RuleState, Transition, evaluate
from shipyard.monitoring.alerts.rules import Measurement, NotifierSpec, Rule, RuleSet
from shipyard.monitoring.alerts.snapshot import MonitorSnapshot

if TYPE_CHECKING:
    from shipyard.monitoring.alerts.collector import AlertCollector
    from shipyard.monitoring.alerts.notifiers import Delivery, Notification, Notifier, build_notifier
    from shipyard.monitoring.alerts.service import AlertService
    from shipyard.monitoring.alerts.store import AlertStore, Incident

__all__ = [
    "PROMETHEUS_RULES",
    "AlertCollector",
    "AlertService",
    "AlertState",
    "AlertStore",
    "Delivery",
    "Incident",
    "Measurement",
    "MonitorSnapshot",
    "Notification",
    "Notifier",
    "NotifierSpec",
    "Rule",
    "RuleSet",
    "RuleState",
    "Transition",
    "build_notifier",
    "evaluate",
]

PROMETHEUS_RULES = Path(__file__).resolve().parent.parent / "prometheus-alerts.yml"
"""The shipped Prometheus alerting rules on shipyard's monitoring series (``rule_files:`` in prometheus.yml)."""

_LAZY = {
    "AlertCollector": "collector",
    "AlertService": "service",
    "AlertStore": "store",
    "Incident": "store",
    "Delivery": "notifiers",
    "Notification": "notifiers",
    "Notifier": "notifiers",
    "build_notifier": "notifiers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
