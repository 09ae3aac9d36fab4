"""Shared rendering and error handling for commands: tables, JSON, one-line failures."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shipyard.config import Settings
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

console: Console
err_console: Console


def __getattr__(name: str) -> Any:
    """``console`` and ``err_console``, made (rich imported) when a command first prints with them.

    ``shipyard serve`` prints no table: its process never imports rich.
    """
    if name not in ("console", "err_console"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    return globals().setdefault(name, Console(stderr=name == "err_console"))


def _console(name: str) -> Console:
    """The module's own way to the lazily made consoles (a module ``__getattr__`` serves only other modules)."""
    made: Console = globals().get(name) or __getattr__(name)
    return made


def fail(message: str) -> None:
    """Print a one-line reason to stderr and exit non-zero."""
    _console("err_console").print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def handle_errors(fn: F) -> F:
    """Shipyard errors become a one-line reason and exit code 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShipyardError as exc:
            fail(str(exc))
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    _console("console").print(t)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def settings_from(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj["settings"]
    return settings


def setup_logging(level: str, fmt: str) -> None:
    """Configure the 'shipyard' root logger once, for the CLI process (library code never does)."""
    from shipyard.context import RequestIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("shipyard", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)
