"""What the alert rules look at: one model version's (and arm's) latest monitoring numbers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MonitorSnapshot"]


@dataclass(frozen=True)
class MonitorSnapshot:
    """The latest drift verdict, realized metrics and data quality of one model, version and arm.

    The server builds one per (model, version, arm) from the drift results and the realized
    metrics each time the rules are evaluated. ``at`` is when these numbers were computed (the
    end of the latest compared window, say): an evaluation only counts towards a rule's
    debounce when it sees a newer ``at`` than the last one it counted, so re-reading the same
    window every few seconds does not fire a ``for: 3`` rule by itself.
    """

    model: str
    version: int
    arm: str
    at: float
    """Epoch seconds these numbers are as of."""
    drift_share: float | None = None
    """The latest compared window's share of drifted input features (None before any comparison)."""
    drift_rows: int = 0
    """Rows in that window."""
    feature_effects: Mapping[str, float] = field(default_factory=dict)
    """Feature -> effect size in the latest window."""
    drifted_features: tuple[str, ...] = ()
    """The features the latest window flagged."""
    realized: Mapping[str, float] = field(default_factory=dict)
    """Metric -> realized value from labelled feedback (accuracy, f1, mae, ...)."""
    registered: Mapping[str, float] = field(default_factory=dict)
    """The version's registered metrics (what it scored on its holdout)."""
    quality_rates: Mapping[str, float] = field(default_factory=dict)
    """``nulls``, ``out_of_range``, ``unseen``, ``type_failures``: each a share of the window's rows."""
    label_coverage: float | None = None
    """Share of served predictions with a label (None when unknown)."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """Window bounds, statistics: JSON-able, passed on to the notifiers as it is."""
