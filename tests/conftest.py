"""Fixtures shared by every test: a throwaway registry per test."""

from __future__ import annotations

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
