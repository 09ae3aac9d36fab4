"""Progress of a batch job: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """Told how many rows are done; shows it somewhere."""

    def start(self, total: int | None, done: int) -> None:
        """The job starts: ``total`` rows if known, ``done`` already finished by an earlier run."""

    def advance(self, rows: int) -> None:
        """``rows`` more rows are finished."""

    def close(self) -> None:
        """The job ended (or failed)."""


def reporter(enabled: bool | None) -> Reporter:
    """A bar when stderr is a terminal, log lines when not; nothing when ``enabled`` is False."""
    if enabled is False:
        return Silent()
    if enabled or sys.stderr.isatty():
        return Bar()
    return LogLines()


class Silent:
    def start(self, total: int | None, done: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")


class Bar:
    """rich progress bar on stderr: rows done, rows/s, elapsed time and ETA (when the total is known)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}{task.fields[of]} rows"),
            _RowsPerSecond(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
        )
        self._task: TaskID | None = None

    def start(self, total: int | None, done: int) -> None:
        self._progress.start()
        of = f" / {total:,}" if total is not None else ""
        # rows an earlier run finished count as done, but not towards this run's speed
        self._task = self._progress.add_task("batch", total=total, completed=done, of=of)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, rows)

    def close(self) -> None:
        self._progress.stop()


class LogLines:
    """A log line at most every ``every`` seconds, and one at the end."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.total: int | None = None
        self.done = 0
        self.resumed = 0
        self.t0 = time.monotonic()
        self.last = self.t0

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done, self.resumed = total, done, done
        self.t0 = self.last = time.monotonic()

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log(now)

    def close(self) -> None:
        self._log(time.monotonic())

    def _log(self, now: float) -> None:
        speed = (self.done - self.resumed) / max(now - self.t0, 1e-9)
        if self.total:
            left = self.total - self.done
            eta = f", ETA {left / speed:,.0f}s" if left > 0 and speed > 0 else ""
            logger.info(
                "%s / %s rows (%.1f%%), %s rows/s%s",
                f"{self.done:,}", f"{self.total:,}", 100 * self.done / self.total, f"{speed:,.0f}", eta,
            )
        else:
            logger.info("%s rows, %s rows/s", f"{self.done:,}", f"{speed:,.0f}")
