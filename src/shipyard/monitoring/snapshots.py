"""What the alert rules see: each served version and arm's latest drift verdict, data quality and realized metrics.

``monitor_snapshots`` reads the registry database (the newest drift report of every
model, version and arm; the realized metrics over the feedback join window, when a
``realized`` reader is given) and the registry (each version's registered metrics), and
makes one ``MonitorSnapshot`` per (model, version, arm). A snapshot's ``at`` is the time of
its newest number, so a rule's debounce counts new windows and new labels, not re-reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from shipyard.monitoring.alerts.snapshot import MonitorSnapshot
from shipyard.monitoring.drift_monitor import latest_results
from shipyard.monitoring.tables import feedback_t
from shipyard.registry import Registry
from shipyard.registry.database import Database

__all__ = ["Realized", "RealizedReader", "drift_evidence", "monitor_snapshots", "quality_rates", "realized_reader"]

Realized = Mapping[str, Any]
"""One (model, version, arm)'s realized numbers: ``metrics`` (name -> value), ``label_coverage``, ``at``."""
RealizedReader = Callable[[], Mapping[tuple[str, int, str], Realized]]

_QUALITY_KINDS = {"nulls": ("nulls",), "out_of_range": ("below_min", "above_max"), "unseen": ("unseen",),
                  "type_failures": ("type_failures",)}


def quality_rates(features: list[Mapping[str, Any]], rows: int) -> dict[str, float]:
    """Per data-quality kind, the worst input feature's share of the window's rows with that problem."""
    if rows <= 0:
        return {}
    rates = dict.fromkeys(_QUALITY_KINDS, 0.0)
    for f in features:
        quality = f.get("quality") or {}
        for kind, counters in _QUALITY_KINDS.items():
            rates[kind] = max(rates[kind], sum(int(quality.get(c, 0)) for c in counters) / rows)
    return rates


def drift_evidence(row: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a stored drift report a notification carries: the window and every drifted check."""
    payload = row["payload"] or {}
    drifted = [
        {k: f.get(k) for k in ("feature", "test", "statistic", "p_value", "effect", "threshold", "n")}
        for group in ("features", "outputs", "multivariate") for f in payload.get(group) or () if f.get("drifted")
    ]
    return {"window": {"start": row["start"], "end": row["end"], "rows": row["rows"]},
            "drift_share": row["share"], "drifted": drifted}


def realized_reader(database: Database, models: Callable[[], Iterable[str]], *, window_seconds: float,
                    clock: Callable[[], float] = time.time) -> RealizedReader:
    """Reads each served model's realized metrics over predictions of the last ``window_seconds``.

    A group's ``at`` is when the model's newest label arrived, so an alert rule's debounce
    counts evaluations that saw new labels, not re-reads of the same ones.
    """
    from shipyard.monitoring.quality import quality

    def read() -> dict[tuple[str, int, str], Realized]:
        out: dict[tuple[str, int, str], Realized] = {}
        now = clock()
        for model in models():
            with database.connect() as conn:
                newest = conn.execute(sa.select(sa.func.max(feedback_t.c.received_at))
                                      .where(feedback_t.c.model == model)).scalar()
            if newest is None:
                continue  # no label yet: nothing realized to watch
            for group in quality(database, model, since=now - window_seconds)["groups"]:
                out[(model, int(group["version"]), str(group["arm"]))] = {
                    "metrics": group.get("metrics") or {}, "label_coverage": group.get("coverage"),
                    "served": group.get("served"), "labelled": group.get("labelled"), "at": float(newest)}
        return out

    return read


def monitor_snapshots(database: Database, registry: Registry, *,
                      realized: RealizedReader | None = None) -> list[MonitorSnapshot]:
    """The latest snapshot of every (model, version, arm) that has a drift report or realized metrics."""
    drift = {(r["model"], r["version"], r["arm"]): r for r in latest_results(database)}
    labels = dict(realized()) if realized is not None else {}
    registered: dict[tuple[str, int], Mapping[str, float]] = {}
    out = []
    for key in sorted(set(drift) | set(labels)):
        model, version, arm = key
        if (model, version) not in registered:
            try:
                registered[(model, version)] = dict(registry.get(f"{model}:{version}").metrics)
            except Exception:  # a deleted or unreadable version still has its drift and labels watched
                registered[(model, version)] = {}
        row, label = drift.get(key), labels.get(key)
        fields: dict[str, Any] = {}
        evidence: dict[str, Any] = {"model": model, "version": version, "arm": arm}
        at = 0.0
        if row is not None:
            features = [f for f in (row["payload"] or {}).get("features") or () if not f.get("skipped")]
            payload = row["payload"] or {}
            fields.update(
                drift_share=float(row["share"]), drift_rows=int(row["rows"]),
                feature_effects={f["feature"]: float(f["effect"]) for f in features},
                drifted_features=tuple(f["feature"] for f in features if f.get("drifted")),
                quality_rates=quality_rates(payload.get("features") or [], int(row["rows"])))
            evidence["drift"] = drift_evidence(row)
            at = max(at, float(row["at"]))
        if label is not None:
            fields.update(realized=dict(label.get("metrics") or {}), label_coverage=label.get("label_coverage"))
            evidence["realized"] = {k: v for k, v in label.items() if k != "at"}
            at = max(at, float(label.get("at") or 0.0))
        out.append(MonitorSnapshot(model=model, version=version, arm=arm, at=at,
                                   registered=registered[(model, version)], evidence=evidence, **fields))
    return out
