"""What the alert rules see: snapshots built from stored drift reports, registered metrics and realized metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.snapshots import monitor_snapshots, quality_rates
from shipyard.monitoring.tables import drift_results_t
from shipyard.registry import Registry

X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.from_settings(Settings(home=tmp_path / "home"))
    reg.register(LogisticRegression().fit(X, [0, 0, 1, 1]), "m", sample=X, metrics={"accuracy": 0.9})
    yield reg
    reg.close()


def feature(name: str, effect: float, drifted: bool, **quality: int) -> dict:
    return {"feature": name, "test": "ks", "statistic": effect, "p_value": 0.5, "effect": effect, "threshold": 0.1,
            "n": 400, "drifted": drifted, "skipped": None, "quality": quality}


def test_quality_rates_are_the_worst_features_share_of_rows() -> None:
    features = [feature("a", 0.0, False, nulls=4, below_min=1, above_max=2), feature("b", 0.0, False, nulls=10)]
    assert quality_rates(features, 100) == {"nulls": 0.10, "out_of_range": 0.03, "unseen": 0.0, "type_failures": 0.0}
    assert quality_rates(features, 0) == {}


def test_a_snapshot_per_version_and_arm_from_the_newest_report_and_the_realized_metrics(registry: Registry) -> None:
    def report(start: int, effect: float, at: float) -> dict:
        return {"model": "m", "version": 1, "arm": "champion", "start": start, "end": start + 60, "rows": 400,
                "drifted": effect > 0.5, "share": 0.5 if effect > 0.5 else 0.0, "at": at,
                "payload": {"features": [feature("a", effect, effect > 0.5, nulls=8), feature("b", 0.02, False)]}}

    with registry.database.transaction() as conn:
        conn.execute(drift_results_t.insert(), [report(0, 0.05, 70.0), report(60, 0.9, 130.0)])

    def realized() -> dict:
        return {("m", 1, "champion"): {"metrics": {"accuracy": 0.8}, "label_coverage": 0.6, "at": 150.0},
                ("m", 1, "challenger"): {"metrics": {"accuracy": 0.85}, "label_coverage": 0.5, "at": 140.0}}

    snaps = {s.arm: s for s in monitor_snapshots(registry.database, registry, realized=realized)}
    champion, challenger = snaps["champion"], snaps["challenger"]
    assert champion.drift_share == 0.5 and champion.drifted_features == ("a",)
    assert champion.feature_effects == {"a": 0.9, "b": 0.02}
    assert champion.quality_rates["nulls"] == 8 / 400
    assert champion.registered == {"accuracy": 0.9}
    assert champion.realized == {"accuracy": 0.8} and champion.label_coverage == 0.6
    assert champion.at == 150.0  # the newest of its numbers
    assert champion.evidence["drift"]["window"] == {"start": 60, "end": 120, "rows": 400}
    assert [d["feature"] for d in champion.evidence["drift"]["drifted"]] == ["a"]
    assert challenger.drift_share is None and challenger.realized == {"accuracy": 0.85}
