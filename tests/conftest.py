"""Fixtures shared by every test: a throwaway registry per test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.config import Settings
from shipyard.registry import Registry


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose SHIPYARD_HOME is a fresh folder (SQLite + local artifacts)."""
    return Settings(home=tmp_path / "home", workers=1)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(autouse=True)
def _cli_logging_restored() -> Iterator[None]:
    """Put back the loggers a CLI command configures in-process (CliRunner): handlers, level, propagation."""
    names = ("shipyard", "uvicorn", "uvicorn.error")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
