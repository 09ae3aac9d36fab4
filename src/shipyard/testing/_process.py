"""What every throwaway server of the test utilities shares: stopping it, and showing its log on failure."""

from __future__ import annotations

import logging
import signal
import subprocess
from pathlib import Path

from shipyard.errors import ShipyardError

logger = logging.getLogger(__name__)


class ServiceUnavailable(ShipyardError):
    """A throwaway server cannot be started here because something is missing.

    Args:
        missing: what is missing, e.g. "PostgreSQL server binaries (initdb, pg_ctl)".
        hint: how to get it (each service has its own default).
    """

    service = "the service"
    default_hint = ""

    def __init__(self, missing: str, hint: str | None = None) -> None:
        self.missing = missing
        self.hint = self.default_hint if hint is None else hint
        super().__init__(f"{self.service} unavailable: {missing}" + (f"; {self.hint}" if self.hint else ""))


def stop_process(proc: subprocess.Popen[bytes], name: str, *, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Send ``sig``, then SIGKILL if the process has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored %s for %.0fs; killing it", name, proc.pid,
                           signal.Signals(sig).name, grace)
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, since: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines written to ``path`` after byte offset ``since``."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
