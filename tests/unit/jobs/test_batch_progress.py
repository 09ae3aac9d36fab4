"""Progress: a bar with rows/s and ETA on a terminal, log lines elsewhere."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from shipyard.jobs.batch.progress import Bar, LogLines, Silent, reporter


def test_the_bar_shows_rows_of_total_and_speed() -> None:
    out = io.StringIO()
    bar = Bar(Console(file=out, force_terminal=True, width=150))
    bar.start(total=1000, done=200)
    bar.advance(300)
    bar.close()
    text = out.getvalue()
    assert "500 / 1,000 rows" in text
    assert "rows/s" in text and "ETA" in text


def test_log_lines_give_rows_speed_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    lines = LogLines(every=0.0)
    with caplog.at_level(logging.INFO, logger="shipyard.jobs.batch.progress"):
        lines.start(total=1000, done=0)
        lines.advance(250)
        lines.close()
    assert "250 / 1,000 rows (25.0%)" in caplog.messages[0]
    assert "rows/s, ETA" in caplog.messages[0]
    unknown = LogLines(every=0.0)
    with caplog.at_level(logging.INFO, logger="shipyard.jobs.batch.progress"):
        unknown.start(total=None, done=0)
        unknown.advance(10)
    assert caplog.messages[-1].startswith("10 rows, ")


def test_the_reporter_follows_the_terminal() -> None:
    assert isinstance(reporter(False), Silent)
    assert isinstance(reporter(True), Bar)
    assert isinstance(reporter(None), LogLines)  # pytest's stderr is not a terminal
