"""Null thresholds kept on disk: the same report from the file as from the draws, in a fresh process's memory."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from shipyard.monitoring.drift import detector
from shipyard.monitoring.drift.detector import DriftSettings, compare
from shipyard.monitoring.drift.null_cache import NullThresholdCache
from shipyard.monitoring.drift.profile import profile_of
from shipyard.monitoring.drift.window import Window


def _report_and_draws(profile, window, store, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    detector._null_threshold.cache_clear()  # as in a process that just started
    drawn = []
    real = detector.st.null_quantile

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(detector.st, "null_quantile", counted)
    return compare(profile, window, DriftSettings(multivariate=False), thresholds=store), drawn


def test_a_restarted_process_reads_the_thresholds_it_drew_before(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    profile = profile_of({"x": rng.normal(size=(5_000, 3))}, {})
    window = Window(profile)
    shifted = rng.normal(size=(600, 3))
    shifted[:, 2] += 0.5
    window.add({"x": shifted}, {})
    store = NullThresholdCache(tmp_path / "cache" / "null.sqlite")

    first, drawn = _report_and_draws(profile, window, store, monkeypatch)
    assert drawn == ["wasserstein"] * 3  # one threshold per feature, drawn and kept
    again, drawn = _report_and_draws(profile, window, NullThresholdCache(store.path), monkeypatch)
    assert drawn == []  # all three read back
    assert again.to_dict() == first.to_dict()
    assert [f.drifted for f in again.features] == [False, False, True]
    plain, drawn = _report_and_draws(profile, window, None, monkeypatch)
    assert len(drawn) == 3 and plain.to_dict() == first.to_dict()  # the file changes no verdict, no threshold


def test_a_cache_that_cannot_be_written_only_costs_the_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(4)
    profile = profile_of({"x": rng.normal(size=(5_000, 2))}, {})
    window = Window(profile)
    window.add({"x": rng.normal(size=(400, 2))}, {})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    store = NullThresholdCache(blocker / "null.sqlite")
    # the module's own logger: another test may have set up shipyard's logging without propagation
    logger = logging.getLogger("shipyard.monitoring.drift.null_cache")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            report, drawn = _report_and_draws(profile, window, store, monkeypatch)
    finally:
        logger.removeHandler(caplog.handler)
    assert len(drawn) == 2 and not report.drifted
    assert "are not kept" in caplog.text
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    report, drawn = _report_and_draws(profile, window, NullThresholdCache(corrupt), monkeypatch)
    assert len(drawn) == 2 and not report.drifted
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(corrupt).execute("SELECT 1 FROM null_thresholds").fetchall()  # left as it was
